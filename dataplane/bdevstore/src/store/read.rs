//! Reads: resolve the extents of a range in the index, read whole chunks, verify each chunk's
//! CRC-32C before copying bytes out (a mismatch is `StoreError::Checksum`, never wrong data).
//! A read touching the record in flight is deferred until that record completes.
//!
//! A read that may lend (`ObjectStore::read_lent`) and lies in one chunk is not copied out: the
//! device buffer it landed in, CRC checked, goes into `lent` and the caller gets a `Lent` naming
//! it, until `give_back` returns it to the buffer pool. That saves a 4 KiB copy and a heap
//! buffer per read; the OSD encodes its reply straight from the loan.
//!
//! Invariants: a `ReadOp` lives in `reads` while `pending` > 0 (its pieces in flight plus one
//! held while they are submitted) and completes exactly once; `deferred` is only non-empty
//! while a record is in flight or until the next poll issues it; a buffer in `lent` belongs to
//! exactly one `Lent` held by a caller (or a `ReadOp` about to complete).

use std::collections::VecDeque;

use carmine_objectstore::device::{BlockDevice, IoBuf};
use carmine_objectstore::{CollectionId, Completion, Done, Lent, ObjectId, StoreError, Ticket};

use super::{BdevStore, Io};
use crate::format::{blocks_for, BLOCK};
use crate::index::{ChunkRef, Extent};
use slab::Slab;

/// Reads in flight and waiting, and the device buffers lent out.
pub(super) struct Reads<B> {
    /// Reads with chunk reads in flight (slab key: the op index in `Io::Read`).
    pub(super) ops: Slab<ReadOp>,
    /// Reads waiting for the record in flight.
    pub(super) deferred: VecDeque<Deferred>,
    /// Scratch list of the pieces of one read: (dest offset, offset in chunk, length, chunk).
    pub(super) pieces: Vec<(usize, usize, usize, ChunkRef)>,
    /// Device buffers lent to callers (slab key: `Lent::slot`).
    pub(super) lent: Slab<B>,
    /// This store instance's name on its loans (`Lent::lender`).
    pub(super) lender: u32,
}

/// Lender names of the store instances of this process, handed out in turn.
static NEXT_LENDER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

impl<B> Reads<B> {
    pub(super) fn new() -> Self {
        Reads {
            ops: Slab::with_capacity(256),
            deferred: VecDeque::new(),
            pieces: Vec::new(),
            lent: Slab::with_capacity(256),
            lender: NEXT_LENDER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// A read waiting for the record in flight.
pub(super) struct Deferred {
    ticket: Ticket,
    cid: CollectionId,
    oid: ObjectId,
    off: u64,
    len: u64,
    lend: bool,
}

pub(super) struct ReadOp {
    pub(super) ticket: Ticket,
    pub(super) out: Vec<u8>,
    /// `out` starts empty and the single piece's bytes are appended (no zero fill).
    pub(super) append: bool,
    /// The single piece's device buffer is lent instead of copied into `out`.
    pub(super) lend: bool,
    /// That loan, once the piece has completed.
    pub(super) loan: Option<Lent>,
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
                let result = match (r.err, r.loan) {
                    (Some(e), loan) => {
                        if let Some(loan) = loan {
                            self.give_back_loan(loan);
                        }
                        Err(e)
                    }
                    (None, Some(loan)) => Ok(Done::Lent(loan)),
                    (None, None) => Ok(Done::Data(r.out)),
                };
                self.done.push(Completion {
                    ticket: r.ticket,
                    result,
                });
            }
        }
    }

    /// A read's ticket; `lend`: the caller takes a loan (`read_lent`).
    pub(super) fn queue_read(
        &mut self,
        cid: CollectionId,
        oid: &ObjectId,
        off: u64,
        len: u64,
        lend: bool,
    ) -> Ticket {
        match self.new_ticket() {
            Ok(ticket) => {
                self.start_read(ticket, cid, oid, off, len, lend);
                ticket
            }
            Err(ticket) => ticket,
        }
    }

