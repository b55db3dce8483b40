//! The cluster's fsid, fetched before the OSD brings anything up: an OSD on bdevstore records
//! it in a store it formats and refuses a store of another cluster, so it must know the fsid
//! before it touches the device. One `MonCluster.GetMap` call (the current map carries the
//! fsid) with the credentials the agent's session uses, on a throwaway current-thread runtime
//! (the agent thread does not exist yet), through the same monitor list, leader redirects and
//! backoff as the session.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use carmine_proto::v1::{self, mon_cluster_client::MonClusterClient};

use crate::run::{mon_bearer, with_token};
use crate::{AgentConfig, AgentError};

/// Longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often a still-unanswered wait is logged.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The cluster fsid from the monitor(s) of `cfg.mon_addr`, retried until a monitor answers or
/// `stop` is set ([`AgentError::Stopped`]). A map without an fsid is [`AgentError::NoFsid`].
pub fn cluster_fsid(cfg: &AgentConfig, stop: &AtomicBool) -> Result<String, AgentError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AgentError::Spawn)?;
    rt.block_on(fetch(cfg, stop))
}

async fn fetch(cfg: &AgentConfig, stop: &AtomicBool) -> Result<String, AgentError> {
    let token = mon_bearer(cfg).map_err(|e| AgentError::Config(e.to_string()))?;
    let mons: Vec<String> = cfg
        .mon_addr
        .split(',')
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
    if mons.is_empty() {
        return Err(AgentError::Config("no monitor address".into()));
    }
    let started = Instant::now();
    let mut last_warn = Instant::now();
    let mut backoff = Duration::from_millis(50);
    let mut which = 0usize;
    let mut redirect: Option<String> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(AgentError::Stopped);
        }
        let addr = redirect
            .take()
            .unwrap_or_else(|| mons[which % mons.len()].clone());
        let attempt = async {
            // The same transport security as the agent's session (TLS: https and the CA).
            let ch = cfg
                .client_tls
                .endpoint(&addr)?
                .connect_timeout(Duration::from_secs(2))
                .connect()
                .await?;
            let map = MonClusterClient::new(ch)
                .get_map(with_token(v1::GetMapRequest { epoch: 0 }, &token))
                .await?
                .into_inner();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(map)
        };
        match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(map)) if map.fsid.is_empty() => return Err(AgentError::NoFsid(addr)),
            Ok(Ok(map)) => {
                tracing::info!(mon = %addr, fsid = %map.fsid, "cluster fsid");
                return Ok(map.fsid);
            }
            Ok(Err(e)) => {
                let leader = e
                    .downcast_ref::<tonic::Status>()
                    .and_then(carmine_proto::leader_redirect);
                match leader {
                    Some(l) => redirect = Some(l),
                    None => {
                        tracing::debug!(mon = %addr, error = %e, "cluster fsid: no answer");
                        which = which.wrapping_add(1);
                    }
                }
            }
            Err(_) => which = which.wrapping_add(1),
        }
        if last_warn.elapsed() >= WARN_EVERY {
            last_warn = Instant::now();
            tracing::warn!(
                waited_s = started.elapsed().as_secs(),
                mon = %cfg.mon_addr,
                "waiting for the monitor: the cluster fsid is needed before the store is mounted"
            );
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
