//! The recovery throughput bench (`scripts/thrash --recovery-bench`; issue 12 target:
//! recovery and backfill move at least 100 MB/s on this machine while a client keeps writing).
//!
//! 1. A mon and `--osds` OSDs (images sized for the fill), a pool of size 3 / min_size 2.
//! 2. Fill: `--bench-mib` of `--bench-object-kib` objects (`fill.<i>`), `--bench-fill-depth`
//!    writes in flight. Then wait for every PG to be active+clean.
//! 3. A client keeps writing 4 KiB objects (`small.<w>.<k>`, `--bench-small-objects` per writer
//!    task, overwritten in turn) from here to the end; its IOPS over 5 s is the "before"
//!    figure. With many objects the writes during recovery go to objects no OSD misses, with
//!    few (the default 256) to objects the wiped OSD misses.
//! 4. Wipe the last OSD: SIGKILL, image deleted, started again (same id, blank store). The
//!    recovery window runs from when the map has it up again until `PgList` shows every PG
//!    active+clean with every PG that has the wiped OSD in its acting set in an interval that
//!    began at or after its boot (`up_from`), so a report from before the wipe cannot end it.
//! 5. Figures: recovered bytes (the primaries' `PgStat.recovered_bytes` of those intervals,
//!    [`RecoveredTally`]) / window = `recovery_mb_per_s`; beside it `expected_bytes`, the bytes
//!    of every object placed on the wiped OSD (what it must be given back, whoever counts it:
//!    `recovered_bytes` counts only the data-plane pushes of an active primary, not what a
//!    primary pulls for itself (`OsdAdmin.PgPush`) before it activates, so for PGs the wiped
//!    OSD leads it falls short), `expected_mb_per_s` over the same window, the time until
//!    every PG was active, and the client's IOPS during the window against before. The CPU
//!    each OSD used during the window (from /proc) hints at what bounds the figure.
//!
//! PG states come from the primaries' heartbeats (every `--heartbeat-ms`) and are polled every
//! 200 ms, so the window's end is late by up to about one heartbeat plus a poll.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carmine_client::{Client, ClientConfig};
use carmine_placement::{object_to_pg, pg_to_osds};
use serde::Serialize;

use crate::cluster::{Cluster, Spec};
use crate::measure::{self, RecoveredTally};
use crate::nemesis::say;
use crate::procs::Bins;
use crate::{Args, RunError};

/// Size of the objects the client keeps writing during the bench.
const SMALL: usize = 4096;
/// How long the "before" IOPS is measured.
const BEFORE: Duration = Duration::from_secs(5);
/// The longest a fill or a recovery may take.
const LIMIT: Duration = Duration::from_secs(900);
/// The biggest object a push can carry (the wire's max_io_size).
const MAX_OBJECT_KIB: u64 = 4096;

#[derive(Debug, Default, Serialize)]
pub struct BenchReport {
    pub build: &'static str,
    pub osds: usize,
    pub pg_num: u32,
    pub object_bytes: u64,
    pub fill_objects: u64,
    pub fill_bytes: u64,
    pub fill_seconds: f64,
    /// Client write throughput of the fill (size 3: each byte is written three times).
    pub fill_mb_per_s: Option<f64>,
    pub wiped_osd: u32,
    /// From the SIGKILL until the blank OSD was up in the map again.
    pub restart_seconds: f64,
    pub recovered_bytes: u64,
    pub recovered_objects: u64,
    /// Bytes of every object placed on the wiped OSD when it was wiped.
    pub expected_bytes: u64,
    pub recovery_seconds: f64,
    /// From the OSD's return until every PG was active (serving I/O) again: a PG the wiped OSD
    /// leads pulls its own missing objects before it goes active.
    pub all_active_seconds: Option<f64>,
    pub recovery_mb_per_s: Option<f64>,
    /// `expected_bytes` over the same window.
    pub expected_mb_per_s: Option<f64>,
    pub client_iops_before: Option<f64>,
    pub client_iops_during: Option<f64>,
    pub client_iops_ratio: Option<f64>,
    /// The client's IOPS over the part of the window after every PG was active again (the
    /// rest of recovery and backfill, with no PG blocked in peering).
    pub client_iops_after_active: Option<f64>,
    pub client_errors: u64,
    /// CPU used during the recovery window, in % of one core, per OSD id (and the monitor).
    pub osd_cpu_percent: HashMap<u32, f64>,
    pub mon_cpu_percent: Option<f64>,
    pub target_mb_per_s: f64,
    pub target_met: bool,
    pub violations: Vec<String>,
}

