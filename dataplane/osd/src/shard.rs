//! One OSD shard: messenger, PGs and object store, run to completion in one poller.
//!
//! A shard owns three things, each in its own module, and this one wires them together:
//! - its [`Messenger`]: a TCP stack (smoltcp on its DPDK queue, or kernel sockets), a listener
//!   on its own port (published in the map, so shard-aware clients connect to the shard that
//!   owns their PG) and its connections;
//! - its [`PgTable`]: the PGs it serves, with their acting sets, intervals and per-object
//!   ordering;
//! - its object store partition ([`ShardStore`]).
//!
//! Every loop iteration ([`ShardCore::poll`]):
//!
//! 1. the messenger polls the stack, accepts connections and decodes ops into owned
//!    [`Inbound`] jobs (handshake, frame checks and auth happen there);
//! 2. each job is routed ([`Routing::route`]): answered at once (`Again`, `StaleMap`,
//!    `Invalid`), executed here, or forwarded through the SPSC ring to the shard that owns the
//!    PG (counted: a shard-aware client causes none). The owner answers through the ring in the
//!    other direction, and the connection's shard encodes the reply;
//! 3. executes in the op's PG: mutations become one store transaction each (creating the PG's
//!    collection on first use), reads are ticketed store reads, stat and list are answered from
//!    the store's resident metadata; reads of an object being written wait in the PG;
//! 4. polls the store and turns completions into replies;
//! 5. the messenger writes pending reply bytes.
//!
//! ## Map changes
//! A new map arrives as a control message and replaces the routing table and updates the PG
//! table between two iterations. Ops already submitted to the store complete and are answered
//! (they were valid when they were routed); ops decoded afterwards are routed by the new table.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use carmine_agent::SharedKeyring;
use carmine_net::NetStack;
use carmine_objectstore::{Completion, Done, ObjectId, Op, Ticket, Transaction};
use carmine_placement::ClusterMap;
use carmine_reactor::{Mailbox, Poller, Source};
use carmine_wire::op::OpKind;
use carmine_wire::OpError;

pub use crate::messenger::BACKLOG;
use crate::messenger::{ConnRef, Inbound, ListenError, Messenger};
use crate::ops::{op_error, Answer, Job};
use crate::perf::{Latency, ShardCounters};
use crate::pg::{Creates, PgKey, PgTable};
use crate::pglog::{log_object, version_key, ReqId, VERSION_ATTR};
use crate::routing::Routing;
use crate::scrub::Scrubber;
use crate::shard_store::ShardStore;

/// Messages between shards and from the control plane.
#[derive(Debug)]
pub enum ShardMsg {
    /// A new cluster map (from the agent, through the control ring).
    Map(Arc<ClusterMap>),
    /// An op that arrived at another shard's connection.
    Forward(Box<Inbound>),
    /// The answer to an op this shard forwarded.
    Reply(Box<Returned>),
    /// A request for the digest of a PG this shard holds (scrub, from the agent).
    Scrub(Box<carmine_agent::scrub::DigestRequest>),
}

/// An answer on its way back to the shard of the op's connection.
#[derive(Debug)]
pub struct Returned {
    conn: ConnRef,
    tid: u64,
    kind: OpKind,
    result: Result<Answer, OpError>,
    started: Instant,
}

/// An op the store is working on.
struct Pending {
    conn: ConnRef,
    tid: u64,
    kind: OpKind,
    started: Instant,
    pg: PgKey,
    /// Object key of a mutation (released in its PG on completion).
    order_key: Option<u64>,
    /// The request id of a mutation (committed to, or aborted in, the PG log on completion).
    req: Option<ReqId>,
    /// Which of the PG's collections this transaction creates (forgotten if it fails).
    creates: Creates,
}

/// What the daemon hands each shard at start.
pub struct ShardParts {
    pub shard: usize,
    pub shards: usize,
    pub uuid: String,
    pub net: Box<dyn NetStack>,
    pub port: u16,
    pub max_connections: usize,
    pub store: ShardStore,
    pub keyring: Arc<SharedKeyring>,
    pub counters: Arc<ShardCounters>,
    pub usage: Arc<(AtomicU64, AtomicU64)>,
}

