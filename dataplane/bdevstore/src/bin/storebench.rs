//! `carmine-storebench`: 4 KiB random write/read IOPS and p99 latency of one shard through
//! bdevstore, and of raw device I/O with the same pattern on the same device in the same run.
//!
//! `--device malloc` (the default when running as root with free hugepages) runs both on one
//! SPDK malloc bdev through `carmine_spdk::SpdkBlockDevice`; `--device file` on a file
//! (`FileDevice`). Both paths run with the same queue depth and the same durability rule: a
//! batch of raw writes is followed by a flush, as every store record is.
//!
//! ## Method
//! - The device is formatted with two equal partitions: the store runs on partition 0, the raw
//!   baseline does the same 4 KiB random pattern on partition 1 (same bdev, same process).
//! - Raw and store phases alternate round by round (`--rounds`, default 3: raw write, store
//!   write, raw write, ...; then the reads likewise), each after a short untimed warm-up of its
//!   own kind, and the fastest run of each phase is reported. The machine is shared by several
//!   engineers: sequential phases seconds apart compared different machine loads (single runs
//!   varied 2x), alternating rounds see the same load.
//! - The raw side reuses one DMA buffer per queue slot (the store pools its buffers too); it
//!   used to allocate and zero a DMA buffer per I/O, which made raw about half as fast and
//!   flattered the ratios (write_ratio 0.27-0.28, read_ratio 0.46-0.75 were measured so).
//! - `*_cpu_us` is the bench thread's CPU time per op (on malloc every cycle of both paths runs
//!   on this thread); `write_cpu_ratio`/`read_cpu_ratio` are the ratios by CPU cost, which
//!   other processes taking the core do not move.
//! - The store side uses `ObjectStore::data_buf`/`recycle`, as the OSD would: write data goes
//!   into a buffer the store hands out, read results are handed back.
//! - Write amplification = device bytes written during the store's overwrite rounds / caller
//!   bytes (the cleaner runs: the working set is 40 MiB of a 128 MiB partition).
//! - `write_cpu_us`/`read_cpu_us` (issue #16's names for `store_*_cpu_us`) sit beside
//!   `raw_write_cpu_us`/`raw_read_cpu_us`; `targets` holds the goals they are read against.
//! - `*_mallocs_per_op`: heap allocations (alloc, alloc_zeroed, realloc) of the whole process
//!   during the timed run, divided by its ops, counted by a `#[global_allocator]` wrapper over
//!   the system allocator in this binary only (`counting_alloc`). A store write's figure
//!   includes what the bench loop allocates building the transaction; since the store hands
//!   out emptied transactions (`ObjectStore::transaction`) and object names are inline, that
//!   is nothing (it was two: the op vector and the name).
//! - `cleaner_pause_max_us`: the bench times every `poll` call of the timed write rounds and
//!   keeps the longest (and the 99th percentile, `cleaner_pause_p99_us`) of those that ran
//!   cleaner work (a cleaner step, seen as `StoreStats::cleaner_steps` moving, or a record
//!   carrying relocations, `relocated_bytes` moving): wall time the shard's other work waited,
//!   foreground work of the same poll included. `cleaner_max_pause_us` is the store's own
//!   narrower counter (the step itself and relocation packing, not the device write).
//!
//! ## Figures with the cost fields (release, defaults, malloc, 2026-12-06)
//! Before and after the allocation work of issue #16 (allocation-free record building and
//! cleaner steps, checkpoints encoded into a kept buffer), the two binaries run alternately,
//! 4 runs each, on a quiet moment of the shared 2-core machine (raw write 0.43-0.49 us/op,
//! raw read 0.44-0.47 in both sets):
//! - write_cpu_us 2.19-2.24 -> 1.97-2.01 (target 1.5);
//! - read_cpu_us 1.11-1.15 -> 1.11-1.14 (target 0.8; reads allocated nothing before either);
//! - write_mallocs_per_op 4.94-5.04 -> 2.01, of which in the store
//!   (write_store_mallocs_per_op) 2.94-3.04 -> 0.011-0.012 (index tree nodes, checkpoints);
//!   the other 2 are the bench's own `Transaction` (its op vector, the object name);
//!   read_mallocs_per_op 0 -> 0. Later (2026-12-07), with inline object names and emptied
//!   transactions handed out again: write_mallocs_per_op 1.012 -> 0.011-0.052 in all (the
//!   store's index tree nodes and checkpoints);
//! - write_amplification 1.274 -> 1.274 (target 1.3; 1.44 on `--device file`, whose smaller
//!   group commits carry more header blocks);
//! - cleaner_pause_max_us 396-444 -> 282-373, cleaner_pause_p99_us 309-318 -> 228-243 (the
//!   store's narrower `cleaner_max_pause_us` 82-108 in both); checkpoint_max_pause_us
//!   729-804 -> 382-409. Under other load the max is preemption: 1-20 ms.
//!
//! ## Figures (release, defaults: 256 MiB malloc bdev, 40 MiB working set, QD 32, 40,000 ops
//! per phase, 3 rounds; 2-core VM shared with other engineers' builds and pollers), 6 runs at
//! different load: raw write 1.27-2.02 M IOPS, store write 340-435 K, write_ratio 0.19-0.27;
//! raw read 1.64-2.11 M, store read 600-836 K, read_ratio 0.36-0.45; write_amplification 1.27.
//! CPU per op: store write 2.3-2.9 us vs raw 0.50-0.79, store read 1.20-1.34 us vs raw
//! 0.47-0.61 (a quiet machine speeds raw up more than the store: the ratios are lowest then).
//! Cleaner max pause 88-111 us when not preempted (the scheduler's 4 ms tick shows up as 4.1 ms
//! when another process takes the core; under `chrt -f` it stays 95-150 us, mostly the
//! malloc bdev copying the 256 KiB chunks a step reads, inside submit). Against the code before
//! this round of work (honest raw baseline, sequential phases), run alternately under `chrt -f`
//! at the same moment, 3 runs each: store write 305-321 K -> 420-439 K IOPS, store read
//! 532-583 K -> 770-788 K; write_ratio 0.19-0.21 -> 0.23-0.26, read_ratio 0.32-0.35 ->
//! 0.40-0.41 (part of the gain is the bench loop's own per-op cost, no longer billed to the
//! store: object names, ticket hashing, cloning each read result, allocating write data).
//! Checkpoint max pause 0.6-1.1 ms: serializing the whole index (~370 KB) in one step, ~half
//! bincode encoding, half framing/CRC/copy (the documented O(metadata) limit in FORMAT.md).
//!
//! ## CRC-32C on crc-fast (2026-12-07)
//! `carmine-checksum` (crc-fast, AVX-512 VPCLMULQDQ folding on these Zen 4 machines) replaced
//! the crc32c crate. Alternating with the build before, 4 + 3 rounds at two moments:
//! write_cpu_us 1.59-2.07 -> 1.45-1.55 (target 1.5), read_cpu_us 1.02-1.55 -> 0.87-1.03
//! (target 0.8), raw write/read 0.45-0.73 in both. What bounds a read now: the raw device read
//! (0.46-0.50 us quiet: submit, the malloc bdev's 4 KiB memcpy, completion), the CRC (~0.09),
//! the copy out into the caller's buffer (~0.1, a cold 4 KiB), which together are ~0.65-0.7 us
//! before any index lookup or bookkeeping: 0.8 leaves ~0.1 us for those, and the store takes
//! ~0.2. Below it needs a read that lends the device buffer instead of copying out (as
//! `ObjectStore::read_in_place` does for memstore). A hash map for the onode table was tried
//! and gained nothing measurable.
//!
//! ## Lent reads, hashed names, allocations (2026-12-07, session 14)
//! - `read_cpu_us` is now the read the OSD makes, `ObjectStore::read_lent`: a read of one chunk
//!   completes with the CRC-checked device buffer itself (`Done::Lent`), given back once the
//!   caller has used it, instead of a copy into a heap buffer. `read_copied_cpu_us` is the same
//!   reads through `read` (the kind recovery's push reads still make). In a
//!   profile of the copied read, the copy-out was ~6% and the index lookups ~14% (the extent
//!   map's B-tree 7.5%, the object's name and onode 6.1%). Alternating with the build before,
//!   3 rounds: 0.85-0.88 -> 0.77-0.80 (target 0.8); raw 0.44-0.46 in both.
//! - Object names are hashed beside the ordered collections (`Index::names`): write_cpu_us
//!   1.395-1.419 -> 1.367-1.374, read_cpu_us 0.804-0.808 -> 0.785-0.789, alternating.
//! - `write_store_mallocs_by_round` gives the store's mallocs per write of each timed round.
//!   With 6 rounds: 0.046 in the first (the populated objects' extents still splitting into
//!   tree nodes), then 0.0029-0.0034 before this round's fixes and 0.0003-0.0007 after
//!   (relocations replace their extent in place; checkpoints reuse their scratch; spare buffers
//!   start at 4 KiB). What is left is the cleaner relocating fragments of the populate's large
//!   extents: heap buffers over 64 KiB are not kept, so the spare list runs short now and then.
//!   It falls as those fragments are rewritten. Reads allocate nothing.
//!
//! ## What limits the ratios on a malloc bdev
//! The "device" is a memcpy on the same core, so the ratios compare the store's CPU per op with
//! ~0.5 us of raw submit + 4 KiB memcpy. Per store write (profile of the overwrite phase):
//! the device copies of record and cleaner data (~17%, 1.27x the bytes), CRC-32C of the data
//! (~14% then, with the crc32c crate's SSE4.2 loop at ~200-230 ns per 4 KiB; since
//! 2026-12-07 `carmine-checksum` on crc-fast, ~90 ns, see below), the index update (~12%),
//! filling the caller's buffer (~8%),
//! copying it into the record (~8%), the cleaner (~7%), record packing, header encoding,
//! validation and drops (~25% together). The copies and the CRC alone cost about as much as
//! the whole raw write, so write_ratio 0.5 is out of reach on malloc without dropping the
//! checksum or the copy. Per store read: the device memcpy (~25%), CRC verification (~22%), the
//! index lookup (~10%), completion and copy-out: the CRC alone is half of a raw read, which
//! puts read_ratio 0.8 out of reach while every read is verified. On an NVMe device the raw
//! side is bounded by the device, not by this CPU cost, and the store's 2.3 us (write) and
//! 1.3 us (read) per op on one core are what to compare with the device's IOPS per core.

