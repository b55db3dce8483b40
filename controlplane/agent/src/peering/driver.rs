//! The agent's peering tasks: one per PG this OSD leads in a new interval (see the parent
//! module for the sequence), the PG states the heartbeats report, and this OSD's answers to
//! other primaries (`OsdAdmin.PgListing`, `PgPrepare`, `PgPush`).
//!
//! A task retries every step (with backoff) until it activates the PG or a newer interval
//! (or leaving the PG) aborts it. An incomplete PG keeps asking, so it goes active as soon
//! as an OSD that speaks for the blocking interval answers. A PG whose acting set is below
//! `min_size` does not peer at all (it could not take a write, and recording such an
//! interval would only make later peering harder): it is reported `down`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use carmine_proto::v1::{
    self, mon_cluster_client::MonClusterClient, osd_admin_client::OsdAdminClient, PgStateBit,
};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tonic::Request;

use super::{
    EventReceiver, ListedObject, MemberMissing, ObjectVersion, PeeringError, PeeringShards, PgCopy,
    PgId, PushTotals, ShardEvent, ShardRequest,
};
use crate::peering_plan::{self, Decision, Interval, Listed, Listing, ObjVersion, Plan};
use crate::scrubber::{Scrubs, MAX_DIGEST_MESSAGE};
use crate::AgentStatus;

/// Longest wait for one step of peering (a listing of a big PG, a push job).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between attempts of a task that could not finish.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How long peering still waits for other members' listings once it could decide.
const STRAGGLER_GRACE: Duration = Duration::from_millis(300);
/// Longest wait for one member's listing.
const LISTING_TIMEOUT: Duration = Duration::from_secs(10);
/// Objects per push job asked of one holder.
const PUSH_CHUNK: usize = 1024;
/// How long a local request waits for room in a full shard ring.
const RING_RETRY: Duration = Duration::from_millis(5);
const RING_TRIES: u32 = 400;

type MonClient = MonClusterClient<tonic::transport::Channel>;

/// Why a peering step failed (the task tries again).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("local shard: {0}")]
    Shard(#[from] PeeringError),
    #[error("osd.{osd}: {status}")]
    Peer { osd: u32, status: tonic::Status },
    #[error("osd.{osd}: cannot reach its admin service: {reason}")]
    Unreachable { osd: u32, reason: String },
    #[error("monitor: {0}")]
    Mon(tonic::Status),
    #[error("no monitor session")]
    NoMonitor,
    #[error("not booted")]
    NotBooted,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("plan: {0}")]
    Plan(#[from] peering_plan::PlanError),
    #[error("the monitor holds a newer interval than the one since epoch {since}")]
    Superseded { since: u64 },
}

/// The interval a peering task works for, as the primary's shard saw it begin.
#[derive(Debug, Clone)]
struct Interval0 {
    pg: PgId,
    since: u64,
    /// The map epoch it was seen at (requests to members carry it).
    epoch: u64,
    acting: Vec<u32>,
    /// The members' boot epochs: with `acting`, the interval's identity on every member.
    boots: Vec<u64>,
}

/// One PG this OSD leads, as the heartbeats report it.
#[derive(Debug, Clone)]
struct PgEntry {
    since: u64,
    acting: Vec<u32>,
    size: u32,
    state: u32,
    objects: u64,
    degraded: u64,
    misplaced: u64,
    recovered: PushTotals,
    blocked_by: Vec<String>,
    /// The shard reported progress (or clean) in this interval: its counts are newer than
    /// the plan's (the events can overtake the task that activated the PG).
    progress_seen: bool,
    /// The same for the object count (`ShardEvent::Objects`).
    objects_seen: bool,
}

impl PgEntry {
    fn to_proto(&self, pg: PgId) -> v1::PgStat {
        v1::PgStat {
            pool: pg.pool,
            pg: pg.pg,
            state: self.state,
            interval_since: self.since,
            acting: self.acting.clone(),
            objects: self.objects,
            degraded_objects: self.degraded,
            misplaced_objects: self.misplaced,
            recovered_bytes: self.recovered.bytes,
            recovered_objects: self.recovered.objects,
            blocked_by: self.blocked_by.clone(),
        }
    }

