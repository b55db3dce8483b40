//! [`SpdkBlockDevice`]: an open [`Bdev`] behind the store's poll-mode
//! [`BlockDevice`] contract (`carmine-objectstore`), so `bdevstore` runs on malloc, aio, virtio
//! and nvme bdevs exactly as it runs on a file in tests.
//!
//! Design choices (and the contract points they keep):
//! - **Polling.** The device borrows the [`SpdkThread`] its I/O channel belongs to and
//!   [`BlockDevice::poll`] polls it once (`spdk_thread_poll`) before reaping, so a store driven
//!   only through the trait makes progress by itself. The borrow also makes the compiler check
//!   that the device (and its `Bdev`) is gone before the SPDK thread or `Spdk` is shut down.
//! - **Routing.** SPDK completions land in one queue per OS thread ([`crate::reap`]), shared by
//!   every bdev used on that thread. Each device gets a thread-unique id; the token given to
//!   SPDK is `TAG | id << 32 | slot`, where `slot` indexes the device's table of in-flight
//!   requests (which holds the caller's full 64-bit token). Whoever polls moves every reaped
//!   completion into the queue of the device it belongs to, so several devices share a thread
//!   safely. Do not mix direct [`crate::reap`] use with devices on the same thread: completions
//!   without our tag are dropped (and logged) by the router.
//! - **No synchronous failures.** `submit_*` never fails: a submission SPDK refuses for lack of
//!   a `bdev_io` (`-ENOMEM`, [`SpdkError::Again`]) is kept, in order, in a pending queue and
//!   retried from `poll`; any other refusal (range, alignment) becomes an error completion
//!   delivered by the next `poll`. Exactly one completion per submit.
//! - **Stats** count operations SPDK accepted (bytes written = what reached the device).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use carmine_objectstore::device::{
    BlockDevice, DeviceError, DeviceStats, IoBuf, IoCompletion, IoKind as DevKind,
};

use crate::{reap, Bdev, BdevInfo, Completion, DmaBuf, IoKind, SpdkError, SpdkThread};

impl IoBuf for DmaBuf {
    fn as_slice(&self) -> &[u8] {
        DmaBuf::as_slice(self)
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        DmaBuf::as_mut_slice(self)
    }
}

/// Marks a token as a routed [`SpdkBlockDevice`] token (top 16 bits).
const TAG: u64 = 0xCA7D << 48;
const TAG_MASK: u64 = 0xFFFF << 48;
const ID_MASK: u64 = 0xFFFF;

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

thread_local! {
    /// Device id -> completions reaped on this thread for that device.
    static ROUTES: RefCell<HashMap<u16, VecDeque<Completion>>> = RefCell::new(HashMap::new());
}

/// Moves every completion reaped on this thread into its device's queue.
fn route_all() {
    while let Some(c) = reap() {
        let id = ((c.token >> 32) & ID_MASK) as u16;
        let routed = c.token & TAG_MASK == TAG
            && ROUTES.with(|r| match r.borrow_mut().get_mut(&id) {
                Some(q) => {
                    q.push_back(c);
                    true
                }
                None => false,
            });
        if !routed {
            tracing::warn!("dropping an SPDK completion that belongs to no SpdkBlockDevice");
        }
    }
}

/// A request SPDK has not accepted yet.
struct Req {
    kind: IoKind,
    lba: u64,
    buf: Option<DmaBuf>,
    slot: u32,
}

/// The caller's view of an in-flight request.
#[derive(Clone, Copy)]
struct Slot {
    token: u64,
    kind: IoKind,
}

/// Errors building a device.
#[derive(Debug, thiserror::Error)]
pub enum BlockDeviceError {
    #[error("bdev {name}: block size {block} is not a power of two")]
    BlockSize { name: String, block: u32 },
    #[error("too many SpdkBlockDevices on this thread (id {0} in use)")]
    Ids(u16),
}

/// An SPDK bdev as a [`BlockDevice`]. `!Send`: it lives on the thread of its SPDK thread.
pub struct SpdkBlockDevice<'t> {
    thread: &'t SpdkThread,
    bdev: Bdev,
    info: BdevInfo,
    id: u16,
    align: usize,
    /// In-flight requests by slot; `free` lists reusable slots (no allocation after warm-up).
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// Refused with `Again`; retried in order from `poll`.
    pending: VecDeque<Req>,
    /// Error completions for submits SPDK refused for good.
    failed: Vec<IoCompletion<DmaBuf>>,
    stats: DeviceStats,
    /// Submissions SPDK refused with `-ENOMEM` (each retried later).
    refused: u64,
    /// This device's routed completions, swapped out of `ROUTES` in one borrow per poll
    /// (instead of one map lookup per completion); empty between polls, capacity kept.
    inbox: VecDeque<Completion>,
}

