//! The agent's side of scrubbing: a PG's primary gathers every acting member's digest (its
//! own from its shard through [`PgDigests`], the others' from their admin services'
//! `PgDigest`), compares them ([`compare`]) and keeps the result in the [`ScrubBook`] that
//! the heartbeats report from. Also the periodic background scrub.
//!
//! - One scrub at a time per OSD (as primary): `ScrubPg` calls and the background loop queue
//!   on one lock. The shards bound the work each digest does next to client I/O.
//! - Peers are found through the monitor (`MonCluster.PeerAdminAddr`, on the session the
//!   agent keeps anyway) and called with this OSD's own admin token: the OSDs of a cluster
//!   share their admin token.
//! - A write can land between the moment one member reads an object and another does. So an
//!   object found inconsistent is digested again on every member once, after
//!   [`RECHECK_DELAY`]; only objects still inconsistent then are reported (up to
//!   [`MAX_RECHECK`] of them are rechecked; any beyond that are reported as found).
//! - The acting set must be the same at the end as at the start, or the scrub fails
//!   ([`ScrubError::ActingChanged`]) and records nothing.
//! - Background: every PG this OSD is primary for (and that is active) is scrubbed once per
//!   `scrub_interval`, one at a time, first one interval after the agent first sees it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use carmine_placement::{pg_to_osds, ClusterMap};
use carmine_proto::tls::ClientTls;
use carmine_proto::v1::{
    self, mon_cluster_client::MonClusterClient, osd_admin_client::OsdAdminClient,
};
use tokio::sync::oneshot;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::Request;

use crate::scrub::{
    compare, normalise, DigestError, DigestRequest, Inconsistency, Member, ObjectDigest, PgDigests,
    PgId, ScrubBook, ScrubRecord,
};
use crate::{AgentStatus, SharedKeyring};

/// How long after a first pass the objects it found inconsistent are looked at again.
pub const RECHECK_DELAY: Duration = Duration::from_millis(300);
/// At most this many objects are rechecked per scrub.
pub const MAX_RECHECK: usize = 1024;
/// Longest wait for one member's digest (a big PG on a busy OSD takes a while).
pub const DIGEST_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest digest reply accepted from a peer (about 40 bytes per object).
pub const MAX_DIGEST_MESSAGE: usize = 256 << 20;
/// How long a local request waits for room in a full shard ring before giving up.
const RING_RETRY: Duration = Duration::from_millis(10);
const RING_TRIES: u32 = 100;
/// Longest wait for the monitor's answer on a peer's address.
const MON_TIMEOUT: Duration = Duration::from_secs(3);
/// Most cached channels to peers' admin services ([`Scrubs::peer_channel`]).
const MAX_PEER_CHANNELS: usize = 1024;

/// Why a peer's digest could not be had.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("no monitor session to ask for its admin address")]
    NoMonitor,
    #[error("its admin address: {0}")]
    Addr(tonic::Status),
    #[error("its admin address {addr:?} is not usable: {source}")]
    BadAddr {
        addr: String,
        source: carmine_proto::tls::TlsError,
    },
    #[error("cannot connect to its admin service at {addr}: {source}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("PgDigest failed: {0}")]
    Rpc(tonic::Status),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Why a scrub failed (nothing is recorded then).
#[derive(Debug, thiserror::Error)]
pub enum ScrubError {
    #[error("this OSD serves no PG digests")]
    NoDigests,
    #[error("this OSD has not booted yet")]
    NotBooted,
    #[error("this OSD has no map yet")]
    NoMap,
    #[error("pg {pg} does not exist in map epoch {epoch}")]
    NoSuchPg { pg: PgId, epoch: u64 },
    #[error("osd.{me} is not the primary of pg {pg} in epoch {epoch} (acting set {acting:?})")]
    NotPrimary {
        pg: PgId,
        me: u32,
        epoch: u64,
        acting: Vec<u32>,
    },
    #[error("this OSD's digest: {0}")]
    Local(#[from] DigestError),
    #[error("osd.{osd}'s digest: {source}")]
    Peer { osd: u32, source: PeerError },
    #[error("this OSD has no data-path key yet (it has not booted) to present to its peers")]
    NoIdentity,
    #[error(
        "the acting set of pg {pg} changed during the scrub ({from:?} -> {to:?}): scrub again"
    )]
    ActingChanged {
        pg: PgId,
        from: Vec<u32>,
        to: Vec<u32>,
    },
}

