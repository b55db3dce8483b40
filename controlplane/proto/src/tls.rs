//! TLS for the control plane's gRPC: one decision per process, made here.
//!
//! Every gRPC client in Carmine (the CLI, the OSD agent towards the monitor and towards its
//! peers' admin services, the client library, the thrash tool) dials through
//! [`ClientTls::endpoint`], and every gRPC server (the monitor, the OSD admin service) is
//! built by [`ServerTls::server`]. A process makes its choice once, at start-up, from its
//! flags or config file ([`ClientTls::choose`], [`ServerTls::choose`]):
//!
//! * **TLS** (rustls with the ring provider, through tonic's `tls-ring` feature): servers
//!   present a certificate issued by the cluster CA (`carmine cert`), and clients verify it
//!   against that CA only, never the system's roots. There are no client certificates: who
//!   may call what is the bearer credential's business, carried inside the TLS session.
//! * **Plain text**: only when the operator says so explicitly (`--plaintext`,
//!   `plaintext = true`). Having neither TLS files nor that flag is an error
//!   ([`TlsError::NotChosen`]) that names both options, so a forgotten flag never downgrades
//!   a cluster silently.
//!
//! Which name is verified: the address the client dialled. Monitors and OSDs are reached by
//! IP address (`127.0.0.1:6790`, a netns address, the admin address an OSD published in the
//! map), so daemon certificates carry IP SANs, and DNS SANs for host names. An OSD peer's
//! address comes from the monitor's map: the connecting OSD verifies that the server at that
//! address holds a certificate of this cluster's CA for that address. A client that dials
//! through a name the certificate does not carry can set the name to verify explicitly
//! ([`ClientTls::with_domain`]). What this proves, and no more: the server at that address
//! holds a key the cluster CA certified for that address. It does not prove that it is the
//! OSD the map names there (any daemon certificate issued for that IP would pass); binding a
//! peer to its OSD id would take an `osd.<id>` name in each certificate, verified with
//! [`ClientTls::with_domain`], or mutual TLS.
//!
//! The URI scheme follows the choice ([`ClientTls::uri`]): `https://` with TLS, `http://`
//! without. A URI that names the other scheme is refused ([`TlsError::SchemeMismatch`])
//! rather than obeyed, because tonic sends an `http://` URI in plain text even when TLS is
//! configured.
//!
//! Handshakes are bounded ([`HANDSHAKE_TIMEOUT`]) on both sides.
//!
//! The loader checks the PEM files when the process starts, so that a wrong path, a key that
//! does not belong to the certificate, or a CA file that holds no certificate fail at once
//! with the file named ([`TlsError`]), not later as a handshake error on every call.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// Longest a TLS handshake may take, on both sides. tonic sets none by default, so a peer
/// that opens a connection and never finishes its handshake would hold the server's
/// connection task for good.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Neither TLS material nor the explicit plain-text flag was given.
    #[error("no transport security chosen: give {tls} for TLS, or {plaintext} to run without TLS")]
    NotChosen {
        /// The option(s) that enable TLS, as the operator spells them.
        tls: &'static str,
        /// The option that allows plain text.
        plaintext: &'static str,
    },
    /// Both TLS material and the plain-text flag were given.
    #[error("{tls} and {plaintext} contradict each other: give one")]
    Conflict {
        /// The option(s) that enable TLS.
        tls: &'static str,
        /// The option that allows plain text.
        plaintext: &'static str,
    },
    /// Only part of the TLS material was given (a certificate without its key...).
    #[error("incomplete TLS setup: {0}")]
    Incomplete(&'static str),
    /// A file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind, or a malformed one.
    #[error("{}: {problem}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The certificate and the key do not form a usable server identity.
    #[error("{} with {}: {problem}", cert.display(), key.display())]
    Identity {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        problem: String,
    },
    /// An address that is not a valid URI.
    #[error("bad address {addr}: {problem}")]
    BadAddress {
        /// The address.
        addr: String,
        /// Why.
        problem: String,
    },
    /// An address whose scheme contradicts this process's choice.
    #[error("address {addr} asks for {scheme}, but this process runs {mode}")]
    SchemeMismatch {
        /// The address.
        addr: String,
        /// The scheme it names.
        scheme: String,
        /// "TLS" or "plain text".
        mode: &'static str,
    },
    /// tonic refused the TLS configuration.
    #[error("TLS configuration: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn pem_error(path: &Path, problem: impl Into<String>) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

/// The certificates in a PEM file (at least one).
fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, format!("malformed PEM: {e}")))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

/// The provider tonic's `tls-ring` uses when no process default is installed (ring's
/// suites, without post-quantum key exchange, which rustls offers only with aws-lc).
#[allow(deprecated)]
fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How this process dials gRPC servers.
#[derive(Clone, Debug)]
pub enum ClientTls {
    /// `http://`, no encryption (chosen explicitly).
    Plaintext,
    /// `https://`, the server verified against `ca`.
    Tls {
        /// The cluster CA, PEM.
        ca: Certificate,
        /// The name to verify instead of the dialled host, if set.
        domain: Option<String>,
    },
}

