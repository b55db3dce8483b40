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
//!   config get/set through a [`ConfigStore`]), behind the admin bearer token, over TLS with
//!   the OSD's certificate unless [`AgentConfig::admin_tls`] is plain text; the monitor and the
//!   peers' admin services are dialled as [`AgentConfig::client_tls`] says (one choice for
//!   the whole agent, see [`carmine_proto::tls`]);
//! * keeps the keyring (the keys the monitor issued: data-path clients' and OSDs', each with
//!   its [`Role`]) in a [`SharedKeyring`] the OSD's shards read at handshake time: fetched
//!   right after each boot, then every [`KEYRING_REFRESH`] and whenever a heartbeat reply shows
//!   a keyring version other than the one held;
//! * keeps this OSD's own identity (key id `osd.<id>` and its key, from each boot reply) in the
//!   same [`SharedKeyring`] ([`SharedKeyring::identity`], also [`Agent::identity`]): what the
//!   OSD presents when it opens a replica connection to a peer;
//! * reports a failed object store ([`Stats::store_failure`]) with its heartbeats and boots:
//!   the monitor marks the OSD down and shows the reason in health; the agent stops renewing
//!   the read lease and does not boot again while the store is failed;
//! * scrubs (module [`scrub`]): serves this OSD's digest of a PG (`OsdAdmin.PgDigest`, from
//!   the shards through a caller-provided [`scrub::PgDigests`]), scrubs the PGs it is primary
//!   for on request (`OsdAdmin.ScrubPg`) and every `scrub_interval` in the background
//!   ([`ScrubSetup`]), and reports the inconsistent ones to the monitor with its heartbeats.
//!
//! * serves Prometheus metrics (module [`metrics`](crate#metrics)) over HTTP when
//!   [`AgentConfig::metrics_listen`] is set, and reports that address with its boots and
//!   heartbeats so that the monitor can list it for Prometheus's service discovery.
//!
//! # Metrics
//!
//! `GET /metrics` on [`AgentConfig::metrics_listen`] answers in the Prometheus text format
//! (crate `carmine-metrics`). Nothing is counted for it: on each scrape the agent asks the
//! [`Stats`] provider to add the OSD's series ([`Stats::metrics`]: the OSD reads the counters
//! its shards publish, the Seastar pattern) and adds its own: `carmine_osd_booted`,
//! `carmine_osd_map_epoch`, `carmine_osd_boots_total`, `carmine_osd_heartbeats_acked_total`,
//! `carmine_osd_keyring_version`, `carmine_osd_store_used_bytes`,
//! `carmine_osd_store_capacity_bytes`, `carmine_osd_store_failed`. Every sample carries the
//! label `osd="<id>"` once the OSD has booted.
//!
//! Invariants: epochs reach each sink in increasing order, never twice. The keyring is replaced
//! whole (readers see the old or the new set, never a mix), only when the monitor's keyring
//! version changed. A key's role is the monitor's: a key the monitor sent as an OSD's is held
//! only under that OSD's id (`osd.<n>` with [`Role::Osd`]`(n)`), and a client key is never
//! held under an id starting with `osd.` (both are skipped with a warning), so
//! `role(id) == Some(Role::Osd(n))` implies `id == "osd.<n>"`. The identity is set before
//! [`AgentStatus::osd_id`] reports the boot.
//!
//! [`Agent::start`] returns once the admin listener is bound; dropping the [`Agent`] stops the
//! thread and joins it.

mod admin;
mod fsid;
mod metrics;
pub mod peering;
pub mod peering_plan;
mod run;
pub mod scrub;
mod scrubber;

pub use fsid::cluster_fsid;
pub use scrubber::{PeerError, ScrubError};

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use carmine_placement::ClusterMap;
use carmine_proto::tls::{ClientTls, ServerTls, TlsError};
/// The key type of [`SharedKeyring`] and [`Agent::identity`] (the data path's handshake key).
pub use carmine_wire::AuthKey;
use tokio::sync::oneshot;
use tonic::metadata::{Ascii, MetadataValue};

/// How often the agent fetches the keyring from the monitor even when no heartbeat reply
/// showed a change.
pub const KEYRING_REFRESH: Duration = Duration::from_secs(2);

