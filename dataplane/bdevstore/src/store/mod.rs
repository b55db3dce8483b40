//! The running store: one shard's [`BdevStore`], driven by `poll`. This module holds the type,
//! mount and shutdown, the completion dispatch and the [`ObjectStore`] impl; the work itself
//! lives in the submodules, each a set of `impl BdevStore` methods over the state it owns:
//!
//! - [`record`]: group commit, packing queued transactions and relocations into one record;
//! - [`read`]: reads, and reads deferred behind the record in flight;
//! - [`cleaner`]: victim choice, relocation reads, the rest states and the space policy;
//! - [`segments`]: the free list, opening segments, reclaiming emptied ones;
//! - [`checkpoint`]: when to checkpoint and the body/flush/header/flush sequence;
//! - [`buffers`]: the pools of device buffers and heap data buffers.
//!
//! Invariants kept across the modules: at most one record is in flight (`rec`), so the log has
//! no holes; every device I/O in flight has exactly one `Io` in `io` (its slab key is the
//! device token); after the first device error (`failed`) no new record, read, cleaner step
//! or checkpoint starts (I/O already in flight completes).

mod buffers;
mod checkpoint;
mod cleaner;
mod read;
mod record;
mod segments;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use carmine_objectstore::device::{BlockDevice, IoCompletion};
use carmine_objectstore::{
    meta, CollectionId, Completion, Lent, ListPage, ObjectId, ObjectStat, ObjectStore, OmapEntries,
    StoreError, Ticket, Transaction,
};
use slab::Slab;

use crate::format::{encoded_len, Geometry, LogPos, BLOCK, DEFAULT_SEG_BLOCKS};
use crate::index::{ChunkRef, Entry, Extent, Index, Reloc};
use crate::mount::{load, sync_flush, sync_write, Loaded};

use buffers::Buffers;
use checkpoint::{Ckpt, CkptPhase};
use cleaner::{CleanPiece, Cleaner};
use read::Reads;
pub use record::TxnFootprint;
use record::{record_fixed_bytes, InFlight, RecordScratch};
use segments::Segments;

/// Knobs of a mounted store.
#[derive(Clone, Debug)]
pub struct MountOptions {
    pub shard: usize,
    /// Refuse devices that keep no data (the SPDK null bdev). Always true outside benchmarks.
    pub durable: bool,
    /// Largest journal record in blocks (0: a whole segment).
    pub max_record_blocks: u64,
    /// The cleaner runs while fewer segments than this are free.
    pub clean_low_water: u32,
    /// Segments only the cleaner may open (so it can always make progress).
    pub reserve_segs: u32,
    /// Bytes of live data the cleaner relocates per step (bounds its pause).
    pub clean_batch_bytes: u64,
    /// Checkpoint after this many journal blocks (bounds replay time).
    pub ckpt_interval_blocks: u64,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            shard: 0,
            durable: true,
            max_record_blocks: 0,
            clean_low_water: 0,
            reserve_segs: 2,
            clean_batch_bytes: 128 * 1024,
            ckpt_interval_blocks: 0,
        }
    }
}

/// Counters for benchmarks and tests.
#[derive(Clone, Debug, Default)]
pub struct StoreStats {
    pub records: u64,
    pub txns_committed: u64,
    pub user_bytes: u64,
    pub relocated_bytes: u64,
    pub cleaner_steps: u64,
    pub cleaner_max_pause: Duration,
    pub segments_freed: u64,
    /// Times the cleaner stalled because relocating wrote as many blocks as it freed.
    pub cleaner_stalls: u64,
    /// Times a relocation found no segment to write into (the cleaner rested until a
    /// transaction committed or a segment was freed; writes needing space got `NoSpace`).
    pub cleaner_stuck: u64,
    pub checkpoints: u64,
    pub checkpoint_max_pause: Duration,
}

enum Io {
    RecWrite,
    RecFlush,
    CkptBody,
    CkptBodyFlush,
    CkptHdr,
    CkptHdrFlush,
    Read {
        op: usize,
        dest: usize,
        skip: usize,
        len: usize,
        chunk: ChunkRef,
    },
    /// One read of a chunk for every live extent of it in this cleaner batch: a large
    /// chunk overwritten in small pieces is read (and its CRC checked) once, not once per
    /// surviving piece.
    Clean {
        chunk: ChunkRef,
        pieces: Vec<CleanPiece>,
    },
}