    /// The state bits of an active PG from its counts.
    fn active_state(&mut self) {
        let undersized = (self.acting.len() as u32) < self.size;
        let mut s = PgStateBit::PgStateActive as u32;
        if self.degraded > 0 || self.misplaced > 0 || undersized {
            s |= PgStateBit::PgStateDegraded as u32;
        }
        if self.degraded > 0 {
            s |= PgStateBit::PgStateRecovering as u32;
        }
        if self.misplaced > 0 {
            s |= PgStateBit::PgStateBackfilling as u32;
        }
        if undersized {
            s |= PgStateBit::PgStateUndersized as u32;
        }
        if self.degraded == 0 && self.misplaced == 0 && !undersized {
            s |= PgStateBit::PgStateClean as u32;
        }
        self.state = s;
        self.blocked_by.clear();
    }
}

/// Peering on this OSD: the tasks of the PGs it leads and their states.
pub struct Peering {
    shards: Arc<dyn PeeringShards>,
    status: Arc<AgentStatus>,
    scrubs: Arc<Scrubs>,
    pgs: Mutex<BTreeMap<PgId, PgEntry>>,
    tasks: Mutex<HashMap<PgId, (u64, AbortHandle)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn to_listing(osd: u32, c: PgCopy) -> Listing {
    Listing {
        osd,
        has_info: c.has_info,
        info_since: c.info_since,
        objects: c
            .objects
            .into_iter()
            .map(|o| Listed {
                name: o.name,
                version: ObjVersion {
                    epoch: o.version.epoch,
                    seq: o.version.seq,
                },
                tombstone: o.tombstone,
            })
            .collect(),
    }
}

fn copy_from_proto(r: v1::PgListingReply) -> PgCopy {
    PgCopy {
        has_info: r.has_info,
        info_since: r.info_since,
        objects: r
            .objects
            .into_iter()
            .map(|o| ListedObject {
                name: o.name,
                version: ObjectVersion {
                    epoch: o.version_epoch,
                    seq: o.version_seq,
                },
                tombstone: o.tombstone,
            })
            .collect(),
    }
}

pub fn copy_to_proto(osd: u32, map_epoch: u64, c: PgCopy) -> v1::PgListingReply {
    v1::PgListingReply {
        osd,
        map_epoch,
        has_info: c.has_info,
        info_since: c.info_since,
        objects: c
            .objects
            .into_iter()
            .map(|o| v1::ListedObject {
                name: o.name,
                version_epoch: o.version.epoch,
                version_seq: o.version.seq,
                tombstone: o.tombstone,
            })
            .collect(),
    }
}

/// Hands `make(reply)` to the local shard and waits for the answer.
pub async fn local<T>(
    shards: &dyn PeeringShards,
    make: impl Fn(oneshot::Sender<Result<T, PeeringError>>) -> ShardRequest,
) -> Result<T, PeeringError> {
    let (tx, rx) = oneshot::channel();
    let mut req = make(tx);
    let mut tries = 0;
    loop {
        match shards.submit(req) {
            Ok(()) => break,
            Err(back) if tries < RING_TRIES => {
                req = back;
                tries += 1;
                tokio::time::sleep(RING_RETRY).await;
            }
            Err(_) => return Err(PeeringError::Busy),
        }
    }
    match tokio::time::timeout(STEP_TIMEOUT, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) | Err(_) => Err(PeeringError::Gone),
    }
}

impl Peering {
    pub(crate) fn new(
        shards: Arc<dyn PeeringShards>,
        status: Arc<AgentStatus>,
        scrubs: Arc<Scrubs>,
    ) -> Arc<Peering> {
        Arc::new(Peering {
            shards,
            status,
            scrubs,
            pgs: Mutex::new(BTreeMap::new()),
            tasks: Mutex::new(HashMap::new()),
        })
    }

    pub fn shards(&self) -> &dyn PeeringShards {
        self.shards.as_ref()
    }

    /// The PG states for the next heartbeat.
    pub fn report(&self) -> Vec<v1::PgStat> {
        lock(&self.pgs)
            .iter()
            .map(|(pg, e)| e.to_proto(*pg))
            .collect()
    }