/// A shard's state (owned by the shard thread; shared by its poller and message handler).
pub struct ShardCore {
    shard: usize,
    shards: usize,
    uuid: String,
    messenger: Messenger,
    routing: Routing,
    pgs: PgTable,
    store: ShardStore,
    /// Store tickets in flight, and the scratch their completions are reaped into.
    pending: HashMap<Ticket, Pending>,
    completions: Vec<Completion>,
    mailbox: Rc<Mailbox<ShardMsg>>,
    /// Messages a full ring did not take yet, in order.
    outbox: VecDeque<(usize, ShardMsg)>,
    /// Scratch: ops decoded this iteration, and parked ops being tried again.
    inbound: Vec<Inbound>,
    retry: Vec<Inbound>,
    /// The `ObjectId` reads and stats hand the store: refilled from the job's inline name, so
    /// they allocate nothing.
    lookup: ObjectId,
    counters: Arc<ShardCounters>,
    usage: Arc<(AtomicU64, AtomicU64)>,
    latency: Latency,
    warned_pools: HashSet<u64>,
    /// Background digests of PGs for scrub (src/scrub.rs).
    scrub: Scrubber,
}

/// Why a shard could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error(transparent)]
    Listen(#[from] ListenError),
}

impl ShardCore {
    /// Listens and returns the core and the port it listens on.
    pub fn new(
        p: ShardParts,
        mailbox: Rc<Mailbox<ShardMsg>>,
    ) -> Result<(ShardCore, u16), ShardError> {
        let (messenger, port) =
            Messenger::listen(p.shard, p.net, p.port, p.max_connections, p.keyring)?;
        let pgs = PgTable::new(p.store.get_ref().list_collections());
        let core = ShardCore {
            shard: p.shard,
            shards: p.shards,
            uuid: p.uuid,
            messenger,
            routing: Routing::default(),
            pgs,
            store: p.store,
            pending: HashMap::with_capacity(1024),
            completions: Vec::with_capacity(256),
            mailbox,
            outbox: VecDeque::with_capacity(64),
            inbound: Vec::with_capacity(256),
            retry: Vec::with_capacity(64),
            lookup: ObjectId(Vec::with_capacity(256)),
            counters: p.counters,
            usage: p.usage,
            latency: Latency::new(),
            warned_pools: HashSet::new(),
            scrub: Scrubber::new(),
        };
        Ok((core, port))
    }

    /// One loop iteration; returns the work done (0: idle).
    pub fn poll(&mut self) -> usize {
        let mut work = self.messenger.poll_net();
        work += self.messenger.accept(&self.counters);
        let store = &mut self.store;
        work += self.messenger.read(
            &self.counters,
            &mut |n| store.get().data_buf(n),
            &mut self.inbound,
        );
        work += self.route_inbound();
        work += self.poll_store();
        work += self.scrub.poll(self.store.get());
        work += self.flush_outbox();
        let wrote = self.messenger.write(&self.counters);
        if wrote > 0 {
            // Push the replies out now rather than on the next iteration.
            work += wrote + self.messenger.poll_net();
        }
        let now = Instant::now();
        if self.latency.maybe_publish(&self.counters, now) {
            self.publish_usage();
        }
        work
    }

    /// The latest instant the shard must poll again: now while the store or a connection has
    /// work in flight (SPDK completions and blocked writes have no fd to wake on).
    pub fn next_deadline(&self) -> Option<Instant> {
        let busy = !self.pending.is_empty()
            || !self.outbox.is_empty()
            || !self.store.get_ref().is_idle()
            || self.messenger.has_backlog()
            || self.scrub.busy();
        if busy {
            Some(Instant::now())
        } else {
            self.messenger.net_deadline()
        }
    }

