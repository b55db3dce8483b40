//! Segments: which are in use (`used`, with the count of free ones kept in `nfree` so polls
//! never scan), their log order (`seg_seq`), opening the next head segment, and giving back
//! emptied ones.
//!
//! Invariants: `nfree` equals the number of `false` entries in `used`; the head segment is
//! always used; a segment without live data becomes free only once it lies wholly before the
//! replay start of a durable checkpoint (`seg_seq` < the checkpoint's), and only while no read
//! or cleaner read is in flight (one might still target it).

use carmine_objectstore::device::BlockDevice;

use super::BdevStore;
use crate::format::LogPos;

/// Which segments are in use, in what log order, and which to keep out of cleaning.
pub(super) struct Segments {
    /// In use: the head, or holding records not yet reclaimed.
    pub(super) used: Vec<bool>,
    /// Sequence number of each used segment (segments are numbered in log order).
    pub(super) seq: Vec<u64>,
    /// Number of `false` entries in `used` (kept incrementally: polls must not scan segments).
    pub(super) nfree: u32,
    /// Segments a cleaner read found unreadable or corrupt: never picked as victims again.
    pub(super) bad: Vec<bool>,
    /// A checkpoint completed or space is low: scan for segments to free.
    pub(super) reclaim_due: bool,
}

impl Segments {
    pub(super) fn new(used: Vec<bool>, seq: Vec<u64>) -> Self {
        let nfree = used.iter().filter(|u| !**u).count() as u32;
        Segments {
            bad: vec![false; used.len()],
            used,
            seq,
            nfree,
            reclaim_due: true,
        }
    }
}

impl<D: BlockDevice> BdevStore<D> {
    pub(super) fn free_count(&self) -> u32 {
        self.free_segments()
    }

    /// Move the head to a free segment. `min_free`: free segments that must remain available.
    pub(super) fn open_segment(&mut self, min_free: u32) -> bool {
        if self.free_count() <= min_free {
            return false;
        }
        let Some(s) = (0..self.geo.nsegs).find(|&s| !self.segs.used[s as usize]) else {
            return false;
        };
        self.segs.used[s as usize] = true;
        self.segs.nfree -= 1;
        self.segs.seq[s as usize] = self.head.seg_seq + 1;
        self.head = LogPos {
            seg: s,
            block: 0,
            seq: self.head.seq,
            seg_seq: self.head.seg_seq + 1,
            prev_crc: self.head.prev_crc,
        };
        true
    }

    /// Free segments with no live data that lie wholly before the checkpoint's replay start.
    pub(super) fn reclaim(&mut self) {
        if !self.segs.reclaim_due || !self.reads.ops.is_empty() || self.cleaner.inflight > 0 {
            return; // a read might still target a segment we would hand out again
        }
        self.segs.reclaim_due = false;
        for s in 0..self.geo.nsegs as usize {
            if self.segs.used[s]
                && s != self.head.seg as usize
                && self.idx.acct.live[s] == 0
                && self.segs.seq[s] < self.ckpt.start.seg_seq
            {
                self.segs.used[s] = false;
                self.segs.nfree += 1;
                self.stats.segments_freed += 1;
                self.cleaner_wake();
            }
        }
    }
}
