//! High availability through etcd: several monitors, one leader.
//!
//! Every monitor started with `--etcd` listens at once and campaigns for leadership of the
//! election `<prefix>/leader` with a lease of `--etcd-lease-secs`, kept alive by a background
//! task; the election value is the monitor's advertised address. Only the elected monitor loads
//! the map history from etcd and serves it. The others follow: they read the election's current
//! value ([`watch_leader`]) and answer every call with a redirect naming the leader
//! ([`carmine_proto::not_leader`]: code `Unavailable`, metadata `carmine-leader`), which the CLI
//! and the agent follow; clients also keep failing over across their list of monitors. When the
//! leader dies, its lease expires, the next campaigner wins, and it serves the same history.
//!
//! Map commits are fenced: each epoch is written in one etcd transaction that succeeds only if
//! this monitor's election key still exists with the revision it won with (it is still the
//! leader) and `<prefix>/epoch` still holds the previous epoch. A deposed leader therefore
//! cannot write, and no epoch is ever written twice or skipped. Losing the lease or failing a
//! fenced commit stops the monitor (it restarts as a follower).
//!
//! Keys: `<prefix>/epoch` (decimal), `<prefix>/maps/<epoch, 20 digits>` (protobuf ClusterMap,
//! the same encoding as the redb store), `<prefix>/keyring` (protobuf Keyring, the client keys,
//! written fenced on the leader key only), `<prefix>/pg_history/<pool, 10 digits>.<pg, 10
//! digits>` (protobuf PgHistory, a PG's recorded intervals; fenced on the leader key, absent
//! for a PG without intervals), `<prefix>/leader/...` (the election, value = the leader's
//! address).
//!
//! A batch of PG history changes is written in transactions of at most
//! [`HISTORY_OPS_PER_TXN`] keys (etcd refuses transactions of more than 128 operations by
//! default). A batch is therefore not atomic across PGs; each PG's record is. The caller
//! answers only once every transaction succeeded, and a failed batch may leave some of its
//! records stored: that only adds intervals nobody acknowledged, which makes later peering
//! more careful, never less.
//!
//! The monitor's state machine is synchronous; an etcd commit runs the async call with
//! `block_in_place`, holding the state lock. Map changes are a serial log anyway, and a change
//! is acknowledged only once etcd has it. The store's etcd client lives on its own one-worker
//! runtime: while a commit holds the lock, the server's workers may all be parked waiting for
//! that lock, and the client's connection tasks must still make progress (on the server's
//! runtime they could not: a deadlock).

use std::time::{Duration, Instant};

use carmine_placement::ClusterMap;
use carmine_proto::v1;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Txn, TxnOp,
};
use prost::Message;
use tokio::sync::watch;

use crate::store::{PgHistoryChange, PgKey, StoreError};

/// Errors of the etcd backend.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    /// etcd call failed.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// The campaign ended without a leader key.
    #[error("etcd election returned no leader key")]
    NoLeaderKey,
    /// The etcd store's runtime could not be started.
    #[error("etcd store runtime: {0}")]
    Runtime(std::io::Error),
}

/// The map history in etcd, written only while this monitor leads.
pub struct EtcdStore {
    client: Client,
    prefix: String,
    leader_key: Vec<u8>,
    leader_rev: i64,
    /// Runs the client's connection tasks; `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed inside an async context.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Most PG records written in one etcd transaction.
pub const HISTORY_OPS_PER_TXN: usize = 64;

fn etcd_err(e: etcd_client::Error) -> StoreError {
    StoreError::Etcd(e.to_string())
}

impl EtcdStore {
    fn epoch_key(&self) -> String {
        format!("{}/epoch", self.prefix)
    }

    fn keyring_key(&self) -> String {
        format!("{}/keyring", self.prefix)
    }

    fn history_prefix(&self) -> String {
        format!("{}/pg_history/", self.prefix)
    }

    fn history_key(&self, (pool, pg): PgKey) -> String {
        format!("{}{pool:010}.{pg:010}", self.history_prefix())
    }

    fn map_key(&self, epoch: u64) -> String {
        format!("{}/maps/{epoch:020}", self.prefix)
    }