    /// A message from the control plane or another shard.
    pub fn on_message(&mut self, _src: Source, msg: ShardMsg) {
        match msg {
            ShardMsg::Map(map) => self.apply_map(&map),
            ShardMsg::Forward(op) => {
                ShardCounters::add(&self.counters.forwards_received, 1);
                self.execute(*op);
            }
            ShardMsg::Reply(r) => {
                let r = *r;
                self.deliver_local(r.conn, r.tid, r.kind, r.result, r.started);
            }
            ShardMsg::Scrub(req) => self.scrub.request(*req),
        }
    }

    fn apply_map(&mut self, map: &ClusterMap) {
        if map.epoch <= self.routing.epoch() {
            return;
        }
        self.routing = Routing::build(map, &self.uuid, self.shards);
        let (routing, shard) = (&self.routing, self.shard);
        let new_intervals = self.pgs.apply_map(
            map,
            |k| routing.owner(k.pool, k.pg) == Some(shard),
            self.store.get_ref(),
        );
        ShardCounters::set(&self.counters.map_epoch, map.epoch);
        tracing::info!(
            shard = self.shard,
            epoch = map.epoch,
            osd = ?self.routing.osd(),
            primary_pgs = self.routing.owned_pgs(),
            shard_pgs = self.pgs.served(),
            new_intervals,
            "map applied"
        );
        self.publish_usage();
    }

    /// Store usage for the heartbeats (the monitor's nearfull/full checks).
    fn publish_usage(&self) {
        if let Some((used, cap)) = self.store.usage() {
            ShardCounters::set(&self.usage.0, used);
            ShardCounters::set(&self.usage.1, cap);
        }
    }

    fn route_inbound(&mut self) -> usize {
        let mut ops = std::mem::take(&mut self.inbound);
        let n = ops.len();
        for op in ops.drain(..) {
            match self.routing.route(&op.target) {
                Err(e) => self.reply(op.conn, op.tid, op.job.kind(), Err(e), op.started),
                Ok(owner) if owner == self.shard => self.execute(op),
                Ok(owner) => {
                    ShardCounters::add(&self.counters.forwards_sent, 1);
                    self.send_to(owner, ShardMsg::Forward(Box::new(op)));
                }
            }
        }
        self.inbound = ops;
        n
    }

    fn send_to(&mut self, dst: usize, msg: ShardMsg) {
        if !self.outbox.is_empty() {
            // Keep per-destination order behind what is already waiting.
            self.outbox.push_back((dst, msg));
            return;
        }
        if let Err(msg) = self.mailbox.send(dst, msg) {
            self.outbox.push_back((dst, msg));
        }
    }

    fn flush_outbox(&mut self) -> usize {
        let mut n = 0;
        while let Some((dst, msg)) = self.outbox.pop_front() {
            if let Err(msg) = self.mailbox.send(dst, msg) {
                self.outbox.push_front((dst, msg));
                break;
            }
            n += 1;
        }
        n
    }

