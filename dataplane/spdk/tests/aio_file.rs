//! The SPDK aio bdev on a plain file: the file-backed device the store's crash tests use.

mod common;

use std::os::unix::fs::FileExt;

use carmine_spdk::{Bdev, BdevKind, DmaBuf};

#[test]
fn aio_bdev_writes_reach_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aio.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let spdk = common::start(true, None);
    spdk.create_bdev(
        "Aio0",
        &BdevKind::Aio {
            path: path.clone(),
            block_size: 4096,
        },
    )
    .unwrap();
    {
        let b = Bdev::open("Aio0", true).unwrap();
        assert_eq!(b.info().size_bytes(), 8 << 20);
        let mut buf = DmaBuf::new(8192, 4096).unwrap();
        buf.as_mut_slice()
            .copy_from_slice(&common::pattern(40960, 9, 8192));
        b.write(40960, 8192, buf, 1).map_err(|(e, _)| e).unwrap();
        assert!(common::wait(&spdk).ok);
        b.flush(2).unwrap();
        assert!(common::wait(&spdk).ok);
    }
    let mut got = vec![0u8; 8192];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut got, 40960)
        .unwrap();
    assert_eq!(got, common::pattern(40960, 9, 8192));
    assert!(spdk
        .create_bdev(
            "Aio1",
            &BdevKind::Aio {
                path: dir.path().join("missing"),
                block_size: 4096
            }
        )
        .is_err());
    spdk.shutdown().unwrap();
}
