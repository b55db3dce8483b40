//! Spare heap buffers of write data and read results, for an engine to hand out again
//! ([`crate::ObjectStore::data_buf`], and its own read results): a steady stream of 4 KiB
//! writes and reads otherwise costs a 4 KiB malloc and free per op, more than the copy of its
//! data (glibc takes such chunks through its unsorted bin and consolidates on free).
//!
//! A buffer is made with room for at least [`MIN_CAPACITY`] bytes, whatever its first use
//! asked for: buffers of all sizes share the list, and a small one (a few bytes the cleaner
//! relocated, say) handed out later for a 4 KiB write would be reallocated.
//!
//! Invariants: every buffer held is empty, with a capacity in `1..=max_bytes`; at most
//! `max_bufs` are held (a burst of large or many buffers is freed, not kept).

/// The least capacity of a buffer made here: one 4 KiB block, the common I/O size (a
/// `max_bytes` below it would keep no new buffer).
pub const MIN_CAPACITY: usize = 4096;

/// A bounded list of spare, empty heap buffers.
#[derive(Debug)]
pub struct SpareBufs {
    bufs: Vec<Vec<u8>>,
    max_bufs: usize,
    max_bytes: usize,
}

impl SpareBufs {
    /// Keeps at most `max_bufs` buffers, each of at most `max_bytes` capacity.
    pub fn new(max_bufs: usize, max_bytes: usize) -> Self {
        SpareBufs {
            bufs: Vec::new(),
            max_bufs,
            max_bytes,
        }
    }

    /// An empty buffer with room for at least `len` bytes: a spare one when there is one.
    pub fn take(&mut self, len: usize) -> Vec<u8> {
        match self.bufs.pop() {
            Some(mut v) => {
                v.reserve(len);
                v
            }
            None => Vec::with_capacity(len.max(MIN_CAPACITY)),
        }
    }

    /// Keeps `v` (emptied) for a later [`SpareBufs::take`], if there is room and it is not
    /// too large; frees it otherwise.
    pub fn put(&mut self, mut v: Vec<u8>) {
        if self.bufs.len() < self.max_bufs && v.capacity() > 0 && v.capacity() <= self.max_bytes {
            v.clear();
            self.bufs.push(v);
        }
    }

    /// Buffers held.
    pub fn len(&self) -> usize {
        self.bufs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_and_the_bounds_hold() {
        let mut s = SpareBufs::new(2, 8192);
        let mut a = s.take(4096);
        a.extend_from_slice(&[7; 4096]);
        let ptr = a.as_ptr();
        s.put(a);
        let b = s.take(100);
        assert!(b.is_empty());
        assert_eq!(b.as_ptr(), ptr, "the spare buffer is handed out again");
        assert!(b.capacity() >= 4096);
        // Too large, empty (never allocated) and beyond the count: freed, not kept.
        s.put(Vec::with_capacity(8193));
        s.put(Vec::new());
        assert_eq!(s.len(), 0);
        s.put(b);
        s.put(vec![1; 10]);
        s.put(vec![2; 10]);
        assert_eq!(s.len(), 2);
        // A spare smaller than asked for grows.
        let c = s.take(5000);
        assert!(c.capacity() >= 5000 && c.is_empty());
    }

    #[test]
    fn a_small_first_use_still_makes_a_block_sized_buffer() {
        let mut s = SpareBufs::new(4, 1 << 16);
        let mut small = s.take(10);
        assert!(small.capacity() >= MIN_CAPACITY);
        small.extend_from_slice(&[1; 10]);
        s.put(small);
        // Handed out for a 4 KiB write: no reallocation.
        let v = s.take(4096);
        let ptr = v.as_ptr();
        let mut v = v;
        v.extend_from_slice(&[2; 4096]);
        assert_eq!(v.as_ptr(), ptr);
    }
}
