//! TLS on the control plane, end to end: certificates made by `carmine cert`, a real
//! `carmine-mon` process serving TLS, two real `carmine-osd run` processes (memstore, kernel
//! sockets) that boot over TLS and serve their admin service with their own certificates, the
//! `carmine` binary and the client library. Checked: the CLI's status, an OSD admin call
//! (`osd perf`) and a scrub (the primary asks its peer's admin service for its digest, at
//! the address the monitor published) work over TLS; a write through the client library
//! (its PG peered over TLS first); a client with another cluster's CA is refused; a
//! plain-text client gets a clean error; nothing starts without a transport choice.
//!
//! Needs the `carmine-mon` and `carmine-osd` binaries next to this test's target dir (any
//! workspace build puts them there), or `CARMINE_MON_BIN` / `CARMINE_OSD_BIN`.

#[path = "../../../client/lib/tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const TOKEN: &str = "tls-test-admin-token";

/// The workspace's `carmine-mon` binary (`CARMINE_MON_BIN`, else beside this test's target dir).
fn mon_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CARMINE_MON_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("carmine-mon"))
        .unwrap();
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p carmine-mon) or set CARMINE_MON_BIN",
        bin.display()
    );
    bin
}

/// `carmine <args>` with a clean environment (no CARMINE_* from the caller).
fn carmine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_carmine"))
        .args(args)
        .env_remove("CARMINE_MON")
        .env_remove("CARMINE_TOKEN")
        .env_remove("CARMINE_CONFIG")
        .env_remove("CARMINE_TLS_CA")
        .env_remove("CARMINE_PLAINTEXT")
        .env("XDG_CONFIG_HOME", "/nonexistent-carmine-test")
        .output()
        .expect("run carmine")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "carmine failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// A `carmine-mon` process, killed on drop.
struct MonProc {
    child: Child,
    addr: String,
}

impl MonProc {
    /// Starts `carmine-mon` with `args` and waits for its `listening on` line.
    fn start(data: &Path, args: &[&str]) -> MonProc {
        let mut child = Command::new(mon_bin())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-token",
                TOKEN,
                "--data-dir",
            ])
            .arg(data)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn carmine-mon");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("carmine-mon listening on ") {
                    let _ = tx.send(a.trim().to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(e) => {
                let _ = child.kill();
                panic!("carmine-mon did not print its address: {e}");
            }
        };
        MonProc { child, addr }
    }
}

impl Drop for MonProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running OSD process, killed on drop.
struct OsdProc(Option<Child>);

impl Drop for OsdProc {
    fn drop(&mut self) {
        common::kill_osd(&mut self.0);
    }
}

