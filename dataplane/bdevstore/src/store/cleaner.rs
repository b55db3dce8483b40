//! The cleaner: frees segments by relocating their live extents into the log head, in bounded
//! steps. A step (`cleaner_step`, while free segments are below the low-water mark or a
//! transaction waits for space) picks the used segment cheapest to relocate, counted in the
//! whole blocks its extents take once moved, and reads up to `clean_batch_bytes` of its live
//! extents; the completed reads (`Cleaner::ready`) go into the next record as one relocation entry
//! (`record::pack_relocations`). This module also holds the space policy a waiting transaction
//! consults (`can_reclaim`, `worth_waiting`) and the rest states (crate docs, "Cleaner and
//! space").
//!
//! Invariants: at most one batch between victim pick and record (`inflight` reads, then
//! `ready`); a relocation applies only if its extent did not change meanwhile; a `Stuck`
//! cleaner picks nothing until a committed transaction or a freed segment wakes it; the
//! progress guard (`net`, `best`, `futile`) stalls a cleaner that stops
//! gaining blocks, so cleaning always ends once the foreground stops.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use carmine_objectstore::device::{BlockDevice, DeviceError, IoBuf};

use super::{BdevStore, CkptPhase, Io};
use crate::format::{blocks_for, BLOCK};
use crate::index::{ChunkRef, Extent, RefCursor};

/// The cleaner's state between steps.
pub(super) struct Cleaner {
    /// The segment being emptied.
    pub(super) victim: Option<u32>,
    /// Where the cleaner stopped in the victim's back-reference list.
    pub(super) cursor: RefCursor,
    /// Cleaner chunk reads in flight.
    pub(super) inflight: usize,
    /// Verified live extents read, waiting for the next record: (onode, offset, extent, data).
    pub(super) ready: Vec<(u64, u64, Extent, Vec<u8>)>,
    /// The last cleaner step found no victim (or the cleaner is stalled).
    pub(super) idle: bool,
    /// Cleaner progress in blocks since a stall last ended (or mount): a segment
    /// for each victim emptied, minus the blocks of relocation records and the head tails they
    /// left unused (opening a new segment). Without foreground writes it only rises as used
    /// segments give blocks back, so it is bounded and the cleaner stops. `best` is its
    /// high-water mark, `futile` counts victims emptied since it last rose. See
    /// `CLEAN_FUTILE_LIMIT`.
    pub(super) net: i64,
    pub(super) best: i64,
    pub(super) futile: u32,
    /// Whether the cleaner may pick victims, and what wakes it (see `CleanerRest` and the
    /// crate docs, "Cleaner and space").
    pub(super) rest: CleanerRest,
    /// Encoded bytes of one `Reloc`, and of a relocation record's header without any (fixed-int
    /// encoding: sizes do not depend on values): the cleaner's header cost estimate.
    pub(super) reloc_bytes: u64,
    pub(super) reloc_hdr_fixed: u64,
    /// Lists of a step, reused.
    scratch: Scratch,
    /// Emptied piece lists of completed cleaner reads, reused.
    piece_lists: Vec<Vec<CleanPiece>>,
}

/// Piece lists kept for reuse (one per chunk a batch reads).
const PIECE_LISTS: usize = 256;

/// The lists one cleaner step fills, kept between steps.
#[derive(Default)]
struct Scratch {
    /// Live extents of the victim found this step.
    items: Vec<(u64, u64, Extent)>,
    /// Candidates already seen this step (`Index::segment_extents_into`).
    seen: HashSet<(u64, u64)>,
    /// The batch's chunk reads, each with the live pieces it serves.
    reads: Vec<(ChunkRef, Vec<CleanPiece>)>,
    /// Chunk lba -> index in `reads`.
    by_lba: HashMap<u64, usize>,
}

impl Cleaner {
    pub(super) fn new(reloc_bytes: u64, reloc_hdr_fixed: u64) -> Self {
        Cleaner {
            victim: None,
            cursor: RefCursor::default(),
            inflight: 0,
            ready: Vec::new(),
            idle: false,
            net: 0,
            best: 0,
            futile: 0,
            rest: CleanerRest::Active,
            reloc_bytes,
            reloc_hdr_fixed,
            scratch: Scratch::default(),
            piece_lists: Vec::new(),
        }
    }
}

/// A live extent the cleaner moves: (onode, logical offset, extent).
pub(super) type CleanPiece = (u64, u64, Extent);