// serde_json::json! expands one level per field: the figures object outgrew the default 128.
#![recursion_limit = "256"]

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Instant;

use carmine_bdevstore::{format, BdevStore, FormatOptions, MountOptions};
use carmine_objectstore::device::{BlockDevice, FileDevice, IoBuf, IoCompletion};
use carmine_objectstore::{
    drive, CollectionId, Completion, Done, ObjectId, ObjectStore, Op, Ticket, Transaction,
};
use clap::Parser;
use hdrhistogram::Histogram;

/// Counts heap allocations of the whole process, for `*_mallocs_per_op`: a thin wrapper over
/// the system allocator with relaxed atomic counters (a bench binary only; the library keeps
/// the default allocator). On a malloc bdev every store and raw op runs on the bench thread;
/// SPDK/DPDK memory comes from hugepages, not from here.
mod counting_alloc {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Calls that obtained memory: alloc, alloc_zeroed and realloc (a grown Vec is a malloc).
    static ALLOCS: AtomicU64 = AtomicU64::new(0);

    pub struct Counting;

    /// Allocations so far (process-wide).
    pub fn allocs() -> u64 {
        ALLOCS.load(Ordering::Relaxed)
    }

    // SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
    // `GlobalAlloc` contract (layout validity, pointer provenance, size/alignment of the
    // returned memory) is exactly `System`'s; the only addition is a relaxed counter increment,
    // which neither allocates nor unwinds.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            // SAFETY: as for `alloc`.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            // SAFETY: `ptr` was allocated by this allocator (i.e. by `System`) with `layout`,
            // as the caller guarantees.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `System` with `layout`, as the caller guarantees.
            unsafe { System.dealloc(ptr, layout) }
        }
    }
}