impl<'t> SpdkBlockDevice<'t> {
    /// Wraps `bdev`, whose I/O channel must belong to `thread` (the SPDK thread current on this
    /// OS thread when the bdev was opened).
    pub fn new(thread: &'t SpdkThread, bdev: Bdev) -> Result<Self, BlockDeviceError> {
        let info = bdev.info().clone();
        // (Which sizes a store accepts is the store's rule: bdevstore wants divisors of 4 KiB.)
        if !info.block_size.is_power_of_two() {
            return Err(BlockDeviceError::BlockSize {
                name: info.name.clone(),
                block: info.block_size,
            });
        }
        let id = (NEXT_ID.fetch_add(1, Ordering::Relaxed) & ID_MASK as u32) as u16;
        let fresh = ROUTES.with(|r| {
            let mut r = r.borrow_mut();
            if r.contains_key(&id) {
                return false;
            }
            r.insert(id, VecDeque::with_capacity(256));
            true
        });
        if !fresh {
            return Err(BlockDeviceError::Ids(id));
        }
        Ok(Self {
            thread,
            align: info.buf_align.max(4096),
            info,
            bdev,
            id,
            slots: Vec::with_capacity(256),
            free: Vec::with_capacity(256),
            pending: VecDeque::new(),
            failed: Vec::new(),
            stats: DeviceStats::default(),
            refused: 0,
            inbox: VecDeque::with_capacity(256),
        })
    }

    /// Opens bdev `name` for writing on the current SPDK thread and wraps it.
    pub fn open(thread: &'t SpdkThread, name: &str) -> Result<Self, SpdkError> {
        let bdev = Bdev::open(name, true)?;
        Self::new(thread, bdev).map_err(|e| SpdkError::Open {
            name: name.into(),
            reason: e.to_string(),
        })
    }

    pub fn info(&self) -> &BdevInfo {
        &self.info
    }

    /// How many submissions SPDK refused for lack of a `bdev_io` (queued and retried).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    fn take_slot(&mut self, token: u64, kind: IoKind) -> u32 {
        let s = Some(Slot { token, kind });
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = s;
                i
            }
            None => {
                self.slots.push(s);
                (self.slots.len() - 1) as u32
            }
        }
    }

    fn spdk_token(&self, slot: u32) -> u64 {
        TAG | (self.id as u64) << 32 | slot as u64
    }

    /// Tries to hand `req` to SPDK. `Err(req)` when SPDK has no `bdev_io` now.
    fn try_submit(&mut self, mut req: Req) -> Result<(), Req> {
        let bs = self.info.block_size as u64;
        let token = self.spdk_token(req.slot);
        let offset = req.lba.saturating_mul(bs);
        let len = req.buf.as_ref().map_or(0, |b| b.len() as u64);
        let r = match req.kind {
            IoKind::Read | IoKind::Write => match req.buf.take() {
                None => Err((SpdkError::Submit("no buffer".into()), None)),
                Some(buf) if req.kind == IoKind::Read => self.bdev.read(offset, len, buf, token),
                Some(buf) => self.bdev.write(offset, len, buf, token),
            },
            IoKind::Flush => self.bdev.flush(token).map_err(|e| (e, None)),
        };
        match r {
            Ok(()) => {
                match req.kind {
                    IoKind::Read => {
                        self.stats.reads += 1;
                        self.stats.bytes_read += len;
                    }
                    IoKind::Write => {
                        self.stats.writes += 1;
                        self.stats.bytes_written += len;
                    }
                    IoKind::Flush => self.stats.flushes += 1,
                }
                Ok(())
            }
            Err((SpdkError::Again, buf)) => {
                self.refused += 1;
                req.buf = buf;
                Err(req)
            }
            Err((e, buf)) => {
                let result = Err(match e {
                    SpdkError::OutOfRange { .. } => DeviceError::OutOfRange {
                        lba: req.lba,
                        blocks: len / bs,
                    },
                    SpdkError::Unaligned { len, .. } => DeviceError::Misaligned(len as usize),
                    e => DeviceError::Io(e.to_string()),
                });
                let (token, kind) = self.release(req.slot);
                self.failed.push(IoCompletion {
                    token,
                    kind,
                    buf,
                    result,
                });
                Ok(())
            }
        }
    }

    /// Frees `slot`, returning the caller's token and operation kind.
    fn release(&mut self, slot: u32) -> (u64, DevKind) {
        let s = self.slots.get_mut(slot as usize).and_then(Option::take);
        self.free.push(slot);
        match s {
            Some(s) => (s.token, dev_kind(s.kind)),
            // Unreachable by construction (one completion per slot); keep going rather than
            // panic on the data path.
            None => (u64::MAX, DevKind::Flush),
        }
    }

    fn submit(&mut self, kind: IoKind, lba: u64, buf: Option<DmaBuf>, token: u64) {
        let slot = self.take_slot(token, kind);
        let req = Req {
            kind,
            lba,
            buf,
            slot,
        };
        // Keep order behind earlier refused requests (and don't take the last bdev_io from them).
        if !self.pending.is_empty() {
            self.pending.push_back(req);
            return;
        }
        if let Err(req) = self.try_submit(req) {
            self.pending.push_back(req);
        }
    }

    /// Resubmits refused requests until SPDK refuses again.
    fn retry_pending(&mut self) {
        while let Some(req) = self.pending.pop_front() {
            if let Err(req) = self.try_submit(req) {
                self.pending.push_front(req);
                break;
            }
        }
    }
}

