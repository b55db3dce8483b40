//! `carmine image` as a real process against a real cluster (a monitor in this process and
//! three `carmine-osd run` processes, memstore; the harness is carmine-client's): create, ls,
//! info, resize, rm, with a client key file and with the admin token's key, and the errors a
//! user meets (an existing name, a missing image, a shrink without --allow-shrink).

#[path = "../../../client/lib/tests/common/mod.rs"]
mod common;

use std::process::{Command, Output};

use serde_json::Value;

/// `carmine --format json image ARGS` with `auth` (`--keyfile F` or `--token T`).
fn image(mon: &str, auth: &[&str], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_carmine"))
        .args(["--mon", mon, "--format", "json"])
        .args(auth)
        .arg("image")
        .args(args)
        .env_remove("CARMINE_TLS_CA")
        .env_remove("CARMINE_KEYFILE")
        .env_remove("CARMINE_TOKEN")
        .env("CARMINE_PLAINTEXT", "1")
        .output()
        .expect("run carmine")
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn image_commands_manage_images() {
    let rt = common::runtime();
    let cluster = rt.block_on(common::Cluster::start("rbd", 16, &[1, 1, 1]));
    let dir = tempfile::tempdir().unwrap();
    let keyfile = dir.path().join("client.key");
    std::fs::write(&keyfile, cluster.creds.to_toml().unwrap()).unwrap();
    let kf = keyfile.to_str().unwrap();
    let admin = ["--token", common::TOKEN];
    let mon = cluster.mon.addr.as_str();

    // Sub-commands take --keyfile after `image ...`; the token is global.
    let v = json(&image(
        mon,
        &[],
        &["create", "rbd/vm1", "--size", "10G", "--keyfile", kf],
    ));
    assert_eq!(v["size"], 10u64 << 30);
    assert_eq!(v["object_size"], 4u64 << 20);
    assert_eq!(v["objects"], 2560);
    let v = json(&image(
        mon,
        &admin,
        &["create", "rbd/vm2", "--size", "1M", "--object-size", "64K"],
    ));
    assert_eq!(v["object_size"], 65536);

    let ls = json(&image(mon, &[], &["ls", "rbd", "--keyfile", kf]));
    assert_eq!(ls, serde_json::json!(["vm1", "vm2"]));
    let info = json(&image(mon, &admin, &["info", "rbd/vm1"]));
    assert_eq!(info["name"], "vm1");
    assert_eq!(info["id"].as_str().map(str::len), Some(16));

    // The errors: exit 5 with the reason on stderr.
    let dup = image(mon, &admin, &["create", "rbd/vm1", "--size", "1G"]);
    assert_eq!(dup.status.code(), Some(5), "{dup:?}");
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    let missing = image(mon, &admin, &["info", "rbd/nope"]);
    assert_eq!(missing.status.code(), Some(5), "{missing:?}");
    let shrink = image(mon, &admin, &["resize", "rbd/vm1", "--size", "1G"]);
    assert_eq!(shrink.status.code(), Some(5), "{shrink:?}");
    assert!(String::from_utf8_lossy(&shrink.stderr).contains("--allow-shrink"));
    let bad = image(
        mon,
        &admin,
        &["create", "rbd/x", "--size", "1G", "--object-size", "3M"],
    );
    assert_eq!(bad.status.code(), Some(5), "{bad:?}");
    let unauth = image(mon, &[], &["ls", "rbd"]);
    assert_eq!(unauth.status.code(), Some(4), "{unauth:?}");

    let v = json(&image(
        mon,
        &admin,
        &["resize", "rbd/vm1", "--size", "1G", "--allow-shrink"],
    ));
    assert_eq!(v["size"], 1u64 << 30);
    let v = json(&image(
        mon,
        &[],
        &["resize", "rbd/vm1", "--size", "20G", "--keyfile", kf],
    ));
    assert_eq!(v["size"], 20u64 << 30);

    let v = json(&image(mon, &admin, &["rm", "rbd/vm2"]));
    assert_eq!(v["data_objects"], 0);
    let ls = json(&image(mon, &[], &["ls", "rbd", "--keyfile", kf]));
    assert_eq!(ls, serde_json::json!(["vm1"]));
}
