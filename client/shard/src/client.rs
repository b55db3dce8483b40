//! [`ShardClient`]: the client library's ops, run on one reactor shard.
//!
//! Routing and retries are `carmine_client::retry::run_op`, the same code the tokio
//! [`carmine_client::Client`] runs; this type is only the [`OpPath`] for a reactor shard:
//! - **the map** comes from a tokio `Client` on the control-plane runtime, which follows the
//!   monitor's subscription: the shard keeps a copy and takes the new one when the `watch`
//!   says it changed (no lock per op, no I/O on the shard). A `GetMap`
//!   is spawned on that runtime and its `JoinHandle` awaited here (it wakes the shard's task
//!   from the runtime's thread);
//! - **connections** are [`ShardConn`]s over the shard's [`AsyncNet`], one per (OSD, shard),
//!   opened on first use; concurrent ops wait for one connect attempt;
//! - **waiting for a newer map** (and the backoff sleep) polls the map's epoch every
//!   millisecond on the shard's timer;
//! - **deadlines**: a sweeper task expires overdue calls every [`SWEEP`].

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::net::{SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use carmine_client::retry::{self, OpCounters, OpPath, RetryPolicy, RouteCache};
use carmine_client::route::{PoolRef, RouteError, Target};
use carmine_client::{
    Client, ClientConfig, ClientError, ClientStats, ConnectOptions, Error, Reply,
};
use carmine_net::{AsyncNet, NetStack};
use carmine_placement::{ClusterMap, Pool};
use carmine_wire::AuthKey;

use crate::conn::ShardConn;

/// How often overdue calls are failed: the granularity of op timeouts.
pub const SWEEP: Duration = Duration::from_millis(100);
/// How often a wait for a newer map looks at the map.
const MAP_POLL: Duration = Duration::from_millis(1);

/// The connection of one (OSD, shard), or the attempt to open it.
struct Slot<S: NetStack + 'static> {
    addr: SocketAddr,
    /// Connections this (OSD, shard) had before this slot: > 0 is a reconnect.
    generation: u64,
    conn: Option<Rc<ShardConn<S>>>,
    /// An op is connecting; the others wait in `waiters`.
    connecting: bool,
    waiters: Vec<Waker>,
}

/// A slot shared by the ops that use its connection.
type SharedSlot<S> = Rc<RefCell<Slot<S>>>;

/// The client's state shared with its sweeper task.
struct Conns<S: NetStack + 'static> {
    /// By (OSD, shard).
    slots: RefCell<HashMap<(u32, u32), SharedSlot<S>>>,
    stopped: Cell<bool>,
}

/// A client of one cluster whose data path runs on the current reactor shard. Create it on
/// the shard (it spawns its sweeper there); share it between the shard's tasks with an `Rc`.
pub struct ShardClient<S: NetStack + 'static> {
    net: AsyncNet<S>,
    maps: Arc<Client>,
    /// The map ops route with: `maps`' map, copied when its watch says it changed (a check
    /// without a lock, where reading the watch itself takes its lock on every op).
    map: RefCell<(
        tokio::sync::watch::Receiver<Arc<ClusterMap>>,
        Arc<ClusterMap>,
    )>,
    runtime: tokio::runtime::Handle,
    opts: ConnectOptions,
    policy: RetryPolicy,
    conns: Rc<Conns<S>>,
    routes: RefCell<RouteCache>,
    counters: OpCounters,
    next_tid: Cell<u64>,
}

impl<S: NetStack + 'static> Drop for ShardClient<S> {
    fn drop(&mut self) {
        self.conns.stopped.set(true);
    }
}

