//! `carmine status`, `status --watch` and `osd df` as real processes against a real cluster (a
//! monitor in this process, three `carmine-osd run` processes on memstore; the harness is
//! carmine-client's): the client I/O rates follow what `carmine bench` did, `osd df` adds up
//! to the data written and the PGs placed, and the watch reports an OSD's death and return.

#[path = "../../../client/lib/tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

fn carmine(mon: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_carmine"));
    c.args(["--mon", mon, "--token", common::TOKEN])
        .args(args)
        .env_remove("CARMINE_TLS_CA")
        .env_remove("CARMINE_CONFIG")
        .env("CARMINE_PLAINTEXT", "1");
    c
}

fn json(mon: &str, args: &[&str]) -> Value {
    let out = carmine(mon, &[&["--format", "json"], args].concat())
        .output()
        .expect("run carmine");
    assert!(out.status.success(), "{args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e})"))
}

fn plain(mon: &str, args: &[&str]) -> String {
    let out = carmine(mon, args).output().expect("run carmine");
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bench(mon: &str, keyfile: &str, mode: &str, seconds: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_carmine"))
        .args(["--mon", mon, "--format", "json", "bench", mode])
        .args(["--pool", "st", "--seconds", seconds, "--objects", "512"])
        .args(["--block-size", "4K", "--concurrency", "8", "--prefix", "st"])
        .args(["--keyfile", keyfile, "--quiet"])
        .env_remove("CARMINE_TLS_CA")
        .env("CARMINE_PLAINTEXT", "1")
        .output()
        .expect("run carmine bench")
}

fn u(v: &Value, path: &[&str]) -> u64 {
    let mut x = v;
    for k in path {
        x = &x[*k];
    }
    x.as_u64()
        .unwrap_or_else(|| panic!("{path:?} missing or not an integer in {v}"))
}

/// Runs `bench` while polling `status`; returns the bench's IOPS and the highest rate of
/// `field` ("read_ops_per_sec"...) the status showed meanwhile, with its bytes figure.
fn bench_and_watch_rate(
    mon: &str,
    keyfile: &str,
    mode: &str,
    ops_field: &str,
    bytes_field: &str,
) -> (f64, u64, u64) {
    let (mon2, kf) = (mon.to_string(), keyfile.to_string());
    let mode2 = mode.to_string();
    let runner = std::thread::spawn(move || bench(&mon2, &kf, &mode2, "5"));
    let (mut best_ops, mut best_bytes) = (0, 0);
    // Poll through the bench and a little after it (the rate trails by a heartbeat).
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        let s = json(mon, &["status"]);
        let ops = u(&s, &["client_io", ops_field]);
        if ops > best_ops {
            best_ops = ops;
            best_bytes = u(&s, &["client_io", bytes_field]);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = runner.join().expect("bench thread");
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("bench JSON");
    (report["iops"].as_f64().expect("iops"), best_ops, best_bytes)
}

/// Reads the watch's stdout lines into a channel.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits (at most `within`) for a line containing every one of `want`; returns the lines seen.
fn wait_line(rx: &mpsc::Receiver<String>, want: &[&str], within: Duration, seen: &mut Vec<String>) {
    let deadline = Instant::now() + within;
    loop {
        if seen.iter().any(|l| want.iter().all(|w| l.contains(w))) {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                eprintln!("watch: {l}");
                seen.push(l);
            }
            Err(_) => panic!(
                "no watch line with {want:?} within {within:?}; got:\n{}",
                seen.join("\n")
            ),
        }
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn status_rates_osd_df_and_the_watch_follow_the_cluster() {
    let rt = common::runtime();
    let mut cluster = rt.block_on(common::Cluster::start("st", 32, &[1, 1, 1]));
    let dir = tempfile::tempdir().unwrap();
    let keyfile = dir.path().join("client.key");
    std::fs::write(&keyfile, cluster.creds.to_toml().unwrap()).unwrap();
    let kf = keyfile.to_str().unwrap().to_string();
    let mon = cluster.mon.addr.clone();

    // The watch runs through everything below.
    let mut watch = KillOnDrop(
        carmine(&mon, &["status", "--watch", "--interval", "0.3"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the watch"),
    );
    let rx = lines_of(&mut watch.0);
    let mut seen = Vec::new();
    wait_line(
        &rx,
        &["osd: 3 osds: 3 up, 3 in"],
        Duration::from_secs(20),
        &mut seen,
    );

    // Idle: no client I/O.
    let s = json(&mon, &["status"]);
    assert_eq!(u(&s, &["client_io", "write_ops_per_sec"]), 0, "{s}");
    assert_eq!(u(&s, &["osds", "up"]), 3);
    assert_eq!(s["monitors"][0]["addr"], mon.as_str(), "{s}");
    assert_eq!(s["monitors"][0]["leader"], true);

    // Writes: the monitor's rate (from the OSDs' heartbeat counters) follows the bench's IOPS.
    let (iops, ops, bytes) = bench_and_watch_rate(
        &mon,
        &kf,
        "write",
        "write_ops_per_sec",
        "write_bytes_per_sec",
    );
    eprintln!("write: bench {iops:.0} IOPS, status showed at most {ops} op/s, {bytes} B/s");
    assert!(
        ops as f64 > 0.3 * iops && (ops as f64) < 1.5 * iops,
        "status write rate {ops} op/s vs bench {iops:.0} IOPS"
    );
    let per_op = bytes as f64 / ops as f64;
    assert!(
        (3900.0..=4300.0).contains(&per_op),
        "{bytes} B/s over {ops} op/s"
    );
    // The watch printed a pgmap line with the client I/O while it ran.
    wait_line(
        &rx,
        &["pgmap e", "op/s wr"],
        Duration::from_secs(5),
        &mut seen,
    );

    let (iops, ops, bytes) =
        bench_and_watch_rate(&mon, &kf, "rand", "read_ops_per_sec", "read_bytes_per_sec");
    eprintln!("read: bench {iops:.0} IOPS, status showed at most {ops} op/s, {bytes} B/s");
    assert!(
        ops as f64 > 0.3 * iops && (ops as f64) < 1.5 * iops,
        "status read rate {ops} op/s vs bench {iops:.0} IOPS"
    );
    let plain_status = plain(&mon, &["status"]);
    for want in [
        "  cluster:",
        "    osd: 3 osds: 3 up, 3 in",
        "    usage:   ",
        "    client:   ",
    ] {
        assert!(
            plain_status.contains(want),
            "{want:?} not in\n{plain_status}"
        );
    }

    // osd df: the data written (512 objects of 4 KiB, one copy) and the PGs placed (32 PGs of
    // one copy: 32 placements, 32 primaries), over the three OSDs.
    let deadline = Instant::now() + Duration::from_secs(10);
    let df = loop {
        let df = json(&mon, &["osd", "df"]);
        let used: u64 = df["osds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| u(r, &["used_bytes"]))
            .sum();
        if used >= 512 * 4096 || Instant::now() > deadline {
            break df;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let rows = df["osds"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{df}");
    let used: u64 = rows.iter().map(|r| u(r, &["used_bytes"])).sum();
    assert_eq!(
        used,
        512 * 4096,
        "memstore counts the 4 KiB pages it holds: {df}"
    );
    assert_eq!(rows.iter().map(|r| u(r, &["pgs"])).sum::<u64>(), 32, "{df}");
    assert_eq!(
        rows.iter().map(|r| u(r, &["primary_pgs"])).sum::<u64>(),
        32,
        "{df}"
    );
    assert!(
        rows.iter()
            .all(|r| r["up"] == true && r["in"] == true && u(r, &["used_bytes"]) > 0),
        "{df}"
    );
    let text = plain(&mon, &["osd", "df"]);
    assert!(text.starts_with("ID "), "{text}");
    assert!(text.contains("TOTAL"), "{text}");
    let s = json(&mon, &["status"]);
    assert_eq!(u(&s, &["usage", "used_bytes"]), used, "{s}");
    // The object count follows the writes (the primaries report their PGs' counts).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = json(&mon, &["status"]);
        if u(&s, &["objects", "total"]) == 512 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status never counted the 512 objects: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // An OSD dies: the watch names it and the health check; it returns: both again.
    let victim = cluster.osds[2].id;
    cluster.osds[2].kill();
    wait_line(
        &rx,
        &[&format!("osd.{victim} marked down")],
        Duration::from_secs(30),
        &mut seen,
    );
    wait_line(
        &rx,
        &["Health check failed", "(OSD_DOWN)"],
        Duration::from_secs(10),
        &mut seen,
    );
    cluster.osd_mut(victim).restart();
    wait_line(
        &rx,
        &[&format!("osd.{victim} boot")],
        Duration::from_secs(30),
        &mut seen,
    );
    wait_line(
        &rx,
        &["Health check cleared: OSD_DOWN"],
        Duration::from_secs(10),
        &mut seen,
    );
    // Every watch line after the summary carries a time stamp.
    let events: Vec<&String> = seen
        .iter()
        .filter(|l| l.contains("[INF]") || l.contains("[WRN]") || l.contains("[ERR]"))
        .collect();
    assert!(
        events
            .iter()
            .all(|l| l.as_bytes().get(4) == Some(&b'-') && l.as_bytes().get(13) == Some(&b':')),
        "{events:?}"
    );
}
