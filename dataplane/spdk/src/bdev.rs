//! Open bdevs and polled I/O with per-thread completion queues.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::{CStr, CString};
use std::ptr::NonNull;

use spdk_sys::{spdk_bdev, spdk_bdev_desc, spdk_bdev_io, spdk_io_channel};

use crate::{errno_str, DmaBuf, SpdkError};

/// What a bdev is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BdevInfo {
    pub name: String,
    /// The module's product name ("Malloc disk", "Null disk", "AIO disk", ...).
    pub product: String,
    pub block_size: u32,
    pub num_blocks: u64,
    /// Required buffer alignment in bytes.
    pub buf_align: usize,
}

impl BdevInfo {
    /// # Safety
    /// `b` must be a live bdev.
    pub(crate) unsafe fn from_raw(b: *mut spdk_bdev) -> Self {
        let s = |p: *const libc::c_char| {
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        BdevInfo {
            name: s(spdk_sys::spdk_bdev_get_name(b)),
            product: s(spdk_sys::spdk_bdev_get_product_name(b)),
            block_size: spdk_sys::spdk_bdev_get_block_size(b),
            num_blocks: spdk_sys::spdk_bdev_get_num_blocks(b),
            buf_align: spdk_sys::spdk_bdev_get_buf_align(b),
        }
    }

    pub fn size_bytes(&self) -> u64 {
        self.num_blocks * self.block_size as u64
    }

    /// A null bdev discards writes: it must never back durable data.
    pub fn keeps_data(&self) -> bool {
        // SAFETY: a static string.
        let null = unsafe { CStr::from_ptr(spdk_sys::carmine_null_bdev_product_name()) };
        self.product.as_bytes() != null.to_bytes()
    }
}

/// The kind of a finished I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    Read,
    Write,
    Flush,
}

/// A finished I/O: the caller's token, whether it succeeded, and its buffer back.
#[derive(Debug)]
pub struct Completion {
    pub token: u64,
    pub kind: IoKind,
    pub ok: bool,
    pub buf: Option<DmaBuf>,
}

/// Per-I/O context handed to SPDK as the callback argument.
struct IoCtx {
    token: u64,
    kind: IoKind,
    buf: Option<DmaBuf>,
}

/// Room for this many in-flight I/Os per thread before the queues grow (they are reused).
const PREALLOC: usize = 1024;

struct ThreadIo {
    done: VecDeque<Completion>,
    // Boxed on purpose: each context's address is SPDK's callback argument while in flight.
    #[allow(clippy::vec_box)]
    free: Vec<Box<IoCtx>>,
}

thread_local! {
    static IO: RefCell<ThreadIo> = RefCell::new(ThreadIo {
        done: VecDeque::with_capacity(PREALLOC),
        free: Vec::with_capacity(PREALLOC),
    });
}

fn take_ctx(token: u64, kind: IoKind, buf: Option<DmaBuf>) -> Box<IoCtx> {
    IO.with(|io| match io.borrow_mut().free.pop() {
        Some(mut c) => {
            c.token = token;
            c.kind = kind;
            c.buf = buf;
            c
        }
        None => Box::new(IoCtx { token, kind, buf }),
    })
}

extern "C" fn io_done(bdev_io: *mut spdk_bdev_io, success: bool, arg: *mut libc::c_void) {
    // SAFETY: arg is the Box<IoCtx> leaked at submission; SPDK calls back exactly once, on the
    // submitting thread. bdev_io is ours to free.
    unsafe {
        spdk_sys::spdk_bdev_free_io(bdev_io);
        let mut ctx = Box::from_raw(arg as *mut IoCtx);
        let c = Completion {
            token: ctx.token,
            kind: ctx.kind,
            ok: success,
            buf: ctx.buf.take(),
        };
        IO.with(|io| {
            let mut io = io.borrow_mut();
            io.done.push_back(c);
            io.free.push(ctx);
        });
    }
}

/// Takes the oldest finished I/O of this thread, if any. Completions appear while the thread's
/// SPDK thread is polled.
pub fn reap() -> Option<Completion> {
    IO.with(|io| io.borrow_mut().done.pop_front())
}

extern "C" fn bdev_event(
    ty: spdk_sys::spdk_bdev_event_type,
    bdev: *mut spdk_bdev,
    _ctx: *mut libc::c_void,
) {
    // SAFETY: bdev is live during the callback.
    let name = unsafe { BdevInfo::from_raw(bdev).name };
    tracing::warn!(bdev = %name, event = ty, "bdev event (hot-remove or resize)");
}

/// An open bdev with an I/O channel of the current SPDK thread. `!Send`.
#[derive(Debug)]
pub struct Bdev {
    desc: NonNull<spdk_bdev_desc>,
    ch: NonNull<spdk_io_channel>,
    info: BdevInfo,
}

