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
//!    collection on first use) and, in a PG of several copies, one replica op to each other
//!    member of its acting set ([`crate::replication`]); reads are ticketed store reads, stat
//!    and list are answered from the store's resident metadata; reads of an object being
//!    written wait in the PG;
//! 4. applies the replica ops its peers sent for the PGs where this OSD is a replica: checked
//!    against the PG's interval and primary, then the same transaction with the primary's
//!    version, answered once durable;
//! 5. polls the store and turns completions into replies; a mutation is answered once its
//!    local transaction and every replica have made it durable;
//! 6. the messenger writes pending reply bytes and replica ops.
//!
//! ## Store failure
//! Once the store fails (bdevstore: the first device I/O error, on any path), the shard
//! refuses every client op with `Again` and every replica op or push with `RepError::Io`
//! (which the primary turns into `Again`); ops whose store operation failed get the same.
//! The reason goes, once, into the shard's [`StoreFailure`] cell, which the agent reports to
//! the monitor with its heartbeats: the monitor marks the OSD down, and the clients' retries
//! reach the PGs' new primaries. A failed store is never used again in this process.
//!
//! ## Map changes
//! A new map arrives as a control message and replaces the routing table and updates the PG
//! table between two iterations. Reads already submitted to the store complete and are
//! answered (they were valid when they were routed); mutations of a PG whose interval changed
//! fail with `Again` (a replica of the new interval may not have them; the client's retry, same
//! request id, is applied once); ops decoded afterwards are routed by the new table.

mod peering;
mod push;

use std::cell::RefCell;
use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt};
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use carmine_agent::peering::{EventSender, Lease, PeeringError, ShardRequest};
use carmine_agent::SharedKeyring;
use carmine_net::NetStack;
use carmine_objectstore::StoreError;
use carmine_objectstore::{
    AttrValue, Completion, Done, ObjectId, OmapKey, Op, Ticket, Transaction,
};
use carmine_placement::ClusterMap;
use carmine_reactor::{Mailbox, Poller, Source};
use carmine_wire::op::OpKind;
use carmine_wire::{Epoch, OpError, PgId, PoolId, RepError, RepOp, RepReply};
use smallvec::{smallvec, SmallVec};

pub use crate::messenger::{Bounds, BACKLOG};
use crate::messenger::{ConnRef, Inbound, ListenError, Messenger, RepInbound};
use crate::ops::{op_error, Answer, Job};
use crate::peers::{LinkId, PeerEvent};
use crate::perf::{Latency, ShardCounters, StoreFailure};
use crate::pg::{Creates, IntervalChange, PgKey, PgTable};
use crate::pglog::{log_object, version_key, DupScope, LogWrite, ReqId, VERSION_ATTR};
use crate::pgmeta;
use crate::replication::{Finished, Mutation, ReplyTo, WriteTracker, MAX_PEERS, REPLICA_TIMEOUT};
use crate::routing::Routing;
use crate::scrub::Scrubber;
use crate::shard_store::ShardStore;
use push::{Origin, PushTask, Pushes, PUSH_TID};

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
    /// A peering request for a PG this shard holds (from the agent).
    Peering(Box<ShardRequest>),
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

/// What a store ticket in flight is for.
enum Pending {
    /// A client's read.
    Read(ReplyTo),
    /// The local transaction of a mutation this shard leads (in the [`WriteTracker`]).
    Write(u64),
    /// A replica op's (or a received push's) transaction.
    Replica(ReplicaApply),
    /// The read of an object to push.
    PushRead(u64),
    /// A peering prepare's transaction.
    Prepare {
        reply: carmine_agent::peering::Reply<()>,
        key: PgKey,
        creates: Creates,
    },
}

/// A replica op being applied: where its answer goes and what completes in its PG.
struct ReplicaApply {
    conn: ConnRef,
    tid: u64,
    pg: PgKey,
    order_key: u64,
    req: ReqId,
    creates: Creates,
    /// Whether it wrote a log entry (a push does not).
    logged: bool,
}

