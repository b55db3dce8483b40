//! The poll-mode block-device contract the native store runs on, and its file-backed and null
//! implementations. The SPDK bdev implementation (`carmine-spdk`) implements the same trait.
//!
//! Contract:
//! - I/O is addressed in device blocks (`lba`), buffer lengths are multiples of the block size.
//! - `submit_*` never blocks and never fails synchronously: every submitted operation produces
//!   exactly one [`IoCompletion`] from a later [`BlockDevice::poll`] call on the same thread,
//!   carrying the caller's token, the buffer back (reads and writes) and the result.
//! - Completions may arrive in any order. A flush completes once every write that had
//!   *completed* before the flush was submitted is durable; the store never relies on more.
//! - Buffers come from [`BlockDevice::alloc_buf`] so a device can hand out DMA memory
//!   (SPDK: `spdk_dma_zmalloc`); ownership moves to the device while I/O is in flight.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Errors a device reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("I/O error: {0}")]
    Io(String),
    #[error("request beyond the end of the device (lba {lba}, {blocks} blocks)")]
    OutOfRange { lba: u64, blocks: u64 },
    #[error("buffer length {0} is not a multiple of the block size")]
    Misaligned(usize),
    #[error("out of I/O buffers or queue slots")]
    NoMemory,
}

/// A buffer a device can do I/O from/to (heap memory here, DMA memory with SPDK).
pub trait IoBuf {
    fn as_slice(&self) -> &[u8];
    fn as_mut_slice(&mut self) -> &mut [u8];
    fn len(&self) -> usize {
        self.as_slice().len()
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A plain heap buffer, used by [`FileDevice`] and [`NullDevice`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeapBuf(pub Vec<u8>);

impl IoBuf for HeapBuf {
    fn as_slice(&self) -> &[u8] {
        &self.0
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// Which operation a completion is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    Read,
    Write,
    Flush,
}

/// One finished device operation.
#[derive(Debug)]
pub struct IoCompletion<B> {
    pub token: u64,
    pub kind: IoKind,
    /// The buffer of a read (filled) or a write (returned for reuse); `None` for a flush.
    pub buf: Option<B>,
    pub result: Result<(), DeviceError>,
}

/// Counters every device keeps (used for write amplification).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// A poll-mode block device owned by one shard.
pub trait BlockDevice {
    type Buf: IoBuf;
    /// Bytes per block (512 or 4096 in practice).
    fn block_size(&self) -> u32;
    /// Number of blocks.
    fn block_count(&self) -> u64;
    /// False for a device that discards writes (SPDK null bdev): refused for durable stores.
    fn keeps_data(&self) -> bool;
    /// A zeroed buffer of `len` bytes (a multiple of the block size), suitable for this device.
    fn alloc_buf(&mut self, len: usize) -> Result<Self::Buf, DeviceError>;
    fn submit_read(&mut self, lba: u64, buf: Self::Buf, token: u64);
    fn submit_write(&mut self, lba: u64, buf: Self::Buf, token: u64);
    fn submit_flush(&mut self, token: u64);
    /// Reap finished operations into `out`; returns how many. Never blocks.
    fn poll(&mut self, out: &mut Vec<IoCompletion<Self::Buf>>) -> usize;
    /// Operations submitted and not yet returned by `poll`.
    fn inflight(&self) -> usize;
    fn stats(&self) -> DeviceStats;
}

enum Pending {
    Read(u64, HeapBuf, u64),
    Write(u64, HeapBuf, u64),
    Flush(u64),
}

/// A block device on a regular file: `pread`/`pwrite`, flush = `fdatasync`. Operations queue at
/// submit and run (synchronously) inside `poll`, so callers see the same asynchronous shape as
/// with SPDK.
pub struct FileDevice {
    file: File,
    block_size: u32,
    blocks: u64,
    queue: VecDeque<Pending>,
    stats: DeviceStats,
    sync: bool,
}

impl FileDevice {
    /// Open (creating and sizing it if needed) a file of `blocks` blocks of `block_size` bytes.
    pub fn open(path: &Path, block_size: u32, blocks: u64) -> Result<Self, DeviceError> {
        if block_size == 0 || !block_size.is_power_of_two() {
            return Err(DeviceError::Misaligned(block_size as usize));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| DeviceError::Io(format!("open {}: {e}", path.display())))?;
        let want = blocks * block_size as u64;
        let have = file
            .metadata()
            .map_err(|e| DeviceError::Io(e.to_string()))?
            .len();
        if have < want {
            file.set_len(want)
                .map_err(|e| DeviceError::Io(e.to_string()))?;
        }
        Ok(FileDevice {
            file,
            block_size,
            blocks,
            queue: VecDeque::new(),
            stats: DeviceStats::default(),
            sync: true,
        })
    }

    /// Skip `fdatasync` on flush (benchmarks of the store's own cost on a page-cached file).
    /// Process-crash safety is unaffected (the page cache survives SIGKILL); power-loss
    /// safety is lost.
    pub fn set_sync(&mut self, sync: bool) {
        self.sync = sync;
    }

    fn check(&self, lba: u64, len: usize) -> Result<u64, DeviceError> {
        let bs = self.block_size as usize;
        if !len.is_multiple_of(bs) {
            return Err(DeviceError::Misaligned(len));
        }
        let blocks = (len / bs) as u64;
        if lba.checked_add(blocks).is_none_or(|end| end > self.blocks) {
            return Err(DeviceError::OutOfRange { lba, blocks });
        }
        Ok(lba * self.block_size as u64)
    }
}

impl BlockDevice for FileDevice {
    type Buf = HeapBuf;
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn block_count(&self) -> u64 {
        self.blocks
    }
    fn keeps_data(&self) -> bool {
        true
    }
    fn alloc_buf(&mut self, len: usize) -> Result<HeapBuf, DeviceError> {
        if !len.is_multiple_of(self.block_size as usize) {
            return Err(DeviceError::Misaligned(len));
        }
        Ok(HeapBuf(vec![0; len]))
    }
    fn submit_read(&mut self, lba: u64, buf: HeapBuf, token: u64) {
        self.queue.push_back(Pending::Read(lba, buf, token));
    }
    fn submit_write(&mut self, lba: u64, buf: HeapBuf, token: u64) {
        self.queue.push_back(Pending::Write(lba, buf, token));
    }
    fn submit_flush(&mut self, token: u64) {
        self.queue.push_back(Pending::Flush(token));
    }
    fn poll(&mut self, out: &mut Vec<IoCompletion<HeapBuf>>) -> usize {
        let n = self.queue.len();
        for _ in 0..n {
            let Some(p) = self.queue.pop_front() else {
                break;
            };
            let c = match p {
                Pending::Read(lba, mut buf, token) => {
                    let result = self.check(lba, buf.len()).and_then(|off| {
                        self.file
                            .read_exact_at(&mut buf.0, off)
                            .map_err(|e| DeviceError::Io(e.to_string()))
                    });
                    self.stats.reads += 1;
                    self.stats.bytes_read += buf.len() as u64;
                    IoCompletion {
                        token,
                        kind: IoKind::Read,
                        buf: Some(buf),
                        result,
                    }
                }
                Pending::Write(lba, buf, token) => {
                    let result = self.check(lba, buf.len()).and_then(|off| {
                        self.file
                            .write_all_at(&buf.0, off)
                            .map_err(|e| DeviceError::Io(e.to_string()))
                    });
                    self.stats.writes += 1;
                    self.stats.bytes_written += buf.len() as u64;
                    IoCompletion {
                        token,
                        kind: IoKind::Write,
                        buf: Some(buf),
                        result,
                    }
                }
                Pending::Flush(token) => {
                    let result = if self.sync {
                        self.file
                            .sync_data()
                            .map_err(|e| DeviceError::Io(e.to_string()))
                    } else {
                        Ok(())
                    };
                    self.stats.flushes += 1;
                    IoCompletion {
                        token,
                        kind: IoKind::Flush,
                        buf: None,
                        result,
                    }
                }
            };
            out.push(c);
        }
        n
    }
    fn inflight(&self) -> usize {
        self.queue.len()
    }
    fn stats(&self) -> DeviceStats {
        self.stats
    }
}

/// A device that discards writes and reads zeros (like SPDK's null bdev): only for raw
/// benchmarks; `keeps_data()` is false so durable stores refuse it.
pub struct NullDevice {
    block_size: u32,
    blocks: u64,
    done: Vec<IoCompletion<HeapBuf>>,
    stats: DeviceStats,
}

impl NullDevice {
    pub fn new(block_size: u32, blocks: u64) -> Self {
        NullDevice {
            block_size,
            blocks,
            done: Vec::new(),
            stats: DeviceStats::default(),
        }
    }
}

impl BlockDevice for NullDevice {
    type Buf = HeapBuf;
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn block_count(&self) -> u64 {
        self.blocks
    }
    fn keeps_data(&self) -> bool {
        false
    }
    fn alloc_buf(&mut self, len: usize) -> Result<HeapBuf, DeviceError> {
        Ok(HeapBuf(vec![0; len]))
    }
    fn submit_read(&mut self, _lba: u64, mut buf: HeapBuf, token: u64) {
        buf.0.fill(0);
        self.stats.reads += 1;
        self.stats.bytes_read += buf.len() as u64;
        self.done.push(IoCompletion {
            token,
            kind: IoKind::Read,
            buf: Some(buf),
            result: Ok(()),
        });
    }
    fn submit_write(&mut self, _lba: u64, buf: HeapBuf, token: u64) {
        self.stats.writes += 1;
        self.stats.bytes_written += buf.len() as u64;
        self.done.push(IoCompletion {
            token,
            kind: IoKind::Write,
            buf: Some(buf),
            result: Ok(()),
        });
    }
    fn submit_flush(&mut self, token: u64) {
        self.stats.flushes += 1;
        self.done.push(IoCompletion {
            token,
            kind: IoKind::Flush,
            buf: None,
            result: Ok(()),
        });
    }
    fn poll(&mut self, out: &mut Vec<IoCompletion<HeapBuf>>) -> usize {
        let n = self.done.len();
        out.append(&mut self.done);
        n
    }
    fn inflight(&self) -> usize {
        self.done.len()
    }
    fn stats(&self) -> DeviceStats {
        self.stats
    }
}
