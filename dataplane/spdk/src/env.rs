//! The SPDK environment, SPDK threads, and bdev creation.

use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use carmine_dpdk::Eal;
use spdk_sys::spdk_thread;

use crate::{errno_str, BdevInfo, SpdkError};

static STARTED: AtomicBool = AtomicBool::new(false);

/// How long start-up and shutdown steps may take before we call it a hang.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// An SPDK thread bound to the calling OS thread. `!Send`: it is polled by its owner only.
#[derive(Debug)]
pub struct SpdkThread {
    raw: NonNull<spdk_thread>,
}

impl SpdkThread {
    /// Creates an SPDK thread and makes it current on this OS thread. Requires [`Spdk::start`]
    /// (the thread library) to have run in this process.
    pub fn new(name: &str) -> Result<Self, SpdkError> {
        if !STARTED.load(Ordering::SeqCst) {
            return Err(SpdkError::Env("SpdkThread::new before Spdk::start".into()));
        }
        Self::create(name)
    }

    fn create(name: &str) -> Result<Self, SpdkError> {
        let c = CString::new(name).map_err(|_| SpdkError::Nul(name.into()))?;
        // SAFETY: the thread library is initialised; a NULL cpumask means "any core".
        let raw = unsafe { spdk_sys::spdk_thread_create(c.as_ptr(), std::ptr::null_mut()) };
        let raw = NonNull::new(raw)
            .ok_or_else(|| SpdkError::Env(format!("spdk_thread_create({name}) failed")))?;
        // SAFETY: raw is a live thread; binding it to this OS thread is what SPDK expects of an
        // application-managed thread.
        unsafe { spdk_sys::spdk_set_thread(raw.as_ptr()) };
        Ok(Self { raw })
    }

    /// Runs this thread's pending messages and pollers once: bdev completions fire here.
    /// Returns true when it did some work.
    pub fn poll(&self) -> bool {
        // SAFETY: raw is live and belongs to this OS thread (the type is !Send).
        unsafe { spdk_sys::spdk_thread_poll(self.raw.as_ptr(), 0, 0) > 0 }
    }

    /// Polls until `done()` or the timeout.
    pub fn poll_until(
        &self,
        timeout: Duration,
        what: &'static str,
        mut done: impl FnMut() -> bool,
    ) -> Result<(), SpdkError> {
        let deadline = Instant::now() + timeout;
        while !done() {
            if Instant::now() > deadline {
                return Err(SpdkError::Timeout(timeout, what));
            }
            if !self.poll() {
                std::hint::spin_loop();
            }
        }
        Ok(())
    }
}

impl Drop for SpdkThread {
    fn drop(&mut self) {
        let raw = self.raw.as_ptr();
        // SAFETY: raw is live; exit, poll until SPDK says it has exited (it releases its
        // channels and pollers in between), then destroy, as thread.h prescribes.
        unsafe {
            spdk_sys::spdk_set_thread(raw);
            spdk_sys::spdk_thread_exit(raw);
            let deadline = Instant::now() + STEP_TIMEOUT;
            while !spdk_sys::spdk_thread_is_exited(raw) && Instant::now() < deadline {
                spdk_sys::spdk_thread_poll(raw, 0, 0);
            }
            if spdk_sys::spdk_thread_is_exited(raw) {
                spdk_sys::spdk_thread_destroy(raw);
            } else {
                tracing::error!("SPDK thread did not exit in time; leaking it");
            }
            spdk_sys::spdk_set_thread(std::ptr::null_mut());
        }
    }
}

/// A bdev to create.
#[derive(Debug, Clone)]
pub enum BdevKind {
    /// RAM-backed (tests, benchmarks).
    Malloc { blocks: u64, block_size: u32 },
    /// Discards writes, reads zeros: benchmarks only, never durable.
    Null { blocks: u64, block_size: u32 },
    /// A file or block device through Linux AIO.
    Aio { path: PathBuf, block_size: u32 },
    /// A vhost-user-blk socket (e.g. exported by qemu-storage-daemon).
    VirtioBlk {
        socket: PathBuf,
        queues: u32,
        queue_size: u32,
    },
}

/// SPDK attached to the process's DPDK EAL, with its subsystems up, on the calling thread.
#[derive(Debug)]
pub struct Spdk {
    main: Option<SpdkThread>,
}

// The flags the callbacks set are `Cell`s: the polling closure reads them through a shared
// reference while SPDK writes through the pointer, which is only defined behaviour for interior
// mutability (a plain `bool` read through `&` was folded to a constant in release builds, and
// `shutdown` timed out).
extern "C" fn init_done(rc: i32, arg: *mut libc::c_void) {
    // SAFETY: arg is the Cell<Option<i32>> that `start` passed and keeps alive while polling.
    unsafe { (*(arg as *const std::cell::Cell<Option<i32>>)).set(Some(rc)) };
}

extern "C" fn fini_done(arg: *mut libc::c_void) {
    // SAFETY: arg is the Cell<bool> that `shutdown` passed and keeps alive while polling.
    unsafe { (*(arg as *const std::cell::Cell<bool>)).set(true) };
}

