//! Checkpoints: when to take one (`maybe_checkpoint`: journal blocks since the last, or emptied
//! segments waiting to be freed while space is low), and writing it: quiesce (no record in
//! flight, so every record the snapshot includes is durable), serialize the index into the
//! inactive slot's body, flush, write the header, flush. Only then does the slot become active
//! and the segments before its replay start reclaimable.
//!
//! Invariants: at most one checkpoint in flight (`phase` != `Idle`); `pending` is set exactly
//! while `phase` is `Writing`; `active_slot` and `start` change only once the header is durable.

use std::time::Instant;

use carmine_objectstore::device::{BlockDevice, IoBuf};

use super::{BdevStore, Io};
use crate::format::{blocks_for, encode_into, LogPos, BLOCK};
use crate::mount::{checkpoint_header_into, CkptBody};

#[derive(PartialEq, Eq, Debug)]
pub(super) enum CkptPhase {
    Idle,
    /// Waiting for the in-flight record to finish before taking the snapshot.
    Quiesce,
    Writing,
}

pub(super) struct Ckpt {
    pub(super) phase: CkptPhase,
    pub(super) generation: u64,
    pub(super) active_slot: u64,
    pub(super) start: LogPos,
    /// The slot and the log position of the snapshot being written (its header block in
    /// `hdr`).
    pub(super) pending: Option<(u64, LogPos)>,
    /// The header block of the pending checkpoint; with `hdr_payload` and `seg_seqs`, scratch
    /// kept between checkpoints so that taking one allocates nothing.
    pub(super) hdr: Vec<u8>,
    pub(super) hdr_payload: Vec<u8>,
    pub(super) seg_seqs: Vec<(u32, u64)>,
    /// The metadata no longer fits a slot (logged once; no more checkpoints).
    pub(super) too_big: bool,
    /// Journal blocks written since the last checkpoint (or replayed at mount).
    pub(super) blocks_since: u64,
    /// The last body's encoding buffer, reused (if at most `CKPT_BUF_KEEP`).
    pub(super) body: Vec<u8>,
}

/// Largest checkpoint encoding buffer kept between checkpoints.
const CKPT_BUF_KEEP: usize = 16 << 20;

impl<D: BlockDevice> BdevStore<D> {
    pub(super) fn maybe_checkpoint(&mut self) {
        if self.ckpt.phase != CkptPhase::Idle || self.failed.is_some() {
            return;
        }
        let free = self.free_count();
        let low = free < self.opts.clean_low_water || self.space_wait;
        // Used segments without live data (O(1): counters, no scan): they need a checkpoint
        // (or, if already behind one, just a reclaim scan) to become free.
        let head_empty = usize::from(self.idx.acct.live[self.head.seg as usize] == 0);
        let waiting = self
            .idx
            .acct
            .empty
            .saturating_sub(free as usize + head_empty);
        if low && waiting > 0 {
            self.segs.reclaim_due = true;
        }
        // Batch them: a checkpoint rewrites all metadata, so take one per several freed
        // segments unless space is nearly gone.
        let urgent = free <= self.opts.reserve_segs + 1 || self.space_wait;
        let batch = (self.opts.clean_low_water as usize / 4).max(1);
        let pending_free = low && waiting > 0 && (urgent || waiting >= batch);
        if pending_free || self.ckpt.blocks_since >= self.opts.ckpt_interval_blocks {
            self.ckpt.phase = CkptPhase::Quiesce;
        }
    }

