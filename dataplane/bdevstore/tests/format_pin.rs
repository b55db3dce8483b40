//! Pins the on-disk bytes of a small known store, so that format changes are deliberate.
//!
//! A fixed sequence of transactions on a freshly formatted file device with a fixed format uuid
//! (`FormatOptions::uuid`, the only input that is random otherwise) is committed one at a time
//! and the store shut down cleanly (which writes a checkpoint). Every byte of the device is then
//! a function of the code's format: the CRC-32C of each region must match the constants below.
//!
//! If this test fails, the bytes the store writes changed. Either that was not intended (a
//! refactor changed the format: fix the code), or it was: then bump `FORMAT_VERSION` in
//! `src/format.rs` if old stores read differently, describe the change in `FORMAT.md`, and
//! update the constants here (the failure message prints the new values) in the same commit.

mod common;

use carmine_bdevstore::{format, fsck, BdevStore, FormatOptions, MountOptions};
use carmine_objectstore::testkit::{compare, Model};
use carmine_objectstore::{drive, CollectionId, ObjectId, Op, Transaction};

const UUID: u64 = 0x0123_4567_89ab_cdef;
const BLOCK: usize = 4096;
/// The geometry of `common::small_format()`: partition 0 starts at block 1, two checkpoint
/// slots of 64 blocks, then 32-block segments.
const SLOT_BLOCKS: usize = 64;
const SEG_BLOCKS: usize = 32;
const P0: usize = 1;

/// CRC-32C of each region of the device after `build` (see the module docs before changing).
const PINNED: &[(&str, u32)] = &[
    ("superblock (block 0)", 0x36af1919),
    ("partition 0 checkpoint slot 0", 0x9555e41e),
    ("partition 0 checkpoint slot 1", 0x0b7e62bd),
    ("partition 0 segment 0 (journal records)", 0x76b58fe8),
    ("partition 0 segment 1", 0x5d87814f),
    ("partition 0 other segments", 0x049f740d),
    ("partition 1", 0x72b08ccc),
    ("whole device", 0xf45cd025),
];

fn pattern(seed: u64, n: usize) -> Vec<u8> {
    (0..n).map(|j| (seed as usize * 31 + j * 7) as u8).collect()
}