impl ClientTls {
    /// The choice from a process's options: `ca` (a CA file) for TLS, `plaintext` for none.
    /// `tls_opt` and `plain_opt` are the option names as the operator spells them, for the
    /// error message.
    pub fn choose(
        ca: Option<&Path>,
        plaintext: bool,
        tls_opt: &'static str,
        plain_opt: &'static str,
    ) -> Result<Self, TlsError> {
        match (ca, plaintext) {
            (Some(_), true) => Err(TlsError::Conflict {
                tls: tls_opt,
                plaintext: plain_opt,
            }),
            (Some(ca), false) => Self::from_ca_file(ca),
            (None, true) => Ok(ClientTls::Plaintext),
            (None, false) => Err(TlsError::NotChosen {
                tls: tls_opt,
                plaintext: plain_opt,
            }),
        }
    }

    /// TLS, verifying servers against the CA certificate(s) in the PEM file at `path`.
    pub fn from_ca_file(path: &Path) -> Result<Self, TlsError> {
        let pem = read(path)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(path, &pem)? {
            roots
                .add(cert)
                .map_err(|e| pem_error(path, format!("not a usable CA certificate: {e}")))?;
        }
        Ok(ClientTls::Tls {
            ca: Certificate::from_pem(pem),
            domain: None,
        })
    }

    /// Verifies servers under `domain` instead of the host part of the dialled address.
    /// No effect in plain text.
    pub fn with_domain(self, domain: impl Into<String>) -> Self {
        match self {
            ClientTls::Plaintext => ClientTls::Plaintext,
            ClientTls::Tls { ca, .. } => ClientTls::Tls {
                ca,
                domain: Some(domain.into()),
            },
        }
    }

    /// True for TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientTls::Tls { .. })
    }

    fn mode(&self) -> &'static str {
        if self.is_tls() {
            "TLS"
        } else {
            "plain text"
        }
    }

    /// The URI for `addr` (`host:port`, or a URI whose scheme must match this choice).
    pub fn uri(&self, addr: &str) -> Result<String, TlsError> {
        let want = if self.is_tls() { "https" } else { "http" };
        match addr.split_once("://") {
            None => Ok(format!("{want}://{addr}")),
            Some((scheme, _)) if scheme.eq_ignore_ascii_case(want) => Ok(addr.to_owned()),
            Some((scheme, _)) => Err(TlsError::SchemeMismatch {
                addr: addr.to_owned(),
                scheme: scheme.to_owned(),
                mode: self.mode(),
            }),
        }
    }

    /// An endpoint for `addr` with this choice applied (the caller adds its timeouts).
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, TlsError> {
        let uri = self.uri(addr)?;
        let endpoint = Endpoint::from_shared(uri).map_err(|e| TlsError::BadAddress {
            addr: addr.to_owned(),
            problem: e.to_string(),
        })?;
        match self {
            ClientTls::Plaintext => Ok(endpoint),
            ClientTls::Tls { ca, domain } => {
                let mut cfg = ClientTlsConfig::new()
                    .ca_certificate(ca.clone())
                    .timeout(HANDSHAKE_TIMEOUT);
                if let Some(d) = domain {
                    cfg = cfg.domain_name(d.clone());
                }
                Ok(endpoint.tls_config(cfg)?)
            }
        }
    }
}

/// A rustls server configuration (ring, safe default versions, no client certificates)
/// from the certificate chain in `cert` and the private key in `key` (PEM), for servers
/// that run TLS themselves rather than through tonic (`carmine-nbd`'s NBD_OPT_STARTTLS).
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    Ok(load_server_config(cert, key)?.0)
}

fn load_server_config(
    cert: &Path,
    key: &Path,
) -> Result<(rustls::ServerConfig, Vec<u8>, Vec<u8>), TlsError> {
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain = certificates(cert, &cert_pem)?;
    let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => pem_error(key, "no PRIVATE KEY block found"),
        e => pem_error(key, format!("malformed PEM: {e}")),
    })?;
    let cfg = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, der))
        .map_err(|e| TlsError::Identity {
            cert: cert.to_owned(),
            key: key.to_owned(),
            problem: e.to_string(),
        })?;
    Ok((cfg, cert_pem, key_pem))
}

/// How this process serves gRPC.
#[derive(Clone, Debug)]
pub enum ServerTls {
    /// No encryption (chosen explicitly).
    Plaintext,
    /// TLS with this certificate chain and key.
    Tls(Identity),
}

impl ServerTls {
    /// The choice from a process's options: `cert` and `key` for TLS, `plaintext` for none.
    pub fn choose(
        cert: Option<&Path>,
        key: Option<&Path>,
        plaintext: bool,
        tls_opt: &'static str,
        plain_opt: &'static str,
    ) -> Result<Self, TlsError> {
        match (cert, key, plaintext) {
            (None, None, true) => Ok(ServerTls::Plaintext),
            (None, None, false) => Err(TlsError::NotChosen {
                tls: tls_opt,
                plaintext: plain_opt,
            }),
            (_, _, true) => Err(TlsError::Conflict {
                tls: tls_opt,
                plaintext: plain_opt,
            }),
            (Some(cert), Some(key), false) => Self::from_files(cert, key),
            (Some(_), None, false) => Err(TlsError::Incomplete(
                "a TLS certificate was given without its key",
            )),
            (None, Some(_), false) => Err(TlsError::Incomplete(
                "a TLS key was given without its certificate",
            )),
        }
    }