    /// Snapshot the index once no record is in flight (so every record the snapshot includes
    /// is durable), then write body, flush, header, flush.
    pub(super) fn take_checkpoint(&mut self) {
        if self.ckpt.phase != CkptPhase::Quiesce || self.rec.is_some() || self.failed.is_some() {
            return;
        }
        let t0 = Instant::now();
        let mut seg_seqs = std::mem::take(&mut self.ckpt.seg_seqs);
        seg_seqs.clear();
        seg_seqs.extend(
            (0..self.geo.nsegs)
                .filter(|&s| self.segs.used[s as usize])
                .map(|s| (s, self.segs.seq[s as usize])),
        );
        let body_struct = CkptBody {
            index: std::mem::take(&mut self.idx),
            seg_seqs,
        };
        // Encoded into the last checkpoint's buffer: a fresh one of this size costs page
        // faults on first touch, and then is copied straight into the device buffer.
        let mut body = std::mem::take(&mut self.ckpt.body);
        encode_into(&body_struct, &mut body);
        self.idx = body_struct.index;
        self.ckpt.seg_seqs = body_struct.seg_seqs;
        let start = self.head;
        checkpoint_header_into(
            self.geo.uuid,
            self.ckpt.generation + 1,
            start,
            &body,
            &mut self.ckpt.hdr_payload,
            &mut self.ckpt.hdr,
        );
        let body_bytes = (blocks_for(body.len() as u64) * BLOCK) as usize;
        let slot = 1 - self.ckpt.active_slot;
        if 1 + (body_bytes as u64 / BLOCK) > self.geo.slot_blocks {
            if !self.ckpt.too_big {
                tracing::error!(
                    bytes = body.len(),
                    "metadata exceeds the checkpoint slot; segments can no longer be freed"
                );
            }
            self.ckpt.too_big = true;
            self.ckpt.phase = CkptPhase::Idle;
            self.ckpt.blocks_since = 0;
            return;
        }
        let mut buf = match self.get_buf(body_bytes) {
            Ok(b) => b,
            Err(e) => {
                self.fail(format!("checkpoint buffer: {e}"));
                return;
            }
        };
        {
            // Pooled buffers hold old bytes: the padding is zeroed.
            let b = buf.as_mut_slice();
            b[..body.len()].copy_from_slice(&body);
            b[body.len()..].fill(0);
        }
        if body.capacity() <= CKPT_BUF_KEEP {
            self.ckpt.body = body;
        }
        let lba = self.geo.dev_lba(slot * self.geo.slot_blocks + 1);
        let t = self.token(Io::CkptBody);
        self.dev.submit_write(lba, buf, t);
        self.ckpt.pending = Some((slot, start));
        self.ckpt.phase = CkptPhase::Writing;
        self.ckpt.blocks_since = 0;
        let p = t0.elapsed();
        self.stats.checkpoint_max_pause = self.stats.checkpoint_max_pause.max(p);
    }

    /// The next step of a checkpoint write after one of its I/Os completed.
    pub(super) fn checkpoint_io_done(&mut self, io: Io) {
        match io {
            Io::CkptBody => {
                let t = self.token(Io::CkptBodyFlush);
                self.dev.submit_flush(t);
            }
            Io::CkptBodyFlush => {
                // The body is durable: now the header may point at it.
                if let Some(slot) = self.ckpt.pending.as_ref().map(|p| p.0) {
                    let lba = self.geo.dev_lba(slot * self.geo.slot_blocks);
                    match self.get_buf(BLOCK as usize) {
                        Ok(mut b) => {
                            b.as_mut_slice().copy_from_slice(&self.ckpt.hdr);
                            let t = self.token(Io::CkptHdr);
                            self.dev.submit_write(lba, b, t);
                        }
                        Err(e) => self.fail(format!("checkpoint buffer: {e}")),
                    }
                }
            }
            Io::CkptHdr => {
                let t = self.token(Io::CkptHdrFlush);
                self.dev.submit_flush(t);
            }
            Io::CkptHdrFlush => {
                if let Some((slot, start)) = self.ckpt.pending.take() {
                    self.ckpt.generation += 1;
                    self.ckpt.active_slot = slot;
                    self.ckpt.start = start;
                    self.stats.checkpoints += 1;
                    self.segs.reclaim_due = true;
                }
                self.ckpt.phase = CkptPhase::Idle;
            }
            _ => {}
        }
    }
}