/// A mounted partition of a block device: one shard's object store.
pub struct BdevStore<D: BlockDevice> {
    dev: D,
    geo: Geometry,
    idx: Index,
    /// Where the next record goes.
    head: LogPos,
    opts: MountOptions,
    /// Submitted transactions not yet in a record.
    queue: VecDeque<(Ticket, Transaction)>,
    /// The record being written (at most one).
    rec: Option<InFlight>,
    /// In-flight device operations; the slab key is the device token (no hashing per I/O).
    io: Slab<Io>,
    segs: Segments,
    reads: Reads<D::Buf>,
    cleaner: Cleaner,
    ckpt: Ckpt,
    bufs: Buffers<D::Buf>,
    /// Lists a record is built in, reused.
    scratch: RecordScratch,
    /// The transaction at the queue's front waits for the cleaner to make room.
    space_wait: bool,
    /// Cleaner steps + checkpoints at the moment a transaction started waiting for space.
    wait_mark: Option<u64>,
    done: Vec<Completion>,
    failed: Option<String>,
    next_ticket: u64,
    stats: StoreStats,
    /// Scratch list of device completions, reused by every poll.
    iobuf: Vec<IoCompletion<D::Buf>>,
}

impl<D: BlockDevice> BdevStore<D> {
    /// Mount shard `opts.shard` of a formatted device: load the newest checkpoint, replay the
    /// journal, wipe a torn tail record. Refuses a device that keeps no data when `durable`.
    pub fn mount(mut dev: D, opts: MountOptions) -> Result<Self, StoreError> {
        if opts.durable && !dev.keeps_data() {
            return Err(StoreError::NotDurable);
        }
        let l: Loaded = load(&mut dev, opts.shard)?;
        for &lba in &l.wipe {
            tracing::info!(lba, "wiping torn/stale journal record header");
            sync_write(&mut dev, Some(&l.geo), lba, &vec![0u8; BLOCK as usize])?;
        }
        if !l.wipe.is_empty() {
            sync_flush(&mut dev)?;
        }
        tracing::info!(
            shard = opts.shard,
            records = l.records,
            seq = l.head.seq,
            "bdevstore mounted"
        );
        if l.geo.seg_blocks < DEFAULT_SEG_BLOCKS {
            tracing::warn!(
                shard = opts.shard,
                seg_blocks = l.geo.seg_blocks,
                default = DEFAULT_SEG_BLOCKS,
                "segments smaller than the default (an older format?): a transaction whose \
                 record exceeds a segment is refused with InvalidArgument, e.g. a 4 MiB write"
            );
        }
        let mut opts = opts;
        if opts.clean_low_water == 0 {
            opts.clean_low_water = (l.geo.nsegs / 8).max(opts.reserve_segs + 2);
        }
        if opts.ckpt_interval_blocks == 0 {
            opts.ckpt_interval_blocks =
                (l.geo.nsegs as u64 * l.geo.seg_blocks / 4).max(l.geo.seg_blocks);
        }
        let mut used = l.used;
        used[l.head.seg as usize] = true;
        let reloc_hdr_fixed = record_fixed_bytes() + encoded_len(&Entry::Reloc(Vec::new()));
        let zero_chunk = ChunkRef {
            lba: 0,
            len: 0,
            crc: 0,
        };
        let reloc_bytes = encoded_len(&Reloc {
            onode: 0,
            off: 0,
            old: Extent {
                len: 0,
                skip: 0,
                chunk: zero_chunk,
            },
            new: zero_chunk,
        });
        let s = BdevStore {
            dev,
            geo: l.geo,
            idx: l.index,
            head: l.head,
            opts,
            queue: VecDeque::new(),
            rec: None,
            io: Slab::with_capacity(256),
            segs: Segments::new(used, l.seg_seq),
            reads: Reads::new(),
            cleaner: Cleaner::new(reloc_bytes, reloc_hdr_fixed),
            ckpt: Ckpt {
                phase: CkptPhase::Idle,
                generation: l.generation,
                active_slot: l.active_slot,
                start: l.ckpt_start,
                pending: None,
                too_big: false,
                blocks_since: l.replayed_blocks,
                body: Vec::new(),
                hdr: Vec::new(),
                hdr_payload: Vec::new(),
                seg_seqs: Vec::new(),
            },
            bufs: Buffers::default(),
            scratch: RecordScratch::default(),
            space_wait: false,
            wait_mark: None,
            done: Vec::new(),
            failed: None,
            next_ticket: 0,
            stats: StoreStats::default(),
            iobuf: Vec::new(),
        };
        Ok(s)
    }

