//! Record building (group commit): `build_record` packs the cleaner's ready relocations (one
//! `Reloc` entry) and then queued transactions, in submission order, into one journal record,
//! applies them to the index, and submits one device write; `record_durable` completes its
//! transactions once the write and its flush are done. Also the sizing rules a transaction must
//! fit ([`TxnFootprint`]).
//!
//! Invariants: one record in flight at a time (`rec`), so record N+1 is never on disk before
//! record N is durable; a record never spans segments and never exceeds `max_record_blocks`;
//! its header is sized by its first entry and later entries join only while they fit it; every
//! byte of the record buffer is written once (header, data, or zero padding); data runs follow
//! the header in entry order. Entry sizes do not depend on values (fixed-int encoding), so a
//! transaction is encoded once to size it, with chunk addresses rebased afterwards.

use std::time::Instant;

use carmine_objectstore::device::{BlockDevice, IoBuf};
use carmine_objectstore::{
    validate, Completion, Done, ObjectId, Op, StoreError, Ticket, Transaction,
};

use super::{BdevStore, CkptPhase, Io};
use crate::format::{
    blocks_for, encode_into, encoded_len, frame, RecordHeader, BLOCK, DEFAULT_SEG_BLOCKS,
    FRAME_OVERHEAD, MAX_TXN_DATA, MAX_TXN_HEADER, REC_MAGIC,
};
use crate::index::{ChunkRef, Entry, Extent, LOp, Reloc};

/// The record being written: its transactions complete when it is durable.
pub(super) struct InFlight {
    pub(super) tickets: Vec<Ticket>,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) user_bytes: u64,
    pub(super) txns: u64,
}

/// What one transaction takes in a journal record of its own: a record never spans segments,
/// so a transaction fits a store iff `blocks()` is at most its segment (and
/// `MountOptions::max_record_blocks`). Within [`MAX_TXN_DATA`] and [`MAX_TXN_HEADER`]
/// (`within_limits`) it fits the default geometry ([`DEFAULT_SEG_BLOCKS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnFootprint {
    /// Bytes of the record header: frame, fixed fields and the encoded ops. Exact: integers
    /// are fixed-size, so the value of a chunk address or CRC does not change it.
    pub header_bytes: u64,
    /// Data blocks: every non-empty write rounded up to whole blocks.
    pub data_blocks: u64,
}

impl TxnFootprint {
    /// Measure `txn` (encodes its ops once: not for the data path).
    pub fn of(txn: &Transaction) -> Self {
        let (lops, data_blocks) = translate(txn, 0, false);
        TxnFootprint {
            header_bytes: record_fixed_bytes() + encoded_len(&Entry::Txn(lops)),
            data_blocks,
        }
    }
    pub fn header_blocks(&self) -> u64 {
        blocks_for(self.header_bytes)
    }
    /// Blocks of a record holding only this transaction.
    pub fn blocks(&self) -> u64 {
        self.header_blocks() + self.data_blocks
    }
    /// Within the bounds every store of the default geometry takes.
    pub fn within_limits(&self) -> bool {
        self.data_blocks * BLOCK <= MAX_TXN_DATA && self.header_bytes <= MAX_TXN_HEADER
    }
}

/// Bytes of a record header with no entries: frame overhead plus the fixed fields.
pub(super) fn record_fixed_bytes() -> u64 {
    let empty = RecordHeader {
        uuid: 0,
        seq: 0,
        seg_seq: 0,
        prev_crc: 0,
        header_blocks: 0,
        data_blocks: 0,
        entries: Vec::new(),
    };
    FRAME_OVERHEAD + encoded_len(&empty)
}