impl<S: NetStack + 'static> ShardClient<S> {
    /// A client over `net` for the cluster `maps` follows (`maps` was connected with `cfg`;
    /// `runtime` runs it). Spawns the sweeper on the current shard.
    pub fn new(
        net: AsyncNet<S>,
        maps: Arc<Client>,
        runtime: tokio::runtime::Handle,
        cfg: &ClientConfig,
    ) -> Result<Self, carmine_reactor::ReactorError> {
        let data_key = AuthKey::new(carmine_proto::auth::data_path_key(cfg.key.as_bytes()));
        let mut opts = ConnectOptions::new(cfg.client_id.clone(), data_key);
        opts.limits = cfg.limits;
        opts.connect_timeout = cfg.connect_timeout;
        opts.op_timeout = cfg.op_timeout;
        let conns = Rc::new(Conns {
            slots: RefCell::new(HashMap::new()),
            stopped: Cell::new(false),
        });
        carmine_reactor::spawn_local(sweep(conns.clone(), cfg.op_timeout))?;
        let mut rx = maps.map_watch();
        let current = rx.borrow_and_update().clone();
        Ok(ShardClient {
            net,
            maps,
            map: RefCell::new((rx, current)),
            runtime,
            opts,
            policy: RetryPolicy {
                op_timeout: cfg.op_timeout,
                retry_budget: cfg.retry_budget,
                follow_map: cfg.follow_map,
            },
            conns,
            routes: RefCell::new(RouteCache::default()),
            counters: OpCounters::default(),
            next_tid: Cell::new(carmine_client::first_tid()),
        })
    }

    /// What the retry loop did so far.
    pub fn stats(&self) -> ClientStats {
        self.counters.snapshot(self.current_map().epoch)
    }

    /// The newest map (see the `map` field).
    fn current_map(&self) -> Arc<ClusterMap> {
        let mut m = self.map.borrow_mut();
        let (rx, current) = &mut *m;
        if rx.has_changed().unwrap_or(false) {
            *current = rx.borrow_and_update().clone();
        }
        current.clone()
    }

    /// A fresh tid for the next op (kept over all its attempts).
    fn tid(&self) -> u64 {
        let tid = self.next_tid.get();
        self.next_tid.set(tid.wrapping_add(1));
        tid
    }

    /// Replaces the whole content of `object` with `data`.
    pub async fn write_full(
        &self,
        pool: PoolRef<'_>,
        object: &str,
        data: &[u8],
    ) -> Result<(), Error> {
        retry::write_full(self, self.tid(), pool, object, data).await
    }

    /// Writes `data` at `offset` of `object`, creating or extending it.
    pub async fn write(
        &self,
        pool: PoolRef<'_>,
        object: &str,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Error> {
        retry::write(self, self.tid(), pool, object, offset, data).await
    }

    /// Reads up to `len` bytes at `offset` (fewer at the end of the object).
    pub async fn read(
        &self,
        pool: PoolRef<'_>,
        object: &str,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, Error> {
        retry::read(self, self.tid(), pool, object, offset, len).await
    }

    /// The object's size.
    pub async fn stat(&self, pool: PoolRef<'_>, object: &str) -> Result<u64, Error> {
        retry::stat(self, self.tid(), pool, object).await
    }

    /// Removes the object.
    pub async fn remove(&self, pool: PoolRef<'_>, object: &str) -> Result<(), Error> {
        retry::remove(self, self.tid(), pool, object).await
    }

    /// The slot of `t`'s (OSD, shard), replaced if its connection failed or moved.
    fn slot(&self, t: &Target) -> SharedSlot<S> {
        let mut slots = self.conns.slots.borrow_mut();
        let key = (t.osd, t.shard);
        if let Some(s) = slots.get(&key) {
            let b = s.borrow();
            if b.addr == t.addr && !b.conn.as_ref().is_some_and(|c| c.is_closed()) {
                return s.clone();
            }
        }
        let generation = slots.get(&key).map_or(0, |s| {
            let b = s.borrow();
            b.generation + u64::from(b.conn.is_some())
        });
        let s = Rc::new(RefCell::new(Slot {
            addr: t.addr,
            generation,
            conn: None,
            connecting: false,
            waiters: Vec::new(),
        }));
        slots.insert(key, s.clone());
        s
    }
}

/// Fails overdue calls every [`SWEEP`] until the client is dropped.
async fn sweep<S: NetStack + 'static>(conns: Rc<Conns<S>>, limit: Duration) {
    while !conns.stopped.get() {
        carmine_reactor::sleep(SWEEP).await;
        let now = Instant::now();
        for slot in conns.slots.borrow().values() {
            if let Some(c) = &slot.borrow().conn {
                c.expire(now, limit);
            }
        }
    }
}

