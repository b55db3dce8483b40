//! `carmine-agent`: the control-plane agent an OSD process embeds.
//!
//! The OSD's polling cores never run async code. The agent owns one ordinary OS thread with
//! its own single-threaded tokio runtime, and on it:
//! * boots the OSD with the monitor (retrying with backoff until the monitor answers), sends
//!   heartbeats at the interval the monitor asks for, and boots again when the monitor says the
//!   OSD was marked down;
//! * follows the map through the monitor's subscription stream, applying incrementals (or a full
//!   map when the monitor sends one), and hands every new epoch to every shard through a
//!   caller-provided [`MapSink`] (the OSD implements it by pushing into the shard's inbound
//!   SPSC ring). A sink that refuses (ring full) gets the newest map again shortly after: maps are
//!   whole `Arc<ClusterMap>`s, so a shard that skips an epoch loses nothing;
//! * serves the OSD's admin gRPC (`OsdAdmin`: status, perf counters from a [`Stats`] provider,
//!   config get/set through a [`ConfigStore`]), behind the admin bearer token;
//! * keeps the client keyring (the keys the monitor issued to data-path clients) in a
//!   [`SharedKeyring`] the OSD's shards read at handshake time: fetched right after each boot,
//!   then every [`KEYRING_REFRESH`] and whenever a heartbeat reply shows a keyring version
//!   other than the one held.
//!
//! Invariants: epochs reach each sink in increasing order, never twice. The keyring is replaced
//! whole (readers see the old or the new set, never a mix), only when the monitor's keyring
//! version changed.
//!
//! [`Agent::start`] returns once the admin listener is bound; dropping the [`Agent`] stops the
//! thread and joins it.

mod admin;
mod run;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use carmine_placement::ClusterMap;
use carmine_wire::AuthKey;
use tokio::sync::oneshot;

/// How often the agent fetches the keyring from the monitor even when no heartbeat reply
/// showed a change.
pub const KEYRING_REFRESH: Duration = Duration::from_secs(2);

/// The client keys the monitor issued, shared by the agent (writer) and the OSD shards
/// (readers, at handshake time only).
#[derive(Debug, Default)]
pub struct SharedKeyring {
    keys: RwLock<HashMap<String, AuthKey>>,
    version: AtomicU64,
}

impl SharedKeyring {
    /// Empty, version 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// 0 until the first fetch; grows by one on every [`replace`](Self::replace).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Number of client keys held.
    pub fn len(&self) -> usize {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces every key at once.
    pub fn replace(&self, keys: impl IntoIterator<Item = (String, AuthKey)>) {
        let next: HashMap<String, AuthKey> = keys.into_iter().collect();
        // A writer that panicked left a whole map (we only ever assign): keep using it.
        let mut k = self.keys.write().unwrap_or_else(|p| p.into_inner());
        *k = next;
        self.version.fetch_add(1, Ordering::AcqRel);
    }
}

impl carmine_wire::server::Keyring for SharedKeyring {
    fn key(&self, client_id: &str) -> Option<AuthKey> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(client_id)
            .cloned()
    }
}

/// Receives each new map for one shard. Called on the agent thread; must not block.
pub trait MapSink: Send + 'static {
    /// Hands `map` to the shard. `Err` means "not now" (e.g. ring full): it is offered again.
    fn deliver(&mut self, map: Arc<ClusterMap>) -> Result<(), SinkFull>;
}

/// A sink could not take a map right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("map sink is full")]
pub struct SinkFull;

/// Counters and usage the OSD exposes (called on the agent thread).
pub trait Stats: Send + Sync + 'static {
    /// Named counters, e.g. `("shard0.ops", 42)`.
    fn counters(&self) -> Vec<(String, u64)>;
    /// (used bytes, capacity bytes), reported in heartbeats for the monitor's fullness checks.
    fn usage(&self) -> (u64, u64) {
        (0, 0)
    }
}

/// The OSD's runtime configuration as the admin service sees it.
pub trait ConfigStore: Send + Sync + 'static {
    /// Value of `key`.
    fn get(&self, key: &str) -> Option<String>;
    /// Every key and value, sorted by key.
    fn list(&self) -> Vec<(String, String)>;
    /// Changes `key`; `Err` carries the reason it was refused.
    fn set(&self, key: &str, value: &str) -> Result<(), String>;
}

/// A [`ConfigStore`] over a fixed set of keys held in memory: unknown keys are refused.
/// For OSD settings that are read from it (not for settings that need a restart).
#[derive(Debug, Default)]
pub struct MemConfig {
    values: Mutex<BTreeMap<String, String>>,
}

