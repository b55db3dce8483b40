//! Reads: resolve the extents of a range in the index, read whole chunks, verify each chunk's
//! CRC-32C before copying bytes out (a mismatch is `StoreError::Checksum`, never wrong data).
//! A read touching the record in flight is deferred until that record completes.
//!
//! Invariants: a `ReadOp` lives in `reads` while `pending` > 0 (its pieces in flight plus one
//! held while they are submitted) and completes exactly once; `deferred` is only non-empty
//! while a record is in flight or until the next poll issues it.

use std::collections::VecDeque;

use carmine_objectstore::device::{BlockDevice, IoBuf};
use carmine_objectstore::{CollectionId, Completion, Done, ObjectId, StoreError, Ticket};

use super::{BdevStore, Io};
use crate::format::{blocks_for, BLOCK};
use crate::index::{ChunkRef, Extent};
use slab::Slab;

/// Reads in flight and waiting.
pub(super) struct Reads {
    /// Reads with chunk reads in flight (slab key: the op index in `Io::Read`).
    pub(super) ops: Slab<ReadOp>,
    /// Reads waiting for the record in flight: (ticket, collection, object, offset, length).
    pub(super) deferred: VecDeque<(Ticket, CollectionId, ObjectId, u64, u64)>,
    /// Scratch list of the pieces of one read: (dest offset, offset in chunk, length, chunk).
    pub(super) pieces: Vec<(usize, usize, usize, ChunkRef)>,
}

impl Reads {
    pub(super) fn new() -> Self {
        Reads {
            ops: Slab::with_capacity(256),
            deferred: VecDeque::new(),
            pieces: Vec::new(),
        }
    }
}

pub(super) struct ReadOp {
    pub(super) ticket: Ticket,
    pub(super) out: Vec<u8>,
    /// `out` starts empty and the single piece's bytes are appended (no zero fill).
    pub(super) append: bool,
    pub(super) pending: usize,
    pub(super) err: Option<StoreError>,
}

impl<D: BlockDevice> BdevStore<D> {
    pub(super) fn finish_piece(&mut self, op: usize) {
        let Some(r) = self.reads.ops.get_mut(op) else {
            return;
        };
        r.pending -= 1;
        if r.pending == 0 {
            if let Some(r) = self.reads.ops.try_remove(op) {
                let result = match r.err {
                    Some(e) => Err(e),
                    None => Ok(Done::Data(r.out)),
                };
                self.done.push(Completion {
                    ticket: r.ticket,
                    result,
                });
            }
        }
    }

