//! Pushing objects to other OSDs over the data plane: recovery and backfill of the members of
//! the PGs this shard leads, and filling a PG's new primary before it activates (a job the
//! agent asks for on the OSDs that hold what the primary lacks).
//!
//! A push reads the whole object as this store holds it (or its tombstone) and sends it as a
//! `RepOp` of a push kind, tid [`PUSH_TID`] | its id, on the same link as replica ops. At most
//! [`MAX_PUSHES`] are in flight per shard (the per-OSD recovery budget, next to client I/O):
//! agent jobs first (a PG waits for them to activate), then the recovering PGs in turn. A
//! push the peer refuses, whose link fails, or that is not answered within
//! [`REPLICA_TIMEOUT`] fails: recovery puts the object back and pauses the PG, a job reports
//! the error.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use carmine_agent::peering::{PeeringError, PushTotals, Reply, ShardEvent};
use carmine_objectstore::ObjectId;
use carmine_wire::{Epoch, PgId, PoolId, RepMutation, RepOp};

use super::{Pending, ShardCore};
use crate::pg::PgKey;
use crate::pglog::Version;
use crate::pgmeta;
use crate::replication::REPLICA_TIMEOUT;

/// Marks the tid of a push (mutations' tids count up from 1 and never reach it).
pub(super) const PUSH_TID: u64 = 1 << 63;
/// Pushes in flight per shard.
pub(super) const MAX_PUSHES: usize = 16;
/// The client id pushes carry in their reqid (not logged by the receiver).
const PUSHER: &str = "recovery";

/// Why a push was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// Recovery of a member of a PG this shard leads.
    Recovery,
    /// An agent's job (filling a primary before it activates).
    Job(u64),
}

/// One object on its way to one OSD.
#[derive(Debug)]
pub(super) struct PushTask {
    pub pg: PgKey,
    pub target: u32,
    pub name: Vec<u8>,
    /// The map epoch and interval the push is stamped with (the primary's).
    pub epoch: u64,
    pub since: u64,
    pub origin: Origin,
    version: Option<Version>,
    bytes: u64,
    started: Instant,
}

impl PushTask {
    pub fn new(
        pg: PgKey,
        target: u32,
        name: Vec<u8>,
        epoch: u64,
        since: u64,
        origin: Origin,
    ) -> Self {
        PushTask {
            pg,
            target,
            name,
            epoch,
            since,
            origin,
            version: None,
            bytes: 0,
            started: Instant::now(),
        }
    }
}

/// An agent's push job.
#[derive(Debug)]
struct PushJob {
    reply: Option<Reply<PushTotals>>,
    left: usize,
    totals: PushTotals,
    error: Option<PeeringError>,
}

/// A shard's pushes.
#[derive(Debug, Default)]
pub(super) struct Pushes {
    next: u64,
    tasks: HashMap<u64, PushTask>,
    jobs: HashMap<u64, PushJob>,
    /// Job pushes waiting for room in the budget.
    queue: VecDeque<PushTask>,
    /// PGs with recovery to do, in turn.
    pub recovering: VecDeque<PgKey>,
}

impl Pushes {
    /// Pushes in flight or waiting for the budget (the shard keeps polling for them).
    pub fn busy(&self) -> bool {
        !self.tasks.is_empty() || !self.queue.is_empty()
    }

    /// PGs with recovery to do (their next push may be due after a pause).
    pub fn recovering(&self) -> bool {
        !self.recovering.is_empty()
    }

    /// A new job of `objects` pushes; its reply goes out once every push is done.
    pub fn add_job(
        &mut self,
        reply: Reply<PushTotals>,
        tasks: impl Iterator<Item = (PgKey, u32, Vec<u8>, u64, u64)>,
    ) {
        self.next += 1;
        let id = self.next;
        let before = self.queue.len();
        for (pg, target, name, epoch, since) in tasks {
            self.queue.push_back(PushTask::new(
                pg,
                target,
                name,
                epoch,
                since,
                Origin::Job(id),
            ));
        }
        let left = self.queue.len() - before;
        if left == 0 {
            let _ = reply.send(Ok(PushTotals::default()));
            return;
        }
        self.jobs.insert(
            id,
            PushJob {
                reply: Some(reply),
                left,
                totals: PushTotals::default(),
                error: None,
            },
        );
    }
}

