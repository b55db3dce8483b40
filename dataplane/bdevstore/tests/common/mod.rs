//! Shared setup for the bdevstore tests.
#![allow(dead_code)]

use std::path::Path;

use carmine_bdevstore::{format, BdevStore, FormatOptions, MountOptions};
use carmine_objectstore::device::FileDevice;

pub const DEV_BLOCKS_4K: u64 = 2048; // 8 MiB

pub fn small_format() -> FormatOptions {
    FormatOptions {
        shards: 2,
        seg_blocks: 32,
        slot_blocks: 64,
        ..FormatOptions::default()
    }
}

/// Aggressive background work so short tests exercise the cleaner and checkpoints.
pub fn busy_opts(shard: usize) -> MountOptions {
    MountOptions {
        shard,
        clean_low_water: 20,
        ckpt_interval_blocks: 96,
        ..MountOptions::default()
    }
}

/// The cleaner never stops (every used segment is a candidate) and checkpoints are frequent:
/// relocation races with foreground writes on every step.
pub fn always_cleaning(shard: usize) -> MountOptions {
    MountOptions {
        shard,
        clean_low_water: 10_000,
        ckpt_interval_blocks: 32,
        clean_batch_bytes: 16 * 1024,
        ..MountOptions::default()
    }
}

pub fn open_dev(path: &Path) -> FileDevice {
    let mut d = FileDevice::open(path, 4096, DEV_BLOCKS_4K).unwrap();
    // tmp files: page cache durability is what a process crash test needs; skip fdatasync
    // to keep the suite fast.
    d.set_sync(false);
    d
}

pub fn fresh(path: &Path, shard: usize) -> BdevStore<FileDevice> {
    let mut d = open_dev(path);
    format(&mut d, &small_format()).unwrap();
    BdevStore::mount(d, busy_opts(shard)).unwrap()
}