fn dev_kind(k: IoKind) -> DevKind {
    match k {
        IoKind::Read => DevKind::Read,
        IoKind::Write => DevKind::Write,
        IoKind::Flush => DevKind::Flush,
    }
}

impl BlockDevice for SpdkBlockDevice<'_> {
    type Buf = DmaBuf;

    fn block_size(&self) -> u32 {
        self.info.block_size
    }
    fn block_count(&self) -> u64 {
        self.info.num_blocks
    }
    fn keeps_data(&self) -> bool {
        self.info.keeps_data()
    }
    fn alloc_buf(&mut self, len: usize) -> Result<DmaBuf, DeviceError> {
        if !len.is_multiple_of(self.info.block_size as usize) {
            return Err(DeviceError::Misaligned(len));
        }
        DmaBuf::new(len, self.align).map_err(|_| DeviceError::NoMemory)
    }
    fn submit_read(&mut self, lba: u64, buf: DmaBuf, token: u64) {
        self.submit(IoKind::Read, lba, Some(buf), token);
    }
    fn submit_write(&mut self, lba: u64, buf: DmaBuf, token: u64) {
        self.submit(IoKind::Write, lba, Some(buf), token);
    }
    fn submit_flush(&mut self, token: u64) {
        self.submit(IoKind::Flush, 0, None, token);
    }

    fn poll(&mut self, out: &mut Vec<IoCompletion<DmaBuf>>) -> usize {
        let before = out.len();
        out.append(&mut self.failed);
        self.thread.poll();
        route_all();
        let id = self.id;
        let mut inbox = std::mem::take(&mut self.inbox);
        ROUTES.with(|r| {
            if let Some(q) = r.borrow_mut().get_mut(&id) {
                std::mem::swap(q, &mut inbox);
            }
        });
        for c in inbox.drain(..) {
            let (token, kind) = self.release((c.token & 0xFFFF_FFFF) as u32);
            out.push(IoCompletion {
                token,
                kind,
                buf: c.buf,
                result: if c.ok {
                    Ok(())
                } else {
                    Err(DeviceError::Io(format!(
                        "{kind:?} failed on bdev {}",
                        self.info.name
                    )))
                },
            });
        }
        self.inbox = inbox;
        // Completions freed bdev_ios: resubmit what was refused.
        self.retry_pending();
        out.append(&mut self.failed);
        out.len() - before
    }

    fn inflight(&self) -> usize {
        // Slots cover accepted and pending requests; failed ones released theirs already.
        self.slots.len() - self.free.len() + self.failed.len()
    }

    fn stats(&self) -> DeviceStats {
        self.stats
    }
}

/// How long `Drop` waits for in-flight I/O (their buffers belong to SPDK until then).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

impl Drop for SpdkBlockDevice<'_> {
    fn drop(&mut self) {
        // The bdev must not be closed with I/O in flight: complete (and discard) it first.
        while let Some(req) = self.pending.pop_front() {
            self.release(req.slot);
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut sink = Vec::new();
        while self.slots.len() > self.free.len() && Instant::now() < deadline {
            sink.clear();
            self.poll(&mut sink);
        }
        if self.slots.len() > self.free.len() {
            tracing::error!(bdev = %self.info.name, "I/O still in flight when the device was dropped");
        }
        ROUTES.with(|r| r.borrow_mut().remove(&self.id));
    }
}
