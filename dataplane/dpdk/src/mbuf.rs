//! Packet buffers: per-shard mbuf pools and owned mbufs.

use std::ffi::CString;
use std::ptr::NonNull;

use dpdk_sys::{rte_mbuf, rte_mempool};

use crate::{strerror, DpdkError, Eal};

/// A pool of packet buffers (an `rte_pktmbuf` mempool). One per shard: its per-lcore cache is
/// only touched by the owning thread.
#[derive(Debug)]
pub struct PktMbufPool {
    raw: NonNull<rte_mempool>,
    name: String,
    size: u32,
    /// Shared with every [`PoolGauge`]: the pool is not freed while a gauge can still read it.
    gauges: std::sync::Arc<()>,
}

/// A read-only view of a pool's counters that other threads may hold (monitoring, tests): the
/// counts DPDK keeps are safe to read concurrently with the owner's alloc/free.
#[derive(Debug, Clone)]
pub struct PoolGauge {
    raw: NonNull<rte_mempool>,
    _alive: std::sync::Arc<()>,
}

// SAFETY: the gauge only calls DPDK's count functions, which read the ring's head/tail indices
// and per-lcore cache lengths and are documented as callable from any thread; the pool outlives
// every gauge (PktMbufPool::drop leaks the pool while gauges exist).
unsafe impl Send for PoolGauge {}
// SAFETY: as above; the gauge has no interior state of its own.
unsafe impl Sync for PoolGauge {}

impl PoolGauge {
    /// Mbufs currently taken from the pool.
    pub fn in_use(&self) -> u32 {
        // SAFETY: the pool is alive (see the Send note).
        unsafe { dpdk_sys::carmine_mempool_in_use_count(self.raw.as_ptr()) }
    }

    /// Mbufs available in the pool.
    pub fn available(&self) -> u32 {
        // SAFETY: as above.
        unsafe { dpdk_sys::carmine_mempool_avail_count(self.raw.as_ptr()) }
    }
}

// SAFETY: an rte_mempool may be used from any thread: its ring is multi-producer/multi-consumer
// and threads that are not EAL lcores bypass the per-lcore caches. The pool is created on the
// main thread (ports need every queue's pool at configuration) and then moved to its shard,
// which is its only user from then on; it is not `Sync`.
unsafe impl Send for PktMbufPool {}

impl PktMbufPool {
    /// Creates a pool of `n` mbufs with `data_room` bytes each (headroom included), on NUMA node
    /// `socket` (-1 = any).
    pub fn new(
        _eal: &'static Eal,
        name: &str,
        n: u32,
        cache: u32,
        data_room: u16,
        socket: i32,
    ) -> Result<Self, DpdkError> {
        let cname = CString::new(name).map_err(|_| DpdkError::Nul(name.into()))?;
        // SAFETY: valid name; the EAL is initialised (proved by `_eal`).
        let raw = unsafe {
            dpdk_sys::rte_pktmbuf_pool_create(cname.as_ptr(), n, cache, 0, data_room, socket)
        };
        match NonNull::new(raw) {
            Some(raw) => Ok(Self {
                raw,
                name: name.into(),
                size: n,
                gauges: std::sync::Arc::new(()),
            }),
            None => Err(DpdkError::Mempool {
                name: name.into(),
                // SAFETY: reading DPDK's per-thread errno right after the failing call.
                reason: strerror(unsafe { dpdk_sys::carmine_rte_errno() }),
            }),
        }
    }

    /// Takes one mbuf, empty (data length 0, default headroom).
    pub fn alloc(&self) -> Result<Mbuf, DpdkError> {
        // SAFETY: the pool is valid for self's lifetime.
        let m = unsafe { dpdk_sys::carmine_pktmbuf_alloc(self.raw.as_ptr()) };
        NonNull::new(m)
            .map(|raw| Mbuf { raw })
            .ok_or_else(|| DpdkError::PoolEmpty(self.name.clone()))
    }

    /// Mbufs available in the pool (including per-lcore caches).
    pub fn available(&self) -> u32 {
        // SAFETY: the pool is valid.
        unsafe { dpdk_sys::carmine_mempool_avail_count(self.raw.as_ptr()) }
    }

    /// Mbufs currently taken from the pool.
    pub fn in_use(&self) -> u32 {
        // SAFETY: the pool is valid.
        unsafe { dpdk_sys::carmine_mempool_in_use_count(self.raw.as_ptr()) }
    }

