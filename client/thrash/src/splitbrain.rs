//! Split brain, once per run (Vitastor's tests/test_splitbrain.sh): two OSDs, a pool of size 2
//! and min_size 1. Kill A; write to a PG on B alone (acknowledged); kill B; start A. A holds
//! the PG's older state and B, the last writer, is down: the PG must not go active, and a write
//! to it must not be acknowledged. Then start B: the PG goes active and the write B took alone
//! reads back.
//!
//! Why a cluster of its own: placement skips down OSDs, so in the main cluster (4+ OSDs) a PG
//! whose members go down moves to the spare OSDs instead of waiting for its old members; the
//! history rule is then exercised by the nemesis, but the "only the stale member is left"
//! case needs every other OSD down. Two OSDs make it exact, as in Vitastor, and leave the main
//! cluster's size - min_size invariant alone.

use std::path::Path;
use std::time::{Duration, Instant};

use carmine_client::{Client, ClientConfig};

use crate::admin::{self, AdminError};
use crate::cluster::{Cluster, ClusterError, Spec};
use crate::model;
use crate::nemesis::say;
use crate::procs::Bins;

#[derive(Debug, thiserror::Error)]
pub enum SplitBrainError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("client: {0}")]
    Client(#[from] carmine_client::Error),
    #[error("no object name maps to the chosen PG")]
    NoName,
}

/// What the phase found.
#[derive(Debug, Default, Clone)]
pub struct SplitBrainResult {
    /// The PG refused I/O with only its stale member up (`None`: the phase did not get there).
    pub refused: Option<bool>,
    /// The write B took alone was readable once B returned.
    pub write_survived: Option<bool>,
    /// What happened, for the report (violations first).
    pub violations: Vec<String>,
    pub notes: Vec<String>,
}

const POOL: &str = "splitbrain";

/// Runs the phase in `dir` (a fresh directory).
pub async fn run(
    bins: &Bins,
    dir: &Path,
    tag: &str,
    spec: &Spec,
    t0: Instant,
) -> Result<SplitBrainResult, SplitBrainError> {
    let spec = Spec {
        osds: 2,
        ..spec.clone()
    };
    say(
        t0,
        "split brain: starting a mon and 2 OSDs (pool size 2, min_size 1)",
    );
    let (mut c, creds) = Cluster::start(bins, dir, tag, &spec, "client.splitbrain").await?;
    let mut res = SplitBrainResult::default();
    let out = scenario(&mut c, creds, &mut res, t0).await;
    c.stop().await;
    out?;
    Ok(res)
}

/// A client whose ops give up after `timeout`.
async fn client(
    c: &Cluster,
    creds: &carmine_client::Credentials,
    timeout: Duration,
) -> Result<Client, SplitBrainError> {
    let mut cfg = ClientConfig::new(c.mon.addr.clone(), creds.clone()).plaintext();
    cfg.op_timeout = timeout;
    cfg.retry_budget = 10_000;
    Ok(Client::connect(cfg).await?)
}

