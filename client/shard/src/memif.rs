//! The client's end of a kernel-free link: a DPDK `net_memif` port (shared-memory rings with
//! the OSD's memif port, no kernel on the data path) and the smoltcp stack on it.
//!
//! The OSD's port is the memif master (`net.device = "net_memif0,role=master,socket=…"`), this
//! one the slave: it connects to the master's socket when the port starts, and the link is up
//! once the two have exchanged their regions. DPDK's memif driver needs the EAL's
//! multi-process channel, so the EAL here keeps its runtime files (not `--in-memory`) under a
//! prefix of its own; [`MemifPort::cleanup`] removes its hugepage files at the end.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use carmine_dpdk::{DpdkError, Eal, EalConfig, EthPort, PktMbufPool};
use carmine_net::dpdk::{DpdkDevice, LinkChecksums};
use carmine_net::{SmolConfig, SmolStack};

use crate::ShardClientError;

/// Where the client's memif port attaches and what address its stack takes.
#[derive(Debug, Clone)]
pub struct MemifConfig {
    /// The master's (the OSD's) memif control socket.
    pub socket: PathBuf,
    /// The client stack's address and prefix on the link.
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    /// IP MTU (the memif buffers are 2 KiB: up to 1500 without chained buffers).
    pub mtu: u16,
    /// EAL memory, MiB of hugepages.
    pub mem_mib: u32,
    /// How long to wait for the link to come up.
    pub link_timeout: Duration,
}

impl MemifConfig {
    pub fn new(socket: impl Into<PathBuf>, ip: Ipv4Addr, prefix_len: u8) -> Self {
        MemifConfig {
            socket: socket.into(),
            ip,
            prefix_len,
            mtu: 1500,
            mem_mib: 256,
            link_timeout: Duration::from_secs(10),
        }
    }
}

const HUGETLBFS: &str = "/dev/hugepages";
const PORT: &str = "net_memif0";
/// Mbufs of the port's one queue pair (RX ring, TX in flight, smoltcp's frames).
const MBUFS: u32 = 8191;
const DESC: u16 = 1024;

/// A started memif port with its mbuf pool, until the shard takes the pool for its stack.
pub struct MemifPort {
    eal: &'static Eal,
    port: Arc<EthPort>,
    pool: Mutex<Option<PktMbufPool>>,
    cfg: MemifConfig,
}

impl MemifPort {
    /// Initialises the EAL with the memif vdev, starts the port and waits for the link.
    pub fn open(cfg: &MemifConfig) -> Result<Self, ShardClientError> {
        if cfg.mtu > 1500 || cfg.mtu < 576 {
            return Err(ShardClientError::Config(format!(
                "memif MTU {} is outside 576..=1500 (2 KiB memif buffers)",
                cfg.mtu
            )));
        }
        let socket = cfg.socket.to_str().ok_or_else(|| {
            ShardClientError::Config(format!("{}: not UTF-8", cfg.socket.display()))
        })?;
        if socket.contains(',') {
            return Err(ShardClientError::Config(format!(
                "{socket}: a memif socket path cannot contain ','"
            )));
        }
        let eal = Eal::init(&EalConfig {
            app: "carmine-client".into(),
            no_pci: true,
            // memif needs the multi-process channel, which --in-memory switches off.
            in_memory: false,
            file_prefix: Some(format!("carmine-client-{}", std::process::id())),
            mem_mb: Some(cfg.mem_mib),
            vdevs: vec![format!("{PORT},role=slave,socket={socket}")],
            log_level: Some("*:warning".into()),
            ..EalConfig::default()
        })?;
        let pool = PktMbufPool::new(eal, "client-shard0", MBUFS, 256, 2176, -1)?;
        let id = EthPort::id_by_name(eal, PORT)?;
        let port = EthPort::start(eal, id, &[&pool], DESC, false)?;
        let deadline = Instant::now() + cfg.link_timeout;
        while !port.link_up() {
            if Instant::now() >= deadline {
                eal.remove_shared_files(Path::new(HUGETLBFS));
                return Err(ShardClientError::LinkDown {
                    socket: cfg.socket.clone(),
                    waited: cfg.link_timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(MemifPort {
            eal,
            port: Arc::new(port),
            pool: Mutex::new(Some(pool)),
            cfg: cfg.clone(),
        })
    }

    /// The smoltcp stack on the port, for the shard that polls it (once: the pool moves into
    /// the stack's device). Call it on that shard's thread: it gives the thread a DPDK lcore id
    /// ([`Eal::adopt_lcore`]), so that its mbufs come from the pool's per-lcore cache.
    pub fn stack(
        &self,
        tweak: impl FnOnce(&mut SmolConfig),
    ) -> Result<SmolStack<DpdkDevice>, ShardClientError> {
        let pool = self
            .pool
            .lock()
            .map_err(|_| ShardClientError::Config("memif pool lock poisoned".into()))?
            .take()
            .ok_or_else(|| ShardClientError::Config("the memif port's stack was taken".into()))?;
        self.eal.adopt_lcore()?;
        let mut smol = SmolConfig {
            mac: self.port.mac()?,
            ip: self.cfg.ip,
            prefix_len: self.cfg.prefix_len,
            random_seed: u64::from(std::process::id()),
            ..SmolConfig::default()
        };
        tweak(&mut smol);
        // The OSD's end of the link skips them too (carmine_net::dpdk::LinkChecksums).
        let dev = DpdkDevice::new(self.port.clone(), 0, pool, usize::from(self.cfg.mtu))
            .with_checksums(LinkChecksums::Skip);
        SmolStack::new(dev, smol, None).map_err(ShardClientError::Net)
    }

    pub fn port(&self) -> &EthPort {
        &self.port
    }

    /// Removes this process's hugepage files and EAL runtime directory (the EAL keeps them,
    /// not being `--in-memory`). Call once the shard that used the port stopped.
    pub fn cleanup(&self) {
        self.eal.remove_shared_files(Path::new(HUGETLBFS));
    }
}

impl From<DpdkError> for ShardClientError {
    fn from(e: DpdkError) -> Self {
        ShardClientError::Dpdk(e)
    }
}
