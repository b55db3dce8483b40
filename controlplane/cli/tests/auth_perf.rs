//! `carmine auth ...` and `carmine osd perf` as real processes against a monitor served in
//! this test process (`carmine_mon::serve`, as the `carmine-mon` binary runs it) and a real
//! OSD agent (its admin service) hosted here, as an OSD hosts it.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carmine_agent::{Agent, AgentConfig, MemConfig, SharedKeyring, Stats};
use serde_json::{json, Value};

mod test_mon;
use test_mon::TestMon;

const TOKEN: &str = "cli-test-admin-token";

/// The test's monitor (heartbeats every 100 ms).
fn start_mon(dir: &Path) -> TestMon {
    TestMon::start(TOKEN, dir, &["--heartbeat-ms", "100"])
}

fn carmine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_carmine"))
        .args(args)
        .env_remove("CARMINE_MON")
        .env_remove("CARMINE_TOKEN")
        .env_remove("CARMINE_CONFIG")
        .env_remove("CARMINE_TLS_CA")
        .env("CARMINE_PLAINTEXT", "1")
        .env("XDG_CONFIG_HOME", "/nonexistent-carmine-test")
        .output()
        .unwrap()
}

/// Runs against `mon` with the admin token.
fn at(mon: &TestMon, args: &[&str]) -> Output {
    let mut all = vec!["--mon", &mon.addr, "--token", TOKEN];
    all.extend_from_slice(args);
    carmine(&all)
}

fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "carmine {what} failed ({:?}): {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Expects exit code `code` and `needle` in stderr.
fn fails(o: Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(needle), "{needle:?} not in: {err}");
}

fn is_key_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[test]
fn auth_add_get_rm_ls_keyfile_and_restart() {
    use std::os::unix::fs::PermissionsExt;
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let keyfile = files.path().join("bench.key");
    let kf = keyfile.to_str().unwrap();
    let mon = start_mon(data.path());

    let key = ok(
        at(&mon, &["auth", "add", "client.bench", "--keyfile", kf]),
        "auth add",
    );
    let key = key.trim_end().to_string();
    assert!(is_key_hex(&key), "{key:?}");
    // The key file: TOML id + key, private.
    let mode = std::fs::metadata(&keyfile).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let t: toml::Table = std::fs::read_to_string(&keyfile).unwrap().parse().unwrap();
    assert_eq!(t["id"].as_str(), Some("client.bench"));
    assert_eq!(t["key"].as_str(), Some(key.as_str()));

    // add is get-or-create: the same key again, not created.
    let again: Value = serde_json::from_str(&ok(
        at(&mon, &["--format", "json", "auth", "add", "client.bench"]),
        "auth add (json)",
    ))
    .unwrap();
    assert_eq!(again["id"], "client.bench");
    assert_eq!(again["key"], key.as_str());
    assert_eq!(again["created"], false);
    assert_eq!(again["keyfile"], Value::Null);
    let version = again["keyring_version"].as_u64().unwrap();
    assert_eq!(
        ok(at(&mon, &["auth", "get", "client.bench"]), "auth get").trim_end(),
        key
    );
    let other = ok(at(&mon, &["auth", "add", "client.other"]), "auth add other");
    assert_ne!(other.trim_end(), key);
    assert_eq!(
        ok(at(&mon, &["auth", "ls"]), "auth ls"),
        "client.admin  (admin)\nclient.bench\nclient.other\n"
    );
    let ls: Value =
        serde_json::from_str(&ok(at(&mon, &["--format", "json", "auth", "ls"]), "ls")).unwrap();
    assert_eq!(
        ls["ids"],
        json!(["client.admin", "client.bench", "client.other"])
    );
    assert_eq!(ls["keyring_version"].as_u64(), Some(version + 1));

    // rm, then the key is gone: get and rm refused (exit 5), ls without it.
    let rm = ok(at(&mon, &["auth", "rm", "client.other"]), "auth rm");
    assert!(rm.starts_with("removed the key of client.other"), "{rm}");
    fails(
        at(&mon, &["auth", "get", "client.other"]),
        5,
        "no key for client",
    );
    fails(
        at(&mon, &["auth", "rm", "client.other"]),
        5,
        "no key for client",
    );
    assert_eq!(
        ok(at(&mon, &["auth", "ls"]), "ls"),
        "client.admin  (admin)\nclient.bench\n"
    );

    // Invalid ids: refused by the monitor with the reason (exit 5).
    fails(
        at(&mon, &["auth", "add", "client bench"]),
        5,
        "only printable ASCII without spaces",
    );
    fails(at(&mon, &["auth", "add", ""]), 5, "must not be empty");
    fails(
        at(&mon, &["auth", "add", &"c".repeat(300)]),
        5,
        "at most 256 allowed",
    );
    // Without the admin token: exit 4.
    fails(
        carmine(&["--mon", &mon.addr, "--token", "wrong", "auth", "ls"]),
        4,
        "refused",
    );

    // A restarted monitor on the same store still has the key; `auth get --keyfile` writes
    // the same file again.
    drop(mon);
    std::fs::remove_file(&keyfile).unwrap();
    let mon = start_mon(data.path());
    assert_eq!(
        ok(
            at(&mon, &["auth", "get", "client.bench", "--keyfile", kf]),
            "get after restart"
        )
        .trim_end(),
        key
    );
    let t: toml::Table = std::fs::read_to_string(&keyfile).unwrap().parse().unwrap();
    assert_eq!(t["key"].as_str(), Some(key.as_str()));
    assert_eq!(
        ok(at(&mon, &["auth", "ls"]), "ls"),
        "client.admin  (admin)\nclient.bench\n"
    );
}