/// A transaction's journal ops, its writes' chunks placed from block `lba` on in op order (CRCs
/// computed if `crcs`), and the data blocks they take.
fn translate(txn: &Transaction, mut lba: u64, crcs: bool) -> (Vec<LOp>, u64) {
    if let [Op::Write {
        cid,
        oid,
        off,
        data,
    }] = &txn.ops[..]
    {
        // The common case (one write) without the iterator and its generic collect.
        let chunk = ChunkRef {
            lba,
            len: data.len() as u32,
            crc: if crcs {
                carmine_checksum::crc32c(data)
            } else {
                0
            },
        };
        let op = LOp::Write {
            cid: *cid,
            oid: oid.clone(),
            off: *off,
            chunk,
        };
        return (vec![op], blocks_for(data.len() as u64));
    }
    let mut blocks = 0;
    let ops = txn
        .ops
        .iter()
        .map(|op| match op {
            // Writes: reference the data, never copy it (it is copied once, into the
            // record buffer).
            Op::Write {
                cid,
                oid,
                off,
                data,
            } => {
                let crc = if crcs {
                    carmine_checksum::crc32c(data)
                } else {
                    0
                };
                let chunk = ChunkRef {
                    lba,
                    len: data.len() as u32,
                    crc,
                };
                let b = blocks_for(data.len() as u64);
                lba += b;
                blocks += b;
                LOp::Write {
                    cid: *cid,
                    oid: oid.clone(),
                    off: *off,
                    chunk,
                }
            }
            other => translate_meta(other.clone()),
        })
        .collect();
    (ops, blocks)
}

/// The data path's [`translate`]: `txn`'s journal ops into `lops` (emptied first), with CRCs,
/// chunks placed from block 0 in op order; returns the data blocks. The names of writes are
/// moved out of `txn` rather than cloned (an allocation per op): [`restore_names`] puts them
/// back if the transaction stays queued.
fn translate_into(txn: &mut Transaction, lops: &mut Vec<LOp>) -> u64 {
    lops.clear();
    let mut lba = 0;
    for op in txn.ops.iter_mut() {
        match op {
            Op::Write {
                cid,
                oid,
                off,
                data,
            } => {
                let chunk = ChunkRef {
                    lba,
                    len: data.len() as u32,
                    crc: carmine_checksum::crc32c(data),
                };
                lba += blocks_for(data.len() as u64);
                lops.push(LOp::Write {
                    cid: *cid,
                    oid: std::mem::replace(oid, ObjectId(Default::default())),
                    off: *off,
                    chunk,
                });
            }
            other => lops.push(translate_meta(other.clone())),
        }
    }
    lba
}

/// Undo [`translate_into`]'s moves: the names go back into the transaction's writes.
fn restore_names(txn: &mut Transaction, lops: &mut [LOp]) {
    for (op, lop) in txn.ops.iter_mut().zip(lops) {
        if let (Op::Write { oid, .. }, LOp::Write { oid: moved, .. }) = (op, lop) {
            std::mem::swap(oid, moved);
        }
    }
}

fn translate_meta(op: Op) -> LOp {
    match op {
        Op::Write { cid, oid, off, .. } => LOp::Write {
            cid,
            oid,
            off,
            chunk: ChunkRef {
                lba: 0,
                len: 0,
                crc: 0,
            },
        },
        Op::CreateCollection { cid } => LOp::CreateColl(cid),
        Op::RemoveCollection { cid } => LOp::RemoveColl(cid),
        Op::Touch { cid, oid } => LOp::Touch(cid, oid),
        Op::Zero { cid, oid, off, len } => LOp::Zero { cid, oid, off, len },
        Op::Truncate { cid, oid, size } => LOp::Truncate { cid, oid, size },
        Op::Remove { cid, oid } => LOp::Remove(cid, oid),
        Op::SetAttr {
            cid,
            oid,
            name,
            value,
        } => LOp::SetAttr {
            cid,
            oid,
            name: name.into_owned(),
            value,
        },
        Op::RmAttr { cid, oid, name } => LOp::RmAttr {
            cid,
            oid,
            name: name.into_owned(),
        },
        Op::OmapSet { cid, oid, entries } => LOp::OmapSet { cid, oid, entries },
        Op::OmapRm { cid, oid, keys } => LOp::OmapRm { cid, oid, keys },
    }
}

