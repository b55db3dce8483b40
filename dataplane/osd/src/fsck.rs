//! `carmine-osd fsck`: runs bdevstore's read-only checker on an SPDK bdev.
//!
//! It starts the EAL (in-memory, no PCI) and SPDK, creates the bdev named on the command line
//! (an aio bdev over a file or block device, or a virtio-blk bdev on a vhost-user socket),
//! opens it through
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
    /// virtio-blk over a vhost-user-blk socket (`--path`), e.g. exported by
    /// qemu-storage-daemon.
    VirtioBlk,
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
    // vhost-user hands our hugepage files to the backend: they must exist (not in-memory), one
    // per memseg list, under a prefix of our own, removed at the end.
    let vhost = kind == FsckBdevKind::VirtioBlk;
    let eal = Eal::init(&EalConfig {
        app: "carmine-fsck".into(),
        no_pci: true,
        in_memory: !vhost,
        single_file_segments: vhost,
        file_prefix: vhost.then(|| format!("carmine-fsck-{}", std::process::id())),
        mem_mb: Some(128),
        ..EalConfig::default()
    })?;
    let spdk = Spdk::start(eal)?;
    let bdev = match kind {
        FsckBdevKind::Aio => BdevKind::Aio {
            path: path.into(),
            block_size,
        },
        FsckBdevKind::VirtioBlk => BdevKind::VirtioBlk {
            socket: path.into(),
            queues: 1,
            queue_size: 128,
        },
    };
    let out = spdk
        .create_bdev(BDEV, &bdev)
        .map_err(FsckError::from)
        .and_then(|()| check(&spdk, shards));
    let files = eal.hugepage_files(std::path::Path::new(HUGETLBFS));
    let down = spdk.shutdown();
    for f in files {
        let _ = std::fs::remove_file(f);
    }
    down?;
    out
}

/// Where `hugepages/hugepages.sh` mounts hugetlbfs (the EAL's hugepage files live there).
const HUGETLBFS: &str = "/dev/hugepages";

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
