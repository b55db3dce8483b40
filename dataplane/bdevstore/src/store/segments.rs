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

impl<D: BlockDevice> BdevStore<D> {
    pub(super) fn free_count(&self) -> u32 {
        self.free_segments()
    }

    /// Move the head to a free segment. `min_free`: free segments that must remain available.
    pub(super) fn open_segment(&mut self, min_free: u32) -> bool {
        if self.free_count() <= min_free {
            return false;
        }
        let Some(s) = (0..self.geo.nsegs).find(|&s| !self.used[s as usize]) else {
            return false;
        };
        self.used[s as usize] = true;
        self.nfree -= 1;
        self.seg_seq[s as usize] = self.head.seg_seq + 1;
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
        if !self.reclaim_due || !self.reads.is_empty() || self.clean_inflight > 0 {
            return; // a read might still target a segment we would hand out again
        }
        self.reclaim_due = false;
        for s in 0..self.geo.nsegs as usize {
            if self.used[s]
                && s != self.head.seg as usize
                && self.idx.acct.live[s] == 0
                && self.seg_seq[s] < self.ckpt.start.seg_seq
            {
                self.used[s] = false;
                self.nfree += 1;
                self.stats.segments_freed += 1;
                self.cleaner_wake();
            }
        }
    }
}
