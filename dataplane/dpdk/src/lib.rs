//! Safe wrappers over DPDK, the NIC side of Carmine's data plane.
//!
//! DPDK is wrapped once, here; everything above uses these types:
//! - [`Eal`]: the process-wide Environment Abstraction Layer. It can be initialised once per
//!   process; a second attempt is an error, not undefined behaviour. SPDK attaches to the same
//!   EAL (`carmine-spdk`), so one process has one memory map and one set of lcores.
//! - [`PktMbufPool`]: a packet-buffer mempool (one per shard: no cross-core cache traffic).
//! - [`Mbuf`]: an owned packet buffer; dropping it returns it to its pool.
//! - [`EthPort`]: an ethdev port with one RX/TX queue pair per shard, RSS when the PMD has it.
//!   [`RxBatch`] and [`TxBatch`] are fixed-size arrays, so the burst path never allocates.
//!
//! Invariants: an `Mbuf` is uniquely owned (it came from a pool or from `rx_burst` and has not been
//! handed to `tx_burst`); a queue is used by one thread only (the shard that owns it). DPDK's own
//! thread-safety rules (per-queue single producer) are upheld by the shard ownership, not locks.
//! All `unsafe` is in this crate's `eal`, `mbuf` and `port` modules with `// SAFETY:` notes.

mod eal;
mod mbuf;
mod port;
pub mod selftest;

pub use eal::{Eal, EalConfig};
pub use mbuf::{Mbuf, PktMbufPool, PoolGauge};
pub use port::{EthPort, PortStats, RxBatch, TxBatch, BURST};

/// Errors from the DPDK layer.
#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    #[error("the DPDK EAL is already initialised in this process")]
    AlreadyInitialised,
    #[error("rte_eal_init failed: {0} (are hugepages reserved? see hugepages/hugepages.sh)")]
    EalInit(String),
    #[error("invalid argument {0:?}: contains a NUL byte")]
    Nul(String),
    #[error("creating mempool {name}: {reason}")]
    Mempool { name: String, reason: String },
    #[error("mempool {0} is empty")]
    PoolEmpty(String),
    #[error("no ethdev port named {0:?}")]
    NoSuchPort(String),
    #[error("creating vdev {name}: {reason}")]
    Vdev { name: String, reason: String },
    #[error("port {port}: {op}: {reason}")]
    Port {
        port: u16,
        op: &'static str,
        reason: String,
    },
    #[error("frame of {len} bytes does not fit an mbuf with {room} bytes of room")]
    TooLong { len: usize, room: usize },
    #[error("giving the thread an lcore id: {0}")]
    Lcore(String),
}

/// The text of a DPDK error number (positive or negative).
pub(crate) fn strerror(errnum: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string.
    unsafe {
        let p = dpdk_sys::rte_strerror(errnum.abs());
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// DPDK's version string, e.g. "DPDK 20.05.0".
pub fn version() -> String {
    // SAFETY: rte_version returns a pointer to a static NUL-terminated string.
    unsafe {
        std::ffi::CStr::from_ptr(dpdk_sys::carmine_rte_version())
            .to_string_lossy()
            .into_owned()
    }
}