/// Victims the cleaner may empty without its net gain in blocks (`Cleaner::net`) reaching a new
/// high before it stalls. Block accounting keeps futile victims out in the common case; this
/// bounds what it cannot see (extents too big to pack into the head's remainder), so cleaning
/// always ends once the foreground stops.
const CLEAN_FUTILE_LIMIT: u32 = 4;

/// The cleaner's rest state: whether it may pick victims and what wakes it. One state, so the
/// two reasons to rest cannot disagree (module docs, "Cleaner and space").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CleanerRest {
    /// Cleans while free segments are below the low-water mark or a transaction waits for space.
    Active,
    /// Emptying victims stopped gaining blocks (`CLEAN_FUTILE_LIMIT`): no new victim until the
    /// foreground has written records and dropped live blocks (overwrites, removes) worth a
    /// segment together (`fg_blocks` so far): new garbage the cleaner may gain from. A transaction waiting for space overrides it (`worth_waiting` bounds
    /// that wait).
    Stalled { fg_blocks: u64 },
    /// The last relocation found no segment to write into (the store is full of live data it
    /// cannot pack tighter): no cleaning at all, even for a waiting transaction, and
    /// transactions needing space fail with `NoSpace` at once. Woken by a committed
    /// transaction (e.g. a remove) or a freed segment; it then resumes the stall it
    /// interrupted (`stalled`: that stall's `fg_blocks`; only a waiting transaction makes a
    /// stalled cleaner relocate, so it can get stuck), else `Active`.
    Stuck { stalled: Option<u64> },
}

impl<D: BlockDevice> BdevStore<D> {
    /// Could cleaning plus a checkpoint make room for `need_bytes`?
    pub(super) fn can_reclaim(&self, need_bytes: u64) -> bool {
        let cap = self.geo.seg_bytes();
        let mut garbage = 0u64;
        let mut candidate = false;
        for s in 0..self.geo.nsegs as usize {
            if !self.segs.used[s] || s == self.head.seg as usize || self.segs.bad[s] {
                continue;
            }
            garbage += self.geo.seg_blocks.saturating_sub(self.clean_cost(s)) * BLOCK;
            candidate |= self.worth_cleaning(s);
        }
        candidate && !self.ckpt.too_big && garbage >= need_bytes + cap
    }

    /// Blocks relocating all of segment `s` would write: each extent becomes its own chunk
    /// (whole blocks), plus a header with one `Reloc` per extent.
    pub(super) fn clean_cost(&self, s: usize) -> u64 {
        let a = &self.idx.acct;
        if a.live[s] == 0 {
            return 0;
        }
        a.blocks[s]
            + blocks_for(
                self.cleaner.reloc_hdr_fixed + u64::from(a.extents(s)) * self.cleaner.reloc_bytes,
            )
    }

    /// Does cleaning segment `s` free space? It must hold live data (else it only needs a
    /// checkpoint) and its relocation must take at least two blocks less than the segment.
    /// In blocks, not bytes: a segment of 600-byte objects is 15% live by bytes, yet moving
    /// it fills a whole segment again (the cleaner then moved the same data round forever).
    pub(super) fn worth_cleaning(&self, s: usize) -> bool {
        self.idx.acct.live[s] > 0 && self.clean_cost(s) + 2 <= self.geo.seg_blocks
    }

    /// Keep a transaction waiting for the cleaner, or fail it with `NoSpace`? Wait only while
    /// reclaimable space exists and background work is still making moves; give up after a
    /// bounded number of cleaner steps without success (fragmentation the cleaner cannot fix).
    pub(super) fn worth_waiting(&mut self, need_bytes: u64) -> bool {
        let stuck = matches!(self.cleaner.rest, CleanerRest::Stuck { .. });
        if stuck || !self.can_reclaim(need_bytes) {
            return false;
        }
        let events = self.stats.cleaner_steps + self.stats.checkpoints;
        let mark = *self.wait_mark.get_or_insert(events);
        let head = self.head.seg as usize;
        let pending_free = (0..self.geo.nsegs as usize)
            .any(|s| self.segs.used[s] && s != head && self.idx.acct.live[s] == 0);
        let busy = self.cleaner.inflight > 0
            || !self.cleaner.ready.is_empty()
            || self.ckpt.phase != CkptPhase::Idle;
        if !busy && !pending_free && self.cleaner.idle && events > mark {
            return false;
        }
        events - mark <= 2 * self.geo.nsegs as u64 + 4
    }

