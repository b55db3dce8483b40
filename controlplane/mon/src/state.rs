//! The monitor's state machine: the authoritative map, OSD liveness and the map history.
//!
//! Every change goes through [`Monitor::commit`]: build the next map as a copy of the current
//! one, persist it, then publish its incremental. A change that turns out to be a no-op makes
//! no epoch. Liveness (last heartbeat, when an OSD went down, failure reports, usage) is soft
//! state: it is not persisted, and a restarted monitor gives every OSD a fresh grace period.
//!
//! The state is plain synchronous code behind one mutex held by the gRPC handlers; no lock is
//! held across an `.await`.
//!
//! Keys (the data path's handshake secrets) live beside the map, not in it: a keyring of
//! (key id → 32 random bytes and a role) with a version that grows by one on every change.
//! Each change is committed to the store (whole keyring) before memory changes or anyone is
//! told. Two roles: clients' keys (`auth add`), and each OSD's own key, id `osd.<id>`
//! ([`osd_key_id`]), created at the OSD's first boot, returned to that OSD in every boot reply
//! (the same key for every boot of the same uuid), and removed with the OSD (`osd rm`). Ids
//! starting with [`OSD_KEY_PREFIX`] are reserved: `auth add` and `auth rm` refuse them, so a
//! client can never hold a key that names an OSD.
//! Each OSD's admin address (from its boot and heartbeats) is soft state, like liveness.
//!
//! Scrub results are soft state too: each OSD's heartbeat carries the PGs it is primary for
//! whose last scrub found inconsistent objects (the whole set each time, bounded), kept per
//! OSD until its next heartbeat replaces it or the OSD is removed. [`Monitor::inconsistent_pgs`]
//! merges them per PG, for health (`PG_INCONSISTENT`) and `carmine pg ls`.
//!
//! PG history ([`crate::history`]) is durable: each `RecordIntervals`/`TrimPgHistory` change
//! is committed to the store before memory changes or the caller is answered, and loaded at
//! open. A PG's history goes with its PG (pool removed, pg_num lowered): dropped after the map
//! commit that removed the PG (a failure then leaves rows of a PG that no longer exists, which
//! the next open drops; pool ids are never reused).
//!
//! PG stats ([`crate::pgstats`]) and the lease clock ([`crate::lease`]: commit instants of
//! recent epochs, each OSD's last heartbeat) are soft state.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carmine_placement::{ClusterMap, Incremental, Osd, Pool};
use carmine_proto::v1;
use tokio::sync::broadcast;

use crate::lease::EpochClock;
use crate::pgstats::PgStats;
use crate::store::{Backend, PgHistoryChange, PgKey, StoreError};

/// Cluster flags the monitor knows: `noout` (down OSDs are not marked out), `nodown` (missed
/// heartbeats and failure reports do not mark OSDs down; an admin still can).
pub const FLAGS: &[&str] = &["noout", "nodown"];

/// Largest pool `size` the OSDs replicate: a primary sends each mutation to every other member
/// of the acting set (at most 4 peers, `carmine-osd`'s `replication::MAX_PEERS`), so the
/// monitor refuses a pool (or a change of size) beyond this.
pub const MAX_POOL_SIZE_SUPPORTED: u32 = 5;

/// At most this many inconsistent PGs are kept per OSD report, with at most
/// [`MAX_INCONSISTENT_NAMES`] object names each (the agent sends no more than that either).
pub const MAX_INCONSISTENT_PGS: usize = 64;
/// See [`MAX_INCONSISTENT_PGS`].
pub const MAX_INCONSISTENT_NAMES: usize = 16;

pub use crate::keyring::{
    osd_key_id, validate_client_id, KeyRole, Principal, CLIENT_KEY_LEN, MAX_CLIENT_ID_LEN,
    OSD_KEY_PREFIX,
};
use crate::keyring::{random_key, refuse_osd_id, KeyEntry, Keyring, ADMIN_KEY_ID};

/// A new cluster fsid: a random (version 4) uuid in its usual text form.
pub fn new_fsid() -> Result<String, MonError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| MonError::Random(e.to_string()))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

fn store_failed_error(id: u32, why: &str) -> MonError {
    MonError::Precondition(format!(
        "osd.{id} reported its store failed ({why}): it stays down until its process restarts"
    ))
}

/// Timing and policy knobs of the monitor.
#[derive(Debug, Clone)]
pub struct Policy {
    /// How often OSDs must heartbeat.
    pub heartbeat_interval: Duration,
    /// An up OSD not heard from for this long is marked down.
    pub down_grace: Duration,
    /// A down OSD stays in for this long before it is marked out (unless flag `noout`).
    pub out_interval: Duration,
    /// Epochs of history kept (incrementals and full maps).
    pub history: u64,
    /// Distinct up reporters needed to mark an OSD down from failure reports.
    pub min_failure_reporters: usize,
    /// Usage ratio above which an OSD is nearly full (HEALTH_WARN).
    pub nearfull_ratio: f64,
    /// Usage ratio above which an OSD is full (HEALTH_ERR).
    pub full_ratio: f64,
}

/// Errors of monitor operations, mapped to gRPC codes by the service layer.
#[derive(Debug, thiserror::Error)]
pub enum MonError {
    /// Bad request argument.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// No such OSD / pool / epoch.
    #[error("not found: {0}")]
    NotFound(String),
    /// Name already taken.
    #[error("already exists: {0}")]
    Exists(String),
    /// Not allowed in the current state.
    #[error("precondition failed: {0}")]
    Precondition(String),
    /// A pool size above [`MAX_POOL_SIZE_SUPPORTED`]: valid in principle, but the OSDs
    /// replicate to at most that many copies.
    #[error("pool size {size} is not supported: the OSDs keep at most {max} copies of an object")]
    ReplicationUnsupported {
        /// The size asked for.
        size: u32,
        /// [`MAX_POOL_SIZE_SUPPORTED`].
        max: u32,
    },
    /// Persistence failed; the change was not made.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The OS random number generator failed; no key was issued.
    #[error("cannot generate a key: {0}")]
    Random(String),
}

/// Liveness of one OSD (soft state).
#[derive(Debug, Clone)]
struct Liveness {
    last_heartbeat: Instant,
    /// The last heartbeat or boot received from this id, answered whatever the answer (the
    /// lease bound of [`crate::lease`]); `last_heartbeat` counts only the accepted ones.
    last_reply: Instant,
    down_since: Option<Instant>,
    /// Marked out by the monitor (not by an admin): a boot marks it in again.
    auto_out: bool,
    used_bytes: u64,
    capacity_bytes: u64,
    /// reporter id → when it reported this OSD failed.
    failure_reports: HashMap<u32, Instant>,
}

impl Liveness {
    fn new(now: Instant, up: bool) -> Self {
        Liveness {
            last_heartbeat: now,
            last_reply: now,
            down_since: (!up).then_some(now),
            auto_out: false,
            used_bytes: 0,
            capacity_bytes: 0,
            failure_reports: HashMap::new(),
        }
    }
}

/// What an OSD sends at boot.
#[derive(Debug, Clone, Default)]
pub struct BootInfo {
    /// Persistent identity.
    pub uuid: String,
    /// Host (failure domain).
    pub host: String,
    /// Client address.
    pub public_addr: String,
    /// Replication address.
    pub cluster_addr: String,
    /// Per-shard ports.
    pub shard_ports: Vec<u32>,
    /// Weight for a new OSD.
    pub weight: f64,
    /// The id the OSD believes it has, if any.
    pub id: Option<u32>,
    /// The first boot of this OSD process (see `BootRequest.new_process`).
    pub new_process: bool,
    /// The OSD whose key the caller presented: it boots as that id, with the uuid its key
    /// was issued for. `None`: an insecure monitor's anonymous boot, or an admin's.
    pub authenticated_as: Option<u32>,
    /// Why the OSD's store failed, when it did (`BootRequest.store_failure`): the boot is
    /// refused and the failure recorded.
    pub store_failure: Option<String>,
}

/// Longest store failure reason the monitor keeps (a longer one is cut).
pub const MAX_FAILURE_REASON: usize = 512;

/// Why an OSD's object store failed, as it reported it (soft state).
#[derive(Debug, Clone, PartialEq, Eq)]
struct StoreFailure {
    reason: String,
}

/// What a boot gave the OSD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booted {
    /// The OSD's id.
    pub id: u32,
    /// The epoch in which it is up.
    pub epoch: u64,
    /// Its own data-path key (of key id [`osd_key_id`]`(id)`; never its secret).
    pub key: [u8; CLIENT_KEY_LEN],
}

/// The monitor.
pub struct Monitor {
    policy: Policy,
    store: Backend,
    map: Arc<ClusterMap>,
    /// Full maps of the last `history` epochs, oldest first (current one last).
    maps: VecDeque<Arc<ClusterMap>>,
    /// Incrementals producing the epochs of `maps` after the first, oldest first.
    incs: VecDeque<Arc<Incremental>>,
    live: BTreeMap<u32, Liveness>,
    updates: broadcast::Sender<Arc<Incremental>>,
    started: Instant,
    /// Every key and its role (as stored).
    keyring: Keyring,
    /// OSD id → its admin service address (soft state: from boots and heartbeats).
    admin_addrs: HashMap<u32, String>,
    /// Where each OSD serves `/metrics` (from its boots and heartbeats; not in the map).
    metrics_addrs: HashMap<u32, String>,
    /// OSD id → the inconsistent PGs its last heartbeat reported (soft state).
    scrub_reports: BTreeMap<u32, Vec<v1::InconsistentPg>>,
    /// PG → its recorded intervals, oldest first (as stored; no entry = none).
    pg_history: BTreeMap<PgKey, Vec<v1::PgInterval>>,
    /// Commit instants of recent epochs (soft state, for leases).
    epochs: EpochClock,
    /// The primaries' PG reports (soft state).
    pg_stats: PgStats,
    /// The OSDs' client I/O counters over a short window (soft state), for `status`.
    client_io: crate::client_io::ClientIo,
    /// Runs with `--insecure` (health warns).
    insecure: bool,
    /// OSD id → its store failure, from its heartbeats or boots (soft state: the OSD repeats
    /// it with every heartbeat). Cleared by a boot of a new process without a failure, or
    /// `osd rm`.
    store_failures: BTreeMap<u32, StoreFailure>,
}