    /// Runs an op in its PG on this (the owning) shard.
    fn execute(&mut self, op: Inbound) {
        let kind = op.job.kind();
        let Some(key) = PgKey::of(&op.target) else {
            return self.reply(op.conn, op.tid, kind, Err(OpError::Invalid), op.started);
        };
        let cid = key.cid();
        let pg = self.pgs.pg_mut(key, self.store.get_ref());
        if !pg.active() {
            // Fewer than min_size OSDs hold the PG: no I/O until a map brings enough back
            // (the client retries on Again; health shows the PG as unavailable).
            return self.reply(op.conn, op.tid, kind, Err(OpError::Again), op.started);
        }
        let replicated = pg.size() > 1;
        let order_key = op.job.object().map(|o| pg.object_key(o));
        let req = op.job.mutates().then(|| ReqId {
            client: op.client.clone(),
            tid: op.tid,
        });
        if let (Some(r), Some(object)) = (&req, order_key) {
            // A retry of a mutation this PG already applied gets the first result; one whose
            // first attempt is still in flight waits for it.
            if let Some(first) = pg.log.duplicate(r, kind, object) {
                ShardCounters::add(&self.counters.dup_replies, 1);
                let answer = match first.kind {
                    OpKind::WriteFull => Answer::WrittenFull,
                    OpKind::Remove => Answer::Removed,
                    _ => Answer::Written,
                };
                return self.reply(op.conn, op.tid, kind, Ok(answer), op.started);
            }
            if pg.log.in_flight(r, object) {
                ShardCounters::add(&self.counters.parked, 1);
                pg.park(op);
                return;
            }
        } else if let Some(k) = order_key {
            if pg.writing(k) {
                ShardCounters::add(&self.counters.parked, 1);
                pg.park(op);
                return;
            }
        }
        let Inbound {
            conn,
            tid,
            target,
            job,
            started,
            ..
        } = op;
        // A PG held only for its ops in flight has no pool view of its own: ask the routing.
        let replicated = replicated || self.routing.pool_size(target.pool).unwrap_or(1) > 1;
        if job.mutates() && replicated {
            if self.warned_pools.insert(target.pool) {
                tracing::warn!(
                    pool = target.pool,
                    "pool has size > 1 but this OSD does not replicate yet: writes refused \
                     (create the pool with --size 1)"
                );
            }
            return self.reply(conn, tid, kind, Err(OpError::Invalid), started);
        }
        let exists = self.pgs.on_store(key);
        let pending = |order_key, req, creates| Pending {
            conn,
            tid,
            kind,
            started,
            pg: key,
            order_key,
            req,
            creates,
        };
        match job {
            Job::Write { oid, off, data } => {
                let mut txn = Transaction {
                    ops: Vec::with_capacity(6),
                };
                let creates = self.create_if_new(key, &mut txn);
                txn.ops.push(Op::Write {
                    cid,
                    oid,
                    off,
                    data,
                });
                self.log_mutation(key, kind, req.clone(), order_key, &mut txn);
                self.submit(pending(order_key, req, creates), txn);
            }
            Job::WriteFull { oid, data } => {
                let mut txn = Transaction {
                    ops: Vec::with_capacity(7),
                };
                let creates = self.create_if_new(key, &mut txn);
                // Both ops create a missing object. Write, then cut to the new length: an
                // overwrite of the same size reuses what the object has (a store may write in
                // place), where truncating to 0 first would drop it and build it anew.
                let size = data.len() as u64;
                if size > 0 {
                    txn.ops.push(Op::Write {
                        cid,
                        oid: oid.clone(),
                        off: 0,
                        data,
                    });
                }
                txn.ops.push(Op::Truncate { cid, oid, size });
                self.log_mutation(key, kind, req.clone(), order_key, &mut txn);
                self.submit(pending(order_key, req, creates), txn);
            }
            Job::Remove { oid } => {
                if !exists {
                    return self.reply(conn, tid, kind, Err(OpError::NotFound), started);
                }
                let mut txn = Transaction {
                    ops: Vec::with_capacity(4),
                };
                // A store written before the PG log has no meta collection yet.
                let creates = self.create_if_new(key, &mut txn);
                txn.ops.push(Op::Remove { cid, oid });
                self.log_mutation(key, kind, req.clone(), order_key, &mut txn);
                self.submit(pending(order_key, req, creates), txn);
            }
            Job::Read { name, off, len } => {
                if !exists {
                    return self.reply(conn, tid, kind, Err(OpError::NotFound), started);
                }
                self.lookup.0.clear();
                self.lookup.0.extend_from_slice(&name);
                let ticket = self
                    .store
                    .get()
                    .read(cid, &self.lookup, off, u64::from(len));
                self.pending
                    .insert(ticket, pending(None, None, Creates::default()));
            }
            Job::Stat { name } => {
                let r = if exists {
                    self.lookup.0.clear();
                    self.lookup.0.extend_from_slice(&name);
                    self.store
                        .get_ref()
                        .stat(cid, &self.lookup)
                        .map(|s| Answer::Stat(s.size))
                        .map_err(|e| op_error(&e))
                } else {
                    Err(OpError::NotFound)
                };
                self.reply(conn, tid, kind, r, started);
            }
            Job::List { cursor, max } => {
                let r = if exists {
                    let after = (!cursor.is_empty()).then_some(ObjectId(cursor));
                    let max = max.clamp(1, self.messenger.limits().max_list_entries) as usize;
                    self.store
                        .get_ref()
                        .list(cid, after.as_ref(), max)
                        .map(|page| Answer::List {
                            names: page
                                .objects
                                .into_iter()
                                .map(|o| String::from_utf8_lossy(&o.0).into_owned())
                                .collect(),
                            next: page.next.map(|o| o.0),
                        })
                        .map_err(|e| op_error(&e))
                } else {
                    Ok(Answer::List {
                        names: Vec::new(),
                        next: None,
                    })
                };
                self.reply(conn, tid, kind, r, started);
            }
        }
    }

