//! One OSD shard: messenger, op path and object store, run to completion in one poller.
//!
//! Each shard owns a TCP stack ([`NetStack`]: smoltcp on its DPDK queue, or kernel sockets), a
//! listener on its own port (published in the map, so shard-aware clients connect to the shard
//! that owns their PG), its connections, its object store partition and its routing table.
//! Every loop iteration ([`ShardCore::poll`]):
//!
//! 1. polls the stack, accepts connections, reads bytes into each connection's
//!    [`ServerConn`] (handshake, frame checks, auth) and collects decoded ops as owned
//!    [`Job`]s;
//! 2. routes each job ([`Routing::route`]): answered at once (`Again`, `StaleMap`, `Invalid`),
//!    executed here, or forwarded through the SPSC ring to the shard that owns the PG (counted:
//!    a shard-aware client causes none). The owner answers through the ring in the other
//!    direction, and the connection's shard encodes the reply;
//! 3. executes: mutations become one store transaction each (creating the PG's collection on
//!    first use), reads are ticketed store reads, stat and list are answered from the store's
//!    resident metadata;
//! 4. polls the store and turns completions into reply frames;
//! 5. writes pending reply bytes (a short write is backpressure: the connection is not read
//!    again until its backlog drains below [`OUT_HIGH_WATER`]).
//!
//! ## Ordering
//! Mutations of one object are submitted in arrival order and the store commits in submission
//! order. A read or stat of an object with a mutation in flight waits ("parked") until that
//! mutation has completed, so a client never reads around its own acknowledged write. Objects
//! are tracked by a 64-bit hash of (collection, name): a collision only serialises two objects.
//!
//! ## Map changes
//! A new map arrives as a control message and replaces the routing table between two
//! iterations. Ops already submitted to the store complete and are answered (they were valid
//! when they were routed); ops decoded afterwards are routed by the new table.
//!
//! ## Malformed input
//! Any decode, checksum, handshake or protocol error closes that connection after sending the
//! farewell frame the wire layer prepared; the reason is logged at `warn` and counted. Nothing
//! on this path panics on input.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use carmine_agent::SharedKeyring;
use carmine_net::{ConnId, ListenerId, NetError, NetStack};
use carmine_objectstore::{CollectionId, Completion, Done, ObjectId, Op, Ticket, Transaction};
use carmine_placement::ClusterMap;
use carmine_reactor::{Mailbox, Poller, Source};
use carmine_wire::op::OpKind;
use carmine_wire::server::{ServerConn, ServerEvent};
use carmine_wire::{Limits, Nonce, OpError};

use crate::ops::{op_error, with_reply, Answer, Job, Target};
use crate::perf::{Latency, ShardCounters};
use crate::routing::Routing;
use crate::shard_store::ShardStore;

/// Reply bytes queued on one connection above which it is not read until they drain.
pub const OUT_HIGH_WATER: usize = 16 << 20;
/// Listen backlog per shard.
pub const BACKLOG: usize = 64;

/// Messages between shards and from the control plane.
#[derive(Debug)]
pub enum ShardMsg {
    /// A new cluster map (from the agent, through the control ring).
    Map(Arc<ClusterMap>),
    /// An op that arrived at another shard's connection.
    Forward(Box<Forwarded>),
    /// The answer to an op this shard forwarded.
    Reply(Box<Returned>),
}

/// Identifies one connection of one shard (slot + generation: a reused slot is another conn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRef {
    shard: u16,
    slot: u32,
    gen: u32,
}

#[derive(Debug)]
pub struct Forwarded {
    conn: ConnRef,
    tid: u64,
    target: Target,
    job: Job,
    started: Instant,
}

#[derive(Debug)]
pub struct Returned {
    conn: ConnRef,
    tid: u64,
    kind: OpKind,
    result: Result<Answer, OpError>,
    started: Instant,
}

struct Conn {
    id: ConnId,
    gen: u32,
    sc: ServerConn,
    out: Vec<u8>,
    out_off: usize,
    /// Close once `out` is written (a farewell frame, or the peer went away).
    closing: bool,
}