/// The bench's target (MB/s).
const TARGET_MB_PER_S: f64 = 100.0;

pub async fn run(
    args: &Args,
    bins: &Bins,
    dir: &Path,
    t0: Instant,
) -> Result<BenchReport, RunError> {
    if args.osds < 4 {
        return Err(RunError::TooFewOsds(args.osds));
    }
    let object_kib = args.bench_object_kib.clamp(1, MAX_OBJECT_KIB);
    let object_bytes = object_kib * 1024;
    let fill_objects = (args.bench_mib * 1024).div_ceil(object_kib);
    // Each OSD holds about 3/osds of the data, unevenly over 32 PGs: give it all of it plus
    // room for the store's own metadata.
    let img_mib = args.img_mib.max(args.bench_mib + 512);
    let spec = Spec {
        osds: args.osds,
        img_mib,
        mem_mib: args.mem_mib,
        heartbeat_ms: args.heartbeat_ms,
        down_grace_ms: args.down_grace_ms,
    };
    let main_dir = dir.join("bench");
    std::fs::create_dir_all(&main_dir).map_err(|source| RunError::Io {
        what: format!("mkdir {}", main_dir.display()),
        source,
    })?;
    say(
        t0,
        &format!(
            "recovery bench ({} build): a mon and {} OSDs ({img_mib} MiB images) in {}",
            crate::build_name(),
            args.osds,
            dir.display()
        ),
    );
    let tag = format!("carmine-thrash-{}", std::process::id());
    let (mut c, creds) = Cluster::start(bins, &main_dir, &tag, &spec, "client.bench").await?;
    let pool = c.admin.pool_create("bench", args.pg_num, 3, 2).await?;
    let mut cfg = ClientConfig::new(c.mon.addr.clone(), creds.clone()).plaintext();
    cfg.op_timeout = Duration::from_secs(60);
    cfg.retry_budget = 100_000;
    let client = Arc::new(Client::connect(cfg).await?);
    client.pool(pool).await?;
    let mut r = BenchReport {
        build: crate::build_name(),
        osds: args.osds,
        pg_num: args.pg_num,
        object_bytes,
        fill_objects,
        fill_bytes: fill_objects * object_bytes,
        target_mb_per_s: TARGET_MB_PER_S,
        ..Default::default()
    };

    // Fill.
    say(
        t0,
        &format!(
            "filling: {fill_objects} objects of {object_kib} KiB ({} MiB), {} in flight",
            fill_objects * object_kib / 1024,
            args.bench_fill_depth
        ),
    );
    let fill_start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut fillers = tokio::task::JoinSet::new();
    for _ in 0..args.bench_fill_depth.max(1) {
        let (client, next) = (client.clone(), next.clone());
        fillers.spawn(async move {
            let mut data = vec![0u8; object_bytes as usize];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= fill_objects {
                    return Ok(());
                }
                // Distinct content per object (a store that dedups or compresses gains nothing).
                for (j, b) in data.iter_mut().enumerate() {
                    *b = (i as usize).wrapping_mul(31).wrapping_add(j) as u8;
                }
                client.write_full(pool, &fill_name(i), &data).await?;
            }
        });
    }
    while let Some(res) = fillers.join_next().await {
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(RunError::Client(e)),
            Err(e) => {
                r.violations.push(format!("a fill task died: {e}"));
                return Ok(finish(c, r).await);
            }
        }
    }
    let fill = fill_start.elapsed();
    r.fill_seconds = fill.as_secs_f64();
    r.fill_mb_per_s = measure::mb_per_s(r.fill_bytes, fill);
    say(
        t0,
        &format!(
            "filled in {:.1} s ({} MB/s of client writes)",
            r.fill_seconds,
            fmt(r.fill_mb_per_s)
        ),
    );
    if !wait_all_clean(
        &c,
        pool,
        args.pg_num,
        (0, u32::MAX),
        &mut RecoveredTally::default(),
        &mut None,
        &AtomicU64::new(0),
    )
    .await
    {
        r.violations
            .push("PGs not active+clean after the fill".into());
        return Ok(finish(c, r).await);
    }

    // The client that keeps writing.
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let small_objects = args.bench_small_objects.max(1);
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..args.bench_writers.max(1) {
        let (client, stop, ops, errors) =
            (client.clone(), stop.clone(), ops.clone(), errors.clone());
        writers.spawn(async move {
            let data = vec![w as u8; SMALL];
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("small.{w}.{}", k % small_objects);
                match client.write_full(pool, &name, &data).await {
                    Ok(()) => ops.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
                k += 1;
            }
        });
    }
    // Let the writers warm up (connections), then count.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b0 = ops.load(Ordering::Relaxed);
    let tb = Instant::now();
    tokio::time::sleep(BEFORE).await;
    r.client_iops_before = measure::per_second(ops.load(Ordering::Relaxed) - b0, tb.elapsed());

    // What the victim holds: every object placed in a PG it is a member of (a writer has
    // written at most all the ops so far).
    let written = ops.load(Ordering::Relaxed) + errors.load(Ordering::Relaxed) + 1;
    let victim = args.osds - 1;
    let id = c.osds[victim].ready.id;
    r.wiped_osd = id;
    let map = c.map().await?;
    if let Some(p) = map.pools.get(&pool) {
        let on_victim = |name: &str| {
            object_to_pg(name.as_bytes(), p.pg_num)
                .is_ok_and(|pg| pg_to_osds(&map, p, pg).contains(&id))
        };
        let fills = (0..fill_objects)
            .filter(|&i| on_victim(&fill_name(i)))
            .count() as u64;
        let smalls = (0..args.bench_writers.max(1))
            .flat_map(|w| (0..written.min(small_objects)).map(move |k| format!("small.{w}.{k}")))
            .filter(|n| on_victim(n))
            .count() as u64;
        r.expected_bytes = fills * object_bytes + smalls * SMALL as u64;
    }

    say(
        t0,
        &format!("wiping osd.{id} (SIGKILL, blank image, restart)"),
    );
    let killed = Instant::now();
    c.osds[victim].kill().await;
    if let Err(e) = c.osds[victim].wipe() {
        r.violations.push(format!("wipe: {e}"));
        return Ok(finish(c, r).await);
    }
    if let Err(e) = c.start_osd(victim).await {
        r.violations
            .push(format!("restart of the wiped osd.{id}: {e}"));
        return Ok(finish(c, r).await);
    }
    let up = Instant::now();
    r.restart_seconds = up.duration_since(killed).as_secs_f64();
    let o0 = ops.load(Ordering::Relaxed);
    let cpu0 = cpu_of(&c);
    let up_from = c
        .map()
        .await
        .ok()
        .and_then(|m| m.osds.get(&id).map(|o| o.up_from))
        .unwrap_or(0);
    say(
        t0,
        &format!(
            "osd.{id} up again (epoch {up_from}) {:.1} s after the kill; recovering {} MB onto it",
            r.restart_seconds,
            r.expected_bytes / 1_000_000
        ),
    );
    let mut tally = RecoveredTally::default();
    let mut active_at = None;
    let clean = wait_all_clean(
        &c,
        pool,
        args.pg_num,
        (up_from, id),
        &mut tally,
        &mut active_at,
        &ops,
    )
    .await;
    let clean_at = Instant::now();
    r.all_active_seconds =
        active_at.map(|(t, _): (Instant, u64)| t.duration_since(up).as_secs_f64());
    let window = up.elapsed();
    let o1 = ops.load(Ordering::Relaxed);
    let cpu1 = cpu_of(&c);
    stop.store(true, Ordering::Relaxed);
    while writers.join_next().await.is_some() {}
    if !clean {
        r.violations.push(format!(
            "PGs not active+clean within {} s of the wiped OSD's restart",
            LIMIT.as_secs()
        ));
    }
    let (bytes, objects) = tally.total();
    r.recovered_bytes = bytes;
    r.recovered_objects = objects;
    r.recovery_seconds = window.as_secs_f64();
    r.recovery_mb_per_s = measure::mb_per_s(bytes, window);
    r.expected_mb_per_s = measure::mb_per_s(r.expected_bytes, window);
    r.client_iops_during = measure::per_second(o1 - o0, window);
    r.client_iops_ratio = r
        .client_iops_during
        .zip(r.client_iops_before)
        .and_then(|(d, b)| measure::ratio(d, b));
    r.client_iops_after_active =
        active_at.and_then(|(t, n)| measure::per_second(o1 - n, clean_at.duration_since(t)));
    r.client_errors = errors.load(Ordering::Relaxed);
    let secs = window.as_secs_f64();
    for (osd, before) in &cpu0.0 {
        if let Some(after) = cpu1.0.get(osd) {
            r.osd_cpu_percent
                .insert(*osd, 100.0 * (after - before) / secs);
        }
    }
    r.mon_cpu_percent = cpu0.1.zip(cpu1.1).map(|(a, b)| 100.0 * (b - a) / secs);
    r.target_met = r.recovery_mb_per_s.is_some_and(|m| m >= TARGET_MB_PER_S);
    drop(client);
    Ok(finish(c, r).await)
}