    /// Finish all queued work, write a checkpoint (so the next mount replays nothing) and
    /// give the device back.
    pub fn shutdown(mut self) -> Result<D, StoreError> {
        let mut out = Vec::new();
        carmine_objectstore::drive::drain(&mut self, &mut out)?;
        if let Some(f) = &self.failed {
            return Err(StoreError::Failed(f.clone()));
        }
        self.ckpt.phase = CkptPhase::Quiesce;
        carmine_objectstore::drive::drain(&mut self, &mut out)?;
        Ok(self.dev)
    }

    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    pub fn device(&self) -> &D {
        &self.dev
    }

    /// The device itself, only while the store is idle (nothing queued or in flight), for
    /// tools that interleave their own I/O with the store's (storebench's raw baseline on
    /// another partition of the same device). Whoever submits through it must reap every one
    /// of its completions before polling the store again: the store ignores unknown tokens.
    pub fn device_mut_when_idle(&mut self) -> Option<&mut D> {
        if self.is_idle() {
            Some(&mut self.dev)
        } else {
            None
        }
    }

    /// Free segments right now.
    pub fn free_segments(&self) -> u32 {
        self.segs.nfree
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// Device buffers lent to callers and not given back yet (`ObjectStore::read_lent`).
    pub fn loans_out(&self) -> usize {
        self.reads.lent.len()
    }

    /// The next operation's ticket: `Ok` to go ahead, `Err` when the store has failed (its
    /// completion, the failure, is queued already: a failed device is trusted for nothing).
    fn new_ticket(&mut self) -> Result<Ticket, Ticket> {
        self.next_ticket += 1;
        let ticket = Ticket(self.next_ticket);
        match &self.failed {
            Some(f) => {
                self.done.push(Completion {
                    ticket,
                    result: Err(StoreError::Failed(f.clone())),
                });
                Err(ticket)
            }
            None => Ok(ticket),
        }
    }

    fn token(&mut self, io: Io) -> u64 {
        self.io.insert(io) as u64
    }

    /// Why the store failed, once it has: every later operation (reads too) fails with
    /// `StoreError::Failed` naming it, until the store is mounted again. Set by the first
    /// device I/O error on any path (journal, reads, cleaner, checkpoint) or a DMA buffer the
    /// journal or a checkpoint could not get. The OSD reports it to the monitor.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    fn fail(&mut self, why: String) {
        if self.failed.is_none() {
            tracing::error!(%why, "bdevstore failed: every later operation is refused");
            self.failed = Some(why);
        }
    }

    fn reap(&mut self) {
        let mut done = std::mem::take(&mut self.iobuf);
        self.dev.poll(&mut done);
        for mut c in done.drain(..) {
            let Some(io) = self.io.try_remove(c.token as usize) else {
                tracing::warn!(token = c.token, "completion for an unknown token");
                continue;
            };
            self.complete_io(io, &mut c);
            if let Some(b) = c.buf {
                self.put_buf(b);
            }
        }
        self.iobuf = done;
    }

    /// Dispatch one device completion to the module whose I/O it was.
    /// A read may take the buffer out of `c` (to lend it); the rest go back to the pool.
    fn complete_io(&mut self, io: Io, c: &mut IoCompletion<D::Buf>) {
        if let Err(e) = &c.result {
            match io {
                Io::Read { op, chunk, .. } => self.read_failed(op, chunk, e),
                Io::Clean { chunk, .. } => self.clean_read_failed(chunk, e),
                _ => {
                    let why = format!("{:?} I/O failed: {e}", c.kind);
                    if let Some(rec) = self.rec.take() {
                        for t in rec.tickets {
                            self.done.push(Completion {
                                ticket: t,
                                result: Err(StoreError::Io(e.clone())),
                            });
                        }
                    }
                    self.ckpt.phase = CkptPhase::Idle;
                    self.fail(why);
                }
            }
            return;
        }
        match io {
            Io::RecWrite => {
                let t = self.token(Io::RecFlush);
                self.dev.submit_flush(t);
            }
            Io::RecFlush => self.record_durable(),
            Io::CkptBody | Io::CkptBodyFlush | Io::CkptHdr | Io::CkptHdrFlush => {
                self.checkpoint_io_done(io)
            }
            Io::Read {
                op,
                dest,
                skip,
                len,
                chunk,
            } => self.read_done(op, dest, skip, len, chunk, &mut c.buf),
            Io::Clean { chunk, pieces } => self.clean_read_done(chunk, pieces, c.buf.as_ref()),
        }
    }