struct Pending {
    conn: ConnRef,
    tid: u64,
    kind: OpKind,
    started: Instant,
    /// Object key of a mutation (released on completion).
    order_key: Option<u64>,
    /// Collection created by this transaction (forgotten again if it fails).
    created: Option<u64>,
}

struct Parked {
    conn: ConnRef,
    tid: u64,
    target: Target,
    job: Job,
    started: Instant,
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
    net: Box<dyn NetStack>,
    listener: ListenerId,
    conns: Vec<Option<Conn>>,
    next_gen: u32,
    keyring: Arc<SharedKeyring>,
    limits: Limits,
    store: ShardStore,
    pending: HashMap<Ticket, Pending>,
    completions: Vec<Completion>,
    inflight_mutations: HashMap<u64, u32>,
    parked: VecDeque<Parked>,
    cids: HashSet<u64>,
    routing: Routing,
    mailbox: Rc<Mailbox<ShardMsg>>,
    outbox: VecDeque<(usize, ShardMsg)>,
    jobs: Vec<(ConnRef, u64, Target, Job, Instant)>,
    hs_buf: Vec<u8>,
    /// The `ObjectId` reads and stats hand the store: refilled from the job's inline name, so
    /// they allocate nothing.
    lookup: ObjectId,
    counters: Arc<ShardCounters>,
    usage: Arc<(AtomicU64, AtomicU64)>,
    latency: Latency,
    warned_pools: HashSet<u64>,
}

/// Why a shard could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("shard {shard}: cannot listen on port {port}: {source}")]
    Listen {
        shard: usize,
        port: u16,
        source: NetError,
    },
}

impl ShardCore {
    /// Listens and returns the core and the port it listens on.
    pub fn new(
        mut p: ShardParts,
        mailbox: Rc<Mailbox<ShardMsg>>,
    ) -> Result<(ShardCore, u16), ShardError> {
        let err = |source| ShardError::Listen {
            shard: p.shard,
            port: p.port,
            source,
        };
        let listener = p.net.listen(p.port, BACKLOG).map_err(err)?;
        let port = p.net.local_port(listener).map_err(err)?;
        let cids = p
            .store
            .get_ref()
            .list_collections()
            .into_iter()
            .map(|c| c.0)
            .collect();
        let mut conns = Vec::with_capacity(p.max_connections);
        conns.resize_with(p.max_connections, || None);
        let core = ShardCore {
            shard: p.shard,
            shards: p.shards,
            uuid: p.uuid,
            net: p.net,
            listener,
            conns,
            next_gen: 1,
            keyring: p.keyring,
            limits: Limits::DEFAULT,
            store: p.store,
            pending: HashMap::with_capacity(1024),
            completions: Vec::with_capacity(256),
            inflight_mutations: HashMap::with_capacity(1024),
            parked: VecDeque::with_capacity(64),
            cids,
            routing: Routing::default(),
            mailbox,
            outbox: VecDeque::with_capacity(64),
            jobs: Vec::with_capacity(256),
            hs_buf: vec![0u8; 256],
            lookup: ObjectId(Vec::with_capacity(256)),
            counters: p.counters,
            usage: p.usage,
            latency: Latency::new(),
            warned_pools: HashSet::new(),
        };
        Ok((core, port))
    }

