//! The `carmine` binary as a real process against a monitor served in this test process
//! (the same `carmine_mon::serve` the `carmine-mon` binary runs) on a free loopback port.

use std::process::{Command, Output};

use carmine_proto::v1;
use serde_json::Value;

mod test_mon;
use test_mon::TestMon;

const TOKEN: &str = "cli-test-admin-token";

/// The test's monitor over a data dir of its own.
struct Mon {
    inner: TestMon,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Mon {
    type Target = TestMon;
    fn deref(&self) -> &TestMon {
        &self.inner
    }
}

impl Mon {
    fn start() -> Mon {
        let dir = tempfile::tempdir().unwrap();
        Mon {
            inner: TestMon::start(TOKEN, dir.path(), &[]),
            _dir: dir,
        }
    }

    /// Registers an OSD through the OSD-facing Boot RPC (as an OSD agent would).
    fn boot(&self, uuid: &str, host: &str) -> u32 {
        let url = format!("http://{}", self.addr);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = v1::mon_cluster_client::MonClusterClient::connect(url)
                .await
                .unwrap();
            c.boot(test_mon::as_admin(
                TOKEN,
                v1::BootRequest {
                    uuid: uuid.into(),
                    host: host.into(),
                    public_addr: "127.0.0.1:6800".into(),
                    cluster_addr: "127.0.0.1:6801".into(),
                    shard_count: 1,
                    shard_ports: vec![6800],
                    weight: 1.0,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .id
        })
    }
}

fn carmine(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_carmine"));
    c.args(args)
        .env_remove("CARMINE_MON")
        .env_remove("CARMINE_TOKEN")
        .env_remove("CARMINE_CONFIG")
        .env_remove("CARMINE_TLS_CA")
        .env("CARMINE_PLAINTEXT", "1")
        .env("XDG_CONFIG_HOME", "/nonexistent-carmine-test");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// Runs with --mon/--token and expects success; returns stdout.
fn ok(mon: &Mon, args: &[&str]) -> String {
    let mut all = vec!["--mon", &mon.addr, "--token", TOKEN];
    all.extend_from_slice(args);
    let o = carmine(&all, &[]);
    assert!(
        o.status.success(),
        "carmine {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn json(mon: &Mon, args: &[&str]) -> Value {
    let mut all = vec!["--format", "json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(mon, &all)).unwrap()
}

#[test]
fn commands_in_plain_and_json() {
    let mon = Mon::start();
    let a = mon.boot("uuid-a", "hostA");
    let b = mon.boot("uuid-b", "hostB");
    let _c = mon.boot("uuid-c", "hostB");

    let out = ok(
        &mon,
        &["pool", "create", "rbd", "--pg-num", "16", "--size", "1"],
    );
    assert!(out.starts_with("created pool rbd (id 0"), "{out}");
    let pools = json(&mon, &["pool", "ls"]);
    assert_eq!(pools[0]["name"], "rbd");
    assert_eq!(pools[0]["min_size"], 1);
    let plain = ok(&mon, &["pool", "ls"]);
    assert!(plain.lines().nth(1).unwrap().contains("rbd"), "{plain}");

    let s = json(&mon, &["status"]);
    assert_eq!(s["health"]["status"], "HEALTH_OK");
    assert_eq!(s["osds"]["up"], 3);
    assert_eq!(s["pgs"], 16);
    let plain = ok(&mon, &["status"]);
    assert!(plain.contains("    health: HEALTH_OK\n"), "{plain}");
    assert!(plain.contains("    osd: 3 osds: 3 up, 3 in\n"), "{plain}");
    assert!(plain.contains("    pools:   1 pools, 16 pgs\n"), "{plain}");

    let osds = json(&mon, &["osd", "ls"]);
    assert_eq!(osds.as_array().unwrap().len(), 3);
    assert_eq!(osds[0]["host"], "hostA");
    let tree = json(&mon, &["osd", "tree"]);
    assert_eq!(tree[1]["host"], "hostB");
    assert_eq!(tree[1]["osds"].as_array().unwrap().len(), 2);
    let plain = ok(&mon, &["osd", "tree"]);
    assert!(plain.contains("host  hostB"), "{plain}");

    let epoch = json(&mon, &["map", "get"])["epoch"].as_u64().unwrap();
    // pg map: pinned placement (computed once from the placement code for this map: osd.0 on
    // hostA, osd.1 and osd.2 on hostB, pool 0 with 16 PGs of size 1). A change here is a
    // protocol change, not something to update.
    let pm = json(&mon, &["pg", "map", "rbd", "my-object"]);
    assert_eq!(pm["pg"], 3);
    assert_eq!(pm["osds"], serde_json::json!([a]));
    assert_eq!(a, 0);
    let pg = 3;
    let plain = ok(&mon, &["pg", "map", "rbd", "my-object"]);
    assert!(plain.contains(&format!("pg 0.{pg:x}")), "{plain}");

    let dump = json(&mon, &["pg", "dump"]);
    assert_eq!(dump["pgs"].as_array().unwrap().len(), 16);
    assert!(dump["pgs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["state"] == "active"));

    // Changes, and their effect on health.
    let r = json(&mon, &["osd", "down", &a.to_string()]);
    assert_eq!(r["epoch"].as_u64().unwrap(), epoch + 1);
    let h = json(&mon, &["health"]);
    assert_eq!(h["status"], "HEALTH_WARN");
    assert_eq!(h["checks"][0]["code"], "OSD_DOWN");
    let plain = ok(&mon, &["health", "detail"]);
    assert!(
        plain.starts_with("HEALTH_WARN\nOSD_DOWN (HEALTH_WARN): 1 osds down"),
        "{plain}"
    );
    assert!(
        plain.contains(&format!("    osd.{a} (host hostA) is down")),
        "{plain}"
    );
    ok(&mon, &["osd", "out", &b.to_string()]);
    let osds = json(&mon, &["osd", "ls"]);
    assert_eq!(osds[1]["in"], false);
    ok(&mon, &["osd", "in", &b.to_string()]);
    ok(&mon, &["osd", "rm", &a.to_string()]);
    assert_eq!(json(&mon, &["osd", "ls"]).as_array().unwrap().len(), 2);
    ok(&mon, &["pool", "set", "rbd", "pg_num", "32"]);
    assert_eq!(json(&mon, &["pool", "ls"])[0]["pg_num"], 32);

    // Old epochs stay readable.
    let old = json(&mon, &["map", "get", "--epoch", &epoch.to_string()]);
    assert_eq!(old["epoch"].as_u64().unwrap(), epoch);
    assert_eq!(old["osds"].as_array().unwrap().len(), 3);
    let plain = ok(&mon, &["map", "get"]);
    assert!(
        plain.contains("pool 0 'rbd' size 1 min_size 1 pg_num 32"),
        "{plain}"
    );

    let r = json(&mon, &["osd", "set", "noout"]);
    assert_eq!(r["result"], "set noout");
    assert_eq!(
        json(&mon, &["map", "get"])["flags"],
        serde_json::json!(["noout"])
    );
    assert!(ok(&mon, &["map", "get"]).contains("flags noout"));
    ok(&mon, &["osd", "unset", "noout"]);
    assert_eq!(json(&mon, &["map", "get"])["flags"], serde_json::json!([]));
    ok(&mon, &["pool", "rm", "rbd"]);
    assert_eq!(json(&mon, &["pool", "ls"]), serde_json::json!([]));
}

#[test]
fn credentials_from_env_and_config_file() {
    let mon = Mon::start();
    let o = carmine(
        &["pool", "ls"],
        &[("CARMINE_MON", &mon.addr), ("CARMINE_TOKEN", TOKEN)],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("carmine.toml");
    std::fs::write(
        &file,
        format!("mon = \"{}\"\ntoken = \"{TOKEN}\"\n", mon.addr),
    )
    .unwrap();
    let o = carmine(
        &[
            "--config",
            file.to_str().unwrap(),
            "--format",
            "json",
            "status",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["epoch"], 1);
    // The default config location is honoured too.
    std::fs::create_dir_all(dir.path().join("carmine")).unwrap();
    std::fs::copy(&file, dir.path().join("carmine/config.toml")).unwrap();
    let o = carmine(
        &["status"],
        &[("XDG_CONFIG_HOME", dir.path().to_str().unwrap())],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn clear_errors() {
    let mon = Mon::start();
    // Wrong token: refused, exit 4, nothing done.
    let o = carmine(
        &[
            "--mon", &mon.addr, "--token", "wrong", "pool", "create", "x", "--pg-num", "8",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(4));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("the monitor refused the credential"), "{err}");
    // No token at all.
    let o = carmine(&["--mon", &mon.addr, "status"], &[]);
    assert_eq!(o.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no admin credential"));
    assert_eq!(ok(&mon, &["--format", "json", "pool", "ls"]).trim(), "[]");

    // Unreachable monitor: a port that was just free.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let o = carmine(&["--mon", &free, "--token", TOKEN, "status"], &[]);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("cannot reach the monitor at {free}")),
        "{err}"
    );

    // Bad arguments: usage error from clap (exit 2), or a rejection by the monitor (exit 5).
    let o = carmine(&["pool", "create", "x"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--pg-num"));
    let o = carmine(&["osd", "out", "not-a-number"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let o = carmine(
        &[
            "--mon",
            &mon.addr,
            "--token",
            TOKEN,
            "pool",
            "create",
            "x",
            "--pg-num",
            "8",
            "--size",
            "1",
            "--min-size",
            "3",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&o.stderr).contains("min_size 3 must be in 1..=size (1)"));
    // More copies than the OSDs keep: refused by the monitor, and the CLI says why.
    let o = carmine(
        &[
            "--mon", &mon.addr, "--token", TOKEN, "pool", "create", "x", "--pg-num", "8", "--size",
            "6",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(5));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("pool size 6 is not supported: the OSDs keep at most 5 copies"),
        "{err}"
    );
    // Without --size the pool gets the supported size.
    assert!(ok(&mon, &["pool", "create", "dflt", "--pg-num", "4"]).starts_with("created pool"));
    assert_eq!(json(&mon, &["pool", "ls"])[0]["size"], 1);
    let o = carmine(
        &[
            "--mon", &mon.addr, "--token", TOKEN, "pg", "map", "nopool", "obj",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(5));

    // A broken config file is reported with its path.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "mon = [").unwrap();
    let o = carmine(&["--config", file.to_str().unwrap(), "status"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.toml"));
}

#[test]
fn shell_completions() {
    let o = carmine(&["completions", "bash"], &[]);
    assert!(o.status.success());
    let s = String::from_utf8(o.stdout).unwrap();
    assert!(
        s.contains("_carmine()") && s.contains("pool"),
        "{}",
        &s[..s.len().min(200)]
    );
}
