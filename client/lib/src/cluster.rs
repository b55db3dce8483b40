//! [`Client`]: the cluster-level client. Map from the monitor, placement computed here, one
//! lazily opened [`Connection`] per (OSD, shard), and the retry loop every op runs through.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use carmine_placement::{ClusterMap, Pool};
use carmine_proto::tls::ClientTls;
use carmine_wire::{AuthKey, EncodeError, HandshakeError, Limits, OpError, OpRequest};
use thiserror::Error;
use tokio::sync::{watch, OnceCell};
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};
use tracing::debug;

use crate::conn::{ConnectOptions, Connection};
use crate::error::ClientError;
use crate::keyfile::Credentials;
use crate::mon::{self, MonClient, MonError};
use crate::reply::Reply;
use crate::retry::{self, OpCounters, OpPath, RetryPolicy, RouteCache};
use crate::route::{self, PoolRef, RouteError, Target};

/// How to reach the cluster and who we are.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Monitor address(es), comma-separated `host:port`.
    pub mon: String,
    pub client_id: String,
    /// The client's secret (`carmine auth add`): presented to the monitor; the data path
    /// authenticates with its data-path key (`carmine_proto::auth::data_path_key`).
    pub key: AuthKey,
    /// Deadline of one op, retries included.
    pub op_timeout: Duration,
    /// Most resends of one op (stale map, again, reconnect, no route yet). A guard against a
    /// loop that never backs off, not the usual bound: that is `op_timeout`. A failover
    /// (failure detection, then peering) keeps a PG answering `Again` for several seconds,
    /// about 40 resends at the backoff's 200 ms cap; the default leaves room for 3 minutes.
    pub retry_budget: u32,
    /// TCP connect + handshake with one OSD shard.
    pub connect_timeout: Duration,
    /// One monitor call.
    pub mon_timeout: Duration,
    pub limits: Limits,
    /// Follow the map with `MonCluster.Subscribe` (the default). Off: the map is refreshed
    /// (`GetMap`) only when an OSD answers `StaleMap` or a route is missing.
    pub follow_map: bool,
    /// The cluster CA (PEM file): the monitors are dialled over TLS and their certificates
    /// verified against it ([`ClientConfig::with_ca`]).
    pub mon_ca: Option<PathBuf>,
    /// Dial the monitors in plain text ([`ClientConfig::plaintext`]). One of `mon_ca` and
    /// this must be set: [`Client::connect`] refuses neither or both.
    pub mon_plaintext: bool,
}

impl ClientConfig {
    /// 30 s per op, 1024 resends, 5 s to connect to an OSD shard or get an answer from a
    /// monitor, default wire limits.
    pub fn new(mon: impl Into<String>, creds: Credentials) -> Self {
        ClientConfig {
            mon: mon.into(),
            client_id: creds.id,
            key: creds.key,
            op_timeout: Duration::from_secs(30),
            retry_budget: 1024,
            connect_timeout: Duration::from_secs(5),
            mon_timeout: Duration::from_secs(5),
            limits: Limits::DEFAULT,
            follow_map: true,
            mon_ca: None,
            mon_plaintext: false,
        }
    }

    /// Talk to the monitors over TLS, verified against the CA certificate in `ca`.
    pub fn with_ca(mut self, ca: impl Into<PathBuf>) -> Self {
        self.mon_ca = Some(ca.into());
        self
    }

    /// Talk to the monitors in plain text (chosen explicitly: there is no default).
    pub fn plaintext(mut self) -> Self {
        self.mon_plaintext = true;
        self
    }

    fn mon_tls(&self) -> Result<ClientTls, MonError> {
        ClientTls::choose(
            self.mon_ca.as_deref(),
            self.mon_plaintext,
            "ClientConfig::with_ca",
            "ClientConfig::plaintext",
        )
        .map_err(|e| MonError::Tls(Arc::new(e)))
    }
}

