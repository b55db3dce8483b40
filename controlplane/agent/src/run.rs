//! The agent thread's async main: monitor session (boot, heartbeats, subscription) and the
//! admin server, until told to stop.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use carmine_placement::{ClusterMap, Incremental};
use carmine_proto::v1::{self, map_update::Update, mon_cluster_client::MonClusterClient};
use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::Request;

use crate::peering::{Lease, Peering};
use crate::scrubber::{MonLink, Scrubs};
use crate::{
    admin, osd_key_id, AgentConfig, AgentStatus, ConfigStore, MapSink, PeeringSetup, Role,
    ScrubSetup, SharedKeyring, Stats, KEYRING_REFRESH, OSD_KEY_PREFIX, STORE_FAILURE_CHECK,
};

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How soon a refused map is offered again to a full sink.
const SINK_RETRY: Duration = Duration::from_millis(20);

/// Why a monitor session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("monitor unreachable: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("monitor address: {0}")]
    Tls(#[from] carmine_proto::tls::TlsError),
    #[error("monitor call failed: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("map stream: {0}")]
    Stream(String),
    #[error("the monitor marked this OSD down")]
    MustBoot,
    #[error("monitor did not answer within {0:?}")]
    Timeout(Duration),
}

impl SessionError {
    /// The leader's address when a follower monitor redirected us.
    fn redirect(&self) -> Option<String> {
        match self {
            SessionError::Rpc(s) => carmine_proto::leader_redirect(s),
            _ => None,
        }
    }
}

/// Longest wait for one unary call: a monitor that stopped (not closed its connection) must not
/// hold the agent forever; the session ends and the agent tries the next monitor.
const RPC_TIMEOUT: Duration = Duration::from_secs(3);