    fn block<F: std::future::Future>(&self, f: F) -> Result<F::Output, StoreError> {
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| StoreError::Etcd("etcd store is shutting down".into()))?;
        Ok(tokio::task::block_in_place(|| rt.handle().block_on(f)))
    }

    /// Every stored map, oldest first.
    pub fn load(&self) -> Result<Vec<ClusterMap>, StoreError> {
        let mut c = self.client.clone();
        let prefix = format!("{}/maps/", self.prefix);
        let r = self
            .block(c.get(prefix, Some(GetOptions::new().with_prefix())))?
            .map_err(etcd_err)?;
        let mut out = Vec::new();
        for kv in r.kvs() {
            let m = v1::ClusterMap::decode(kv.value())
                .map_err(|source| StoreError::Decode { epoch: 0, source })?;
            out.push(ClusterMap::from(m));
        }
        out.sort_by_key(|m| m.epoch);
        Ok(out)
    }

    /// The stored client keyring, if any.
    pub fn load_keyring(&self) -> Result<Option<v1::Keyring>, StoreError> {
        let mut c = self.client.clone();
        let r = self
            .block(c.get(self.keyring_key(), None))?
            .map_err(etcd_err)?;
        match r.kvs().first() {
            None => Ok(None),
            Some(kv) => v1::Keyring::decode(kv.value())
                .map(Some)
                .map_err(StoreError::KeyringDecode),
        }
    }

    /// Replaces the client keyring if this monitor still leads.
    pub fn commit_keyring(&self, keyring: &v1::Keyring) -> Result<(), StoreError> {
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.leader_key.clone(),
                CompareOp::Equal,
                self.leader_rev,
            )])
            .and_then([TxnOp::put(
                self.keyring_key(),
                keyring.encode_to_vec(),
                None,
            )]);
        let mut c = self.client.clone();
        let r = self.block(c.txn(txn))?.map_err(etcd_err)?;
        if r.succeeded() {
            Ok(())
        } else {
            Err(StoreError::FencedKeyring)
        }
    }

    /// Every stored PG history, sorted by PG.
    pub fn load_pg_history(&self) -> Result<Vec<PgHistoryChange>, StoreError> {
        let mut c = self.client.clone();
        let r = self
            .block(c.get(self.history_prefix(), Some(GetOptions::new().with_prefix())))?
            .map_err(etcd_err)?;
        let mut out = Vec::new();
        for kv in r.kvs() {
            let pg = kv
                .key_str()
                .ok()
                .and_then(|k| k.strip_prefix(&self.history_prefix()))
                .and_then(|k| k.split_once('.'))
                .and_then(|(p, g)| Some((p.parse().ok()?, g.parse().ok()?)))
                .ok_or_else(|| {
                    StoreError::Etcd(format!(
                        "unexpected pg history key {:?}",
                        String::from_utf8_lossy(kv.key())
                    ))
                })?;
            let h = v1::PgHistory::decode(kv.value())
                .map_err(|source| StoreError::HistoryDecode { pg, source })?;
            out.push((pg, h.intervals));
        }
        out.sort_by_key(|(pg, _)| *pg);
        Ok(out)
    }

    /// Writes PG history changes if this monitor still leads, [`HISTORY_OPS_PER_TXN`] PGs per
    /// transaction.
    pub fn commit_pg_history(&self, changes: &[PgHistoryChange]) -> Result<(), StoreError> {
        for chunk in changes.chunks(HISTORY_OPS_PER_TXN) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(pg, intervals)| {
                    let key = self.history_key(*pg);
                    if intervals.is_empty() {
                        TxnOp::delete(key, None)
                    } else {
                        let h = v1::PgHistory {
                            intervals: intervals.clone(),
                        };
                        TxnOp::put(key, h.encode_to_vec(), None)
                    }
                })
                .collect();
            let txn = Txn::new()
                .when([Compare::create_revision(
                    self.leader_key.clone(),
                    CompareOp::Equal,
                    self.leader_rev,
                )])
                .and_then(ops);
            let mut c = self.client.clone();
            let r = self.block(c.txn(txn))?.map_err(etcd_err)?;
            if !r.succeeded() {
                return Err(StoreError::FencedHistory);
            }
        }
        Ok(())
    }

    /// Writes `map` if this monitor still leads and the stored epoch is `map.epoch - 1`.
    pub fn commit(&self, map: &ClusterMap, keep: u64) -> Result<(), StoreError> {
        let bytes = v1::ClusterMap::from(map).encode_to_vec();
        let prev = if map.epoch <= 1 {
            Compare::version(self.epoch_key(), CompareOp::Equal, 0)
        } else {
            Compare::value(
                self.epoch_key(),
                CompareOp::Equal,
                (map.epoch - 1).to_string(),
            )
        };
        let oldest_kept = map.epoch.saturating_sub(keep.max(1) - 1);
        let txn = Txn::new()
            .when([
                Compare::create_revision(
                    self.leader_key.clone(),
                    CompareOp::Equal,
                    self.leader_rev,
                ),
                prev,
            ])
            .and_then([
                TxnOp::put(self.map_key(map.epoch), bytes, None),
                TxnOp::put(self.epoch_key(), map.epoch.to_string(), None),
                TxnOp::delete(
                    format!("{}/maps/", self.prefix),
                    Some(DeleteOptions::new().with_range(self.map_key(oldest_kept))),
                ),
            ]);
        let mut c = self.client.clone();
        let r = self.block(c.txn(txn))?.map_err(etcd_err)?;
        if r.succeeded() {
            Ok(())
        } else {
            Err(StoreError::Fenced(map.epoch))
        }
    }
}