/// Errors of the cluster layer.
#[derive(Debug, Clone, Error)]
pub enum Error {
    #[error("monitor: {0}")]
    Mon(#[from] MonError),
    #[error("no pool {pool} in the cluster map (epoch {epoch})")]
    NoSuchPool { pool: String, epoch: u64 },
    /// The OSD executed the op and answered with this (not found, invalid, I/O, no space).
    #[error("{0}")]
    Op(OpError),
    #[error("osd.{osd} ({addr}) refused our credentials: {source}")]
    Auth {
        osd: u32,
        addr: std::net::SocketAddr,
        #[source]
        source: HandshakeError,
    },
    /// The request breaks a wire limit (object name or data too long...): never sent.
    #[error("request refused before sending: {0}")]
    Encode(#[from] EncodeError),
    #[error("op did not complete within {after:?} ({attempts} attempts; last problem: {last})")]
    Timeout {
        after: Duration,
        attempts: u32,
        last: String,
    },
    #[error("gave up after {attempts} attempts (retry budget): {last}")]
    RetriesExhausted { attempts: u32, last: String },
    #[error("the server broke the protocol: {0}")]
    Protocol(String),
    /// The client's runtime stopped under the op (a task it needed was cancelled).
    #[error("the client stopped: {0}")]
    Stopped(String),
}

impl Error {
    /// The object (or PG) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Op(OpError::NotFound))
    }
}

/// Counters of what the retry loop did, since the client started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Ops completed (successfully or with an OSD-reported error).
    pub ops: u64,
    /// Resends of any cause.
    pub retries: u64,
    /// Resends after `StaleMap`.
    pub stale_map_retries: u64,
    /// Full maps fetched with `GetMap` because the subscription was not fast enough.
    pub map_fetches: u64,
    /// Resends after `Again`.
    pub again_retries: u64,
    /// Connections opened.
    pub connects: u64,
    /// Connections opened to replace one that failed.
    pub reconnects: u64,
    /// The epoch of the client's map now.
    pub map_epoch: u64,
}

/// The connection of one (OSD, shard). Several ops may need it at once: the `OnceCell` makes
/// them share one connect attempt. A failed connection is replaced by a new slot, never reset.
struct Slot {
    addr: std::net::SocketAddr,
    /// How many connections this (OSD, shard) had before this slot: > 0 is a reconnect.
    generation: u64,
    cell: OnceCell<Arc<Connection>>,
}

impl Slot {
    fn new(addr: std::net::SocketAddr, generation: u64) -> Arc<Self> {
        Arc::new(Slot {
            addr,
            generation,
            cell: OnceCell::new(),
        })
    }
}

struct Inner {
    cfg: ClientConfig,
    conn_opts: ConnectOptions,
    mon: Arc<MonClient>,
    map: watch::Sender<Arc<ClusterMap>>,
    conns: Mutex<HashMap<(u32, u32), Arc<Slot>>>,
    routes: Mutex<RouteCache>,
    counters: OpCounters,
    /// The next op's tid. An op keeps its tid over all its attempts (the OSDs recognise a
    /// retried mutation by client id and tid); the counter starts at a random value so that
    /// a restarted client with the same id does not reuse its predecessor's tids.
    next_tid: AtomicU64,
}

/// A random start for a client's tids (time and pid if the OS has no randomness to give).
pub fn first_tid() -> u64 {
    match carmine_wire::Nonce::random() {
        Ok(n) => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&n.0[..8]);
            u64::from_le_bytes(b)
        }
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            t ^ (u64::from(std::process::id()) << 32)
        }
    }
}

/// A client of one Carmine cluster. All methods take `&self`; share it (e.g. in an `Arc`) and
/// run any number of ops at once. Dropping it stops the map subscription and closes every
/// connection.
pub struct Client {
    inner: Arc<Inner>,
    follower: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.inner.cfg.client_id)
            .field("mon", &self.inner.cfg.mon)
            .field("epoch", &self.epoch())
            .finish_non_exhaustive()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(f) = &self.follower {
            f.abort();
        }
    }
}

/// One PG's list page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    pub names: Vec<String>,
    /// Pass to the next `list_pg`; `None` when the PG has no more.
    pub next_cursor: Option<Vec<u8>>,
}

impl Client {
    /// Fetches the map (must succeed) and starts following it. Connections to OSDs open on
    /// first use.
    pub async fn connect(cfg: ClientConfig) -> Result<Client, Error> {
        let mon = Arc::new(MonClient::new(
            &cfg.mon,
            cfg.mon_tls()?,
            Some((cfg.client_id.as_str(), &cfg.key)),
            cfg.mon_timeout,
        )?);
        let map = mon.get_map().await?;
        debug!(epoch = map.epoch, "client got the map");
        let (tx, _) = watch::channel(Arc::new(map));
        let data_key = AuthKey::new(carmine_proto::auth::data_path_key(cfg.key.as_bytes()));
        let mut conn_opts = ConnectOptions::new(cfg.client_id.clone(), data_key);
        conn_opts.limits = cfg.limits;
        conn_opts.connect_timeout = cfg.connect_timeout;
        conn_opts.op_timeout = cfg.op_timeout;
        let inner = Arc::new(Inner {
            cfg,
            conn_opts,
            mon: mon.clone(),
            map: tx.clone(),
            conns: Mutex::new(HashMap::new()),
            routes: Mutex::new(RouteCache::default()),
            counters: OpCounters::default(),
            next_tid: AtomicU64::new(first_tid()),
        });
        let follower = inner
            .cfg
            .follow_map
            .then(|| tokio::spawn(mon::follow(mon, tx)));
        Ok(Client { inner, follower })
    }

