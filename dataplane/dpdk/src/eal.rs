//! The EAL: process-wide, initialised once.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{strerror, DpdkError};

static EAL_TAKEN: AtomicBool = AtomicBool::new(false);

/// How to start the EAL. Builds the `rte_eal_init` argument list.
#[derive(Debug, Clone)]
pub struct EalConfig {
    /// Program name (argv[0]) and log prefix.
    pub app: String,
    /// lcore list (`-l`), e.g. "0" or "0-1". The shards pin their own threads; DPDK only needs
    /// the main lcore here.
    pub cores: String,
    /// Skip the PCI bus scan (CI mode, vdevs only).
    pub no_pci: bool,
    /// Keep no shared files: unique per process, nothing left behind. Incompatible with
    /// vhost-user (virtio-user needs hugepage files to pass to the backend).
    pub in_memory: bool,
    /// Hugepage file prefix; distinct per process when several run at once.
    pub file_prefix: Option<String>,
    /// One hugepage file per memseg list (vhost-user can pass at most 8 regions).
    pub single_file_segments: bool,
    /// Memory to reserve up front, in MiB (`-m`).
    pub mem_mb: Option<u32>,
    /// Use anonymous memory instead of hugepages (DPDK only: SPDK 20.07 needs hugepages).
    pub no_huge: bool,
    /// Virtual devices (`--vdev`), e.g. "net_af_packet0,iface=veth0".
    pub vdevs: Vec<String>,
    /// EAL log level (`--log-level`), e.g. "lib.eal:notice".
    pub log_level: Option<String>,
    /// Anything else, passed through.
    pub extra: Vec<String>,
}

impl Default for EalConfig {
    fn default() -> Self {
        Self {
            app: "carmine".into(),
            cores: "0".into(),
            no_pci: false,
            in_memory: false,
            file_prefix: None,
            single_file_segments: false,
            mem_mb: None,
            no_huge: false,
            vdevs: Vec::new(),
            log_level: Some("*:notice".into()),
            extra: Vec::new(),
        }
    }
}

impl EalConfig {
    /// The argv this config produces (argv[0] first).
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![self.app.clone(), "-l".into(), self.cores.clone()];
        if self.no_pci {
            a.push("--no-pci".into());
        }
        if self.in_memory {
            a.push("--in-memory".into());
        }
        if let Some(p) = &self.file_prefix {
            a.push(format!("--file-prefix={p}"));
        }
        if self.single_file_segments {
            a.push("--single-file-segments".into());
        }
        if let Some(m) = self.mem_mb {
            a.push(format!("-m{m}"));
        }
        if self.no_huge {
            a.push("--no-huge".into());
        }
        for v in &self.vdevs {
            a.push(format!("--vdev={v}"));
        }
        if let Some(l) = &self.log_level {
            a.push(format!("--log-level={l}"));
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// The initialised EAL: a process-lifetime singleton. Holding `&'static Eal` is the proof that
/// DPDK calls are allowed, so pools and ports take one on construction.
///
/// The EAL is never torn down: DPDK cannot be restarted in a process anyway, the kernel frees
/// anonymous and `--in-memory` hugepages at exit, and SPDK (attached to this EAL) must be finished
/// before any cleanup, which the process exit orders for us. With `file_prefix`, the hugepage
/// files stay in hugetlbfs after exit: [`Eal::hugepage_files`] lists them for the caller to remove.
#[derive(Debug)]
pub struct Eal {
    args: Vec<String>,
    file_prefix: Option<String>,
}

static EAL: std::sync::OnceLock<Eal> = std::sync::OnceLock::new();

impl Eal {
    /// Starts the EAL with `cfg`. Fails with [`DpdkError::AlreadyInitialised`] if this process
    /// already did (successfully or not: DPDK cannot retry).
    pub fn init(cfg: &EalConfig) -> Result<&'static Eal, DpdkError> {
        if EAL_TAKEN.swap(true, Ordering::SeqCst) {
            return Err(DpdkError::AlreadyInitialised);
        }
        let args = cfg.args();
        let cargs = args
            .iter()
            .map(|a| CString::new(a.as_str()).map_err(|_| DpdkError::Nul(a.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        // rte_eal_init may permute argv: it gets its own array of pointers into `cargs`.
        let mut argv: Vec<*mut libc::c_char> = cargs
            .iter()
            .map(|c| c.as_ptr() as *mut libc::c_char)
            .collect();
        tracing::info!(args = ?args, "starting DPDK EAL");
        // rte_eal_init pins the calling thread to the main lcore, and every thread it spawns
        // later would inherit that. Carmine pins its shards itself: give the caller its CPU set
        // back afterwards.
        // SAFETY: cpu_set_t is plain data; sched_getaffinity(0) fills it for this thread.
        let mut cpus: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer and size.
        let saved = unsafe {
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut cpus)
        } == 0;
        // SAFETY: argv holds argc valid NUL-terminated strings that live across the call.
        let rc = unsafe { dpdk_sys::rte_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
        if saved {
            // SAFETY: restoring the set read above for this thread.
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &cpus) };
        }
        if rc < 0 {
            // SAFETY: reading DPDK's per-thread errno right after the failing call.
            let errno = unsafe { dpdk_sys::carmine_rte_errno() };
            return Err(DpdkError::EalInit(strerror(errno)));
        }
        // DPDK may keep pointers into argv (e.g. the program name for logs): keep the strings
        // for the life of the process (a few bytes, once).
        std::mem::forget(cargs);
        std::mem::forget(argv);
        Ok(EAL.get_or_init(|| Eal {
            args,
            file_prefix: cfg.file_prefix.clone(),
        }))
    }

    /// The EAL, if this process started it.
    pub fn get() -> Option<&'static Eal> {
        EAL.get()
    }

    /// The argument list the EAL was started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Hugepage files this process's EAL created under `mount` (only with a file prefix).
    pub fn hugepage_files(&self, mount: &std::path::Path) -> Vec<std::path::PathBuf> {
        let Some(prefix) = &self.file_prefix else {
            return Vec::new();
        };
        let want = format!("{prefix}map_");
        std::fs::read_dir(mount)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&want))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Gives the calling thread (a shard: not an EAL thread) a DPDK lcore id of its own, and
    /// returns it. Without one, `rte_lcore_id()` is `LCORE_ID_ANY` on the thread and every
    /// mbuf allocation and free (ours, and the PMD's on RX and TX) goes to the pool's shared
    /// ring, a compare-and-swap each; with one, they use that lcore's cache of the pool
    /// (`PktMbufPool::new`'s `cache`), as on an EAL lcore. Ids are taken from the top of
    /// `RTE_MAX_LCORE` down, skipping the EAL's own lcores, and never reused: each thread that
    /// adopts one keeps it for its life. A thread that already has an id gets it back.
    pub fn adopt_lcore(&self) -> Result<u32, DpdkError> {
        // SAFETY: reads the calling thread's per-lcore variable.
        let current = unsafe { dpdk_sys::carmine_current_lcore() };
        // SAFETY: returns a constant.
        let max = unsafe { dpdk_sys::carmine_max_lcore() };
        if current < max {
            return Ok(current);
        }
        let mut next = NEXT_ADOPTED.lock().unwrap_or_else(|e| e.into_inner());
        let mut id = next.unwrap_or(max);
        while id > 0 {
            id -= 1;
            // SAFETY: sets the calling thread's per-lcore id; the shim refuses ids out of
            // range, the EAL's own lcores and threads that have an id. Ids are handed out once
            // (under this lock), so no two threads share an lcore's mempool caches.
            let rc = unsafe { dpdk_sys::carmine_thread_set_lcore(id) };
            if rc == 0 {
                *next = Some(id);
                return Ok(id);
            }
            if rc != -libc::EBUSY {
                return Err(DpdkError::Lcore(strerror(rc)));
            }
        }
        Err(DpdkError::Lcore(format!("all {max} lcore ids are taken")))
    }

