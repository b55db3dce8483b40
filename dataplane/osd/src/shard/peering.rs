//! The shard's side of peering: the agent's requests ([`ShardRequest`]), pushes received from
//! other OSDs, and the events the shard sends the agent.
//!
//! - **List** is taken once the shard runs the asker's epoch (so ops of older intervals are
//!   fenced) and no mutation of the PG is in flight (so none lands after it); until then it
//!   waits here.
//! - **Prepare** removes what the authoritative state lacks and records the copy's `since`,
//!   in one transaction, answered once durable.
//! - **Activate** is taken only in the interval it was decided for.
//! - A received **push** is applied only when newer than what this copy holds (a push that
//!   arrives after a newer write changes nothing), without a log entry.

use std::time::Instant;

use carmine_agent::peering::{PeeringError, PgId as AgentPgId, ShardEvent, ShardRequest};
use carmine_objectstore::{ObjectId, Op, Transaction};
use carmine_wire::{Epoch, RepError, RepReply};

use super::{Pending, ReplicaApply, ShardCore};
use crate::messenger::RepInbound;
use crate::ops::Job;
use crate::perf::ShardCounters;
use crate::pg::{IntervalChange, PgKey, Phase};
use crate::pglog::{version_key, VERSION_ATTR};
use crate::pgmeta;
use crate::recovery::PgRecovery;

use carmine_agent::peering::MAX_PREPARE_REMOVES;

fn key_of(pg: AgentPgId) -> PgKey {
    PgKey {
        pool: pg.pool,
        pg: pg.pg,
    }
}

fn agent_pg(key: PgKey) -> AgentPgId {
    AgentPgId {
        pool: key.pool,
        pg: key.pg,
    }
}