    /// The wire limits the client keeps to (e.g. the largest op, `max_io_size`).
    pub fn limits(&self) -> &Limits {
        &self.inner.cfg.limits
    }

    /// The map the client routes with now.
    pub fn map(&self) -> Arc<ClusterMap> {
        self.inner.map.borrow().clone()
    }

    /// A receiver of the client's map: marked changed whenever a newer map replaces it (for
    /// a caller that keeps its own copy and checks `has_changed`, which takes no lock).
    pub fn map_watch(&self) -> watch::Receiver<Arc<ClusterMap>> {
        self.inner.map.subscribe()
    }

    pub fn epoch(&self) -> u64 {
        self.inner.map.borrow().epoch
    }

    /// What the retry loop did so far.
    pub fn stats(&self) -> ClientStats {
        self.inner.counters.snapshot(self.epoch())
    }

    /// Fetches the monitor's current map now (normally the subscription keeps it current).
    /// Returns the client's epoch afterwards.
    pub async fn refresh_map(&self) -> Result<u64, Error> {
        self.inner.counters.map_fetched();
        self.inner.fetch_map().await?;
        Ok(self.epoch())
    }

    /// Waits until the client's map reaches `epoch` (through the subscription), up to `limit`.
    /// True if it did.
    pub async fn wait_for_epoch(&self, epoch: u64, limit: Duration) -> bool {
        self.inner
            .wait_epoch(epoch, std::time::Instant::now() + limit)
            .await
    }

    /// The pool, from the current map or, when that lacks it, a freshly fetched one.
    pub async fn pool<'p>(&self, pool: impl Into<PoolRef<'p>>) -> Result<Pool, Error> {
        let pool = pool.into();
        let map = retry::pool_map(&*self.inner, pool).await?;
        pool.find(&map).cloned().ok_or_else(|| Error::NoSuchPool {
            pool: pool.to_string(),
            epoch: map.epoch,
        })
    }

    /// Where `object` of `pool` goes with the current map.
    pub fn locate<'p>(&self, pool: impl Into<PoolRef<'p>>, object: &str) -> Result<Target, Error> {
        let pool = pool.into();
        let map = self.map();
        let p = pool.find(&map).ok_or_else(|| Error::NoSuchPool {
            pool: pool.to_string(),
            epoch: map.epoch,
        })?;
        route::route_object(&map, p, object).map_err(|e| Error::Protocol(e.to_string()))
    }

    /// Writes `data` at `offset` of `object`, creating or extending it.
    pub async fn write<'p>(
        &self,
        pool: impl Into<PoolRef<'p>>,
        object: &str,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Error> {
        retry::write(
            &*self.inner,
            self.inner.tid(),
            pool.into(),
            object,
            offset,
            data,
        )
        .await
    }

    /// Replaces the whole content of `object` with `data`.
    pub async fn write_full<'p>(
        &self,
        pool: impl Into<PoolRef<'p>>,
        object: &str,
        data: &[u8],
    ) -> Result<(), Error> {
        retry::write_full(&*self.inner, self.inner.tid(), pool.into(), object, data).await
    }

    /// Reads up to `len` bytes at `offset` (fewer at the end of the object).
    pub async fn read<'p>(
        &self,
        pool: impl Into<PoolRef<'p>>,
        object: &str,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, Error> {
        retry::read(
            &*self.inner,
            self.inner.tid(),
            pool.into(),
            object,
            offset,
            len,
        )
        .await
    }

    /// The object's size.
    pub async fn stat<'p>(&self, pool: impl Into<PoolRef<'p>>, object: &str) -> Result<u64, Error> {
        retry::stat(&*self.inner, self.inner.tid(), pool.into(), object).await
    }

    /// Removes the object.
    pub async fn remove<'p>(
        &self,
        pool: impl Into<PoolRef<'p>>,
        object: &str,
    ) -> Result<(), Error> {
        retry::remove(&*self.inner, self.inner.tid(), pool.into(), object).await
    }

    /// One page (at most `max` names) of PG `pg`, after `cursor` (empty to start).
    pub async fn list_pg<'p>(
        &self,
        pool: impl Into<PoolRef<'p>>,
        pg: u32,
        cursor: &[u8],
        max: u32,
    ) -> Result<ListPage, Error> {
        let tid = self.inner.tid();
        retry::list_pg(&*self.inner, tid, pool.into(), pg, cursor, max).await
    }

    /// Every object name of the pool, PG by PG (in PG order, each PG in the OSD's order).
    pub async fn list<'p>(&self, pool: impl Into<PoolRef<'p>>) -> Result<Vec<String>, Error> {
        let pool = pool.into();
        let pg_num = {
            let map = retry::pool_map(&*self.inner, pool).await?;
            pool.find(&map).map_or(0, |p| p.pg_num)
        };
        let page = self.inner.cfg.limits.max_list_entries.max(1);
        let mut out = Vec::new();
        for pg in 0..pg_num {
            let mut cursor = Vec::new();
            loop {
                let p = self.list_pg(pool, pg, &cursor, page).await?;
                out.extend(p.names);
                match p.next_cursor {
                    Some(c) if !c.is_empty() => cursor = c,
                    _ => break,
                }
            }
        }
        Ok(out)
    }
}

