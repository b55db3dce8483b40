//! The gRPC services: `MonCluster` (OSDs and clients) and `MonAdmin` (operators), and the
//! credential checks in front of them.
//!
//! Who calls ([`Principal`]) is found once per call, by an interceptor ([`Gate`]), from the
//! bearer credential (see `carmine_proto::auth`): the admin token, or a key id and its secret
//! checked against the keyring. `MonAdmin` admits admins only. `MonCluster` admits every
//! principal and each call checks its role: a client may fetch maps and nothing else; an OSD
//! key acts as that OSD only (boot, heartbeat, failure reports, interval records); the
//! keyring goes to OSDs and admins, as data-path keys. With `--insecure`, a call without a
//! credential is [`Principal::Anonymous`] and may do what OSDs do; a credential that is
//! presented is still checked.
//!
//! The services reach the monitor state through a [`MonSlot`]. In etcd mode a monitor listens
//! before it is elected: its slot is empty and every call (after the credential check) is
//! answered with [`carmine_proto::not_leader`], naming the current leader, without executing
//! anything; once elected, the state is installed in the slot and the same server serves.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use carmine_proto::v1::{
    self, map_update::Update, mon_admin_server::MonAdmin, mon_cluster_server::MonCluster,
};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Request, Response, Status};

use crate::health::{health_with_failures, with_check};
use crate::pgstats::summarize;
use crate::state::{osd_key_id, BootInfo, KeyRole, MonError, Monitor, Principal};
use carmine_proto::auth::{admin_token_secret, presented, same_bytes, Presented, SECRET_LEN};

/// The monitor state once this monitor leads; until then, who leads.
pub struct MonSlot {
    mon: OnceLock<Mutex<Monitor>>,
    leader: watch::Receiver<Option<String>>,
    /// etcd mode: until when this monitor certainly leads ([`crate::ha::Leadership`]); no
    /// heartbeat is answered past it. Unset: a single monitor, always.
    leads_until: OnceLock<watch::Receiver<Instant>>,
    /// The address this monitor advertises (set when it starts serving), for `status`.
    advertise: OnceLock<String>,
    /// etcd mode: every campaigning monitor, leader first ([`crate::ha::watch_monitors`]).
    /// Unset: this monitor alone.
    monitors: OnceLock<watch::Receiver<Vec<v1::MonitorInfo>>>,
}

/// Shared handle on the monitor slot.
pub type Shared = Arc<MonSlot>;

impl MonSlot {
    /// A slot that serves `mon` from the start (single monitor, or already elected).
    pub fn leading(mon: Monitor) -> Shared {
        let slot = MonSlot::following(watch::channel(None).1);
        // A fresh OnceLock is empty: this cannot fail.
        let _ = slot.mon.set(Mutex::new(mon));
        slot
    }

    /// An empty slot: calls are redirected to the address `leader` holds.
    pub fn following(leader: watch::Receiver<Option<String>>) -> Shared {
        Arc::new(MonSlot {
            mon: OnceLock::new(),
            leader,
            leads_until: OnceLock::new(),
            advertise: OnceLock::new(),
            monitors: OnceLock::new(),
        })
    }

    /// etcd mode: set before [`MonSlot::install`], the instant (kept up to date) until which
    /// this monitor certainly holds its leadership; `false` if one was already set.
    pub fn set_leads_until(&self, until: watch::Receiver<Instant>) -> bool {
        self.leads_until.set(until).is_ok()
    }

    /// Whether this monitor may answer a heartbeat at `now` (a reply renews an OSD's read
    /// lease): always with one monitor; in etcd mode, while its leadership is certain.
    pub fn may_renew_leases(&self, now: Instant) -> bool {
        self.leads_until.get().is_none_or(|u| now < *u.borrow())
    }

    /// Records the address this monitor advertises; `false` if one was already set.
    pub fn set_advertise(&self, addr: String) -> bool {
        self.advertise.set(addr).is_ok()
    }

    /// etcd mode: the campaigning monitors, kept up to date; `false` if already set.
    pub fn set_monitors(&self, monitors: watch::Receiver<Vec<v1::MonitorInfo>>) -> bool {
        self.monitors.set(monitors).is_ok()
    }