    pub(super) fn start_read(
        &mut self,
        ticket: Ticket,
        cid: CollectionId,
        oid: &ObjectId,
        off: u64,
        len: u64,
    ) {
        let Some((id, o)) = self.idx.onode(cid, oid) else {
            let what = if self.idx.colls.contains_key(&cid) {
                format!("object {oid:?}")
            } else {
                format!("collection {}", cid.0)
            };
            self.done.push(Completion {
                ticket,
                result: Err(StoreError::NotFound(what)),
            });
            return;
        };
        let end = off.saturating_add(len).min(o.size);
        if off >= end {
            self.done.push(Completion {
                ticket,
                result: Ok(Done::Data(Vec::new())),
            });
            return;
        }
        // (dest offset, offset in chunk, length, chunk); a reused scratch list (no allocation).
        let mut pieces = std::mem::take(&mut self.reads.pieces);
        pieces.clear();
        let piece = |k: u64, e: &Extent| {
            let s = k.max(off);
            let t = (k + e.len).min(end);
            (s < t).then(|| {
                (
                    (s - off) as usize,
                    e.skip as usize + (s - k) as usize,
                    (t - s) as usize,
                    e.chunk,
                )
            })
        };
        let starts_here = o.extents.get(&off).filter(|e| off + e.len >= end);
        match starts_here {
            // An extent starting at `off` covers the whole range (aligned small reads): one
            // point lookup (a range search descends the tree for both of its bounds).
            Some(e) => pieces.extend(piece(off, e)),
            None => {
                let first = o.extents.range(..=off).next_back().map_or(off, |(k, _)| *k);
                for (&k, e) in o.extents.range(first..end) {
                    pieces.extend(piece(k, e));
                }
            }
        }
        // Data of the record being written is not on the device yet: wait for it.
        if let Some(rec) = &self.rec {
            if pieces
                .iter()
                .any(|p| p.3.lba >= rec.start && p.3.lba < rec.end)
            {
                self.reads
                    .deferred
                    .push_back((ticket, cid, oid.clone(), off, len));
                self.reads.pieces = pieces;
                return;
            }
        }
        let _ = id;
        let total = (end - off) as usize;
        // One piece covering the whole range (the common case): its completion appends the
        // bytes to an empty buffer, so the buffer is never zero-filled first. Otherwise holes
        // read as zeros and pieces land at their offsets.
        let whole = pieces.len() == 1 && pieces[0].0 == 0 && pieces[0].2 == total;
        let out = if whole {
            self.take_spare(total)
        } else {
            vec![0; total]
        };
        let op = self.reads.ops.insert(ReadOp {
            ticket,
            out,
            append: whole,
            pending: pieces.len() + 1,
            err: None,
        });
        for &(dest, skip, len, chunk) in &pieces {
            let blocks = blocks_for(chunk.len as u64);
            match self.get_buf((blocks * BLOCK) as usize) {
                Ok(buf) => {
                    let lba = self.geo.dev_lba(chunk.lba);
                    let t = self.token(Io::Read {
                        op,
                        dest,
                        skip,
                        len,
                        chunk,
                    });
                    self.dev.submit_read(lba, buf, t);
                }
                Err(e) => {
                    if let Some(r) = self.reads.ops.get_mut(op) {
                        r.err.get_or_insert(StoreError::Io(e));
                    }
                    self.finish_piece(op);
                }
            }
        }
        self.reads.pieces = pieces;
        // The extra pending count keeps the op alive while pieces are submitted.
        self.finish_piece(op);
    }

    pub(super) fn issue_deferred(&mut self) {
        if self.rec.is_some() {
            return;
        }
        while let Some((t, cid, oid, off, len)) = self.reads.deferred.pop_front() {
            match &self.failed {
                // The record it waited for may never have reached the device.
                Some(f) => self.done.push(Completion {
                    ticket: t,
                    result: Err(StoreError::Failed(f.clone())),
                }),
                None => self.start_read(t, cid, &oid, off, len),
            }
        }
    }

    /// A chunk read for `op` completed: verify its CRC and copy its piece out.
    pub(super) fn read_done(
        &mut self,
        op: usize,
        dest: usize,
        skip: usize,
        len: usize,
        chunk: ChunkRef,
        buf: Option<&D::Buf>,
    ) {
        if let (Some(buf), Some(r)) = (buf, self.reads.ops.get_mut(op)) {
            let stored = &buf.as_slice()[..chunk.len as usize];
            let computed = carmine_checksum::crc32c(stored);
            if computed != chunk.crc {
                r.err.get_or_insert(StoreError::Checksum {
                    block: chunk.lba,
                    stored: chunk.crc,
                    computed,
                });
            } else if r.append {
                r.out.extend_from_slice(&stored[skip..skip + len]);
            } else {
                r.out[dest..dest + len].copy_from_slice(&stored[skip..skip + len]);
            }
        }
        self.finish_piece(op);
    }

    /// A chunk read for `op` failed: the read gets the error, the store fails.
    pub(super) fn read_failed(
        &mut self,
        op: usize,
        chunk: ChunkRef,
        e: &carmine_objectstore::device::DeviceError,
    ) {
        if let Some(r) = self.reads.ops.get_mut(op) {
            r.err.get_or_insert(StoreError::Io(e.clone()));
        }
        self.finish_piece(op);
        self.fail(format!("read of block {} failed: {e}", chunk.lba));
    }
}