impl<S: NetStack + 'static> OpPath for ShardClient<S> {
    type Conn = Rc<ShardConn<S>>;

    fn policy(&self) -> RetryPolicy {
        self.policy
    }

    fn map(&self) -> Arc<ClusterMap> {
        self.current_map()
    }

    fn route(&self, map: &ClusterMap, pool: &Pool, pg: u32) -> Result<Target, RouteError> {
        self.routes.borrow_mut().route(map, pool, pg)
    }

    async fn conn(&self, t: &Target, deadline: Instant) -> Result<Self::Conn, ClientError> {
        let SocketAddr::V4(addr) = t.addr else {
            return Err(ClientError::Connect {
                addr: t.addr.to_string(),
                source: Arc::new(std::io::Error::other("the user-space stack is IPv4 only")),
            });
        };
        loop {
            let slot = self.slot(t);
            // Someone else connects: wait for their outcome, then look again.
            let mut waited = false;
            poll_fn(|cx| {
                let mut s = slot.borrow_mut();
                if s.connecting {
                    waited = true;
                    s.waiters.push(cx.waker().clone());
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            if let Some(c) = &slot.borrow().conn {
                return Ok(c.clone());
            }
            if waited {
                // Their attempt failed: try ourselves, unless time is up.
                if Instant::now() >= deadline {
                    return Err(ClientError::Timeout(self.opts.connect_timeout));
                }
                continue;
            }
            slot.borrow_mut().connecting = true;
            let r = connect_one(&self.net, addr, &self.opts, deadline).await;
            let mut s = slot.borrow_mut();
            s.connecting = false;
            for w in s.waiters.drain(..) {
                w.wake();
            }
            return match r {
                Ok(c) => {
                    let c = Rc::new(c);
                    s.conn = Some(c.clone());
                    self.counters.connected(s.generation > 0);
                    Ok(c)
                }
                Err(e) => Err(e),
            };
        }
    }

    fn drop_conn(&self, t: &Target, conn: &Self::Conn) {
        let mut slots = self.conns.slots.borrow_mut();
        let key = (t.osd, t.shard);
        let Some(s) = slots.get(&key) else {
            return;
        };
        let (ours, addr, generation) = {
            let b = s.borrow();
            (
                b.conn.as_ref().is_some_and(|c| Rc::ptr_eq(c, conn)),
                b.addr,
                b.generation,
            )
        };
        if ours {
            let next = Slot {
                addr,
                generation: generation + 1,
                conn: None,
                connecting: false,
                waiters: Vec::new(),
            };
            slots.insert(key, Rc::new(RefCell::new(next)));
        }
    }

    async fn call(
        &self,
        conn: &Self::Conn,
        tid: u64,
        req: &carmine_wire::OpRequest<'_>,
        deadline: Instant,
    ) -> Result<Reply, ClientError> {
        conn.call(tid, req, deadline).await
    }

    async fn wait_epoch(&self, epoch: u64, deadline: Instant) -> bool {
        loop {
            if self.current_map().epoch >= epoch {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            carmine_reactor::sleep((deadline - now).min(MAP_POLL)).await;
        }
    }

    async fn fetch_map(&self) -> Result<(), Error> {
        let maps = self.maps.clone();
        match self
            .runtime
            .spawn(async move { maps.refresh_map().await })
            .await
        {
            Ok(r) => r.map(|_| ()),
            Err(e) => Err(Error::Stopped(format!("the map refresh task: {e}"))),
        }
    }

    fn counters(&self) -> &OpCounters {
        &self.counters
    }
}

async fn connect_one<S: NetStack + 'static>(
    net: &AsyncNet<S>,
    addr: SocketAddrV4,
    opts: &ConnectOptions,
    deadline: Instant,
) -> Result<ShardConn<S>, ClientError> {
    let deadline = deadline.min(Instant::now() + opts.connect_timeout);
    ShardConn::connect(net, addr, opts, deadline).await
}
