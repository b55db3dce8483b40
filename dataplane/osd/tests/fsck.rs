//! `carmine-osd fsck` end to end on an SPDK aio bdev: a store written through bdevstore on a file
//! checks clean (exit 0, objects and chunks counted); one flipped byte in a data block is found
//! (exit 1, a checksum error in the report); a missing device cannot be checked (exit 2). The
//! same store exported by qemu-storage-daemon as vhost-user-blk checks clean through the SPDK
//! virtio bdev. `carmine-osd list-objects` on such an image lists the client objects of every
//! shard with version, size and checksums (exit 0), skips the PG log's meta collection, lists
//! an object whose data was corrupted with its error (exit 1), and cannot run on a missing
//! device (exit 2).
//! Needs root and hugepages (each run starts its own EAL + SPDK).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

use carmine_bdevstore::{format, BdevStore, FormatOptions, MountOptions};
use carmine_objectstore::device::FileDevice;
use carmine_objectstore::{drive, CollectionId, ObjectId, Transaction};
use carmine_spdk::VhostBlkExport;

const BLOCKS: u64 = 2048;

fn data() -> Vec<u8> {
    (0..16384u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

fn fsck(path: &Path) -> (Output, serde_json::Value) {
    fsck_kind("aio", path)
}

fn fsck_kind(kind: &str, path: &Path) -> (Output, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_carmine-osd"))
        .args([
            "fsck",
            "--bdev-kind",
            kind,
            "--shard",
            "0",
            "--shard",
            "1",
            "--json",
        ])
        .arg("--path")
        .arg(path)
        .output()
        .unwrap();
    // DPDK's EAL logs to stdout too: the report is the line holding the JSON array.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = stdout
        .lines()
        .find(|l| l.starts_with('['))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null);
    (out, v)
}

#[test]
fn fsck_on_aio_bdev_clean_then_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.img");
    {
        let mut d = FileDevice::open(&path, 4096, BLOCKS).unwrap();
        format(
            &mut d,
            &FormatOptions {
                shards: 2,
                seg_blocks: 32,
                slot_blocks: 64,
                ..FormatOptions::default()
            },
        )
        .unwrap();
        let mut s = BdevStore::mount(d, MountOptions::default()).unwrap();
        let c = CollectionId(3);
        let mut t = Transaction::new();
        t.create_collection(c);
        t.write(c, &ObjectId::from("a"), 0, &data());
        t.set_attr(c, &ObjectId::from("b"), "k", b"v");
        drive::commit(&mut s, t).unwrap();
        s.shutdown().unwrap();
    }

    let (out, v) = fsck(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "clean store: {v} {stderr}");
    assert_eq!(v[0]["clean"], true);
    assert_eq!(v[0]["objects"], 2);
    assert!(v[0]["chunks_verified"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v[1]["clean"], true, "the empty second shard");
    assert_eq!(v[1]["objects"], 0);

    // The same image through qemu-storage-daemon and the SPDK virtio bdev.
    {
        let sock = dir.path().join("vhost.sock");
        let _qsd = VhostBlkExport::start(&path, &sock).expect("qemu-storage-daemon export");
        let (out, v) = fsck_kind("virtio-blk", &sock);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "virtio: {v} {stderr}");
        assert_eq!(v[0]["clean"], true);
        assert_eq!(v[0]["objects"], 2);
    }

    // Flip one byte inside the object's data on the device.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut img = vec![0u8; (BLOCKS * 4096) as usize];
    f.read_exact_at(&mut img, 0).unwrap();
    let needle = &data()[..256];
    let at = img
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("object data on the device");
    f.write_all_at(&[img[at + 100] ^ 0x40], (at + 100) as u64)
        .unwrap();
    f.sync_all().unwrap();
    drop(f);
    let (out, v) = fsck(&path);
    assert_eq!(out.status.code(), Some(1), "corrupt store: {v}");
    assert_eq!(v[0]["clean"], false);
    assert!(
        !v[0]["errors"].as_array().unwrap().is_empty(),
        "errors listed: {v}"
    );
    assert_eq!(v[1]["clean"], true);

    let (out, _) = fsck(&dir.path().join("missing.img"));
    assert_eq!(out.status.code(), Some(2));
}

/// `carmine-osd list-objects --json` of shards 0 and 1 of the aio image `path`: its exit status
/// and the listing (`Null` when none was printed).
fn list_objects(path: &Path) -> (Output, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_carmine-osd"))
        .args(["list-objects", "--shard", "0", "--shard", "1", "--json"])
        .arg("--path")
        .arg(path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = stdout
        .lines()
        .find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .filter(|v| v.is_array())
        })
        .unwrap_or(serde_json::Value::Null);
    (out, v)
}