    /// One loop iteration; returns the work done (0: idle).
    pub fn poll(&mut self) -> usize {
        let mut work = self.net.poll();
        work += self.accept();
        work += self.read_conns();
        work += self.route_jobs();
        work += self.poll_store();
        work += self.flush_outbox();
        let wrote = self.write_conns();
        if wrote > 0 {
            // Push the replies out now rather than on the next iteration.
            work += wrote + self.net.poll();
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
            || self.conns.iter().flatten().any(|c| c.out_off < c.out.len());
        if busy {
            Some(Instant::now())
        } else {
            self.net.next_deadline()
        }
    }

    /// A message from the control plane or another shard.
    pub fn on_message(&mut self, _src: Source, msg: ShardMsg) {
        match msg {
            ShardMsg::Map(map) => self.apply_map(&map),
            ShardMsg::Forward(f) => {
                ShardCounters::add(&self.counters.forwards_received, 1);
                let f = *f;
                self.execute(f.conn, f.tid, f.target, f.job, f.started);
            }
            ShardMsg::Reply(r) => {
                let r = *r;
                self.deliver_local(r.conn, r.tid, r.kind, r.result, r.started);
            }
        }
    }

    fn apply_map(&mut self, map: &ClusterMap) {
        if map.epoch <= self.routing.epoch() {
            return;
        }
        self.routing = Routing::build(map, &self.uuid, self.shards);
        ShardCounters::set(&self.counters.map_epoch, map.epoch);
        tracing::info!(
            shard = self.shard,
            epoch = map.epoch,
            osd = ?self.routing.osd(),
            primary_pgs = self.routing.owned_pgs(),
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

    fn accept(&mut self) -> usize {
        let mut work = 0;
        while let Ok(Some(id)) = self.net.accept(self.listener) {
            work += 1;
            let Some(slot) = self.conns.iter().position(Option::is_none) else {
                tracing::warn!(shard = self.shard, "connection limit reached: refusing one");
                let _ = self.net.close(id);
                continue;
            };
            let nonce = match Nonce::random() {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "no randomness for a handshake nonce: refusing");
                    let _ = self.net.close(id);
                    continue;
                }
            };
            ShardCounters::add(&self.counters.conns_accepted, 1);
            let gen = self.next_gen;
            self.next_gen = self.next_gen.wrapping_add(1).max(1);
            self.conns[slot] = Some(Conn {
                id,
                gen,
                sc: ServerConn::new(nonce, self.limits),
                out: Vec::with_capacity(64 << 10),
                out_off: 0,
                closing: false,
            });
        }
        work
    }

    /// Reads every connection and decodes its frames; ops go to `self.jobs`.
    fn read_conns(&mut self) -> usize {
        let mut work = 0;
        for slot in 0..self.conns.len() {
            let Some(c) = self.conns[slot].as_mut() else {
                continue;
            };
            if c.closing || c.out.len() - c.out_off > OUT_HIGH_WATER {
                continue;
            }
            // Bytes in.
            loop {
                let buf = c.sc.decoder().read_buf();
                if buf.is_empty() {
                    break;
                }
                match self.net.read(c.id, buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        c.sc.decoder().advance(n);
                        ShardCounters::add(&self.counters.bytes_in, n as u64);
                        work += 1;
                    }
                    Err(e) => {
                        if !matches!(e, NetError::Eof) {
                            tracing::debug!(shard = self.shard, error = %e, "connection read");
                        }
                        c.closing = true;
                        break;
                    }
                }
            }
            // Frames out of them.
            let conn = ConnRef {
                shard: self.shard as u16,
                slot: slot as u32,
                gen: c.gen,
            };
            loop {
                match c.sc.poll(&*self.keyring, &mut self.hs_buf) {
                    Ok(None) => break,
                    Ok(Some(ServerEvent::Send(n))) => c.out.extend_from_slice(&self.hs_buf[..n]),
                    Ok(Some(ServerEvent::Authenticated(n))) => {
                        c.out.extend_from_slice(&self.hs_buf[..n]);
                    }
                    Ok(Some(ServerEvent::Op { tid, request })) => {
                        let store = &mut self.store;
                        let (target, job) =
                            Job::from_request(&request, &mut |n| store.get().data_buf(n));
                        self.jobs.push((conn, tid, target, job, Instant::now()));
                        work += 1;
                    }
                    Err(e) => {
                        let handshake =
                            matches!(e.error, carmine_wire::server::ConnError::Handshake(_));
                        ShardCounters::add(
                            if handshake {
                                &self.counters.auth_failures
                            } else {
                                &self.counters.protocol_errors
                            },
                            1,
                        );
                        tracing::warn!(shard = self.shard, reason = %e.error, "closing connection");
                        c.out.extend_from_slice(&self.hs_buf[..e.farewell]);
                        c.closing = true;
                        break;
                    }
                }
            }
        }
        work
    }

