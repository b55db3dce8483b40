//! The OSD admin gRPC service (`OsdAdmin`) served by the agent: status, perf counters,
//! config, and scrubbing (`PgDigest`: this OSD's digest of a PG; `ScrubPg`: a scrub of a PG
//! this OSD is primary for, see [`crate::scrubber`]).

use std::future::Future;
use std::sync::Arc;

use carmine_proto::v1::{
    self,
    osd_admin_server::{OsdAdmin, OsdAdminServer},
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use crate::peering::driver::{copy_to_proto, local};
use crate::peering::{Peering, PeeringError, ShardRequest};
use crate::scrub::PgId;
use crate::scrubber::{ScrubError, Scrubs, MAX_DIGEST_MESSAGE};
use crate::{AgentStatus, ConfigStore, Role, SharedKeyring, Stats};
use carmine_proto::auth::{presented, Presented};

/// The credential check of the OSD admin service (see `carmine_proto::auth`): a key id and
/// its data-path key, checked against the keyring the monitor gave this OSD. No token is
/// held here. Admins may make every call; other OSDs only the peer calls (digests for scrub,
/// listings, prepares and pushes for peering); clients none.
#[derive(Clone)]
struct AdminGate(Arc<SharedKeyring>);

impl AdminGate {
    fn check(&self, mut r: Request<()>) -> Result<Request<()>, Status> {
        match presented(r.metadata())? {
            Some(Presented::Key { id, proof }) => match self.0.verify(&id, &proof) {
                Some(role) => {
                    r.extensions_mut().insert(role);
                    Ok(r)
                }
                None if self.0.version() == 0 => Err(Status::unavailable(
                    "this OSD has not fetched the keyring from the monitor yet",
                )),
                None => {
                    // The id is the caller's: logged short.
                    let shown: String = id.chars().take(64).collect();
                    tracing::warn!(key_id = %shown, "admin credential refused");
                    Err(Status::unauthenticated("credential refused"))
                }
            },
            Some(Presented::Token(_)) => Err(Status::unauthenticated(
                "an OSD takes a key, not a token: `Bearer <key id>:<hex data-path key>` (the \
                 carmine CLI derives it from the admin token)",
            )),
            None => Err(Status::unauthenticated("missing credential")),
        }
    }
}

/// Refuses anyone but an admin.
fn require_admin<T>(req: &Request<T>) -> Result<(), Status> {
    match req.extensions().get::<Role>() {
        Some(Role::Admin) => Ok(()),
        Some(r) => Err(Status::permission_denied(format!(
            "{r:?} keys may not make this call (admins only)"
        ))),
        None => Err(Status::unauthenticated("missing credential")),
    }
}

/// Admits an admin (`None`) or another OSD (`Some(its id)`); refuses clients.
fn require_peer<T>(req: &Request<T>) -> Result<Option<u32>, Status> {
    match req.extensions().get::<Role>() {
        Some(Role::Admin) => Ok(None),
        Some(Role::Osd(n)) => Ok(Some(*n)),
        Some(Role::Client) => Err(Status::permission_denied(
            "client keys may not make OSD admin calls",
        )),
        None => Err(Status::unauthenticated("missing credential")),
    }
}

struct AdminSvc {
    mon_addr: String,
    shard_count: u32,
    stats: Arc<dyn Stats>,
    config: Arc<dyn ConfigStore>,
    status: Arc<AgentStatus>,
    scrubs: Arc<Scrubs>,
    peering: Option<Arc<Peering>>,
}

impl From<PeeringError> for Status {
    fn from(e: PeeringError) -> Self {
        let msg = e.to_string();
        match e {
            PeeringError::Behind { .. }
            | PeeringError::IntervalChanged { .. }
            | PeeringError::NotPrimary => Status::failed_precondition(msg),
            PeeringError::Busy => Status::resource_exhausted(msg),
            _ => Status::unavailable(msg),
        }
    }
}

impl AdminSvc {
    fn peering(&self) -> Result<&Arc<Peering>, Status> {
        self.peering
            .as_ref()
            .ok_or_else(|| Status::unimplemented("this OSD does not peer"))
    }
}

impl From<ScrubError> for Status {
    fn from(e: ScrubError) -> Self {
        let msg = e.to_string();
        match e {
            ScrubError::NoDigests => Status::unimplemented(msg),
            ScrubError::NotBooted | ScrubError::NoMap => Status::unavailable(msg),
            ScrubError::NoSuchPg { .. } => Status::not_found(msg),
            ScrubError::NotPrimary { .. } => Status::failed_precondition(msg),
            ScrubError::ActingChanged { .. } => Status::aborted(msg),
            ScrubError::Local(crate::scrub::DigestError::Busy) => Status::resource_exhausted(msg),
            ScrubError::Local(_) | ScrubError::Peer { .. } => Status::unavailable(msg),
            ScrubError::NoIdentity => Status::unavailable(msg),
        }
    }
}

#[tonic::async_trait]
impl OsdAdmin for AdminSvc {
    async fn status(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::OsdStatusReply>, Status> {
        require_admin(&req)?;
        let id = self.status.osd_id();
        Ok(Response::new(v1::OsdStatusReply {
            id: id.unwrap_or(0),
            booted: id.is_some(),
            map_epoch: self.status.map_epoch(),
            shard_count: self.shard_count,
            mon_addr: self.mon_addr.clone(),
            heartbeats_acked: self.status.heartbeats_acked(),
        }))
    }

    async fn perf_counters(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::PerfCountersReply>, Status> {
        require_admin(&req)?;
        let mut counters: Vec<v1::PerfCounter> = self
            .stats
            .counters()
            .into_iter()
            .map(|(name, value)| v1::PerfCounter { name, value })
            .collect();
        counters.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(v1::PerfCountersReply { counters }))
    }

    async fn config_get(
        &self,
        req: Request<v1::ConfigGetRequest>,
    ) -> Result<Response<v1::ConfigGetReply>, Status> {
        require_admin(&req)?;
        let key = req.into_inner().key;
        let entries = if key.is_empty() {
            self.config.list()
        } else {
            let v = self
                .config
                .get(&key)
                .ok_or_else(|| Status::not_found(format!("no config key {key:?}")))?;
            vec![(key, v)]
        };
        Ok(Response::new(v1::ConfigGetReply {
            entries: entries
                .into_iter()
                .map(|(key, value)| v1::ConfigEntry { key, value })
                .collect(),
        }))
    }

    async fn config_set(
        &self,
        req: Request<v1::ConfigSetRequest>,
    ) -> Result<Response<v1::ConfigEntry>, Status> {
        require_admin(&req)?;
        let r = req.into_inner();
        self.config
            .set(&r.key, &r.value)
            .map_err(Status::invalid_argument)?;
        tracing::info!(key = %r.key, value = %r.value, "config changed");
        Ok(Response::new(v1::ConfigEntry {
            key: r.key,
            value: r.value,
        }))
    }

    async fn pg_digest(
        &self,
        req: Request<v1::PgDigestRequest>,
    ) -> Result<Response<v1::PgDigestReply>, Status> {
        require_peer(&req)?;
        let r = req.into_inner();
        let pg = PgId {
            pool: r.pool,
            pg: r.pg,
        };
        let objects = self.scrubs.digest(pg, r.objects).await?;
        Ok(Response::new(v1::PgDigestReply {
            osd: self.status.osd_id().unwrap_or(0),
            map_epoch: self.status.map_epoch(),
            objects: objects.iter().map(|d| d.to_proto()).collect(),
        }))
    }

    async fn scrub_pg(
        &self,
        req: Request<v1::ScrubPgRequest>,
    ) -> Result<Response<v1::ScrubPgReply>, Status> {
        require_admin(&req)?;
        let r = req.into_inner();
        let pg = PgId {
            pool: r.pool,
            pg: r.pg,
        };
        let rec = self.scrubs.scrub(pg).await?;
        Ok(Response::new(rec.to_proto(pg)))
    }

    async fn pg_listing(
        &self,
        req: Request<v1::PgListingRequest>,
    ) -> Result<Response<v1::PgListingReply>, Status> {
        require_peer(&req)?;
        let p = self.peering()?;
        let r = req.into_inner();
        let pg = PgId {
            pool: r.pool,
            pg: r.pg,
        };
        let epoch = r.epoch;
        let copy = local(p.shards(), |reply| ShardRequest::List { pg, epoch, reply }).await?;
        let me = self.status.osd_id().unwrap_or(0);
        Ok(Response::new(copy_to_proto(
            me,
            self.status.map_epoch(),
            copy,
        )))
    }

    async fn pg_prepare(
        &self,
        req: Request<v1::PgPrepareRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let caller = require_peer(&req)?;
        let r = req.into_inner();
        if let Some(n) = caller.filter(|n| *n != r.primary) {
            return Err(Status::permission_denied(format!(
                "osd.{n} cannot prepare a PG in the name of its primary osd.{}",
                r.primary
            )));
        }
        let p = self.peering()?;
        let pg = PgId {
            pool: r.pool,
            pg: r.pg,
        };
        if r.remove.len() > crate::peering::MAX_PREPARE_REMOVES {
            return Err(Status::invalid_argument(format!(
                "{} removes (at most {})",
                r.remove.len(),
                crate::peering::MAX_PREPARE_REMOVES
            )));
        }
        let set_since = r.set_since.then_some(r.since);
        local(p.shards(), |reply| ShardRequest::Prepare {
            pg,
            primary: r.primary,
            epoch: r.epoch,
            since: r.since,
            acting: r.acting.clone(),
            boots: r.boots.clone(),
            remove: r.remove.clone(),
            set_since,
            reply,
        })
        .await?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn pg_push(
        &self,
        req: Request<v1::PgPushRequest>,
    ) -> Result<Response<v1::PgPushReply>, Status> {
        // A peer has objects pushed to itself only (its primary asks what it lacks).
        if let Some(n) = require_peer(&req)?.filter(|n| *n != req.get_ref().target) {
            return Err(Status::permission_denied(format!(
                "osd.{n} cannot have objects pushed to osd.{}",
                req.get_ref().target
            )));
        }
        let p = self.peering()?;
        let r = req.into_inner();
        let pg = PgId {
            pool: r.pool,
            pg: r.pg,
        };
        let t = local(p.shards(), |reply| ShardRequest::Push {
            pg,
            epoch: r.epoch,
            since: r.since,
            target: r.target,
            objects: r.objects.clone(),
            reply,
        })
        .await?;
        Ok(Response::new(v1::PgPushReply {
            pushed_objects: t.objects,
            pushed_bytes: t.bytes,
        }))
    }
}

/// Serves `OsdAdmin` on `listener` until `shutdown`, with `builder`'s transport security.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve(
    listener: std::net::TcpListener,
    mut builder: tonic::transport::Server,
    keyring: Arc<SharedKeyring>,
    mon_addr: String,
    shard_count: u32,
    stats: Arc<dyn Stats>,
    config: Arc<dyn ConfigStore>,
    status: Arc<AgentStatus>,
    scrubs: Arc<Scrubs>,
    peering: Option<Arc<Peering>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the admin listener");
            return Ok(());
        }
    };
    let svc = AdminSvc {
        mon_addr,
        shard_count,
        stats,
        config,
        status,
        scrubs,
        peering,
    };
    let gate = AdminGate(keyring);
    // A digest request names at most MAX_RECHECK objects (each up to the wire's name limit).
    let server = tonic::service::interceptor::InterceptedService::new(
        OsdAdminServer::new(svc)
            .max_decoding_message_size(MAX_DIGEST_MESSAGE)
            .max_encoding_message_size(MAX_DIGEST_MESSAGE),
        move |r: Request<()>| gate.check(r),
    );
    builder
        .add_service(server)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