/// Per-shard counters as the OSD will publish them, plus OSD-wide ones.
struct ShardStats;

impl Stats for ShardStats {
    fn counters(&self) -> Vec<(String, u64)> {
        [
            ("shard0.ops", 120),
            ("shard0.bytes_in", 4096),
            ("shard0.lat_p99_us", 350),
            ("shard0.forwards_sent", 2),
            ("shard0.busy_loops", 9000),
            ("shard1.ops", 80),
            ("shard1.bytes_in", 2048),
            ("shard1.lat_p99_us", 410),
            ("shard1.forwards_sent", 0),
            ("shard1.busy_loops", 7000),
            ("store.used_bytes", 65536),
            ("msgr.conns", 3),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

#[test]
fn osd_perf_plain_json_direct_and_errors() {
    let data = tempfile::tempdir().unwrap();
    let mon = start_mon(data.path());
    let agent = Agent::start(
        AgentConfig {
            mon_addr: mon.addr.clone(),
            uuid: "uuid-perf".into(),
            host: "hostP".into(),
            public_addr: "127.0.0.1".into(),
            cluster_addr: "127.0.0.1".into(),
            shard_ports: vec![6800, 6801],
            weight: 1.0,
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
            credential: Some(test_mon::osd_credential(&mon.addr, TOKEN, "uuid-perf")),
            client_tls: carmine_proto::tls::ClientTls::Plaintext,
            admin_tls: carmine_proto::tls::ServerTls::Plaintext,
        },
        Vec::new(),
        Arc::new(ShardStats),
        Arc::new(MemConfig::default()),
        Arc::new(SharedKeyring::new()),
    )
    .unwrap();
    let start = Instant::now();
    let id = loop {
        if let Some(id) = agent.status().osd_id() {
            break id;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "agent never booted"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let ids = id.to_string();

    let plain = ok(at(&mon, &["osd", "perf", &ids]), "osd perf");
    let lines: Vec<&str> = plain.lines().collect();
    assert_eq!(
        lines[..3],
        [
            "shard  busy_loops  bytes_in  forwards_sent  lat_p99_us  ops",
            "0            9000      4096              2         350  120",
            "1            7000      2048              0         410   80",
        ],
        "{plain}"
    );
    assert_eq!(lines[3], "");
    assert_eq!(
        lines[4..],
        ["msgr.conns        3", "store.used_bytes  65536"]
    );

    let j: Value = serde_json::from_str(&ok(
        at(&mon, &["--format", "json", "osd", "perf", &ids]),
        "osd perf json",
    ))
    .unwrap();
    assert_eq!(j["osd"], id);
    assert_eq!(j["admin_addr"], agent.admin_addr().to_string());
    assert_eq!(
        j["metrics_addr"],
        agent
            .metrics_addr()
            .expect("metrics configured")
            .to_string()
    );
    assert_eq!(
        j["shards"],
        json!([
            {"shard": 0, "ops": 120, "bytes_in": 4096, "lat_p99_us": 350, "forwards_sent": 2, "busy_loops": 9000},
            {"shard": 1, "ops": 80, "bytes_in": 2048, "lat_p99_us": 410, "forwards_sent": 0, "busy_loops": 7000},
        ])
    );
    assert_eq!(
        j["other"],
        json!({"msgr.conns": 3, "store.used_bytes": 65536})
    );

    // Straight to the OSD: no monitor needed (the one named does not exist).
    let admin = agent.admin_addr().to_string();
    let direct = ok(
        carmine(&[
            "--mon",
            "127.0.0.1:1",
            "--token",
            TOKEN,
            "osd",
            "perf",
            "--admin-addr",
            &admin,
        ]),
        "osd perf --admin-addr",
    );
    assert_eq!(direct, plain);

    // The OSD holds no token: it checks the admin key a token stands for against the keyring
    // from the monitor, so another token is refused (exit 4).
    fails(
        carmine(&[
            "--token",
            "not-the-admin-token",
            "osd",
            "perf",
            "--admin-addr",
            &admin,
        ]),
        4,
        "credential refused",
    );
    // An unknown OSD: exit 5 with the reason.
    fails(at(&mon, &["osd", "perf", "99"]), 5, "osd.99 does not exist");
    // Neither an id nor --admin-addr: a usage error (exit 2).
    fails(at(&mon, &["osd", "perf"]), 2, "<ID>");

    // The OSD gone: its admin service is unreachable (exit 3).
    drop(agent);
    fails(
        carmine(&["osd", "perf", "--admin-addr", &admin, "--token", TOKEN]),
        3,
        "OSD admin service",
    );
}
