//! `carmine-osd fsck`: runs bdevstore's read-only checker on an SPDK bdev.
//!
//! In the tools' environment ([`crate::bdev_tool`]: the EAL, SPDK and the bdev named on the
//! command line, an aio bdev over a file or block device or a virtio-blk bdev on a vhost-user
//! socket) it opens the bdev through
//! [`carmine_spdk::SpdkBlockDevice`] and checks each requested shard: superblock, checkpoint,
//! every journal record and data-chunk CRC, the end of the log and the index invariants
//! (`carmine_bdevstore::fsck`). The caller maps the outcome to the exit status: clean, problems
//! found, or the check could not run.

use carmine_bdevstore::FsckReport;
use carmine_spdk::{Spdk, SpdkBlockDevice};
use serde::Serialize;

use crate::bdev_tool::{with_bdev, BdevArgs, ToolEnvError, BDEV};

/// Why the check could not run (problems *found* are in the report, not here).
#[derive(Debug, thiserror::Error)]
pub enum FsckError {
    #[error(transparent)]
    Env(#[from] ToolEnvError),
    #[error("SPDK: {0}")]
    Spdk(#[from] carmine_spdk::SpdkError),
    #[error("shard {shard}: {source}")]
    Store {
        shard: usize,
        source: carmine_objectstore::StoreError,
    },
}

/// One shard's result, printed as text or JSON.
#[derive(Debug, Serialize)]
pub struct ShardReport {
    pub shard: usize,
    pub clean: bool,
    pub errors: Vec<String>,
    pub records_replayed: u64,
    pub collections: u64,
    pub objects: u64,
    pub extents: u64,
    pub chunks_verified: u64,
    pub torn_tail: bool,
}

impl ShardReport {
    fn new(shard: usize, r: FsckReport) -> Self {
        ShardReport {
            shard,
            clean: r.is_clean(),
            records_replayed: r.records_replayed,
            collections: r.collections,
            objects: r.objects,
            extents: r.extents,
            chunks_verified: r.chunks_verified,
            torn_tail: r.torn_tail,
            errors: r.errors,
        }
    }
}

/// Checks the shards of the store on the bdev `args` names.
pub fn run(args: &BdevArgs) -> Result<Vec<ShardReport>, FsckError> {
    with_bdev("carmine-fsck", args, |spdk| check(spdk, &args.shards))
}

fn check(spdk: &Spdk, shards: &[usize]) -> Result<Vec<ShardReport>, FsckError> {
    let mut dev = SpdkBlockDevice::open(spdk.thread(), BDEV)?;
    tracing::info!(bdev = ?dev.info(), "fsck");
    shards
        .iter()
        .map(|&shard| {
            carmine_bdevstore::fsck(&mut dev, shard)
                .map(|r| ShardReport::new(shard, r))
                .map_err(|source| FsckError::Store { shard, source })
        })
        .collect()
}