impl ShardCore {
    pub(super) fn emit(&self, e: ShardEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    /// Tells the agent which PGs began an interval it must peer, or left this shard's lead.
    pub(super) fn emit_interval_changes(&mut self, epoch: u64) {
        let changes = std::mem::take(&mut self.changes);
        for c in &changes {
            match c {
                IntervalChange::Began {
                    key,
                    since,
                    acting,
                    boots,
                    size,
                    min_size,
                } => self.emit(ShardEvent::NewInterval {
                    pg: agent_pg(*key),
                    since: *since,
                    epoch,
                    acting: acting.clone(),
                    boots: boots.clone(),
                    size: *size,
                    min_size: *min_size,
                }),
                IntervalChange::Left(key) => {
                    self.reported_objects.remove(key);
                    self.emit(ShardEvent::Left { pg: agent_pg(*key) })
                }
            }
        }
        self.changes = changes;
        self.changes.clear();
    }

    /// Progress of the PGs whose recovery moved since the last report.
    pub(super) fn report_progress(&mut self) {
        let mut events = Vec::new();
        for key in self.pushes.recovering.iter() {
            let Some(pg) = self.pgs.get_mut(*key) else {
                continue;
            };
            let since = pg.interval_since();
            if let Some(rec) = pg.recovery.as_mut().filter(|r| r.dirty) {
                rec.dirty = false;
                let (degraded, misplaced) = rec.counts();
                events.push(ShardEvent::Progress {
                    pg: agent_pg(*key),
                    since,
                    degraded,
                    misplaced,
                    recovered: rec.recovered,
                });
            }
        }
        for e in events {
            self.emit(e);
        }
    }

    pub(super) fn on_peering(&mut self, req: ShardRequest) {
        let have = self.routing.epoch();
        match req {
            ShardRequest::List { pg, epoch, reply } => {
                if have < epoch {
                    let _ = reply.send(Err(PeeringError::Behind { have, need: epoch }));
                    return;
                }
                let key = key_of(pg);
                if self.pgs.get(key).is_some_and(|p| !p.quiet()) {
                    // Mutations of the PG are in flight: list once they have landed.
                    self.deferred.push(ShardRequest::List { pg, epoch, reply });
                    return;
                }
                let copy = pgmeta::list_copy(self.store.get_ref(), key)
                    .map_err(|e| PeeringError::Store(e.to_string()));
                let _ = reply.send(copy);
            }
            ShardRequest::Prepare {
                pg,
                primary,
                epoch,
                since: _,
                acting,
                boots,
                remove,
                set_since,
                reply,
            } => {
                if have < epoch {
                    let _ = reply.send(Err(PeeringError::Behind { have, need: epoch }));
                    return;
                }
                // Only from the PG's primary, in the interval this member is in now: a
                // primary that was paused while the PG moved on must not change this copy.
                let same = self.pgs.get(key_of(pg)).is_some_and(|p| {
                    p.same_interval(&acting, &boots) && acting.first() == Some(&primary)
                });
                if !same {
                    let now = self.pgs.get(key_of(pg)).map_or(0, |p| p.interval_since());
                    let _ = reply.send(Err(PeeringError::IntervalChanged { now }));
                    return;
                }
                if remove.len() > MAX_PREPARE_REMOVES {
                    let _ = reply.send(Err(PeeringError::Store(format!(
                        "{} removes in one prepare (at most {MAX_PREPARE_REMOVES})",
                        remove.len()
                    ))));
                    return;
                }
                let key = key_of(pg);
                let cid = key.cid();
                let mut txn = Transaction {
                    ops: Vec::with_capacity(remove.len() + 3),
                };
                let creates = self.create_if_new(key, &mut txn);
                let mut tombs = Vec::new();
                for name in remove {
                    if pgmeta::tombstone(self.store.get_ref(), key, &name).is_some() {
                        tombs.push(name.as_slice().into());
                    }
                    if pgmeta::object_exists(self.store.get_ref(), key, &name) {
                        txn.ops.push(Op::Remove {
                            cid,
                            oid: ObjectId::from(name),
                        });
                    }
                }
                if !tombs.is_empty() {
                    txn.ops.push(Op::OmapRm {
                        cid: key.meta_cid(),
                        oid: pgmeta::tomb_object(),
                        keys: tombs,
                    });
                }
                if let Some(since) = set_since {
                    txn.ops.push(pgmeta::set_since(key, since));
                }
                if txn.ops.is_empty() {
                    let _ = reply.send(Ok(()));
                    return;
                }
                let ticket = self.store.get().submit(txn);
                self.pending.insert(
                    ticket,
                    Pending::Prepare {
                        reply,
                        key,
                        creates,
                    },
                );
            }
            ShardRequest::Push {
                pg,
                epoch,
                since,
                target,
                objects,
                reply,
            } => {
                let key = key_of(pg);
                self.pushes.add_job(
                    reply,
                    objects
                        .into_iter()
                        .map(move |name| (key, target, name, epoch, since)),
                );
            }
            ShardRequest::Activate {
                pg,
                since,
                objects,
                members,
                reply,
            } => {
                let key = key_of(pg);
                let Some(p) = self.pgs.get_mut(key).filter(|p| p.is_primary()) else {
                    let _ = reply.send(Err(PeeringError::NotPrimary));
                    return;
                };
                if p.interval_since() != since {
                    let now = p.interval_since();
                    let _ = reply.send(Err(PeeringError::IntervalChanged { now }));
                    return;
                }
                if p.phase() == Phase::Peering {
                    let rec = PgRecovery::new(since, objects, members);
                    let recovering = rec.is_some();
                    p.activate(rec);
                    tracing::info!(shard = self.shard, pg = ?key, since, recovering, "pg active");
                    if recovering {
                        if !self.pushes.recovering.contains(&key) {
                            self.pushes.recovering.push_back(key);
                        }
                        self.report_progress();
                    } else {
                        self.emit(ShardEvent::Clean { pg, since });
                    }
                }
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// Listings that waited for their PG's mutations to land.
    pub(super) fn retry_deferred(&mut self) -> usize {
        if self.deferred.is_empty() {
            return 0;
        }
        let waiting = std::mem::take(&mut self.deferred);
        let n = waiting.len();
        for r in waiting {
            self.on_peering(r);
        }
        n
    }

    /// A push from another OSD: applied when newer than what this copy holds.
    pub(super) fn apply_push(&mut self, r: RepInbound) {
        let refuse = |me: &mut ShardCore, e: RepError| {
            ShardCounters::add(&me.counters.rep_refused, 1);
            me.messenger.deliver_rep(r.conn, r.tid, &RepReply::err(e));
        };
        let Ok(pool) = u32::try_from(r.pool) else {
            return refuse(self, RepError::Invalid);
        };
        let key = PgKey { pool, pg: r.pg };
        let epoch = self.routing.epoch();
        let Some(pg) = self.pgs.get(key).filter(|p| p.served()) else {
            return refuse(self, RepError::NotMember);
        };
        if r.epoch < pg.interval_since() {
            return refuse(
                self,
                RepError::StaleInterval {
                    replica_epoch: Epoch(epoch),
                    interval_since: Epoch(pg.interval_since()),
                },
            );
        }
        if epoch < r.interval_since {
            return refuse(self, RepError::NotMember);
        }
        let Some(name) = r.job.object().map(<[u8]>::to_vec) else {
            return refuse(self, RepError::Invalid);
        };
        let order_key = pg.object_key(&name);
        if pg.writing(order_key) {
            // A mutation of the object is landing: the pusher tries again later.
            return refuse(self, RepError::NotMember);
        }
        if let Some((held, _)) = pgmeta::held_version(self.store.get_ref(), key, &name) {
            if held >= r.version {
                return self.messenger.deliver_rep(r.conn, r.tid, &RepReply::OK);
            }
        }
        let cid = key.cid();
        let mut txn = Transaction {
            ops: Vec::with_capacity(5),
        };
        let creates = self.create_if_new(key, &mut txn);
        let exists = pgmeta::object_exists(self.store.get_ref(), key, &name);
        let RepInbound {
            conn,
            tid,
            req,
            job,
            version,
            ..
        } = r;
        match job {
            Job::WriteFull { oid, data } => {
                super::write_full(&mut txn, cid, &oid, data);
                txn.ops.push(Op::SetAttr {
                    cid,
                    oid,
                    name: VERSION_ATTR.into(),
                    value: version_key(version).as_slice().into(),
                });
            }
            Job::Remove { oid } => {
                if exists {
                    txn.ops.push(Op::Remove { cid, oid });
                }
                txn.ops.push(pgmeta::set_tombstone(key, &name, version));
            }
            _ => {
                self.pgs.creation_failed(key, creates);
                ShardCounters::add(&self.counters.rep_refused, 1);
                return self
                    .messenger
                    .deliver_rep(conn, tid, &RepReply::err(RepError::Invalid));
            }
        }
        if let Some(pg) = self.pgs.get_mut(key) {
            pg.begin_mutation(order_key);
        }
        ShardCounters::add(&self.counters.push_applied, 1);
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
                logged: false,
            }),
        );
    }

    /// The periodic part of peering: stale pushes fail, progress and object counts go to
    /// the agent.
    pub(super) fn peering_tick(&mut self, now: Instant) {
        self.expire_pushes(now);
        self.report_progress();
        self.report_objects();
    }

    /// The live object count of every active, clean PG this shard leads, where it changed
    /// since the last report: the length of its data collection (tombstones live in the
    /// meta collection). While a PG recovers, the peering plan's count stands (the primary's
    /// own copy may still miss objects).
    fn report_objects(&mut self) {
        let Some(tx) = &self.events else {
            return;
        };
        let store = self.store.get_ref();
        for (key, _) in self.pgs.primaries() {
            let Some(pg) = self.pgs.get(key) else {
                continue;
            };
            if pg.phase() != Phase::Active || pg.recovery.is_some() {
                continue;
            }
            let since = pg.interval_since();
            let objects = store.collection_len(key.cid()) as u64;
            if self.reported_objects.get(&key) != Some(&(since, objects)) {
                self.reported_objects.insert(key, (since, objects));
                let _ = tx.send(ShardEvent::Objects {
                    pg: agent_pg(key),
                    since,
                    objects,
                });
            }
        }
    }
}