/// Emptied op lists kept for reuse (each holds a transaction's ops while its record is built).
const LOP_LISTS: usize = 256;
/// Emptied transactions kept for reuse, and the largest op list kept (a PG's creation or
/// peering may build thousands of ops once).
const SPARE_TXNS: usize = 256;
const SPARE_TXN_OPS: usize = 64;

/// The lists a record is built in, kept between records so that building one allocates
/// nothing in steady state: a few vectors per record and one per transaction otherwise.
#[derive(Default)]
pub(super) struct RecordScratch {
    /// Emptied `Entry::Txn` op lists.
    lops: Vec<Vec<LOp>>,
    entries: Vec<Entry>,
    data: Vec<(u64, Vec<u8>)>,
    tickets: Vec<Ticket>,
    /// The encoded header of the last record.
    payload: Vec<u8>,
    /// An emptied `Entry::Reloc` list.
    relocs: Vec<Reloc>,
    /// Emptied transactions (their op lists), handed out by `ObjectStore::transaction`.
    txns: Vec<Transaction>,
}

impl RecordScratch {
    /// An emptied transaction, or a new one.
    pub(super) fn transaction(&mut self) -> Transaction {
        self.txns.pop().unwrap_or_default()
    }

    fn recycle_txn(&mut self, txn: Transaction) {
        if self.txns.len() < SPARE_TXNS && txn.ops.is_empty() && txn.ops.capacity() <= SPARE_TXN_OPS
        {
            self.txns.push(txn);
        }
    }

    fn recycle_lops(&mut self, mut lops: Vec<LOp>) {
        if self.lops.len() < LOP_LISTS {
            lops.clear();
            self.lops.push(lops);
        }
    }

    /// Take back an encoded record's entries: their op lists and the list itself.
    fn recycle_entries(&mut self, mut entries: Vec<Entry>) {
        for e in entries.drain(..) {
            match e {
                Entry::Txn(lops) => self.recycle_lops(lops),
                Entry::Reloc(mut relocs) => {
                    relocs.clear();
                    self.relocs = relocs;
                }
            }
        }
        self.entries = entries;
    }
}

/// A record being packed: its header size so far and the data runs that follow the header.
struct Draft {
    /// Largest record in blocks (`max_record_blocks`, at most a segment).
    max_blocks: u64,
    hdr_bytes: u64,
    /// Header blocks, 0 until the first entry sizes the header.
    h_blocks: u64,
    data_blocks: u64,
    entries: Vec<Entry>,
    /// (block offset within the data area, bytes), offsets ascending.
    data: Vec<(u64, Vec<u8>)>,
    tickets: Vec<Ticket>,
    user_bytes: u64,
    txns: u64,
    /// Blocks of the relocation entry (header and data), 0 without one.
    reloc_blocks: u64,
}

/// What to do with the transaction at the front of the queue.
enum Admit {
    /// It joins the record.
    Take,
    /// It was completed with an error (refused, or `NoSpace`): on to the next one.
    Refused,
    /// It starts the next record, or waits for space.
    Stop,
}