    /// TLS with the certificate chain in `cert` and the private key in `key` (PEM).
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        // What tonic will do when it serves, done now so that a key of another certificate
        // is reported with both files named.
        let (_, cert_pem, key_pem) = load_server_config(cert, key)?;
        Ok(ServerTls::Tls(Identity::from_pem(cert_pem, key_pem)))
    }

    /// True for TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, ServerTls::Tls(_))
    }

    /// A server builder with this choice applied (the caller adds its services).
    pub fn server(&self) -> Result<tonic::transport::Server, TlsError> {
        let builder = tonic::transport::Server::builder();
        match self {
            ServerTls::Plaintext => Ok(builder),
            ServerTls::Tls(identity) => {
                let cfg = ServerTlsConfig::new()
                    .identity(identity.clone())
                    .timeout(HANDSHAKE_TIMEOUT);
                Ok(builder.tls_config(cfg)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write test file");
        p
    }

    #[test]
    fn neither_nor_both_is_refused_with_both_options_named() {
        let e = ClientTls::choose(None, false, "--tls-ca", "--plaintext").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("--tls-ca") && msg.contains("--plaintext"),
            "{msg}"
        );
        let e = ServerTls::choose(None, None, false, "--tls-cert/--tls-key", "--plaintext")
            .unwrap_err();
        assert!(matches!(e, TlsError::NotChosen { .. }), "{e}");
        let e = ClientTls::choose(Some(Path::new("ca.pem")), true, "--tls-ca", "--plaintext")
            .unwrap_err();
        assert!(matches!(e, TlsError::Conflict { .. }), "{e}");
        let e = ServerTls::choose(Some(Path::new("c")), None, false, "a", "b").unwrap_err();
        assert!(matches!(e, TlsError::Incomplete(_)), "{e}");
        assert!(!ClientTls::choose(None, true, "a", "b").unwrap().is_tls());
    }

    #[test]
    fn missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope.pem");
        let e = ClientTls::from_ca_file(&p).unwrap_err();
        assert!(matches!(e, TlsError::Read { .. }), "{e}");
        assert!(e.to_string().contains("nope.pem"), "{e}");
    }

    #[test]
    fn file_without_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "ca.pem", "hello, not a certificate\n");
        let e = ClientTls::from_ca_file(&p).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("ca.pem") && msg.contains("no CERTIFICATE"),
            "{msg}"
        );
    }

    #[test]
    fn malformed_pem_and_garbage_certificate_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "trunc.pem",
            "-----BEGIN CERTIFICATE-----\nMIIB\n",
        );
        let e = ClientTls::from_ca_file(&p).unwrap_err();
        assert!(
            matches!(e, TlsError::Pem { .. }) && e.to_string().contains("trunc.pem"),
            "{e}"
        );
        // Valid base64, but not a certificate.
        let p = write(
            dir.path(),
            "junk.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        );
        let e = ClientTls::from_ca_file(&p).unwrap_err();
        assert!(e.to_string().contains("not a usable CA certificate"), "{e}");
    }

    #[test]
    fn key_file_without_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cert = write(
            dir.path(),
            "c.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        );
        let key = write(dir.path(), "k.pem", "");
        let e = ServerTls::from_files(&cert, &key).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("k.pem") && msg.contains("no PRIVATE KEY"),
            "{msg}"
        );
    }

    #[test]
    fn scheme_follows_the_choice() {
        let plain = ClientTls::Plaintext;
        assert_eq!(plain.uri("127.0.0.1:1").unwrap(), "http://127.0.0.1:1");
        assert_eq!(plain.uri("http://h:1").unwrap(), "http://h:1");
        let e = plain.uri("https://h:1").unwrap_err();
        assert!(matches!(e, TlsError::SchemeMismatch { .. }), "{e}");
        let tls = ClientTls::Tls {
            ca: Certificate::from_pem(""),
            domain: None,
        };
        assert_eq!(tls.uri("127.0.0.1:1").unwrap(), "https://127.0.0.1:1");
        let e = tls.uri("http://127.0.0.1:1").unwrap_err();
        assert!(e.to_string().contains("runs TLS"), "{e}");
    }

    #[test]
    fn real_identity_loads_and_a_foreign_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let c = write(dir.path(), "c.pem", &cert.pem());
        let k = write(dir.path(), "k.pem", &key.serialize_pem());
        let o = write(dir.path(), "other.pem", &other.serialize_pem());
        assert!(ServerTls::from_files(&c, &k).unwrap().is_tls());
        assert!(server_config(&c, &k).is_ok());
        assert!(ClientTls::from_ca_file(&c).unwrap().is_tls());
        let e = ServerTls::from_files(&c, &o).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, TlsError::Identity { .. }) && msg.contains("other.pem"),
            "{msg}"
        );
    }
}
