//! The client's side of the monitor: `MonCluster.GetMap` and `MonCluster.Subscribe`, over a
//! list of monitors, following a follower's leader redirect (`carmine-leader` metadata) the
//! way the OSD agent and the CLI do, and the background task that keeps the client's map
//! current from the subscription. Every monitor of the list, and every leader a redirect names,
//! is dialled with the client's one transport choice (`carmine_proto::tls::ClientTls`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use carmine_placement::{ClusterMap, Incremental};
use carmine_proto::tls::{ClientTls, TlsError};
use carmine_proto::v1::{self, map_update::Update, mon_cluster_client::MonClusterClient};
use thiserror::Error;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tracing::{debug, info, warn};

use crate::AuthKey;

/// Most redirects one call follows (a leader changing hands may send us through a follower or
/// two, never round in circles).
const MAX_REDIRECTS: usize = 3;
/// Longest pause between two subscription attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Why the monitor could not give us what we asked.
#[derive(Debug, Clone, Error)]
pub enum MonError {
    #[error("no monitor address given")]
    NoAddress,
    #[error("monitor transport security: {0}")]
    Tls(Arc<TlsError>),
    #[error("the client id has characters not allowed in gRPC metadata")]
    BadToken,
    #[error("the monitor refused the credential: {0}")]
    Refused(String),
    #[error("no monitor answered: {0}")]
    Unreachable(String),
    #[error("monitor error {code:?}: {message}")]
    Rpc { code: Code, message: String },
}

/// A list of monitors, the one that answered last tried first.
#[derive(Debug)]
pub(crate) struct MonClient {
    addrs: Vec<String>,
    tls: ClientTls,
    token: Option<MetadataValue<Ascii>>,
    timeout: Duration,
    /// The monitor that answered last (the leader) and its channel.
    current: Mutex<Option<(String, Channel)>>,
}

impl MonClient {
    /// `addrs`: comma-separated `host:port` (or URIs); `creds`: who we are (the monitor lets
    /// a client key fetch maps and nothing else).
    pub(crate) fn new(
        addrs: &str,
        tls: ClientTls,
        creds: Option<(&str, &AuthKey)>,
        timeout: Duration,
    ) -> Result<Self, MonError> {
        let addrs: Vec<String> = addrs
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        if addrs.is_empty() {
            return Err(MonError::NoAddress);
        }
        let token = creds
            .map(|(id, key)| {
                carmine_proto::auth::key_bearer(id, key.as_bytes()).map_err(|_| MonError::BadToken)
            })
            .transpose()?;
        Ok(MonClient {
            addrs,
            tls,
            token,
            timeout,
            current: Mutex::new(None),
        })
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(t) = &self.token {
            r.metadata_mut()
                .insert(carmine_proto::AUTH_HEADER, t.clone());
        }
        r
    }

    fn current(&self) -> Option<(String, Channel)> {
        // Only a cached channel lives under this lock; a poisoned one is still valid.
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_current(&self, v: Option<(String, Channel)>) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = v;
    }

