//! The SPDK virtio bdev on a vhost-user-blk socket exported by qemu-storage-daemon: writes read
//! back equal and land in the daemon's backing file.
//!
//! SPDK 20.07 could not attach to this daemon at all ("Received bad msg size" on GET_CONFIG):
//! it asked for 256 bytes of config space, the daemon refuses requests larger than its
//! virtio_blk_config. sys/patches/0001-virtio-user-get-config-size.patch fixes it; this test is
//! what proves the fix.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use carmine_dpdk::Eal;
use carmine_spdk::{Bdev, BdevKind, DmaBuf, VhostBlkExport};

const OFFSETS: [u64; 4] = [0, 12288, 1 << 20, (16 << 20) - 4096];

#[test]
fn virtio_blk_bdev_over_qemu_storage_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let sock = dir.path().join("vhost.sock");
    let _qsd = VhostBlkExport::start(&img, &sock).expect("qemu-storage-daemon export");

    // vhost-user passes our hugepage files to the daemon: they must exist (no --in-memory),
    // one per memseg list (--single-file-segments), under a prefix of our own.
    let prefix = format!("carmine-test-{}", std::process::id());
    let spdk = common::start(false, Some(prefix));
    spdk.create_bdev(
        "VirtioBlk0",
        &BdevKind::VirtioBlk {
            socket: sock.clone(),
            queues: 1,
            queue_size: 128,
        },
    )
    .expect("attach the vhost-user-blk export");
    {
        let b = Bdev::open("VirtioBlk0", true).unwrap();
        assert_eq!(
            b.info().size_bytes(),
            16 << 20,
            "capacity from the device's config space"
        );
        for (i, &off) in OFFSETS.iter().enumerate() {
            let mut buf = DmaBuf::new(4096, 4096).unwrap();
            buf.as_mut_slice()
                .copy_from_slice(&common::pattern(off, 3, 4096));
            b.write(off, 4096, buf, i as u64)
                .map_err(|(e, _)| e)
                .unwrap();
            assert!(common::wait(&spdk).ok, "write at {off}");
        }
        b.flush(100).unwrap();
        assert!(common::wait(&spdk).ok);
        for &off in &OFFSETS {
            b.read(off, 4096, DmaBuf::new(4096, 4096).unwrap(), 0)
                .map_err(|(e, _)| e)
                .unwrap();
            let c = common::wait(&spdk);
            assert!(c.ok);
            assert_eq!(
                c.buf.unwrap().as_slice(),
                &common::pattern(off, 3, 4096)[..]
            );
        }
    }
    // The bytes are in the daemon's backing file.
    let f = std::fs::File::open(&img).unwrap();
    for &off in &OFFSETS {
        let mut got = vec![0u8; 4096];
        f.read_exact_at(&mut got, off).unwrap();
        assert_eq!(got, common::pattern(off, 3, 4096), "backing file at {off}");
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
}
