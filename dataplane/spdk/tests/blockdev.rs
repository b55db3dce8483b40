//! `SpdkBlockDevice` against its contract on real bdevs: more submissions than SPDK has
//! `bdev_io`s (65,535 in its pool) are queued and retried, never failed, and every submit gets
//! exactly one completion; two devices on one thread get their own completions (token
//! routing); a write reads back equal; a request past the end is an error completion; the null
//! bdev reports `keeps_data() == false`. Needs root and hugepages; one test per file.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use carmine_objectstore::device::{BlockDevice, DeviceError, IoCompletion, IoKind};
use carmine_spdk::{BdevKind, SpdkBlockDevice};

/// Polls `dev` until `n` completions arrived (bounded), keyed by token.
fn collect<D: BlockDevice>(dev: &mut D, n: usize) -> HashMap<u64, IoCompletion<D::Buf>> {
    let mut got = HashMap::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} completions",
            got.len()
        );
        out.clear();
        dev.poll(&mut out);
        for c in out.drain(..) {
            let t = c.token;
            assert!(got.insert(t, c).is_none(), "token {t} completed twice");
        }
    }
    got
}

const FLUSHES: u64 = 70_000;

#[test]
fn spdk_block_device_contract() {
    let spdk = common::start(true, None);
    for name in ["BdA", "BdB"] {
        spdk.create_bdev(
            name,
            &BdevKind::Malloc {
                blocks: 4096,
                block_size: 512,
            },
        )
        .unwrap();
    }
    spdk.create_bdev(
        "BdNull",
        &BdevKind::Null {
            blocks: 4096,
            block_size: 512,
        },
    )
    .unwrap();
    let t = spdk.thread();
    {
        let mut a = SpdkBlockDevice::open(t, "BdA").unwrap();
        let mut b = SpdkBlockDevice::open(t, "BdB").unwrap();
        assert!(a.keeps_data());
        assert!(!SpdkBlockDevice::open(t, "BdNull").unwrap().keeps_data());
        assert_eq!((a.block_size(), a.block_count()), (512, 4096));
        assert!(matches!(
            a.alloc_buf(1000),
            Err(DeviceError::Misaligned(1000))
        ));

        // More flushes than bdev_ios exist, submitted without polling: SPDK must refuse some
        // (-ENOMEM), the device must queue and retry them.
        for i in 0..FLUSHES {
            a.submit_flush(i);
        }
        assert_eq!(a.inflight(), FLUSHES as usize);
        let got = collect(&mut a, FLUSHES as usize);
        assert!(got
            .values()
            .all(|c| c.kind == IoKind::Flush && c.result.is_ok()));
        assert_eq!(a.stats().flushes, FLUSHES);
        assert!(a.refused() > 0, "SPDK never ran out of bdev_ios");
        println!(
            "{} of {FLUSHES} flushes refused by SPDK and retried",
            a.refused()
        );
        assert_eq!(a.inflight(), 0);

        // Same tokens on two devices of one thread: each gets its own completions and data.
        for (dev, seed) in [(&mut a, 1u8), (&mut b, 2u8)] {
            for i in 0..8u64 {
                let mut buf = dev.alloc_buf(4096).unwrap();
                buf.as_mut_slice()
                    .fill(seed.wrapping_mul(16).wrapping_add(i as u8));
                dev.submit_write(i * 8, buf, i);
            }
        }
        for (dev, seed) in [(&mut a, 1u8), (&mut b, 2u8)] {
            let w = collect(dev, 8);
            assert!(w
                .values()
                .all(|c| c.kind == IoKind::Write && c.result.is_ok()));
            for i in 0..8u64 {
                let buf = dev.alloc_buf(4096).unwrap();
                dev.submit_read(i * 8, buf, 100 + i);
            }
            let r = collect(dev, 8);
            for i in 0..8u64 {
                let c = &r[&(100 + i)];
                let want = seed.wrapping_mul(16).wrapping_add(i as u8);
                assert!(c.result.is_ok());
                assert!(
                    c.buf
                        .as_ref()
                        .unwrap()
                        .as_slice()
                        .iter()
                        .all(|&x| x == want),
                    "device {seed} block {i}"
                );
            }
            assert_eq!(dev.stats().bytes_written, 8 * 4096);
        }

        // Past the end: an error completion from poll, not a panic or a lost request.
        let buf = a.alloc_buf(4096).unwrap();
        a.submit_read(4095, buf, 7);
        let c = collect(&mut a, 1).remove(&7).unwrap();
        assert!(
            matches!(c.result, Err(DeviceError::OutOfRange { .. })),
            "{:?}",
            c.result
        );
        assert!(c.buf.is_some(), "the buffer comes back");
        assert_eq!(a.inflight(), 0);
    }
    spdk.shutdown().unwrap();
}