#[global_allocator]
static GLOBAL: counting_alloc::Counting = counting_alloc::Counting;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DeviceKind {
    /// An SPDK malloc bdev (needs root and hugepages).
    Malloc,
    /// A regular file through pread/pwrite.
    File,
}

#[derive(Parser, Debug, Clone)]
#[command(about = "bdevstore vs raw device: 4 KiB random I/O")]
struct Args {
    /// Device to run on; default: malloc when root with free hugepages, else file.
    #[arg(long, value_enum)]
    device: Option<DeviceKind>,
    /// Backing file for `--device file` (created; removed at the end unless --keep).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Device (file or malloc bdev) size in MiB: half for the store, half for the raw runs.
    #[arg(long, default_value_t = 256)]
    size_mib: u64,
    /// Data the random I/O touches, in MiB (store utilisation = this / (device size / 2)).
    #[arg(long, default_value_t = 40)]
    working_set_mib: u64,
    /// 4 KiB operations per phase.
    #[arg(long, default_value_t = 40_000)]
    ops: u64,
    /// Operations kept in flight.
    #[arg(long, default_value_t = 32)]
    qd: usize,
    /// Rounds of each phase, raw and store alternating; the fastest run of each is reported
    /// (the machine is shared). Write amplification covers all store write rounds.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Segment size in 4 KiB blocks.
    #[arg(long, default_value_t = 256)]
    seg_blocks: u64,
    /// fdatasync on every flush (power-loss durability on a real file system).
    #[arg(long)]
    sync: bool,
    #[arg(long)]
    keep: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

const BS: u64 = 4096;

/// xorshift64*: a deterministic pattern, identical for the raw and the store runs.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn hist() -> Histogram<u64> {
    // Constant, valid bounds: construction cannot fail.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

struct Phase {
    iops: f64,
    p99_us: f64,
    /// CPU time of this thread per op: unlike IOPS, not inflated when other processes take
    /// the core (on a malloc bdev every cycle of both paths runs on this thread).
    cpu_us: f64,
    /// Heap allocations per op in the timed run, process-wide (`counting_alloc`).
    mallocs_per_op: f64,
    /// Of those, the ones not made by the bench loop building transactions (store runs).
    store_mallocs_per_op: f64,
    /// Store runs: wall time of the longest `poll` call that ran cleaner work, and the 99th
    /// percentile of such polls (0 on raw runs or when the cleaner did nothing).
    cleaner_pause_max_us: f64,
    cleaner_pause_p99_us: f64,
}

/// CPU time consumed by the calling thread.
fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; CLOCK_THREAD_CPUTIME_ID always exists
    // on Linux (on failure ts stays zero and the figure reads 0).
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Start of a measured phase: wall clock, thread CPU clock and the allocation count.
struct Clock(Instant, std::time::Duration, u64);

impl Clock {
    fn start() -> Self {
        Clock(Instant::now(), thread_cpu(), counting_alloc::allocs())
    }
    fn phase(&self, h: &Histogram<u64>, ops: u64) -> Phase {
        let cpu = thread_cpu().saturating_sub(self.1);
        let allocs = counting_alloc::allocs() - self.2;
        Phase {
            iops: ops as f64 / self.0.elapsed().as_secs_f64(),
            p99_us: h.value_at_quantile(0.99) as f64 / 1000.0,
            cpu_us: cpu.as_secs_f64() * 1e6 / ops.max(1) as f64,
            mallocs_per_op: allocs as f64 / ops.max(1) as f64,
            store_mallocs_per_op: allocs as f64 / ops.max(1) as f64,
            cleaner_pause_max_us: 0.0,
            cleaner_pause_p99_us: 0.0,
        }
    }
}

/// Raw 4 KiB I/O at random store blocks `[base, base + blocks)` of the device.
fn raw_phase<D: BlockDevice>(
    dev: &mut D,
    base: u64,
    blocks: u64,
    a: &Args,
    write: bool,
) -> Result<Phase, String> {
    let ratio = BS / dev.block_size() as u64;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ write as u64);
    let mut h = hist();
    let mut out: Vec<IoCompletion<_>> = Vec::new();
    // One DMA buffer per queue slot, allocated before the clock starts and reused: the store
    // pools its buffers too, so allocating per I/O here would flatter the ratio.
    let mut bufs = (0..a.qd)
        .map(|_| dev.alloc_buf(BS as usize))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let clock = Clock::start();
    let mut done = 0;
    while done < a.ops {
        let n = (a.ops - done).min(a.qd as u64);
        let start = Instant::now();
        for i in 0..n {
            let mut buf = bufs.pop().ok_or("raw phase: buffer lost")?;
            let lba = (base + rng.next() % blocks) * ratio;
            if write {
                buf.as_mut_slice()[..8].copy_from_slice(&(done + i).to_le_bytes());
                dev.submit_write(lba, buf, i);
            } else {
                dev.submit_read(lba, buf, i);
            }
        }
        let mut got = 0;
        while got < n {
            out.clear();
            dev.poll(&mut out);
            for c in out.drain(..) {
                c.result.map_err(|e| e.to_string())?;
                if let Some(b) = c.buf {
                    bufs.push(b);
                }
                got += 1;
                if !write {
                    h.record(start.elapsed().as_nanos() as u64).ok();
                }
            }
        }
        if write {
            dev.submit_flush(u64::MAX);
            loop {
                out.clear();
                dev.poll(&mut out);
                if !out.is_empty() {
                    break;
                }
            }
            let lat = start.elapsed().as_nanos() as u64;
            for _ in 0..n {
                h.record(lat).ok();
            }
        }
        done += n;
    }
    Ok(clock.phase(&h, a.ops))
}