    /// The monitors for `status`: every campaigner in etcd mode (when known), else this one.
    pub fn monitors(&self) -> Vec<v1::MonitorInfo> {
        match self.monitors.get().map(|m| m.borrow().clone()) {
            Some(all) if !all.is_empty() => all,
            _ => vec![v1::MonitorInfo {
                addr: self.advertise.get().cloned().unwrap_or_default(),
                leader: self.get().is_some(),
            }],
        }
    }

    /// Installs the state on election; `false` if a state was already installed.
    pub fn install(&self, mon: Monitor) -> bool {
        self.mon.set(Mutex::new(mon)).is_ok()
    }

    /// The state, once installed.
    pub fn get(&self) -> Option<&Mutex<Monitor>> {
        self.mon.get()
    }

    /// The redirect a follower answers with.
    pub fn redirect(&self) -> Status {
        carmine_proto::not_leader(self.leader.borrow().as_deref())
    }
}

/// Where OSD `id`'s admin service and metrics are, and whether it is up (both services
/// answer `OsdAdminAddr`: the CLI as admin, peers as OSDs).
fn admin_addr_reply(m: &Monitor, id: u32) -> Result<v1::OsdAdminAddrReply, Status> {
    let (admin_addr, up) = m.osd_admin_addr(id)?;
    Ok(v1::OsdAdminAddrReply {
        id,
        admin_addr,
        up,
        metrics_addr: m.osd_metrics_addr(id),
    })
}

fn lock(m: &Shared) -> Result<MutexGuard<'_, Monitor>, Status> {
    m.get()
        .ok_or_else(|| m.redirect())?
        .lock()
        .map_err(|_| Status::internal("monitor state poisoned by an earlier panic"))
}

impl From<MonError> for Status {
    fn from(e: MonError) -> Self {
        match &e {
            MonError::Invalid(_) => Status::invalid_argument(e.to_string()),
            MonError::NotFound(_) => Status::not_found(e.to_string()),
            MonError::Exists(_) => Status::already_exists(e.to_string()),
            MonError::Precondition(_) | MonError::ReplicationUnsupported { .. } => {
                Status::failed_precondition(e.to_string())
            }
            MonError::Store(_) | MonError::Random(_) => Status::internal(e.to_string()),
        }
    }
}

/// The credential check in front of both services.
#[derive(Clone)]
pub struct Gate {
    shared: Shared,
    /// The admin token's secret (`--admin-token`); `None`: no admin token.
    admin: Option<[u8; SECRET_LEN]>,
    /// `--insecure`: calls without a credential are let in as [`Principal::Anonymous`].
    insecure: bool,
}

impl Gate {
    pub fn new(shared: Shared, admin_token: Option<&str>, insecure: bool) -> Gate {
        Gate {
            shared,
            admin: admin_token.map(admin_token_secret),
            insecure,
        }
    }

    /// Who presents the credential in `md`. `Ok(None)`: a key this monitor cannot check
    /// because it does not lead (the call is redirected before it does anything).
    pub fn identify(&self, md: &tonic::metadata::MetadataMap) -> Result<Option<Principal>, Status> {
        match presented(md)? {
            None if self.insecure => Ok(Some(Principal::Anonymous)),
            None => Err(Status::unauthenticated(
                "missing credential (authorization: Bearer <key id>:<hex key>, or the admin token)",
            )),
            Some(Presented::Token(t)) => match &self.admin {
                Some(a) if same_bytes(a, &admin_token_secret(&t)) => Ok(Some(Principal::Admin)),
                _ => Err(Status::unauthenticated("credential refused")),
            },
            Some(Presented::Key { id, proof }) => {
                let Some(mon) = self.shared.get() else {
                    return Ok(None);
                };
                let m = mon
                    .lock()
                    .map_err(|_| Status::internal("monitor state poisoned by an earlier panic"))?;
                match m.authenticate(&id, &proof) {
                    Some(p) => Ok(Some(p)),
                    None => {
                        // The id is the caller's: logged short.
                        let shown: String = id.chars().take(64).collect();
                        tracing::warn!(key_id = %shown, "credential refused");
                        Err(Status::unauthenticated("credential refused"))
                    }
                }
            }
        }
    }