fn txns() -> Vec<Transaction> {
    let c = CollectionId(7);
    let (a, b, d) = (
        ObjectId::from("alpha"),
        ObjectId::from("beta"),
        ObjectId::from("delta"),
    );
    let mut out = Vec::new();
    let mut t = Transaction::new();
    t.create_collection(c);
    out.push(t);
    let mut t = Transaction::new();
    t.write(c, &a, 0, &pattern(1, 5000));
    out.push(t);
    let mut t = Transaction::new();
    t.write(c, &b, 8192, &pattern(2, 4096));
    t.set_attr(c, &b, "version", b"v1");
    out.push(t);
    let mut t = Transaction::new();
    t.push(Op::OmapSet {
        cid: c,
        oid: a.clone(),
        entries: [(&b"k1"[..], &b"one"[..]), (b"k2", b"two")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect(),
    });
    out.push(t);
    let mut t = Transaction::new();
    t.write(c, &d, 0, &pattern(3, 12_288));
    t.push(Op::Truncate {
        cid: c,
        oid: a.clone(),
        size: 3000,
    });
    t.push(Op::Zero {
        cid: c,
        oid: d.clone(),
        off: 4096,
        len: 100,
    });
    out.push(t);
    let mut t = Transaction::new();
    t.remove(c, &b);
    t.write(c, &a, 1000, &pattern(4, 10));
    out.push(t);
    out
}

/// Format, commit `txns()` one by one, shut down; the device's bytes and the model.
fn build(dir: &tempfile::TempDir) -> (std::path::PathBuf, Model) {
    let path = dir.path().join("dev");
    let mut d = common::open_dev(&path);
    let opts = FormatOptions {
        uuid: Some(UUID),
        ..common::small_format()
    };
    format(&mut d, &opts).unwrap();
    let mut s = BdevStore::mount(d, MountOptions::default()).unwrap();
    let mut m = Model::default();
    for t in txns() {
        drive::commit(&mut s, t.clone()).unwrap();
        m.apply(&t).unwrap();
    }
    s.shutdown().unwrap();
    (path, m)
}

fn regions(dev: &[u8]) -> Vec<(&'static str, u32)> {
    let blk = |b: usize| b * BLOCK;
    let seg0 = P0 + 2 * SLOT_BLOCKS;
    let p1 = P0 + (common::DEV_BLOCKS_4K as usize - 1) / 2;
    let r = |a: usize, b: usize| carmine_checksum::crc32c(&dev[blk(a)..blk(b)]);
    vec![
        ("superblock (block 0)", r(0, 1)),
        ("partition 0 checkpoint slot 0", r(P0, P0 + SLOT_BLOCKS)),
        (
            "partition 0 checkpoint slot 1",
            r(P0 + SLOT_BLOCKS, P0 + 2 * SLOT_BLOCKS),
        ),
        (
            "partition 0 segment 0 (journal records)",
            r(seg0, seg0 + SEG_BLOCKS),
        ),
        (
            "partition 0 segment 1",
            r(seg0 + SEG_BLOCKS, seg0 + 2 * SEG_BLOCKS),
        ),
        ("partition 0 other segments", r(seg0 + 2 * SEG_BLOCKS, p1)),
        ("partition 1", r(p1, dev.len() / BLOCK)),
        ("whole device", carmine_checksum::crc32c(dev)),
    ]
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn on_disk_bytes_of_a_known_store_are_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let (path, model) = build(&dir);
    let dev = std::fs::read(&path).unwrap();
    assert_eq!(dev.len(), common::DEV_BLOCKS_4K as usize * BLOCK);

    // Field by field first, so a failure names what moved. Frame: magic u64 | payload length
    // u32 | CRC-32C u32 | payload (bincode, fixed-int, little endian).
    assert_eq!(&dev[0..8], b"CRMN-SB1", "superblock magic");
    assert_eq!(le_u32(&dev, 16), 2, "superblock version (FORMAT_VERSION)");
    assert_eq!(le_u64(&dev, 20), UUID, "superblock uuid");
    assert_eq!(le_u64(&dev, 28), common::DEV_BLOCKS_4K, "store_blocks");
    assert_eq!(le_u64(&dev, 36), SEG_BLOCKS as u64, "seg_blocks");
    assert_eq!(le_u64(&dev, 44), SLOT_BLOCKS as u64, "slot_blocks");
    assert_eq!(le_u64(&dev, 52), 2, "partition count");
    assert_eq!(le_u64(&dev, 60), P0 as u64, "partition 0 start");
    let ckpt = |slot: usize| &dev[(P0 + slot * SLOT_BLOCKS) * BLOCK..];
    // Slot 0: format's checkpoint (generation 1); slot 1: shutdown's (generation 2).
    for (slot, generation) in [(0, 1u64), (1, 2)] {
        let h = ckpt(slot);
        assert_eq!(&h[0..8], b"CRMN-CP1", "checkpoint slot {slot} magic");
        assert_eq!(le_u64(h, 16), UUID, "checkpoint slot {slot} uuid");
        assert_eq!(
            le_u64(h, 24),
            generation,
            "checkpoint slot {slot} generation"
        );
    }
    let rec = &dev[(P0 + 2 * SLOT_BLOCKS) * BLOCK..];
    assert_eq!(&rec[0..8], b"CRMN-RC1", "first journal record magic");
    assert_eq!(le_u64(rec, 16), UUID, "first record uuid");
    assert_eq!(le_u64(rec, 24), 1, "first record seq");
    assert_eq!(le_u64(rec, 32), 1, "first record seg_seq");

    let got = regions(&dev);
    let mismatched: Vec<String> = got
        .iter()
        .zip(PINNED)
        .filter(|((_, g), (_, want))| g != want)
        .map(|((name, g), (_, want))| format!("  {name}: crc32c {g:#010x}, pinned {want:#010x}"))
        .collect();
    assert!(
        mismatched.is_empty(),
        "the on-disk bytes of the pinned store changed:\n{}\n\
         If this is deliberate (a format change), bump FORMAT_VERSION in src/format.rs when old \
         stores read differently, describe it in FORMAT.md, and update PINNED in \
         tests/format_pin.rs to:\n{}",
        mismatched.join("\n"),
        got.iter()
            .map(|(n, g)| format!("    ({n:?}, {g:#010x}),"))
            .collect::<Vec<_>>()
            .join("\n"),
    );

    // And it is a valid store holding what was written.
    let mut d = common::open_dev(&path);
    let r = fsck(&mut d, 0).unwrap();
    assert!(r.is_clean(), "{:?}", r.errors);
    let mut s = BdevStore::mount(d, MountOptions::default()).unwrap();
    compare(&mut s, &model).unwrap();
}

/// The pin is only worth something if the same inputs give the same bytes.
#[test]
fn building_the_pinned_store_twice_gives_the_same_bytes() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = std::fs::read(build(&d1).0).unwrap();
    let b = std::fs::read(build(&d2).0).unwrap();
    assert!(a == b, "two builds of the pinned store differ");
}
