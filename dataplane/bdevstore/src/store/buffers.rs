//! Buffer reuse: idle device buffers pooled by length in whole blocks (fresh DMA memory costs
//! page faults on first touch and is scarce), and spare heap buffers of consumed write data,
//! handed out again for the next write (`ObjectStore::data_buf`) and for read results.
//!
//! Invariants: `pooled` is the byte total of the buffers in `pool`, at most `POOL_BYTES`;
//! pooled device buffers hold arbitrary old bytes (whoever writes one to disk writes every
//! byte); spare buffers are empty, with capacity at most `SPARE_MAX_BYTES`.

use carmine_objectstore::device::{BlockDevice, DeviceError, IoBuf};
use carmine_objectstore::SpareBufs;

use super::BdevStore;
use crate::format::BLOCK;

/// Idle device buffers and spare heap buffers, for reuse.
pub(super) struct Buffers<B> {
    /// Idle device buffers by length in blocks (index); lengths past the end are not pooled.
    /// A Vec index instead of a hash map: this runs for every device I/O.
    pool: Vec<Vec<B>>,
    /// Bytes in `pool`.
    pooled: usize,
    /// Heap buffers of consumed write data (and recycled read results), reused for read
    /// results and handed out by `data_buf`: a 4 KiB malloc/free pair per op otherwise.
    spare: SpareBufs,
}

impl<B> Default for Buffers<B> {
    fn default() -> Self {
        Buffers {
            pool: Vec::new(),
            pooled: 0,
            spare: SpareBufs::new(SPARE_BUFS, SPARE_MAX_BYTES),
        }
    }
}

/// Bytes of idle I/O buffers kept for reuse.
const POOL_BYTES: usize = 32 << 20;
/// Spare heap data buffers kept (each at most `SPARE_MAX_BYTES` of capacity).
const SPARE_BUFS: usize = 1024;
const SPARE_MAX_BYTES: usize = 64 << 10;
/// Largest pooled buffer, in blocks (records are at most a segment; checkpoint bodies, larger
/// and rare, are allocated each time).
const POOL_MAX_BLOCKS: usize = 4096;

impl<D: BlockDevice> BdevStore<D> {
    /// A device buffer of exactly `len` bytes, reused when possible: fresh memory costs page
    /// faults on first touch (and DMA memory is precious), so buffers cycle through a pool.
    /// Contents are arbitrary.
    pub(super) fn get_buf(&mut self, len: usize) -> Result<D::Buf, DeviceError> {
        let slot = len / BLOCK as usize;
        let pooled = len.is_multiple_of(BLOCK as usize) && len > 0;
        if let Some(b) = self
            .bufs
            .pool
            .get_mut(slot)
            .filter(|_| pooled)
            .and_then(Vec::pop)
        {
            self.bufs.pooled -= len;
            return Ok(b);
        }
        self.dev.alloc_buf(len)
    }

    /// An empty heap buffer with room for `len` bytes, reused when possible.
    pub(super) fn take_spare(&mut self, len: usize) -> Vec<u8> {
        self.bufs.spare.take(len)
    }

    pub(super) fn put_spare(&mut self, v: Vec<u8>) {
        self.bufs.spare.put(v);
    }

    pub(super) fn put_buf(&mut self, b: D::Buf) {
        let len = b.len();
        let slot = len / BLOCK as usize;
        let whole_blocks = len % BLOCK as usize == 0 && len > 0;
        if self.bufs.pooled + len <= POOL_BYTES && whole_blocks && slot <= POOL_MAX_BLOCKS {
            if self.bufs.pool.len() <= slot {
                self.bufs.pool.resize_with(slot + 1, Vec::new);
            }
            self.bufs.pooled += len;
            self.bufs.pool[slot].push(b);
        }
    }
}