    /// The `MonAdmin` interceptor: admins only (anyone on an insecure monitor without an
    /// admin token).
    pub fn admin(&self, r: Request<()>) -> Result<Request<()>, Status> {
        match self.identify(r.metadata())? {
            // A key a follower cannot check: redirected here, not in the handler, which could
            // run after this monitor was elected (the body comes later than the headers).
            None => Err(self.shared.redirect()),
            Some(Principal::Admin) => Ok(r),
            Some(Principal::Anonymous) if self.admin.is_none() => Ok(r),
            Some(Principal::Anonymous) => Err(Status::unauthenticated(
                "missing credential: admin calls need the admin token",
            )),
            Some(p) => Err(Status::permission_denied(format!(
                "{} may not make admin calls",
                describe(&p)
            ))),
        }
    }

    /// The `MonCluster` interceptor: keeps who calls in the request for the handler.
    pub fn cluster(&self, mut r: Request<()>) -> Result<Request<()>, Status> {
        if let Some(p) = self.identify(r.metadata())? {
            r.extensions_mut().insert(p);
        }
        Ok(r)
    }
}

fn describe(p: &Principal) -> String {
    match p {
        Principal::Admin => "an admin".into(),
        Principal::Osd(n) => format!("the key of osd.{n}"),
        Principal::Client(id) => format!("client key {id:?}"),
        Principal::Anonymous => "a caller without a credential".into(),
    }
}

/// Refuses a client, and an OSD acting for another OSD than `as_osd` (when given).
fn require_osd(p: &Principal, as_osd: Option<u32>) -> Result<(), Status> {
    match (p, as_osd) {
        (Principal::Admin | Principal::Anonymous, _) => Ok(()),
        (Principal::Osd(n), Some(id)) if *n != id => Err(Status::permission_denied(format!(
            "the key of osd.{n} cannot act as osd.{id}"
        ))),
        (Principal::Osd(_), _) => Ok(()),
        (Principal::Client(id), _) => Err(Status::permission_denied(format!(
            "client key {id:?} may only fetch maps"
        ))),
    }
}

/// The OSD-facing service.
#[derive(Clone)]
pub struct ClusterSvc {
    shared: Shared,
    /// Turns `true` when the monitor begins to stop: map subscriptions end then, so the
    /// server's graceful shutdown does not wait on streams that never finish by themselves.
    stopping: watch::Receiver<bool>,
}

impl ClusterSvc {
    pub fn new(shared: Shared, stopping: watch::Receiver<bool>) -> Self {
        ClusterSvc { shared, stopping }
    }