    /// Adds the creation of the PG's collections (data, and meta for its log) to `txn` where
    /// the store does not have them yet.
    fn create_if_new(&mut self, key: PgKey, txn: &mut Transaction) -> Creates {
        let creates = self.pgs.create_on_store(key);
        if creates.data {
            txn.ops.push(Op::CreateCollection { cid: key.cid() });
        }
        if creates.meta {
            txn.ops.push(Op::CreateCollection {
                cid: key.meta_cid(),
            });
        }
        creates
    }

    /// Gives the mutation in `txn` its version and adds, to the same transaction, the version
    /// attribute of the object (unless it is removed) and the PG log entry (with the trim of
    /// the oldest entries). `txn`'s last op is the mutation's own.
    fn log_mutation(
        &mut self,
        key: PgKey,
        kind: OpKind,
        req: Option<ReqId>,
        object_key: Option<u64>,
        txn: &mut Transaction,
    ) {
        let (Some(req), Some(object_key)) = (req, object_key) else {
            return;
        };
        let (oid, removes) = match txn.ops.last() {
            Some(Op::Remove { oid, .. }) => (oid.clone(), true),
            Some(Op::Write { oid, .. } | Op::Truncate { oid, .. }) => (oid.clone(), false),
            _ => return,
        };
        let pg = self.pgs.pg_mut(key, self.store.get_ref());
        let since = pg.interval_since();
        let w = pg.log.begin(since, kind, req, &oid.0, object_key);
        if !removes {
            txn.ops.push(Op::SetAttr {
                cid: key.cid(),
                oid,
                name: VERSION_ATTR.to_owned(),
                value: version_key(w.version).to_vec(),
            });
        }
        let meta = key.meta_cid();
        if !w.trim.is_empty() {
            txn.ops.push(Op::OmapRm {
                cid: meta,
                oid: log_object(),
                keys: w.trim,
            });
        }
        txn.ops.push(Op::OmapSet {
            cid: meta,
            oid: log_object(),
            entries: vec![(version_key(w.version).to_vec(), w.value)],
        });
    }

    fn submit(&mut self, p: Pending, txn: Transaction) {
        if let Some(k) = p.order_key {
            self.pgs
                .pg_mut(p.pg, self.store.get_ref())
                .begin_mutation(k);
        }
        let ticket = self.store.get().submit(txn);
        self.pending.insert(ticket, p);
        ShardCounters::set(&self.counters.inflight, self.pending.len() as u64);
    }

