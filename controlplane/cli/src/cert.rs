//! `carmine cert`: the cluster CA and the daemons' certificates for TLS on the control plane.
//!
//! * `carmine cert ca --out DIR` makes the cluster CA: `DIR/ca.pem` (give it to every client:
//!   `--tls-ca`, the OSDs' `[tls] ca`) and `DIR/ca.key` (mode 0600; only `cert issue` needs
//!   it, keep it off the daemons' hosts).
//! * `carmine cert issue --ca DIR --name mon.a --ip 127.0.0.1 [--ip ..] [--dns ..] --out DIR`
//!   makes `DIR/mon.a.pem` and `DIR/mon.a.key` (0600), signed by the CA in `--ca`. The SANs
//!   are the addresses clients dial: clients verify the address they connected to (see
//!   `carmine_proto::tls`), so a monitor needs every IP it is reached by, and an OSD the IP
//!   of its admin listen address (the one it publishes in the map).
//!
//! Certificates are made with rcgen, the rustls project's X.509 writer: ECDSA P-256 keys,
//! ring for the signatures (the same provider the gRPC TLS uses), and its x509-parser
//! feature to read an existing CA back for `issue`. Hand-written DER would be a liability.
//!
//! Nothing is overwritten without `--force`: running the same command twice fails naming the
//! file that exists, so a script cannot replace a cluster's CA by accident. Files are
//! written to a temporary name in the same directory and renamed into place; keys are
//! created with mode 0600 from the start.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use clap::Subcommand;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The CA's file names inside its directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file name.
pub const CA_KEY: &str = "ca.key";