    /// The relocation read by the last cleaner step has nowhere to go: drop it (the extents
    /// stay where they are, nothing changed) and rest `Stuck` until something changes, so
    /// that waiting transactions get `NoSpace` rather than wait for a cleaner that cannot
    /// move (and the shard does not re-read the same victim on every poll).
    pub(super) fn cleaner_stuck(&mut self) {
        let stalled = match self.cleaner.rest {
            CleanerRest::Active => None,
            CleanerRest::Stalled { fg_blocks } => Some(fg_blocks),
            CleanerRest::Stuck { stalled } => stalled,
        };
        if !matches!(self.cleaner.rest, CleanerRest::Stuck { .. }) {
            self.stats.cleaner_stuck += 1;
            tracing::warn!(
                free = self.free_count(),
                "cleaner has no segment to relocate into: writes needing space fail with \
                 NoSpace until data is removed"
            );
        }
        self.cleaner.rest = CleanerRest::Stuck { stalled };
        self.cleaner.victim = None;
        self.cleaner.cursor = RefCursor::default();
    }

    /// A `Stuck` cleaner may find room again (a transaction committed or a segment was
    /// freed). It resumes the stall it interrupted, if any: a freed segment alone does not
    /// restart a cleaner that was gaining nothing.
    pub(super) fn cleaner_wake(&mut self) {
        if let CleanerRest::Stuck { stalled } = self.cleaner.rest {
            self.cleaner.rest = match stalled {
                Some(fg_blocks) => CleanerRest::Stalled { fg_blocks },
                None => CleanerRest::Active,
            };
        }
    }

    /// Transactions committed `blocks` of records and dropped `garbage` blocks of live data
    /// (removes, overwrites): the live data changed, which wakes a `Stuck` cleaner, and a
    /// segment's worth of both together ends a stall and restarts the progress guard. Garbage
    /// counts because removes make room for the cleaner while writing almost nothing: a full
    /// store that removed half its data must clean again before writes need to wait.
    pub(super) fn foreground_wrote(&mut self, blocks: u64, garbage: u64) {
        self.cleaner_wake();
        if let CleanerRest::Stalled { fg_blocks } = &mut self.cleaner.rest {
            *fg_blocks += blocks + garbage;
            if *fg_blocks >= self.geo.seg_blocks {
                self.cleaner.rest = CleanerRest::Active;
                self.cleaner.futile = 0;
                self.cleaner.best = self.cleaner.net;
            }
        }
    }

    /// One bounded cleaner step: pick a victim segment and start reading up to
    /// `clean_batch_bytes` of its live extents. The relocation record is built later by
    /// `build_record`, in the same poll loop, so foreground I/O interleaves.
    pub(super) fn cleaner_step(&mut self) {
        if self.failed.is_some()
            || matches!(self.cleaner.rest, CleanerRest::Stuck { .. })
            || self.cleaner.inflight > 0
            || !self.cleaner.ready.is_empty()
        {
            return;
        }
        if self.free_count() >= self.opts.clean_low_water && !self.space_wait {
            return;
        }
        let t0 = Instant::now();
        if self
            .cleaner
            .victim
            .is_some_and(|v| self.idx.acct.live[v as usize] == 0)
        {
            self.cleaner.victim = None;
            self.victim_emptied();
        }
        if matches!(self.cleaner.rest, CleanerRest::Stalled { .. }) && !self.space_wait {
            self.cleaner.idle = true;
            return;
        }
        if self.cleaner.victim.is_none() {
            let head = self.head.seg as usize;
            self.cleaner.victim = (0..self.geo.nsegs as usize)
                .filter(|&s| self.segs.used[s] && s != head && !self.segs.bad[s])
                .filter(|&s| self.worth_cleaning(s))
                .map(|s| (self.clean_cost(s), s))
                .min()
                .map(|(_, s)| s as u32);
        }
        self.cleaner.idle = self.cleaner.victim.is_none();
        let Some(v) = self.cleaner.victim else { return };
        // Bounded batch: at most half a segment (in bytes and in the whole blocks each extent
        // takes once moved), so the relocation record always fits.
        let budget = self.opts.clean_batch_bytes.min(self.geo.seg_bytes() / 2);
        let max_blocks = self.geo.seg_blocks / 2;
        let mut taken = 0u64;
        let mut taken_blocks = 0u64;
        // The step's lists are the cleaner's, reused (a step allocates nothing once they grew).
        let Scratch {
            mut items,
            mut seen,
            mut reads,
            mut by_lba,
        } = std::mem::take(&mut self.cleaner.scratch);
        self.idx.segment_extents_into(
            v as usize,
            &mut self.cleaner.cursor,
            budget,
            &mut items,
            &mut seen,
        );
        if items.is_empty() {
            self.cleaner.scratch = Scratch {
                items,
                seen,
                reads,
                by_lba,
            };
            // Only dead candidates within this step's scan bound: continue next poll. (Still
            // a step: waiting for space is bounded in steps.)
            self.stats.cleaner_steps += 1;
            self.stats.cleaner_max_pause = self.stats.cleaner_max_pause.max(t0.elapsed());
            return;
        }
        // Live extents grouped by the chunk they point into (chunk lba -> index in `reads`).
        reads.clear();
        by_lba.clear();
        for &(id, off, ext) in &items {
            let b = blocks_for(ext.len);
            if taken > 0 && (taken + ext.len > budget || taken_blocks + b > max_blocks) {
                break;
            }
            taken_blocks += b;
            match by_lba.get(&ext.chunk.lba) {
                Some(&i) if reads[i].0 == ext.chunk => reads[i].1.push((id, off, ext)),
                _ => {
                    by_lba.insert(ext.chunk.lba, reads.len());
                    let mut pieces = self.cleaner.piece_lists.pop().unwrap_or_default();
                    pieces.push((id, off, ext));
                    reads.push((ext.chunk, pieces));
                }
            }
            taken += ext.len;
        }
        for (chunk, pieces) in reads.drain(..) {
            let blocks = blocks_for(chunk.len as u64);
            let Ok(buf) = self.get_buf((blocks * BLOCK) as usize) else {
                break;
            };
            let lba = self.geo.dev_lba(chunk.lba);
            let t = self.token(Io::Clean { chunk, pieces });
            self.dev.submit_read(lba, buf, t);
            self.cleaner.inflight += 1;
        }
        self.cleaner.scratch = Scratch {
            items,
            seen,
            reads,
            by_lba,
        };
        self.stats.cleaner_steps += 1;
        let p = t0.elapsed();
        self.stats.cleaner_max_pause = self.stats.cleaner_max_pause.max(p);
    }