/// What a key lets its holder be on the data path (the monitor's `KeyRole`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A data-path client: client ops only.
    Client,
    /// OSD number `.0`, whose key id is `osd.<n>`: may send replica ops as that OSD.
    Osd(u32),
    /// An administrator: every OsdAdmin call; on the data path, a client.
    Admin,
}

/// Key ids starting with this are OSD keys (the monitor refuses them to clients).
pub const OSD_KEY_PREFIX: &str = "osd.";

/// The key id of OSD `id` (`osd.<id>`), as the monitor names OSD keys.
pub fn osd_key_id(id: u32) -> String {
    format!("{OSD_KEY_PREFIX}{id}")
}

/// The keys the monitor issued (each with its [`Role`]), shared by the agent (writer) and the
/// OSD shards (readers, at handshake time only), and this OSD's own identity.
#[derive(Debug, Default)]
pub struct SharedKeyring {
    /// One map lookup gives both the key and the role.
    keys: RwLock<HashMap<String, (AuthKey, Role)>>,
    version: AtomicU64,
    /// This OSD's key id and key, from its last boot.
    identity: RwLock<Option<(String, AuthKey)>>,
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

    /// Number of keys held (clients' and OSDs').
    pub fn len(&self) -> usize {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces every key at once; each is a client's ([`Role::Client`]).
    pub fn replace(&self, keys: impl IntoIterator<Item = (String, AuthKey)>) {
        self.replace_with_roles(keys.into_iter().map(|(id, k)| (id, k, Role::Client)));
    }

    /// Replaces every key at once, each with its role. The caller keeps the naming rule
    /// (`Role::Osd(n)` under `osd.<n>` only); the agent checks what the monitor sends.
    pub fn replace_with_roles(&self, keys: impl IntoIterator<Item = (String, AuthKey, Role)>) {
        let next: HashMap<String, (AuthKey, Role)> = keys
            .into_iter()
            .map(|(id, key, role)| (id, (key, role)))
            .collect();
        // A writer that panicked left a whole map (we only ever assign): keep using it.
        let mut k = self.keys.write().unwrap_or_else(|p| p.into_inner());
        *k = next;
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// The role of the key `id`, if one is held. After a handshake authenticated `id`, a
    /// replica op is allowed only when this is `Some(Role::Osd(primary))`.
    pub fn role(&self, id: &str) -> Option<Role> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|(_, role)| *role)
    }

    /// The key and role of `id` in one lookup.
    pub fn key_and_role(&self, id: &str) -> Option<(AuthKey, Role)> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Who presents `proof` as the data-path key of `id` (the OSD admin service's check, see
    /// `carmine_proto::auth`); `None` when `id` has no key or `proof` is not its key.
    pub fn verify(&self, id: &str, proof: &[u8; carmine_wire::SECRET_LEN]) -> Option<Role> {
        let (key, role) = self.key_and_role(id)?;
        carmine_proto::auth::same_bytes(key.as_bytes(), proof).then_some(role)
    }

    /// What this OSD presents to its peers' admin services (peering, scrub digests):
    /// `Bearer osd.<n>:<its data-path key>`. `None` before its first boot.
    pub fn peer_bearer(&self) -> Option<MetadataValue<Ascii>> {
        let (id, key) = self.identity()?;
        carmine_proto::auth::key_bearer(&id, key.as_bytes()).ok()
    }

    /// This OSD's own data-path identity: its key id (`osd.<id>`) and key, as the monitor
    /// gave them at its last boot. `None` before the first boot, or when the monitor issues no
    /// OSD keys (an older monitor).
    pub fn identity(&self) -> Option<(String, AuthKey)> {
        self.identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets (or clears) this OSD's identity. The agent calls it at every boot.
    pub fn set_identity(&self, identity: Option<(String, AuthKey)>) {
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) = identity;
    }
}

impl carmine_wire::server::Keyring for SharedKeyring {
    fn key(&self, client_id: &str) -> Option<AuthKey> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(client_id)
            .map(|(key, _)| key.clone())
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
    /// The oldest map epoch any shard has applied (`None`: not known; the agent then goes by
    /// the epoch it handed them). Read leases are renewed only up to it.
    fn applied_epoch(&self) -> Option<u64> {
        None
    }
    /// Why the OSD's object store failed (`None`: it works). Once failed, the agent reports
    /// it with every heartbeat (and boot) within [`STORE_FAILURE_CHECK`], no longer renews
    /// the read lease, and does not boot the OSD up again (the monitor keeps it down).
    fn store_failure(&self) -> Option<String> {
        None
    }
    /// The client I/O served since the process started (cumulative), reported with every
    /// heartbeat for the monitor's I/O rates (`None`: not counted).
    fn client_io(&self) -> Option<carmine_proto::v1::ClientIoCounters> {
        None
    }
    /// Adds the OSD's series to a scrape of `/metrics` (called on the agent thread for each
    /// scrape: read the shards' published counters, never wait for a shard). The agent adds
    /// its own series and the `osd` label.
    fn metrics(&self, _out: &mut carmine_metrics::Exposition) {}
}

/// How often the agent looks for a store failure between heartbeats: a failure reaches the
/// monitor within this (plus one call) rather than at the next heartbeat.
pub const STORE_FAILURE_CHECK: Duration = Duration::from_millis(100);

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
    /// Where to serve Prometheus metrics over HTTP (`GET /metrics`; port 0 picks one);
    /// `None`: not served. See [`metrics`](crate#metrics).
    pub metrics_listen: Option<SocketAddr>,
    /// This OSD's key (`osd.<n>` and its secret, from `carmine osd new`): what it presents
    /// to the monitor. `None`: no credential (a monitor run with `--insecure`). Callers of
    /// this OSD's admin service are checked against the keyring, so no admin token is held.
    pub credential: Option<OsdCredential>,
    /// How the agent dials the monitor and its peers' admin services (TLS verified against
    /// the cluster CA, or plain text): see [`carmine_proto::tls`].
    pub client_tls: ClientTls,
    /// How the admin service serves (TLS with this OSD's certificate, or plain text).
    pub admin_tls: ServerTls,
}