impl Monitor {
    /// Opens the monitor on `store`: loads the history, or creates epoch 1 (an empty map).
    pub fn open(store: impl Into<Backend>, policy: Policy) -> Result<Self, MonError> {
        let store = store.into();
        let now = Instant::now();
        let stored = store.load()?;
        let (updates, _) = broadcast::channel(1024);
        let mut mon = Monitor {
            policy,
            store,
            map: Arc::new(ClusterMap::default()),
            maps: VecDeque::new(),
            incs: VecDeque::new(),
            live: BTreeMap::new(),
            updates,
            started: now,
            keyring: Keyring::default(),
            admin_addrs: HashMap::new(),
            metrics_addrs: HashMap::new(),
            scrub_reports: BTreeMap::new(),
            pg_history: BTreeMap::new(),
            epochs: EpochClock::new(now, 0),
            pg_stats: PgStats::default(),
            client_io: Default::default(),
            insecure: false,
            store_failures: BTreeMap::new(),
        };
        let mut legacy_osd_ids = Vec::new();
        if let Some(k) = mon.store.load_keyring()? {
            let (keyring, dropped) = Keyring::from_stored(k)?;
            mon.keyring = keyring;
            legacy_osd_ids = dropped;
        }
        if !legacy_osd_ids.is_empty() {
            tracing::warn!(
                ids = ?legacy_osd_ids,
                "client keys named like OSD keys removed: ids starting with \"osd.\" are reserved"
            );
            let keys = mon.keyring.keys().clone();
            mon.commit_keys(keys)?;
        }
        if stored.is_empty() {
            // The cluster's identity is made with its store, once.
            let first = ClusterMap {
                epoch: 1,
                fsid: new_fsid()?,
                ..Default::default()
            };
            tracing::info!(fsid = %first.fsid, "new cluster");
            mon.store.commit(&first, mon.policy.history)?;
            mon.maps.push_back(Arc::new(first));
        } else {
            for m in stored {
                if let Some(prev) = mon.maps.back() {
                    // Only consecutive epochs make an incremental chain.
                    if prev.epoch + 1 == m.epoch {
                        mon.incs.push_back(Arc::new(ClusterMap::diff(prev, &m)));
                    } else {
                        mon.incs.clear();
                        mon.maps.clear();
                    }
                }
                mon.maps.push_back(Arc::new(m));
            }
        }
        mon.map = mon.maps.back().cloned().unwrap_or_default();
        mon.live = mon
            .map
            .osds
            .values()
            .map(|o| (o.id, Liveness::new(now, o.up)))
            .collect();
        // Every epoch loaded was committed before this start (see `lease`).
        mon.epochs = EpochClock::new(now, mon.map.epoch);
        mon.pg_history = mon.store.load_pg_history()?.into_iter().collect();
        mon.prune_pg_history();
        if mon.map.fsid.is_empty() {
            // A store made before fsids: the cluster gets its identity now, in a new epoch
            // (persisted like any map, so every later start and every monitor sees the same).
            let mut next = mon.next_map();
            next.fsid = new_fsid()?;
            tracing::warn!(fsid = %next.fsid, "the stored map has no cluster fsid: created one");
            mon.commit(next)?;
        }
        tracing::info!(
            epoch = mon.map.epoch,
            osds = mon.map.osds.len(),
            pools = mon.map.pools.len(),
            clients = mon.keyring.keys().len(),
            fsid = %mon.map.fsid,
            "monitor state loaded"
        );
        Ok(mon)
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The current map.
    pub fn map(&self) -> Arc<ClusterMap> {
        self.map.clone()
    }

    /// A map at `epoch` (0 = current), if still held.
    pub fn map_at(&self, epoch: u64) -> Option<Arc<ClusterMap>> {
        if epoch == 0 {
            return Some(self.map.clone());
        }
        self.maps.iter().find(|m| m.epoch == epoch).cloned()
    }

    /// Incrementals from `have + 1` to the current epoch, or `None` if the window does not
    /// reach back that far.
    pub fn incrementals_since(&self, have: u64) -> Option<Vec<Arc<Incremental>>> {
        if have == self.map.epoch {
            return Some(Vec::new());
        }
        let first = self.incs.front()?.epoch;
        if have == 0 || have + 1 < first || have > self.map.epoch {
            return None;
        }
        Some(
            self.incs
                .iter()
                .filter(|i| i.epoch > have)
                .cloned()
                .collect(),
        )
    }

    /// A receiver of every incremental committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Incremental>> {
        self.updates.subscribe()
    }

