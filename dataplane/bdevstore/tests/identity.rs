//! The store's owner in the superblock (format version 2), and what `probe` tells of a device:
//! blank, a store (with its owner), or other data. Version 1 stores (no owner) still mount and
//! can be claimed without touching anything but block 0.

mod common;

use std::os::unix::fs::FileExt;

use carmine_bdevstore::{
    claim, format, format_owned, fsck, probe, BdevStore, MountOptions, Probe, StoreIdentity,
    Superblock, MAX_IDENTITY_LEN,
};
use carmine_objectstore::{drive, CollectionId, ObjectId, ObjectStore, StoreError, Transaction};

fn owner(fsid: &str, osd: &str) -> StoreIdentity {
    StoreIdentity {
        cluster_fsid: fsid.into(),
        osd_uuid: osd.into(),
    }
}

#[test]
fn probe_tells_blank_store_and_data_apart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev");
    let mut d = common::open_dev(&path);
    assert_eq!(probe(&mut d).unwrap(), Probe::Blank);
    // Data anywhere in the first MiB is data, even with block 0 zero.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(&[0xab; 3], 700_001)
        .unwrap();
    let mut d = common::open_dev(&path);
    assert_eq!(probe(&mut d).unwrap(), Probe::Data { offset: 700_001 });
    let sb = format_owned(&mut d, &common::small_format(), &owner("fsid-a", "osd-a")).unwrap();
    assert_eq!(sb.version, 2);
    match probe(&mut d).unwrap() {
        Probe::Store(got) => {
            assert_eq!(got, sb);
            assert_eq!(got.identity, owner("fsid-a", "osd-a"));
        }
        other => panic!("{other:?}"),
    }
    // An owned store mounts and checks like any other.
    assert!(fsck(&mut d, 1).unwrap().is_clean());
    let s = BdevStore::mount(d, MountOptions::default()).unwrap();
    drop(s);
    // Too long an owner does not fit block 0: refused before anything is written.
    let mut d = common::open_dev(&path);
    let long = "x".repeat(MAX_IDENTITY_LEN + 1);
    assert!(matches!(
        format_owned(&mut d, &common::small_format(), &owner(&long, "o")),
        Err(StoreError::InvalidArgument(_))
    ));
    assert!(
        matches!(probe(&mut d).unwrap(), Probe::Store(s) if s.identity.cluster_fsid == "fsid-a")
    );
}

/// A version 1 superblock (what stores formatted before owners have) mounts, and `claim`
/// records an owner in it: the same geometry and format uuid, the data intact; a claimed store
/// cannot be claimed again.
#[test]
fn version_1_stores_mount_and_can_be_claimed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev");
    let mut d = common::open_dev(&path);
    let sb = format(&mut d, &common::small_format()).unwrap();
    assert!(sb.identity.is_unclaimed());
    let mut s = BdevStore::mount(d, MountOptions::default()).unwrap();
    let c = CollectionId(3);
    let oid = ObjectId::from("kept");
    let mut t = Transaction::new();
    t.create_collection(c);
    t.write(c, &oid, 0, b"version one data");
    drive::commit(&mut s, t).unwrap();
    drop(s.shutdown().unwrap());

    // Rewrite block 0 as version 1 wrote it: the same fields without the owner.
    let v1 = bincode_v1(&sb);
    let mut blk = vec![0u8; 4096];
    blk[0..8].copy_from_slice(b"CRMN-SB1");
    blk[8..12].copy_from_slice(&(v1.len() as u32).to_le_bytes());
    let crc = carmine_checksum::crc32c_append(carmine_checksum::crc32c(&blk[0..12]), &v1);
    blk[12..16].copy_from_slice(&crc.to_le_bytes());
    blk[16..16 + v1.len()].copy_from_slice(&v1);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&blk, 0).unwrap();

    let mut d = common::open_dev(&path);
    let got = match probe(&mut d).unwrap() {
        Probe::Store(got) => got,
        other => panic!("{other:?}"),
    };
    assert_eq!(got.version, 1);
    assert!(got.identity.is_unclaimed());
    let claimed = claim(&mut d, &owner("fsid-b", "osd-b")).unwrap();
    assert_eq!(claimed.version, 2);
    assert_eq!(claimed.uuid, sb.uuid);
    assert_eq!(claimed.partitions, sb.partitions);
    assert!(matches!(
        claim(&mut d, &owner("fsid-c", "osd-c")),
        Err(StoreError::InvalidArgument(m)) if m.contains("fsid-b")
    ));
    let mut s = BdevStore::mount(d, MountOptions::default()).unwrap();
    assert_eq!(
        drive::read(&mut s, c, &oid, 0, 100).unwrap(),
        b"version one data"
    );
    assert!(s.list_collections().contains(&c));
}

/// The version 1 payload of `sb`: fixed-int little-endian bincode of its first six fields.
fn bincode_v1(sb: &Superblock) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&sb.uuid.to_le_bytes());
    v.extend_from_slice(&sb.store_blocks.to_le_bytes());
    v.extend_from_slice(&sb.seg_blocks.to_le_bytes());
    v.extend_from_slice(&sb.slot_blocks.to_le_bytes());
    v.extend_from_slice(&(sb.partitions.len() as u64).to_le_bytes());
    for (a, b) in &sb.partitions {
        v.extend_from_slice(&a.to_le_bytes());
        v.extend_from_slice(&b.to_le_bytes());
    }
    v
}
