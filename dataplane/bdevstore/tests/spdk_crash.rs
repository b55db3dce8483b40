//! Crash consistency on an SPDK aio bdev over a file: the same driver as `crash.rs`
//! (`common/crashkit.rs`), with both the child (killed with SIGKILL at ≥ 20 points) and the
//! checking parent doing their I/O through `SpdkBlockDevice` on an aio bdev. Needs root and
//! hugepages. One test per file: the child is this same test, re-executed with the crash
//! environment variables set.

use std::process::Command;

mod common;
#[path = "common/crashkit.rs"]
mod crashkit;
#[path = "common/crashload.rs"]
mod crashload;
#[path = "common/spdk.rs"]
mod spdk;

use carmine_spdk::{BdevKind, SpdkBlockDevice};

const ROUNDS: u64 = 24;
const BDEV: &str = "CrashAio0";

#[test]
fn spdk_aio_crash_consistency() {
    if let Some((path, round)) = crashload::child_request() {
        let spdk = spdk::start(128);
        spdk.create_bdev(
            BDEV,
            &BdevKind::Aio {
                path: path.into(),
                block_size: 4096,
            },
        )
        .unwrap();
        let dev = SpdkBlockDevice::open(spdk.thread(), BDEV).unwrap();
        crashload::child_loop(dev, round);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aio.img");
    spdk::image(&path, common::DEV_BLOCKS_4K * 4096);
    let spdk = spdk::start(128);
    spdk.create_bdev(
        BDEV,
        &BdevKind::Aio {
            path: path.clone(),
            block_size: 4096,
        },
    )
    .unwrap();
    // The child: this test binary re-executed on this one test (one test per file, so the
    // count of tests run is unchanged).
    let child = || {
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.args([
            "--exact",
            "spdk_aio_crash_consistency",
            "--nocapture",
            "--test-threads=1",
        ]);
        c
    };
    crashkit::run_rounds(child, &path, ROUNDS, 20, || {
        SpdkBlockDevice::open(spdk.thread(), BDEV).unwrap()
    });
    spdk.shutdown().unwrap();
}