impl Bdev {
    /// Opens bdev `name` (for writing when `write`) and gets an I/O channel on the current SPDK
    /// thread, which must exist ([`crate::SpdkThread`] or the main thread of [`crate::Spdk`]).
    pub fn open(name: &str, write: bool) -> Result<Self, SpdkError> {
        let c = CString::new(name).map_err(|_| SpdkError::Nul(name.into()))?;
        let mut desc: *mut spdk_bdev_desc = std::ptr::null_mut();
        // SAFETY: valid name and out-pointer; the event callback is a plain function.
        let rc = unsafe {
            spdk_sys::spdk_bdev_open_ext(
                c.as_ptr(),
                write,
                Some(bdev_event),
                std::ptr::null_mut(),
                &mut desc,
            )
        };
        let desc = NonNull::new(desc)
            .filter(|_| rc == 0)
            .ok_or_else(|| SpdkError::Open {
                name: name.into(),
                reason: if rc == -libc::ENODEV {
                    "no such bdev".into()
                } else {
                    errno_str(rc)
                },
            })?;
        // SAFETY: desc is open; the channel belongs to the current SPDK thread.
        let ch = unsafe { spdk_sys::spdk_bdev_get_io_channel(desc.as_ptr()) };
        let Some(ch) = NonNull::new(ch) else {
            // SAFETY: closing what we opened.
            unsafe { spdk_sys::spdk_bdev_close(desc.as_ptr()) };
            return Err(SpdkError::Open {
                name: name.into(),
                reason: "no I/O channel (not on an SPDK thread?)".into(),
            });
        };
        // SAFETY: desc is open.
        let info = unsafe { BdevInfo::from_raw(spdk_sys::spdk_bdev_desc_get_bdev(desc.as_ptr())) };
        Ok(Self { desc, ch, info })
    }

    pub fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), SpdkError> {
        let bs = self.info.block_size as u64;
        if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) || len == 0 {
            return Err(SpdkError::Unaligned {
                offset,
                len,
                block: self.info.block_size,
            });
        }
        let size = self.info.size_bytes();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(SpdkError::OutOfRange { offset, len, size });
        }
        Ok(())
    }

    fn submit(
        &self,
        kind: IoKind,
        offset: u64,
        len: u64,
        buf: Option<DmaBuf>,
        token: u64,
    ) -> Result<(), (SpdkError, Option<DmaBuf>)> {
        if let Err(e) = self.check(offset, len) {
            return Err((e, buf));
        }
        if let Some(b) = &buf {
            if (b.len() as u64) < len {
                return Err((
                    SpdkError::Submit(format!("buffer of {} bytes for {len}", b.len())),
                    buf,
                ));
            }
        }
        let mut ctx = take_ctx(token, kind, buf);
        let data = ctx
            .buf
            .as_mut()
            .map_or(std::ptr::null_mut(), |b| b.as_mut_ptr());
        let arg = Box::into_raw(ctx) as *mut libc::c_void;
        let (desc, ch) = (self.desc.as_ptr(), self.ch.as_ptr());
        // SAFETY: desc/ch are open and belong to this thread; `data` points into the DmaBuf now
        // owned by the context, which stays alive (leaked box) until io_done takes it back; the
        // range was checked against the bdev.
        let rc = unsafe {
            match kind {
                IoKind::Read => {
                    spdk_sys::spdk_bdev_read(desc, ch, data, offset, len, Some(io_done), arg)
                }
                IoKind::Write => {
                    spdk_sys::spdk_bdev_write(desc, ch, data, offset, len, Some(io_done), arg)
                }
                IoKind::Flush => {
                    spdk_sys::spdk_bdev_flush(desc, ch, offset, len, Some(io_done), arg)
                }
            }
        };
        if rc != 0 {
            // SAFETY: the submission failed, so SPDK will not call back: the context is ours.
            let mut ctx = unsafe { Box::from_raw(arg as *mut IoCtx) };
            let buf = ctx.buf.take();
            IO.with(|io| io.borrow_mut().free.push(ctx));
            let e = if rc == -libc::ENOMEM {
                SpdkError::Again
            } else {
                SpdkError::Submit(errno_str(rc))
            };
            return Err((e, buf));
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset` into `buf`. On success the buffer comes back in the
    /// [`Completion`] with `token`; on a submission error it comes back with the error.
    pub fn read(
        &self,
        offset: u64,
        len: u64,
        buf: DmaBuf,
        token: u64,
    ) -> Result<(), (SpdkError, Option<DmaBuf>)> {
        self.submit(IoKind::Read, offset, len, Some(buf), token)
    }

    /// Writes the first `len` bytes of `buf` at `offset`.
    pub fn write(
        &self,
        offset: u64,
        len: u64,
        buf: DmaBuf,
        token: u64,
    ) -> Result<(), (SpdkError, Option<DmaBuf>)> {
        self.submit(IoKind::Write, offset, len, Some(buf), token)
    }

    /// Makes every completed write durable. For a bdev whose module has no flush (null, and
    /// virtio-blk in SPDK 20.07, which cannot send VIRTIO_BLK_T_FLUSH) it completes at once:
    /// such a device is only as durable as its completed writes.
    pub fn flush(&self, token: u64) -> Result<(), SpdkError> {
        // SAFETY: desc is open.
        let supported = unsafe {
            spdk_sys::spdk_bdev_io_type_supported(
                spdk_sys::spdk_bdev_desc_get_bdev(self.desc.as_ptr()),
                spdk_sys::spdk_bdev_io_type_SPDK_BDEV_IO_TYPE_FLUSH,
            )
        };
        if !supported {
            IO.with(|io| {
                io.borrow_mut().done.push_back(Completion {
                    token,
                    kind: IoKind::Flush,
                    ok: true,
                    buf: None,
                })
            });
            return Ok(());
        }
        self.submit(IoKind::Flush, 0, self.info.size_bytes(), None, token)
            .map_err(|(e, _)| e)
    }
}

impl Drop for Bdev {
    fn drop(&mut self) {
        // SAFETY: releasing what `open` acquired, on the owning thread. In-flight I/Os must have
        // completed: their callbacks reference the thread's queues, not this value.
        unsafe {
            spdk_sys::spdk_put_io_channel(self.ch.as_ptr());
            spdk_sys::spdk_bdev_close(self.desc.as_ptr());
        }
    }
}
