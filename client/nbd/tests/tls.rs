//! NBD over TLS (NBD_OPT_STARTTLS) with real clients: `carmine-nbd --nbd-tls-cert/--nbd-tls-key`
//! serving an image of a real test cluster (`client/lib/tests/common`: the monitor in this
//! process, `carmine-osd` processes), and libnbd's `nbdinfo` and qemu's `qemu-io` as clients,
//! verifying the server certificate against the test's CA (issued for 127.0.0.1).
//!
//! - `nbds://` (libnbd with `tls=require`): the export's size is reported;
//! - `qemu-img info` and `qemu-io` with `tls-creds-x509`: the size; a pattern written over
//!   TLS reads back in a second connection, and through the cluster client too;
//! - in the default (required) mode plain-text `nbdinfo nbd://` and `qemu-io` are refused
//!   (ERR_TLS_REQD: the server's message in libnbd's debug log, qemu's error names TLS);
//! - `--nbd-tls-mode optional`: `nbd://` and `nbds://` both served.

#[path = "../../lib/tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carmine_client::image::Image;
use carmine_client::Client;

const SIZE: u64 = 64 << 20;

/// `carmine-osd` next to this test binary (what `common::osd_bin` runs), built when missing:
/// `cargo nextest run -p carmine-nbd` builds this package only.
fn ensure_osd_bin() {
    if std::env::var_os("CARMINE_OSD_BIN").is_some() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    if profile_dir.join("carmine-osd").exists() {
        return;
    }
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(p) => p.to_string(),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let st = Command::new(cargo)
        .args(["build", "-p", "carmine-osd", "--profile", &profile])
        .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap())
        .status()
        .expect("cargo build -p carmine-osd");
    assert!(st.success(), "cargo build -p carmine-osd: {st}");
}

/// A CA (`dir/ca-cert.pem`, the name libnbd and qemu look for) and a server certificate for
/// IP 127.0.0.1 it issued (`dir/server-cert.pem`, `dir/server-key.pem`), as `carmine cert ca`
/// and `carmine cert issue --ip 127.0.0.1` make them.
fn certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "carmine-nbd test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("ca-cert.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server-cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server-key.pem"), key.serialize_pem()).unwrap();
}

/// A `carmine-nbd` process; killed on drop.
struct Gateway {
    child: Child,
    port: u16,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gateway(mon: &str, keyfile: &Path, image: &str, dir: &Path, extra: &[&str]) -> Gateway {
    let mut child = Command::new(env!("CARGO_BIN_EXE_carmine-nbd"))
        .args(["--mon", mon, "--plaintext", "--image", image])
        .args(["--listen", "127.0.0.1:0", "--keyfile"])
        .arg(keyfile)
        .arg("--nbd-tls-cert")
        .arg(dir.join("server-cert.pem"))
        .arg("--nbd-tls-key")
        .arg(dir.join("server-key.pem"))
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn carmine-nbd");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no ready line from carmine-nbd: {line:?}"));
    Gateway { child, port }
}

/// Runs a client with a deadline; its output.
fn run(cmd: &mut Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (packages libnbd-bin, qemu-utils)"));
    let pid = child.id();
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("{cmd:?} still running after {:?}", start.elapsed());
        }
    }
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn nbdinfo_qemu_over_tls_plain_refused_when_required_served_when_optional() {
    ensure_osd_bin();
    let rt = common::runtime();
    let cluster = rt.block_on(common::Cluster::start("rbd", 8, &[1]));
    let client = Arc::new(rt.block_on(Client::connect(cluster.config())).unwrap());
    rt.block_on(Image::create(client.clone(), "rbd", "tls", SIZE, 1 << 20))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let keyfile: PathBuf = dir.path().join("client.key");
    std::fs::write(
        &keyfile,
        format!(
            "id = \"{}\"\nkey = \"{}\"\n",
            cluster.creds.id,
            cluster.creds.key.to_hex()
        ),
    )
    .unwrap();
    let gw = gateway(&cluster.mon.addr, &keyfile, "rbd/tls", dir.path(), &[]);
    let certs = dir.path().to_str().unwrap();
    let port = gw.port.to_string();

    // libnbd: nbds:// means TLS required, the peer verified against ca-cert.pem.
    let uri = format!("nbds://127.0.0.1:{port}/rbd/tls?tls-certificates={certs}");
    let info = ok(Command::new("nbdinfo").args(["--size", &uri]));
    assert_eq!(info.trim(), SIZE.to_string());

    // qemu: write a pattern over TLS, read it back in another connection.
    let image_opts = format!(
        "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},\
         export=rbd/tls,tls-creds=tls0"
    );
    let creds = format!("tls-creds-x509,id=tls0,dir={certs},endpoint=client");
    let qemu_io = |cmd: &str| {
        ok(Command::new("qemu-io")
            .args(["--object", &creds, "--image-opts", &image_opts])
            .args(["-c", cmd]))
    };
    let info = ok(Command::new("qemu-img").args([
        "info",
        "--object",
        &creds,
        "--image-opts",
        &image_opts,
    ]));
    assert!(info.contains("virtual size: 64 MiB"), "{info}");
    qemu_io("write -P 0x5a 1536 3M");
    let out = qemu_io("read -P 0x5a 1536 3M");
    assert!(!out.contains("Pattern verification failed"), "{out}");
    let out = qemu_io("read -P 0 0 1536");
    assert!(!out.contains("Pattern verification failed"), "{out}");
    // The data is on the cluster.
    let image = rt.block_on(Image::open(client, "rbd", "tls")).unwrap();
    let back = rt.block_on(image.read(1536, 3 << 20)).unwrap();
    assert!(back.iter().all(|b| *b == 0x5a));

    // Plain text against the (default) required mode: refused. libnbd reports GO's
    // ERR_TLS_REQD as "not supported" (its debug log shows the server's message); qemu
    // names TLS.
    let out = run(Command::new("nbdinfo")
        .env("LIBNBD_DEBUG", "1")
        .arg(format!("nbd://127.0.0.1:{port}/rbd/tls")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("TLS is required"),
        "{err}"
    );
    let out = run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read 0 512"])
        .arg(format!("nbd://127.0.0.1:{port}/rbd/tls")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("TLS negotiation required"),
        "{err}"
    );

    // --nbd-tls-mode optional: plain-text and TLS clients alike.
    drop(gw);
    let optional = ["--nbd-tls-mode", "optional"];
    let gw = gateway(
        &cluster.mon.addr,
        &keyfile,
        "rbd/tls",
        dir.path(),
        &optional,
    );
    let plain = format!("nbd://127.0.0.1:{}/rbd/tls", gw.port);
    let tls = format!(
        "nbds://127.0.0.1:{}/rbd/tls?tls-certificates={certs}",
        gw.port
    );
    for uri in [plain, tls] {
        let info = ok(Command::new("nbdinfo").args(["--size", &uri]));
        assert_eq!(info.trim(), SIZE.to_string(), "{uri}");
    }
}