    /// The victim holds no live data any more: did the cleaner gain, or stall it.
    pub(super) fn victim_emptied(&mut self) {
        self.cleaner.net += self.geo.seg_blocks as i64;
        if self.cleaner.net > self.cleaner.best {
            self.cleaner.best = self.cleaner.net;
            self.cleaner.futile = 0;
            return;
        }
        self.cleaner.futile += 1;
        if self.cleaner.futile >= CLEAN_FUTILE_LIMIT && self.cleaner.rest == CleanerRest::Active {
            tracing::debug!(
                free = self.segs.nfree,
                "cleaner stalled: relocation wrote as many blocks as it freed"
            );
            self.cleaner.rest = CleanerRest::Stalled { fg_blocks: 0 };
            self.stats.cleaner_stalls += 1;
        }
    }

    /// A cleaner read completed: verify the chunk once, then queue each live piece of it for
    /// the next record. A mismatch leaves the segment in place (marked bad).
    pub(super) fn clean_read_done(
        &mut self,
        chunk: ChunkRef,
        pieces: Vec<CleanPiece>,
        buf: Option<&D::Buf>,
    ) {
        self.cleaner.inflight -= 1;
        if let Some(buf) = buf {
            let stored = &buf.as_slice()[..chunk.len as usize];
            if carmine_checksum::crc32c(stored) != chunk.crc {
                tracing::error!(
                    lba = chunk.lba,
                    "cleaner found a checksum mismatch; segment left in place"
                );
                if let Some(v) = self.cleaner.victim.take() {
                    self.segs.bad[v as usize] = true;
                }
            } else {
                for &(onode, off, ext) in &pieces {
                    let s = ext.skip as usize;
                    let mut data = self.take_spare(ext.len as usize);
                    data.extend_from_slice(&stored[s..s + ext.len as usize]);
                    self.cleaner.ready.push((onode, off, ext, data));
                }
            }
        }
        if self.cleaner.piece_lists.len() < PIECE_LISTS {
            let mut pieces = pieces;
            pieces.clear();
            self.cleaner.piece_lists.push(pieces);
        }
    }

    /// A cleaner read failed: its victim is left in place and the store fails.
    pub(super) fn clean_read_failed(&mut self, chunk: ChunkRef, e: &DeviceError) {
        self.cleaner.inflight -= 1;
        if let Some(v) = self.cleaner.victim.take() {
            self.segs.bad[v as usize] = true;
        }
        self.fail(format!("cleaner read of block {} failed: {e}", chunk.lba));
    }
}