    /// Follows the shards' events until they stop.
    pub async fn run(self: Arc<Self>, mut events: EventReceiver) {
        while let Some(e) = events.recv().await {
            match e {
                ShardEvent::NewInterval {
                    pg,
                    since,
                    epoch,
                    acting,
                    boots,
                    size,
                    min_size,
                } => self.begin(
                    Interval0 {
                        pg,
                        since,
                        epoch,
                        acting,
                        boots,
                    },
                    size,
                    min_size,
                ),
                ShardEvent::Left { pg } => {
                    if let Some((_, t)) = lock(&self.tasks).remove(&pg) {
                        t.abort();
                    }
                    lock(&self.pgs).remove(&pg);
                }
                ShardEvent::Progress {
                    pg,
                    since,
                    degraded,
                    misplaced,
                    recovered,
                } => {
                    if let Some(e) = lock(&self.pgs).get_mut(&pg).filter(|e| e.since == since) {
                        e.degraded = degraded;
                        e.misplaced = misplaced;
                        e.recovered = recovered;
                        e.progress_seen = true;
                        if e.state & PgStateBit::PgStateActive as u32 != 0 {
                            e.active_state();
                        }
                    }
                }
                ShardEvent::Objects { pg, since, objects } => {
                    if let Some(e) = lock(&self.pgs).get_mut(&pg).filter(|e| e.since == since) {
                        e.objects = objects;
                        e.objects_seen = true;
                    }
                }
                ShardEvent::Clean { pg, since } => {
                    let entry = {
                        let mut pgs = lock(&self.pgs);
                        pgs.get_mut(&pg).filter(|e| e.since == since).map(|e| {
                            e.degraded = 0;
                            e.misplaced = 0;
                            e.progress_seen = true;
                            e.active_state();
                            e.acting.clone()
                        })
                    };
                    if let Some(acting) = entry {
                        // Every member has everything: the history before this interval is
                        // no longer needed to peer.
                        let me = self.clone();
                        tokio::spawn(async move { me.trim(pg, since, acting).await });
                    }
                }
            }
        }
    }

    fn begin(self: &Arc<Self>, iv: Interval0, size: u32, min_size: u32) {
        let (pg, since, acting) = (iv.pg, iv.since, iv.acting.clone());
        let below_min = (acting.len() as u32) < min_size;
        let mut entry = PgEntry {
            since,
            acting: acting.clone(),
            size,
            state: PgStateBit::PgStatePeering as u32,
            objects: 0,
            degraded: 0,
            misplaced: 0,
            recovered: PushTotals::default(),
            blocked_by: Vec::new(),
            progress_seen: false,
            objects_seen: false,
        };
        if below_min {
            entry.state = PgStateBit::PgStateDown as u32 | PgStateBit::PgStateUndersized as u32;
        }
        // A PG of one copy peers like any other: its earlier intervals' OSD holds the only
        // copy (it is pulled from there when it is up; the PG is incomplete while it is down,
        // rather than active and empty).
        lock(&self.pgs).insert(pg, entry);
        if let Some((_, t)) = lock(&self.tasks).remove(&pg) {
            t.abort();
        }
        if below_min {
            return;
        }
        let me = self.clone();
        let task = tokio::spawn(async move {
            me.peer_task(iv).await;
        });
        lock(&self.tasks).insert(pg, (since, task.abort_handle()));
    }

    fn set_state(&self, pg: PgId, since: u64, f: impl FnOnce(&mut PgEntry)) {
        if let Some(e) = lock(&self.pgs).get_mut(&pg).filter(|e| e.since == since) {
            f(e);
        }
    }

