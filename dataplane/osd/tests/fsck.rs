//! `carmine-osd fsck` end to end on an SPDK aio bdev: a store written through bdevstore on a file
//! checks clean (exit 0, objects and chunks counted); one flipped byte in a data block is found
//! (exit 1, a checksum error in the report); a missing device cannot be checked (exit 2). The
//! same store exported by qemu-storage-daemon as vhost-user-blk checks clean through the SPDK
//! virtio bdev.
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