impl MemConfig {
    /// A store with exactly these keys.
    pub fn new<K: Into<String>, V: Into<String>>(
        initial: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        MemConfig {
            values: Mutex::new(
                initial
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
        }
    }
}

impl ConfigStore for MemConfig {
    fn get(&self, key: &str) -> Option<String> {
        self.values.lock().ok()?.get(key).cloned()
    }
    fn list(&self) -> Vec<(String, String)> {
        self.values
            .lock()
            .map(|v| v.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }
    fn set(&self, key: &str, value: &str) -> Result<(), String> {
        let mut v = self
            .values
            .lock()
            .map_err(|_| "config store poisoned".to_string())?;
        match v.get_mut(key) {
            Some(slot) => {
                *slot = value.to_string();
                Ok(())
            }
            None => Err(format!("unknown config key {key:?}")),
        }
    }
}

/// What the agent needs to know.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The monitor, "host:port" or "http://host:port"; several, comma-separated, when the
    /// monitors run with etcd (a follower redirects to the leader, whom the agent follows; a
    /// monitor that fails sends the agent on to the next one in the list).
    pub mon_addr: String,
    /// The OSD's persistent uuid.
    pub uuid: String,
    /// Host name (failure domain).
    pub host: String,
    /// Client address.
    pub public_addr: String,
    /// Replication address.
    pub cluster_addr: String,
    /// Per-shard client ports (one per shard; also the number of sinks expected).
    pub shard_ports: Vec<u32>,
    /// Weight to register with on first boot.
    pub weight: f64,
    /// Where to serve the OSD admin gRPC (port 0 picks one).
    pub admin_listen: SocketAddr,
    /// Token admin calls to this OSD must present.
    pub admin_token: String,
    /// Token to present to the monitor's OSD service, if it requires one.
    pub cluster_token: Option<String>,
}

/// Agent errors.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The admin address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The agent thread or its runtime could not start.
    #[error("cannot start the agent thread: {0}")]
    Spawn(std::io::Error),
    /// Bad configuration.
    #[error("config: {0}")]
    Config(String),
}

/// Live status shared between the agent thread and its owner.
#[derive(Debug, Default)]
pub struct AgentStatus {
    booted: AtomicBool,
    id: AtomicU32,
    epoch: AtomicU64,
    heartbeats_acked: AtomicU64,
    boots: AtomicU64,
    keyring_version: AtomicU64,
}

impl AgentStatus {
    /// The OSD id once booted.
    pub fn osd_id(&self) -> Option<u32> {
        self.booted
            .load(Ordering::Acquire)
            .then(|| self.id.load(Ordering::Acquire))
    }
    /// Newest epoch handed to the sinks.
    pub fn map_epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
    /// Heartbeats the monitor acknowledged.
    pub fn heartbeats_acked(&self) -> u64 {
        self.heartbeats_acked.load(Ordering::Acquire)
    }
    /// Successful boots (more than one means the monitor marked us down at some point).
    pub fn boots(&self) -> u64 {
        self.boots.load(Ordering::Acquire)
    }
    /// The monitor's keyring version last installed in the [`SharedKeyring`] (0 before the
    /// first fetch).
    pub fn keyring_version(&self) -> u64 {
        self.keyring_version.load(Ordering::Acquire)
    }
}

/// A running agent. Dropping it stops the agent thread and waits for it.
pub struct Agent {
    status: Arc<AgentStatus>,
    admin_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Agent {
    /// Binds the admin listener, then starts the agent thread. `sinks` are the shards' map
    /// sinks, in shard order; `keyring` receives the client keys from the monitor.
    pub fn start(
        cfg: AgentConfig,
        sinks: Vec<Box<dyn MapSink>>,
        stats: Arc<dyn Stats>,
        config: Arc<dyn ConfigStore>,
        keyring: Arc<SharedKeyring>,
    ) -> Result<Agent, AgentError> {
        if cfg.uuid.is_empty() || cfg.host.is_empty() {
            return Err(AgentError::Config("uuid and host must be set".into()));
        }
        let listener =
            std::net::TcpListener::bind(cfg.admin_listen).map_err(|source| AgentError::Listen {
                addr: cfg.admin_listen,
                source,
            })?;
        let admin_addr = listener.local_addr().map_err(AgentError::Spawn)?;
        // The session announces the real address (the configured one may have port 0).
        let mut cfg = cfg;
        cfg.admin_listen = admin_addr;
        listener.set_nonblocking(true).map_err(AgentError::Spawn)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AgentError::Spawn)?;
        let status = Arc::new(AgentStatus::default());
        let (stop, stop_rx) = oneshot::channel();
        let st = status.clone();
        let thread = std::thread::Builder::new()
            .name("carmine-agent".into())
            .spawn(move || {
                rt.block_on(run::agent_main(
                    cfg, listener, sinks, stats, config, keyring, st, stop_rx,
                ))
            })
            .map_err(AgentError::Spawn)?;
        Ok(Agent {
            status,
            admin_addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where the OSD admin gRPC listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Live status.
    pub fn status(&self) -> &AgentStatus {
        &self.status
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