/// Tickets are sequential integers: hash them with one multiply instead of SipHash (the map is
/// touched twice per op; its cost belongs to the bench loop, not to the store).
#[derive(Default)]
struct TicketHasher(u64);

impl std::hash::Hasher for TicketHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type TicketHash = std::hash::BuildHasherDefault<TicketHasher>;

/// Keep the fastest run of a phase (the one least disturbed by other processes).
fn keep_best(best: &mut Option<Phase>, p: Phase) {
    if best.as_ref().is_none_or(|b| p.iops > b.iops) {
        *best = Some(p);
    }
}

fn obj(i: u64) -> ObjectId {
    ObjectId::from(format!("bench-{i:06}").into_bytes())
}

const OBJ_BYTES: u64 = 1 << 20;

/// What a store phase does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StoreOp {
    Write,
    /// Reads whose bytes the store lends (`read_lent`), as the OSD takes them: the store's
    /// part ends where the caller would encode its reply from the loan.
    Read,
    /// Reads copied out into a `Vec` (`read`), as recovery's push reads take them.
    ReadCopied,
}

fn store_phase<D: BlockDevice>(
    s: &mut BdevStore<D>,
    a: &Args,
    op: StoreOp,
) -> Result<Phase, String> {
    let c = CollectionId(1);
    let nobj = (a.working_set_mib * (1 << 20) / OBJ_BYTES).max(1);
    let write = op == StoreOp::Write;
    // Both kinds of read read the same sequence.
    let mut rng = Rng(0x1234_5678_9abc_def1 ^ write as u64);
    let mut h = hist();
    let mut inflight: HashMap<Ticket, Instant, TicketHash> = HashMap::default();
    let mut out: Vec<Completion> = Vec::new();
    let data = vec![0xa5u8; BS as usize];
    // Names made before the clock starts (formatting one per op is the bench's cost, not the
    // store's).
    let ids: Vec<ObjectId> = (0..nobj).map(obj).collect();
    let (mut sent, mut finished) = (0u64, 0u64);
    // Wall time of each poll that ran cleaner work (a step that picked and read a batch, or a
    // record that carried relocations): what the shard's other work waited for.
    let mut pauses = hist();
    let mut caller_allocs = 0u64;
    out.reserve(4 * a.qd);
    inflight.reserve(2 * a.qd);
    let clock = Clock::start();
    while finished < a.ops {
        while sent < a.ops && inflight.len() < a.qd {
            let r = rng.next();
            let o = &ids[(r % nobj) as usize];
            let off = ((r >> 20) % (OBJ_BYTES / BS)) * BS;
            let t = if write {
                // The write data goes into a buffer the store hands out (one it consumed
                // before), as the OSD's messenger would fill it: no allocation per op.
                let mut buf = s.data_buf(data.len());
                buf.extend_from_slice(&data);
                // The transaction comes from the store too (an emptied one, as the OSD takes
                // them); whatever building it allocates (a long name would) is the caller's,
                // counted apart from the store's.
                let a0 = counting_alloc::allocs();
                let mut t = s.transaction();
                t.push(Op::Write {
                    cid: c,
                    oid: o.clone(),
                    off,
                    data: buf,
                });
                caller_allocs += counting_alloc::allocs() - a0;
                s.submit(t)
            } else if op == StoreOp::Read {
                s.read_lent(c, o, off, BS)
            } else {
                s.read(c, o, off, BS)
            };
            inflight.insert(t, Instant::now());
            sent += 1;
        }
        out.clear();
        let before = (s.stats().cleaner_steps, s.stats().relocated_bytes);
        let t0 = Instant::now();
        s.poll(&mut out);
        let took = t0.elapsed();
        if (s.stats().cleaner_steps, s.stats().relocated_bytes) != before {
            pauses.record(took.as_nanos() as u64).ok();
        }
        for comp in out.drain(..) {
            // Read data is handed back once "sent" (the OSD recycles it after the reply).
            match comp.result.map_err(|e| e.to_string())? {
                Done::Data(d) => s.recycle(d),
                // Given back at once, as the OSD does once the reply is encoded.
                Done::Lent(loan) => s.give_back(loan),
                Done::Committed => {}
            }
            if let Some(st) = inflight.remove(&comp.ticket) {
                h.record(st.elapsed().as_nanos() as u64).ok();
                finished += 1;
            }
        }
    }
    let mut p = clock.phase(&h, a.ops);
    p.store_mallocs_per_op = p.mallocs_per_op - caller_allocs as f64 / a.ops.max(1) as f64;
    if !pauses.is_empty() {
        p.cleaner_pause_max_us = pauses.max() as f64 / 1000.0;
        p.cleaner_pause_p99_us = pauses.value_at_quantile(0.99) as f64 / 1000.0;
    }
    Ok(p)
}