impl ShardCore {
    /// Starts pushes while the budget has room; returns how many started.
    pub(super) fn feed_pushes(&mut self, now: Instant) -> usize {
        let mut started = 0;
        while self.pushes.tasks.len() < MAX_PUSHES {
            if let Some(t) = self.pushes.queue.pop_front() {
                self.start_push(t);
                started += 1;
                continue;
            }
            let Some(task) = self.next_recovery_push(now) else {
                break;
            };
            self.start_push(task);
            started += 1;
        }
        started
    }

    /// The next recovery push of the PGs in turn (PGs with nothing left leave the turn).
    fn next_recovery_push(&mut self, now: Instant) -> Option<PushTask> {
        for _ in 0..self.pushes.recovering.len() {
            let key = self.pushes.recovering.pop_front()?;
            let epoch = self.routing.epoch();
            let Some(pg) = self.pgs.get_mut(key).filter(|p| p.is_primary()) else {
                continue;
            };
            let since = pg.interval_since();
            let Some(rec) = pg.recovery.as_mut() else {
                continue;
            };
            let next = rec.next(now);
            self.pushes.recovering.push_back(key);
            if let Some((osd, name)) = next {
                return Some(PushTask::new(
                    key,
                    osd,
                    name,
                    epoch,
                    since,
                    Origin::Recovery,
                ));
            }
        }
        None
    }

    /// Reads what to push (or sends a tombstone at once).
    pub(super) fn start_push(&mut self, mut t: PushTask) {
        self.pushes.next += 1;
        let id = self.pushes.next;
        // The reply timeout runs from now, not from when the task was queued.
        t.started = Instant::now();
        let store = self.store.get_ref();
        match pgmeta::held_version(store, t.pg, &t.name) {
            None => {
                // Nothing here to push (removed without a trace, or never held): the target
                // cannot get it from this OSD. A pull fails (the primary's agent decides
                // again); recovery has nothing better to push and moves on.
                tracing::error!(shard = self.shard, pg = ?t.pg, osd = t.target, "push of an object this OSD does not hold");
                t.version = None;
                let origin = t.origin;
                self.pushes.tasks.insert(id, t);
                let r = match origin {
                    Origin::Recovery => Ok(()),
                    Origin::Job(_) => Err(PeeringError::Store(
                        "this OSD does not hold the object".into(),
                    )),
                };
                self.push_done(id, r);
            }
            Some((v, true)) => {
                t.version = Some(v);
                self.pushes.tasks.insert(id, t);
                self.send_push(id, None);
            }
            Some((v, false)) => {
                t.version = Some(v);
                let cid = t.pg.cid();
                let oid = ObjectId::from_slice(&t.name);
                let size = store.stat(cid, &oid).map(|s| s.size).unwrap_or(0);
                self.pushes.tasks.insert(id, t);
                let ticket = self.store.get().read(cid, &oid, 0, size);
                self.pending.insert(ticket, Pending::PushRead(id));
            }
        }
    }

    /// Sends push `id` (`data`: the object's bytes; `None`: its tombstone).
    pub(super) fn send_push(&mut self, id: u64, data: Option<Vec<u8>>) {
        let Some(t) = self.pushes.tasks.get_mut(&id) else {
            return;
        };
        t.bytes = data.as_ref().map_or(0, |d| d.len() as u64);
        let (target, pg, epoch, since, version) = (t.target, t.pg, t.epoch, t.since, t.version);
        let link = self
            .routing
            .peer_addr(target, pg.pg)
            .and_then(|addr| self.messenger.peer_link(target, addr));
        let result = match (link, std::str::from_utf8(&t.name), version) {
            (None, ..) => Err(PeeringError::NoLink(target)),
            (_, Err(_), _) | (_, _, None) => Err(PeeringError::PushRefused {
                osd: target,
                reason: "object name is not UTF-8".into(),
            }),
            (Some(l), Ok(object), Some(version)) => {
                let op = match &data {
                    Some(d) => RepMutation::Push { object, data: d },
                    None => RepMutation::PushTombstone { object },
                };
                let rep = RepOp {
                    pool: PoolId(u64::from(pg.pool)),
                    pg: PgId(pg.pg),
                    epoch: Epoch(epoch),
                    interval_since: Epoch(since.min(epoch)),
                    version,
                    reqid: carmine_wire::ReqId {
                        client: PUSHER,
                        tid: id,
                    },
                    op,
                };
                let sent = self.messenger.send_rep(l, PUSH_TID | id, &rep);
                if sent.is_ok() {
                    crate::perf::ShardCounters::add(&self.counters.push_sent, 1);
                    let bytes = data.as_ref().map_or(0, |d| d.len() as u64);
                    crate::perf::ShardCounters::add(&self.counters.push_sent_bytes, bytes);
                }
                sent.map_err(|e| PeeringError::PushRefused {
                    osd: target,
                    reason: e.to_string(),
                })
            }
        };
        if let Some(d) = data {
            self.store.get().recycle(d);
        }
        if let Err(e) = result {
            self.push_done(id, Err(e));
        }
    }

