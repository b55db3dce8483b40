//! Failover time (issue 12 target: a killed OSD's PGs serve again within grace + 2 s).
//!
//! For every SIGKILL, SIGSTOP and wipe (SIGKILL) fault the nemesis hands this the PGs the
//! victim led in the map at the moment of the fault and the instant of the signal. One task
//! per PG then writes a small probe object that places in that PG (`probe.<pg>.<i>`) through
//! a client of its own until a write is acknowledged: the PG is served again, end to end. The
//! fault's failover time is that of its slowest PG.
//!
//! A probe sent to a paused primary would wait for its whole op deadline, so a further probe
//! is sent whenever the client's map changes (and every second while none is in flight), up
//! to [`MAX_IN_FLIGHT`] per PG; the first acknowledged one counts. Each PG is given up after
//! [`CAP`] (counted as not served). The probes run as tasks beside the nemesis, so they never
//! delay or change its schedule; they only add writes of probe objects, which the model does
//! not check (scrub still compares them).
//!
//! Who served: the primary of the PG in the client's map when the probe was acknowledged. A
//! SIGKILLed OSD restarted before the monitor marked it down serves its PGs again itself;
//! such PGs are counted in `served_by_victim`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use carmine_client::Client;
use carmine_placement::pg_to_osds;
use serde::Serialize;
use tokio::task::JoinSet;

/// A PG not served again within this long after the signal counts as not served.
pub const CAP: Duration = Duration::from_secs(30);
/// Probes of one PG in flight at once.
const MAX_IN_FLIGHT: usize = 4;

/// One fault's measurement.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverSample {
    /// "kill", "pause" or "wipe".
    pub kind: &'static str,
    pub osd: u32,
    /// Seconds since the run started when the signal was sent.
    pub at_seconds: f64,
    /// PGs the victim led when the fault was drawn.
    pub pgs: usize,
    /// Seconds from the signal until every one of them was served again; `None` if one was
    /// not within [`CAP`].
    pub seconds: Option<f64>,
    /// PGs not served within [`CAP`].
    pub unserved: usize,
    /// PGs whose probe was acknowledged while the victim was their primary again.
    pub served_by_victim: usize,
}

/// Starts probes and collects their measurements.
pub struct Prober {
    client: Arc<Client>,
    pool: u32,
    names: Arc<Vec<String>>,
    t0: Instant,
    faults: JoinSet<FailoverSample>,
}

impl Prober {
    pub fn new(client: Arc<Client>, pool: u32, pg_num: u32, t0: Instant) -> Prober {
        Prober {
            client,
            pool,
            names: Arc::new(crate::measure::probe_names(pg_num)),
            t0,
            faults: JoinSet::new(),
        }
    }

    /// Measures fault `kind` of `osd` signalled at `signalled`, whose led PGs are `pgs`.
    pub fn start(&mut self, kind: &'static str, osd: u32, pgs: Vec<u32>, signalled: Instant) {
        let (client, pool, names) = (self.client.clone(), self.pool, self.names.clone());
        let at_seconds = signalled.saturating_duration_since(self.t0).as_secs_f64();
        self.faults.spawn(async move {
            let mut per_pg = JoinSet::new();
            for &pg in &pgs {
                let Some(name) = names.get(pg as usize).cloned() else {
                    continue;
                };
                let client = client.clone();
                per_pg.spawn(async move {
                    let served = probe_pg(&client, pool, &name, signalled).await;
                    let by_victim = served.is_some() && {
                        let map = client.map();
                        map.pools
                            .get(&pool)
                            .is_some_and(|p| pg_to_osds(&map, p, pg).first() == Some(&osd))
                    };
                    (served, by_victim)
                });
            }
            let (mut worst, mut unserved, mut by_victim) = (0.0f64, 0, 0);
            while let Some(r) = per_pg.join_next().await {
                match r {
                    Ok((Some(d), v)) => {
                        worst = worst.max(d.as_secs_f64());
                        by_victim += usize::from(v);
                    }
                    _ => unserved += 1,
                }
            }
            FailoverSample {
                kind,
                osd,
                at_seconds,
                pgs: pgs.len(),
                seconds: (unserved == 0 && !pgs.is_empty()).then_some(worst),
                unserved,
                served_by_victim: by_victim,
            }
        });
    }

    /// Every measurement, in the order of the faults (each is bounded by [`CAP`]).
    pub async fn finish(mut self) -> Vec<FailoverSample> {
        let mut v = Vec::new();
        while let Some(r) = self.faults.join_next().await {
            if let Ok(s) = r {
                v.push(s);
            }
        }
        v.sort_by(|a, b| a.at_seconds.total_cmp(&b.at_seconds));
        v
    }
}

/// Writes probes to `name` until one is acknowledged: the time since `signalled`, or `None`
/// after [`CAP`].
async fn probe_pg(
    client: &Arc<Client>,
    pool: u32,
    name: &str,
    signalled: Instant,
) -> Option<Duration> {
    let deadline = signalled + CAP;
    let mut inflight: JoinSet<bool> = JoinSet::new();
    let mut epoch = 0;
    let mut last_sent = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline {
            inflight.abort_all();
            return None;
        }
        let e = client.epoch();
        let idle = inflight.is_empty() && now.duration_since(last_sent) >= Duration::from_secs(1);
        if inflight.len() < MAX_IN_FLIGHT && (e != epoch || idle) {
            epoch = e;
            last_sent = now;
            let (client, name) = (client.clone(), name.to_string());
            inflight.spawn(async move {
                client
                    .write_full(pool, &name, b"carmine-thrash failover probe")
                    .await
                    .is_ok()
            });
        }
        tokio::select! {
            Some(r) = inflight.join_next(), if !inflight.is_empty() => {
                if matches!(r, Ok(true)) {
                    let took = signalled.elapsed();
                    inflight.abort_all();
                    return Some(took);
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}