    async fn connect(&self, addr: &str) -> Result<Channel, String> {
        if let Some((a, ch)) = self.current() {
            if a == addr {
                return Ok(ch);
            }
        }
        self.tls
            .endpoint(addr)
            .map_err(|e| e.to_string())?
            .connect_timeout(self.timeout)
            .connect()
            .await
            .map_err(|e| {
                let mut reason = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    reason = format!("{reason}: {s}");
                    src = s.source();
                }
                reason
            })
    }

    /// Runs `f` against the monitors: the last one that answered first, then the list in
    /// order; a follower's redirect is followed at once. `f` gets a client and builds its
    /// request with [`Self::request`].
    async fn call<T, F, Fut>(&self, mut f: F) -> Result<T, MonError>
    where
        F: FnMut(MonClusterClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let mut queue: VecDeque<String> = VecDeque::new();
        if let Some((a, _)) = self.current() {
            queue.push_back(a);
        }
        for a in &self.addrs {
            if !queue.contains(a) {
                queue.push_back(a.clone());
            }
        }
        let mut redirects = 0;
        let mut failures = Vec::new();
        while let Some(addr) = queue.pop_front() {
            let ch = match self.connect(&addr).await {
                Ok(ch) => ch,
                Err(e) => {
                    failures.push(format!("{addr}: {e}"));
                    continue;
                }
            };
            let status = match tokio::time::timeout(
                self.timeout,
                f(MonClusterClient::new(ch.clone())),
            )
            .await
            {
                Ok(Ok(v)) => {
                    self.set_current(Some((addr, ch)));
                    return Ok(v);
                }
                Ok(Err(s)) => s,
                Err(_) => {
                    self.forget(&addr);
                    failures.push(format!("{addr}: no answer within {:?}", self.timeout));
                    continue;
                }
            };
            if let Some(leader) = carmine_proto::leader_redirect(&status) {
                if redirects < MAX_REDIRECTS {
                    debug!(mon = %addr, %leader, "not the leader: redirected");
                    redirects += 1;
                    queue.retain(|a| *a != leader);
                    queue.push_front(leader);
                    continue;
                }
            }
            match status.code() {
                Code::Unauthenticated | Code::PermissionDenied => {
                    return Err(MonError::Refused(status.message().to_owned()))
                }
                // A follower that knows no leader, or a monitor going away: try the next.
                Code::Unavailable | Code::Cancelled | Code::Unknown => {
                    self.forget(&addr);
                    failures.push(format!("{addr}: {}", status.message()));
                }
                code => {
                    return Err(MonError::Rpc {
                        code,
                        message: status.message().to_owned(),
                    })
                }
            }
        }
        Err(MonError::Unreachable(failures.join("; ")))
    }

    fn forget(&self, addr: &str) {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.as_ref().is_some_and(|(a, _)| a == addr) {
            *cur = None;
        }
    }

    /// The monitor's current map.
    pub(crate) async fn get_map(&self) -> Result<ClusterMap, MonError> {
        self.call(|mut c| {
            let r = self.request(v1::GetMapRequest { epoch: 0 });
            async move { c.get_map(r).await.map(|m| ClusterMap::from(m.into_inner())) }
        })
        .await
    }

    async fn subscribe(&self, have: u64) -> Result<tonic::Streaming<v1::MapUpdate>, MonError> {
        self.call(|mut c| {
            let r = self.request(v1::SubscribeRequest { have_epoch: have });
            async move { c.subscribe(r).await.map(tonic::Response::into_inner) }
        })
        .await
    }
}

/// Publishes `next` unless the client already has that epoch or a newer one: the map the
/// client routes with never goes back in time. True if it was newer.
pub(crate) fn publish(tx: &watch::Sender<Arc<ClusterMap>>, next: ClusterMap) -> bool {
    tx.send_if_modified(|cur| {
        if next.epoch > cur.epoch {
            debug!(epoch = next.epoch, "client map updated");
            *cur = Arc::new(next);
            true
        } else {
            false
        }
    })
}

/// Follows the map until the task is aborted: subscribes from the epoch the client has,
/// applies incrementals (a gap fetches a full map), resubscribes with a growing pause when the
/// stream ends or no monitor answers.
pub(crate) async fn follow(mon: Arc<MonClient>, tx: watch::Sender<Arc<ClusterMap>>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let have = tx.borrow().epoch;
        match mon.subscribe(have).await {
            Ok(mut stream) => {
                backoff = Duration::from_millis(50);
                loop {
                    let update = match stream.next().await {
                        Some(Ok(u)) => u,
                        Some(Err(s)) => {
                            info!(code = ?s.code(), msg = s.message(), "map stream ended");
                            break;
                        }
                        None => {
                            info!("the monitor closed the map stream");
                            break;
                        }
                    };
                    match update.update {
                        Some(Update::Full(m)) => {
                            publish(&tx, ClusterMap::from(m));
                        }
                        Some(Update::Incremental(i)) => {
                            let inc = Incremental::from(i);
                            let mut next = ClusterMap::clone(&tx.borrow());
                            if inc.epoch <= next.epoch {
                                continue; // already have it (e.g. from a GetMap refresh)
                            }
                            if let Err(e) = next.apply(&inc) {
                                // A gap (our map moved by GetMap meanwhile, or the stream
                                // skipped): resubscribe from what we have.
                                debug!(error = %e, "incremental does not apply; resubscribing");
                                break;
                            }
                            publish(&tx, next);
                        }
                        None => {}
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot subscribe to the map"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