#[test]
fn list_objects_on_aio_bdev_reads_every_object_and_names_a_corrupt_one() {
    // Collections as the OSD names them: pool 1, PG 3 (data) and its meta collection (the
    // PG log, with the meta bit 1 << 31); pool 2, PG 0 on the second shard.
    let pg = CollectionId((1 << 32) | 3);
    let meta = CollectionId((1 << 32) | (1 << 31) | 3);
    let other = CollectionId(2 << 32);
    let version = |epoch: u64, seq: u64| {
        let mut v = epoch.to_be_bytes().to_vec();
        v.extend_from_slice(&seq.to_be_bytes());
        v
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.img");
    {
        let mut d = FileDevice::open(&path, 4096, BLOCKS).unwrap();
        let opts = FormatOptions {
            shards: 2,
            seg_blocks: 32,
            slot_blocks: 64,
            ..FormatOptions::default()
        };
        format(&mut d, &opts).unwrap();
        let mut s = BdevStore::mount(d, MountOptions::default()).unwrap();
        let mut t = Transaction::new();
        t.create_collection(pg).create_collection(meta);
        t.write(pg, &ObjectId::from("a"), 0, &data());
        t.set_attr(pg, &ObjectId::from("a"), "v", &version(5, 2));
        t.write(pg, &ObjectId::from("b"), 0, b"bee");
        t.write(meta, &ObjectId::from("log"), 0, b"the log object");
        drive::commit(&mut s, t).unwrap();
        let d = s.shutdown().unwrap();
        let mut s = BdevStore::mount(
            d,
            MountOptions {
                shard: 1,
                ..MountOptions::default()
            },
        )
        .unwrap();
        let mut t = Transaction::new();
        t.create_collection(other);
        t.write(other, &ObjectId::from("c"), 0, b"sea");
        t.set_attr(other, &ObjectId::from("c"), "v", &version(7, 1));
        drive::commit(&mut s, t).unwrap();
        s.shutdown().unwrap();
    }

    let (out, v) = list_objects(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{v} {stderr}");
    let got: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["shard"].as_u64().unwrap(),
                o["pool"].as_u64().unwrap(),
                o["pg"].as_u64().unwrap(),
                o["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(u64, u64, u64, String)> = vec![
        (0, 1, 3, "a".into()),
        (0, 1, 3, "b".into()),
        (1, 2, 0, "c".into()),
    ];
    assert_eq!(got, want, "the log object is no client object: {v}");
    let a = &v[0];
    assert_eq!(a["version"], serde_json::json!({"epoch": 5, "seq": 2}));
    assert_eq!(a["size"], data().len());
    assert_eq!(a["crc32c"], carmine_checksum::crc32c(&data()));
    assert_eq!(
        a["xxh64"],
        format!("{:016x}", xxhash_rust::xxh64::xxh64(&data(), 0))
    );
    assert_eq!(a["error"], serde_json::Value::Null);
    assert_eq!(v[1]["version"], serde_json::Value::Null, "b has no version");
    assert_eq!(v[1]["crc32c"], carmine_checksum::crc32c(b"bee"));
    assert_eq!(v[2]["version"], serde_json::json!({"epoch": 7, "seq": 1}));

    // A listing is repeatable: the mount wrote nothing that changes what it lists.
    let (out, again) = list_objects(&path);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(again, v);

    // One flipped byte in a's data: a is listed with a checksum error, the others are read.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut img = vec![0u8; (BLOCKS * 4096) as usize];
    f.read_exact_at(&mut img, 0).unwrap();
    let needle = &data()[..256];
    let at = img
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("object data on the device");
    f.write_all_at(&[img[at + 100] ^ 0x40], (at + 100) as u64)
        .unwrap();
    f.sync_all().unwrap();
    drop(f);
    let (out, v) = list_objects(&path);
    assert_eq!(out.status.code(), Some(1), "{v}");
    assert_eq!(v.as_array().map(Vec::len), Some(3), "{v}");
    let err = v[0]["error"].as_str().unwrap_or_default();
    assert!(err.contains("checksum"), "{v}");
    assert_eq!(v[0]["crc32c"], serde_json::Value::Null);
    assert_eq!(v[0]["version"], serde_json::json!({"epoch": 5, "seq": 2}));
    assert_eq!(v[1]["error"], serde_json::Value::Null);
    assert_eq!(v[2]["error"], serde_json::Value::Null);

    let (out, v) = list_objects(&dir.path().join("missing.img"));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(v, serde_json::Value::Null);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