    /// Time since this monitor started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Usage (used, capacity) of every OSD that reported it.
    pub fn usage(&self) -> impl Iterator<Item = (u32, u64, u64)> + '_ {
        self.live
            .iter()
            .map(|(id, l)| (*id, l.used_bytes, l.capacity_bytes))
    }

    /// Every OSD of the map with its last reported usage and the PGs the map places on it
    /// (`osd df`), sorted by id.
    pub fn osd_df(&self) -> Vec<v1::OsdDfRow> {
        let mut pgs: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
        for pool in self.map.pools.values() {
            for pg in 0..pool.pg_num {
                for (i, osd) in carmine_placement::pg_to_osds(&self.map, pool, pg)
                    .into_iter()
                    .enumerate()
                {
                    let e = pgs.entry(osd).or_default();
                    e.0 += 1;
                    e.1 += u32::from(i == 0);
                }
            }
        }
        self.map
            .osds
            .values()
            .map(|o| {
                let (used, capacity) = self
                    .live
                    .get(&o.id)
                    .map_or((0, 0), |l| (l.used_bytes, l.capacity_bytes));
                let (n, primary) = pgs.get(&o.id).copied().unwrap_or_default();
                v1::OsdDfRow {
                    id: o.id,
                    host: o.host.clone(),
                    weight: o.weight,
                    up: o.up,
                    r#in: o.in_,
                    used_bytes: used,
                    capacity_bytes: capacity,
                    pgs: n,
                    primary_pgs: primary,
                }
            })
            .collect()
    }

    /// Marks this monitor as run with `--insecure` (health warns `AUTH_INSECURE`).
    pub fn set_insecure(&mut self, insecure: bool) {
        self.insecure = insecure;
    }

    /// Whether this monitor runs with `--insecure`.
    pub fn insecure(&self) -> bool {
        self.insecure
    }

    /// The keyring version (grows by one on every key change).
    pub fn keyring_version(&self) -> u64 {
        self.keyring.version()
    }

    /// The whole keyring as stored (secrets; ids sorted).
    pub fn keyring(&self) -> v1::Keyring {
        self.keyring.to_stored()
    }

    /// The keyring the OSDs get: data-path keys, never secrets.
    pub fn keyring_for_osds(&self) -> v1::Keyring {
        self.keyring.for_osds()
    }

    /// Who presents `proof` as the secret of key `id` (`None`: nobody, refuse the call).
    pub fn authenticate(&self, id: &str, proof: &[u8; CLIENT_KEY_LEN]) -> Option<Principal> {
        self.keyring.authenticate(id, proof)
    }

    /// Stores `keys` as the next keyring version, then installs it.
    fn commit_keys(&mut self, keys: BTreeMap<String, KeyEntry>) -> Result<u64, MonError> {
        let next = self.keyring.next(keys);
        self.store.commit_keyring(&next.to_stored())?;
        self.keyring.install(next);
        let version = self.keyring.version();
        tracing::info!(
            version,
            keys = self.keyring.keys().len(),
            "new keyring version"
        );
        Ok(version)
    }

    /// Issues a fresh key (32 bytes from the OS RNG) under `id` with `role` (for an OSD key, the
    /// uuid it is bound to), committed as the next keyring version. Returns (key, version).
    fn issue_key(
        &mut self,
        id: &str,
        role: KeyRole,
        osd_uuid: &str,
    ) -> Result<([u8; CLIENT_KEY_LEN], u64), MonError> {
        let key = random_key()?;
        let mut keys = self.keyring.keys().clone();
        keys.insert(
            id.to_string(),
            KeyEntry {
                key,
                role,
                osd_uuid: osd_uuid.to_string(),
            },
        );
        let version = self.commit_keys(keys)?;
        Ok((key, version))
    }

    /// Makes [`ADMIN_KEY_ID`] the admin whose secret is `secret` (from the monitor's admin
    /// token), or removes it (`None`: no token), committing a new keyring version only if that
    /// changes anything.
    pub fn set_admin_secret(
        &mut self,
        secret: Option<[u8; CLIENT_KEY_LEN]>,
    ) -> Result<(), MonError> {
        let want = secret.map(|key| KeyEntry {
            key,
            role: KeyRole::Admin,
            osd_uuid: String::new(),
        });
        if self.keyring.get(ADMIN_KEY_ID) == want.as_ref() {
            return Ok(());
        }
        let mut keys = self.keyring.keys().clone();
        match want {
            Some(e) => keys.insert(ADMIN_KEY_ID.to_string(), e),
            None => keys.remove(ADMIN_KEY_ID),
        };
        self.commit_keys(keys)?;
        tracing::info!(id = ADMIN_KEY_ID, "admin key set from the admin token");
        Ok(())
    }

    /// Admin: the key of `id`, created (32 bytes from the OS RNG) with `role` if it has none.
    /// Returns (key, created, keyring version). OSD keys are refused: they come from
    /// [`Monitor::osd_new`]; so is [`ADMIN_KEY_ID`], which the admin token owns.
    pub fn auth_add(
        &mut self,
        id: &str,
        role: KeyRole,
    ) -> Result<([u8; CLIENT_KEY_LEN], bool, u64), MonError> {
        validate_client_id(id)?;
        refuse_osd_id(id, "add")?;
        if id == ADMIN_KEY_ID {
            return Err(MonError::Invalid(format!(
                "{ADMIN_KEY_ID:?} is the monitor's admin token: give another id"
            )));
        }
        if matches!(role, KeyRole::Osd(_)) {
            return Err(MonError::Invalid(
                "OSD keys come from `carmine osd new --uuid <uuid>`".into(),
            ));
        }
        if let Some(e) = self.keyring.get(id) {
            if e.role != role {
                return Err(MonError::Exists(format!(
                    "{id:?} already has a key with another role ({:?})",
                    e.role
                )));
            }
            return Ok((e.key, false, self.keyring.version()));
        }
        let (key, version) = self.issue_key(id, role, "")?;
        tracing::info!(client = id, ?role, version, "key issued");
        Ok((key, true, version))
    }

    /// Admin: the key of `id` (a client's, an admin's or an OSD's), its role and the keyring
    /// version.
    pub fn auth_get(&self, id: &str) -> Result<([u8; CLIENT_KEY_LEN], KeyRole, u64), MonError> {
        validate_client_id(id)?;
        self.keyring
            .get(id)
            .map(|e| (e.key, e.role, self.keyring.version()))
            .ok_or_else(|| {
                MonError::NotFound(if id.starts_with(OSD_KEY_PREFIX) {
                    format!("no key for {id:?} (an OSD has a key from `osd new` to `osd rm`)")
                } else {
                    format!("no key for client {id:?}")
                })
            })
    }

    /// Admin: removes the key of client `id`. Returns the new keyring version. OSD keys are
    /// refused: they go with the OSD ([`Monitor::osd_rm`]); so is the admin token's key.
    pub fn auth_rm(&mut self, id: &str) -> Result<u64, MonError> {
        validate_client_id(id)?;
        refuse_osd_id(id, "remove")?;
        if id == ADMIN_KEY_ID {
            return Err(MonError::Invalid(format!(
                "{ADMIN_KEY_ID:?} is the monitor's admin token: change --admin-token instead"
            )));
        }
        if self.keyring.get(id).is_none() {
            return Err(MonError::NotFound(format!("no key for client {id:?}")));
        }
        let mut keys = self.keyring.keys().clone();
        keys.remove(id);
        let version = self.commit_keys(keys)?;
        tracing::info!(client = id, version, "client key removed");
        Ok(version)
    }

    /// Admin: every key id with its role, sorted by id.
    pub fn auth_list(&self) -> Vec<(String, KeyRole)> {
        self.keyring
            .keys()
            .iter()
            .map(|(id, e)| (id.clone(), e.role))
            .collect()
    }

    /// Admin (`osd new`): the id and key of the OSD with `uuid`, issued if it has none; the
    /// same for every call with the same uuid. The id is the one the map already gives that
    /// uuid (an OSD that booted on an insecure monitor), else the lowest never used by the
    /// map or a key. Returns (id, key, created).
    pub fn osd_new(&mut self, uuid: &str) -> Result<(u32, [u8; CLIENT_KEY_LEN], bool), MonError> {
        if uuid.is_empty()
            || uuid.len() > MAX_CLIENT_ID_LEN
            || uuid.chars().any(|c| !c.is_ascii_graphic())
        {
            return Err(MonError::Invalid(format!(
                "osd uuid {uuid:?}: 1 to {MAX_CLIENT_ID_LEN} bytes of printable ASCII"
            )));
        }
        if let Some((id, e)) = self.keyring.osd_key_for_uuid(uuid) {
            return Ok((id, e.key, false));
        }
        let id = match self.map.osd_by_uuid(uuid) {
            Some(o) => o.id,
            None => self.map.next_osd_id.max(self.keyring.next_osd_id()),
        };
        let kid = osd_key_id(id);
        if let Some(e) = self.keyring.get(&kid) {
            if !e.osd_uuid.is_empty() {
                return Err(MonError::Exists(format!("{kid} is bound to another uuid")));
            }
        }
        let (key, version) = self.issue_key(&kid, KeyRole::Osd(id), uuid)?;
        tracing::info!(osd = id, key_id = %kid, uuid, version, "osd key issued");
        Ok((id, key, true))
    }

    /// The key of OSD `id`, created (and committed) if it has none (an insecure monitor's
    /// boot).
    fn ensure_osd_key(&mut self, id: u32) -> Result<[u8; CLIENT_KEY_LEN], MonError> {
        let kid = osd_key_id(id);
        if let Some(e) = self.keyring.get(&kid) {
            if e.role == KeyRole::Osd(id) {
                return Ok(e.key);
            }
        }
        let (key, version) = self.issue_key(&kid, KeyRole::Osd(id), "")?;
        tracing::info!(osd = id, key_id = %kid, version, "osd key issued at boot");
        Ok(key)
    }

    /// Removes the key of OSD `id`, if it has one.
    fn remove_osd_key(&mut self, id: u32) -> Result<(), MonError> {
        let kid = osd_key_id(id);
        if self.keyring.get(&kid).is_none() {
            return Ok(());
        }
        let mut keys = self.keyring.keys().clone();
        keys.remove(&kid);
        let version = self.commit_keys(keys)?;
        tracing::info!(osd = id, key_id = %kid, version, "osd key removed");
        Ok(())
    }

    /// Admin: where `id`'s admin service listens, and whether the OSD is up.
    pub fn osd_admin_addr(&self, id: u32) -> Result<(String, bool), MonError> {
        let o = self
            .map
            .osds
            .get(&id)
            .ok_or_else(|| MonError::NotFound(format!("osd.{id} does not exist")))?;
        match self.admin_addrs.get(&id) {
            Some(a) if !a.is_empty() => Ok((a.clone(), o.up)),
            _ => Err(MonError::NotFound(format!(
                "osd.{id} has not reported its admin address to this monitor (it does when it boots or heartbeats)"
            ))),
        }
    }

    /// Remembers an OSD's admin address (from a boot or heartbeat); empty = unchanged.
    pub fn set_admin_addr(&mut self, id: u32, addr: &str) {
        if !addr.is_empty() && self.map.osds.contains_key(&id) {
            self.admin_addrs.insert(id, addr.to_string());
        }
    }

    /// Remembers where an OSD serves `/metrics` (from a boot or heartbeat); empty = unchanged.
    pub fn set_metrics_addr(&mut self, id: u32, addr: &str) {
        if !addr.is_empty() && self.map.osds.contains_key(&id) {
            self.metrics_addrs.insert(id, addr.to_string());
        }
    }

    /// Where OSD `id` serves `/metrics` (empty: not served, or not reported to this monitor).
    pub fn osd_metrics_addr(&self, id: u32) -> String {
        self.metrics_addrs.get(&id).cloned().unwrap_or_default()
    }

    /// Every OSD's metrics address this monitor knows, by OSD id.
    pub fn metrics_addrs(&self) -> BTreeMap<u32, String> {
        self.metrics_addrs
            .iter()
            .filter(|(id, _)| self.map.osds.contains_key(id))
            .map(|(id, a)| (*id, a.clone()))
            .collect()
    }

    /// Persists `next` as the next epoch and publishes it. No-op if nothing changed.
    fn commit(&mut self, mut next: ClusterMap) -> Result<u64, MonError> {
        next.epoch = self.map.epoch;
        if next == *self.map {
            return Ok(self.map.epoch);
        }
        next.epoch = self.map.epoch + 1;
        self.store.commit(&next, self.policy.history)?;
        let inc = Arc::new(ClusterMap::diff(&self.map, &next));
        let next = Arc::new(next);
        self.maps.push_back(next.clone());
        self.incs.push_back(inc.clone());
        while self.maps.len() as u64 > self.policy.history.max(1) {
            self.maps.pop_front();
        }
        while self.incs.len() >= self.maps.len() && !self.incs.is_empty() {
            self.incs.pop_front();
        }
        self.map = next;
        self.epochs.committed(self.map.epoch, Instant::now());
        self.pg_stats.prune(&self.map);
        tracing::info!(epoch = self.map.epoch, "new map epoch");
        // No receivers is fine: nobody subscribed yet.
        let _ = self.updates.send(inc);
        Ok(self.map.epoch)
    }

    fn next_map(&self) -> ClusterMap {
        (*self.map).clone()
    }

    /// An OSD boots: registered if new, marked up, marked in again if the monitor had marked
    /// it out; its key is created at its first boot. The key is committed before the map, so
    /// an OSD is never announced up without one (a map commit that fails after it leaves a key
    /// for the id the retried boot gets again).
    pub fn boot(&mut self, b: BootInfo, now: Instant) -> Result<Booted, MonError> {
        if b.uuid.is_empty() || b.host.is_empty() {
            return Err(MonError::Invalid("boot needs a uuid and a host".into()));
        }
        if let Some(known) = self.map.osd_by_uuid(&b.uuid).map(|o| o.id) {
            match (&b.store_failure, self.store_failures.get(&known)) {
                (Some(why), _) => {
                    self.store_failed(known, &b.uuid, why, now)?;
                    return Err(store_failed_error(known, why));
                }
                // The same process booting again (e.g. after a monitor restart) with a store
                // that failed before: it stays down. A new process mounted its store afresh.
                (None, Some(f)) if !b.new_process => {
                    return Err(store_failed_error(known, &f.reason));
                }
                (None, _) => {
                    if self.store_failures.remove(&known).is_some() {
                        tracing::info!(osd = known, "store failure cleared: a new process boots");
                    }
                }
            }
        } else if let Some(why) = &b.store_failure {
            return Err(MonError::Precondition(format!(
                "an OSD with a failed store cannot join the cluster: {why}"
            )));
        }
        let mut next = self.next_map();
        let claimed = match b.authenticated_as {
            Some(n) => {
                let bound = self
                    .keyring
                    .get(&osd_key_id(n))
                    .map(|e| e.osd_uuid.clone())
                    .unwrap_or_default();
                if !bound.is_empty() && bound != b.uuid {
                    return Err(MonError::Precondition(format!(
                        "osd.{n}'s key was issued for uuid {bound}, not {}",
                        b.uuid
                    )));
                }
                if let Some(o) = next.osd_by_uuid(&b.uuid).filter(|o| o.id != n) {
                    return Err(MonError::Precondition(format!(
                        "uuid {} is osd.{}, not osd.{n}",
                        b.uuid, o.id
                    )));
                }
                Some(n)
            }
            None => b.id,
        };
        if let Some(claimed) = claimed {
            if next.osds.get(&claimed).is_some_and(|o| o.uuid != b.uuid) {
                return Err(MonError::Precondition(format!(
                    "osd.{claimed} belongs to another uuid"
                )));
            }
        }
        let id = match next.osd_by_uuid(&b.uuid) {
            Some(o) => o.id,
            None => {
                // An authenticated OSD boots as its key's id; an anonymous one gets the next
                // id no key is bound to.
                let id = match b.authenticated_as {
                    Some(n) => n,
                    None => {
                        let mut id = next.next_osd_id.max(self.keyring.next_osd_id());
                        while self.keyring.osd_id_taken(id, &b.uuid) || next.osds.contains_key(&id)
                        {
                            id += 1;
                        }
                        id
                    }
                };
                next.next_osd_id = next.next_osd_id.max(id + 1);
                let weight = if b.weight > 0.0 && b.weight.is_finite() {
                    b.weight
                } else {
                    1.0
                };
                next.osds.insert(
                    id,
                    Osd {
                        id,
                        uuid: b.uuid.clone(),
                        host: String::new(),
                        public_addr: String::new(),
                        cluster_addr: String::new(),
                        shard_count: 0,
                        shard_ports: Vec::new(),
                        up: false,
                        in_: true,
                        weight,
                        up_from: 0,
                    },
                );
                id
            }
        };
        let key = carmine_proto::auth::data_path_key(&self.ensure_osd_key(id)?);
        let live = self
            .live
            .entry(id)
            .or_insert_with(|| Liveness::new(now, false));
        if let Some(o) = next.osds.get_mut(&id) {
            o.host = b.host;
            o.public_addr = b.public_addr;
            o.cluster_addr = b.cluster_addr;
            o.shard_count = b.shard_ports.len() as u32;
            o.shard_ports = b.shard_ports;
            // A new process (or one that was down) is a new member of its PGs: their intervals
            // change even with the same addresses, since it may have come back without its
            // data. The same process booting again with another monitor is not.
            if b.new_process || !o.up {
                o.up_from = self.map.epoch + 1;
                // What its earlier process reported about its PGs no longer holds (it may be
                // back without its data): until it reports again, they are not shown as its.
                self.pg_stats.forget_osd(id);
                self.client_io.forget_osd(id);
            }
            o.up = true;
            if live.auto_out {
                o.in_ = true;
            }
        }
        live.last_heartbeat = now;
        live.last_reply = live.last_reply.max(now);
        live.down_since = None;
        live.auto_out = false;
        live.failure_reports.clear();
        let epoch = self.commit(next)?;
        tracing::info!(osd = id, epoch, "osd booted");
        Ok(Booted { id, epoch, key })
    }

    /// A heartbeat. Returns `true` when the OSD must boot again (down or unknown to us).
    pub fn heartbeat(
        &mut self,
        id: u32,
        uuid: &str,
        used: u64,
        capacity: u64,
        now: Instant,
    ) -> bool {
        let known_up = self
            .map
            .osds
            .get(&id)
            .is_some_and(|o| o.uuid == uuid && o.up);
        if let Some(l) = self.live.get_mut(&id) {
            // Answered either way: counts for the lease bound.
            l.last_reply = l.last_reply.max(now);
        }
        if !known_up {
            return true;
        }
        if let Some(l) = self.live.get_mut(&id) {
            l.last_heartbeat = now;
            l.used_bytes = used;
            l.capacity_bytes = capacity;
        }
        false
    }

    /// OSD `id` (which must be the one with `uuid`) reports that its object store failed:
    /// the failure is recorded (for health: `OSD_STORE_FAILED`) and the OSD marked down if it
    /// is up, whatever the `nodown` flag (this is not a guess about liveness: the OSD serves
    /// nothing). Returns whether this report marked it down. The OSD keeps reporting with its
    /// heartbeats, which are answered `must_boot` while it is down; its boots are refused
    /// while it reports the failure, so it does not come back up until its process restarts.
    pub fn store_failed(
        &mut self,
        id: u32,
        uuid: &str,
        reason: &str,
        now: Instant,
    ) -> Result<bool, MonError> {
        let up = match self.map.osds.get(&id) {
            Some(o) if o.uuid == uuid => o.up,
            Some(_) => {
                return Err(MonError::Precondition(format!(
                    "osd.{id} belongs to another uuid"
                )))
            }
            None => return Err(MonError::NotFound(format!("osd.{id}"))),
        };
        let mut reason = reason.to_string();
        if reason.len() > MAX_FAILURE_REASON {
            let mut cut = MAX_FAILURE_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        let new = self
            .store_failures
            .get(&id)
            .is_none_or(|f| f.reason != reason);
        if new {
            tracing::error!(osd = id, %reason, "osd reports its store failed");
            self.store_failures.insert(id, StoreFailure { reason });
        }
        if up {
            tracing::warn!(osd = id, "marking down: its store failed");
            self.mark_down(id, now)?;
        }
        Ok(up)
    }

    /// The OSDs whose store failed, with the reason each reported, by id.
    pub fn store_failures(&self) -> Vec<(u32, String)> {
        self.store_failures
            .iter()
            .map(|(id, f)| (*id, f.reason.clone()))
            .collect()
    }

    /// The inconsistent PGs OSD `id` reported with a heartbeat (its whole set: an empty one
    /// clears what it reported before). Bounded by [`MAX_INCONSISTENT_PGS`] and
    /// [`MAX_INCONSISTENT_NAMES`]; an OSD not in the map is ignored.
    pub fn set_scrub_report(&mut self, id: u32, mut pgs: Vec<v1::InconsistentPg>) {
        if !self.map.osds.contains_key(&id) {
            return;
        }
        pgs.truncate(MAX_INCONSISTENT_PGS);
        for p in &mut pgs {
            p.objects.truncate(MAX_INCONSISTENT_NAMES);
            p.num_objects = p.num_objects.max(p.objects.len() as u32);
            p.osd = id;
        }
        if pgs.is_empty() {
            if self.scrub_reports.remove(&id).is_some() {
                tracing::info!(osd = id, "scrub: no inconsistent pgs reported any more");
            }
            return;
        }
        let old = self.scrub_reports.insert(id, pgs);
        let new = &self.scrub_reports[&id];
        if old.as_ref() != Some(new) {
            let ids: Vec<String> = new
                .iter()
                .map(|p| format!("{}.{:x}", p.pool, p.pg))
                .collect();
            tracing::warn!(osd = id, pgs = ?ids, "scrub: inconsistent pgs reported");
        }
    }

    /// Every PG some OSD reported inconsistent, merged per PG (the first
    /// [`MAX_INCONSISTENT_NAMES`] object names of all reports in name order; the newest
    /// scrub's OSD and epoch), PGs of pools that no longer exist left out; sorted by
    /// (pool, pg).
    pub fn inconsistent_pgs(&self) -> Vec<v1::InconsistentPg> {
        let mut by_pg: BTreeMap<(u32, u32), v1::InconsistentPg> = BTreeMap::new();
        let mut names: BTreeMap<(u32, u32), std::collections::BTreeSet<&str>> = BTreeMap::new();
        for reports in self.scrub_reports.values() {
            for r in reports {
                let exists = self.map.pools.get(&r.pool).is_some_and(|p| r.pg < p.pg_num);
                if !exists {
                    continue;
                }
                let e = by_pg
                    .entry((r.pool, r.pg))
                    .or_insert_with(|| v1::InconsistentPg {
                        pool: r.pool,
                        pg: r.pg,
                        ..Default::default()
                    });
                if r.epoch >= e.epoch {
                    e.epoch = r.epoch;
                    e.osd = r.osd;
                }
                e.num_objects = e.num_objects.max(r.num_objects);
                names
                    .entry((r.pool, r.pg))
                    .or_default()
                    .extend(r.objects.iter().map(String::as_str));
            }
        }
        for (k, e) in &mut by_pg {
            let n = names.remove(k).unwrap_or_default();
            e.objects = n
                .into_iter()
                .take(MAX_INCONSISTENT_NAMES)
                .map(str::to_string)
                .collect();
            e.num_objects = e.num_objects.max(e.objects.len() as u32);
        }
        by_pg.into_values().collect()
    }

    /// A failure report. Returns whether it marked the target down.
    pub fn report_failure(
        &mut self,
        reporter: u32,
        target: u32,
        now: Instant,
    ) -> Result<bool, MonError> {
        if reporter == target {
            return Err(MonError::Invalid("an OSD cannot report itself".into()));
        }
        let reporter_up = self.map.osds.get(&reporter).is_some_and(|o| o.up);
        if !reporter_up {
            return Err(MonError::Precondition(format!(
                "reporter osd.{reporter} is not up"
            )));
        }
        let target_up = self.map.osds.get(&target).is_some_and(|o| o.up);
        if !target_up {
            return Ok(false);
        }
        let grace = self.policy.down_grace;
        let Some(l) = self.live.get_mut(&target) else {
            return Ok(false);
        };
        l.failure_reports.insert(reporter, now);
        l.failure_reports
            .retain(|_, at| now.saturating_duration_since(*at) <= grace);
        if l.failure_reports.len() >= self.policy.min_failure_reporters.max(1)
            && !self.map.flags.contains("nodown")
        {
            tracing::warn!(
                osd = target,
                reporters = l.failure_reports.len(),
                "osd reported failed by peers"
            );
            self.mark_down(target, now)?;
            return Ok(true);
        }
        Ok(false)
    }

    fn mark_down(&mut self, id: u32, now: Instant) -> Result<u64, MonError> {
        let mut next = self.next_map();
        let o = next
            .osds
            .get_mut(&id)
            .ok_or_else(|| MonError::NotFound(format!("osd.{id}")))?;
        o.up = false;
        let l = self
            .live
            .entry(id)
            .or_insert_with(|| Liveness::new(now, false));
        l.down_since.get_or_insert(now);
        l.failure_reports.clear();
        self.commit(next)
    }

    /// Periodic check: down after the grace period, out after the out interval. All changes
    /// found in one tick go into one epoch.
    pub fn tick(&mut self, now: Instant) -> Result<(), MonError> {
        let mut next = self.next_map();
        let noout = next.flags.contains("noout");
        let nodown = next.flags.contains("nodown");
        for o in next.osds.values_mut() {
            let l = self
                .live
                .entry(o.id)
                .or_insert_with(|| Liveness::new(now, o.up));
            if o.up
                && !nodown
                && now.saturating_duration_since(l.last_heartbeat) > self.policy.down_grace
            {
                tracing::warn!(
                    osd = o.id,
                    "no heartbeat within the grace period: marking down"
                );
                o.up = false;
                l.down_since = Some(now);
            }
            if !o.up && o.in_ && !noout {
                let since = *l.down_since.get_or_insert(now);
                if now.saturating_duration_since(since) > self.policy.out_interval {
                    tracing::warn!(osd = o.id, "down for the out interval: marking out");
                    o.in_ = false;
                    l.auto_out = true;
                }
            }
        }
        self.commit(next)?;
        Ok(())
    }

    fn change_osd(
        &mut self,
        id: u32,
        f: impl FnOnce(&mut Osd) -> Result<(), MonError>,
    ) -> Result<u64, MonError> {
        let mut next = self.next_map();
        let o = next
            .osds
            .get_mut(&id)
            .ok_or_else(|| MonError::NotFound(format!("osd.{id}")))?;
        f(o)?;
        self.commit(next)
    }

    /// Admin: mark out.
    pub fn osd_out(&mut self, id: u32) -> Result<u64, MonError> {
        let e = self.change_osd(id, |o| {
            o.in_ = false;
            Ok(())
        })?;
        if let Some(l) = self.live.get_mut(&id) {
            l.auto_out = false;
        }
        Ok(e)
    }

    /// Admin: mark in.
    pub fn osd_in(&mut self, id: u32) -> Result<u64, MonError> {
        self.change_osd(id, |o| {
            o.in_ = true;
            Ok(())
        })
    }

    /// Admin: mark down.
    pub fn osd_down(&mut self, id: u32, now: Instant) -> Result<u64, MonError> {
        self.mark_down(id, now)
    }

    /// Admin: set weight.
    pub fn osd_reweight(&mut self, id: u32, weight: f64) -> Result<u64, MonError> {
        if !(weight >= 0.0 && weight.is_finite()) {
            return Err(MonError::Invalid(format!(
                "weight {weight} must be a finite number >= 0"
            )));
        }
        self.change_osd(id, |o| {
            o.weight = weight;
            Ok(())
        })
    }

    /// Admin: remove a down OSD and its key. The key goes first: if the map commit then
    /// fails, the OSD is still in the map without a key (refused by its peers; its next boot
    /// issues a new one), never out of the map with a key.
    pub fn osd_rm(&mut self, id: u32) -> Result<u64, MonError> {
        let mut next = self.next_map();
        match next.osds.get(&id) {
            None => return Err(MonError::NotFound(format!("osd.{id}"))),
            Some(o) if o.up => {
                return Err(MonError::Precondition(format!(
                    "osd.{id} is up: mark it down first"
                )))
            }
            Some(_) => {}
        }
        self.remove_osd_key(id)?;
        next.osds.remove(&id);
        self.live.remove(&id);
        self.admin_addrs.remove(&id);
        self.metrics_addrs.remove(&id);
        self.scrub_reports.remove(&id);
        self.store_failures.remove(&id);
        self.pg_stats.forget_osd(id);
        self.client_io.forget_osd(id);
        self.commit(next)
    }

    /// Admin: set or clear a cluster flag (see [`FLAGS`]).
    pub fn set_flag(&mut self, flag: &str, set: bool) -> Result<u64, MonError> {
        if !FLAGS.contains(&flag) {
            return Err(MonError::Invalid(format!(
                "unknown flag {flag:?} (known: {})",
                FLAGS.join(", ")
            )));
        }
        let mut next = self.next_map();
        if set {
            next.flags.insert(flag.to_string());
        } else {
            next.flags.remove(flag);
        }
        self.commit(next)
    }

    /// Admin: create a pool. Returns (id, epoch).
    pub fn pool_create(
        &mut self,
        name: &str,
        pg_num: u32,
        size: u32,
        min_size: u32,
    ) -> Result<(u32, u64), MonError> {
        if name.is_empty()
            || name.len() > 128
            || name.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(MonError::Invalid(format!("bad pool name {name:?}")));
        }
        let min_size = if min_size == 0 {
            size - size / 2
        } else {
            min_size
        };
        validate_pool(pg_num, size, min_size)?;
        check_size_supported(size)?;
        let mut next = self.next_map();
        if next.pool_by_name(name).is_some() {
            return Err(MonError::Exists(format!("pool {name}")));
        }
        let id = next.next_pool_id;
        next.next_pool_id += 1;
        next.pools.insert(
            id,
            Pool {
                id,
                name: name.to_string(),
                size,
                min_size,
                pg_num,
            },
        );
        Ok((id, self.commit(next)?))
    }

    /// Admin: remove a pool.
    pub fn pool_rm(&mut self, name: &str) -> Result<u64, MonError> {
        let mut next = self.next_map();
        let id = next
            .pool_by_name(name)
            .map(|p| p.id)
            .ok_or_else(|| MonError::NotFound(format!("pool {name}")))?;
        next.pools.remove(&id);
        let epoch = self.commit(next)?;
        self.prune_pg_history();
        Ok(epoch)
    }

    /// Admin: change `size`, `min_size` or `pg_num` of a pool.
    pub fn pool_set(&mut self, name: &str, key: &str, value: &str) -> Result<u64, MonError> {
        let v: u32 = value
            .parse()
            .map_err(|_| MonError::Invalid(format!("{key} needs a number, got {value:?}")))?;
        let mut next = self.next_map();
        let id = next
            .pool_by_name(name)
            .map(|p| p.id)
            .ok_or_else(|| MonError::NotFound(format!("pool {name}")))?;
        let p = next
            .pools
            .get_mut(&id)
            .ok_or_else(|| MonError::NotFound(format!("pool {name}")))?;
        match key {
            "size" => p.size = v,
            "min_size" => p.min_size = v,
            "pg_num" => p.pg_num = v,
            _ => {
                return Err(MonError::Invalid(format!(
                    "unknown pool property {key:?} (size, min_size, pg_num)"
                )))
            }
        }
        validate_pool(p.pg_num, p.size, p.min_size)?;
        if key == "size" {
            // Only a change of size is checked: a pool stored before this limit keeps working
            // for its other properties.
            check_size_supported(v)?;
        }
        let epoch = self.commit(next)?;
        if key == "pg_num" {
            self.prune_pg_history();
        }
        Ok(epoch)
    }
}