/// The monitor session the agent holds (its current leader), for peer addresses.
#[derive(Clone)]
pub(crate) struct MonLink {
    pub client: MonClusterClient<Channel>,
    pub token: Option<MetadataValue<Ascii>>,
}

/// What scrubbing needs from the rest of the agent, shared by the admin service, the session
/// and the background loop.
pub(crate) struct Scrubs {
    digests: Option<Arc<dyn PgDigests>>,
    status: Arc<AgentStatus>,
    /// This OSD's identity (what it presents to its peers' admin services).
    keyring: Arc<SharedKeyring>,
    /// How peers' admin services are dialled (also used by peering).
    tls: ClientTls,
    /// Open channels to peers' admin services, by address ([`Scrubs::peer_channel`]).
    channels: Mutex<HashMap<String, Channel>>,
    map: RwLock<Option<Arc<ClusterMap>>>,
    mon: Mutex<Option<MonLink>>,
    pub book: ScrubBook,
    one_at_a_time: tokio::sync::Mutex<()>,
}

/// This OSD's digest of `pg` from its shard: `objects` only, or all when empty.
pub async fn local_digest(
    digests: &dyn PgDigests,
    pg: PgId,
    objects: Vec<Vec<u8>>,
) -> Result<Vec<ObjectDigest>, DigestError> {
    let (tx, rx) = oneshot::channel();
    let mut req = DigestRequest {
        pg,
        objects,
        reply: tx,
    };
    let mut tries = 0;
    loop {
        match digests.submit(req) {
            Ok(()) => break,
            Err(back) if tries < RING_TRIES => {
                req = back;
                tries += 1;
                tokio::time::sleep(RING_RETRY).await;
            }
            Err(_) => return Err(DigestError::Busy),
        }
    }
    let mut d = match tokio::time::timeout(DIGEST_TIMEOUT, rx).await {
        Ok(r) => r.map_err(|_| DigestError::Gone)??,
        Err(_) => return Err(DigestError::TimedOut(DIGEST_TIMEOUT)),
    };
    normalise(&mut d);
    Ok(d)
}

/// The acting set of `pg` in `map`.
fn acting_of(map: &ClusterMap, pg: PgId) -> Result<Vec<u32>, ScrubError> {
    map.pools
        .get(&pg.pool)
        .filter(|p| pg.pg < p.pg_num)
        .map(|p| pg_to_osds(map, p, pg.pg))
        .ok_or(ScrubError::NoSuchPg {
            pg,
            epoch: map.epoch,
        })
}

/// The PGs `me` is primary for in `map` whose acting set reaches their pool's `min_size`.
fn active_primary_pgs(map: &ClusterMap, me: u32) -> Vec<PgId> {
    let mut out = Vec::new();
    for pool in map.pools.values() {
        for pg in 0..pool.pg_num {
            let acting = pg_to_osds(map, pool, pg);
            if acting.first() == Some(&me) && acting.len() >= pool.min_size as usize {
                out.push(PgId { pool: pool.id, pg });
            }
        }
    }
    out
}

/// The digest of `pg` from the admin service behind `channel`.
async fn peer_digest(
    channel: Channel,
    token: MetadataValue<Ascii>,
    pg: PgId,
    objects: Vec<Vec<u8>>,
) -> Result<Vec<ObjectDigest>, PeerError> {
    let mut client = OsdAdminClient::new(channel).max_decoding_message_size(MAX_DIGEST_MESSAGE);
    let mut r = Request::new(v1::PgDigestRequest {
        pool: pg.pool,
        pg: pg.pg,
        objects,
    });
    r.metadata_mut().insert(carmine_proto::AUTH_HEADER, token);
    r.set_timeout(DIGEST_TIMEOUT);
    let reply = match tokio::time::timeout(DIGEST_TIMEOUT, client.pg_digest(r)).await {
        Ok(r) => r.map_err(PeerError::Rpc)?.into_inner(),
        Err(_) => return Err(PeerError::Timeout(DIGEST_TIMEOUT)),
    };
    let mut d: Vec<ObjectDigest> = reply
        .objects
        .into_iter()
        .map(ObjectDigest::from_proto)
        .collect();
    normalise(&mut d);
    Ok(d)
}