async fn scenario(
    c: &mut Cluster,
    creds: carmine_client::Credentials,
    res: &mut SplitBrainResult,
    t0: Instant,
) -> Result<(), SplitBrainError> {
    let grace = Duration::from_secs(30);
    let pool = c.admin.pool_create(POOL, 8, 2, 1).await?;
    let cl = client(c, &creds, Duration::from_secs(20)).await?;
    // The PG of a first object, and a second object in the same PG for the probe write.
    let target = cl.locate(pool, "sb.0")?;
    let pg = target.pg;
    let probe = (1..10_000)
        .map(|i| format!("sb.{i}"))
        .find(|n| cl.locate(pool, n).is_ok_and(|t| t.pg == pg))
        .ok_or(SplitBrainError::NoName)?;
    let obj = "sb.0";
    let map = c.map().await?;
    let p = map.pools.get(&pool).ok_or(SplitBrainError::NoName)?.clone();
    let acting = carmine_placement::pg_to_osds(&map, &p, pg);
    say(
        t0,
        &format!("split brain: PG {pool}.{pg:x} acting {acting:?}"),
    );

    // Both members take seq 1.
    cl.write_full(pool, obj, &model::encode(obj, 0, 1, b"both"))
        .await?;
    // A = the second member, B = the primary: B, the last writer, ends up down.
    let (a, b) = (acting[1], acting[0]);
    let ia = c.by_id(a).ok_or(SplitBrainError::NoName)?;
    let ib = c.by_id(b).ok_or(SplitBrainError::NoName)?;

    say(
        t0,
        &format!("split brain: SIGKILL osd.{a}, write on osd.{b} alone"),
    );
    c.osds[ia].kill().await;
    c.wait_down(a, grace).await?;
    cl.refresh_map().await?;
    if let Err(e) = cl
        .write_full(pool, obj, &model::encode(obj, 0, 2, b"b-alone"))
        .await
    {
        res.violations.push(format!(
            "split brain: the write to PG {pool}.{pg:x} on osd.{b} alone (min_size 1) was not \
             acknowledged: {e}"
        ));
        return Ok(());
    }

    say(
        t0,
        &format!("split brain: SIGKILL osd.{b}, start osd.{a} alone"),
    );
    c.osds[ib].kill().await;
    c.wait_down(b, grace).await?;
    c.start_osd(ia).await?;

    // The PG's state, if the monitor reports states (a few seconds to peer).
    let mut state_says_active = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match c.admin.pg_list().await? {
            None => break,
            Some(pgs) => {
                if let Some(s) = pgs.iter().find(|s| s.pool == pool && s.pg == pg) {
                    state_says_active = Some(admin::is_active(s.state));
                    res.notes.push(format!(
                        "PG {pool}.{pg:x} with only osd.{a}: {}",
                        admin::state_name(s.state)
                    ));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A write to the PG must not be acknowledged; a read must not return the older value.
    let short = client(c, &creds, Duration::from_secs(5)).await?;
    let probe_acked = short
        .write_full(pool, &probe, &model::encode(&probe, 0, 1, b"probe"))
        .await
        .is_ok();
    let read = short.read(pool, obj, 0, 1 << 16).await;
    match &read {
        Ok(d) => {
            let o = model::observe(obj, 0, Some(d));
            if o != model::Observed::Value(2) {
                res.violations.push(format!(
                    "split brain: with only stale osd.{a} up, a read of {obj} answered {o:?} \
                     (the acknowledged write is seq 2)"
                ));
            }
        }
        Err(e) if e.is_not_found() => res.violations.push(format!(
            "split brain: with only stale osd.{a} up, a read of {obj} answered not found \
             (the acknowledged write is seq 2)"
        )),
        Err(_) => {}
    }
    let refused = !probe_acked && state_says_active != Some(true);
    res.refused = Some(refused);
    if !refused {
        res.violations.push(format!(
            "split brain: PG {pool}.{pg:x} served I/O with only its stale member osd.{a} up \
             (probe write acknowledged: {probe_acked}; monitor says active: {})",
            state_says_active.map_or("n/a".into(), |b| b.to_string())
        ));
    }
    say(
        t0,
        &format!(
            "split brain: with only osd.{a}: probe write acknowledged {probe_acked}, \
             refused = {refused}; starting osd.{b}"
        ),
    );

    c.start_osd(ib).await?;
    let back = client(c, &creds, Duration::from_secs(30)).await?;
    let got = match back.read(pool, obj, 0, 1 << 16).await {
        Ok(d) => model::observe(obj, 0, Some(&d)),
        Err(e) if e.is_not_found() => model::Observed::NotFound,
        Err(e) => model::Observed::Corrupt(format!("unreadable: {e}")),
    };
    let survived = got == model::Observed::Value(2);
    res.write_survived = Some(survived);
    if !survived {
        res.violations.push(format!(
            "split brain: after osd.{b} returned, {obj} reads {got:?}, not the write acknowledged \
             on osd.{b} alone (seq 2)"
        ));
    }

    // Both members back: once the PG is clean (if the monitor reports states), its copies
    // must agree (osd.{a} was brought up to date, the probe resolved one way on both).
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match c.admin.pg_list().await? {
            Some(pgs)
                if !pgs
                    .iter()
                    .any(|s| s.pool == pool && s.pg == pg && admin::is_active_clean(s.state)) =>
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            _ => break,
        }
    }
    let map = c.map().await?;
    let primary = map
        .pools
        .get(&pool)
        .and_then(|p| carmine_placement::pg_to_osds(&map, p, pg).first().copied());
    let addr = primary
        .and_then(|id| c.by_id(id))
        .map(|i| c.osds[i].ready.admin.clone());
    match addr {
        None => res.violations.push(format!(
            "split brain: PG {pool}.{pg:x} has no primary with both OSDs up"
        )),
        Some(addr) => match admin::scrub_full(&addr, pool, pg, 2).await {
            Ok(r) if r.acting.len() < 2 => res.violations.push(format!(
                "split brain: scrub of PG {pool}.{pg:x} compared only {:?} with both OSDs up",
                r.acting
            )),
            Ok(r) if r.inconsistent.is_empty() => res.notes.push(format!(
                "split brain: scrub of PG {pool}.{pg:x} after both returned: {} objects on {:?}, \
                 consistent",
                r.objects, r.acting
            )),
            Ok(r) => res.violations.push(format!(
                "split brain: after both returned, scrub of PG {pool}.{pg:x} finds {}",
                admin::describe_inconsistent(&r, 8)
            )),
            Err(e) => res
                .violations
                .push(format!("split brain: scrub of PG {pool}.{pg:x}: {e}")),
        },
    }
    Ok(())
}
