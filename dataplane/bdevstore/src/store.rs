//! The running store: group commit, reads, cleaner and checkpoints, all driven by `poll`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use carmine_objectstore::device::{BlockDevice, IoBuf, IoCompletion};
use carmine_objectstore::{
    meta, validate, CollectionId, Completion, Done, ListPage, ObjectId, ObjectStat, ObjectStore,
    OmapEntries, Op, StoreError, Ticket, Transaction,
};
use slab::Slab;

use crate::format::{
    blocks_for, encode, encoded_len, frame, Geometry, LogPos, RecordHeader, BLOCK,
    DEFAULT_SEG_BLOCKS, FRAME_OVERHEAD, MAX_TXN_DATA, MAX_TXN_HEADER, REC_MAGIC,
};
use crate::index::{ChunkRef, Entry, Extent, Index, LOp, RefCursor, Reloc};
use crate::mount::{encode_checkpoint, load, sync_flush, sync_write, CkptBody, Loaded};

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

/// A live extent the cleaner moves: (onode, logical offset, extent).
type CleanPiece = (u64, u64, Extent);

struct InFlight {
    tickets: Vec<Ticket>,
    start: u64,
    end: u64,
    user_bytes: u64,
    txns: u64,
}

struct ReadOp {
    ticket: Ticket,
    out: Vec<u8>,
    /// `out` starts empty and the single piece's bytes are appended (no zero fill).
    append: bool,
    pending: usize,
    err: Option<StoreError>,
}

#[derive(PartialEq, Eq, Debug)]
enum CkptPhase {
    Idle,
    /// Waiting for the in-flight record to finish before taking the snapshot.
    Quiesce,
    Writing,
}

struct Ckpt {
    phase: CkptPhase,
    generation: u64,
    active_slot: u64,
    start: LogPos,
    /// Header block, its slot and the log position of the snapshot being written.
    pending: Option<(Vec<u8>, u64, LogPos)>,
    too_big: bool,
}

/// A mounted partition of a block device: one shard's object store.
pub struct BdevStore<D: BlockDevice> {
    dev: D,
    geo: Geometry,
    idx: Index,
    used: Vec<bool>,
    seg_seq: Vec<u64>,
    head: LogPos,
    opts: MountOptions,
    queue: VecDeque<(Ticket, Transaction)>,
    rec: Option<InFlight>,
    /// In-flight device operations; the slab key is the device token (no hashing per I/O).
    io: Slab<Io>,
    reads: Slab<ReadOp>,
    deferred: VecDeque<(Ticket, CollectionId, ObjectId, u64, u64)>,
    victim: Option<u32>,
    /// Where the cleaner stopped in the victim's back-reference list.
    clean_cursor: RefCursor,
    bad_segs: Vec<bool>,
    clean_inflight: usize,
    clean_ready: Vec<(u64, u64, Extent, Vec<u8>)>,
    space_wait: bool,
    /// Number of `false` entries in `used` (kept incrementally: polls must not scan segments).
    nfree: u32,
    /// A checkpoint completed or space is low: scan for segments to free.
    reclaim_due: bool,
    /// Cleaner steps + checkpoints at the moment a transaction started waiting for space.
    wait_mark: Option<u64>,
    /// The last cleaner step found no victim (or the cleaner is stalled).
    cleaner_idle: bool,
    /// Cleaner progress in blocks since a stall last ended (or mount): a segment
    /// for each victim emptied, minus the blocks of relocation records and the head tails they
    /// left unused (opening a new segment). Without foreground writes it only rises as used
    /// segments give blocks back, so it is bounded and the cleaner stops. `clean_best` is its
    /// high-water mark, `clean_futile` counts victims emptied since it last rose. See
    /// `CLEAN_FUTILE_LIMIT`.
    clean_net: i64,
    clean_best: i64,
    clean_futile: u32,
    /// Whether the cleaner may pick victims, and what wakes it (see `CleanerRest` and the
    /// module docs, "Cleaner and space").
    rest: CleanerRest,
    /// Encoded bytes of one `Reloc`, and of a relocation record's header without any (fixed-int
    /// encoding: sizes do not depend on values): the cleaner's header cost estimate.
    reloc_bytes: u64,
    reloc_hdr_fixed: u64,
    ckpt: Ckpt,
    blocks_since_ckpt: u64,
    done: Vec<Completion>,
    failed: Option<String>,
    next_ticket: u64,
    stats: StoreStats,
    iobuf: Vec<IoCompletion<D::Buf>>,
    /// Idle buffers by length in blocks (index); lengths past the end are not pooled. A Vec
    /// index instead of a hash map: this runs for every device I/O.
    pool: Vec<Vec<D::Buf>>,
    pooled: usize,
    /// Scratch list of the pieces of one read.
    read_pieces: Vec<(usize, usize, usize, ChunkRef)>,
    /// Heap buffers of consumed write data (and recycled read results), reused for read
    /// results and handed out by `data_buf`: a 4 KiB malloc/free pair per op otherwise.
    spare: Vec<Vec<u8>>,
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
fn record_fixed_bytes() -> u64 {
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
            crc: if crcs { crc32c::crc32c(data) } else { 0 },
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
                let crc = if crcs { crc32c::crc32c(data) } else { 0 };
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
            name,
            value,
        },
        Op::RmAttr { cid, oid, name } => LOp::RmAttr { cid, oid, name },
        Op::OmapSet { cid, oid, entries } => LOp::OmapSet { cid, oid, entries },
        Op::OmapRm { cid, oid, keys } => LOp::OmapRm { cid, oid, keys },
    }
}