impl<D: BlockDevice> BdevStore<D> {
    /// Group commit: pack ready relocations and queued transactions into one record, apply
    /// them to the index, and submit one device write.
    pub(super) fn build_record(&mut self) {
        if self.rec.is_some() || self.ckpt.phase == CkptPhase::Quiesce || self.failed.is_some() {
            return;
        }
        if self.queue.is_empty() && self.cleaner.ready.is_empty() {
            return;
        }
        let max_blocks = match self.opts.max_record_blocks {
            0 => self.geo.seg_blocks,
            n => n.min(self.geo.seg_blocks),
        };
        let mut d = Draft {
            max_blocks,
            hdr_bytes: record_fixed_bytes(),
            h_blocks: 0,
            data_blocks: 0,
            entries: std::mem::take(&mut self.scratch.entries),
            data: std::mem::take(&mut self.scratch.data),
            tickets: std::mem::take(&mut self.scratch.tickets),
            user_bytes: 0,
            txns: 0,
            reloc_blocks: 0,
        };
        if !self.cleaner.ready.is_empty() {
            // Timed as cleaner pause.
            let t0 = Instant::now();
            self.pack_relocations(&mut d);
            self.stats.cleaner_max_pause = self.stats.cleaner_max_pause.max(t0.elapsed());
        }
        // What the transactions add to the relocation cost of all segments, less the blocks of
        // their own writes, is the garbage they made (negative).
        let (txn_data_from, blocks_from) = (d.data_blocks, self.idx.acct.total_blocks);
        self.pack_transactions(&mut d);
        if d.entries.is_empty() {
            // Nothing to write: keep the (empty) lists for the next record.
            self.scratch.entries = d.entries;
            self.scratch.data = d.data;
            self.scratch.tickets = d.tickets;
            return;
        }
        // The blocks the transactions added (relocations may share the record), and the
        // live blocks they dropped (overwrites, removes).
        let foreground = (d.txns > 0).then(|| {
            let garbage = (blocks_from + d.data_blocks - txn_data_from)
                .saturating_sub(self.idx.acct.total_blocks);
            (d.h_blocks + d.data_blocks - d.reloc_blocks, garbage)
        });
        if self.submit_record(d) {
            if let Some((blocks, garbage)) = foreground {
                self.foreground_wrote(blocks, garbage);
            }
        }
    }

    /// Step 1: the cleaner's ready extents that are still live become one relocation entry,
    /// the record's first, unless they have nowhere to go (the cleaner rests `Stuck`).
    fn pack_relocations(&mut self, d: &mut Draft) {
        // The batch's list goes back to the cleaner emptied, capacity kept.
        let mut live = std::mem::take(&mut self.cleaner.ready);
        let nblocks: u64 = live.iter().map(|r| blocks_for(r.3.len() as u64)).sum();
        // The cleaner leaves the last free segment to transactions without data (removes
        // must work on a full store: they are what makes room).
        if self.head.block + 1 + nblocks > self.geo.seg_blocks && self.free_count() <= 1 {
            self.cleaner_stuck();
            live.clear();
        }
        live.retain(|(id, off, ext, _)| {
            self.idx.onodes.get(id).and_then(|o| o.extents.get(off)) == Some(ext)
        });
        if !live.is_empty() {
            let nblocks: u64 = live.iter().map(|r| blocks_for(r.3.len() as u64)).sum();
            // Fixed-int encoding: the entry is its fixed part plus one `Reloc` per extent,
            // whatever the values (measured without building the list).
            let size = self.cleaner.reloc_hdr_fixed - record_fixed_bytes()
                + live.len() as u64 * self.cleaner.reloc_bytes;
            debug_assert_eq!(
                size,
                encoded_len(&Entry::Reloc(
                    live.iter()
                        .map(|(id, off, ext, _)| Reloc {
                            onode: *id,
                            off: *off,
                            old: *ext,
                            new: ext.chunk,
                        })
                        .collect(),
                ))
            );
            let h = blocks_for(d.hdr_bytes + size);
            // The cleaner leaves the last free segment to transactions without data.
            let fits = self.head.block + h + nblocks <= self.geo.seg_blocks;
            let tail = self.geo.seg_blocks.saturating_sub(self.head.block);
            if fits || self.open_segment(1) {
                if !fits {
                    self.cleaner.net -= tail as i64;
                }
                d.h_blocks = h;
                d.hdr_bytes += size;
            } else {
                self.cleaner_stuck();
                live.clear();
            }
        }
        if live.is_empty() {
            self.cleaner.ready = live;
            return;
        }
        let mut lba = self.geo.seg_lba(self.head.seg) + self.head.block + d.h_blocks;
        let mut relocs = std::mem::take(&mut self.scratch.relocs);
        for (id, off, ext, bytes) in live.drain(..) {
            relocs.push(self.relocate(d, &mut lba, id, off, ext, bytes));
        }
        self.cleaner.ready = live;
        d.entries.push(Entry::Reloc(relocs));
        d.reloc_blocks = d.h_blocks + d.data_blocks;
        self.cleaner.net -= d.reloc_blocks as i64;
    }