/// `carmine cert ...`
#[derive(Debug, Subcommand)]
pub enum CertCmd {
    /// Make the cluster CA: OUT/ca.pem and OUT/ca.key (mode 0600).
    Ca {
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "carmine cluster CA")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a daemon certificate signed by the CA: OUT/NAME.pem and OUT/NAME.key (0600).
    Issue {
        /// The CA's directory (ca.pem and ca.key, as `cert ca` wrote them).
        #[arg(long)]
        ca: PathBuf,
        /// The daemon's name (`mon.a`, `osd.0`): the common name and the file names.
        #[arg(long)]
        name: String,
        /// An IP address clients dial (repeatable).
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        /// A DNS name clients dial (repeatable).
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

/// Why a certificate was not made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file that would be written exists already.
    #[error("{} exists; pass --force to replace it", .0.display())]
    Exists(PathBuf),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// rcgen refused (a malformed CA file, a bad DNS name...).
    #[error("{what}: {source}")]
    Rcgen {
        /// What was being done.
        what: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// `issue` without any SAN: no client could verify the certificate.
    #[error("give at least one --ip or --dns: clients verify the address they dial")]
    NoSubjectAltName,
    /// A name that cannot be a file name.
    #[error("--name {0:?}: use letters, digits, '.', '-' and '_' only")]
    BadName(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_owned(),
        source,
    }
}

fn rcgen_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertError {
    let what = what.into();
    move |source| CertError::Rcgen { what, source }
}

/// Runs `cmd`; returns what to print (the files written).
pub fn run(cmd: &CertCmd) -> Result<String, CertError> {
    match cmd {
        CertCmd::Ca {
            out,
            name,
            days,
            force,
        } => {
            let (cert, key) = make_ca(out, name, *days, *force)?;
            Ok(format!(
                "wrote {} and {} (keep the key private)\n",
                cert.display(),
                key.display()
            ))
        }
        CertCmd::Issue {
            ca,
            name,
            ips,
            dns,
            out,
            days,
            force,
        } => {
            let (cert, key) = issue(ca, name, ips, dns, out, *days, *force)?;
            Ok(format!("wrote {} and {}\n", cert.display(), key.display()))
        }
    }
}

/// Validity from an hour ago (clocks differ a little between hosts) for `days`.
fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// Makes the CA in `out`; returns the certificate's and the key's paths.
pub fn make_ca(
    out: &Path,
    name: &str,
    days: u32,
    force: bool,
) -> Result<(PathBuf, PathBuf), CertError> {
    let cert_path = out.join(CA_CERT);
    let key_path = out.join(CA_KEY);
    refuse_existing(&[&cert_path, &key_path], force)?;
    let key = KeyPair::generate().map_err(rcgen_err("generate the CA key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days);
    let cert = params
        .self_signed(&key)
        .map_err(rcgen_err("sign the CA certificate"))?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

/// Issues `name`'s certificate, signed by the CA in `ca_dir`, into `out`; returns the
/// certificate's and the key's paths.
pub fn issue(
    ca_dir: &Path,
    name: &str,
    ips: &[IpAddr],
    dns: &[String],
    out: &Path,
    days: u32,
    force: bool,
) -> Result<(PathBuf, PathBuf), CertError> {
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(CertError::BadName(name.to_owned()));
    }
    if ips.is_empty() && dns.is_empty() {
        return Err(CertError::NoSubjectAltName);
    }
    let cert_path = out.join(format!("{name}.pem"));
    let key_path = out.join(format!("{name}.key"));
    refuse_existing(&[&cert_path, &key_path], force)?;

    let ca_cert_path = ca_dir.join(CA_CERT);
    let ca_key_path = ca_dir.join(CA_KEY);
    let ca_cert = std::fs::read_to_string(&ca_cert_path).map_err(io(&ca_cert_path))?;
    let ca_key = std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
    let ca_key =
        KeyPair::from_pem(&ca_key).map_err(rcgen_err(format!("{}", ca_key_path.display())))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key)
        .map_err(rcgen_err(format!("{}", ca_cert_path.display())))?;

    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
    for d in dns {
        let n = d
            .clone()
            .try_into()
            .map_err(rcgen_err(format!("--dns {d:?}")))?;
        params.subject_alt_names.push(SanType::DnsName(n));
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Server today; client too, so the same certificate serves for mutual TLS later.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let key = KeyPair::generate().map_err(rcgen_err("generate the key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(rcgen_err(format!("sign {name}'s certificate")))?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

fn refuse_existing(paths: &[&Path], force: bool) -> Result<(), CertError> {
    if force {
        return Ok(());
    }
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(CertError::Exists(p.to_path_buf())),
        None => Ok(()),
    }
}

/// Writes `data` to `path` through a temporary file created with `mode`, then renames it
/// into place: readers see the old file or the whole new one, and a key is never readable
/// by others, not even for a moment.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), CertError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    // The umask may have narrowed `mode`; never widened it. Set it exactly.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime};
    use std::sync::Arc;

    #[allow(deprecated)] // the ring provider, as tonic's tls-ring uses it
    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Verifies the certificate in `cert` for `name` against the CA in `ca`, as a gRPC client
    /// does.
    fn verify(ca: &Path, cert: &Path, name: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        let leaf = CertificateDer::from_pem_file(cert).unwrap();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn issued_certificate_verifies_against_its_ca_for_its_sans_only() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        let (ca_pem, ca_key) = make_ca(&ca, "test CA", 30, false).unwrap();
        assert_eq!(mode(&ca_key), 0o600);
        let out = dir.path().join("certs");
        let (pem, key) = issue(
            &ca,
            "mon.a",
            &["127.0.0.1".parse().unwrap(), "10.9.0.2".parse().unwrap()],
            &["mon-a.example".into()],
            &out,
            30,
            false,
        )
        .unwrap();
        assert_eq!(mode(&key), 0o600);
        assert_eq!(pem, out.join("mon.a.pem"));
        for name in ["127.0.0.1", "10.9.0.2", "mon-a.example"] {
            verify(&ca_pem, &pem, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        // A name the certificate does not carry.
        assert!(verify(&ca_pem, &pem, "127.0.0.2").is_err());
        assert!(verify(&ca_pem, &pem, "other.example").is_err());
        // Another cluster's CA.
        let other = dir.path().join("other");
        let (other_pem, _) = make_ca(&other, "other CA", 30, false).unwrap();
        assert!(verify(&other_pem, &pem, "127.0.0.1").is_err());
        // The files load as a server identity (cert and key belong together).
        carmine_proto::tls::ServerTls::from_files(&pem, &key).unwrap();
    }

    #[test]
    fn nothing_is_overwritten_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, _) = make_ca(dir.path(), "CA", 1, false).unwrap();
        let before = std::fs::read(&ca_pem).unwrap();
        let e = make_ca(dir.path(), "CA", 1, false).unwrap_err();
        assert!(matches!(e, CertError::Exists(_)), "{e}");
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(std::fs::read(&ca_pem).unwrap(), before);
        make_ca(dir.path(), "CA", 1, true).unwrap();
        assert_ne!(std::fs::read(&ca_pem).unwrap(), before);

        let ip = ["127.0.0.1".parse().unwrap()];
        issue(dir.path(), "osd.0", &ip, &[], dir.path(), 1, false).unwrap();
        let e = issue(dir.path(), "osd.0", &ip, &[], dir.path(), 1, false).unwrap_err();
        assert!(matches!(e, CertError::Exists(_)), "{e}");
        issue(dir.path(), "osd.0", &ip, &[], dir.path(), 1, true).unwrap();
    }

    #[test]
    fn issue_refuses_no_san_bad_names_and_a_missing_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ip = ["127.0.0.1".parse().unwrap()];
        let e = issue(dir.path(), "osd.0", &[], &[], dir.path(), 1, false).unwrap_err();
        assert!(matches!(e, CertError::NoSubjectAltName), "{e}");
        let e = issue(dir.path(), "../x", &ip, &[], dir.path(), 1, false).unwrap_err();
        assert!(matches!(e, CertError::BadName(_)), "{e}");
        let e = issue(dir.path(), "osd.0", &ip, &[], dir.path(), 1, false).unwrap_err();
        assert!(e.to_string().contains("ca.pem"), "{e}");
    }
}