    /// Number of mbufs the pool was created with.
    pub fn size(&self) -> u32 {
        self.size
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A counter view for another thread.
    pub fn gauge(&self) -> PoolGauge {
        PoolGauge {
            raw: self.raw,
            _alive: self.gauges.clone(),
        }
    }

    pub(crate) fn as_ptr(&self) -> *mut rte_mempool {
        self.raw.as_ptr()
    }
}

impl Drop for PktMbufPool {
    fn drop(&mut self) {
        // SAFETY: we own the pool. Mbufs still out are the caller's bug; DPDK tolerates freeing a
        // pool with objects outstanding only if they are never returned, so warn loudly.
        if std::sync::Arc::strong_count(&self.gauges) > 1 {
            tracing::warn!(pool = %self.name, "mbuf pool dropped while gauges exist: leaking it");
            return;
        }
        let out = self.in_use();
        if out != 0 {
            tracing::warn!(pool = %self.name, out, "freeing an mbuf pool with mbufs outstanding");
            return; // leak rather than let those mbufs return into freed memory
        }
        unsafe { dpdk_sys::rte_mempool_free(self.raw.as_ptr()) };
    }
}

/// An owned, single-segment packet buffer. Dropping it returns it to its pool.
#[derive(Debug)]
pub struct Mbuf {
    raw: NonNull<rte_mbuf>,
}

// SAFETY: an mbuf is uniquely owned by this value; moving that ownership to another thread is
// how DPDK hands packets between cores (software steering), and freeing it there returns it to
// its pool through the pool's multi-producer ring. `Mbuf` is not `Sync`.
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// Takes ownership of a raw mbuf (from `rx_burst`).
    ///
    /// # Safety
    /// `raw` must be a valid mbuf that nobody else owns.
    pub(crate) unsafe fn from_raw(raw: NonNull<rte_mbuf>) -> Self {
        Self { raw }
    }

    /// Gives up ownership (to `tx_burst`).
    pub(crate) fn into_raw(self) -> *mut rte_mbuf {
        let p = self.raw.as_ptr();
        std::mem::forget(self);
        p
    }

    /// Bytes of the first segment.
    pub fn data(&self) -> &[u8] {
        // SAFETY: mtod points at data_len initialised bytes owned by this mbuf; the borrow of
        // self keeps the mbuf alive and unaliased.
        unsafe {
            let p = dpdk_sys::carmine_pktmbuf_mtod(self.raw.as_ptr()) as *const u8;
            std::slice::from_raw_parts(p, self.data_len())
        }
    }

    /// Bytes of the first segment, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `data`, and `&mut self` makes the access exclusive.
        unsafe {
            let p = dpdk_sys::carmine_pktmbuf_mtod(self.raw.as_ptr()) as *mut u8;
            std::slice::from_raw_parts_mut(p, self.data_len())
        }
    }

    pub fn data_len(&self) -> usize {
        // SAFETY: valid mbuf.
        unsafe { dpdk_sys::carmine_pktmbuf_data_len(self.raw.as_ptr()) as usize }
    }

    /// Total length over all segments.
    pub fn pkt_len(&self) -> usize {
        // SAFETY: valid mbuf.
        unsafe { dpdk_sys::carmine_pktmbuf_pkt_len(self.raw.as_ptr()) as usize }
    }

    pub fn segments(&self) -> u16 {
        // SAFETY: valid mbuf.
        unsafe { dpdk_sys::carmine_pktmbuf_nb_segs(self.raw.as_ptr()) }
    }

    /// Bytes that can still be appended.
    pub fn tailroom(&self) -> usize {
        // SAFETY: valid mbuf.
        unsafe { dpdk_sys::carmine_pktmbuf_tailroom(self.raw.as_ptr()) as usize }
    }

    /// Grows the data by `len` bytes and returns them for writing (no copy: the caller writes the
    /// frame straight into the mbuf).
    pub fn append(&mut self, len: usize) -> Result<&mut [u8], DpdkError> {
        let room = self.tailroom();
        if len > room || len > u16::MAX as usize {
            return Err(DpdkError::TooLong { len, room });
        }
        // SAFETY: valid mbuf; len fits the tailroom, so append returns a non-null pointer to len
        // writable bytes inside this mbuf.
        unsafe {
            let p = dpdk_sys::carmine_pktmbuf_append(self.raw.as_ptr(), len as u16) as *mut u8;
            if p.is_null() {
                return Err(DpdkError::TooLong { len, room });
            }
            Ok(std::slice::from_raw_parts_mut(p, len))
        }
    }

    /// Shrinks the data by `len` bytes from the end.
    pub fn trim(&mut self, len: usize) -> bool {
        if len > u16::MAX as usize {
            return false;
        }
        // SAFETY: valid mbuf.
        unsafe { dpdk_sys::carmine_pktmbuf_trim(self.raw.as_ptr(), len as u16) == 0 }
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf; free returns it (and any chained segments) to its pool.
        unsafe { dpdk_sys::carmine_pktmbuf_free(self.raw.as_ptr()) }
    }
}
