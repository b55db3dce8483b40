//! The nemesis: one fault every few seconds, chosen by a generator seeded from the run's seed.
//!
//! Faults (Ceph thrashosds' kill/revive and Vitastor test_heal's kill -9, plus a pause):
//! - `kill`: SIGKILL, down for 1-8 s, then restarted on its data;
//! - `pause`: SIGSTOP for 5-15 s (a stale primary: it wakes up believing it still leads), then
//!   SIGCONT;
//! - `restart`: SIGTERM (a clean stop), started again at once;
//! - `wipe`: SIGKILL, the image deleted, started again with the same uuid (same id, blank
//!   store: what backfill must fill).
//!
//! The target is drawn with weight 1 + (PGs of the pool it is primary for), favouring
//! primaries. Invariant: at most one OSD is unavailable (down, paused, or not yet up again in
//! the map) at any time, `size - min_size` of the size-3/min_size-2 pool: every fault ends by
//! bringing its OSD back and waiting until the map has it up before the next one is drawn. If
//! an OSD cannot be brought back, the nemesis stops (that is reported) rather than break the
//! invariant.
//!
//! Determinism: every draw of a step (gap, kind, target, duration) is made in a fixed order
//! whatever the outcome, so a seed gives the same schedule as long as the maps the targets are
//! drawn from agree (all OSDs up at each draw, which the invariant gives).

use std::time::{Duration, Instant};

use carmine_placement::pg_to_osds;
use rand::RngExt;

use crate::cluster::Cluster;
use crate::failover::Prober;
use crate::procs::OsdState;
use crate::workload::rng_for;

#[derive(Debug, Default, Clone)]
pub struct NemesisStats {
    pub kills: u64,
    pub stops: u64,
    pub restarts: u64,
    pub wipes: u64,
    /// Problems bringing OSDs back (each a violation).
    pub errors: Vec<String>,
    /// When the last fault ended (its OSD up again).
    pub last_fault_end: Option<Instant>,
    /// The OSD of the last fault.
    pub last_victim: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Pause,
    Restart,
    Wipe,
}

/// Progress line on stderr, stamped with the run's clock.
pub fn say(t0: Instant, msg: &str) {
    eprintln!("[{:6.1}s] {msg}", t0.elapsed().as_secs_f64());
}

/// Injects faults into `cluster` until `deadline`. `pool`: the pool whose primaries are
/// favoured.
/// `prober`: measures the failover time of every kill, pause and wipe (as tasks beside the
/// nemesis: the schedule does not wait for them).
pub async fn run(
    cluster: &mut Cluster,
    pool: u32,
    seed: u64,
    deadline: Instant,
    t0: Instant,
    mut prober: Option<&mut Prober>,
) -> NemesisStats {
    let mut rng = rng_for(seed, 1);
    let mut st = NemesisStats::default();
    loop {
        let gap = Duration::from_millis(rng.random_range(2000..5000u64));
        let roll = rng.random_range(0..100u32);
        let pick = rng.random_range(0.0..1.0f64);
        let down = Duration::from_millis(rng.random_range(1000..8000u64));
        let pause = Duration::from_secs(rng.random_range(5..=15u64));
        let wake = (Instant::now() + gap).min(deadline);
        tokio::time::sleep_until(wake.into()).await;
        if Instant::now() >= deadline {
            break;
        }
        let fault = match roll {
            0..35 => Fault::Kill,
            35..60 => Fault::Pause,
            60..80 => Fault::Restart,
            _ => Fault::Wipe,
        };
        let map = match cluster.map().await {
            Ok(m) => m,
            Err(e) => {
                say(t0, &format!("nemesis: no map ({e}), skipping a step"));
                continue;
            }
        };
        // Weight 1 + PGs led, over the running OSDs (all of them, by the invariant).
        let weights: Vec<(usize, f64)> = cluster
            .osds
            .iter()
            .enumerate()
            .filter(|(_, o)| o.state == OsdState::Running)
            .map(|(i, o)| {
                let led = map.pools.get(&pool).map_or(0, |p| {
                    (0..p.pg_num)
                        .filter(|&pg| pg_to_osds(&map, p, pg).first() == Some(&o.ready.id))
                        .count()
                });
                (i, 1.0 + led as f64)
            })
            .collect();
        let total: f64 = weights.iter().map(|w| w.1).sum();
        let mut at = pick * total;
        let Some(&(i, w)) = weights
            .iter()
            .find(|(_, w)| {
                at -= w;
                at < 0.0
            })
            .or(weights.last())
        else {
            say(t0, "nemesis: no running OSD to fault");
            break;
        };
        let id = cluster.osds[i].ready.id;
        let led = w as u64 - 1;
        let led_pgs: Vec<u32> = map.pools.get(&pool).map_or_else(Vec::new, |p| {
            (0..p.pg_num)
                .filter(|&pg| pg_to_osds(&map, p, pg).first() == Some(&id))
                .collect()
        });
        let mut measure = |kind: &'static str, signalled: Instant| {
            if let Some(p) = prober.as_deref_mut() {
                p.start(kind, id, led_pgs.clone(), signalled);
            }
        };
        let revived = match fault {
            Fault::Kill => {
                say(
                    t0,
                    &format!(
                        "nemesis: SIGKILL osd.{id} (primary of {led} PGs), down {:.1} s",
                        down.as_secs_f64()
                    ),
                );
                st.kills += 1;
                let signalled = Instant::now();
                cluster.osds[i].kill().await;
                measure("kill", signalled);
                tokio::time::sleep(down).await;
                cluster.start_osd(i).await
            }
            Fault::Pause => {
                say(
                    t0,
                    &format!(
                        "nemesis: SIGSTOP osd.{id} (primary of {led} PGs) for {} s",
                        pause.as_secs()
                    ),
                );
                st.stops += 1;
                let signalled = Instant::now();
                let stopped = cluster.osds[i].pause().await;
                measure("pause", signalled);
                if !stopped {
                    say(
                        t0,
                        &format!("nemesis: osd.{id}: not every thread stopped within 5 s"),
                    );
                }
                tokio::time::sleep(pause).await;
                cluster.osds[i].resume();
                cluster
                    .wait_up(i, Duration::from_secs(30), "was resumed")
                    .await
            }
            Fault::Restart => {
                say(
                    t0,
                    &format!("nemesis: restart osd.{id} (primary of {led} PGs; SIGTERM)"),
                );
                st.restarts += 1;
                cluster.osds[i].terminate(Duration::from_secs(20)).await;
                cluster.start_osd(i).await
            }
            Fault::Wipe => {
                say(
                    t0,
                    &format!("nemesis: wipe osd.{id} (primary of {led} PGs; SIGKILL, blank image)"),
                );
                st.wipes += 1;
                let signalled = Instant::now();
                cluster.osds[i].kill().await;
                measure("wipe", signalled);
                match cluster.osds[i].wipe() {
                    Ok(()) => cluster.start_osd(i).await,
                    Err(e) => Err(e.into()),
                }
            }
        };
        st.last_fault_end = Some(Instant::now());
        st.last_victim = Some(id);
        match revived {
            Ok(()) => say(t0, &format!("nemesis: osd.{id} up again")),
            Err(e) => {
                let msg = format!("nemesis: osd.{id} could not be brought back: {e}");
                say(t0, &format!("{msg}; no more faults this run"));
                st.errors.push(msg);
                break;
            }
        }
    }
    st
}