/// Leadership won: the store to use, and a receiver that flips to `true` if the lease is lost.
pub struct Leadership {
    /// The fenced store.
    pub store: EtcdStore,
    /// Becomes `true` when the lease could not be kept alive.
    pub lost: watch::Receiver<bool>,
    /// Until when this monitor certainly still holds its etcd lease: the instant the last
    /// granted keep-alive (or the grant) was sent plus the TTL etcd granted with it. etcd counts
    /// the TTL from when it handled the request, later, so the real expiry is no earlier, and
    /// the next leader is elected only after it. The leader answers no heartbeat, `LeaseWait`
    /// or `GetPgHistory` past this instant: a heartbeat reply renews an OSD's read lease, and
    /// the next leader assumes no reply was sent before its own start (see [`crate::lease`]);
    /// the other two could miss what the next leader recorded or renewed.
    pub valid_until: watch::Receiver<Instant>,
}

/// An etcd TTL (seconds, negative = none) as a duration.
fn ttl(secs: i64) -> Duration {
    Duration::from_secs(secs.max(0) as u64)
}

/// A client for the monitors' periodic reads of the election (who leads, who campaigns):
/// short timeouts, since the reader simply tries again at its next period. `None` while etcd
/// is unreachable.
async fn connect_reader(endpoints: &[String]) -> Option<Client> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(3));
    Client::connect(endpoints, Some(opts)).await.ok()
}

/// How often a follower re-reads who leads.
const LEADER_POLL: Duration = Duration::from_millis(500);

/// Keeps `tx` set to the address of the current leader of `<prefix>/leader` (`None` while
/// nobody leads or etcd is unreachable), re-reading it every 500 ms until `tx` has no receiver.
pub async fn watch_leader(
    endpoints: Vec<String>,
    prefix: String,
    tx: watch::Sender<Option<String>>,
) {
    let election = format!("{prefix}/leader");
    let mut client = None;
    while !tx.is_closed() {
        if client.is_none() {
            client = connect_reader(&endpoints).await;
        }
        let leader = match client.as_mut() {
            Some(c) => match c.leader(election.clone()).await {
                Ok(r) => r
                    .kv()
                    .and_then(|kv| kv.value_str().ok())
                    .map(str::to_string),
                // etcd answers "no leader" with an error, as it does when unreachable.
                Err(e) => {
                    tracing::debug!(error = %e, "no monitor leader known");
                    None
                }
            },
            None => None,
        };
        tx.send_if_modified(|cur| {
            let changed = *cur != leader;
            if changed {
                tracing::info!(leader = ?leader, "monitor leader");
                *cur = leader;
            }
            changed
        });
        tokio::time::sleep(LEADER_POLL).await;
    }
}

/// How often the monitor list of `status` is re-read.
const MONITORS_POLL: Duration = Duration::from_secs(2);