impl Spdk {
    /// Attaches SPDK to the EAL, initialises the thread library, creates the main SPDK thread on
    /// this OS thread and brings up every linked subsystem. Once per process.
    pub fn start(_eal: &'static Eal) -> Result<Spdk, SpdkError> {
        if STARTED.swap(true, Ordering::SeqCst) {
            return Err(SpdkError::AlreadyStarted);
        }
        // SAFETY: the EAL is up (proved by `_eal`); post_init maps its memory for SPDK.
        let rc = unsafe { spdk_sys::spdk_env_dpdk_post_init(false) };
        if rc != 0 {
            return Err(SpdkError::Env(format!(
                "spdk_env_dpdk_post_init: {}",
                errno_str(rc)
            )));
        }
        // SAFETY: once per process, guarded by STARTED.
        let rc = unsafe { spdk_sys::spdk_thread_lib_init(None, 0) };
        if rc != 0 {
            return Err(SpdkError::Env(format!(
                "spdk_thread_lib_init: {}",
                errno_str(rc)
            )));
        }
        let main = SpdkThread::create("carmine_main")?;
        let result = std::cell::Cell::new(None::<i32>);
        // SAFETY: init_done writes into `result`, which lives until the polling below ends.
        unsafe {
            spdk_sys::carmine_subsystem_init(
                Some(init_done),
                &result as *const std::cell::Cell<Option<i32>> as *mut libc::c_void,
            )
        };
        main.poll_until(STEP_TIMEOUT, "subsystem init", || result.get().is_some())?;
        match result.get() {
            Some(0) => Ok(Spdk { main: Some(main) }),
            Some(rc) => Err(SpdkError::SubsystemInit(rc)),
            None => Err(SpdkError::SubsystemInit(-1)),
        }
    }

    /// The main SPDK thread (the one `start` ran on).
    pub fn thread(&self) -> &SpdkThread {
        self.main
            .as_ref()
            .expect("main thread lives until shutdown")
    }

    /// Polls the main SPDK thread once.
    pub fn poll(&self) -> bool {
        self.thread().poll()
    }

    /// SPDK's version string.
    pub fn version() -> String {
        // SAFETY: a static string.
        unsafe { CStr::from_ptr(spdk_sys::carmine_spdk_version()) }
            .to_string_lossy()
            .into_owned()
    }

    /// Creates a bdev named `name`.
    pub fn create_bdev(&self, name: &str, kind: &BdevKind) -> Result<(), SpdkError> {
        let cname = CString::new(name).map_err(|_| SpdkError::Nul(name.into()))?;
        let path = |p: &PathBuf| {
            CString::new(p.as_os_str().as_encoded_bytes())
                .map_err(|_| SpdkError::Nul(p.display().to_string()))
        };
        // SAFETY: every pointer is a valid NUL-terminated string for the duration of the call;
        // the modules copy what they keep. Creation is synchronous for these modules.
        let rc = unsafe {
            match kind {
                BdevKind::Malloc { blocks, block_size } => {
                    spdk_sys::carmine_bdev_malloc_create(cname.as_ptr(), *blocks, *block_size)
                }
                BdevKind::Null { blocks, block_size } => {
                    spdk_sys::carmine_bdev_null_create(cname.as_ptr(), *blocks, *block_size)
                }
                BdevKind::Aio {
                    path: p,
                    block_size,
                } => {
                    let cp = path(p)?;
                    spdk_sys::carmine_bdev_aio_create(cname.as_ptr(), cp.as_ptr(), *block_size)
                }
                BdevKind::VirtioBlk {
                    socket,
                    queues,
                    queue_size,
                } => {
                    let cp = path(socket)?;
                    spdk_sys::carmine_bdev_virtio_blk_create(
                        cname.as_ptr(),
                        cp.as_ptr(),
                        *queues,
                        *queue_size,
                    )
                }
            }
        };
        if rc != 0 {
            return Err(SpdkError::CreateBdev {
                name: name.into(),
                reason: errno_str(rc),
            });
        }
        Ok(())
    }

    /// Every registered bdev.
    pub fn bdevs(&self) -> Vec<BdevInfo> {
        let mut out = Vec::new();
        // SAFETY: iterating SPDK's bdev list on an SPDK thread; pointers stay valid meanwhile.
        unsafe {
            let mut b = spdk_sys::spdk_bdev_first();
            while !b.is_null() {
                out.push(BdevInfo::from_raw(b));
                b = spdk_sys::spdk_bdev_next(b);
            }
        }
        out
    }

    /// Finishes the subsystems (which unregisters every bdev), exits the main thread and
    /// finishes the thread library. Open [`crate::Bdev`]s must have been dropped.
    pub fn shutdown(mut self) -> Result<(), SpdkError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), SpdkError> {
        let Some(main) = self.main.take() else {
            return Ok(());
        };
        // Let released channels and closes settle first.
        for _ in 0..1000 {
            if !main.poll() {
                break;
            }
        }
        let done = std::cell::Cell::new(false);
        // SAFETY: fini_done writes into `done`, alive while we poll.
        unsafe {
            spdk_sys::carmine_subsystem_fini(
                Some(fini_done),
                &done as *const std::cell::Cell<bool> as *mut _,
            )
        };
        let r = main.poll_until(STEP_TIMEOUT, "subsystem fini", || done.get());
        drop(main);
        if r.is_ok() {
            // SAFETY: every SPDK thread of ours has exited (the main one just did; shard threads
            // are dropped before shutdown by their owners).
            unsafe { spdk_sys::spdk_thread_lib_fini() };
        }
        r
    }
}

impl Drop for Spdk {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::error!(error = %e, "SPDK shutdown");
        }
    }
}