    pub(super) fn start_read(
        &mut self,
        ticket: Ticket,
        cid: CollectionId,
        oid: &ObjectId,
        off: u64,
        len: u64,
        lend: bool,
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
                self.reads.deferred.push_back(Deferred {
                    ticket,
                    cid,
                    oid: oid.clone(),
                    off,
                    len,
                    lend,
                });
                self.reads.pieces = pieces;
                return;
            }
        }
        let _ = id;
        let total = (end - off) as usize;
        // One piece covering the whole range (the common case): lent if the caller can take
        // a loan, else its completion appends the bytes to an empty buffer, so the buffer is
        // never zero-filled first. Otherwise holes read as zeros and pieces land at their
        // offsets.
        let whole = pieces.len() == 1 && pieces[0].0 == 0 && pieces[0].2 == total;
        let lend = lend && whole && u32::try_from(total).is_ok();
        let out = if lend {
            Vec::new()
        } else if whole {
            self.take_spare(total)
        } else {
            vec![0; total]
        };
        let op = self.reads.ops.insert(ReadOp {
            ticket,
            out,
            append: whole,
            lend,
            loan: None,
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
        while let Some(d) = self.reads.deferred.pop_front() {
            match &self.failed {
                // The record it waited for may never have reached the device.
                Some(f) => self.done.push(Completion {
                    ticket: d.ticket,
                    result: Err(StoreError::Failed(f.clone())),
                }),
                None => self.start_read(d.ticket, d.cid, &d.oid, d.off, d.len, d.lend),
            }
        }
    }

    /// A chunk read for `op` completed: verify its CRC, then lend the buffer (taken out of
    /// `buf`) or copy its piece out.
    pub(super) fn read_done(
        &mut self,
        op: usize,
        dest: usize,
        skip: usize,
        len: usize,
        chunk: ChunkRef,
        buf: &mut Option<D::Buf>,
    ) {
        if let (Some(b), Some(r)) = (buf.as_ref(), self.reads.ops.get_mut(op)) {
            let stored = &b.as_slice()[..chunk.len as usize];
            let computed = carmine_checksum::crc32c(stored);
            if computed != chunk.crc {
                r.err.get_or_insert(StoreError::Checksum {
                    block: chunk.lba,
                    stored: chunk.crc,
                    computed,
                });
            } else if r.lend {
                if let Some(b) = buf.take() {
                    // `start_read` lends only ranges whose length fits a u32; a piece lies
                    // within its chunk, whose length is a u32.
                    let slot = self.reads.lent.insert(b);
                    let lender = self.reads.lender;
                    r.loan = Some(Lent::new(lender, slot as u32, skip as u32, len as u32));
                }
            } else if r.append {
                r.out.extend_from_slice(&stored[skip..skip + len]);
            } else {
                r.out[dest..dest + len].copy_from_slice(&stored[skip..skip + len]);
            }
        }
        self.finish_piece(op);
    }

    /// The bytes of `loan`, if it is one of this store's.
    pub(super) fn loan_bytes(&self, loan: &Lent) -> Option<&[u8]> {
        if loan.lender() != self.reads.lender {
            return None;
        }
        let b = self.reads.lent.get(loan.slot() as usize)?;
        b.as_slice().get(loan.off()..loan.off() + loan.len())
    }

    /// Ends `loan`: its buffer goes back to the pool (a loan of another store is ignored).
    pub(super) fn give_back_loan(&mut self, loan: Lent) {
        if loan.lender() != self.reads.lender {
            tracing::error!(
                lender = loan.lender(),
                "a loan of another store was given back here: ignored"
            );
            return;
        }
        if let Some(b) = self.reads.lent.try_remove(loan.slot() as usize) {
            self.put_buf(b);
        }
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