/// Keeps `tx` set to every monitor campaigning in `<prefix>/leader` (their advertised
/// addresses, oldest campaign first: that one leads), re-reading every 2 s until `tx` has no
/// receiver. An etcd election is one key per campaigner under the election's prefix, created
/// with the campaigner's lease, so a dead monitor drops out when its lease expires.
pub async fn watch_monitors(
    endpoints: Vec<String>,
    prefix: String,
    tx: watch::Sender<Vec<v1::MonitorInfo>>,
) {
    let candidates = format!("{prefix}/leader/");
    let mut client = None;
    while !tx.is_closed() {
        if client.is_none() {
            client = connect_reader(&endpoints).await;
        }
        if let Some(c) = client.as_mut() {
            let get = GetOptions::new().with_prefix().with_sort(
                etcd_client::SortTarget::Create,
                etcd_client::SortOrder::Ascend,
            );
            match c.get(candidates.clone(), Some(get)).await {
                Ok(r) => {
                    let all: Vec<v1::MonitorInfo> = r
                        .kvs()
                        .iter()
                        .enumerate()
                        .map(|(i, kv)| v1::MonitorInfo {
                            addr: kv.value_str().unwrap_or_default().to_string(),
                            leader: i == 0,
                        })
                        .collect();
                    tx.send_if_modified(|cur| {
                        let changed = *cur != all;
                        *cur = all;
                        changed
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "monitor list not read");
                    client = None;
                }
            }
        }
        tokio::time::sleep(MONITORS_POLL).await;
    }
}

/// Connects to etcd and campaigns until this monitor leads. `advertise` is published as the
/// leader's address.
pub async fn campaign(
    endpoints: &[String],
    prefix: &str,
    lease_secs: i64,
    advertise: &str,
) -> Result<Leadership, HaError> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5));
    // The campaign's own client has no request timeout: a standby waits in `campaign` for as
    // long as the leader lives (with a 5 s timeout every standby gave up and exited after
    // 5 s). A dead etcd is still noticed: HTTP/2 pings fail the call within 10 + 5 s (etcd
    // closes connections that ping more often than every 5 s, its keepalive-min-time).
    let campaign_opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    let mut client = Client::connect(endpoints, Some(campaign_opts)).await?;
    let granted_at = Instant::now();
    let grant = client.lease_grant(lease_secs.max(2), None).await?;
    let lease = grant.id();
    let (valid_tx, valid_until) = watch::channel(granted_at + ttl(grant.ttl()));
    let (mut keeper, mut responses) = client.lease_keep_alive(lease).await?;
    let (lost_tx, lost) = watch::channel(false);
    // Keep the lease alive at a third of its TTL, during the campaign and after it.
    let period = Duration::from_millis((lease_secs.max(2) as u64) * 1000 / 3);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            let sent = Instant::now();
            let alive = match keeper.keep_alive().await {
                Ok(()) => match responses.message().await {
                    Ok(Some(r)) if r.ttl() > 0 => {
                        valid_tx.send_replace(sent + ttl(r.ttl()));
                        true
                    }
                    _ => false,
                },
                Err(_) => false,
            };
            if !alive {
                tracing::error!("etcd lease lost");
                let _ = lost_tx.send(true);
                return;
            }
        }
    });
    let election = format!("{prefix}/leader");
    tracing::info!(%election, "campaigning for monitor leadership");
    let r = client.campaign(election, advertise, lease).await?;
    let key = r.leader().ok_or(HaError::NoLeaderKey)?;
    tracing::info!(rev = key.rev(), "elected monitor leader");
    // The store's own client, connected from (so driven by) its own runtime.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("carmine-mon-etcd")
        .enable_all()
        .build()
        .map_err(HaError::Runtime)?;
    let eps = endpoints.to_vec();
    let store_client = rt
        .spawn(async move { Client::connect(eps, Some(opts)).await })
        .await
        .map_err(|e| HaError::Runtime(std::io::Error::other(e.to_string())))??;
    Ok(Leadership {
        valid_until,
        store: EtcdStore {
            leader_key: key.key().to_vec(),
            leader_rev: key.rev(),
            client: store_client,
            prefix: prefix.to_string(),
            rt: Some(rt),
        },
        lost,
    })
}
