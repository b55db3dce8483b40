//! bdevstore on the SPDK virtio bdev attached to a vhost-user-blk socket that
//! qemu-storage-daemon exports: transactions commit, survive a clean remount and a crash-style
//! remount through SPDK, and the daemon's backing file then holds a store that fsck finds clean
//! and that mounts (as a plain file) with the same contents. Needs root, hugepages and
//! qemu-storage-daemon (Debian: qemu-system-common). One test per file.

mod common;
#[path = "common/spdk.rs"]
mod spdk;

use std::path::Path;

use carmine_bdevstore::{format, fsck, BdevStore};
use carmine_dpdk::Eal;
use carmine_objectstore::testkit::{compare, Model};
use carmine_objectstore::{drive, CollectionId, ObjectId, Transaction};
use carmine_spdk::{BdevKind, SpdkBlockDevice, VhostBlkExport};

const BDEV: &str = "StoreVirtio0";

fn txn(i: u64) -> Transaction {
    let c = CollectionId(4);
    let mut t = Transaction::new();
    if i == 0 {
        t.create_collection(c);
    }
    let o = ObjectId::from(format!("obj{}", i % 7).as_str());
    let data: Vec<u8> = (0..3000 + (i as usize % 3) * 4096)
        .map(|j| (i * 31 + j as u64) as u8)
        .collect();
    t.write(c, &o, (i % 5) * 2048, &data);
    t.set_attr(c, &o, "gen", &i.to_le_bytes());
    t
}

#[test]
fn bdevstore_on_virtio_blk_over_qemu_storage_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    spdk::image(&img, common::DEV_BLOCKS_4K * 4096);
    let sock = dir.path().join("vhost.sock");
    let qsd = VhostBlkExport::start(&img, &sock).expect("qemu-storage-daemon export");

    let prefix = format!("carmine-store-virtio-{}", std::process::id());
    let spdk = spdk::start_with(256, Some(prefix));
    spdk.create_bdev(
        BDEV,
        &BdevKind::VirtioBlk {
            socket: sock.clone(),
            queues: 1,
            queue_size: 128,
        },
    )
    .expect("attach the vhost-user-blk export");
    let mut model = Model::default();
    {
        let open = || SpdkBlockDevice::open(spdk.thread(), BDEV).unwrap();
        let mut d = open();
        assert_eq!(d.info().size_bytes(), common::DEV_BLOCKS_4K * 4096);
        format(&mut d, &common::small_format()).unwrap();
        let mut s = BdevStore::mount(d, common::busy_opts(0)).unwrap();
        for i in 0..40 {
            let t = txn(i);
            model.apply(&t).unwrap();
            drive::commit(&mut s, t).unwrap();
        }
        compare(&mut s, &model).unwrap();
        // Clean remount.
        let d = s.shutdown().unwrap();
        let mut s = BdevStore::mount(d, common::busy_opts(0)).unwrap();
        compare(&mut s, &model).unwrap();
        for i in 40..80 {
            let t = txn(i);
            model.apply(&t).unwrap();
            drive::commit(&mut s, t).unwrap();
        }
        // Crash-style: drop without shutdown, reopen the bdev, replay.
        drop(s);
        let mut d = open();
        let rep = fsck(&mut d, 0).unwrap();
        assert!(rep.is_clean(), "fsck over virtio: {:?}", rep.errors);
        let mut s = BdevStore::mount(d, common::busy_opts(0)).unwrap();
        compare(&mut s, &model).unwrap();
        s.shutdown().unwrap();
    }
    let files = Eal::get()
        .unwrap()
        .hugepage_files(Path::new("/dev/hugepages"));
    spdk.shutdown().unwrap();
    for f in files {
        let _ = std::fs::remove_file(f);
    }
    // And the EAL's runtime directory (/var/run/dpdk/<prefix>).
    Eal::get()
        .unwrap()
        .remove_shared_files(Path::new("/dev/hugepages"));
    drop(qsd);

    // The daemon's backing file holds the same store.
    let mut d = common::open_dev(&img);
    let rep = fsck(&mut d, 0).unwrap();
    assert!(rep.is_clean(), "fsck of the backing file: {:?}", rep.errors);
    assert!(rep.objects >= 7, "{rep:?}");
    let mut s = BdevStore::mount(d, common::busy_opts(0)).unwrap();
    compare(&mut s, &model).unwrap();
}