/// PG history, leases and PG stats.
impl Monitor {
    /// Whether the map has PG `pg` of pool `pool`.
    fn check_pg(&self, pool: u32, pg: u32) -> Result<(), MonError> {
        match self.map.pools.get(&pool) {
            Some(p) if pg < p.pg_num => Ok(()),
            Some(p) => Err(MonError::NotFound(format!(
                "pool {} ({pool}) has {} pgs: no pg {pg:x}",
                p.name, p.pg_num
            ))),
            None => Err(MonError::NotFound(format!("pool {pool}"))),
        }
    }

    /// Drops the history of PGs the map no longer has (committed first; see the module doc).
    fn prune_pg_history(&mut self) {
        let gone: Vec<PgHistoryChange> = self
            .pg_history
            .keys()
            .filter(|(pool, pg)| self.check_pg(*pool, *pg).is_err())
            .map(|k| (*k, Vec::new()))
            .collect();
        if gone.is_empty() {
            return;
        }
        match self.store.commit_pg_history(&gone) {
            Ok(()) => {
                for (k, _) in &gone {
                    self.pg_history.remove(k);
                }
                tracing::info!(pgs = gone.len(), "history of removed pgs dropped");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot drop the history of removed pgs (retried at the next open)")
            }
        }
    }

    /// Commits `changes` and installs them.
    fn commit_history(&mut self, changes: Vec<PgHistoryChange>) -> Result<(), MonError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.store.commit_pg_history(&changes)?;
        for (k, h) in changes {
            if h.is_empty() {
                self.pg_history.remove(&k);
            } else {
                self.pg_history.insert(k, h);
            }
        }
        Ok(())
    }

    /// `RecordIntervals` from OSD `osd`: every interval recorded (see [`crate::history`]),
    /// committed before this returns. All or nothing: one refused interval refuses the call.
    /// Returns the current epoch and the intervals not recorded because their PG has a newer
    /// one (which must not go active).
    pub fn record_intervals(
        &mut self,
        osd: u32,
        intervals: &[v1::PgInterval],
    ) -> Result<(u64, Vec<v1::PgInterval>), MonError> {
        if !self.map.osds.contains_key(&osd) {
            return Err(MonError::NotFound(format!("osd.{osd}")));
        }
        let mut next: BTreeMap<PgKey, Vec<v1::PgInterval>> = BTreeMap::new();
        let mut superseded = Vec::new();
        for iv in intervals {
            self.check_pg(iv.pool, iv.pg)?;
            if iv.since > self.map.epoch {
                return Err(MonError::Invalid(format!(
                    "pg {}.{:x}: interval since {} is newer than epoch {}",
                    iv.pool, iv.pg, iv.since, self.map.epoch
                )));
            }
            let key = (iv.pool, iv.pg);
            let cur = next
                .get(&key)
                .or_else(|| self.pg_history.get(&key))
                .map(Vec::as_slice)
                .unwrap_or_default();
            match crate::history::record(cur, iv)? {
                crate::history::Recorded::Appended(h) => {
                    next.insert(key, h);
                }
                crate::history::Recorded::Already => {}
                crate::history::Recorded::Superseded => superseded.push(iv.clone()),
            }
        }
        let n = next.len();
        self.commit_history(next.into_iter().collect())?;
        if n > 0 {
            tracing::info!(osd, pgs = n, "pg intervals recorded");
        }
        if !superseded.is_empty() {
            tracing::warn!(osd, intervals = ?superseded, "intervals superseded by newer ones: not recorded");
        }
        Ok((self.map.epoch, superseded))
    }

    /// The recorded intervals of a PG, oldest first.
    pub fn pg_history(&self, pool: u32, pg: u32) -> Result<Vec<v1::PgInterval>, MonError> {
        self.check_pg(pool, pg)?;
        Ok(self
            .pg_history
            .get(&(pool, pg))
            .cloned()
            .unwrap_or_default())
    }

    /// `TrimPgHistory`: drop the PG's intervals older than `iv.since` (committed first).
    pub fn trim_pg_history(&mut self, iv: &v1::PgInterval) -> Result<(), MonError> {
        self.check_pg(iv.pool, iv.pg)?;
        let key = (iv.pool, iv.pg);
        let cur = self
            .pg_history
            .get(&key)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if let Some(h) = crate::history::trim(cur, iv)? {
            self.commit_history(vec![(key, h)])?;
            tracing::info!(pg = %format!("{}.{:x}", iv.pool, iv.pg), since = iv.since, "pg history trimmed");
        }
        Ok(())
    }

    /// The read lease OSDs get (`BootReply.lease_ms`): four heartbeat intervals, at most the
    /// down grace. Shorter than the grace so that a new primary that could not reach the old
    /// one waits less (an OSD out-ed while paused); long enough that a heartbeat or two
    /// delayed by load does not lapse it.
    pub fn lease(&self) -> Duration {
        (self.policy.heartbeat_interval * 4).min(self.policy.down_grace)
    }

    /// `LeaseWait`: how long the leases of `osds` may still run for an interval that began at
    /// `epoch` (the largest over `osds`; see [`crate::lease`]).
    pub fn lease_wait(&self, osds: &[u32], epoch: u64, now: Instant) -> Duration {
        let committed = self.epochs.commit_bound(epoch);
        osds.iter()
            .map(|id| {
                let hb = self.live.get(id).map(|l| l.last_reply);
                crate::lease::wait(now, self.lease(), committed, hb)
            })
            .max()
            .unwrap_or_default()
    }

    /// A PG's report is stale after this long (see [`crate::pgstats`]).
    pub fn pg_stale_after(&self) -> Duration {
        self.policy.heartbeat_interval * crate::pgstats::STALE_HEARTBEATS
    }

    /// The PG stats OSD `id` reported with a heartbeat at `now` (every PG it leads).
    pub fn set_pg_stats(&mut self, id: u32, stats: Vec<v1::PgStat>, now: Instant) {
        if !self.map.osds.contains_key(&id) {
            return;
        }
        self.pg_stats.report(&self.map, id, stats, now);
    }

    /// The client I/O counters OSD `id` sent with a heartbeat at `now`.
    pub fn set_client_io(&mut self, id: u32, counters: &v1::ClientIoCounters, now: Instant) {
        if self.map.osds.contains_key(&id) {
            self.client_io.report(id, counters, now);
        }
    }

    /// Client I/O per second over the OSDs that reported within the PG staleness bound.
    pub fn client_io_rate(&self, now: Instant) -> v1::ClientIoRate {
        self.client_io.rate(now, self.pg_stale_after())
    }

    /// Every PG of every pool with its state (see [`crate::pgstats`]).
    pub fn pg_list(&self, now: Instant) -> Vec<v1::PgStat> {
        self.pg_stats.list(&self.map, now, self.pg_stale_after())
    }

    /// One PG: its state, recorded history and seconds since its report (0 = never).
    pub fn pg_query(&self, pool: u32, pg: u32, now: Instant) -> Result<v1::PgQueryReply, MonError> {
        self.check_pg(pool, pg)?;
        let (stat, ago) = self
            .pg_stats
            .query(&self.map, pool, pg, now, self.pg_stale_after())
            .ok_or_else(|| MonError::NotFound(format!("pg {pool}.{pg:x}")))?;
        Ok(v1::PgQueryReply {
            stat: Some(stat),
            history: self.pg_history(pool, pg)?,
            // A report of this very second still says "reported": at least 1.
            reported_secs_ago: ago.map_or(0, |d| d.as_secs().max(1)),
        })
    }

    /// Recovery throughput (bytes, objects per second) over the last reports.
    pub fn recovery_rate(&self, now: Instant) -> (u64, u64) {
        self.pg_stats.recovery_rate(now, self.pg_stale_after())
    }
}