    /// The peering task of `pg` in the interval that began at `since`.
    async fn peer_task(self: Arc<Self>, iv: Interval0) {
        let (pg, since) = (iv.pg, iv.since);
        let mut backoff = RETRY_MIN;
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match self.try_peer(&iv).await {
                Ok(true) => {
                    tracing::info!(%pg, since, attempts, ms = started.elapsed().as_millis() as u64, "peered");
                    return;
                }
                Ok(false) => {
                    // Incomplete: ask again in a while, an OSD that speaks for the blocked
                    // interval may come back.
                    backoff = RETRY_MAX;
                }
                Err(e) => {
                    if attempts % 20 == 1 {
                        tracing::info!(%pg, since, attempts, error = %e, "peering not done yet");
                    } else {
                        tracing::debug!(%pg, since, attempts, error = %e, "peering not done yet");
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }

    /// One attempt: `Ok(true)` once active, `Ok(false)` while incomplete.
    async fn try_peer(self: &Arc<Self>, iv: &Interval0) -> Result<bool, StepError> {
        let (pg, since, epoch, acting) = (iv.pg, iv.since, iv.epoch, iv.acting.as_slice());
        let me = self.status.osd_id().ok_or(StepError::NotBooted)?;
        let history = self.history(pg).await?;
        let current = Interval {
            since,
            acting: acting.to_vec(),
        };
        // Everyone who may hold data of the PG: the history's members and the acting set.
        let mut asked: Vec<u32> = acting.to_vec();
        for i in &history {
            for &o in &i.acting {
                if !asked.contains(&o) {
                    asked.push(o);
                }
            }
        }
        let up: HashSet<u32> = self
            .scrubs
            .map()
            .map(|m| m.osds.values().filter(|o| o.up).map(|o| o.id).collect())
            .unwrap_or_default();
        let mut listings = Vec::with_capacity(asked.len());
        let mut gather = tokio::task::JoinSet::new();
        for osd in asked.into_iter().filter(|o| *o == me || up.contains(o)) {
            let this = self.clone();
            gather.spawn(async move { (osd, this.listing(me, osd, pg, epoch).await) });
        }
        // Every answer is awaited (up to its timeout), except that once the acting set and a
        // source of every recorded interval have answered, stragglers (a paused OSD still up
        // in the map) get only a short grace.
        let mut straggler_deadline: Option<tokio::time::Instant> = None;
        loop {
            let next = match straggler_deadline {
                Some(d) => match tokio::time::timeout_at(d, gather.join_next()).await {
                    Ok(n) => n,
                    Err(_) => break,
                },
                None => gather.join_next().await,
            };
            let Some(done) = next else {
                break;
            };
            match done {
                Ok((osd, Ok(c))) => listings.push(to_listing(osd, c)),
                Ok((osd, Err(e))) => tracing::debug!(%pg, osd, error = %e, "no listing"),
                Err(e) => tracing::warn!(%pg, error = %e, "listing task failed"),
            }
            listings.sort_by_key(|l| l.osd);
            if straggler_deadline.is_none()
                && matches!(
                    peering_plan::plan(&history, &current, &listings),
                    Ok(Decision::Active(_))
                )
            {
                straggler_deadline = Some(tokio::time::Instant::now() + STRAGGLER_GRACE);
            }
        }
        gather.abort_all();
        let plan = match peering_plan::plan(&history, &current, &listings)? {
            Decision::Incomplete { blocked } => {
                let blocked_by: Vec<String> = blocked
                    .iter()
                    .map(|i| format!("since {} {:?}", i.since, i.acting))
                    .collect();
                tracing::warn!(%pg, since, blocked = ?blocked_by, "incomplete: no OSD that speaks for these intervals answers");
                self.set_state(pg, since, |e| {
                    e.state = PgStateBit::PgStateIncomplete as u32;
                    e.blocked_by = blocked_by;
                });
                return Ok(false);
            }
            Decision::Active(plan) => plan,
        };
        self.prepare(me, iv, &plan, &listings).await?;
        self.pull(me, pg, epoch, since, &plan).await?;
        // An earlier primary this task did not hear from may still serve reads under its
        // lease: wait it out before the first write.
        if let Some(prev) = history.last().and_then(|i| i.acting.first().copied()) {
            if prev != me && !listings.iter().any(|l| l.osd == prev) {
                self.lease_wait(prev, epoch).await?;
            }
        }
        self.record(me, pg, since, acting).await?;
        let members: Vec<MemberMissing> = plan
            .members
            .iter()
            .filter(|m| m.osd != me)
            .map(|m| MemberMissing {
                osd: m.osd,
                backfill: !m.source,
                missing: m
                    .missing
                    .iter()
                    .map(|l| {
                        (
                            l.name.clone(),
                            ObjectVersion {
                                epoch: l.version.epoch,
                                seq: l.version.seq,
                            },
                            l.tombstone,
                        )
                    })
                    .collect(),
            })
            .collect();
        let (degraded, misplaced) = members.iter().fold((0, 0), |(d, m), x| {
            let n = x.missing.len() as u64;
            if x.backfill {
                (d, m + n)
            } else {
                (d + n, m)
            }
        });
        let objects = plan.live_objects;
        local(self.shards(), |reply| ShardRequest::Activate {
            pg,
            since,
            objects,
            members: members.clone(),
            reply,
        })
        .await?;
        self.set_state(pg, since, |e| {
            if !e.objects_seen {
                e.objects = objects;
            }
            if !e.progress_seen {
                e.degraded = degraded;
                e.misplaced = misplaced;
            }
            e.active_state();
        });
        Ok(true)
    }

    /// The monitor session's client and `msg` as a request with its cluster token.
    fn mon_request<T>(&self, msg: T) -> Result<(MonClient, Request<T>), StepError> {
        let link = self.scrubs.mon_link().ok_or(StepError::NoMonitor)?;
        let mut r = Request::new(msg);
        if let Some(t) = link.token {
            r.metadata_mut().insert(carmine_proto::AUTH_HEADER, t);
        }
        Ok((link.client, r))
    }

    /// The recorded history of `pg`.
    async fn history(&self, pg: PgId) -> Result<Vec<Interval>, StepError> {
        let (mut client, r) = self.mon_request(v1::PgHistoryRequest {
            pool: pg.pool,
            pg: pg.pg,
        })?;
        let h = client
            .get_pg_history(r)
            .await
            .map_err(StepError::Mon)?
            .into_inner();
        Ok(h.intervals
            .into_iter()
            .map(|i| Interval {
                since: i.since,
                acting: i.acting,
            })
            .collect())
    }

    async fn record(&self, me: u32, pg: PgId, since: u64, acting: &[u32]) -> Result<(), StepError> {
        let (mut client, r) = self.mon_request(v1::RecordIntervalsRequest {
            osd: me,
            intervals: vec![v1::PgInterval {
                pool: pg.pool,
                pg: pg.pg,
                since,
                acting: acting.to_vec(),
            }],
        })?;
        let reply = client
            .record_intervals(r)
            .await
            .map_err(StepError::Mon)?
            .into_inner();
        if reply
            .superseded
            .iter()
            .any(|i| i.pool == pg.pool && i.pg == pg.pg)
        {
            // A newer interval of the PG peered meanwhile: this one must not take writes.
            return Err(StepError::Superseded { since });
        }
        Ok(())
    }

    async fn lease_wait(&self, osd: u32, epoch: u64) -> Result<(), StepError> {
        let (mut client, r) = self.mon_request(v1::LeaseWaitRequest {
            osds: vec![osd],
            epoch,
        })?;
        let wait = client
            .lease_wait(r)
            .await
            .map_err(StepError::Mon)?
            .into_inner()
            .wait_ms;
        if wait > 0 {
            tracing::info!(
                osd,
                wait_ms = wait,
                "waiting out an earlier primary's lease"
            );
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        Ok(())
    }

    async fn trim(&self, pg: PgId, since: u64, acting: Vec<u32>) {
        let Ok((mut client, r)) = self.mon_request(v1::PgInterval {
            pool: pg.pool,
            pg: pg.pg,
            since,
            acting,
        }) else {
            return;
        };
        match client.trim_pg_history(r).await {
            Ok(_) => tracing::info!(%pg, since, "clean: history trimmed"),
            Err(e) => tracing::warn!(%pg, since, error = %e, "clean, but the history trim failed"),
        }
    }

    /// An admin client of `osd`.
    async fn admin_client(
        &self,
        osd: u32,
    ) -> Result<OsdAdminClient<tonic::transport::Channel>, StepError> {
        let addr = self
            .scrubs
            .peer_addr(osd)
            .await
            .map_err(|e| StepError::Unreachable {
                osd,
                reason: e.to_string(),
            })?;
        // Verified against the cluster CA under the address the monitor published for this
        // OSD (its certificate must carry that address as a SAN); one channel per peer.
        let channel = self
            .scrubs
            .peer_channel(&addr, Duration::from_secs(2))
            .await
            .map_err(|e| StepError::Unreachable {
                osd,
                reason: e.to_string(),
            })?;
        Ok(OsdAdminClient::new(channel)
            .max_decoding_message_size(MAX_DIGEST_MESSAGE)
            .max_encoding_message_size(MAX_DIGEST_MESSAGE))
    }

    fn authed<T>(&self, msg: T) -> Result<Request<T>, StepError> {
        let mut r = Request::new(msg);
        let token = self
            .scrubs
            .peer_bearer()
            .map_err(|e| StepError::Unreachable {
                osd: 0,
                reason: e.to_string(),
            })?;
        r.metadata_mut().insert(carmine_proto::AUTH_HEADER, token);
        r.set_timeout(STEP_TIMEOUT);
        Ok(r)
    }

    async fn listing(&self, me: u32, osd: u32, pg: PgId, epoch: u64) -> Result<PgCopy, StepError> {
        if osd == me {
            return Ok(local(self.shards(), |reply| ShardRequest::List {
                pg,
                epoch,
                reply,
            })
            .await?);
        }
        let mut c = self.admin_client(osd).await?;
        let r = self.authed(v1::PgListingRequest {
            pool: pg.pool,
            pg: pg.pg,
            epoch,
        })?;
        let reply = tokio::time::timeout(LISTING_TIMEOUT, c.pg_listing(r))
            .await
            .map_err(|_| StepError::Timeout(LISTING_TIMEOUT))?
            .map_err(|status| StepError::Peer { osd, status })?;
        Ok(copy_from_proto(reply.into_inner()))
    }

    /// Removes and `since` on every member that needs them.
    async fn prepare(
        &self,
        me: u32,
        iv: &Interval0,
        plan: &Plan,
        listings: &[Listing],
    ) -> Result<(), StepError> {
        let (pg, epoch, since) = (iv.pg, iv.epoch, iv.since);
        let (acting, boots) = (iv.acting.as_slice(), iv.boots.as_slice());
        for m in &plan.members {
            // A member outside the history also drops every live object whose version is not
            // the authoritative one: recovery brings it back, and until then the copy cannot
            // later pass an unacknowledged write of its own off as newer.
            let mut remove = m.remove.clone();
            if !m.source {
                if let Some(l) = listings.iter().find(|l| l.osd == m.osd) {
                    for o in &l.objects {
                        // (A tombstone with no authoritative entry at all stays: it stands for
                        // a removal, like the absence it would otherwise be.)
                        let stale = plan
                            .authoritative
                            .get(&o.name)
                            .is_some_and(|a| a.version != o.version || a.tombstone != o.tombstone);
                        if stale && !remove.contains(&o.name) {
                            remove.push(o.name.clone());
                        }
                    }
                }
            }
            if remove.is_empty() && !m.set_since {
                continue;
            }
            let chunks: Vec<&[Vec<u8>]> = if remove.is_empty() {
                vec![&[]]
            } else {
                remove.chunks(super::MAX_PREPARE_REMOVES).collect()
            };
            let last = chunks.len() - 1;
            for (i, chunk) in chunks.into_iter().enumerate() {
                // `since` goes with the last chunk: the copy speaks for the interval only
                // once every stale object is gone.
                let set_since = (m.set_since && i == last).then_some(since);
                if m.osd == me {
                    local(self.shards(), |reply| ShardRequest::Prepare {
                        pg,
                        primary: me,
                        epoch,
                        since,
                        acting: acting.to_vec(),
                        boots: boots.to_vec(),
                        remove: chunk.to_vec(),
                        set_since,
                        reply,
                    })
                    .await?;
                } else {
                    let mut c = self.admin_client(m.osd).await?;
                    let r = self.authed(v1::PgPrepareRequest {
                        pool: pg.pool,
                        pg: pg.pg,
                        epoch,
                        remove: chunk.to_vec(),
                        set_since: set_since.is_some(),
                        since,
                        primary: me,
                        acting: acting.to_vec(),
                        boots: boots.to_vec(),
                    })?;
                    c.pg_prepare(r)
                        .await
                        .map_err(|status| StepError::Peer { osd: m.osd, status })?;
                }
            }
        }
        Ok(())
    }

    /// What the primary lacks, pushed to it by the holders.
    async fn pull(
        &self,
        me: u32,
        pg: PgId,
        epoch: u64,
        since: u64,
        plan: &Plan,
    ) -> Result<(), StepError> {
        for p in &plan.pulls {
            for chunk in p.names.chunks(PUSH_CHUNK) {
                let mut c = self.admin_client(p.holder).await?;
                let r = self.authed(v1::PgPushRequest {
                    pool: pg.pool,
                    pg: pg.pg,
                    epoch,
                    since,
                    target: me,
                    objects: chunk.to_vec(),
                })?;
                let done = c.pg_push(r).await.map_err(|status| StepError::Peer {
                    osd: p.holder,
                    status,
                })?;
                tracing::debug!(%pg, holder = p.holder, objects = done.get_ref().pushed_objects, "pulled");
            }
        }
        Ok(())
    }
}