    /// Removes what an EAL that is not `--in-memory` leaves behind: its hugepage files under
    /// `mount` and its runtime directory (`/var/run/dpdk/<prefix>`, root's). Call at the end,
    /// once nothing uses DPDK memory any more; a no-op without a file prefix.
    pub fn remove_shared_files(&self, mount: &std::path::Path) {
        for f in self.hugepage_files(mount) {
            let _ = std::fs::remove_file(f);
        }
        if let Some(prefix) = &self.file_prefix {
            let _ = std::fs::remove_dir_all(std::path::Path::new("/var/run/dpdk").join(prefix));
        }
    }

    /// Creates a virtual device after start-up (e.g. `net_af_packet1`, `iface=veth1`).
    pub fn vdev_init(&self, name: &str, args: &str) -> Result<(), DpdkError> {
        let n = CString::new(name).map_err(|_| DpdkError::Nul(name.into()))?;
        let a = CString::new(args).map_err(|_| DpdkError::Nul(args.into()))?;
        // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
        let rc = unsafe { dpdk_sys::rte_vdev_init(n.as_ptr(), a.as_ptr()) };
        if rc != 0 {
            // rte_vdev_init returns a negative errno, or -1 with the cause (if any) in rte_errno.
            // SAFETY: reading DPDK's per-thread errno right after the failing call.
            let errno = if rc == -1 {
                unsafe { dpdk_sys::carmine_rte_errno() }
            } else {
                rc
            };
            return Err(DpdkError::Vdev {
                name: name.into(),
                reason: format!("rc {rc}: {} (see the EAL log above)", strerror(errno)),
            });
        }
        Ok(())
    }

    /// Number of ethdev ports the EAL probed (PCI and vdev).
    pub fn port_count(&self) -> u16 {
        // SAFETY: a plain query after successful EAL init.
        unsafe { dpdk_sys::rte_eth_dev_count_avail() }
    }
}

/// The lowest lcore id [`Eal::adopt_lcore`] handed out (ids go down from `RTE_MAX_LCORE`).
static NEXT_ADOPTED: std::sync::Mutex<Option<u32>> = std::sync::Mutex::new(None);