/// Refuses a pool size no OSD can serve yet (see [`MAX_POOL_SIZE_SUPPORTED`]).
fn check_size_supported(size: u32) -> Result<(), MonError> {
    if size > MAX_POOL_SIZE_SUPPORTED {
        return Err(MonError::ReplicationUnsupported {
            size,
            max: MAX_POOL_SIZE_SUPPORTED,
        });
    }
    Ok(())
}

fn validate_pool(pg_num: u32, size: u32, min_size: u32) -> Result<(), MonError> {
    if pg_num == 0 || pg_num > 1 << 16 {
        return Err(MonError::Invalid(format!(
            "pg_num {pg_num} must be in 1..=65536"
        )));
    }
    if size == 0 || size > 16 {
        return Err(MonError::Invalid(format!("size {size} must be in 1..=16")));
    }
    if min_size == 0 || min_size > size {
        return Err(MonError::Invalid(format!(
            "min_size {min_size} must be in 1..=size ({size})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MapStore;

    fn policy() -> Policy {
        Policy {
            heartbeat_interval: Duration::from_millis(100),
            down_grace: Duration::from_secs(10),
            out_interval: Duration::from_secs(60),
            history: 4,
            min_failure_reporters: 2,
            nearfull_ratio: 0.85,
            full_ratio: 0.95,
        }
    }

    fn boot(m: &mut Monitor, uuid: &str, host: &str, now: Instant) -> u32 {
        let b = BootInfo {
            uuid: uuid.into(),
            host: host.into(),
            shard_ports: vec![1],
            weight: 1.0,
            ..Default::default()
        };
        m.boot(b, now).unwrap().id
    }

    #[test]
    fn a_new_process_is_a_new_member_and_a_session_reboot_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Monitor::open(MapStore::open(dir.path()).unwrap(), policy()).unwrap();
        let now = Instant::now();
        let b = |new_process| BootInfo {
            uuid: "a".into(),
            host: "h".into(),
            shard_ports: vec![1],
            weight: 1.0,
            new_process,
            ..Default::default()
        };
        let id = m.boot(b(true), now).unwrap().id;
        let first = m.map().osds[&id].up_from;
        assert_eq!(first, m.map().epoch);
        // The same process again (another monitor session): nothing changes.
        let e = m.map().epoch;
        m.boot(b(false), now).unwrap();
        assert_eq!(m.map().epoch, e);
        assert_eq!(m.map().osds[&id].up_from, first);
        // A restarted process at the same addresses: a new epoch and a new up_from.
        m.boot(b(true), now).unwrap();
        assert_eq!(m.map().epoch, e + 1);
        assert_eq!(m.map().osds[&id].up_from, e + 1);
    }

    /// A store from before OSD keys may hold a client key named like one (`auth add osd.0`
    /// was allowed then): it is dropped at open (committed), so no client passes for an OSD,
    /// and OSD 0's first boot issues a key of its own with role OSD.
    #[test]
    fn legacy_client_keys_named_like_osd_keys_are_dropped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = MapStore::open(dir.path()).unwrap();
        let old = |id: &str, b: u8| v1::ClientKey {
            id: id.into(),
            key: vec![b; CLIENT_KEY_LEN],
            role: 0, // written before roles existed
            osd_id: 0,
            osd_uuid: String::new(),
        };
        store
            .commit_keyring(&v1::Keyring {
                version: 7,
                keys: vec![old("client.a", 1), old("osd.0", 2)],
            })
            .unwrap();
        let mut m = Monitor::open(store, policy()).unwrap();
        assert_eq!(
            m.keyring_version(),
            8,
            "the cleaned keyring is a new version"
        );
        assert_eq!(
            m.auth_list(),
            [("client.a".to_string(), KeyRole::Client)],
            "the client key named osd.0 is still there"
        );
        let now = Instant::now();
        let id = boot(&mut m, "a", "h1", now);
        assert_eq!(id, 0);
        let (key, role, _) = m.auth_get("osd.0").unwrap();
        assert_eq!(role, KeyRole::Osd(0));
        assert_ne!(
            key, [2; CLIENT_KEY_LEN],
            "the old client key became the OSD's"
        );
        drop(m);
        // Stored: a reopen finds the same keyring.
        let m = Monitor::open(MapStore::open(dir.path()).unwrap(), policy()).unwrap();
        assert_eq!(m.auth_get("osd.0").unwrap(), (key, KeyRole::Osd(0), 9));
        assert_eq!(m.keyring().keys[1].role(), v1::KeyRole::Osd);
    }

    /// Heartbeats' scrub reports: merged per PG over OSDs, bounded, replaced whole by the next
    /// report of the same OSD (a clean scrub clears), dropped with their pool or OSD.
    #[test]
    fn scrub_reports_merge_per_pg_and_clear_with_the_next_report() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Monitor::open(MapStore::open(dir.path()).unwrap(), policy()).unwrap();
        let now = Instant::now();
        let a = boot(&mut m, "a", "h1", now);
        let b = boot(&mut m, "b", "h2", now);
        m.pool_create("p", 16, 1, 1).unwrap();
        let pool = m.map().pool_by_name("p").unwrap().id;
        let rep = |pg: u32, names: &[&str], epoch: u64| v1::InconsistentPg {
            pool,
            pg,
            objects: names.iter().map(|n| n.to_string()).collect(),
            num_objects: names.len() as u32,
            osd: 99, // the monitor puts the reporter's id here
            epoch,
        };
        m.set_scrub_report(a, vec![rep(3, &["x", "y"], 5), rep(99, &["gone"], 5)]);
        m.set_scrub_report(b, vec![rep(3, &["y", "z"], 7)]);
        m.set_scrub_report(42, vec![rep(4, &["unknown osd"], 7)]);
        let got = m.inconsistent_pgs();
        assert_eq!(
            got.len(),
            1,
            "pg 99 is beyond pg_num, osd.42 unknown: {got:?}"
        );
        assert_eq!((got[0].pg, got[0].osd, got[0].epoch), (3, b, 7));
        assert_eq!(got[0].objects, ["x", "y", "z"]);
        assert_eq!(got[0].num_objects, 3, "at least the names known");
        // Bounded: pgs and names per pg.
        let many: Vec<v1::InconsistentPg> = (0..200)
            .map(|i| v1::InconsistentPg {
                pg: i % 16,
                objects: (0..40).map(|k| format!("o{k}")).collect(),
                num_objects: 40,
                ..rep(0, &[], 8)
            })
            .collect();
        m.set_scrub_report(a, many);
        assert_eq!(m.scrub_reports[&a].len(), MAX_INCONSISTENT_PGS);
        assert!(m.scrub_reports[&a]
            .iter()
            .all(|p| p.objects.len() == MAX_INCONSISTENT_NAMES && p.osd == a));
        assert_eq!(m.inconsistent_pgs().len(), 16);
        // The next reports replace the old ones: clean scrubs clear.
        m.set_scrub_report(a, Vec::new());
        assert_eq!(
            m.inconsistent_pgs(),
            [rep(3, &["y", "z"], 7)].map(|mut r| {
                r.osd = b;
                r
            })
        );
        m.set_scrub_report(b, Vec::new());
        assert!(m.inconsistent_pgs().is_empty());
        // A report goes with its pool, and with its OSD.
        m.set_scrub_report(a, vec![rep(1, &["q"], 9)]);
        assert_eq!(m.inconsistent_pgs().len(), 1);
        m.pool_rm("p").unwrap();
        assert!(m.inconsistent_pgs().is_empty());
        m.pool_create("p2", 16, 1, 1).unwrap();
        let pool2 = m.map().pool_by_name("p2").unwrap().id;
        m.set_scrub_report(
            a,
            vec![v1::InconsistentPg {
                pool: pool2,
                ..rep(1, &["q"], 9)
            }],
        );
        assert_eq!(m.inconsistent_pgs().len(), 1);
        m.osd_down(a, now).unwrap();
        assert_eq!(m.inconsistent_pgs().len(), 1, "a down OSD's report stands");
        m.osd_rm(a).unwrap();
        assert!(m.inconsistent_pgs().is_empty());
    }

    /// LeaseWait through the monitor: the commit of the epoch bounds the wait even when
    /// heartbeats kept coming; a future epoch is bounded by the last heartbeat, which counts
    /// even when answered with "boot again"; an unknown OSD with an unknown epoch waits a lease.
    #[test]
    fn lease_wait_takes_the_earlier_of_commit_and_last_heartbeat() {
        let dir = tempfile::tempdir().unwrap();
        // Four heartbeats would be 12 s: the grace (10 s) caps the lease.
        let slow = Policy {
            heartbeat_interval: Duration::from_secs(3),
            ..policy()
        };
        let mut m = Monitor::open(MapStore::open(dir.path()).unwrap(), slow).unwrap();
        let lease = m.lease();
        assert_eq!(lease, Duration::from_secs(10));
        assert_eq!(
            Monitor::open(
                MapStore::open(tempfile::tempdir().unwrap().path()).unwrap(),
                policy()
            )
            .unwrap()
            .lease(),
            Duration::from_millis(400),
            "four heartbeat intervals"
        );
        let t0 = Instant::now();
        let a = boot(&mut m, "a", "h1", t0);
        let (_, e) = m.pool_create("p", 8, 1, 1).unwrap();
        let s = Duration::from_secs(1);
        // Heartbeats after the commit do not extend it.
        assert!(!m.heartbeat(a, "a", 0, 0, t0 + 5 * s));
        let now = Instant::now();
        let w = m.lease_wait(&[a], e, now);
        assert!(w <= lease && w > lease - s, "{w:?}");
        // A future epoch: the last heartbeat bounds it.
        assert_eq!(m.lease_wait(&[a], e + 1, t0 + 6 * s), 9 * s);
        // A heartbeat answered "boot again" (wrong uuid) still renews as far as we know.
        assert!(m.heartbeat(a, "not-a", 0, 0, t0 + 7 * s));
        assert_eq!(m.lease_wait(&[a], e + 1, t0 + 8 * s), 9 * s);
        assert_eq!(m.lease_wait(&[a, 99], e + 1, t0 + 8 * s), lease, "the max");
        assert_eq!(m.lease_wait(&[a], e, now + lease), Duration::ZERO);
        assert_eq!(m.lease_wait(&[], e, now), Duration::ZERO);
    }

    #[test]
    fn a_failed_store_marks_the_osd_down_and_keeps_it_down_until_a_new_process_boots() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Monitor::open(MapStore::open(dir.path()).unwrap(), policy()).unwrap();
        let now = Instant::now();
        let a = boot(&mut m, "a", "h1", now);
        let b = boot(&mut m, "b", "h2", now);
        m.set_flag("nodown", true).unwrap();
        let why = "shard 0: read of block 9 failed: I/O error";
        let e = m.map().epoch;
        // The first report marks it down (nodown or not: it serves nothing), in one epoch.
        assert!(m.store_failed(a, "a", why, now).unwrap());
        assert!(!m.map().osds[&a].up);
        assert_eq!(m.map().epoch, e + 1);
        assert_eq!(m.store_failures(), vec![(a, why.to_string())]);
        // Repeated with every heartbeat: no new epoch; the heartbeat is answered "boot again".
        assert!(!m.store_failed(a, "a", why, now).unwrap());
        assert_eq!(m.map().epoch, e + 1);
        assert!(m.heartbeat(a, "a", 0, 0, now));
        // Its boots are refused: with the failure, and without it from the same process (a
        // monitor session that ended); it stays down.
        let boot_info = |new_process, store_failure: Option<&str>| BootInfo {
            uuid: "a".into(),
            host: "h1".into(),
            shard_ports: vec![1],
            weight: 1.0,
            new_process,
            store_failure: store_failure.map(str::to_string),
            ..Default::default()
        };
        for (new_process, failure) in [(false, Some(why)), (true, Some(why)), (false, None)] {
            let err = m.boot(boot_info(new_process, failure), now).unwrap_err();
            assert!(
                matches!(&err, MonError::Precondition(msg) if msg.contains(why) && msg.contains(&format!("osd.{a}"))),
                "{err}"
            );
            assert!(!m.map().osds[&a].up);
        }
        assert_eq!(m.map().epoch, e + 1);
        // Reports must come from the OSD's own uuid; unknown OSDs are refused.
        assert!(m.store_failed(a, "b", why, now).is_err());
        assert!(m.store_failed(77, "x", why, now).is_err());
        // A reason is bounded.
        m.store_failed(a, "a", &"é".repeat(600), now).unwrap();
        assert!(m.store_failures()[0].1.len() <= MAX_FAILURE_REASON);
        // An unknown OSD with a failed store cannot join.
        let mut newcomer = boot_info(true, Some(why));
        newcomer.uuid = "c".into();
        assert!(m.boot(newcomer, now).is_err());
        assert!(m.map().osd_by_uuid("c").is_none());
        // A new process (the store mounted afresh) boots and clears it.
        m.boot(boot_info(true, None), now).unwrap();
        assert!(m.map().osds[&a].up);
        assert!(m.store_failures().is_empty());
        // `osd rm` forgets a failure too.
        m.set_flag("nodown", false).unwrap();
        m.store_failed(b, "b", why, now).unwrap();
        m.osd_rm(b).unwrap();
        assert!(m.store_failures().is_empty());
    }

    #[test]
    fn the_cluster_fsid_is_made_once_with_the_store_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let m = Monitor::open(MapStore::open(dir.path()).unwrap(), policy()).unwrap();
        let fsid = m.map().fsid.clone();
        assert_eq!(fsid.len(), 36, "{fsid}");
        assert_eq!(fsid.matches('-').count(), 4, "{fsid}");
        assert_eq!(&fsid[14..15], "4", "a version 4 uuid: {fsid}");
        drop(m);
        let m = Monitor::open(MapStore::open(dir.path()).unwrap(), policy()).unwrap();
        assert_eq!(m.map().fsid, fsid);
        assert_eq!(m.map().epoch, 1);
        // Another store, another cluster.
        let other = tempfile::tempdir().unwrap();
        let o = Monitor::open(MapStore::open(other.path()).unwrap(), policy()).unwrap();
        assert_ne!(o.map().fsid, fsid);

        // A store from before fsids: its next start makes one, in a new epoch, kept after.
        let legacy = tempfile::tempdir().unwrap();
        let store = MapStore::open(legacy.path()).unwrap();
        let old = ClusterMap {
            epoch: 3,
            next_osd_id: 0,
            ..Default::default()
        };
        store.commit(&old, 4).unwrap();
        drop(store);
        let m = Monitor::open(MapStore::open(legacy.path()).unwrap(), policy()).unwrap();
        let made = m.map().fsid.clone();
        assert_eq!(made.len(), 36);
        assert_eq!(m.map().epoch, 4);
        // Subscribers that follow incrementals learn it too.
        let incs = m.incrementals_since(3).unwrap();
        assert_eq!(incs.last().unwrap().fsid, made);
        drop(m);
        let m = Monitor::open(MapStore::open(legacy.path()).unwrap(), policy()).unwrap();
        assert_eq!(m.map().fsid, made);
        assert_eq!(m.map().epoch, 4);
    }

    #[test]
    fn failure_reports_need_distinct_up_reporters() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Monitor::open(MapStore::open(dir.path()).unwrap(), policy()).unwrap();
        let now = Instant::now();
        let a = boot(&mut m, "a", "h1", now);
        let b = boot(&mut m, "b", "h2", now);
        let c = boot(&mut m, "c", "h3", now);
        assert!(m.report_failure(a, a, now).is_err());
        assert!(!m.report_failure(a, c, now).unwrap());
        // The same reporter again does not count twice.
        assert!(!m.report_failure(a, c, now).unwrap());
        let e = m.map().epoch;
        assert!(m.report_failure(b, c, now).unwrap());
        assert!(!m.map().osds[&c].up);
        assert_eq!(m.map().epoch, e + 1);
        // A down OSD cannot report, and its heartbeat is answered with "boot again".
        assert!(m.report_failure(c, a, now).is_err());
        assert!(m.heartbeat(c, "c", 0, 0, now));
        assert!(!m.heartbeat(a, "a", 0, 0, now));
        // A heartbeat with the wrong uuid is not taken as liveness.
        assert!(m.heartbeat(a, "not-a", 0, 0, now));
    }

    #[test]
    fn no_op_changes_make_no_epoch_and_history_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Monitor::open(MapStore::open(dir.path()).unwrap(), policy()).unwrap();
        let now = Instant::now();
        let a = boot(&mut m, "a", "h1", now);
        let e = m.osd_in(a).unwrap();
        assert_eq!(m.osd_in(a).unwrap(), e, "already in: no new epoch");
        m.tick(now).unwrap();
        assert_eq!(m.map().epoch, e);
        for i in 0..6 {
            m.pool_create(&format!("p{i}"), 8, 1, 1).unwrap();
        }
        let cur = m.map().epoch;
        // history = 4 epochs: the oldest held is cur - 3, reachable by incrementals from cur - 3.
        assert!(m.map_at(cur - 3).is_some());
        assert!(m.map_at(cur - 4).is_none());
        assert_eq!(m.incrementals_since(cur - 3).unwrap().len(), 3);
        assert!(m.incrementals_since(cur - 4).is_none());
        assert!(matches!(
            m.pool_create("p0", 8, 1, 1),
            Err(MonError::Exists(_))
        ));
        assert!(matches!(
            m.pool_set("p0", "size", "0"),
            Err(MonError::Invalid(_))
        ));
        assert!(matches!(m.osd_rm(a), Err(MonError::Precondition(_))));
        // The store holds the same window after a reopen.
        drop(m);
        let m = Monitor::open(MapStore::open(dir.path()).unwrap(), policy()).unwrap();
        assert_eq!(m.map().epoch, cur);
        assert!(m.map_at(cur - 3).is_some());
        assert!(m.map_at(cur - 4).is_none());
        assert_eq!(m.incrementals_since(cur - 2).unwrap().len(), 2);
    }

    /// Pools of more than 5 copies are refused at creation and by `pool set size`, with
    /// nothing committed; 1 to 5 work.
    #[test]
    fn pools_larger_than_the_supported_size_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Monitor::open(MapStore::open(dir.path()).unwrap(), policy()).unwrap();
        let e = m.map().epoch;
        for size in [6, 7, 16] {
            let err = m.pool_create("big", 8, size, 1).unwrap_err();
            assert!(
                matches!(err, MonError::ReplicationUnsupported { size: s, max: 5 } if s == size),
                "{err:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains("at most 5 copies"), "{msg}");
        }
        // min_size 0 means "default" (size - size/2): refused for the size, not min_size.
        assert!(matches!(
            m.pool_create("big", 8, 6, 0),
            Err(MonError::ReplicationUnsupported { size: 6, max: 5 })
        ));
        // Out-of-range sizes are still plain invalid arguments.
        assert!(matches!(
            m.pool_create("big", 8, 17, 1),
            Err(MonError::Invalid(_))
        ));
        assert_eq!(m.map().epoch, e, "a refused pool makes no epoch");
        assert!(m.map().pools.is_empty());
        m.pool_create("ok", 8, MAX_POOL_SIZE_SUPPORTED, 1).unwrap();
        m.pool_create("three", 8, 3, 2).unwrap();
        assert!(matches!(
            m.pool_set("ok", "size", "6"),
            Err(MonError::ReplicationUnsupported { size: 6, max: 5 })
        ));
        assert_eq!(m.map().pool_by_name("ok").unwrap().size, 5);
        m.pool_set("ok", "size", "2").unwrap();
        m.pool_set("ok", "pg_num", "16").unwrap();
        // The gRPC code the CLI and clients see.
        let st = tonic::Status::from(MonError::ReplicationUnsupported { size: 6, max: 5 });
        assert_eq!(st.code(), tonic::Code::FailedPrecondition);
    }

    #[test]
    fn liveness_tick_marks_down_then_out_and_boot_brings_back_in() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Monitor::open(MapStore::open(dir.path()).unwrap(), policy()).unwrap();
        let t0 = Instant::now();
        let a = boot(&mut m, "a", "h1", t0);
        let b = boot(&mut m, "b", "h2", t0);
        let t1 = t0 + Duration::from_secs(11);
        assert!(!m.heartbeat(a, "a", 0, 0, t1));
        m.tick(t1).unwrap();
        assert!(m.map().osds[&a].up);
        assert!(!m.map().osds[&b].up && m.map().osds[&b].in_);
        let t2 = t1 + Duration::from_secs(61);
        assert!(!m.heartbeat(a, "a", 0, 0, t2));
        m.tick(t2).unwrap();
        assert!(!m.map().osds[&b].in_);
        assert_eq!(boot(&mut m, "b", "h2", t2), b);
        assert!(m.map().osds[&b].up && m.map().osds[&b].in_);
        // noout keeps a long-dead OSD in; nodown keeps a silent OSD up.
        m.set_flag("noout", true).unwrap();
        m.set_flag("nodown", true).unwrap();
        m.osd_down(b, t2).unwrap();
        let t3 = t2 + Duration::from_secs(200);
        m.tick(t3).unwrap();
        assert!(!m.map().osds[&b].up && m.map().osds[&b].in_, "noout");
        assert!(m.map().osds[&a].up, "nodown: no heartbeat but still up");
        assert!(matches!(
            m.set_flag("bogus", true),
            Err(MonError::Invalid(_))
        ));
        m.set_flag("nodown", false).unwrap();
        m.set_flag("noout", false).unwrap();
        assert!(m.map().flags.is_empty());
        boot(&mut m, "b", "h2", t3);
        // An admin "out" survives a reboot.
        m.osd_out(b).unwrap();
        m.osd_down(b, t2).unwrap();
        boot(&mut m, "b", "h2", t2);
        assert!(m.map().osds[&b].up && !m.map().osds[&b].in_);
    }
}