/// What the daemon hands each shard at start.
pub struct ShardParts {
    pub shard: usize,
    pub shards: usize,
    pub uuid: String,
    pub net: Box<dyn NetStack>,
    pub port: u16,
    pub max_connections: usize,
    /// What one peer may hold of the shard (timeouts, slots, ops and bytes in flight).
    pub bounds: Bounds,
    pub store: ShardStore,
    pub keyring: Arc<SharedKeyring>,
    pub counters: Arc<ShardCounters>,
    pub usage: Arc<(AtomicU64, AtomicU64)>,
    /// Where the shard says why its store failed (the agent reports it).
    pub store_failure: StoreFailure,
    /// This OSD's read lease as a primary (the agent renews it).
    pub lease: Arc<Lease>,
    /// Where peering events go (the agent); `None`: no agent listens.
    pub events: Option<EventSender>,
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
    /// Mutations this shard leads, until every copy is durable.
    writes: WriteTracker,
    completions: Vec<Completion>,
    mailbox: Rc<Mailbox<ShardMsg>>,
    /// Messages a full ring did not take yet, in order.
    outbox: VecDeque<(usize, ShardMsg)>,
    /// Scratch: ops and replica ops decoded this iteration, parked ops being tried again, what
    /// the peer links reported and the mutations that finished.
    inbound: Vec<Inbound>,
    reps: Vec<RepInbound>,
    retry: Vec<Inbound>,
    peer_events: Vec<PeerEvent>,
    finished: Vec<Finished>,
    /// The `ObjectId` reads and stats hand the store: refilled from the job's inline name, so
    /// they allocate nothing.
    lookup: ObjectId,
    counters: Arc<ShardCounters>,
    usage: Arc<(AtomicU64, AtomicU64)>,
    store_failure: StoreFailure,
    /// The store failed (see "Store failure" above): every op is refused from then on.
    store_failed: bool,
    latency: Latency,
    /// Background digests of PGs for scrub (src/scrub.rs).
    scrub: Scrubber,
    lease: Arc<Lease>,
    events: Option<EventSender>,
    /// Pushes to other OSDs (recovery, backfill, filling a primary).
    pushes: Pushes,
    /// Peering listings waiting for their PG's mutations to land.
    deferred: Vec<ShardRequest>,
    /// Scratch: interval changes of the last map.
    changes: Vec<IntervalChange>,
    last_peering_tick: Instant,
    /// Per PG this shard leads: the (interval, live objects) last sent to the agent.
    reported_objects: HashMap<PgKey, (u64, u64)>,
}