async fn timed<T>(
    f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, SessionError> {
    match tokio::time::timeout(RPC_TIMEOUT, f).await {
        Ok(r) => Ok(r?.into_inner()),
        Err(_) => Err(SessionError::Timeout(RPC_TIMEOUT)),
    }
}

/// Feeds the shards: remembers the newest map and which sinks still lack it.
struct Shards {
    sinks: Vec<Box<dyn MapSink>>,
    lagging: Vec<bool>,
    map: Option<Arc<ClusterMap>>,
    /// Scrubs read the newest map too.
    scrubs: Arc<Scrubs>,
    /// Peering (the PG states the heartbeats report) and the lease they renew.
    peering: Option<Arc<Peering>>,
    lease: Option<Arc<Lease>>,
}

impl Shards {
    fn publish(&mut self, map: Arc<ClusterMap>, status: &AgentStatus) {
        status.epoch.store(map.epoch, Ordering::Release);
        self.scrubs.set_map(&map);
        self.map = Some(map);
        self.lagging.iter_mut().for_each(|l| *l = true);
        self.retry();
    }

    /// Offers the newest map to every sink that lacks it.
    fn retry(&mut self) {
        let Some(map) = &self.map else { return };
        for (sink, lag) in self.sinks.iter_mut().zip(self.lagging.iter_mut()) {
            if *lag && sink.deliver(map.clone()).is_ok() {
                *lag = false;
            }
        }
    }

    fn any_lagging(&self) -> bool {
        self.lagging.iter().any(|l| *l)
    }
}

/// What this OSD presents to the monitor: its key (`None`: no credential, an insecure
/// monitor).
pub(crate) fn mon_bearer(
    cfg: &AgentConfig,
) -> Result<Option<MetadataValue<Ascii>>, carmine_proto::ProtoError> {
    cfg.credential
        .as_ref()
        .map(|c| carmine_proto::auth::key_bearer(&c.id, &c.secret))
        .transpose()
}

pub(crate) fn with_token<T>(msg: T, token: &Option<MetadataValue<Ascii>>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert(carmine_proto::AUTH_HEADER, t.clone());
    }
    r
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn agent_main(
    cfg: AgentConfig,
    listener: std::net::TcpListener,
    metrics_listener: Option<std::net::TcpListener>,
    admin_server: tonic::transport::Server,
    sinks: Vec<Box<dyn MapSink>>,
    stats: Arc<dyn Stats>,
    config: Arc<dyn ConfigStore>,
    keyring: Arc<SharedKeyring>,
    status: Arc<AgentStatus>,
    scrub: Option<ScrubSetup>,
    peering: Option<PeeringSetup>,
    stop: oneshot::Receiver<()>,
) {
    let (digests, scrub_interval) = match scrub {
        Some(s) => (Some(s.digests), s.interval),
        None => (None, None),
    };
    let scrubs = Arc::new(Scrubs::new(
        digests,
        status.clone(),
        keyring.clone(),
        cfg.client_tls.clone(),
    ));
    let (peering, events, lease) = match peering {
        Some(p) => (
            Some(Peering::new(p.shards, status.clone(), scrubs.clone())),
            Some(p.events),
            Some(p.lease),
        ),
        None => (None, None, None),
    };
    if let (Some(p), Some(events)) = (&peering, events) {
        tokio::spawn(p.clone().run(events));
    }
    let (admin_stop_tx, admin_stop_rx) = oneshot::channel::<()>();
    // /metrics: its own task, stopped with the agent (its runtime ends with the thread).
    if let Some(l) = metrics_listener {
        match tokio::net::TcpListener::from_std(l) {
            Ok(l) => {
                let h = crate::metrics::handler(stats.clone(), status.clone());
                tokio::spawn(carmine_metrics::serve(l, h, std::future::pending()));
            }
            Err(e) => tracing::error!(error = %e, "cannot register the metrics listener"),
        }
    }
    let admin = admin::serve(
        listener,
        admin_server,
        keyring.clone(),
        cfg.mon_addr.clone(),
        sinks.len() as u32,
        stats.clone(),
        config,
        status.clone(),
        scrubs.clone(),
        peering.clone(),
        async {
            let _ = admin_stop_rx.await;
        },
    );
    let lagging = vec![false; sinks.len()];
    let mut shards = Shards {
        sinks,
        lagging,
        map: None,
        scrubs: scrubs.clone(),
        peering,
        lease,
    };
    let background_scrub = scrubs.background(scrub_interval);
    let session_loop = async {
        let mut backoff = Duration::from_millis(50);
        // Several monitors (etcd HA): a follower redirects to the leader, which the next
        // session goes to straight away; a monitor that fails (or a follower that knows no
        // leader) sends the agent on to the next one in the list.
        let mons: Vec<String> = cfg
            .mon_addr
            .split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        let mut which = 0usize;
        let mut redirect: Option<String> = None;
        let mut redirects = 0u32;
        loop {
            let addr = match redirect.take() {
                Some(leader) => leader,
                None => mons
                    .get(which % mons.len().max(1))
                    .cloned()
                    .unwrap_or_default(),
            };
            match session(&cfg, &addr, &mut shards, stats.as_ref(), &keyring, &status).await {
                Ok(()) => {}
                Err(SessionError::MustBoot) => {
                    tracing::warn!("monitor has this OSD down: booting again");
                    backoff = Duration::from_millis(50);
                    continue;
                }
                Err(e) => match e.redirect() {
                    Some(leader) => {
                        tracing::info!(mon = %addr, %leader, "not the leader: redirected");
                        // Follow at once, but a run of redirects (a stale leader address)
                        // goes through the growing backoff.
                        redirects += 1;
                        if redirects <= 2 {
                            backoff = Duration::from_millis(50);
                        }
                        redirect = Some(leader);
                    }
                    None => {
                        tracing::warn!(mon = %addr, error = %e, "monitor session ended");
                        redirects = 0;
                        which = which.wrapping_add(1);
                    }
                },
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    };
    tokio::pin!(admin);
    tokio::select! {
        _ = stop => {}
        _ = session_loop => {}
        _ = background_scrub => {}
        r = &mut admin => {
            if let Err(e) = r {
                tracing::error!(error = %e, "osd admin server failed");
            }
            return;
        }
    }
    let _ = admin_stop_tx.send(());
    if let Err(e) = admin.await {
        tracing::error!(error = %e, "osd admin server failed");
    }
}

/// One session with the monitor: connect, boot, then heartbeat and follow the map until
/// something fails.
async fn session(
    cfg: &AgentConfig,
    mon_addr: &str,
    shards: &mut Shards,
    stats: &dyn Stats,
    keyring: &SharedKeyring,
    status: &AgentStatus,
) -> Result<(), SessionError> {
    let channel: Channel = cfg
        .client_tls
        .endpoint(mon_addr)?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let token = mon_bearer(cfg).map_err(|e| SessionError::Stream(e.to_string()))?;
    let mut mon = MonClusterClient::new(channel);
    shards.scrubs.set_mon(MonLink {
        client: mon.clone(),
        token: token.clone(),
    });
    let boot = timed(
        mon.boot(with_token(
            v1::BootRequest {
                uuid: cfg.uuid.clone(),
                id: status.osd_id().unwrap_or(0),
                has_id: status.osd_id().is_some(),
                host: cfg.host.clone(),
                public_addr: cfg.public_addr.clone(),
                cluster_addr: cfg.cluster_addr.clone(),
                shard_count: cfg.shard_ports.len() as u32,
                shard_ports: cfg.shard_ports.clone(),
                weight: cfg.weight,
                admin_addr: cfg.admin_listen.to_string(),
                metrics_addr: cfg
                    .metrics_listen
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                new_process: status.boots() == 0,
                store_failure: stats.store_failure().unwrap_or_default(),
            },
            &token,
        )),
    )
    .await?;
    if let Some(want) = cfg.credential.as_ref().and_then(|c| c.osd_id()) {
        if boot.id != want {
            // The monitor booted this uuid under another id than its key names: never serve
            // under it (the data path would authenticate as someone else).
            return Err(SessionError::Stream(format!(
                "the monitor booted this OSD as osd.{} but its key is osd.{want}",
                boot.id
            )));
        }
    }
    install_identity(&boot, keyring);
    status.id.store(boot.id, Ordering::Release);
    status.booted.store(true, Ordering::Release);
    status.boots.fetch_add(1, Ordering::AcqRel);
    tracing::info!(osd = boot.id, epoch = boot.epoch, "booted");
    let hb_interval = Duration::from_millis(boot.heartbeat_interval_ms.clamp(10, 60_000));
    // The read lease a heartbeat answer grants (a tenth kept as margin for clock rates).
    let lease_for = Duration::from_millis(boot.lease_ms - boot.lease_ms / 10);
    if let (Some(l), 0) = (&shards.lease, boot.lease_ms) {
        tracing::warn!("the monitor grants no read lease: PGs are served unfenced");
        l.unfenced();
    }
    // The keyring right after boot: the shards cannot admit any client before it.
    let kr = timed(mon.get_keyring(with_token(v1::Empty {}, &token))).await?;
    install_keyring(kr, keyring, status);

    let have = shards.map.as_ref().map_or(0, |m| m.epoch);
    let mut stream = timed(mon.subscribe(with_token(
        v1::SubscribeRequest { have_epoch: have },
        &token,
    )))
    .await?;
    let mut hb = tokio::time::interval(hb_interval);
    hb.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry = tokio::time::interval(SINK_RETRY);
    let mut keys_tick = tokio::time::interval(KEYRING_REFRESH);
    keys_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keys_tick.reset(); // the first tick would fire now: the keyring was just fetched
    let mut failure_tick = tokio::time::interval(STORE_FAILURE_CHECK);
    failure_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Whether the monitor has acknowledged a heartbeat that carried the store failure.
    let mut failure_reported = false;
    loop {
        tokio::select! {
            _ = failure_tick.tick(), if !failure_reported => {
                if stats.store_failure().is_some() {
                    // Report it now, not at the next heartbeat.
                    hb.reset_immediately();
                }
            }
            _ = hb.tick() => {
                let (used, capacity) = stats.usage();
                let failure = stats.store_failure();
                if let (Some(why), false) = (&failure, failure_reported) {
                    tracing::error!(reason = %why, "store failed: reporting to the monitor, serving nothing");
                }
                let sent = Instant::now();
                let r = timed(mon.heartbeat(with_token(
                        v1::HeartbeatRequest {
                            id: boot.id,
                            uuid: cfg.uuid.clone(),
                            map_epoch: status.map_epoch(),
                            used_bytes: used,
                            capacity_bytes: capacity,
                            admin_addr: cfg.admin_listen.to_string(),
                            metrics_addr: cfg.metrics_listen.map(|a| a.to_string()).unwrap_or_default(),
                            inconsistent_pgs: shards.scrubs.report(),
                            pg_stats: shards.peering.as_ref().map(|p| p.report()).unwrap_or_default(),
                            store_failure: failure.clone().unwrap_or_default(),
                            client_io: stats.client_io(),
                        },
                        &token,
                    )))
                    .await?;
                failure_reported |= failure.is_some();
                if failure.is_some() {
                    // Down, and kept down by the monitor: no boot, no lease; the heartbeats go
                    // on so that the failure stays in health (even across a monitor restart).
                    continue;
                }
                if r.must_boot {
                    return Err(SessionError::MustBoot);
                }
                status.heartbeats_acked.fetch_add(1, Ordering::AcqRel);
                // The lease runs from when the heartbeat left, and only an OSD whose shards
                // have all applied the monitor's map renews it: one behind may lead PGs that
                // moved (the monitor's LeaseWait counts on this).
                if let Some(l) = shards.lease.as_ref().filter(|_| boot.lease_ms > 0) {
                    let applied = stats.applied_epoch().unwrap_or_else(|| status.map_epoch());
                    if r.epoch <= applied {
                        l.renew(sent, lease_for);
                    }
                }
                // A heartbeat reply that names another keyring version: fetch it now rather
                // than at the next periodic refresh.
                if r.keyring_version != 0 && r.keyring_version != status.keyring_version() {
                    let kr = timed(mon.get_keyring(with_token(v1::Empty {}, &token))).await?;
                    install_keyring(kr, keyring, status);
                    keys_tick.reset();
                }
            }
            _ = keys_tick.tick() => {
                let kr = timed(mon.get_keyring(with_token(v1::Empty {}, &token))).await?;
                install_keyring(kr, keyring, status);
            }
            u = stream.next() => {
                let u = match u {
                    Some(u) => u?,
                    None => return Err(SessionError::Stream("monitor closed the map stream".into())),
                };
                let next = match u.update {
                    Some(Update::Full(m)) => ClusterMap::from(m),
                    Some(Update::Incremental(i)) => {
                        let inc = Incremental::from(i);
                        let mut m = shards
                            .map
                            .as_deref()
                            .cloned()
                            .ok_or_else(|| SessionError::Stream("incremental before any full map".into()))?;
                        m.apply(&inc).map_err(|e| SessionError::Stream(e.to_string()))?;
                        m
                    }
                    None => continue,
                };
                // Never hand an old epoch to the shards (e.g. a full map racing a newer one).
                if shards.map.as_ref().is_some_and(|m| m.epoch >= next.epoch) {
                    continue;
                }
                tracing::debug!(epoch = next.epoch, "new map");
                shards.publish(Arc::new(next), status);
            }
            _ = retry.tick(), if shards.any_lagging() => shards.retry(),
        }
    }
}

/// Keeps this OSD's identity from a boot reply: its key id must be `osd.<id>` and its key 32
/// bytes, or the identity is cleared (with a warning: replica connections cannot authenticate).
fn install_identity(boot: &v1::BootReply, keyring: &SharedKeyring) {
    let want = osd_key_id(boot.id);
    let identity = if boot.key_id.is_empty() && boot.key.is_empty() {
        tracing::warn!(
            osd = boot.id,
            "the monitor issued no OSD key (an older monitor?): replica connections cannot authenticate"
        );
        None
    } else if boot.key_id != want {
        tracing::warn!(osd = boot.id, key_id = %boot.key_id, "the monitor named this OSD's key wrongly: ignored");
        None
    } else {
        match <[u8; carmine_wire::SECRET_LEN]>::try_from(boot.key.as_slice()) {
            Ok(k) => Some((want, carmine_wire::AuthKey::new(k))),
            Err(_) => {
                tracing::warn!(
                    osd = boot.id,
                    len = boot.key.len(),
                    "the monitor sent an OSD key of the wrong length: ignored"
                );
                None
            }
        }
    };
    if let Some((id, _)) = &identity {
        tracing::info!(key_id = %id, "data-path identity from the monitor");
    }
    keyring.set_identity(identity);
}

/// The role of one key the monitor sent, or `None` when it must not be held: an OSD key under
/// another id than `osd.<n>`, or a client key under an id reserved for OSDs.
fn role_of(ck: &v1::ClientKey) -> Option<Role> {
    match ck.role() {
        v1::KeyRole::Osd if ck.id == osd_key_id(ck.osd_id) => Some(Role::Osd(ck.osd_id)),
        v1::KeyRole::Osd => None,
        v1::KeyRole::Admin if ck.id.starts_with(OSD_KEY_PREFIX) => None,
        v1::KeyRole::Admin => Some(Role::Admin),
        // Unspecified: a monitor from before roles, or a role this agent does not know; either
        // way the least privilege.
        v1::KeyRole::Client | v1::KeyRole::Unspecified if ck.id.starts_with(OSD_KEY_PREFIX) => None,
        v1::KeyRole::Client | v1::KeyRole::Unspecified => Some(Role::Client),
    }
}

/// Installs the monitor's keyring into the shards' [`SharedKeyring`] when its version differs
/// from the one held. A key of the wrong length (a corrupt or newer monitor), or whose id does
/// not fit its role, is skipped with a warning: that peer is refused, every other one still
/// gets in.
fn install_keyring(kr: v1::Keyring, keyring: &SharedKeyring, status: &AgentStatus) {
    if kr.version == status.keyring_version() && keyring.version() != 0 {
        return;
    }
    let keys: Vec<(String, carmine_wire::AuthKey, Role)> = kr
        .keys
        .into_iter()
        .filter_map(|ck| {
            let Some(role) = role_of(&ck) else {
                tracing::warn!(id = %ck.id, role = ck.role, osd_id = ck.osd_id, "monitor sent a key whose id does not fit its role: skipped");
                return None;
            };
            match <[u8; carmine_wire::SECRET_LEN]>::try_from(ck.key.as_slice()) {
                Ok(k) => Some((ck.id, carmine_wire::AuthKey::new(k), role)),
                Err(_) => {
                    tracing::warn!(id = %ck.id, len = ck.key.len(), "monitor sent a key of the wrong length: skipped");
                    None
                }
            }
        })
        .collect();
    let n = keys.len();
    let osds = keys
        .iter()
        .filter(|(_, _, r)| matches!(r, Role::Osd(_)))
        .count();
    keyring.replace_with_roles(keys);
    status.keyring_version.store(kr.version, Ordering::Release);
    tracing::info!(
        version = kr.version,
        clients = n - osds,
        osds,
        "keyring installed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use carmine_wire::server::Keyring;
    use carmine_wire::AuthKey;

    fn ck(id: &str, b: u8, role: v1::KeyRole, osd_id: u32) -> v1::ClientKey {
        v1::ClientKey {
            id: id.into(),
            key: vec![b; 32],
            role: role.into(),
            osd_id,
            ..Default::default()
        }
    }

    /// What the monitor sends becomes roles in the shared keyring; keys whose id does not fit
    /// their role are not held at all.
    #[test]
    fn installed_keyring_carries_the_monitors_roles() {
        let kr = SharedKeyring::new();
        let status = AgentStatus::default();
        let mut legacy = ck("client.old", 6, v1::KeyRole::Client, 0);
        legacy.role = 0; // a monitor from before roles
        let mut future = ck("client.new", 7, v1::KeyRole::Client, 0);
        future.role = 99; // a role this agent does not know
        install_keyring(
            v1::Keyring {
                version: 5,
                keys: vec![
                    ck("client.a", 1, v1::KeyRole::Client, 0),
                    ck("osd.0", 2, v1::KeyRole::Osd, 0),
                    ck("osd.3", 3, v1::KeyRole::Osd, 3),
                    // An OSD key under another OSD's id, and a client key named like an OSD.
                    ck("osd.4", 4, v1::KeyRole::Osd, 5),
                    ck("osd.9", 5, v1::KeyRole::Client, 0),
                    legacy,
                    future,
                ],
            },
            &kr,
            &status,
        );
        assert_eq!(status.keyring_version(), 5);
        assert_eq!(kr.role("client.a"), Some(Role::Client));
        assert_eq!(kr.role("osd.0"), Some(Role::Osd(0)));
        assert_eq!(kr.role("osd.3"), Some(Role::Osd(3)));
        assert_eq!(kr.key("osd.3"), Some(AuthKey::new([3; 32])));
        assert_eq!(kr.role("osd.4"), None);
        assert_eq!(kr.key("osd.4"), None);
        assert_eq!(kr.role("osd.9"), None);
        assert_eq!(kr.role("client.old"), Some(Role::Client));
        assert_eq!(kr.role("client.new"), Some(Role::Client));
        assert_eq!(kr.len(), 5);
    }

    #[test]
    fn boot_reply_sets_the_identity_only_when_it_names_this_osd() {
        let kr = SharedKeyring::new();
        let reply = |key_id: &str, key: Vec<u8>| v1::BootReply {
            id: 4,
            epoch: 2,
            heartbeat_interval_ms: 100,
            key_id: key_id.into(),
            key,
            lease_ms: 0,
        };
        install_identity(&reply("osd.4", vec![9; 32]), &kr);
        assert_eq!(
            kr.identity(),
            Some(("osd.4".to_string(), AuthKey::new([9; 32])))
        );
        for bad in [
            reply("osd.5", vec![9; 32]),
            reply("osd.4", vec![9; 31]),
            reply("", Vec::new()),
        ] {
            kr.set_identity(Some(("osd.4".into(), AuthKey::new([9; 32]))));
            install_identity(&bad, &kr);
            assert_eq!(kr.identity(), None, "{bad:?}");
        }
    }
}