    /// Move one live extent to `lba` (advanced past it): its data joins the record and the
    /// index points at the new chunk.
    fn relocate(
        &mut self,
        d: &mut Draft,
        lba: &mut u64,
        id: u64,
        off: u64,
        ext: Extent,
        bytes: Vec<u8>,
    ) -> Reloc {
        // A whole chunk moves unchanged: its CRC (verified when it was read) holds.
        let whole = ext.skip == 0 && bytes.len() == ext.chunk.len as usize;
        let new = ChunkRef {
            lba: *lba,
            len: bytes.len() as u32,
            crc: if whole {
                ext.chunk.crc
            } else {
                carmine_checksum::crc32c(&bytes)
            },
        };
        let b = blocks_for(bytes.len() as u64);
        d.data.push((d.data_blocks, bytes));
        d.data_blocks += b;
        *lba += b;
        let r = Reloc {
            onode: id,
            off,
            old: ext,
            new,
        };
        self.idx.apply_reloc(&r);
        self.stats.relocated_bytes += r.old.len;
        r
    }

    /// Step 2: queued transactions, in submission order, while they fit the record.
    fn pack_transactions(&mut self, d: &mut Draft) {
        while let Some((ticket, txn)) = self.queue.front_mut() {
            let ticket = *ticket;
            if let Err(e) = validate(&self.idx, txn) {
                self.done.push(Completion {
                    ticket,
                    result: Err(e),
                });
                self.queue.pop_front();
                continue;
            }
            // Translated once, with chunk addresses relative to this transaction's data; they
            // are rebased below once the record position is known. The op list is a recycled
            // one and the names of writes move out of the transaction (no allocation).
            let mut lops = self.scratch.lops.pop().unwrap_or_default();
            let nblocks = translate_into(txn, &mut lops);
            let entry = Entry::Txn(lops);
            let size = encoded_len(&entry);
            match self.admit(d, ticket, size, nblocks) {
                Admit::Take => {}
                Admit::Refused => continue,
                Admit::Stop => {
                    // It stays queued for the next record: give its names back.
                    if let (Some((_, txn)), Entry::Txn(mut lops)) = (self.queue.front_mut(), entry)
                    {
                        restore_names(txn, &mut lops);
                        self.scratch.recycle_lops(lops);
                    }
                    break;
                }
            }
            self.space_wait = false;
            self.wait_mark = None;
            let Some((ticket, txn)) = self.queue.pop_front() else {
                break;
            };
            self.add_transaction(d, ticket, txn, entry, size, nblocks);
        }
    }

    /// May the front transaction (header entry of `size` bytes, `nblocks` data blocks) join
    /// the record? The first entry sizes the header and may open a new segment (or wait for
    /// one, or fail with `NoSpace`); later ones join only while header and segment have room.
    fn admit(&mut self, d: &mut Draft, ticket: Ticket, size: u64, nblocks: u64) -> Admit {
        if d.h_blocks != 0 {
            let full = d.hdr_bytes + size > d.h_blocks * BLOCK
                || self.head.block + d.h_blocks + d.data_blocks + nblocks > self.geo.seg_blocks
                || d.h_blocks + d.data_blocks + nblocks > d.max_blocks;
            return if full { Admit::Stop } else { Admit::Take };
        }
        let h = blocks_for(record_fixed_bytes() + size);
        if h + nblocks > d.max_blocks {
            let e = self.too_large(h, nblocks, d.max_blocks);
            tracing::warn!(%e, "transaction refused");
            self.refuse(ticket, e);
            return Admit::Refused;
        }
        if self.head.block + h + nblocks > self.geo.seg_blocks {
            let min_free = if nblocks > 0 {
                self.opts.reserve_segs
            } else {
                0
            };
            if !self.open_segment(min_free) {
                if self.worth_waiting((h + nblocks) * BLOCK) {
                    self.space_wait = true;
                    return Admit::Stop;
                }
                self.space_wait = false;
                self.wait_mark = None;
                self.refuse(ticket, StoreError::NoSpace);
                return Admit::Refused;
            }
        }
        d.h_blocks = h;
        Admit::Take
    }