/// The whole benchmark on any device (the OSD build passes an SPDK malloc bdev here).
///
/// The device is formatted with two partitions: the store runs on partition 0 and the raw
/// baseline does the same I/O pattern on partition 1 (same device, same size). That lets the
/// raw and store phases alternate round by round (raw write, store write, raw write, ...) in
/// one run, so both see the same machine load: the machine is shared, and sequential phases
/// seconds apart compared different loads.
fn bench<D: BlockDevice>(mut dev: D, name: &str, a: &Args) -> Result<serde_json::Value, String> {
    let fo = FormatOptions {
        shards: 2,
        seg_blocks: a.seg_blocks,
        slot_blocks: 2048,
        ..FormatOptions::default()
    };
    format(&mut dev, &fo).map_err(|e| e.to_string())?;
    let mut s = BdevStore::mount(dev, MountOptions::default()).map_err(|e| e.to_string())?;
    // Partitions are equal and contiguous (FORMAT.md): partition 1 follows partition 0.
    let (raw_base, part_blocks) = {
        let g = s.geometry();
        (g.part_start + g.part_blocks, g.part_blocks)
    };
    let ws_blocks = (a.working_set_mib * (1 << 20) / BS).min(part_blocks);
    let c = CollectionId(1);
    let mut t = Transaction::new();
    t.create_collection(c);
    drive::commit(&mut s, t).map_err(|e| e.to_string())?;
    // Prefill every object so reads find data and overwrites create garbage.
    let nobj = (a.working_set_mib * (1 << 20) / OBJ_BYTES).max(1);
    let chunk = vec![0x5au8; 256 * 1024];
    for i in 0..nobj {
        for k in 0..OBJ_BYTES / chunk.len() as u64 {
            let mut t = Transaction::new();
            t.write(c, &obj(i), k * chunk.len() as u64, &chunk);
            drive::commit(&mut s, t).map_err(|e| e.to_string())?;
        }
    }
    let mut out = Vec::new();
    // Each timed phase follows one of the other kind, which leaves the caches holding the
    // other side's state: a short untimed warm-up of the same kind runs first, for both.
    let warm = Args {
        ops: (a.ops / 16).clamp(1, 2048),
        ..a.clone()
    };
    let (mut raw_w, mut st_w): (Option<Phase>, Option<Phase>) = (None, None);
    let (mut dev_bytes, mut user_bytes) = (0u64, 0u64);
    // The longest cleaner pause of any timed write round (not just the fastest round's).
    let (mut pause_max, mut pause_p99) = (0f64, 0f64);
    // The store's mallocs per write of each timed round, in order: the first rounds still
    // split the populated objects' extents (tree nodes), later ones show the steady state.
    let mut write_mallocs_by_round = Vec::new();
    for _ in 0..a.rounds.max(1) {
        let dev = s.device_mut_when_idle().ok_or("store busy")?;
        raw_phase(dev, raw_base, ws_blocks, &warm, true)?;
        keep_best(&mut raw_w, raw_phase(dev, raw_base, ws_blocks, a, true)?);
        let (d0, u0) = (s.device().stats().bytes_written, s.stats().user_bytes);
        store_phase(&mut s, &warm, StoreOp::Write)?;
        let p = store_phase(&mut s, a, StoreOp::Write)?;
        // Finish the round's commits and cleaning before the device is lent out again.
        drive::drain(&mut s, &mut out).map_err(|e| e.to_string())?;
        dev_bytes += s.device().stats().bytes_written - d0;
        user_bytes += s.stats().user_bytes - u0;
        pause_max = pause_max.max(p.cleaner_pause_max_us);
        pause_p99 = pause_p99.max(p.cleaner_pause_p99_us);
        write_mallocs_by_round.push(p.store_mallocs_per_op);
        keep_best(&mut st_w, p);
    }
    let wa = dev_bytes as f64 / user_bytes.max(1) as f64;
    let (mut raw_r, mut st_r, mut st_rc): (Option<Phase>, Option<Phase>, Option<Phase>) =
        (None, None, None);
    for _ in 0..a.rounds.max(1) {
        let dev = s.device_mut_when_idle().ok_or("store busy")?;
        raw_phase(dev, raw_base, ws_blocks, &warm, false)?;
        keep_best(&mut raw_r, raw_phase(dev, raw_base, ws_blocks, a, false)?);
        store_phase(&mut s, &warm, StoreOp::Read)?;
        keep_best(&mut st_r, store_phase(&mut s, a, StoreOp::Read)?);
        store_phase(&mut s, &warm, StoreOp::ReadCopied)?;
        keep_best(&mut st_rc, store_phase(&mut s, a, StoreOp::ReadCopied)?);
        drive::drain(&mut s, &mut out).map_err(|e| e.to_string())?;
    }
    let (raw_w, st_w, raw_r, st_r, st_rc) = match (raw_w, st_w, raw_r, st_r, st_rc) {
        (Some(a), Some(b), Some(c), Some(d), Some(e)) => (a, b, c, d, e),
        _ => return Err("no round ran".into()),
    };
    let stats = s.stats().clone();
    Ok(serde_json::json!({
        // The figures (#16, "the store's cost"), targets in `targets`.
        "write_cpu_us": st_w.cpu_us,
        "read_cpu_us": st_r.cpu_us,
        "read_copied_cpu_us": st_rc.cpu_us,
        "write_mallocs_per_op": st_w.mallocs_per_op,
        "read_mallocs_per_op": st_r.mallocs_per_op,
        "write_store_mallocs_per_op": st_w.store_mallocs_per_op,
        "write_store_mallocs_by_round": write_mallocs_by_round,
        "read_store_mallocs_per_op": st_r.store_mallocs_per_op,
        "read_copied_mallocs_per_op": st_rc.mallocs_per_op,
        "cleaner_pause_max_us": pause_max,
        "cleaner_pause_p99_us": pause_p99,
        "raw_write_mallocs_per_op": raw_w.mallocs_per_op,
        "raw_read_mallocs_per_op": raw_r.mallocs_per_op,
        "targets": {
            "write_cpu_us": TARGET_WRITE_CPU_US,
            "read_cpu_us": TARGET_READ_CPU_US,
            "write_mallocs_per_op": 0.0,
            "read_mallocs_per_op": 0.0,
            "write_amplification": TARGET_WA,
        },
        "device": name,
        "ops": a.ops,
        "qd": a.qd,
        "rounds": a.rounds,
        "size_mib": a.size_mib,
        "working_set_mib": a.working_set_mib,
        "fdatasync": a.sync,
        "store_write_iops": st_w.iops.round(),
        "raw_write_iops": raw_w.iops.round(),
        "store_read_iops": st_r.iops.round(),
        "raw_read_iops": raw_r.iops.round(),
        "write_ratio": st_w.iops / raw_w.iops,
        "read_ratio": st_r.iops / raw_r.iops,
        "write_amplification": wa,
        "write_cpu_ratio": raw_w.cpu_us / st_w.cpu_us,
        "read_cpu_ratio": raw_r.cpu_us / st_r.cpu_us,
        "store_write_p99_us": st_w.p99_us,
        "raw_write_p99_us": raw_w.p99_us,
        "store_read_p99_us": st_r.p99_us,
        "raw_read_p99_us": raw_r.p99_us,
        "store_write_cpu_us": st_w.cpu_us,
        "raw_write_cpu_us": raw_w.cpu_us,
        "store_read_cpu_us": st_r.cpu_us,
        "raw_read_cpu_us": raw_r.cpu_us,
        "cleaner_max_pause_us": stats.cleaner_max_pause.as_secs_f64() * 1e6,
        "checkpoint_max_pause_us": stats.checkpoint_max_pause.as_secs_f64() * 1e6,
        "cleaner_steps": stats.cleaner_steps,
        "relocated_bytes": stats.relocated_bytes,
        "segments_freed": stats.segments_freed,
        "checkpoints": stats.checkpoints,
        "records": stats.records,
    }))
}