    /// Who makes the call (from [`Gate::cluster`]); a follower, which could not check a key,
    /// redirects instead.
    fn caller<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        req.extensions()
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| self.shared.redirect())
    }

    /// Refuses (as a follower would) a call whose answer is only right from the one leader:
    /// a heartbeat reply renews a read lease; a PG history or a lease wait from a leader that
    /// was already replaced could miss what the next one recorded or answered.
    fn certainly_leading(&self, call: &str, now: Instant) -> Result<(), Status> {
        if self.shared.may_renew_leases(now) {
            return Ok(());
        }
        tracing::warn!(call, "refused: this monitor's etcd lease may have expired");
        Err(carmine_proto::not_leader(None))
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<v1::MapUpdate, Status>> + Send>>;

fn full(m: &carmine_placement::ClusterMap) -> v1::MapUpdate {
    v1::MapUpdate {
        update: Some(Update::Full(m.into())),
    }
}

#[tonic::async_trait]
impl MonCluster for ClusterSvc {
    async fn boot(&self, req: Request<v1::BootRequest>) -> Result<Response<v1::BootReply>, Status> {
        let caller = self.caller(&req)?;
        require_osd(&caller, None)?;
        let r = req.into_inner();
        let authenticated_as = match caller {
            Principal::Osd(n) if r.has_id && r.id != n => {
                return Err(Status::permission_denied(format!(
                    "the key of osd.{n} cannot boot as osd.{}",
                    r.id
                )))
            }
            Principal::Osd(n) => Some(n),
            _ => None,
        };
        let r_admin = r.admin_addr.clone();
        let r_metrics = r.metrics_addr.clone();
        let mut m = lock(&self.shared)?;
        let booted = m.boot(
            BootInfo {
                uuid: r.uuid,
                host: r.host,
                public_addr: r.public_addr,
                cluster_addr: r.cluster_addr,
                shard_ports: r.shard_ports,
                weight: r.weight,
                id: r.has_id.then_some(r.id),
                new_process: r.new_process,
                authenticated_as,
                store_failure: (!r.store_failure.is_empty()).then_some(r.store_failure),
            },
            Instant::now(),
        )?;
        let id = booted.id;
        tracing::info!(osd = id, admin_addr = %r_admin, "osd admin service");
        m.set_admin_addr(id, &r_admin);
        m.set_metrics_addr(id, &r_metrics);
        Ok(Response::new(v1::BootReply {
            id,
            epoch: booted.epoch,
            heartbeat_interval_ms: m.policy().heartbeat_interval.as_millis() as u64,
            key_id: osd_key_id(id),
            key: booted.key.to_vec(),
            lease_ms: m.lease().as_millis() as u64,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatReply>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        require_osd(&caller, Some(r.id))?;
        let now = Instant::now();
        self.certainly_leading("heartbeat", now)?;
        let mut m = lock(&self.shared)?;
        if !r.store_failure.is_empty() {
            // Marks it down (once); its heartbeats are then answered must_boot, and its
            // boots refused, while it reports the failure.
            m.store_failed(r.id, &r.uuid, &r.store_failure, now)?;
        }
        let must_boot = m.heartbeat(r.id, &r.uuid, r.used_bytes, r.capacity_bytes, now);
        if !must_boot {
            m.set_admin_addr(r.id, &r.admin_addr);
            m.set_metrics_addr(r.id, &r.metrics_addr);
            m.set_scrub_report(r.id, r.inconsistent_pgs);
            m.set_pg_stats(r.id, r.pg_stats, now);
            if let Some(io) = &r.client_io {
                m.set_client_io(r.id, io, now);
            }
        }
        Ok(Response::new(v1::HeartbeatReply {
            epoch: m.map().epoch,
            must_boot,
            keyring_version: m.keyring_version(),
        }))
    }

    async fn report_failure(
        &self,
        req: Request<v1::FailureReport>,
    ) -> Result<Response<v1::FailureReply>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        require_osd(&caller, Some(r.reporter))?;
        let marked_down =
            lock(&self.shared)?.report_failure(r.reporter, r.target, Instant::now())?;
        Ok(Response::new(v1::FailureReply { marked_down }))
    }

    type SubscribeStream = UpdateStream;

    async fn subscribe(
        &self,
        req: Request<v1::SubscribeRequest>,
    ) -> Result<Response<UpdateStream>, Status> {
        let caller = self.caller(&req)?;
        let have = req.into_inner().have_epoch;
        // Take the backlog and the live receiver under one lock: no epoch can slip between.
        let (backlog, mut rx, mut last) = {
            let m = lock(&self.shared)?;
            let map = m.map();
            let backlog: Vec<v1::MapUpdate> = match m.incrementals_since(have) {
                Some(incs) => incs
                    .iter()
                    .map(|i| v1::MapUpdate {
                        update: Some(Update::Incremental(i.as_ref().into())),
                    })
                    .collect(),
                None => vec![full(&map)],
            };
            (backlog, m.subscribe(), map.epoch)
        };
        let (tx, out) = mpsc::channel(64);
        let shared = self.shared.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            for u in backlog {
                if tx.send(Ok(u)).await.is_err() {
                    return;
                }
            }
            loop {
                let next = tokio::select! {
                    r = rx.recv() => r,
                    // The monitor is stopping (or gone): end the stream; subscribers reconnect.
                    _ = stopping.wait_for(|s| *s) => return,
                };
                let update = match next {
                    Ok(inc) if inc.epoch <= last => continue,
                    Ok(inc) if inc.epoch == last + 1 => {
                        last = inc.epoch;
                        v1::MapUpdate {
                            update: Some(Update::Incremental(inc.as_ref().into())),
                        }
                    }
                    // Fell behind the broadcast buffer (or a gap): resynchronise with a full map.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        let Ok(m) = lock(&shared).map(|m| m.map()) else {
                            return;
                        };
                        last = m.epoch;
                        full(&m)
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                // A key removed meanwhile ends its holder's stream at the next epoch.
                if let Err(e) = still_valid(&shared, &caller) {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                if tx.send(Ok(update)).await.is_err() {
                    return; // subscriber went away
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    async fn get_map(
        &self,
        req: Request<v1::GetMapRequest>,
    ) -> Result<Response<v1::ClusterMap>, Status> {
        self.caller(&req)?;
        get_map(&self.shared, req.into_inner().epoch)
    }

    async fn get_keyring(&self, req: Request<v1::Empty>) -> Result<Response<v1::Keyring>, Status> {
        require_osd(&self.caller(&req)?, None)?;
        Ok(Response::new(lock(&self.shared)?.keyring_for_osds()))
    }

    async fn peer_admin_addr(
        &self,
        req: Request<v1::OsdIdRequest>,
    ) -> Result<Response<v1::OsdAdminAddrReply>, Status> {
        require_osd(&self.caller(&req)?, None)?;
        let id = req.into_inner().id;
        Ok(Response::new(admin_addr_reply(&*lock(&self.shared)?, id)?))
    }

    async fn record_intervals(
        &self,
        req: Request<v1::RecordIntervalsRequest>,
    ) -> Result<Response<v1::RecordIntervalsReply>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        require_osd(&caller, Some(r.osd))?;
        if let Principal::Osd(n) = caller {
            // An OSD records only intervals it is the primary of.
            if let Some(iv) = r.intervals.iter().find(|iv| iv.acting.first() != Some(&n)) {
                return Err(Status::permission_denied(format!(
                    "osd.{n} cannot record pg {}.{:x} since {}: its primary is not osd.{n}",
                    iv.pool, iv.pg, iv.since
                )));
            }
        }
        let (epoch, superseded) = lock(&self.shared)?.record_intervals(r.osd, &r.intervals)?;
        Ok(Response::new(v1::RecordIntervalsReply {
            epoch,
            superseded,
        }))
    }

    async fn get_pg_history(
        &self,
        req: Request<v1::PgHistoryRequest>,
    ) -> Result<Response<v1::PgHistory>, Status> {
        require_osd(&self.caller(&req)?, None)?;
        let r = req.into_inner();
        self.certainly_leading("get_pg_history", Instant::now())?;
        let intervals = lock(&self.shared)?.pg_history(r.pool, r.pg)?;
        Ok(Response::new(v1::PgHistory { intervals }))
    }

    async fn trim_pg_history(
        &self,
        req: Request<v1::PgInterval>,
    ) -> Result<Response<v1::Empty>, Status> {
        let caller = self.caller(&req)?;
        // Only the primary of the interval the PG is clean in may trim before it.
        require_osd(
            &caller,
            req.get_ref().acting.first().copied().or(Some(u32::MAX)),
        )?;
        lock(&self.shared)?.trim_pg_history(&req.into_inner())?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn lease_wait(
        &self,
        req: Request<v1::LeaseWaitRequest>,
    ) -> Result<Response<v1::LeaseWaitReply>, Status> {
        require_osd(&self.caller(&req)?, None)?;
        let r = req.into_inner();
        let now = Instant::now();
        self.certainly_leading("lease_wait", now)?;
        let wait = lock(&self.shared)?.lease_wait(&r.osds, r.epoch, now);
        Ok(Response::new(v1::LeaseWaitReply {
            // Rounded up: waiting a little longer is safe, a little less is not.
            wait_ms: wait.as_micros().div_ceil(1000) as u64,
        }))
    }
}

/// Whether `p`'s key is still in the keyring (the admin token and anonymous callers always
/// are): a removed key's map stream ends.
fn still_valid(shared: &Shared, p: &Principal) -> Result<(), Status> {
    let id = match p {
        Principal::Client(id) => id.clone(),
        Principal::Osd(n) => osd_key_id(*n),
        Principal::Admin | Principal::Anonymous => return Ok(()),
    };
    if lock(shared)?.auth_get(&id).is_ok() {
        Ok(())
    } else {
        Err(Status::unauthenticated(format!("key {id:?} was removed")))
    }
}

fn get_map(m: &Shared, epoch: u64) -> Result<Response<v1::ClusterMap>, Status> {
    let map = lock(m)?
        .map_at(epoch)
        .ok_or_else(|| Status::not_found(format!("epoch {epoch} is not held by this monitor")))?;
    Ok(Response::new(map.as_ref().into()))
}

/// The operator-facing service (behind the admin token).
#[derive(Clone)]
pub struct AdminSvc(pub Shared);

fn changed(epoch: Result<u64, MonError>) -> Result<Response<v1::MapChangeReply>, Status> {
    Ok(Response::new(v1::MapChangeReply { epoch: epoch? }))
}

pub(crate) fn health_of(m: &Monitor, pgs: &[v1::PgStat]) -> v1::HealthReply {
    let p = m.policy();
    let h = health_with_failures(
        &m.map(),
        m.usage(),
        p.nearfull_ratio,
        p.full_ratio,
        &m.inconsistent_pgs(),
        pgs,
        &m.store_failures(),
    );
    if m.insecure() {
        with_check(h, crate::health::auth_insecure())
    } else {
        h
    }
}

#[tonic::async_trait]
impl MonAdmin for AdminSvc {
    async fn status(&self, _: Request<v1::Empty>) -> Result<Response<v1::StatusReply>, Status> {
        let m = lock(&self.0)?;
        let map = m.map();
        let now = Instant::now();
        let pgs = m.pg_list(now);
        let sum = summarize(&pgs);
        let (recovery_bytes_per_sec, recovery_objects_per_sec) = m.recovery_rate(now);
        let (used_bytes, capacity_bytes) = m
            .usage()
            .fold((0, 0), |(u, c), (_, used, cap)| (u + used, c + cap));
        Ok(Response::new(v1::StatusReply {
            epoch: map.epoch,
            health: Some(health_of(&m, &pgs)),
            num_osds: map.osds.len() as u32,
            num_up: map.osds.values().filter(|o| o.up).count() as u32,
            num_in: map.osds.values().filter(|o| o.in_).count() as u32,
            num_pools: map.pools.len() as u32,
            num_pgs: map.pools.values().map(|p| p.pg_num).sum(),
            uptime_secs: m.uptime().as_secs(),
            pgs_by_state: sum.by_state.into_iter().collect(),
            degraded_objects: sum.degraded_objects,
            misplaced_objects: sum.misplaced_objects,
            objects: sum.objects,
            recovery_bytes_per_sec,
            recovery_objects_per_sec,
            client_io: Some(m.client_io_rate(now)),
            used_bytes,
            capacity_bytes,
            monitors: self.0.monitors(),
            flags: map.flags.iter().cloned().collect(),
        }))
    }

    async fn osd_df(&self, _: Request<v1::Empty>) -> Result<Response<v1::OsdDfReply>, Status> {
        Ok(Response::new(v1::OsdDfReply {
            osds: lock(&self.0)?.osd_df(),
        }))
    }

    async fn health(&self, _: Request<v1::Empty>) -> Result<Response<v1::HealthReply>, Status> {
        let m = lock(&self.0)?;
        let pgs = m.pg_list(Instant::now());
        Ok(Response::new(health_of(&m, &pgs)))
    }

    async fn get_map(
        &self,
        req: Request<v1::GetMapRequest>,
    ) -> Result<Response<v1::ClusterMap>, Status> {
        get_map(&self.0, req.into_inner().epoch)
    }

    async fn osd_out(
        &self,
        req: Request<v1::OsdIdRequest>,
    ) -> Result<Response<v1::MapChangeReply>, Status> {
        changed(lock(&self.0)?.osd_out(req.into_inner().id))
    }

    async fn osd_in(
        &self,
        req: Request<v1::OsdIdRequest>,
    ) -> Result<Response<v1::MapChangeReply>, Status> {
        changed(lock(&self.0)?.osd_in(req.into_inner().id))
    }

    async fn osd_down(
        &self,
        req: Request<v1::OsdIdRequest>,
    ) -> Result<Response<v1::MapChangeReply>, Status> {
        changed(lock(&self.0)?.osd_down(req.into_inner().id, Instant::now()))
    }

    async fn osd_rm(
        &self,
        req: Request<v1::OsdIdRequest>,
    ) -> Result<Response<v1::MapChangeReply>, Status> {
        changed(lock(&self.0)?.osd_rm(req.into_inner().id))
    }

    async fn osd_reweight(
        &self,
        req: Request<v1::OsdWeightRequest>,
    ) -> Result<Response<v1::MapChangeReply>, Status> {
        let r = req.into_inner();
        changed(lock(&self.0)?.osd_reweight(r.id, r.weight))
    }

    async fn pool_create(
        &self,
        req: Request<v1::PoolCreateRequest>,
    ) -> Result<Response<v1::PoolCreateReply>, Status> {
        let r = req.into_inner();
        let (id, epoch) = lock(&self.0)?.pool_create(&r.name, r.pg_num, r.size, r.min_size)?;
        Ok(Response::new(v1::PoolCreateReply { id, epoch }))
    }

    async fn pool_list(&self, _: Request<v1::Empty>) -> Result<Response<v1::PoolList>, Status> {
        let map = lock(&self.0)?.map();
        Ok(Response::new(v1::PoolList {
            pools: map.pools.values().map(Into::into).collect(),
        }))
    }

    async fn pool_rm(
        &self,
        req: Request<v1::PoolNameRequest>,
    ) -> Result<Response<v1::MapChangeReply>, Status> {
        changed(lock(&self.0)?.pool_rm(&req.into_inner().name))
    }

    async fn pool_set(
        &self,
        req: Request<v1::PoolSetRequest>,
    ) -> Result<Response<v1::MapChangeReply>, Status> {
        let r = req.into_inner();
        changed(lock(&self.0)?.pool_set(&r.name, &r.key, &r.value))
    }

    async fn set_flag(
        &self,
        req: Request<v1::FlagRequest>,
    ) -> Result<Response<v1::MapChangeReply>, Status> {
        let r = req.into_inner();
        changed(lock(&self.0)?.set_flag(&r.flag, r.set))
    }

    async fn auth_add(
        &self,
        req: Request<v1::AuthIdRequest>,
    ) -> Result<Response<v1::AuthKeyReply>, Status> {
        let r = req.into_inner();
        let role = match r.role() {
            v1::KeyRole::Unspecified | v1::KeyRole::Client => KeyRole::Client,
            v1::KeyRole::Admin => KeyRole::Admin,
            v1::KeyRole::Osd => {
                return Err(Status::invalid_argument(
                    "OSD keys come from OsdNew (`carmine osd new --uuid <uuid>`)",
                ))
            }
        };
        let (key, created, keyring_version) = lock(&self.0)?.auth_add(&r.id, role)?;
        let (role, osd_id) = role.to_proto();
        Ok(Response::new(v1::AuthKeyReply {
            id: r.id,
            key: key.to_vec(),
            created,
            keyring_version,
            role: role.into(),
            osd_id,
        }))
    }

    async fn osd_new(
        &self,
        req: Request<v1::OsdNewRequest>,
    ) -> Result<Response<v1::OsdNewReply>, Status> {
        let uuid = req.into_inner().uuid;
        let (id, key, created) = lock(&self.0)?.osd_new(&uuid)?;
        Ok(Response::new(v1::OsdNewReply {
            id,
            key_id: osd_key_id(id),
            key: key.to_vec(),
            created,
        }))
    }

    async fn auth_get(
        &self,
        req: Request<v1::AuthIdRequest>,
    ) -> Result<Response<v1::AuthKeyReply>, Status> {
        let id = req.into_inner().id;
        let (key, role, keyring_version) = lock(&self.0)?.auth_get(&id)?;
        let (role, osd_id) = role.to_proto();
        Ok(Response::new(v1::AuthKeyReply {
            id,
            key: key.to_vec(),
            created: false,
            keyring_version,
            role: role.into(),
            osd_id,
        }))
    }

    async fn auth_rm(
        &self,
        req: Request<v1::AuthIdRequest>,
    ) -> Result<Response<v1::AuthRmReply>, Status> {
        let keyring_version = lock(&self.0)?.auth_rm(&req.into_inner().id)?;
        Ok(Response::new(v1::AuthRmReply { keyring_version }))
    }

    async fn auth_list(
        &self,
        _: Request<v1::Empty>,
    ) -> Result<Response<v1::AuthListReply>, Status> {
        let m = lock(&self.0)?;
        let (ids, entries) = m
            .auth_list()
            .into_iter()
            .map(|(id, role)| {
                let (role, osd_id) = role.to_proto();
                let entry = v1::AuthEntry {
                    id: id.clone(),
                    role: role.into(),
                    osd_id,
                };
                (id, entry)
            })
            .unzip();
        Ok(Response::new(v1::AuthListReply {
            ids,
            keyring_version: m.keyring_version(),
            entries,
        }))
    }

    async fn osd_admin_addr(
        &self,
        req: Request<v1::OsdIdRequest>,
    ) -> Result<Response<v1::OsdAdminAddrReply>, Status> {
        let id = req.into_inner().id;
        Ok(Response::new(admin_addr_reply(&*lock(&self.0)?, id)?))
    }

    async fn list_inconsistent_pgs(
        &self,
        _: Request<v1::Empty>,
    ) -> Result<Response<v1::InconsistentPgList>, Status> {
        Ok(Response::new(v1::InconsistentPgList {
            pgs: lock(&self.0)?.inconsistent_pgs(),
        }))
    }

    async fn pg_list(&self, _: Request<v1::Empty>) -> Result<Response<v1::PgStatList>, Status> {
        let pgs = lock(&self.0)?.pg_list(Instant::now());
        Ok(Response::new(v1::PgStatList { pgs }))
    }

    async fn pg_query(
        &self,
        req: Request<v1::PgHistoryRequest>,
    ) -> Result<Response<v1::PgQueryReply>, Status> {
        let r = req.into_inner();
        Ok(Response::new(lock(&self.0)?.pg_query(
            r.pool,
            r.pg,
            Instant::now(),
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Policy;
    use crate::store::MapStore;
    use std::time::Duration;

    /// A leader whose etcd lease may have run out answers no heartbeat (its reply would renew
    /// an OSD's read lease past the next leader's start), lease wait or PG history (the next
    /// leader may know more); a fresh deadline lets it answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn no_heartbeat_is_answered_past_the_leadership_deadline() {
        /// A request as the interceptor ([`Gate::cluster`]) passes an admin's on.
        fn as_admin<T>(msg: T) -> Request<T> {
            let mut r = Request::new(msg);
            r.extensions_mut().insert(Principal::Admin);
            r
        }
        let dir = tempfile::tempdir().unwrap();
        let policy = Policy {
            heartbeat_interval: Duration::from_millis(100),
            down_grace: Duration::from_secs(10),
            out_interval: Duration::from_secs(60),
            history: 4,
            min_failure_reporters: 2,
            nearfull_ratio: 0.85,
            full_ratio: 0.95,
        };
        let mon = Monitor::open(MapStore::open(dir.path()).unwrap(), policy).unwrap();
        let slot = MonSlot::leading(mon);
        let (tx, rx) = watch::channel(Instant::now() + Duration::from_secs(60));
        assert!(slot.set_leads_until(rx));
        let svc = ClusterSvc::new(slot.clone(), watch::channel(false).1);
        let b = svc
            .boot(as_admin(v1::BootRequest {
                uuid: "u".into(),
                host: "h".into(),
                shard_ports: vec![1],
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(b.lease_ms, 400, "four heartbeat intervals");
        let hb = || {
            as_admin(v1::HeartbeatRequest {
                id: b.id,
                uuid: "u".into(),
                ..Default::default()
            })
        };
        assert!(!svc.heartbeat(hb()).await.unwrap().into_inner().must_boot);
        tx.send_replace(Instant::now() - Duration::from_millis(1));
        let e = svc.heartbeat(hb()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        let e = svc
            .lease_wait(as_admin(v1::LeaseWaitRequest {
                osds: vec![b.id],
                epoch: 1,
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        let e = svc
            .get_pg_history(as_admin(v1::PgHistoryRequest { pool: 0, pg: 0 }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        tx.send_replace(Instant::now() + Duration::from_secs(60));
        assert!(svc.heartbeat(hb()).await.is_ok());
    }
}