    /// Complete the front transaction with `e` and drop it from the queue.
    fn refuse(&mut self, ticket: Ticket, e: StoreError) {
        self.done.push(Completion {
            ticket,
            result: Err(e),
        });
        self.queue.pop_front();
    }

    /// The error for a transaction no record of this store can hold.
    fn too_large(&self, h: u64, nblocks: u64, max_blocks: u64) -> StoreError {
        StoreError::InvalidArgument(format!(
            "transaction too large for one journal record: it needs {h} header + \
             {nblocks} data blocks, a record of this store holds at most \
             {max_blocks} blocks of 4 KiB (segments of {} blocks{}); the default \
             geometry ({DEFAULT_SEG_BLOCKS}-block segments) takes up to \
             {MAX_TXN_DATA} bytes of data with {MAX_TXN_HEADER} bytes of header",
            self.geo.seg_blocks,
            if max_blocks < self.geo.seg_blocks {
                ", max_record_blocks"
            } else {
                ""
            }
        ))
    }

    /// An admitted transaction joins the record: its chunks are rebased to where its data
    /// lands, its data moves into the draft (no copy yet), and the index applies it.
    fn add_transaction(
        &mut self,
        d: &mut Draft,
        ticket: Ticket,
        mut txn: Transaction,
        mut entry: Entry,
        size: u64,
        nblocks: u64,
    ) {
        let base = self.geo.seg_lba(self.head.seg) + self.head.block + d.h_blocks + d.data_blocks;
        if let Entry::Txn(lops) = &mut entry {
            for op in lops.iter_mut() {
                if let LOp::Write { chunk, .. } = op {
                    chunk.lba += base;
                }
            }
        }
        d.hdr_bytes += size;
        for op in txn.ops.drain(..) {
            if let Op::Write { data: bytes, .. } = op {
                if !bytes.is_empty() {
                    let b = blocks_for(bytes.len() as u64);
                    d.user_bytes += bytes.len() as u64;
                    d.data.push((d.data_blocks, bytes));
                    d.data_blocks += b;
                }
            }
        }
        debug_assert!(nblocks <= d.data_blocks);
        self.idx.apply_entry(&entry);
        d.entries.push(entry);
        d.tickets.push(ticket);
        d.txns += 1;
        self.scratch.recycle_txn(txn);
    }

    /// Step 3: encode the header, fill one device buffer (header, data runs, zero padding),
    /// submit it and advance the head. False if no buffer was to be had (the store failed).
    fn submit_record(&mut self, d: Draft) -> bool {
        let Draft {
            h_blocks,
            data_blocks,
            entries,
            data,
            tickets,
            user_bytes,
            txns,
            ..
        } = d;
        let hdr = RecordHeader {
            uuid: self.geo.uuid,
            seq: self.head.seq,
            seg_seq: self.head.seg_seq,
            prev_crc: self.head.prev_crc,
            header_blocks: h_blocks as u32,
            data_blocks: data_blocks as u32,
            entries,
        };
        let mut payload = std::mem::take(&mut self.scratch.payload);
        encode_into(&hdr, &mut payload);
        self.scratch.recycle_entries(hdr.entries);
        let total = h_blocks + data_blocks;
        let mut buf = match self.get_buf((total * BLOCK) as usize) {
            Ok(b) => b,
            Err(e) => {
                for t in tickets {
                    self.done.push(Completion {
                        ticket: t,
                        result: Err(StoreError::Io(e.clone())),
                    });
                }
                self.fail(format!("record buffer: {e}"));
                return false;
            }
        };
        let crc = fill_record(buf.as_mut_slice(), &payload, h_blocks, &data);
        self.scratch.payload = payload;
        let mut data = data;
        for (_, bytes) in data.drain(..) {
            self.put_spare(bytes);
        }
        self.scratch.data = data;
        let start = self.geo.seg_lba(self.head.seg) + self.head.block;
        let dev_lba = self.geo.dev_lba(start);
        let t = self.token(Io::RecWrite);
        self.dev.submit_write(dev_lba, buf, t);
        self.rec = Some(InFlight {
            tickets,
            start,
            end: start + total,
            user_bytes,
            txns,
        });
        self.head.block += total;
        self.head.seq += 1;
        self.head.prev_crc = crc;
        self.ckpt.blocks_since += total;
        true
    }