/// Targets of issue #16 on a malloc bdev (CRC included; mallocs: 0 per op in steady state).
const TARGET_WRITE_CPU_US: f64 = 1.5;
const TARGET_READ_CPU_US: f64 = 0.8;
const TARGET_WA: f64 = 1.3;

/// Free 2 MiB hugepages (0 when unknown).
fn free_hugepages() -> u64 {
    std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn run_malloc(a: &Args) -> Result<serde_json::Value, String> {
    use carmine_spdk::{BdevKind, Spdk, SpdkBlockDevice};
    // The malloc bdev's memory plus SPDK's bdev pools and the bench's DMA buffers.
    let mem_mb = u32::try_from(a.size_mib + 384).map_err(|e| e.to_string())?;
    let eal = carmine_dpdk::Eal::init(&carmine_dpdk::EalConfig {
        app: "carmine-storebench".into(),
        no_pci: true,
        in_memory: true,
        mem_mb: Some(mem_mb),
        ..carmine_dpdk::EalConfig::default()
    })
    .map_err(|e| format!("EAL (root and {mem_mb} MiB of hugepages needed): {e}"))?;
    let spdk = Spdk::start(eal).map_err(|e| e.to_string())?;
    let name = "BenchMalloc0";
    spdk.create_bdev(
        name,
        &BdevKind::Malloc {
            blocks: a.size_mib * (1 << 20) / BS,
            block_size: BS as u32,
        },
    )
    .map_err(|e| e.to_string())?;
    let r = SpdkBlockDevice::open(spdk.thread(), name)
        .map_err(|e| e.to_string())
        .and_then(|dev| bench(dev, &format!("spdk-malloc:{name}"), a));
    spdk.shutdown().map_err(|e| e.to_string())?;
    r
}

fn run(a: &Args) -> Result<serde_json::Value, String> {
    // The owner of /proc/self is the process's effective uid.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let kind = a.device.unwrap_or(if root && free_hugepages() > 0 {
        DeviceKind::Malloc
    } else {
        DeviceKind::File
    });
    if kind == DeviceKind::Malloc {
        return run_malloc(a);
    }
    let path = a.file.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("carmine-storebench-{}", std::process::id()))
    });
    let blocks = a.size_mib * (1 << 20) / BS;
    let mut dev = FileDevice::open(&path, BS as u32, blocks).map_err(|e| e.to_string())?;
    dev.set_sync(a.sync);
    let r = bench(dev, &format!("file:{}", path.display()), a);
    if !a.keep {
        let _ = std::fs::remove_file(&path);
    }
    r
}

