//! Buffer reuse: idle device buffers pooled by length in whole blocks (fresh DMA memory costs
//! page faults on first touch and is scarce), and spare heap buffers of consumed write data,
//! handed out again for the next write (`ObjectStore::data_buf`) and for read results.
//!
//! Invariants: `pooled` is the byte total of the buffers in `pool`, at most `POOL_BYTES`;
//! pooled device buffers hold arbitrary old bytes (whoever writes one to disk writes every
//! byte); spare buffers are empty, with capacity at most `SPARE_MAX_BYTES`.

use carmine_objectstore::device::{BlockDevice, DeviceError, IoBuf};

use super::BdevStore;
use crate::format::BLOCK;

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
        let pooled = len % BLOCK as usize == 0 && len > 0;
        if let Some(b) = self
            .pool
            .get_mut(slot)
            .filter(|_| pooled)
            .and_then(Vec::pop)
        {
            self.pooled -= len;
            return Ok(b);
        }
        self.dev.alloc_buf(len)
    }

    /// An empty heap buffer with room for `len` bytes, reused when possible.
    pub(super) fn take_spare(&mut self, len: usize) -> Vec<u8> {
        match self.spare.pop() {
            Some(mut v) => {
                v.reserve(len);
                v
            }
            None => Vec::with_capacity(len),
        }
    }

    pub(super) fn put_spare(&mut self, mut v: Vec<u8>) {
        if self.spare.len() < SPARE_BUFS && v.capacity() > 0 && v.capacity() <= SPARE_MAX_BYTES {
            v.clear();
            self.spare.push(v);
        }
    }

    pub(super) fn put_buf(&mut self, b: D::Buf) {
        let len = b.len();
        let slot = len / BLOCK as usize;
        let whole_blocks = len % BLOCK as usize == 0 && len > 0;
        if self.pooled + len <= POOL_BYTES && whole_blocks && slot <= POOL_MAX_BLOCKS {
            if self.pool.len() <= slot {
                self.pool.resize_with(slot + 1, Vec::new);
            }
            self.pooled += len;
            self.pool[slot].push(b);
        }
    }
}