    /// The record in flight is durable (write and flush done): its transactions commit.
    pub(super) fn record_durable(&mut self) {
        if let Some(mut rec) = self.rec.take() {
            self.stats.records += 1;
            self.stats.txns_committed += rec.txns;
            self.stats.user_bytes += rec.user_bytes;
            for t in rec.tickets.drain(..) {
                self.done.push(Completion {
                    ticket: t,
                    result: Ok(Done::Committed),
                });
            }
            self.scratch.tickets = rec.tickets;
        }
    }
}

/// Lay out a record in `b`: the framed header `payload` in `h_blocks`, then the data runs at
/// their block offsets; returns the header CRC. Pooled buffers hold old bytes, so padding must
/// not carry them to disk: every byte is written exactly once (header, data, or zero padding)
/// instead of zero-filling the whole record first and then copying over it.
fn fill_record(b: &mut [u8], payload: &[u8], h_blocks: u64, data: &[(u64, Vec<u8>)]) -> u32 {
    let crc = frame(REC_MAGIC, payload, b);
    let hdr_end = (h_blocks * BLOCK) as usize;
    b[(16 + payload.len()).min(hdr_end)..hdr_end].fill(0);
    // Data runs are packed in order from the end of the header (block offsets ascend).
    let mut at = hdr_end;
    for (off, bytes) in data {
        let s = ((h_blocks + off) * BLOCK) as usize;
        b[at.min(s)..s].fill(0);
        b[s..s + bytes.len()].copy_from_slice(bytes);
        at = s + bytes.len();
    }
    b[at..].fill(0);
    crc
}

#[cfg(test)]
mod tests {
    use carmine_objectstore::CollectionId;

    use crate::format::encode;

    use super::*;

    fn txn() -> Transaction {
        let c = CollectionId(3);
        let mut t = Transaction::new();
        t.write(c, &ObjectId::from("a"), 0, &[1u8; 5000]);
        t.set_attr(c, &ObjectId::from("a"), "k", b"v");
        t.write(c, &ObjectId::from("b"), 4096, &[]);
        t.write(c, &ObjectId::from("c"), 8192, &[2u8; 10]);
        t
    }

    /// The data path's translation gives the same ops (and so the same record bytes) as the
    /// reference one, and a transaction that stays queued gets its names back intact.
    #[test]
    fn translate_into_matches_translate_and_names_come_back() {
        let original = txn();
        let (want, want_blocks) = translate(&original, 0, true);
        let mut t = original.clone();
        let mut lops = vec![LOp::Touch(CollectionId(9), ObjectId::from("stale"))];
        let blocks = translate_into(&mut t, &mut lops);
        assert_eq!(blocks, want_blocks);
        assert_eq!(encode(&Entry::Txn(lops.clone())), encode(&Entry::Txn(want)));
        assert_ne!(t, original, "write names were moved out");
        restore_names(&mut t, &mut lops);
        assert_eq!(t, original);
    }
}
