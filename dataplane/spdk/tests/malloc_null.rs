//! SPDK in the CI mode: environment on hugepages with `--no-pci`; malloc and null bdevs created
//! from Rust; 4 KiB patterns written at several offsets and read back equal, every completion
//! reaped by polling the SPDK thread.

mod common;

use carmine_spdk::selftest::pattern_roundtrip;
use carmine_spdk::{Bdev, BdevKind, DmaBuf, IoKind, SpdkError};

const BS: u32 = 512;
const OFFSETS: [u64; 6] = [
    0,
    4096,
    65536,
    1 << 20,
    (32 << 20) - 8192,
    (64 << 20) - 4096,
];

#[test]
fn malloc_roundtrip_and_null_bdev() {
    let spdk = common::start(true, None);
    spdk.create_bdev(
        "Malloc0",
        &BdevKind::Malloc {
            blocks: (64 << 20) / BS as u64,
            block_size: BS,
        },
    )
    .unwrap();
    spdk.create_bdev(
        "Null0",
        &BdevKind::Null {
            blocks: 1 << 16,
            block_size: 4096,
        },
    )
    .unwrap();
    let names: Vec<String> = spdk.bdevs().into_iter().map(|b| b.name).collect();
    assert!(
        names.contains(&"Malloc0".to_owned()) && names.contains(&"Null0".to_owned()),
        "{names:?}"
    );
    // The modules registered from constructors really are linked: a duplicate name is refused by
    // the malloc module itself.
    assert!(spdk
        .create_bdev(
            "Malloc0",
            &BdevKind::Malloc {
                blocks: 8,
                block_size: BS
            }
        )
        .is_err());

    {
        let m = Bdev::open("Malloc0", true).unwrap();
        assert_eq!(m.info().size_bytes(), 64 << 20);
        assert!(m.info().keeps_data());
        // Every pattern in flight at once, a flush, then read back and compared.
        let verified = pattern_roundtrip(&spdk, &m, &OFFSETS, 4096, 7).unwrap();
        assert_eq!(verified, OFFSETS.len() as u64 * 4096);
        // Overwrite one place with another seed: the read sees the new bytes, not the old.
        pattern_roundtrip(&spdk, &m, &OFFSETS[2..3], 4096, 8).unwrap();
        m.read(OFFSETS[1], 4096, DmaBuf::new(4096, 4096).unwrap(), 5)
            .map_err(|(e, _)| e)
            .unwrap();
        let c = common::wait(&spdk);
        assert!(c.ok && c.kind == IoKind::Read && c.token == 5);
        assert_eq!(
            c.buf.unwrap().as_slice(),
            &common::pattern(OFFSETS[1], 7, 4096)[..]
        );
        // An untouched block reads as zeros (malloc bdevs start zeroed).
        m.read(8 << 20, 4096, DmaBuf::new(4096, 4096).unwrap(), 7)
            .map_err(|(e, _)| e)
            .unwrap();
        assert!(common::wait(&spdk)
            .buf
            .unwrap()
            .as_slice()
            .iter()
            .all(|&b| b == 0));
        // Bad requests are refused before they reach the device, and the buffer comes back.
        match m.write(100, 4096, DmaBuf::new(4096, 4096).unwrap(), 0) {
            Err((SpdkError::Unaligned { .. }, Some(_))) => {}
            other => panic!("unaligned write: {other:?}"),
        }
        match m.read(64 << 20, 4096, DmaBuf::new(4096, 4096).unwrap(), 0) {
            Err((SpdkError::OutOfRange { .. }, Some(_))) => {}
            other => panic!("read past the end: {other:?}"),
        }
    }
    {
        let n = Bdev::open("Null0", true).unwrap();
        assert!(
            !n.info().keeps_data(),
            "the null bdev is recognised as non-durable"
        );
        let mut buf = DmaBuf::new(4096, 4096).unwrap();
        buf.as_mut_slice().fill(0xab);
        n.write(4096, 4096, buf, 1).map_err(|(e, _)| e).unwrap();
        assert!(common::wait(&spdk).ok);
        n.read(4096, 4096, DmaBuf::new(4096, 4096).unwrap(), 2)
            .map_err(|(e, _)| e)
            .unwrap();
        let c = common::wait(&spdk);
        assert!(c.ok);
        // The null bdev keeps nothing: what was written does not come back.
        assert!(c.buf.unwrap().as_slice().iter().all(|&b| b != 0xab));
    }
    assert!(Bdev::open("NoSuchBdev", false).is_err());
    spdk.shutdown().unwrap();
}