    fn poll_store(&mut self) -> usize {
        let mut done = std::mem::take(&mut self.completions);
        let n = self.store.get().poll(&mut done);
        for c in done.drain(..) {
            let Some(mut p) = self.pending.remove(&c.ticket) else {
                // Not an op's: a scrub read's, or unknown.
                if let Err(c) = self.scrub.on_completion(c, self.store.get()) {
                    tracing::error!(
                        ticket = c.ticket.0,
                        "store completion for an unknown ticket"
                    );
                }
                continue;
            };
            let committed = c.result.is_ok();
            if let Some(req) = p.req.take() {
                if let Some(pg) = self.pgs.get_mut(p.pg) {
                    if committed {
                        pg.log.commit(req);
                    } else {
                        pg.log.abort(&req);
                    }
                }
            }
            let result = match c.result {
                Ok(Done::Data(data)) => Ok(Answer::Read(data)),
                Ok(Done::Committed) => Ok(match p.kind {
                    OpKind::WriteFull => Answer::WrittenFull,
                    OpKind::Remove => Answer::Removed,
                    _ => Answer::Written,
                }),
                Err(e) => {
                    self.pgs.creation_failed(p.pg, p.creates);
                    let wire = op_error(&e);
                    if wire == OpError::Io {
                        tracing::error!(shard = self.shard, error = %e, "store error");
                    }
                    Err(wire)
                }
            };
            self.reply(p.conn, p.tid, p.kind, result, p.started);
            if let Some(k) = p.order_key {
                self.end_mutation(p.pg, k);
            }
        }
        self.completions = done;
        if n > 0 {
            ShardCounters::set(&self.counters.inflight, self.pending.len() as u64);
        }
        n
    }

    /// A mutation of object `k` of PG `key` completed: when it was the object's last one in
    /// flight, the PG's parked ops get another try (those still blocked park again).
    fn end_mutation(&mut self, key: PgKey, k: u64) {
        let Some(pg) = self.pgs.get_mut(key) else {
            return;
        };
        if pg.end_mutation(k) {
            let mut retry = std::mem::take(&mut self.retry);
            pg.take_parked(&mut retry);
            for op in retry.drain(..) {
                self.execute(op);
            }
            self.retry = retry;
        }
        self.pgs.forget_if_done(key);
    }

    fn reply(
        &mut self,
        conn: ConnRef,
        tid: u64,
        kind: OpKind,
        result: Result<Answer, OpError>,
        started: Instant,
    ) {
        if conn.shard as usize == self.shard {
            self.deliver_local(conn, tid, kind, result, started);
        } else {
            let msg = ShardMsg::Reply(Box::new(Returned {
                conn,
                tid,
                kind,
                result,
                started,
            }));
            self.send_to(conn.shard as usize, msg);
        }
    }

    /// Counts an answer and encodes it onto one of this shard's connections.
    fn deliver_local(
        &mut self,
        conn: ConnRef,
        tid: u64,
        kind: OpKind,
        result: Result<Answer, OpError>,
        started: Instant,
    ) {
        let ctr = &self.counters;
        ShardCounters::add(&ctr.ops, 1);
        ShardCounters::add(
            match kind {
                OpKind::Write | OpKind::WriteFull => &ctr.ops_write,
                OpKind::Read => &ctr.ops_read,
                OpKind::Stat => &ctr.ops_stat,
                OpKind::Remove => &ctr.ops_remove,
                OpKind::List => &ctr.ops_list,
            },
            1,
        );
        match &result {
            Ok(a) => ShardCounters::add(&ctr.bytes_out, a.bytes_out() as u64),
            Err(OpError::StaleMap { .. }) => ShardCounters::add(&ctr.stale_map, 1),
            Err(OpError::Again) => ShardCounters::add(&ctr.again, 1),
            Err(_) => ShardCounters::add(&ctr.errors, 1),
        }
        self.latency.record(started, Instant::now());
        self.messenger.deliver(conn, tid, &result);
        // The read data is in the reply bytes now (or not wanted): its buffer goes back to the
        // store's pool.
        if let Ok(Answer::Read(data)) = result {
            self.store.get().recycle(data);
        }
    }
}

/// The reactor-facing poller of a shard.
pub struct ShardPoller(pub Rc<RefCell<ShardCore>>);

impl Poller for ShardPoller {
    fn poll(&mut self) -> usize {
        self.0.borrow_mut().poll()
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.0.borrow().next_deadline()
    }

    fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        self.0.borrow().messenger.wait_fd()
    }
}