/// Bytes of idle I/O buffers kept for reuse.
const POOL_BYTES: usize = 32 << 20;
/// Spare heap data buffers kept (each at most `SPARE_MAX_BYTES` of capacity).
const SPARE_BUFS: usize = 1024;
const SPARE_MAX_BYTES: usize = 64 << 10;
/// Largest pooled buffer, in blocks (records are at most a segment; checkpoint bodies, larger
/// and rare, are allocated each time).
const POOL_MAX_BLOCKS: usize = 4096;
/// Victims the cleaner may empty without its net gain in blocks (`clean_net`) reaching a new
/// high before it stalls. Block accounting keeps futile victims out in the common case; this
/// bounds what it cannot see (extents too big to pack into the head's remainder), so cleaning
/// always ends once the foreground stops.
const CLEAN_FUTILE_LIMIT: u32 = 4;

/// The cleaner's rest state: whether it may pick victims and what wakes it. One state, so the
/// two reasons to rest cannot disagree (module docs, "Cleaner and space").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CleanerRest {
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
        let n = l.geo.nsegs as usize;
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
        let mut s = BdevStore {
            dev,
            geo: l.geo,
            idx: l.index,
            used,
            seg_seq: l.seg_seq,
            head: l.head,
            opts,
            queue: VecDeque::new(),
            rec: None,
            io: Slab::with_capacity(256),
            reads: Slab::with_capacity(256),
            deferred: VecDeque::new(),
            victim: None,
            clean_cursor: RefCursor::default(),
            bad_segs: vec![false; n],
            clean_inflight: 0,
            clean_ready: Vec::new(),
            space_wait: false,
            nfree: 0,
            reclaim_due: true,
            wait_mark: None,
            cleaner_idle: false,
            clean_net: 0,
            clean_best: 0,
            clean_futile: 0,
            rest: CleanerRest::Active,
            reloc_bytes,
            reloc_hdr_fixed,
            ckpt: Ckpt {
                phase: CkptPhase::Idle,
                generation: l.generation,
                active_slot: l.active_slot,
                start: l.ckpt_start,
                pending: None,
                too_big: false,
            },
            blocks_since_ckpt: l.replayed_blocks,
            done: Vec::new(),
            failed: None,
            next_ticket: 0,
            stats: StoreStats::default(),
            iobuf: Vec::new(),
            pool: Vec::new(),
            pooled: 0,
            read_pieces: Vec::new(),
            spare: Vec::new(),
        };
        s.nfree = s.used.iter().filter(|u| !**u).count() as u32;
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
        self.nfree
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geo
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

    // ---------------------------------------------------------------- completions

    fn reap(&mut self) {
        let mut done = std::mem::take(&mut self.iobuf);
        self.dev.poll(&mut done);
        for c in done.drain(..) {
            let Some(io) = self.io.try_remove(c.token as usize) else {
                tracing::warn!(token = c.token, "completion for an unknown token");
                continue;
            };
            self.complete_io(io, &c);
            if let Some(b) = c.buf {
                self.put_buf(b);
            }
        }
        self.iobuf = done;
    }

    /// A device buffer of exactly `len` bytes, reused when possible: fresh memory costs page
    /// faults on first touch (and DMA memory is precious), so buffers cycle through a pool.
    /// Contents are arbitrary.
    fn get_buf(&mut self, len: usize) -> Result<D::Buf, carmine_objectstore::device::DeviceError> {
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
    fn take_spare(&mut self, len: usize) -> Vec<u8> {
        match self.spare.pop() {
            Some(mut v) => {
                v.reserve(len);
                v
            }
            None => Vec::with_capacity(len),
        }
    }

    fn put_spare(&mut self, mut v: Vec<u8>) {
        if self.spare.len() < SPARE_BUFS && v.capacity() > 0 && v.capacity() <= SPARE_MAX_BYTES {
            v.clear();
            self.spare.push(v);
        }
    }

    fn put_buf(&mut self, b: D::Buf) {
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

    fn complete_io(&mut self, io: Io, c: &IoCompletion<D::Buf>) {
        if let Err(e) = &c.result {
            match io {
                Io::Read { op, chunk, .. } => {
                    if let Some(r) = self.reads.get_mut(op) {
                        r.err.get_or_insert(StoreError::Io(e.clone()));
                    }
                    self.finish_piece(op);
                    self.fail(format!("read of block {} failed: {e}", chunk.lba));
                }
                Io::Clean { chunk, .. } => {
                    self.clean_inflight -= 1;
                    if let Some(v) = self.victim.take() {
                        self.bad_segs[v as usize] = true;
                    }
                    self.fail(format!("cleaner read of block {} failed: {e}", chunk.lba));
                }
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
            Io::RecFlush => {
                if let Some(rec) = self.rec.take() {
                    self.stats.records += 1;
                    self.stats.txns_committed += rec.txns;
                    self.stats.user_bytes += rec.user_bytes;
                    for t in rec.tickets {
                        self.done.push(Completion {
                            ticket: t,
                            result: Ok(Done::Committed),
                        });
                    }
                }
            }
            Io::CkptBody => {
                let t = self.token(Io::CkptBodyFlush);
                self.dev.submit_flush(t);
            }
            Io::CkptBodyFlush => {
                // The body is durable: now the header may point at it.
                if let Some(slot) = self.ckpt.pending.as_ref().map(|p| p.1) {
                    let lba = self.geo.dev_lba(slot * self.geo.slot_blocks);
                    match self.get_buf(BLOCK as usize) {
                        Ok(mut b) => {
                            if let Some((hdr, _, _)) = &self.ckpt.pending {
                                b.as_mut_slice().copy_from_slice(hdr);
                            }
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
                if let Some((_, slot, start)) = self.ckpt.pending.take() {
                    self.ckpt.generation += 1;
                    self.ckpt.active_slot = slot;
                    self.ckpt.start = start;
                    self.stats.checkpoints += 1;
                    self.reclaim_due = true;
                }
                self.ckpt.phase = CkptPhase::Idle;
            }
            Io::Read {
                op,
                dest,
                skip,
                len,
                chunk,
            } => {
                if let (Some(buf), Some(r)) = (c.buf.as_ref(), self.reads.get_mut(op)) {
                    let stored = &buf.as_slice()[..chunk.len as usize];
                    let computed = crc32c::crc32c(stored);
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
            Io::Clean { chunk, pieces } => {
                self.clean_inflight -= 1;
                if let Some(buf) = c.buf.as_ref() {
                    let stored = &buf.as_slice()[..chunk.len as usize];
                    if crc32c::crc32c(stored) != chunk.crc {
                        tracing::error!(
                            lba = chunk.lba,
                            "cleaner found a checksum mismatch; segment left in place"
                        );
                        if let Some(v) = self.victim.take() {
                            self.bad_segs[v as usize] = true;
                        }
                    } else {
                        for (onode, off, ext) in pieces {
                            let s = ext.skip as usize;
                            let mut data = self.take_spare(ext.len as usize);
                            data.extend_from_slice(&stored[s..s + ext.len as usize]);
                            self.clean_ready.push((onode, off, ext, data));
                        }
                    }
                }
            }
        }
    }

    fn finish_piece(&mut self, op: usize) {
        let Some(r) = self.reads.get_mut(op) else {
            return;
        };
        r.pending -= 1;
        if r.pending == 0 {
            if let Some(r) = self.reads.try_remove(op) {
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

    // ---------------------------------------------------------------- reads

    fn start_read(
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
        let mut pieces = std::mem::take(&mut self.read_pieces);
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
                self.deferred
                    .push_back((ticket, cid, oid.clone(), off, len));
                self.read_pieces = pieces;
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
        let op = self.reads.insert(ReadOp {
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
                    if let Some(r) = self.reads.get_mut(op) {
                        r.err.get_or_insert(StoreError::Io(e));
                    }
                    self.finish_piece(op);
                }
            }
        }
        self.read_pieces = pieces;
        // The extra pending count keeps the op alive while pieces are submitted.
        self.finish_piece(op);
    }

    // ---------------------------------------------------------------- record building

    fn free_count(&self) -> u32 {
        self.free_segments()
    }

    /// Could cleaning plus a checkpoint make room for `need_bytes`?
    fn can_reclaim(&self, need_bytes: u64) -> bool {
        let cap = self.geo.seg_bytes();
        let mut garbage = 0u64;
        let mut candidate = false;
        for s in 0..self.geo.nsegs as usize {
            if !self.used[s] || s == self.head.seg as usize || self.bad_segs[s] {
                continue;
            }
            garbage += self.geo.seg_blocks.saturating_sub(self.clean_cost(s)) * BLOCK;
            candidate |= self.worth_cleaning(s);
        }
        candidate && !self.ckpt.too_big && garbage >= need_bytes + cap
    }

    /// Blocks relocating all of segment `s` would write: each extent becomes its own chunk
    /// (whole blocks), plus a header with one `Reloc` per extent.
    fn clean_cost(&self, s: usize) -> u64 {
        let a = &self.idx.acct;
        if a.live[s] == 0 {
            return 0;
        }
        a.blocks[s] + blocks_for(self.reloc_hdr_fixed + u64::from(a.extents(s)) * self.reloc_bytes)
    }

    /// Does cleaning segment `s` free space? It must hold live data (else it only needs a
    /// checkpoint) and its relocation must take at least two blocks less than the segment.
    /// In blocks, not bytes: a segment of 600-byte objects is 15% live by bytes, yet moving
    /// it fills a whole segment again (the cleaner then moved the same data round forever).
    fn worth_cleaning(&self, s: usize) -> bool {
        self.idx.acct.live[s] > 0 && self.clean_cost(s) + 2 <= self.geo.seg_blocks
    }

    /// Keep a transaction waiting for the cleaner, or fail it with `NoSpace`? Wait only while
    /// reclaimable space exists and background work is still making moves; give up after a
    /// bounded number of cleaner steps without success (fragmentation the cleaner cannot fix).
    fn worth_waiting(&mut self, need_bytes: u64) -> bool {
        let stuck = matches!(self.rest, CleanerRest::Stuck { .. });
        if stuck || !self.can_reclaim(need_bytes) {
            return false;
        }
        let events = self.stats.cleaner_steps + self.stats.checkpoints;
        let mark = *self.wait_mark.get_or_insert(events);
        let head = self.head.seg as usize;
        let pending_free = (0..self.geo.nsegs as usize)
            .any(|s| self.used[s] && s != head && self.idx.acct.live[s] == 0);
        let busy = self.clean_inflight > 0
            || !self.clean_ready.is_empty()
            || self.ckpt.phase != CkptPhase::Idle;
        if !busy && !pending_free && self.cleaner_idle && events > mark {
            return false;
        }
        events - mark <= 2 * self.geo.nsegs as u64 + 4
    }

    /// Move the head to a free segment. `min_free`: free segments that must remain available.
    fn open_segment(&mut self, min_free: u32) -> bool {
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

    /// Group commit: pack ready relocations and queued transactions into one record, apply
    /// them to the index, and submit one device write.
    fn build_record(&mut self) {
        if self.rec.is_some() || self.ckpt.phase == CkptPhase::Quiesce || self.failed.is_some() {
            return;
        }
        if self.queue.is_empty() && self.clean_ready.is_empty() {
            return;
        }
        let max_blocks = match self.opts.max_record_blocks {
            0 => self.geo.seg_blocks,
            n => n.min(self.geo.seg_blocks),
        };
        let fixed = record_fixed_bytes();
        let mut hdr_bytes = fixed;
        let mut h_blocks = 0u64; // 0 until the first entry sizes the header
        let mut data_blocks = 0u64;
        let mut entries: Vec<Entry> = Vec::new();
        let mut data: Vec<(u64, Vec<u8>)> = Vec::new(); // (block offset within data area, bytes)
        let mut tickets = Vec::new();
        let mut user_bytes = 0u64;
        let mut txns = 0u64;

        // 1. Relocations from the cleaner (one entry). Timed as cleaner pause.
        let t0 = Instant::now();
        let mut reloc_blocks = 0u64;
        if !self.clean_ready.is_empty() {
            let nblocks: u64 = self
                .clean_ready
                .iter()
                .map(|r| blocks_for(r.3.len() as u64))
                .sum();
            let ready = std::mem::take(&mut self.clean_ready);
            // The cleaner leaves the last free segment to transactions without data (removes
            // must work on a full store: they are what makes room).
            let ready =
                if self.head.block + 1 + nblocks > self.geo.seg_blocks && self.free_count() <= 1 {
                    self.cleaner_stuck();
                    Vec::new()
                } else {
                    ready
                };
            let mut live: Vec<_> = ready
                .into_iter()
                .filter(|(id, off, ext, _)| {
                    self.idx.onodes.get(id).and_then(|o| o.extents.get(off)) == Some(ext)
                })
                .collect();
            if !live.is_empty() {
                let nblocks: u64 = live.iter().map(|r| blocks_for(r.3.len() as u64)).sum();
                let size = encoded_len(&Entry::Reloc(
                    live.iter()
                        .map(|(id, off, ext, _)| Reloc {
                            onode: *id,
                            off: *off,
                            old: *ext,
                            new: ext.chunk,
                        })
                        .collect(),
                ));
                let h = blocks_for(fixed + size);
                // The cleaner leaves the last free segment to transactions without data.
                let fits = self.head.block + h + nblocks <= self.geo.seg_blocks;
                let tail = self.geo.seg_blocks.saturating_sub(self.head.block);
                if fits || self.open_segment(1) {
                    if !fits {
                        self.clean_net -= tail as i64;
                    }
                    h_blocks = h;
                    hdr_bytes += size;
                } else {
                    self.cleaner_stuck();
                    live = Vec::new();
                }
            }
            if !live.is_empty() {
                let mut lba = self.geo.seg_lba(self.head.seg) + self.head.block + h_blocks;
                let mut relocs = Vec::new();
                for (id, off, ext, bytes) in live {
                    // A whole chunk moves unchanged: its CRC (verified when it was read) holds.
                    let whole = ext.skip == 0 && bytes.len() == ext.chunk.len as usize;
                    let new = ChunkRef {
                        lba,
                        len: bytes.len() as u32,
                        crc: if whole {
                            ext.chunk.crc
                        } else {
                            crc32c::crc32c(&bytes)
                        },
                    };
                    let b = blocks_for(bytes.len() as u64);
                    data.push((data_blocks, bytes));
                    data_blocks += b;
                    lba += b;
                    let r = Reloc {
                        onode: id,
                        off,
                        old: ext,
                        new,
                    };
                    self.idx.apply_reloc(&r);
                    self.stats.relocated_bytes += r.old.len;
                    relocs.push(r);
                }
                entries.push(Entry::Reloc(relocs));
                reloc_blocks = h_blocks + data_blocks;
                self.clean_net -= reloc_blocks as i64;
            }
            self.stats.cleaner_max_pause = self.stats.cleaner_max_pause.max(t0.elapsed());
        }

        // 2. Transactions, in submission order. What they add to the relocation cost of all
        // segments, less the blocks of their own writes, is the garbage they made (negative).
        let (txn_data_from, blocks_from) = (data_blocks, self.idx.acct.total_blocks);
        while let Some((ticket, txn)) = self.queue.front() {
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
            // are rebased below once the record position is known.
            let (lops, nblocks) = translate(txn, 0, true);
            let entry = Entry::Txn(lops);
            let size = encoded_len(&entry);
            if h_blocks == 0 {
                let h = blocks_for(fixed + size);
                if h + nblocks > max_blocks {
                    let e = StoreError::InvalidArgument(format!(
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
                    ));
                    tracing::warn!(%e, "transaction refused");
                    self.done.push(Completion {
                        ticket,
                        result: Err(e),
                    });
                    self.queue.pop_front();
                    continue;
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
                            break;
                        }
                        self.space_wait = false;
                        self.wait_mark = None;
                        self.done.push(Completion {
                            ticket,
                            result: Err(StoreError::NoSpace),
                        });
                        self.queue.pop_front();
                        continue;
                    }
                }
                h_blocks = h;
            } else if hdr_bytes + size > h_blocks * BLOCK
                || self.head.block + h_blocks + data_blocks + nblocks > self.geo.seg_blocks
                || h_blocks + data_blocks + nblocks > max_blocks
            {
                break; // next record
            }
            self.space_wait = false;
            self.wait_mark = None;
            let Some((ticket, txn)) = self.queue.pop_front() else {
                break;
            };
            let base = self.geo.seg_lba(self.head.seg) + self.head.block + h_blocks + data_blocks;
            let mut entry = entry;
            if let Entry::Txn(lops) = &mut entry {
                for op in lops.iter_mut() {
                    if let LOp::Write { chunk, .. } = op {
                        chunk.lba += base;
                    }
                }
            }
            hdr_bytes += size;
            for op in txn.ops {
                if let Op::Write { data: bytes, .. } = op {
                    if !bytes.is_empty() {
                        let b = blocks_for(bytes.len() as u64);
                        user_bytes += bytes.len() as u64;
                        data.push((data_blocks, bytes));
                        data_blocks += b;
                    }
                }
            }
            debug_assert!(nblocks <= data_blocks);
            self.idx.apply_entry(&entry);
            entries.push(entry);
            tickets.push(ticket);
            txns += 1;
        }
        if entries.is_empty() {
            return;
        }

        // 3. Encode and submit.
        let hdr = RecordHeader {
            uuid: self.geo.uuid,
            seq: self.head.seq,
            seg_seq: self.head.seg_seq,
            prev_crc: self.head.prev_crc,
            header_blocks: h_blocks as u32,
            data_blocks: data_blocks as u32,
            entries,
        };
        let payload = encode(&hdr);
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
                return;
            }
        };
        let crc = {
            let b = buf.as_mut_slice();
            // Pooled buffers hold old bytes: padding must not carry them to disk. Every byte
            // is written exactly once (header, data, or zero padding) instead of zero-filling
            // the whole record first and then copying over it.
            let crc = frame(REC_MAGIC, &payload, b);
            let hdr_end = (h_blocks * BLOCK) as usize;
            b[(16 + payload.len()).min(hdr_end)..hdr_end].fill(0);
            // Data runs are packed in order from the end of the header (block offsets ascend).
            let mut at = hdr_end;
            for (off, bytes) in &data {
                let s = ((h_blocks + off) * BLOCK) as usize;
                b[at.min(s)..s].fill(0);
                b[s..s + bytes.len()].copy_from_slice(bytes);
                at = s + bytes.len();
            }
            b[at..].fill(0);
            crc
        };
        for (_, bytes) in data {
            self.put_spare(bytes);
        }
        if txns > 0 {
            // The blocks the transactions added (relocations may share the record), and the
            // live blocks they dropped (overwrites, removes).
            let garbage = (blocks_from + data_blocks - txn_data_from)
                .saturating_sub(self.idx.acct.total_blocks);
            self.foreground_wrote(total - reloc_blocks, garbage);
        }
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
        self.blocks_since_ckpt += total;
    }

    // ---------------------------------------------------------------- cleaner

    /// The relocation read by the last cleaner step has nowhere to go: drop it (the extents
    /// stay where they are, nothing changed) and rest `Stuck` until something changes, so
    /// that waiting transactions get `NoSpace` rather than wait for a cleaner that cannot
    /// move (and the shard does not re-read the same victim on every poll).
    fn cleaner_stuck(&mut self) {
        let stalled = match self.rest {
            CleanerRest::Active => None,
            CleanerRest::Stalled { fg_blocks } => Some(fg_blocks),
            CleanerRest::Stuck { stalled } => stalled,
        };
        if !matches!(self.rest, CleanerRest::Stuck { .. }) {
            self.stats.cleaner_stuck += 1;
            tracing::warn!(
                free = self.free_count(),
                "cleaner has no segment to relocate into: writes needing space fail with \
                 NoSpace until data is removed"
            );
        }
        self.rest = CleanerRest::Stuck { stalled };
        self.victim = None;
        self.clean_cursor = RefCursor::default();
    }

    /// A `Stuck` cleaner may find room again (a transaction committed or a segment was
    /// freed). It resumes the stall it interrupted, if any: a freed segment alone does not
    /// restart a cleaner that was gaining nothing.
    fn cleaner_wake(&mut self) {
        if let CleanerRest::Stuck { stalled } = self.rest {
            self.rest = match stalled {
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
    fn foreground_wrote(&mut self, blocks: u64, garbage: u64) {
        self.cleaner_wake();
        if let CleanerRest::Stalled { fg_blocks } = &mut self.rest {
            *fg_blocks += blocks + garbage;
            if *fg_blocks >= self.geo.seg_blocks {
                self.rest = CleanerRest::Active;
                self.clean_futile = 0;
                self.clean_best = self.clean_net;
            }
        }
    }

    /// One bounded cleaner step: pick a victim segment and start reading up to
    /// `clean_batch_bytes` of its live extents. The relocation record is built later by
    /// `build_record`, in the same poll loop, so foreground I/O interleaves.
    fn cleaner_step(&mut self) {
        if self.failed.is_some()
            || matches!(self.rest, CleanerRest::Stuck { .. })
            || self.clean_inflight > 0
            || !self.clean_ready.is_empty()
        {
            return;
        }
        if self.free_count() >= self.opts.clean_low_water && !self.space_wait {
            return;
        }
        let t0 = Instant::now();
        if self
            .victim
            .is_some_and(|v| self.idx.acct.live[v as usize] == 0)
        {
            self.victim = None;
            self.victim_emptied();
        }
        if matches!(self.rest, CleanerRest::Stalled { .. }) && !self.space_wait {
            self.cleaner_idle = true;
            return;
        }
        if self.victim.is_none() {
            let head = self.head.seg as usize;
            self.victim = (0..self.geo.nsegs as usize)
                .filter(|&s| self.used[s] && s != head && !self.bad_segs[s])
                .filter(|&s| self.worth_cleaning(s))
                .map(|s| (self.clean_cost(s), s))
                .min()
                .map(|(_, s)| s as u32);
        }
        self.cleaner_idle = self.victim.is_none();
        let Some(v) = self.victim else { return };
        // Bounded batch: at most half a segment (in bytes and in the whole blocks each extent
        // takes once moved), so the relocation record always fits.
        let budget = self.opts.clean_batch_bytes.min(self.geo.seg_bytes() / 2);
        let max_blocks = self.geo.seg_blocks / 2;
        let mut taken = 0u64;
        let mut taken_blocks = 0u64;
        let items = self
            .idx
            .segment_extents_from(v as usize, &mut self.clean_cursor, budget);
        if items.is_empty() {
            // Only dead candidates within this step's scan bound: continue next poll. (Still
            // a step: waiting for space is bounded in steps.)
            self.stats.cleaner_steps += 1;
            self.stats.cleaner_max_pause = self.stats.cleaner_max_pause.max(t0.elapsed());
            return;
        }
        // Live extents grouped by the chunk they point into (chunk lba -> index in `reads`).
        let mut reads: Vec<(ChunkRef, Vec<CleanPiece>)> = Vec::new();
        let mut by_lba: HashMap<u64, usize> = HashMap::new();
        for (id, off, ext) in items {
            let b = blocks_for(ext.len);
            if taken > 0 && (taken + ext.len > budget || taken_blocks + b > max_blocks) {
                break;
            }
            taken_blocks += b;
            match by_lba.get(&ext.chunk.lba) {
                Some(&i) if reads[i].0 == ext.chunk => reads[i].1.push((id, off, ext)),
                _ => {
                    by_lba.insert(ext.chunk.lba, reads.len());
                    reads.push((ext.chunk, vec![(id, off, ext)]));
                }
            }
            taken += ext.len;
        }
        for (chunk, pieces) in reads {
            let blocks = blocks_for(chunk.len as u64);
            let Ok(buf) = self.get_buf((blocks * BLOCK) as usize) else {
                break;
            };
            let lba = self.geo.dev_lba(chunk.lba);
            let t = self.token(Io::Clean { chunk, pieces });
            self.dev.submit_read(lba, buf, t);
            self.clean_inflight += 1;
        }
        self.stats.cleaner_steps += 1;
        let p = t0.elapsed();
        self.stats.cleaner_max_pause = self.stats.cleaner_max_pause.max(p);
    }

    /// The victim holds no live data any more: did the cleaner gain, or stall it.
    fn victim_emptied(&mut self) {
        self.clean_net += self.geo.seg_blocks as i64;
        if self.clean_net > self.clean_best {
            self.clean_best = self.clean_net;
            self.clean_futile = 0;
            return;
        }
        self.clean_futile += 1;
        if self.clean_futile >= CLEAN_FUTILE_LIMIT && self.rest == CleanerRest::Active {
            tracing::debug!(
                free = self.nfree,
                "cleaner stalled: relocation wrote as many blocks as it freed"
            );
            self.rest = CleanerRest::Stalled { fg_blocks: 0 };
            self.stats.cleaner_stalls += 1;
        }
    }

    /// Free segments with no live data that lie wholly before the checkpoint's replay start.
    fn reclaim(&mut self) {
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

    // ---------------------------------------------------------------- checkpoints

    fn maybe_checkpoint(&mut self) {
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
            self.reclaim_due = true;
        }
        // Batch them: a checkpoint rewrites all metadata, so take one per several freed
        // segments unless space is nearly gone.
        let urgent = free <= self.opts.reserve_segs + 1 || self.space_wait;
        let batch = (self.opts.clean_low_water as usize / 4).max(1);
        let pending_free = low && waiting > 0 && (urgent || waiting >= batch);
        if pending_free || self.blocks_since_ckpt >= self.opts.ckpt_interval_blocks {
            self.ckpt.phase = CkptPhase::Quiesce;
        }
    }

    /// Snapshot the index once no record is in flight (so every record the snapshot includes
    /// is durable), then write body, flush, header, flush.
    fn take_checkpoint(&mut self) {
        if self.ckpt.phase != CkptPhase::Quiesce || self.rec.is_some() || self.failed.is_some() {
            return;
        }
        let t0 = Instant::now();
        let seg_seqs: Vec<(u32, u64)> = (0..self.geo.nsegs)
            .filter(|&s| self.used[s as usize])
            .map(|s| (s, self.seg_seq[s as usize]))
            .collect();
        let body_struct = CkptBody {
            index: std::mem::take(&mut self.idx),
            seg_seqs,
        };
        let body = encode(&body_struct);
        self.idx = body_struct.index;
        let start = self.head;
        let (hdr, body_blocks) =
            encode_checkpoint(self.geo.uuid, self.ckpt.generation + 1, start, &body);
        let slot = 1 - self.ckpt.active_slot;
        if 1 + (body_blocks.len() as u64 / BLOCK) > self.geo.slot_blocks {
            if !self.ckpt.too_big {
                tracing::error!(
                    bytes = body.len(),
                    "metadata exceeds the checkpoint slot; segments can no longer be freed"
                );
            }
            self.ckpt.too_big = true;
            self.ckpt.phase = CkptPhase::Idle;
            self.blocks_since_ckpt = 0;
            return;
        }
        let mut buf = match self.get_buf(body_blocks.len()) {
            Ok(b) => b,
            Err(e) => {
                self.fail(format!("checkpoint buffer: {e}"));
                return;
            }
        };
        buf.as_mut_slice().copy_from_slice(&body_blocks);
        let lba = self.geo.dev_lba(slot * self.geo.slot_blocks + 1);
        let t = self.token(Io::CkptBody);
        self.dev.submit_write(lba, buf, t);
        self.ckpt.pending = Some((hdr, slot, start));
        self.ckpt.phase = CkptPhase::Writing;
        self.blocks_since_ckpt = 0;
        let p = t0.elapsed();
        self.stats.checkpoint_max_pause = self.stats.checkpoint_max_pause.max(p);
    }

    fn issue_deferred(&mut self) {
        if self.rec.is_some() {
            return;
        }
        while let Some((t, cid, oid, off, len)) = self.deferred.pop_front() {
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
        self.next_ticket += 1;
        let ticket = Ticket(self.next_ticket);
        if let Some(f) = &self.failed {
            self.done.push(Completion {
                ticket,
                result: Err(StoreError::Failed(f.clone())),
            });
        } else {
            self.queue.push_back((ticket, txn));
        }
        ticket
    }

    fn read(&mut self, cid: CollectionId, oid: &ObjectId, off: u64, len: u64) -> Ticket {
        self.next_ticket += 1;
        let ticket = Ticket(self.next_ticket);
        if let Some(f) = &self.failed {
            // A device that failed once is not trusted for reads either.
            self.done.push(Completion {
                ticket,
                result: Err(StoreError::Failed(f.clone())),
            });
        } else {
            self.start_read(ticket, cid, oid, off, len);
        }
        ticket
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
            && self.reads.is_empty()
            && self.deferred.is_empty()
            && self.clean_inflight == 0
            && self.clean_ready.is_empty()
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
        Ok(self.object(cid, oid)?.attrs.clone())
    }

    fn omap_get(
        &self,
        cid: CollectionId,
        oid: &ObjectId,
        keys: &[Vec<u8>],
    ) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StoreError> {
        Ok(meta::omap_get(&self.object(cid, oid)?.omap, keys))
    }

    fn omap_range(
        &self,
        cid: CollectionId,
        oid: &ObjectId,
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<OmapEntries, StoreError> {
        Ok(meta::omap_range(&self.object(cid, oid)?.omap, after, max))
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
}