    /// Push `id` finished (answered, refused, lost or timed out).
    pub(super) fn push_done(&mut self, id: u64, result: Result<(), PeeringError>) {
        let Some(t) = self.pushes.tasks.remove(&id) else {
            return;
        };
        if let Err(e) = &result {
            tracing::debug!(shard = self.shard, pg = ?t.pg, osd = t.target, error = %e, "push failed");
        }
        match t.origin {
            Origin::Recovery => {
                let now = Instant::now();
                let mut clean = None;
                if let Some(pg) = self.pgs.get_mut(t.pg).filter(|p| p.is_primary()) {
                    let since = pg.interval_since();
                    if let Some(rec) = pg.recovery.as_mut().filter(|r| r.since == since) {
                        match &result {
                            Ok(()) => rec.done(t.target, &t.name, t.bytes),
                            Err(_) => rec.failed(t.target, &t.name, now),
                        }
                        if rec.is_clean() {
                            let totals = rec.recovered;
                            let objects = rec.objects;
                            pg.recovery = None;
                            clean = Some((since, totals, objects));
                        }
                    }
                }
                if let Some((since, recovered, _)) = clean {
                    let pg = carmine_agent::peering::PgId {
                        pool: t.pg.pool,
                        pg: t.pg.pg,
                    };
                    self.emit(ShardEvent::Progress {
                        pg,
                        since,
                        degraded: 0,
                        misplaced: 0,
                        recovered,
                    });
                    self.emit(ShardEvent::Clean { pg, since });
                }
                // Writes waiting for this object may go now.
                self.retry_parked(t.pg);
            }
            Origin::Job(j) => {
                let Some(job) = self.pushes.jobs.get_mut(&j) else {
                    return;
                };
                match result {
                    Ok(()) => {
                        if t.version.is_some() {
                            job.totals.objects += 1;
                            job.totals.bytes += t.bytes;
                        }
                    }
                    Err(e) => {
                        job.error.get_or_insert(e);
                    }
                }
                job.left -= 1;
                if job.left == 0 {
                    if let Some(job) = self.pushes.jobs.remove(&j) {
                        let answer = match job.error {
                            Some(e) => Err(e),
                            None => Ok(job.totals),
                        };
                        if let Some(reply) = job.reply {
                            let _ = reply.send(answer);
                        }
                    }
                }
            }
        }
    }

    /// The link to `osd` is gone: its pushes fail.
    pub(super) fn pushes_lost(&mut self, osd: u32) {
        let ids: Vec<u64> = self
            .pushes
            .tasks
            .iter()
            .filter(|(_, t)| t.target == osd)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.push_done(id, Err(PeeringError::NoLink(osd)));
        }
    }

    /// Pushes not answered within [`REPLICA_TIMEOUT`] fail.
    pub(super) fn expire_pushes(&mut self, now: Instant) {
        let Some(deadline) = now.checked_sub(REPLICA_TIMEOUT) else {
            return;
        };
        let ids: Vec<u64> = self
            .pushes
            .tasks
            .iter()
            .filter(|(_, t)| t.started < deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let osd = self.pushes.tasks.get(&id).map_or(0, |t| t.target);
            self.push_done(
                id,
                Err(PeeringError::PushRefused {
                    osd,
                    reason: format!("no answer within {REPLICA_TIMEOUT:?}"),
                }),
            );
        }
    }
}