impl Inner {
    fn lock_conns(&self) -> MutexGuard<'_, HashMap<(u32, u32), Arc<Slot>>> {
        // Single inserts/removes under the lock: a poisoned map is still consistent.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh tid for the next op; the op keeps it over all its attempts (a retried mutation
    /// is recognised, not applied twice).
    fn tid(&self) -> u64 {
        self.next_tid.fetch_add(1, Ordering::Relaxed)
    }

    /// The connection to `t`, opened if needed (concurrent callers share one attempt).
    async fn open(&self, t: &Target) -> Result<Arc<Connection>, ClientError> {
        let slot = {
            let mut conns = self.lock_conns();
            let key = (t.osd, t.shard);
            match conns.get(&key) {
                Some(s) if s.addr == t.addr && !s.cell.get().is_some_and(|c| c.is_closed()) => {
                    s.clone()
                }
                old => {
                    let generation =
                        old.map_or(0, |s| s.generation + u64::from(s.cell.initialized()));
                    let s = Slot::new(t.addr, generation);
                    conns.insert(key, s.clone());
                    s
                }
            }
        };
        let c = slot
            .cell
            .get_or_try_init(|| async {
                let c = Connection::connect(slot.addr, &self.conn_opts).await?;
                self.counters.connected(slot.generation > 0);
                debug!(osd = t.osd, shard = t.shard, addr = %slot.addr, "connected");
                Ok::<_, ClientError>(Arc::new(c))
            })
            .await?;
        Ok(c.clone())
    }
}

/// The tokio transport: kernel TCP connections shared by every task of the process.
impl OpPath for Inner {
    type Conn = Arc<Connection>;

    fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            op_timeout: self.cfg.op_timeout,
            retry_budget: self.cfg.retry_budget,
            follow_map: self.cfg.follow_map,
        }
    }

    fn map(&self) -> Arc<ClusterMap> {
        self.map.borrow().clone()
    }

    fn route(&self, map: &ClusterMap, pool: &Pool, pg: u32) -> Result<Target, RouteError> {
        let cached = {
            let mut c = self.routes.lock().unwrap_or_else(|e| e.into_inner());
            c.get(map.epoch, pool.id, pg)
        };
        if let Some(t) = cached {
            return Ok(t);
        }
        // Placement runs outside the lock: concurrent ops may compute the same route twice.
        let t = route::route_pg(map, pool, pg)?;
        let mut c = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        c.put(map.epoch, pool.id, pg, t);
        Ok(t)
    }

    async fn conn(
        &self,
        t: &Target,
        deadline: std::time::Instant,
    ) -> Result<Arc<Connection>, ClientError> {
        match timeout_at(Instant::from_std(deadline), self.open(t)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout(self.cfg.connect_timeout)),
        }
    }

    fn drop_conn(&self, t: &Target, conn: &Arc<Connection>) {
        let mut conns = self.lock_conns();
        let key = (t.osd, t.shard);
        if let Some(s) = conns.get(&key) {
            if s.cell.get().is_some_and(|c| Arc::ptr_eq(c, conn)) {
                let next = Slot::new(s.addr, s.generation + 1);
                conns.insert(key, next);
            }
        }
    }

    async fn call(
        &self,
        conn: &Arc<Connection>,
        tid: u64,
        req: &OpRequest<'_>,
        deadline: std::time::Instant,
    ) -> Result<Reply, ClientError> {
        match timeout_at(Instant::from_std(deadline), conn.call_as(tid, req)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout(self.cfg.op_timeout)),
        }
    }

    async fn wait_epoch(&self, epoch: u64, deadline: std::time::Instant) -> bool {
        let mut rx = self.map.subscribe();
        timeout_at(
            Instant::from_std(deadline),
            rx.wait_for(|m| m.epoch >= epoch),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }

    async fn fetch_map(&self) -> Result<(), Error> {
        let m = self.mon.get_map().await?;
        mon::publish(&self.map, m);
        Ok(())
    }

    fn counters(&self) -> &OpCounters {
        &self.counters
    }
}