fn fill_name(i: u64) -> String {
    format!("fill.{i}")
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.1}"))
}

/// CPU seconds used so far by each running OSD (by id) and by the monitor.
fn cpu_of(c: &Cluster) -> (HashMap<u32, f64>, Option<f64>) {
    let osds = c
        .osds
        .iter()
        .filter_map(|o| Some((o.ready.id, measure::cpu_seconds(o.pid()?)?)))
        .collect();
    (osds, c.mon.pid().and_then(measure::cpu_seconds))
}

/// Polls `PgList` every 200 ms (up to [`LIMIT`]) until every PG of `pool` is active+clean and
/// every PG with `osd` in its acting set is in an interval since `from_epoch`; feeds `tally`
/// and sets `active_at` (with the client ops then, from `ops`) when every PG is first seen
/// active in such an interval.
async fn wait_all_clean(
    c: &Cluster,
    pool: u32,
    pg_num: u32,
    (from_epoch, osd): (u64, u32),
    tally: &mut RecoveredTally,
    active_at: &mut Option<(Instant, u64)>,
    ops: &AtomicU64,
) -> bool {
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        if let Ok(Some(pgs)) = c.admin.pg_list().await {
            tally.absorb(&pgs, pool, from_epoch.max(1));
            let fresh = pgs
                .iter()
                .filter(|s| s.pool == pool && s.acting.contains(&osd))
                .all(|s| s.interval_since >= from_epoch);
            let mine = pgs.iter().filter(|s| s.pool == pool);
            if fresh
                && active_at.is_none()
                && mine.clone().count() as u32 == pg_num
                && mine.clone().all(|s| crate::admin::is_active(s.state))
            {
                *active_at = Some((Instant::now(), ops.load(Ordering::Relaxed)));
            }
            if fresh && measure::all_active_clean(&pgs, pool, pg_num) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn finish(mut c: Cluster, r: BenchReport) -> BenchReport {
    c.stop().await;
    r
}

/// Prints the bench's figures (one JSON object on stdout with `json`).
pub fn print(r: &BenchReport, json: bool) {
    if json {
        match serde_json::to_string(r) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("thrash: cannot encode the report: {e}"),
        }
    }
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "bench: {} build, {} OSDs, {} PGs; fill {} x {} KiB in {:.1} s ({} MB/s)",
        r.build,
        r.osds,
        r.pg_num,
        r.fill_objects,
        r.object_bytes / 1024,
        r.fill_seconds,
        fmt(r.fill_mb_per_s)
    );
    let _ = writeln!(
        s,
        "bench: wiped osd.{} (up again {:.1} s after the kill); every PG active {} s later, active+clean {:.1} s later: recovered {} bytes / {} objects -> recovery_mb_per_s {} (target {:.0}: {}); expected on the OSD {} bytes -> {} MB/s",
        r.wiped_osd,
        r.restart_seconds,
        fmt(r.all_active_seconds),
        r.recovery_seconds,
        r.recovered_bytes,
        r.recovered_objects,
        fmt(r.recovery_mb_per_s),
        r.target_mb_per_s,
        if r.target_met { "met" } else { "NOT met" },
        r.expected_bytes,
        fmt(r.expected_mb_per_s)
    );
    let mut cpu: Vec<_> = r.osd_cpu_percent.iter().collect();
    cpu.sort_by_key(|(id, _)| **id);
    let cpu: Vec<String> = cpu
        .iter()
        .map(|(id, p)| format!("osd.{id} {p:.0}%"))
        .collect();
    let _ = writeln!(
        s,
        "bench: client 4 KiB writes: {} IOPS before, {} during (ratio {}; {} once every PG was active), {} errors | CPU during recovery: {}, mon {}%",
        fmt(r.client_iops_before),
        fmt(r.client_iops_during),
        r.client_iops_ratio.map_or("n/a".into(), |x| format!("{x:.2}")),
        fmt(r.client_iops_after_active),
        r.client_errors,
        cpu.join(", "),
        fmt(r.mon_cpu_percent)
    );
    for v in &r.violations {
        let _ = writeln!(s, "bench: VIOLATION {v}");
    }
    if json {
        eprint!("{s}");
    } else {
        print!("{s}");
    }
}