/// How often push timeouts are checked and recovery progress goes to the agent.
const PEERING_TICK: std::time::Duration = std::time::Duration::from_millis(250);

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
        let (messenger, port) = Messenger::listen(
            p.shard,
            p.net,
            p.port,
            p.max_connections,
            p.bounds,
            p.keyring,
        )?;
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
            writes: WriteTracker::with_capacity(1024),
            completions: Vec::with_capacity(256),
            mailbox,
            outbox: VecDeque::with_capacity(64),
            inbound: Vec::with_capacity(256),
            reps: Vec::with_capacity(256),
            retry: Vec::with_capacity(64),
            peer_events: Vec::with_capacity(64),
            finished: Vec::with_capacity(64),
            lookup: ObjectId(SmallVec::with_capacity(256)),
            counters: p.counters,
            usage: p.usage,
            store_failure: p.store_failure,
            store_failed: false,
            latency: Latency::new(),
            scrub: Scrubber::new(),
            lease: p.lease,
            events: p.events,
            pushes: Pushes::default(),
            deferred: Vec::new(),
            changes: Vec::new(),
            last_peering_tick: Instant::now(),
            reported_objects: HashMap::new(),
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
            &mut |d| store.get().data_buf_from(d),
            &mut self.inbound,
            &mut self.reps,
        );
        work += self.messenger.read_peers(&mut self.peer_events);
        work += self.route_inbound();
        work += self.apply_replica_ops();
        work += self.on_peer_events();
        work += self.poll_store();
        if !self.store_failed {
            self.check_store();
        }
        work += self.retry_deferred();
        let now = carmine_reactor::clock::now();
        if self.pushes.busy() || self.pushes.recovering() {
            work += self.feed_pushes(now);
        }
        if now.saturating_duration_since(self.last_peering_tick) >= PEERING_TICK {
            // Its own timer: push timeouts and progress must go on with no client op.
            self.last_peering_tick = now;
            self.peering_tick(now);
        }
        work += self.scrub.poll(self.store.get());
        work += self.flush_outbox();
        let wrote = self.messenger.write(&self.counters, &mut self.peer_events);
        work += self.on_peer_events();
        if wrote > 0 {
            // Push the replies out now rather than on the next iteration.
            work += wrote + self.messenger.poll_net();
        }
        if self.latency.maybe_publish(&self.counters, now) {
            self.publish_usage();
            self.expire_writes(now);
        }
        work
    }

    /// The latest instant the shard must poll again: now while the store or a connection has
    /// work in flight (SPDK completions and blocked writes have no fd to wake on).
    pub fn next_deadline(&self) -> Option<Instant> {
        // Mutations waiting only for replicas keep it polling too: their answers come in on
        // the peer links.
        let busy = !self.pending.is_empty()
            || self.writes.len() > 0
            || !self.peer_events.is_empty()
            || self.messenger.peers_setting_up()
            || !self.outbox.is_empty()
            || !self.store.get_ref().is_idle()
            || self.messenger.has_backlog()
            || self.scrub.busy()
            || self.pushes.busy()
            || !self.deferred.is_empty();
        let deadline = if busy {
            Some(carmine_reactor::clock::now())
        } else if self.pushes.recovering() {
            // Recovery paused after a failed push: back soon, without spinning.
            let soon = carmine_reactor::clock::now() + PEERING_TICK / 4;
            Some(self.messenger.net_deadline().map_or(soon, |d| d.min(soon)))
        } else {
            self.messenger.net_deadline()
        };
        // Latencies recorded since the last publish reach the counters (and /metrics) even
        // when no op comes after them.
        match (deadline, self.latency.publish_due()) {
            (Some(d), Some(p)) => Some(d.min(p)),
            (d, p) => d.or(p),
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
            ShardMsg::Peering(req) => self.on_peering(*req),
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
            routing.osd(),
            |k| routing.owner(k.pool, k.pg) == Some(shard),
            self.store.get_ref(),
            &mut self.changes,
        );
        self.emit_interval_changes(map.epoch);
        // Links to peers that moved or left go (their writes fail below, or with the link).
        let routing = &self.routing;
        self.messenger.prune_peer_links(
            |osd, addr| routing.is_peer_addr(osd, addr),
            &mut self.peer_events,
        );
        // Links to the peers of the PGs this shard leads are set up now rather than by the
        // first write of each (which would get `Again` while its link comes up).
        let mut peers: Vec<(u32, std::net::SocketAddrV4)> = self
            .pgs
            .primaries()
            .flat_map(|(k, acting)| {
                acting
                    .iter()
                    .skip(1)
                    .filter_map(move |&osd| routing.peer_addr(osd, k.pg).map(|a| (osd, a)))
            })
            .collect();
        peers.sort_unstable();
        peers.dedup();
        for (osd, addr) in peers {
            self.messenger.peer_link(osd, addr);
        }
        // Mutations sent in an interval that ended fail (retryable): a member of the new
        // interval may not have them.
        let mut finished = std::mem::take(&mut self.finished);
        let pgs = &self.pgs;
        self.writes.fence(
            |k| {
                pgs.get(k)
                    .filter(|p| p.is_primary())
                    .map(|p| p.interval_since())
            },
            &mut finished,
        );
        self.finish_writes(&mut finished);
        self.finished = finished;
        ShardCounters::set(&self.counters.map_epoch, map.epoch);
        tracing::info!(
            shard = self.shard,
            epoch = map.epoch,
            osd = ?self.routing.osd(),
            primary_pgs = self.routing.owned_pgs(),
            replica_pgs = self.routing.replica_pgs(),
            shard_pgs = self.pgs.served(),
            new_intervals,
            "map applied"
        );
        self.publish_usage();
    }

    /// Whether the store has failed since the last look: then every op is refused from now
    /// on, and the reason goes to the agent (once).
    fn check_store(&mut self) {
        let Some(why) = self.store.failure() else {
            return;
        };
        self.store_failed = true;
        tracing::error!(
            shard = self.shard,
            reason = why,
            "store failed: refusing every op (clients and primaries retry elsewhere once the \
             monitor marks this OSD down)"
        );
        let _ = self.store_failure.set(why.to_string());
    }

    /// Store usage for the heartbeats (the monitor's nearfull/full checks).
    fn publish_usage(&self) {
        if let Some((used, cap)) = self.store.usage() {
            ShardCounters::set(&self.usage.0, used);
            ShardCounters::set(&self.usage.1, cap);
        }
        if let Some(s) = self.store.counters() {
            s.publish(&self.counters);
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
        let epoch = self.routing.epoch();
        if self.store_failed {
            // The client tries again, by then with a map that has this OSD down.
            return self.reply(op.conn, op.tid, kind, Err(OpError::Again), op.started);
        }
        let Some(pg) = self.pgs.get_mut(key).filter(|p| p.is_primary()) else {
            // Routed by the connection's shard with a map under which this shard led the PG;
            // this shard's map says otherwise (it moved, or this shard is behind): the client
            // refreshes its map and tries again.
            let e = OpError::StaleMap {
                osd_epoch: Epoch(epoch),
            };
            return self.reply(op.conn, op.tid, kind, Err(e), op.started);
        };
        if !pg.active() {
            // Fewer than min_size OSDs hold the PG, or it has not peered in this interval: no
            // I/O until it is (the client retries on Again; health shows the PG's state).
            return self.reply(op.conn, op.tid, kind, Err(OpError::Again), op.started);
        }
        if pg.replicated() && !self.lease.valid_at(op.started) {
            // This OSD's lease ran out (it was paused, or lost the monitor): another OSD may
            // lead the PG by now, so it serves nothing until a heartbeat renews the lease.
            ShardCounters::add(&self.counters.lease_refused, 1);
            return self.reply(op.conn, op.tid, kind, Err(OpError::Again), op.started);
        }
        if op.job.mutates() {
            if let (Some(rec), Some(name)) = (pg.recovery.as_mut(), op.job.object()) {
                if rec.blocks(name) && rec.paused(op.started) {
                    // A push just failed (a member's link is down): the client tries again
                    // rather than this write pushing at once, and failing, in a loop.
                    return self.reply(op.conn, op.tid, kind, Err(OpError::Again), op.started);
                }
                if rec.blocks(name) {
                    // A member lacks the object: it gets the whole object first, then this
                    // write (which waits, parked, for the push).
                    let urgent = rec.take_urgent(name);
                    let (since, name) = (pg.interval_since(), name.to_vec());
                    ShardCounters::add(&self.counters.parked, 1);
                    pg.park(op);
                    for osd in urgent {
                        let t =
                            PushTask::new(key, osd, name.clone(), epoch, since, Origin::Recovery);
                        self.start_push(t);
                    }
                    return;
                }
            }
        }
        let order_key = op.job.object().map(|o| pg.object_key(o));
        let req = op.job.mutates().then(|| ReqId {
            client: op.client.clone(),
            tid: op.tid,
        });
        if let (Some(r), Some(object)) = (&req, order_key) {
            // A retry of a mutation this PG already applied gets the first result; one whose
            // first attempt is still in flight waits for it.
            let scope = if pg.replicated() {
                DupScope::Interval(pg.interval_since())
            } else {
                DupScope::All
            };
            if let Some(first) = pg.log.duplicate(r, kind, object, scope) {
                ShardCounters::add(&self.counters.dup_replies, 1);
                let answer = written(first.kind);
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
            job,
            started,
            ..
        } = op;
        let reply_to = ReplyTo {
            conn,
            tid,
            kind,
            started,
        };
        if let (Some(req), Some(order_key)) = (req, order_key) {
            return self.execute_mutation(key, reply_to, req, order_key, job);
        }
        let exists = self.pgs.on_store(key);
        match job {
            Job::Read { name, off, len } => {
                if !exists {
                    return self.reply(conn, tid, kind, Err(OpError::NotFound), started);
                }
                self.lookup.0.clear();
                self.lookup.0.extend_from_slice(&name);
                let local = conn.shard as usize == self.shard;
                if local && self.answer_in_place(conn, tid, cid, off, len, started) {
                    return;
                }
                // An answer on this shard is encoded straight from a loan of the store's
                // buffer; one for another shard needs bytes of its own.
                let store = self.store.get();
                let ticket = if local {
                    store.read_lent(cid, &self.lookup, off, u64::from(len))
                } else {
                    store.read(cid, &self.lookup, off, u64::from(len))
                };
                self.pending.insert(ticket, Pending::Read(reply_to));
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
                    let after = (!cursor.is_empty()).then_some(ObjectId::from(cursor));
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
                            next: page.next.map(|o| o.0.into_vec()),
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
            // Mutations went to `execute_mutation` above.
            Job::Write { .. } | Job::WriteFull { .. } | Job::Remove { .. } => {
                self.reply(conn, tid, kind, Err(OpError::Invalid), started)
            }
        }
    }

    /// A client mutation in a PG this shard leads: its version, a replica op to every other
    /// member of the acting set, the local transaction; answered when all are durable.
    fn execute_mutation(
        &mut self,
        key: PgKey,
        reply: ReplyTo,
        req: ReqId,
        order_key: u64,
        job: Job,
    ) {
        if matches!(job, Job::Remove { .. }) && !self.pgs.on_store(key) {
            return self.reply_to(reply, Err(OpError::NotFound));
        }
        let Some(pg) = self.pgs.get_mut(key) else {
            return self.reply_to(reply, Err(OpError::Again));
        };
        // Every other member must be reachable before anything is written: a write that
        // cannot reach one is refused (`Again`) rather than half done.
        let mut links: SmallVec<[(u32, LinkId); MAX_PEERS]> = SmallVec::new();
        let peers: SmallVec<[u32; MAX_PEERS]> = pg.acting().iter().skip(1).copied().collect();
        let since = pg.interval_since();
        for osd in peers {
            let link = self
                .routing
                .peer_addr(osd, key.pg)
                .and_then(|addr| self.messenger.peer_link(osd, addr));
            match link {
                Some(l) if links.len() < MAX_PEERS => links.push((osd, l)),
                _ => return self.reply_to(reply, Err(OpError::Again)),
            }
        }
        let Some(pg) = self.pgs.get_mut(key) else {
            return self.reply_to(reply, Err(OpError::Again));
        };
        let Some(object) = job.object() else {
            return self.reply_to(reply, Err(OpError::Invalid));
        };
        let epoch = self.routing.epoch().max(since);
        let w = pg
            .log
            .begin(epoch, reply.kind, req.clone(), object, order_key);
        let id = self.writes.next_id();
        let mut failed = None;
        // The peers the replica op went to: the write waits for each of them (one it could
        // not be sent to already failed it).
        let mut sent: SmallVec<[u32; MAX_PEERS]> = SmallVec::new();
        if !links.is_empty() {
            match job.as_rep() {
                Some(m) => {
                    let op = RepOp {
                        pool: PoolId(u64::from(key.pool)),
                        pg: PgId(key.pg),
                        epoch: Epoch(self.routing.epoch()),
                        interval_since: Epoch(since),
                        version: w.version,
                        reqid: carmine_wire::ReqId {
                            client: &req.client,
                            tid: req.tid,
                        },
                        op: m,
                    };
                    for &(osd, l) in &links {
                        match self.messenger.send_rep(l, id, &op) {
                            Ok(()) => {
                                ShardCounters::add(&self.counters.rep_sent, 1);
                                sent.push(osd);
                            }
                            Err(e) => {
                                tracing::warn!(shard = self.shard, osd, error = %e, "replica op not sent");
                                failed = Some(OpError::Again);
                            }
                        }
                    }
                }
                None => failed = Some(OpError::Invalid),
            }
        }
        if let Job::Write { data, .. } | Job::WriteFull { data, .. } = &job {
            ShardCounters::add(&self.counters.bytes_written, data.len() as u64);
            ShardCounters::add(
                &self.counters.rep_sent_bytes,
                (data.len() * sent.len()) as u64,
            );
        }
        let (txn, creates) = self.mutation_txn(key, job, w);
        let m = Mutation {
            reply,
            pg: key,
            interval_since: since,
            order_key,
            req,
            creates,
        };
        let id = self.writes.insert(m, &sent, failed);
        if let Some(pg) = self.pgs.get_mut(key) {
            pg.begin_mutation(order_key);
        }
        let ticket = self.store.get().submit(txn);
        self.pending.insert(ticket, Pending::Write(id));
        ShardCounters::set(&self.counters.inflight, self.pending.len() as u64);
    }

    /// Applies the replica ops the peers sent.
    fn apply_replica_ops(&mut self) -> usize {
        let mut reps = std::mem::take(&mut self.reps);
        let n = reps.len();
        for r in reps.drain(..) {
            self.apply_replica_op(r);
        }
        self.reps = reps;
        n
    }

    /// One replica op: refused unless this shard is a replica of the PG in the op's interval
    /// and the sender is the PG's primary; a version this PG already has is answered OK again;
    /// otherwise the mutation, its version and its log entry go into one transaction.
    fn apply_replica_op(&mut self, r: RepInbound) {
        if self.store_failed {
            // The primary fails the write with a retryable error (see `client_error`).
            ShardCounters::add(&self.counters.rep_refused, 1);
            return self
                .messenger
                .deliver_rep(r.conn, r.tid, &RepReply::err(RepError::Io));
        }
        if r.push {
            return self.apply_push(r);
        }
        let refuse = |me: &mut ShardCore, e: RepError| {
            ShardCounters::add(&me.counters.rep_refused, 1);
            tracing::debug!(
                shard = me.shard,
                from = r.from,
                pool = r.pool,
                pg = r.pg,
                primary_epoch = r.epoch,
                epoch = me.routing.epoch(),
                error = %e,
                "replica op refused"
            );
            me.messenger.deliver_rep(r.conn, r.tid, &RepReply::err(e));
        };
        let Ok(pool) = u32::try_from(r.pool) else {
            return refuse(self, RepError::Invalid);
        };
        let key = PgKey { pool, pg: r.pg };
        let epoch = self.routing.epoch();
        let Some(pg) = self
            .pgs
            .get_mut(key)
            .filter(|p| p.served() && !p.is_primary())
        else {
            return refuse(self, RepError::NotMember);
        };
        if let Err(e) = pg.admit_replica_op(epoch, r.from, r.epoch, r.interval_since) {
            return refuse(self, e);
        }
        if r.version <= pg.log.head() {
            if pg.log.has_committed(r.version, &r.req) {
                ShardCounters::add(&self.counters.dup_replies, 1);
                return self.messenger.deliver_rep(r.conn, r.tid, &RepReply::OK);
            }
            return refuse(self, RepError::Invalid);
        }
        let Some(object) = r.job.object() else {
            return refuse(self, RepError::Invalid);
        };
        let order_key = pg.object_key(object);
        // A remove of an object this replica does not hold (it missed the write that made
        // it) leaves the state the primary asked for: logged, with nothing to remove. (With a
        // mutation of it in flight the store decides: that one may create it.)
        let absent = matches!(r.job, Job::Remove { .. })
            && !pg.writing(order_key)
            && !self.store_has(key, object);
        let pg = match self.pgs.get_mut(key) {
            Some(pg) => pg,
            None => return refuse(self, RepError::NotMember),
        };
        let kind = r.job.kind();
        let w = pg
            .log
            .begin_at(r.version, kind, r.req.clone(), object, order_key);
        pg.begin_mutation(order_key);
        let RepInbound {
            conn,
            tid,
            req,
            job,
            ..
        } = r;
        let (mut txn, creates) = self.mutation_txn(key, job, w);
        if absent {
            txn.ops.retain(|op| !matches!(op, Op::Remove { .. }));
        }
        let ticket = self.store.get().submit(txn);
        self.pending.insert(
            ticket,
            Pending::Replica(ReplicaApply {
                conn,
                tid,
                pg: key,
                order_key,
                req,
                creates,
                logged: true,
            }),
        );
        ShardCounters::set(&self.counters.inflight, self.pending.len() as u64);
    }

    /// Whether the store holds object `name` of PG `key` (resident metadata: no I/O). Only a
    /// definite "not found" says no.
    fn store_has(&mut self, key: PgKey, name: &[u8]) -> bool {
        if !self.pgs.on_store(key) {
            return false;
        }
        self.lookup.0.clear();
        self.lookup.0.extend_from_slice(name);
        !matches!(
            self.store.get_ref().stat(key.cid(), &self.lookup),
            Err(StoreError::NotFound(_))
        )
    }

    /// Replies from peers and lost links.
    fn on_peer_events(&mut self) -> usize {
        if self.peer_events.is_empty() {
            return 0;
        }
        let mut events = std::mem::take(&mut self.peer_events);
        let mut finished = std::mem::take(&mut self.finished);
        let n = events.len();
        for e in events.drain(..) {
            match e {
                PeerEvent::Reply { osd, tid, result } if tid & PUSH_TID != 0 => {
                    let result = result.map_err(|e| PeeringError::PushRefused {
                        osd,
                        reason: e.to_string(),
                    });
                    self.push_done(tid & !PUSH_TID, result);
                }
                PeerEvent::Reply { osd, tid, result } => {
                    if let Some(f) = self.writes.peer_done(tid, osd, result) {
                        finished.push(f);
                    }
                }
                PeerEvent::Lost { osd } => {
                    self.writes.peer_lost(osd, &mut finished);
                    self.pushes_lost(osd);
                }
            }
        }
        self.finish_writes(&mut finished);
        self.peer_events = events;
        self.finished = finished;
        n
    }

    /// Fails the mutations whose replicas have not answered within [`REPLICA_TIMEOUT`].
    fn expire_writes(&mut self, now: Instant) {
        let Some(deadline) = now.checked_sub(REPLICA_TIMEOUT) else {
            return;
        };
        let mut finished = std::mem::take(&mut self.finished);
        self.writes.expire(deadline, &mut finished);
        if !finished.is_empty() {
            tracing::warn!(
                shard = self.shard,
                writes = finished.len(),
                "replicas did not answer within {REPLICA_TIMEOUT:?}: writes failed"
            );
        }
        self.finish_writes(&mut finished);
        self.finished = finished;
    }

    /// Answers mutations that have nothing left to wait for and releases their objects.
    fn finish_writes(&mut self, finished: &mut Vec<Finished>) {
        for f in finished.drain(..) {
            let Finished {
                m,
                result,
                committed_here,
            } = f;
            if let Some(pg) = self.pgs.get_mut(m.pg) {
                match (&result, committed_here) {
                    (Ok(()), _) => pg.log.commit(m.req),
                    (Err(_), true) => pg.log.commit_unacknowledged(m.req),
                    (Err(_), false) => pg.log.abort(&m.req),
                }
            }
            if !committed_here {
                self.pgs.creation_failed(m.pg, m.creates);
            }
            if let Err(e) = result {
                if committed_here {
                    // Written here, not confirmed by every replica: the client retries.
                    ShardCounters::add(&self.counters.rep_write_failures, 1);
                    tracing::debug!(shard = self.shard, pg = ?m.pg, error = %e, "replicated write failed");
                }
            }
            let kind = m.reply.kind;
            self.reply_to(m.reply, result.map(|()| written(kind)));
            self.end_mutation(m.pg, m.order_key);
        }
    }

    /// The store transaction of a mutation: the PG's collections where the store lacks them,
    /// the mutation, the object's version attribute (unless it is removed) and the PG log
    /// entry with its trim.
    fn mutation_txn(&mut self, key: PgKey, job: Job, w: LogWrite) -> (Transaction, Creates) {
        let cid = key.cid();
        // The store's recycled op list, if it keeps them: no allocation per write.
        let mut txn = self.store.get().transaction();
        txn.ops.reserve(7);
        let creates = self.create_if_new(key, &mut txn);
        let (oid, removes) = match job {
            Job::Write { oid, off, data } => {
                txn.ops.push(Op::Write {
                    cid,
                    oid: oid.clone(),
                    off,
                    data,
                });
                (oid, false)
            }
            Job::WriteFull { oid, data } => {
                write_full(&mut txn, cid, &oid, data);
                (oid, false)
            }
            Job::Remove { oid } => {
                txn.ops.push(Op::Remove {
                    cid,
                    oid: oid.clone(),
                });
                // The tombstone: peering tells a removal from a copy that never had it.
                txn.ops.push(pgmeta::set_tombstone(key, &oid.0, w.version));
                (oid, true)
            }
            Job::Read { .. } | Job::Stat { .. } | Job::List { .. } => return (txn, creates),
        };
        if !removes {
            txn.ops.push(Op::SetAttr {
                cid,
                oid,
                name: VERSION_ATTR.into(),
                value: AttrValue::from_slice(&version_key(w.version)),
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
            entries: smallvec![(OmapKey::from_slice(&version_key(w.version)), w.value)],
        });
        (txn, creates)
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

    fn poll_store(&mut self) -> usize {
        let mut done = std::mem::take(&mut self.completions);
        let mut finished = std::mem::take(&mut self.finished);
        let n = self.store.get().poll(&mut done);
        for c in done.drain(..) {
            let Some(p) = self.pending.remove(&c.ticket) else {
                // Not an op's: a scrub read's, or unknown.
                if let Err(c) = self.scrub.on_completion(c, self.store.get()) {
                    tracing::error!(
                        ticket = c.ticket.0,
                        "store completion for an unknown ticket"
                    );
                    if let Ok(Done::Lent(loan)) = c.result {
                        self.store.get().give_back(loan);
                    }
                }
                continue;
            };
            match p {
                Pending::Read(r) => {
                    let result = match c.result {
                        Ok(Done::Lent(loan)) => {
                            self.answer_lent(r, loan);
                            continue;
                        }
                        Ok(Done::Data(data)) => Ok(Answer::Read(data)),
                        Ok(Done::Committed) => Err(OpError::Io),
                        Err(e) => Err(self.store_error(&e)),
                    };
                    self.reply_to(r, result);
                }
                Pending::Write(id) => {
                    let local = c.result.map(|_| ()).map_err(|e| self.store_error(&e));
                    if let Some(f) = self.writes.local_done(id, local) {
                        finished.push(f);
                    }
                }
                Pending::Replica(a) => self.replica_applied(a, c.result.map(|_| ())),
                Pending::PushRead(id) => match c.result.map(|d| self.store.get().take_data(d)) {
                    Ok(Some(data)) => self.send_push(id, Some(data)),
                    Ok(None) => self.push_done(
                        id,
                        Err(PeeringError::Store("a read completed without data".into())),
                    ),
                    Err(e) => self.push_done(id, Err(PeeringError::Store(e.to_string()))),
                },
                Pending::Prepare {
                    reply,
                    key,
                    creates,
                } => {
                    let r = c.result.map(|_| ()).map_err(|e| {
                        self.pgs.creation_failed(key, creates);
                        PeeringError::Store(e.to_string())
                    });
                    let _ = reply.send(r);
                }
            }
        }
        self.finish_writes(&mut finished);
        self.completions = done;
        self.finished = finished;
        if n > 0 {
            ShardCounters::set(&self.counters.inflight, self.pending.len() as u64);
        }
        n
    }

    /// The wire error for a store error (logged when it means the store is failing). Once
    /// the store has failed, `Again`: the op can succeed on the PG's other members once the
    /// monitor has marked this OSD down.
    fn store_error(&self, e: &StoreError) -> OpError {
        if self.store.failure().is_some() {
            return OpError::Again;
        }
        let wire = op_error(e);
        if wire == OpError::Io {
            tracing::error!(shard = self.shard, error = %e, "store error");
        }
        wire
    }

    /// A replica op's transaction completed: its log entry joins the PG's log and the primary
    /// is answered.
    fn replica_applied(&mut self, a: ReplicaApply, result: Result<(), StoreError>) {
        let reply = match &result {
            Ok(()) => RepReply::OK,
            Err(_) if self.store.failure().is_some() => RepReply::err(RepError::Io),
            Err(e) => RepReply::err(match self.store_error(e) {
                OpError::NoSpace => RepError::NoSpace,
                OpError::Io => RepError::Io,
                _ => RepError::Invalid,
            }),
        };
        if let Some(pg) = self.pgs.get_mut(a.pg).filter(|_| a.logged) {
            if result.is_ok() {
                pg.log.commit(a.req);
            } else {
                pg.log.abort(&a.req);
            }
        }
        if result.is_ok() {
            ShardCounters::add(&self.counters.rep_applied, 1);
        } else {
            self.pgs.creation_failed(a.pg, a.creates);
        }
        self.messenger.deliver_rep(a.conn, a.tid, &reply);
        self.end_mutation(a.pg, a.order_key);
    }

    /// A mutation of object `k` of PG `key` completed: when it was the object's last one in
    /// flight, the PG's parked ops get another try (those still blocked park again).
    fn end_mutation(&mut self, key: PgKey, k: u64) {
        let Some(pg) = self.pgs.get_mut(key) else {
            return;
        };
        if pg.end_mutation(k) {
            self.retry_parked(key);
        }
        self.pgs.forget_if_done(key);
    }

    /// Gives the PG's parked ops another try (those still blocked park again).
    fn retry_parked(&mut self, key: PgKey) {
        let Some(pg) = self.pgs.get_mut(key) else {
            return;
        };
        let mut retry = std::mem::take(&mut self.retry);
        pg.take_parked(&mut retry);
        for op in retry.drain(..) {
            self.execute(op);
        }
        self.retry = retry;
    }

    fn reply_to(&mut self, r: ReplyTo, result: Result<Answer, OpError>) {
        self.reply(r.conn, r.tid, r.kind, result, r.started)
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

    /// Answers a read of `self.lookup` on one of this shard's connections straight from the
    /// store's memory, if the store serves it in place (`ObjectStore::read_in_place`): no
    /// buffer, no ticket. False: it does not, use `read`.
    fn answer_in_place(
        &mut self,
        conn: ConnRef,
        tid: u64,
        cid: carmine_objectstore::CollectionId,
        off: u64,
        len: u32,
        started: Instant,
    ) -> bool {
        let ShardCore {
            store,
            messenger,
            counters,
            latency,
            lookup,
            ..
        } = self;
        let error = match store
            .get_ref()
            .read_in_place(cid, lookup, off, u64::from(len))
        {
            None => return false,
            Some(Ok(data)) => {
                answer_borrowed(counters, latency, messenger, conn, tid, started, data);
                return true;
            }
            Some(Err(e)) => e,
        };
        // The error `read` would have completed with, answered the same way.
        let error = self.store_error(&error);
        self.reply(conn, tid, OpKind::Read, Err(error), started);
        true
    }

    /// Answers a read from a loan of the store's buffer, then ends the loan. A loan for an
    /// answer on another shard (not asked for: those reads copy) is copied out to go there.
    fn answer_lent(&mut self, r: ReplyTo, loan: carmine_objectstore::Lent) {
        if r.conn.shard as usize != self.shard {
            let result = match self
                .store
                .get()
                .take_data(carmine_objectstore::Done::Lent(loan))
            {
                Some(data) => Ok(Answer::Read(data)),
                None => Err(OpError::Io),
            };
            return self.reply_to(r, result);
        }
        let ShardCore {
            store,
            messenger,
            counters,
            latency,
            ..
        } = self;
        let store = store.get();
        match store.lent(&loan) {
            Some(data) => {
                answer_borrowed(counters, latency, messenger, r.conn, r.tid, r.started, data)
            }
            None => {
                tracing::error!(
                    shard = self.shard,
                    "a store read lent a buffer it does not hold"
                );
                self.reply_to(r, Err(OpError::Io));
            }
        }
        self.store.get().give_back(loan);
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
        count_answer(
            &self.counters,
            kind,
            match &result {
                Ok(Answer::Read(d)) => Ok((d.len(), d.len())),
                Ok(a) => Ok((a.bytes_out(), 0)),
                Err(e) => Err(e),
            },
        );
        self.latency
            .record(crate::perf::op_index(kind), started, Instant::now());
        self.messenger.deliver(conn, tid, &result);
        // The read data is in the reply bytes now (or not wanted): its buffer goes back to the
        // store's pool.
        if let Ok(Answer::Read(data)) = result {
            self.store.get().recycle(data);
        }
    }
}

/// Counts a read's answer and encodes it from `data`, borrowed from the store, onto one of this
/// shard's connections.
fn answer_borrowed(
    counters: &ShardCounters,
    latency: &mut Latency,
    messenger: &mut Messenger,
    conn: ConnRef,
    tid: u64,
    started: Instant,
    data: &[u8],
) {
    count_answer(counters, OpKind::Read, Ok((data.len(), data.len())));
    latency.record(crate::perf::op_index(OpKind::Read), started, Instant::now());
    messenger.deliver_read(conn, tid, data);
}

/// Counts an answer to a client op: the op by kind, then its (data bytes out, of them read
/// from the store) or its error.
fn count_answer(ctr: &ShardCounters, kind: OpKind, result: Result<(usize, usize), &OpError>) {
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
    match result {
        Ok((out, read)) => {
            ShardCounters::add(&ctr.bytes_out, out as u64);
            if read > 0 {
                ShardCounters::add(&ctr.bytes_read, read as u64);
            }
        }
        Err(OpError::StaleMap { .. }) => ShardCounters::add(&ctr.stale_map, 1),
        Err(OpError::Again) => ShardCounters::add(&ctr.again, 1),
        Err(_) => ShardCounters::add(&ctr.errors, 1),
    }
}

/// Replaces object `oid` with `data` in `txn`. Both ops create a missing object. Write, then
/// cut to the new length: an overwrite of the same size reuses what the object has (a store
/// may write in place), where truncating to 0 first would drop it and build it anew.
fn write_full(
    txn: &mut Transaction,
    cid: carmine_objectstore::CollectionId,
    oid: &ObjectId,
    data: Vec<u8>,
) {
    let size = data.len() as u64;
    if size > 0 {
        txn.ops.push(Op::Write {
            cid,
            oid: oid.clone(),
            off: 0,
            data,
        });
    }
    txn.ops.push(Op::Truncate {
        cid,
        oid: oid.clone(),
        size,
    });
}

/// The answer to a mutation of `kind` that is done.
fn written(kind: OpKind) -> Answer {
    match kind {
        OpKind::WriteFull => Answer::WrittenFull,
        OpKind::Remove => Answer::Removed,
        _ => Answer::Written,
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

    fn has_pending(&self) -> bool {
        self.0.borrow().messenger.has_pending()
    }
}