/// The config of a memstore OSD with TLS on its control plane and its key (`carmine osd new`)
/// in `pki/osd-<i>.keyfile`.
fn osd_config(i: usize, mon: &str, pki: &Path) -> String {
    format!(
        r#"[osd]
uuid = "tls-osd-{i}"
host = "tls-host-{i}"
[mon]
addr = "{mon}"
[admin]
listen = "127.0.0.1:0"
[auth]
keyfile = "{keyfile}"
[tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
[reactor]
cores = [{i}]
idle = "adaptive"
pin = false
[net]
backend = "kernel"
ip = "127.0.0.1"
base_port = 0
[store]
kind = "memstore"
"#,
        ca = pki.join("ca/ca.pem").display(),
        cert = pki.join(format!("osd.{i}.pem")).display(),
        key = pki.join(format!("osd.{i}.key")).display(),
        keyfile = pki.join(format!("osd-{i}.keyfile")).display(),
    )
}

/// The CA, a certificate for the monitor and one per OSD (all for 127.0.0.1), and another
/// cluster's CA, with `carmine cert`.
fn make_pki(pki: &Path) {
    ok(&carmine(&["cert", "ca", "--out", path(&pki.join("ca"))]));
    ok(&carmine(&["cert", "ca", "--out", path(&pki.join("other"))]));
    for name in ["mon.a", "osd.0", "osd.1"] {
        ok(&carmine(&[
            "cert",
            "issue",
            "--ca",
            path(&pki.join("ca")),
            "--name",
            name,
            "--ip",
            "127.0.0.1",
            "--dns",
            "localhost",
            "--out",
            path(pki),
        ]));
    }
}

#[test]
fn cli_osd_admin_scrub_and_client_work_over_tls_and_wrong_ca_or_plaintext_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    make_pki(&pki);
    let ca = pki.join("ca/ca.pem");
    let other_ca = pki.join("other/ca.pem");
    let data = dir.path().join("mon");
    let mon = MonProc::start(
        &data,
        &[
            "--tls-cert",
            path(&pki.join("mon.a.pem")),
            "--tls-key",
            path(&pki.join("mon.a.key")),
            "--heartbeat-ms",
            "300",
        ],
    );
    let tls = ["--tls-ca", path(&ca), "--mon", &mon.addr, "--token", TOKEN];
    let with = |args: &[&str]| -> Output {
        let mut all: Vec<&str> = tls.to_vec();
        all.extend_from_slice(args);
        carmine(&all)
    };

    // The OSDs boot over TLS: the ready line comes after the monitor answered their boot.
    let _osds: Vec<OsdProc> = (0..2)
        .map(|i| {
            let config = dir.path().join(format!("osd{i}.toml"));
            let keyfile = pki.join(format!("osd-{i}.keyfile"));
            let uuid = format!("tls-osd-{i}");
            ok(&with(&[
                "osd",
                "new",
                "--uuid",
                &uuid,
                "--keyfile",
                path(&keyfile),
            ]));
            std::fs::write(&config, osd_config(i, &mon.addr, &pki)).unwrap();
            let (child, ready) =
                common::spawn_osd(&common::osd_bin(), &config, Duration::from_secs(30));
            assert_eq!(ready.id, i as u32);
            OsdProc(Some(child))
        })
        .collect();

    let status = ok(&with(&["status"]));
    assert!(status.contains("osd"), "{status}");
    // The OSD admin service, at the address the monitor holds for osd.0, over TLS.
    let perf = ok(&with(&["osd", "perf", "0"]));
    assert!(perf.contains("shard"), "{perf}");

    // A replicated pool: its PGs peer (OSD to OSD admin calls over TLS) before they take a
    // write, and a scrub asks the replica for its digest over TLS.
    ok(&with(&[
        "pool", "create", "tls", "--pg-num", "4", "--size", "2",
    ]));
    let keyfile = dir.path().join("client.key");
    ok(&with(&[
        "auth",
        "add",
        "client.tls",
        "--keyfile",
        path(&keyfile),
    ]));
    let creds = carmine_client::Credentials::load(&keyfile).unwrap();
    let rt = common::runtime();
    let pgid = rt.block_on(async {
        let mut cfg =
            carmine_client::ClientConfig::new(mon.addr.clone(), creds.clone()).with_ca(&ca);
        cfg.op_timeout = Duration::from_secs(30);
        let client = carmine_client::Client::connect(cfg).await.unwrap();
        client.write_full("tls", "obj", b"over tls").await.unwrap();
        let pg = client.locate("tls", "obj").unwrap().pg;
        let pool = client.map().pool_by_name("tls").unwrap().id;

        // The client library with another cluster's CA: refused, naming the certificate.
        let cfg =
            carmine_client::ClientConfig::new(mon.addr.clone(), creds.clone()).with_ca(&other_ca);
        let Err(e) = carmine_client::Client::connect(cfg).await else {
            panic!("a client with another cluster's CA got through");
        };
        assert!(e.to_string().contains("certificate"), "{e}");
        format!("{pool}.{pg:x}")
    });
    let scrub = ok(&with(&["pg", "scrub", &pgid]));
    assert!(scrub.contains(", consistent"), "{scrub}");

    // Another cluster's CA: the monitor's certificate does not verify.
    let out = carmine(&[
        "--tls-ca",
        path(&other_ca),
        "--mon",
        &mon.addr,
        "--token",
        TOKEN,
        "status",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("certificate"), "{err}");

    // Plain text against the TLS monitor: a clean failure, no hang, no answer.
    let start = std::time::Instant::now();
    let out = carmine(&[
        "--plaintext",
        "--mon",
        &mon.addr,
        "--token",
        TOKEN,
        "status",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("--tls-ca"), "{err}");
    assert!(out.stdout.is_empty());
    assert!(start.elapsed() < Duration::from_secs(20), "{err}");

    // An https:// address for a plain-text command is refused before any connection.
    let https = format!("https://{}", mon.addr);
    let out = carmine(&["--plaintext", "--mon", &https, "--token", TOKEN, "status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plain text"), "{err}");
}

#[test]
fn nothing_starts_without_a_transport_choice() {
    let dir = tempfile::tempdir().unwrap();
    // The monitor: neither TLS files nor --plaintext.
    let out = Command::new(mon_bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-token",
            TOKEN,
            "--data-dir",
        ])
        .arg(dir.path().join("mon"))
        .output()
        .expect("run carmine-mon");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--tls-cert") && err.contains("--plaintext"),
        "{err}"
    );
    assert!(!dir.path().join("mon").exists(), "it touched its data dir");

    // The monitor with a certificate file that is not one: the file is named.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let out = Command::new(mon_bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-token",
            TOKEN,
            "--data-dir",
        ])
        .arg(dir.path().join("mon"))
        .arg("--tls-cert")
        .arg(&junk)
        .arg("--tls-key")
        .arg(&junk)
        .output()
        .expect("run carmine-mon");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("junk.pem"), "{err}");

    // The CLI: neither --tls-ca nor --plaintext.
    let out = carmine(&["--mon", "127.0.0.1:1", "--token", TOKEN, "status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--tls-ca") && err.contains("--plaintext"),
        "{err}"
    );

    // The OSD: a config without [tls].
    let config = dir.path().join("osd.toml");
    let text = osd_config(0, "127.0.0.1:1", dir.path());
    let cut = text.find("[tls]").unwrap();
    let end = text.find("[reactor]").unwrap();
    std::fs::write(&config, format!("{}{}", &text[..cut], &text[end..])).unwrap();
    let out = Command::new(common::osd_bin())
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .expect("run carmine-osd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("[tls] ca, cert and key") && err.contains("plaintext = true"),
        "{err}"
    );
}
