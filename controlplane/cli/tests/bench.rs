//! `carmine bench` as a real process against a real cluster: a monitor served in this test
//! process and three `carmine-osd run` processes (kernel sockets, memstore, 127.0.0.1); the
//! harness is carmine-client's (`client/lib/tests/common`). Needs the `carmine-osd` binary
//! (built by any workspace build, or `cargo build -p carmine-osd`; or `CARMINE_OSD_BIN`).

#[path = "../../../client/lib/tests/common/mod.rs"]
mod common;

use std::process::{Command, Output};

use serde_json::Value;

fn bench(mon: &str, keyfile: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_carmine"))
        .args(["--mon", mon, "--format", "json", "bench"])
        .args(args)
        .arg("--keyfile")
        .arg(keyfile)
        .env_remove("CARMINE_TLS_CA")
        .env("CARMINE_PLAINTEXT", "1")
        .env_remove("CARMINE_KEY")
        .output()
        .expect("run carmine")
}

fn report(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing or not an integer in {v}"))
}

/// The figures every report has, and their consistency.
fn check_figures(v: &Value, mode: &str, block: u64) {
    eprintln!("carmine bench {mode}: {v}");
    assert_eq!(v["mode"], mode);
    assert_eq!(v["pool"], "bench");
    assert_eq!(u(v, "block_size"), block);
    assert_eq!(u(v, "errors"), 0, "{v}");
    assert_eq!(u(v, "mismatches"), 0, "{v}");
    let ops = u(v, "ops");
    assert!(ops > 0);
    assert_eq!(u(v, "bytes"), ops * block);
    assert!(v["iops"].as_f64().unwrap() > 0.0);
    assert!(v["mb_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["elapsed_s"].as_f64().unwrap() >= 2.0);
    let (p50, p99, p999, max) = (
        u(v, "lat_p50_us"),
        u(v, "lat_p99_us"),
        u(v, "lat_p999_us"),
        u(v, "lat_max_us"),
    );
    assert!(0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max, "{v}");
    assert_eq!(v["verify"], true);
    assert_eq!(v["prefix"], "run1");
    assert!(v["first_problem"].is_null());
}

#[test]
fn bench_write_then_rand_reports_verified_figures() {
    let rt = common::runtime();
    let cluster = rt.block_on(common::Cluster::start("bench", 32, &[1, 1, 1]));
    let dir = tempfile::tempdir().unwrap();
    let keyfile = dir.path().join("client.key");
    std::fs::write(&keyfile, cluster.creds.to_toml().unwrap()).unwrap();
    let mon = cluster.mon.addr.clone();

    let out = bench(
        &mon,
        &keyfile,
        &[
            "write",
            "--pool",
            "bench",
            "--seconds",
            "2",
            "--objects",
            "64",
            "--block-size",
            "4K",
            "--concurrency",
            "8",
            "--prefix",
            "run1",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let v = report(&out);
    check_figures(&v, "write", 4096);
    assert!(
        u(&v, "ops") >= 64,
        "the first pass over the objects completes"
    );
    assert_eq!(u(&v, "objects"), 64);
    assert_eq!(u(&v, "concurrency"), 8);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("p99(us)"), "no progress lines: {stderr}");

    let out = bench(
        &mon,
        &keyfile,
        &[
            "rand",
            "--pool",
            "bench",
            "--seconds",
            "2",
            "--objects",
            "64",
            "--block-size",
            "4096",
            "--concurrency",
            "4",
            "--clients",
            "2",
            "--prefix",
            "run1",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let v = report(&out);
    check_figures(&v, "rand", 4096);
    assert_eq!(u(&v, "clients"), 2);

    // Reading with another block size than was written: every read is short, counted as a
    // mismatch, reported, and the exit status says so.
    let out = bench(
        &mon,
        &keyfile,
        &[
            "seq",
            "--pool",
            "bench",
            "--seconds",
            "1",
            "--objects",
            "64",
            "--block-size",
            "8K",
            "--prefix",
            "run1",
            "--quiet",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v = report(&out);
    assert!(u(&v, "mismatches") > 0, "{v}");
    assert!(v["first_problem"]
        .as_str()
        .unwrap()
        .contains("expected 8192"));
    assert!(out.stderr.is_empty() || !String::from_utf8_lossy(&out.stderr).contains("p99(us)"));

    // An unknown pool is refused (exit 5).
    let out = bench(
        &mon,
        &keyfile,
        &["rand", "--pool", "nope", "--seconds", "1"],
    );
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    drop(cluster);
}