    fn object(
        &self,
        cid: CollectionId,
        oid: &ObjectId,
    ) -> Result<&crate::index::Onode, StoreError> {
        if !self.idx.colls.contains_key(&cid) {
            return Err(StoreError::NotFound(format!("collection {}", cid.0)));
        }
        self.idx
            .onode(cid, oid)
            .map(|(_, o)| o)
            .ok_or_else(|| StoreError::NotFound(format!("object {oid:?}")))
    }
}

impl<D: BlockDevice> ObjectStore for BdevStore<D> {
    fn submit(&mut self, txn: Transaction) -> Ticket {
        match self.new_ticket() {
            Ok(ticket) => {
                self.queue.push_back((ticket, txn));
                ticket
            }
            Err(ticket) => ticket,
        }
    }

    fn read(&mut self, cid: CollectionId, oid: &ObjectId, off: u64, len: u64) -> Ticket {
        self.queue_read(cid, oid, off, len, false)
    }

    fn read_lent(&mut self, cid: CollectionId, oid: &ObjectId, off: u64, len: u64) -> Ticket {
        self.queue_read(cid, oid, off, len, true)
    }

    fn lent(&self, loan: &Lent) -> Option<&[u8]> {
        self.loan_bytes(loan)
    }

    fn give_back(&mut self, loan: Lent) {
        self.give_back_loan(loan);
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        let n0 = out.len();
        self.reap();
        if let Some(f) = self.failed.clone() {
            for (t, _) in self.queue.drain(..) {
                self.done.push(Completion {
                    ticket: t,
                    result: Err(StoreError::Failed(f.clone())),
                });
            }
        }
        self.take_checkpoint();
        self.maybe_checkpoint();
        self.take_checkpoint();
        self.cleaner_step();
        self.build_record();
        self.issue_deferred();
        self.reclaim();
        // File devices complete inside poll: reap once more so a commit needs fewer polls.
        self.reap();
        out.append(&mut self.done);
        out.len() - n0
    }

    fn is_idle(&self) -> bool {
        self.queue.is_empty()
            && self.rec.is_none()
            && self.reads.ops.is_empty()
            && self.reads.deferred.is_empty()
            && self.cleaner.inflight == 0
            && self.cleaner.ready.is_empty()
            && self.ckpt.phase == CkptPhase::Idle
            && self.done.is_empty()
            && self.io.is_empty()
    }

    fn stat(&self, cid: CollectionId, oid: &ObjectId) -> Result<ObjectStat, StoreError> {
        self.object(cid, oid).map(|o| ObjectStat { size: o.size })
    }

    fn get_attr(
        &self,
        cid: CollectionId,
        oid: &ObjectId,
        name: &str,
    ) -> Result<Vec<u8>, StoreError> {
        meta::attr(&self.object(cid, oid)?.attrs, name)
    }

    fn get_attrs(
        &self,
        cid: CollectionId,
        oid: &ObjectId,
    ) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        Ok(meta::attrs(&self.object(cid, oid)?.attrs))
    }

    fn omap_get(
        &self,
        cid: CollectionId,
        oid: &ObjectId,
        keys: &[Vec<u8>],
    ) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StoreError> {
        Ok(self.object(cid, oid)?.omap.get_many(keys))
    }

    fn omap_range(
        &self,
        cid: CollectionId,
        oid: &ObjectId,
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<OmapEntries, StoreError> {
        Ok(self.object(cid, oid)?.omap.range_after(after, max))
    }

    fn list(
        &self,
        cid: CollectionId,
        after: Option<&ObjectId>,
        max: usize,
    ) -> Result<ListPage, StoreError> {
        let c = self
            .idx
            .colls
            .get(&cid)
            .ok_or_else(|| StoreError::NotFound(format!("collection {}", cid.0)))?;
        Ok(meta::list_page(c, after, max))
    }

    fn collection_len(&self, cid: CollectionId) -> usize {
        self.idx.colls.get(&cid).map_or(0, |c| c.len())
    }

    fn list_collections(&self) -> Vec<CollectionId> {
        self.idx.colls.keys().copied().collect()
    }

    fn data_buf(&mut self, len: usize) -> Vec<u8> {
        self.take_spare(len)
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        self.put_spare(buf);
    }

    fn transaction(&mut self) -> Transaction {
        self.scratch.transaction()
    }
}