    fn route_jobs(&mut self) -> usize {
        let mut jobs = std::mem::take(&mut self.jobs);
        let n = jobs.len();
        for (conn, tid, target, job, started) in jobs.drain(..) {
            match self.routing.route(&target) {
                Err(e) => self.reply(conn, tid, job.kind(), Err(e), started),
                Ok(owner) if owner == self.shard => self.execute(conn, tid, target, job, started),
                Ok(owner) => {
                    ShardCounters::add(&self.counters.forwards_sent, 1);
                    let msg = ShardMsg::Forward(Box::new(Forwarded {
                        conn,
                        tid,
                        target,
                        job,
                        started,
                    }));
                    self.send_to(owner, msg);
                }
            }
        }
        self.jobs = jobs;
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

    fn order_key(cid: CollectionId, object: &[u8]) -> u64 {
        xxhash_rust::xxh64::xxh64(object, cid.0)
    }

    /// Runs a job on this (the owning) shard.
    fn execute(&mut self, conn: ConnRef, tid: u64, target: Target, job: Job, started: Instant) {
        let kind = job.kind();
        let Some(cid) = target.cid() else {
            return self.reply(conn, tid, kind, Err(OpError::Invalid), started);
        };
        let key = job.object().map(|o| Self::order_key(cid, o));
        if !job.mutates() {
            if let Some(k) = key {
                if self.inflight_mutations.contains_key(&k) {
                    ShardCounters::add(&self.counters.parked, 1);
                    self.parked.push_back(Parked {
                        conn,
                        tid,
                        target,
                        job,
                        started,
                    });
                    return;
                }
            }
        }
        if job.mutates() && self.routing.pool_size(target.pool).unwrap_or(1) > 1 {
            if self.warned_pools.insert(target.pool) {
                tracing::warn!(
                    pool = target.pool,
                    "pool has size > 1 but this OSD does not replicate yet: writes refused \
                     (create the pool with --size 1)"
                );
            }
            return self.reply(conn, tid, kind, Err(OpError::Invalid), started);
        }
        let exists = self.cids.contains(&cid.0);
        match job {
            Job::Write { oid, off, data } => {
                let mut txn = Transaction {
                    ops: Vec::with_capacity(2),
                };
                let created = self.create_if_new(cid, &mut txn);
                txn.ops.push(Op::Write {
                    cid,
                    oid,
                    off,
                    data,
                });
                self.submit(conn, tid, kind, started, key, created, txn);
            }
            Job::WriteFull { oid, data } => {
                let mut txn = Transaction {
                    ops: Vec::with_capacity(3),
                };
                let created = self.create_if_new(cid, &mut txn);
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
                self.submit(conn, tid, kind, started, key, created, txn);
            }
            Job::Remove { oid } => {
                if !exists {
                    return self.reply(conn, tid, kind, Err(OpError::NotFound), started);
                }
                let txn = Transaction {
                    ops: vec![Op::Remove { cid, oid }],
                };
                self.submit(conn, tid, kind, started, key, None, txn);
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
                self.pending.insert(
                    ticket,
                    Pending {
                        conn,
                        tid,
                        kind,
                        started,
                        order_key: None,
                        created: None,
                    },
                );
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
                    let max = max.clamp(1, self.limits.max_list_entries) as usize;
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

    fn create_if_new(&mut self, cid: CollectionId, txn: &mut Transaction) -> Option<u64> {
        if self.cids.insert(cid.0) {
            txn.ops.push(Op::CreateCollection { cid });
            Some(cid.0)
        } else {
            None
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn submit(
        &mut self,
        conn: ConnRef,
        tid: u64,
        kind: OpKind,
        started: Instant,
        order_key: Option<u64>,
        created: Option<u64>,
        txn: Transaction,
    ) {
        if let Some(k) = order_key {
            *self.inflight_mutations.entry(k).or_insert(0) += 1;
        }
        let ticket = self.store.get().submit(txn);
        self.pending.insert(
            ticket,
            Pending {
                conn,
                tid,
                kind,
                started,
                order_key,
                created,
            },
        );
        ShardCounters::set(&self.counters.inflight, self.pending.len() as u64);
    }

    fn poll_store(&mut self) -> usize {
        let mut done = std::mem::take(&mut self.completions);
        let n = self.store.get().poll(&mut done);
        let mut released = false;
        for c in done.drain(..) {
            let Some(p) = self.pending.remove(&c.ticket) else {
                tracing::error!(
                    ticket = c.ticket.0,
                    "store completion for an unknown ticket"
                );
                continue;
            };
            if let Some(k) = p.order_key {
                if let Some(cnt) = self.inflight_mutations.get_mut(&k) {
                    *cnt -= 1;
                    if *cnt == 0 {
                        self.inflight_mutations.remove(&k);
                        released = true;
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
                    if let Some(cid) = p.created {
                        self.cids.remove(&cid);
                    }
                    let wire = op_error(&e);
                    if wire == OpError::Io {
                        tracing::error!(shard = self.shard, error = %e, "store error");
                    }
                    Err(wire)
                }
            };
            self.reply(p.conn, p.tid, p.kind, result, p.started);
        }
        self.completions = done;
        if n > 0 {
            ShardCounters::set(&self.counters.inflight, self.pending.len() as u64);
        }
        if released && !self.parked.is_empty() {
            for _ in 0..self.parked.len() {
                if let Some(p) = self.parked.pop_front() {
                    // Re-parks itself if its object is still being written.
                    self.execute(p.conn, p.tid, p.target, p.job, p.started);
                }
            }
        }
        n
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

    /// Encodes a reply onto one of this shard's connections (dropped if it has gone).
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
        // A reply for a connection that has gone (or was replaced in its slot) is dropped.
        if let Some(Some(c)) = self.conns.get_mut(conn.slot as usize) {
            if c.gen == conn.gen && !c.closing {
                let bound = result.as_ref().map_or(128, Answer::encoded_bound);
                let old = c.out.len();
                c.out.resize(old + bound, 0);
                let sc = &c.sc;
                let out = &mut c.out[old..];
                match with_reply(&result, |r| sc.encode_reply(tid, r, out)) {
                    Ok(n) => c.out.truncate(old + n),
                    Err(e) => {
                        c.out.truncate(old);
                        tracing::error!(
                            shard = self.shard,
                            error = %e,
                            "cannot encode a reply: closing"
                        );
                        c.closing = true;
                    }
                }
            }
        }
        // The read data is in the reply bytes now (or not wanted): its buffer goes back to the
        // store's pool.
        if let Ok(Answer::Read(data)) = result {
            self.store.get().recycle(data);
        }
    }

    /// Writes queued reply bytes; closes connections that are done. Returns bytes written.
    fn write_conns(&mut self) -> usize {
        let mut written = 0;
        for slot in 0..self.conns.len() {
            let Some(c) = self.conns[slot].as_mut() else {
                continue;
            };
            let mut failed = false;
            while c.out_off < c.out.len() {
                match self.net.write(c.id, &c.out[c.out_off..]) {
                    Ok(0) => break,
                    Ok(n) => {
                        c.out_off += n;
                        written += n;
                    }
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if c.out_off == c.out.len() {
                c.out.clear();
                c.out_off = 0;
            }
            if failed || (c.closing && c.out.is_empty()) {
                let _ = self.net.close(c.id);
                self.conns[slot] = None;
                ShardCounters::add(&self.counters.conns_closed, 1);
            }
        }
        written
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
        self.0.borrow().net.wait_fd()
    }
}
