//! `carmine-osd fsck`: runs bdevstore's read-only checker on an SPDK bdev.
//!
//! It starts the EAL (in-memory, no PCI) and SPDK, creates the bdev named on the command line
//! (today: an aio bdev over a file or block device), opens it through
//! [`carmine_spdk::SpdkBlockDevice`] and checks each requested shard: superblock, checkpoint,
//! every journal record and data-chunk CRC, the end of the log and the index invariants
//! (`carmine_bdevstore::fsck`). The caller maps the outcome to the exit status: clean, problems
//! found, or the check could not run.

use std::path::PathBuf;

use carmine_bdevstore::FsckReport;
use carmine_dpdk::{Eal, EalConfig};
use carmine_spdk::{BdevKind, Spdk, SpdkBlockDevice};
use serde::Serialize;

/// The kinds of bdev fsck can open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FsckBdevKind {
    /// Linux AIO on a file or block device (`--path`).
    Aio,
}

/// Why the check could not run (problems *found* are in the report, not here).
#[derive(Debug, thiserror::Error)]
pub enum FsckError {
    #[error("DPDK: {0}")]
    Dpdk(#[from] carmine_dpdk::DpdkError),
    #[error("SPDK: {0}")]
    Spdk(#[from] carmine_spdk::SpdkError),
    #[error("{0} does not exist")]
    Missing(PathBuf),
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

const BDEV: &str = "Fsck0";

/// Checks `shards` of the store on the bdev at `path`.
pub fn run(
    kind: FsckBdevKind,
    path: &std::path::Path,
    block_size: u32,
    shards: &[usize],
) -> Result<Vec<ShardReport>, FsckError> {
    if !path.exists() {
        return Err(FsckError::Missing(path.into()));
    }
    let eal = Eal::init(&EalConfig {
        app: "carmine-fsck".into(),
        no_pci: true,
        in_memory: true,
        mem_mb: Some(128),
        ..EalConfig::default()
    })?;
    let spdk = Spdk::start(eal)?;
    let bdev = match kind {
        FsckBdevKind::Aio => BdevKind::Aio {
            path: path.into(),
            block_size,
        },
    };
    spdk.create_bdev(BDEV, &bdev)?;
    let out = check(&spdk, shards);
    spdk.shutdown()?;
    out
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