/// An OSD's key id and secret.
#[derive(Clone)]
pub struct OsdCredential {
    /// `osd.<n>`.
    pub id: String,
    /// The 32-byte secret.
    pub secret: [u8; carmine_proto::auth::SECRET_LEN],
}

impl std::fmt::Debug for OsdCredential {
    // Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OsdCredential({})", self.id)
    }
}

impl OsdCredential {
    /// The OSD id its key id names, if it is `osd.<n>`.
    pub fn osd_id(&self) -> Option<u32> {
        self.id.strip_prefix(OSD_KEY_PREFIX)?.parse().ok()
    }
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
    /// Told to stop before the monitor answered.
    #[error("stopped before the monitor answered")]
    Stopped,
    /// The monitor's map names no cluster fsid (a monitor from before fsids).
    #[error("the monitor at {0} gives no cluster fsid: upgrade the monitor first")]
    NoFsid(String),
    /// The admin service's TLS could not be set up.
    #[error("admin service tls: {0}")]
    Tls(#[from] TlsError),
}

/// How an OSD scrubs: where its PG digests come from, and how often each PG it is primary for
/// is scrubbed in the background (`None` or zero: only on request).
pub struct ScrubSetup {
    pub digests: Arc<dyn scrub::PgDigests>,
    pub interval: Option<Duration>,
}

/// How an OSD peers: its shards' side of peering, the events they send, and the read lease
/// they check (see [`peering`]).
pub struct PeeringSetup {
    pub shards: Arc<dyn peering::PeeringShards>,
    pub events: peering::EventReceiver,
    pub lease: Arc<peering::Lease>,
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
    keyring: Arc<SharedKeyring>,
    admin_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Agent {
    /// Binds the admin listener, then starts the agent thread. `sinks` are the shards' map
    /// sinks, in shard order; `keyring` receives the client keys from the monitor. This agent
    /// serves no PG digests and does not scrub (see [`Agent::start_with_scrub`]).
    pub fn start(
        cfg: AgentConfig,
        sinks: Vec<Box<dyn MapSink>>,
        stats: Arc<dyn Stats>,
        config: Arc<dyn ConfigStore>,
        keyring: Arc<SharedKeyring>,
    ) -> Result<Agent, AgentError> {
        Self::start_with_scrub(cfg, sinks, stats, config, keyring, None)
    }

    /// [`Agent::start`], with the OSD's PG digests and background scrub interval.
    pub fn start_with_scrub(
        cfg: AgentConfig,
        sinks: Vec<Box<dyn MapSink>>,
        stats: Arc<dyn Stats>,
        config: Arc<dyn ConfigStore>,
        keyring: Arc<SharedKeyring>,
        scrub: Option<ScrubSetup>,
    ) -> Result<Agent, AgentError> {
        Self::start_osd(cfg, sinks, stats, config, keyring, scrub, None)
    }

    /// [`Agent::start_with_scrub`], with peering (a whole OSD's agent).
    pub fn start_osd(
        cfg: AgentConfig,
        sinks: Vec<Box<dyn MapSink>>,
        stats: Arc<dyn Stats>,
        config: Arc<dyn ConfigStore>,
        keyring: Arc<SharedKeyring>,
        scrub: Option<ScrubSetup>,
        peering: Option<PeeringSetup>,
    ) -> Result<Agent, AgentError> {
        if cfg.uuid.is_empty() || cfg.host.is_empty() {
            return Err(AgentError::Config("uuid and host must be set".into()));
        }
        let admin_server = cfg.admin_tls.server()?;
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
        let metrics_listener = match cfg.metrics_listen {
            Some(addr) => {
                let l = std::net::TcpListener::bind(addr)
                    .map_err(|source| AgentError::Listen { addr, source })?;
                l.set_nonblocking(true).map_err(AgentError::Spawn)?;
                cfg.metrics_listen = Some(l.local_addr().map_err(AgentError::Spawn)?);
                Some(l)
            }
            None => None,
        };
        let metrics_addr = cfg.metrics_listen;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AgentError::Spawn)?;
        let status = Arc::new(AgentStatus::default());
        let (stop, stop_rx) = oneshot::channel();
        let st = status.clone();
        let kr = keyring.clone();
        let thread = std::thread::Builder::new()
            .name("carmine-agent".into())
            .spawn(move || {
                rt.block_on(run::agent_main(
                    cfg,
                    listener,
                    metrics_listener,
                    admin_server,
                    sinks,
                    stats,
                    config,
                    kr,
                    st,
                    scrub,
                    peering,
                    stop_rx,
                ))
            })
            .map_err(AgentError::Spawn)?;
        Ok(Agent {
            status,
            keyring,
            admin_addr,
            metrics_addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where the OSD admin gRPC listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Where `/metrics` is served (`None`: not configured).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Live status.
    pub fn status(&self) -> &AgentStatus {
        &self.status
    }

    /// This OSD's data-path identity from its last boot: key id `osd.<id>` and its key (see
    /// [`SharedKeyring::identity`], the same value).
    pub fn identity(&self) -> Option<(String, AuthKey)> {
        self.keyring.identity()
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

#[cfg(test)]
mod tests {
    use super::*;
    use carmine_wire::server::Keyring;

    fn k(b: u8) -> AuthKey {
        AuthKey::new([b; carmine_wire::SECRET_LEN])
    }

    #[test]
    fn shared_keyring_reports_roles_and_the_identity() {
        let kr = SharedKeyring::new();
        assert_eq!(kr.role("osd.1"), None);
        assert_eq!(kr.identity(), None);
        kr.replace_with_roles([
            ("client.a".to_string(), k(1), Role::Client),
            ("osd.1".to_string(), k(2), Role::Osd(1)),
            ("osd.7".to_string(), k(3), Role::Osd(7)),
        ]);
        assert_eq!(kr.version(), 1);
        assert_eq!(kr.len(), 3);
        assert_eq!(kr.role("client.a"), Some(Role::Client));
        assert_eq!(kr.role("osd.1"), Some(Role::Osd(1)));
        assert_eq!(kr.role("osd.7"), Some(Role::Osd(7)));
        assert_eq!(kr.role("osd.2"), None);
        // The handshake's lookup: the key, whatever the role.
        assert_eq!(kr.key("osd.7"), Some(k(3)));
        assert_eq!(kr.key("client.a"), Some(k(1)));
        assert_eq!(kr.key_and_role("osd.1"), Some((k(2), Role::Osd(1))));
        // `replace` (client keys only) drops every role with the old set.
        kr.replace([("client.b".to_string(), k(4))]);
        assert_eq!(kr.version(), 2);
        assert_eq!(kr.role("client.b"), Some(Role::Client));
        assert_eq!(kr.role("osd.1"), None);
        // The identity is apart from the keyring and survives its replacement.
        kr.set_identity(Some((osd_key_id(7), k(3))));
        kr.replace([]);
        assert_eq!(kr.identity(), Some(("osd.7".to_string(), k(3))));
        kr.set_identity(None);
        assert_eq!(kr.identity(), None);
    }
}
