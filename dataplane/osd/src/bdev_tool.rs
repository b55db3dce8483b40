//! The environment of the offline store tools (`fsck`, `list-objects`): the EAL, SPDK and the
//! one bdev a tool reads, set up and torn down around the tool's work.
//!
//! A tool names its bdev on the command line ([`BdevArgs`]: an aio bdev over a file or block
//! device, or a virtio-blk bdev on a vhost-user socket, and the shards to look at).
//! [`with_bdev`] starts the EAL (no PCI; in-memory, except for virtio-blk, see below) and
//! SPDK on the calling thread, creates the bdev as [`BDEV`], runs the tool's closure, then shuts
//! SPDK down and removes the hugepage files the EAL left, whatever the closure returned.
//!
//! Invariants:
//! - The EAL and SPDK start at most once per process (DPDK cannot restart): a process runs one
//!   tool, once.
//! - The closure runs on the SPDK main thread; devices it opens on [`Spdk::thread`] must be
//!   dropped before it returns (SPDK's shutdown unregisters the bdev).
//! - A missing `--path` is refused before the EAL starts, so a typo costs no hugepages.

use std::path::{Path, PathBuf};

use carmine_dpdk::{Eal, EalConfig};
use carmine_spdk::{BdevKind, Spdk};

/// The name the tools give their bdev.
pub const BDEV: &str = "Tool0";

/// Where `hugepages/hugepages.sh` mounts hugetlbfs (the EAL's hugepage files live there).
const HUGETLBFS: &str = "/dev/hugepages";

/// Hugepage memory of a tool's EAL.
const MEM_MIB: u32 = 128;

/// The kinds of bdev the tools can open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ToolBdevKind {
    /// Linux AIO on a file or block device (`--path`).
    Aio,
    /// virtio-blk over a vhost-user-blk socket (`--path`), e.g. exported by
    /// qemu-storage-daemon.
    VirtioBlk,
}

/// The command-line options naming a store's device and the shards to look at (shared by the
/// tools' subcommands).
#[derive(Clone, Debug, clap::Args)]
pub struct BdevArgs {
    /// The kind of bdev holding the store.
    #[arg(long, value_enum, default_value = "aio")]
    pub bdev_kind: ToolBdevKind,
    /// File or block device (aio), or vhost-user socket (virtio-blk).
    #[arg(long)]
    pub path: PathBuf,
    /// Block size the bdev exposes.
    #[arg(long, default_value_t = 4096)]
    pub block_size: u32,
    /// Shard(s) to look at (repeat the flag for several).
    #[arg(long = "shard", default_value = "0")]
    pub shards: Vec<usize>,
}

/// Why a tool's environment could not be set up or torn down.
#[derive(Debug, thiserror::Error)]
pub enum ToolEnvError {
    #[error("DPDK: {0}")]
    Dpdk(#[from] carmine_dpdk::DpdkError),
    #[error("SPDK: {0}")]
    Spdk(#[from] carmine_spdk::SpdkError),
    #[error("{0} does not exist")]
    Missing(PathBuf),
}

/// Starts the EAL and SPDK for the tool `app`, creates the bdev of `args` as [`BDEV`], runs
/// `work` with SPDK, and tears everything down again. `work`'s error wins over a failed
/// teardown (which is then logged).
pub fn with_bdev<T, E>(
    app: &str,
    args: &BdevArgs,
    work: impl FnOnce(&Spdk) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<ToolEnvError>,
{
    if !args.path.exists() {
        return Err(ToolEnvError::Missing(args.path.clone()).into());
    }
    // vhost-user hands our hugepage files to the backend: they must exist (not in-memory), one
    // per memseg list, under a prefix of our own, removed at the end.
    let vhost = args.bdev_kind == ToolBdevKind::VirtioBlk;
    let eal = Eal::init(&EalConfig {
        app: app.into(),
        no_pci: true,
        in_memory: !vhost,
        single_file_segments: vhost,
        file_prefix: vhost.then(|| format!("{app}-{}", std::process::id())),
        mem_mb: Some(MEM_MIB),
        ..EalConfig::default()
    })
    .map_err(ToolEnvError::from)?;
    let spdk = Spdk::start(eal).map_err(ToolEnvError::from)?;
    let out = spdk
        .create_bdev(
            BDEV,
            &bdev_kind(args.bdev_kind, &args.path, args.block_size),
        )
        .map_err(|e| E::from(ToolEnvError::from(e)))
        .and_then(|()| work(&spdk));
    let files = eal.hugepage_files(Path::new(HUGETLBFS));
    let down = spdk.shutdown();
    for f in files {
        if let Err(e) = std::fs::remove_file(&f) {
            tracing::warn!(file = %f.display(), error = %e, "cannot remove a hugepage file");
        }
    }
    // And the EAL's runtime directory (/var/run/dpdk/<prefix>): one per run otherwise.
    eal.remove_shared_files(Path::new(HUGETLBFS));
    match (out, down) {
        (Ok(_), Err(e)) => Err(ToolEnvError::from(e).into()),
        (Err(e), Err(down)) => {
            tracing::warn!(error = %down, "SPDK shutdown failed too");
            Err(e)
        }
        (out, Ok(())) => out,
    }
}

fn bdev_kind(kind: ToolBdevKind, path: &Path, block_size: u32) -> BdevKind {
    match kind {
        ToolBdevKind::Aio => BdevKind::Aio {
            path: path.into(),
            block_size,
        },
        ToolBdevKind::VirtioBlk => BdevKind::VirtioBlk {
            socket: path.into(),
            queues: 1,
            queue_size: 128,
        },
    }
}