impl Scrubs {
    /// What this OSD presents to a peer's admin service (`osd.<n>` and its data-path key).
    pub fn peer_bearer(&self) -> Result<MetadataValue<Ascii>, ScrubError> {
        self.keyring.peer_bearer().ok_or(ScrubError::NoIdentity)
    }

    pub fn new(
        digests: Option<Arc<dyn PgDigests>>,
        status: Arc<AgentStatus>,
        keyring: Arc<SharedKeyring>,
        tls: ClientTls,
    ) -> Scrubs {
        Scrubs {
            digests,
            status,
            keyring,
            tls,
            channels: Mutex::new(HashMap::new()),
            map: RwLock::new(None),
            mon: Mutex::new(None),
            book: ScrubBook::new(),
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    /// The newest map (the one the shards were handed).
    pub fn set_map(&self, map: &Arc<ClusterMap>) {
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = Some(map.clone());
    }

    pub fn map(&self) -> Option<Arc<ClusterMap>> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The monitor session to ask for peer addresses.
    pub fn set_mon(&self, link: MonLink) {
        *self.mon.lock().unwrap_or_else(|p| p.into_inner()) = Some(link);
    }

    /// What the next heartbeat reports.
    pub fn report(&self) -> Vec<v1::InconsistentPg> {
        match (self.map(), self.status.osd_id()) {
            (Some(map), Some(me)) => self.book.report(&map, me),
            _ => Vec::new(),
        }
    }

    /// This OSD's digest of `pg` (for `OsdAdmin.PgDigest`).
    pub async fn digest(
        &self,
        pg: PgId,
        objects: Vec<Vec<u8>>,
    ) -> Result<Vec<ObjectDigest>, ScrubError> {
        let digests = self.digests.as_deref().ok_or(ScrubError::NoDigests)?;
        Ok(local_digest(digests, pg, objects).await?)
    }

    /// The monitor session (peering asks it for PG histories too).
    pub(crate) fn mon_link(&self) -> Option<MonLink> {
        self.mon.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A channel to the admin service at `addr` (dialled with this agent's transport
    /// choice), shared by every peering step and scrub that goes there: one TLS handshake per
    /// peer instead of one per call. tonic's channel multiplexes calls and reconnects by
    /// itself after the peer restarts; a peer at a new address gets a new channel.
    pub(crate) async fn peer_channel(
        &self,
        addr: &str,
        connect_timeout: Duration,
    ) -> Result<Channel, PeerError> {
        let cached = self
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(addr)
            .cloned();
        if let Some(ch) = cached {
            return Ok(ch);
        }
        let endpoint = self
            .tls
            .endpoint(addr)
            .map_err(|source| PeerError::BadAddr {
                addr: addr.to_owned(),
                source,
            })?;
        let channel = endpoint
            .connect_timeout(connect_timeout)
            .connect()
            .await
            .map_err(|source| PeerError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        // One entry per admin address the map ever named: bounded by the cluster's OSDs,
        // unless addresses keep changing; then start over.
        if channels.len() >= MAX_PEER_CHANNELS {
            channels.clear();
        }
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    /// Where `osd`'s admin service listens, as the monitor knows it.
    pub(crate) async fn peer_addr(&self, osd: u32) -> Result<String, PeerError> {
        let link = self
            .mon
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(PeerError::NoMonitor)?;
        let mut client = link.client;
        let mut r = Request::new(v1::OsdIdRequest { id: osd });
        if let Some(t) = link.token {
            r.metadata_mut().insert(carmine_proto::AUTH_HEADER, t);
        }
        match tokio::time::timeout(MON_TIMEOUT, client.peer_admin_addr(r)).await {
            Ok(Ok(a)) => Ok(a.into_inner().admin_addr),
            Ok(Err(s)) => Err(PeerError::Addr(s)),
            Err(_) => Err(PeerError::Timeout(MON_TIMEOUT)),
        }
    }

    /// Every member's digest of `pg`, in acting order.
    async fn gather(
        &self,
        digests: &Arc<dyn PgDigests>,
        acting: &[u32],
        me: u32,
        pg: PgId,
        objects: &[Vec<u8>],
    ) -> Result<Vec<(u32, Vec<ObjectDigest>)>, ScrubError> {
        let token = self.peer_bearer()?;
        let mut set = tokio::task::JoinSet::new();
        for (i, &osd) in acting.iter().enumerate() {
            if osd == me {
                let d = digests.clone();
                let objects = objects.to_vec();
                set.spawn(async move {
                    let r = local_digest(d.as_ref(), pg, objects)
                        .await
                        .map_err(ScrubError::Local);
                    (i, r)
                });
            } else {
                let addr = self
                    .peer_addr(osd)
                    .await
                    .map_err(|source| ScrubError::Peer { osd, source })?;
                let channel = self
                    .peer_channel(&addr, Duration::from_secs(3))
                    .await
                    .map_err(|source| ScrubError::Peer { osd, source })?;
                let (token, objects) = (token.clone(), objects.to_vec());
                set.spawn(async move {
                    let r = peer_digest(channel, token, pg, objects)
                        .await
                        .map_err(|source| ScrubError::Peer { osd, source });
                    (i, r)
                });
            }
        }
        let mut out: Vec<Option<Vec<ObjectDigest>>> = vec![None; acting.len()];
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((i, r)) => out[i] = Some(r?),
                // A digest task that panicked: treat it as that member gone.
                Err(_) => return Err(ScrubError::Local(DigestError::Gone)),
            }
        }
        Ok(acting
            .iter()
            .zip(out)
            .map(|(&osd, d)| (osd, d.unwrap_or_default()))
            .collect())
    }

    /// Scrubs `pg`, which this OSD must be primary for, and records the result.
    pub async fn scrub(&self, pg: PgId) -> Result<ScrubRecord, ScrubError> {
        let digests = self.digests.clone().ok_or(ScrubError::NoDigests)?;
        let _one = self.one_at_a_time.lock().await;
        let me = self.status.osd_id().ok_or(ScrubError::NotBooted)?;
        let map = self.map().ok_or(ScrubError::NoMap)?;
        let acting = acting_of(&map, pg)?;
        if acting.first() != Some(&me) {
            return Err(ScrubError::NotPrimary {
                pg,
                me,
                epoch: map.epoch,
                acting,
            });
        }
        let started = Instant::now();
        let first = self.gather(&digests, &acting, me, pg, &[]).await?;
        let (objects, mut inconsistent) = compare(&members(&first));
        if !inconsistent.is_empty() {
            // Writes in flight during the pass look like differences: look again.
            tokio::time::sleep(RECHECK_DELAY).await;
            let n = inconsistent.len().min(MAX_RECHECK);
            let names: Vec<Vec<u8>> = inconsistent[..n].iter().map(|i| i.name.clone()).collect();
            let again = self.gather(&digests, &acting, me, pg, &names).await?;
            let (_, confirmed) = compare(&members(&again));
            let rest: Vec<Inconsistency> = inconsistent.split_off(n);
            // An object whose version moved on a member between the two passes is being
            // written: its copies were digested at different moments. Not reported (the next
            // scrub looks again).
            let (settled, moving): (Vec<_>, Vec<_>) = confirmed
                .into_iter()
                .partition(|i| versions_unchanged(&first, &again, &i.name));
            if !moving.is_empty() {
                tracing::debug!(%pg, objects = moving.len(), "scrub: objects written during the scrub skipped");
            }
            inconsistent = settled;
            inconsistent.extend(rest);
        }
        let now = self.map().ok_or(ScrubError::NoMap)?;
        let acting_now = acting_of(&now, pg)?;
        if acting_now != acting {
            return Err(ScrubError::ActingChanged {
                pg,
                from: acting,
                to: acting_now,
            });
        }
        let rec = ScrubRecord {
            epoch: map.epoch,
            acting,
            objects,
            inconsistent,
        };
        if rec.inconsistent.is_empty() {
            tracing::info!(%pg, objects, ms = started.elapsed().as_millis() as u64, "scrub: pg consistent");
        } else {
            for i in rec.inconsistent.iter().take(16) {
                let problems: Vec<String> = i
                    .problems
                    .iter()
                    .map(|(osd, p)| format!("osd.{osd}: {p}"))
                    .collect();
                tracing::error!(%pg, object = %i.name_lossy(), auth = ?i.auth, problems = ?problems, "scrub: inconsistent object");
            }
            tracing::error!(%pg, objects, inconsistent = rec.inconsistent.len(), "scrub: pg inconsistent");
        }
        self.book.record(pg, rec.clone());
        Ok(rec)
    }

    /// Scrubs every active PG this OSD is primary for once per `interval`, one at a time;
    /// never returns (with no interval, or no digests, it only waits).
    pub async fn background(&self, interval: Option<Duration>) {
        let interval = match interval {
            Some(i) if !i.is_zero() && self.digests.is_some() => i,
            _ => return std::future::pending().await,
        };
        let tick = (interval / 4).clamp(Duration::from_millis(50), Duration::from_secs(30));
        let mut due: BTreeMap<PgId, Instant> = BTreeMap::new();
        loop {
            tokio::time::sleep(tick).await;
            let (Some(map), Some(me)) = (self.map(), self.status.osd_id()) else {
                continue;
            };
            let mine = active_primary_pgs(&map, me);
            let now = Instant::now();
            due.retain(|pg, _| mine.binary_search(pg).is_ok());
            for pg in mine {
                due.entry(pg).or_insert(now + interval);
            }
            while let Some(pg) = next_due(&due, Instant::now()) {
                match self.scrub(pg).await {
                    Ok(_) => {}
                    Err(e) => tracing::warn!(%pg, error = %e, "background scrub failed"),
                }
                due.insert(pg, Instant::now() + interval);
            }
        }
    }
}

/// The PG that is most overdue at `now`, if any is due.
fn next_due(due: &BTreeMap<PgId, Instant>, now: Instant) -> Option<PgId> {
    due.iter()
        .filter(|(_, t)| **t <= now)
        .min_by_key(|(_, t)| **t)
        .map(|(pg, _)| *pg)
}

/// Whether every member holds object `name` at the same version (or lacks it) in both passes.
fn versions_unchanged(
    first: &[(u32, Vec<ObjectDigest>)],
    again: &[(u32, Vec<ObjectDigest>)],
    name: &[u8],
) -> bool {
    let version = |pass: &[(u32, Vec<ObjectDigest>)], osd: u32| {
        pass.iter()
            .find(|(o, _)| *o == osd)
            .and_then(|(_, objects)| objects.iter().find(|d| d.name == name))
            .map(|d| d.version)
    };
    first
        .iter()
        .all(|(osd, _)| version(first, *osd) == version(again, *osd))
}

fn members(d: &[(u32, Vec<ObjectDigest>)]) -> Vec<Member<'_>> {
    d.iter()
        .map(|(osd, objects)| Member { osd: *osd, objects })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrub::ObjectVersion;

    #[test]
    fn an_object_written_between_the_passes_is_not_reported() {
        let d = |v: u64, crc: u32| ObjectDigest {
            name: b"o".to_vec(),
            version: Some(ObjectVersion { epoch: 3, seq: v }),
            size: 1,
            crc32c: Ok(crc),
        };
        let first = vec![(0, vec![d(5, 1)]), (1, vec![d(4, 2)])];
        // Same versions in the second pass: a real difference.
        let still = vec![(0, vec![d(5, 1)]), (1, vec![d(4, 2)])];
        assert!(versions_unchanged(&first, &still, b"o"));
        // The replica moved on: the object is being written.
        let moved = vec![(0, vec![d(6, 3)]), (1, vec![d(5, 1)])];
        assert!(!versions_unchanged(&first, &moved, b"o"));
        // Gone from a member between the passes: moved too.
        let gone = vec![(0, vec![d(5, 1)]), (1, vec![])];
        assert!(!versions_unchanged(&first, &gone, b"o"));
    }

    #[test]
    fn the_most_overdue_pg_goes_first_and_none_before_its_time() {
        let t0 = Instant::now();
        let pg = |pg| PgId { pool: 1, pg };
        let mut due = BTreeMap::new();
        due.insert(pg(1), t0 + Duration::from_secs(5));
        due.insert(pg(2), t0 + Duration::from_secs(2));
        due.insert(pg(3), t0 + Duration::from_secs(9));
        assert_eq!(next_due(&due, t0), None);
        assert_eq!(next_due(&due, t0 + Duration::from_secs(6)), Some(pg(2)));
        due.insert(pg(2), t0 + Duration::from_secs(20));
        assert_eq!(next_due(&due, t0 + Duration::from_secs(6)), Some(pg(1)));
    }
}
