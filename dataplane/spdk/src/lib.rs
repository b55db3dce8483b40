//! Safe wrappers over SPDK, the storage side of Carmine's data plane.
//!
//! SPDK is wrapped once, here (the Mayastor approach); everything above uses these types:
//! - [`Spdk`]: SPDK's environment attached to the process's DPDK EAL (`carmine-dpdk` starts the
//!   EAL, so NIC and storage share one memory map), the SPDK thread library, and the subsystems
//!   (accel, bdev, ...) initialised on the calling thread. It creates bdevs (malloc, null, aio,
//!   virtio-user-blk) and lists them.
//! - [`SpdkThread`]: an SPDK thread bound to the calling OS thread. Every shard owns one and
//!   polls it from its loop (`spdk_thread_poll`), which is how bdev completions are reaped by the
//!   shard that submitted them.
//! - [`Bdev`]: an open bdev with an I/O channel of the current SPDK thread.
//! - [`DmaBuf`]: hugepage-backed memory a device can DMA into.
//! - [`VhostBlkExport`]: a file exported by qemu-storage-daemon for the virtio bdev (CI mode).
//! - [`SpdkBlockDevice`]: a [`Bdev`] behind the store's `BlockDevice` contract
//!   (`carmine-objectstore`): polls its SPDK thread, routes completions by token, queues and
//!   retries submissions SPDK refuses for lack of a `bdev_io`.
//!
//! Completions: an I/O is submitted with a caller token and its buffer (moved in, so it cannot be
//! freed or touched while the device owns it). SPDK calls back on the submitting thread during
//! `spdk_thread_poll`; the callback moves a [`Completion`] (token, status, buffer back) into that
//! thread's completion queue, which the owner drains with [`reap`]. The per-I/O context objects
//! come from a per-thread free list, so after warm-up submitting allocates nothing.
//!
//! Invariants: SPDK objects are used only on the thread that created them (all these types are
//! `!Send`); a [`Bdev`] is closed before [`Spdk::shutdown`] finishes the subsystems.
//! All `unsafe` is in `env`, `bdev` and `dma` with `// SAFETY:` notes.

mod bdev;
mod blockdev;
mod dma;
mod env;
pub mod selftest;
mod vhost_export;

pub use bdev::{reap, Bdev, BdevInfo, Completion, IoKind};
pub use blockdev::{BlockDeviceError, SpdkBlockDevice};
pub use dma::DmaBuf;
pub use env::{BdevKind, Spdk, SpdkThread};
pub use vhost_export::{ExportError, VhostBlkExport};

/// Errors from the SPDK layer.
#[derive(Debug, thiserror::Error)]
pub enum SpdkError {
    #[error("SPDK environment: {0}")]
    Env(String),
    #[error("SPDK is already started in this process")]
    AlreadyStarted,
    #[error("SPDK subsystem initialisation failed: rc {0}")]
    SubsystemInit(i32),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(std::time::Duration, &'static str),
    #[error("invalid name {0:?}: contains a NUL byte")]
    Nul(String),
    #[error("creating bdev {name}: {reason}")]
    CreateBdev { name: String, reason: String },
    #[error("bdev {name}: {reason}")]
    Open { name: String, reason: String },
    #[error("cannot allocate {0} bytes of DMA memory (hugepages exhausted?)")]
    DmaAlloc(usize),
    #[error("I/O of {len} bytes at {offset} is not aligned to the block size {block}")]
    Unaligned { offset: u64, len: u64, block: u32 },
    #[error("I/O at {offset}+{len} is past the end of the bdev ({size} bytes)")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("the bdev has no free I/O request now (try again after reaping completions)")]
    Again,
    #[error("submitting I/O: {0}")]
    Submit(String),
}

pub(crate) fn errno_str(rc: i32) -> String {
    std::io::Error::from_raw_os_error(rc.abs()).to_string()
}