/// What each figure means, in the order the plain output prints them.
const MEANINGS: &[(&str, &str)] = &[
    ("write_cpu_us", "CPU time per store write (= store_write_cpu_us: bench loop, store, device, cleaner)"),
    ("raw_write_cpu_us", "CPU time of the bench thread per raw write (robust to other load)"),
    ("read_cpu_us", "CPU time per store read, CRC verified, bytes lent to the caller as the OSD takes them (= store_read_cpu_us)"),
    ("read_copied_cpu_us", "the same reads copied out into a Vec (ObjectStore::read, as recovery's push reads take them)"),
    ("raw_read_cpu_us", "CPU time per raw read"),
    ("write_mallocs_per_op", "heap allocations per store write (bench loop included: the Transaction's op Vec and object name)"),
    ("write_store_mallocs_per_op", "of those, made inside the store (not the bench building each Transaction)"),
    ("write_store_mallocs_by_round", "the store's mallocs per write in each timed write round, in order (the last is the steady state)"),
    ("raw_write_mallocs_per_op", "heap allocations per raw write"),
    ("read_mallocs_per_op", "heap allocations per store read"),
    ("read_store_mallocs_per_op", "of those, made inside the store"),
    ("read_copied_mallocs_per_op", "heap allocations per copied-out store read"),
    ("raw_read_mallocs_per_op", "heap allocations per raw read"),
    ("write_amplification", "device bytes written / caller bytes over all store write rounds, warm-ups and cleaning included"),
    ("cleaner_pause_max_us", "longest store poll that ran cleaner work (wall time, timed by the bench; preemption shows as ~4 ms)"),
    ("cleaner_pause_p99_us", "99th percentile of those polls (worst round)"),
    ("device", "where both runs happened (same device, same process)"),
    ("ops", "4 KiB operations per phase"),
    ("qd", "operations kept in flight (store and raw alike)"),
    ("rounds", "rounds of each phase, raw and store alternating; the fastest run of each is reported"),
    ("size_mib", "device size: partition 0 holds the store, partition 1 takes the raw I/O"),
    ("working_set_mib", "bytes the random I/O touches (40 objects of 1 MiB per 40 MiB)"),
    ("fdatasync", "file device only: flush = fdatasync"),
    ("raw_write_iops", "raw 4 KiB random writes/s on partition 1, QD batches each followed by a flush, one reused DMA buffer per slot"),
    ("store_write_iops", "4 KiB random overwrites/s through the store (one transaction each), committed = durable"),
    ("write_ratio", "store_write_iops / raw_write_iops (target >= 0.5)"),
    ("raw_read_iops", "raw 4 KiB random reads/s, reused buffers"),
    ("store_read_iops", "4 KiB random reads/s through the store, CRC verified"),
    ("read_ratio", "store_read_iops / raw_read_iops (target >= 0.8)"),
    ("write_cpu_ratio", "raw_write_cpu_us / store_write_cpu_us: the write ratio by CPU cost, steady under other load"),
    ("read_cpu_ratio", "raw_read_cpu_us / store_read_cpu_us"),
    ("raw_write_p99_us", "99th percentile latency of a raw write batch (submit to flush done)"),
    ("store_write_p99_us", "99th percentile submit-to-commit latency of one transaction"),
    ("raw_read_p99_us", "99th percentile raw read latency"),
    ("store_read_p99_us", "99th percentile store read latency"),
    ("store_write_cpu_us", "CPU time per store write (bench loop, store, device, cleaner)"),
    ("store_read_cpu_us", "CPU time per store read"),
    ("cleaner_max_pause_us", "store's own counter: longest cleaner step or relocation packing, without the poll around it"),
    ("checkpoint_max_pause_us", "longest checkpoint snapshot (serializing the index)"),
    ("cleaner_steps", "cleaner steps taken (store lifetime, prefill included)"),
    ("relocated_bytes", "live bytes the cleaner moved"),
    ("segments_freed", "segments returned to the free list"),
    ("checkpoints", "checkpoints written"),
    ("records", "journal records written (group commits)"),
];

fn print_plain(v: &serde_json::Value) {
    let show = |x: &serde_json::Value| match x {
        serde_json::Value::Number(n) if n.is_f64() => format!("{:.3}", n.as_f64().unwrap_or(0.0)),
        other => other.to_string(),
    };
    for (k, meaning) in MEANINGS {
        let target = match v["targets"].get(*k) {
            // Every target is an upper bound.
            Some(t) => format!("target <= {}", show(t)),
            None => String::new(),
        };
        println!("{k:>26} {:>14} {target:>14}  {meaning}", show(&v[*k]));
    }
}

fn main() {
    let a = Args::parse();
    match run(&a) {
        Ok(v) => {
            if a.json {
                println!("{v}");
            } else {
                print_plain(&v);
            }
        }
        Err(e) => {
            eprintln!("carmine-storebench: {e}");
            std::process::exit(1);
        }
    }
}
