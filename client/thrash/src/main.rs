//! # carmine-thrash
//!
//! A seeded failure test of a whole Carmine cluster (issue 12 item 7), run by `scripts/thrash`.
//!
//! It starts real processes, a `carmine-mon` and N `carmine-osd` daemons in the CI mode
//! ([`procs`]), creates a pool of size 3 and min_size 2, and for `--seconds` runs writer tasks
//! ([`workload`]) that write, read and remove self-describing objects through
//! `carmine-client` and judge every read against a model of acknowledged and unknown
//! mutations ([`model`]), while a nemesis ([`nemesis`]) kills, pauses, restarts and wipes OSDs,
//! never more than one unavailable at a time. Then it revives everything, waits for every PG
//! to be active+clean, reads every object back against the model, scrubs every PG, runs the
//! split-brain scenario on a 2-OSD cluster of its own ([`splitbrain`]), and greps every log
//! for panics.
//!
//! Output: the seed first; a summary (or with `--json` one JSON object on stdout, the rest on
//! stderr); any violation makes the exit code 1 and prints how to replay the seed. The nemesis
//! schedule, the fault targets (given the same maps), the object choices and the payloads
//! follow from the seed; op timing does not.
//!
//! The monitor runs with a 500 ms heartbeat and a 3 s down grace (`--down-grace-ms`), so a
//! killed or paused OSD is marked down about 3 s after it went silent.

mod admin;
mod bench;
mod cluster;
mod failover;
mod measure;
mod model;
mod nemesis;
mod procs;
mod splitbrain;
mod workload;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use carmine_client::{Client, ClientConfig};
use carmine_proto::v1::PgStateBit;
use clap::Parser;
use serde::Serialize;

use crate::cluster::{Cluster, Spec};
use crate::nemesis::say;
use crate::procs::Bins;
use crate::workload::{Shared, Writer};

/// A seeded failure test of a whole Carmine cluster.
#[derive(Debug, Clone, Parser)]
#[command(name = "carmine-thrash")]
struct Args {
    /// Length of the workload with faults, in seconds.
    #[arg(long, default_value_t = 90)]
    seconds: u64,
    /// Seed of the nemesis schedule and the object choices (default: random, printed first).
    #[arg(long)]
    seed: Option<u64>,
    /// Number of OSDs (at least 4: size 3 plus one to fail).
    #[arg(long, default_value_t = 4)]
    osds: usize,
    /// One JSON object on stdout (everything else on stderr).
    #[arg(long)]
    json: bool,
    /// Keep the run's directory (images, logs, configs); otherwise it is removed, except the
    /// logs and configs of a run that found a violation or could not be carried out.
    #[arg(long)]
    keep: bool,
    /// No faults at all: no nemesis and no split-brain phase (the workload and the final
    /// checks only).
    #[arg(long)]
    no_faults: bool,
    /// Skip the split-brain phase.
    #[arg(long)]
    no_splitbrain: bool,
    /// Writer tasks.
    #[arg(long, default_value_t = 4)]
    clients: u32,
    /// Objects per writer.
    #[arg(long, default_value_t = 16)]
    objects: usize,
    /// PGs of the pool.
    #[arg(long, default_value_t = 32)]
    pg_num: u32,
    /// The monitor's down grace (ms): how long an OSD may be silent before it is marked down.
    #[arg(long, default_value_t = 3000)]
    down_grace_ms: u64,
    /// The heartbeat interval the monitor gives the OSDs (ms).
    #[arg(long, default_value_t = 500)]
    heartbeat_ms: u64,
    /// Deadline of one client op, retries included (s): past it the op's outcome is unknown.
    #[arg(long, default_value_t = 8)]
    op_timeout: u64,
    /// How long to wait for every PG to be active+clean at the end (s).
    #[arg(long, default_value_t = 120)]
    clean_timeout: u64,
    /// Directory of carmine-mon and carmine-osd (default: this binary's).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where the run's directory is created.
    #[arg(long, default_value = "/var/tmp")]
    base_dir: PathBuf,
    /// Size of each OSD's aio image (MiB).
    #[arg(long, default_value_t = 256)]
    img_mib: u64,
    /// Hugepage memory of each OSD's DPDK/SPDK (MiB).
    #[arg(long, default_value_t = 128)]
    mem_mib: u32,
    /// Make a failover slower than this (seconds from the signal until every PG the victim led
    /// is served again) a violation; by default it is only reported against the target.
    #[arg(long)]
    max_failover_seconds: Option<f64>,
    /// Instead of the thrash run: the recovery throughput bench (fill the pool, wipe one OSD
    /// while a client keeps writing, time recovery and backfill until active+clean).
    #[arg(long)]
    recovery_bench: bool,
    /// Bench: data written before the wipe (MiB).
    #[arg(long, default_value_t = 768)]
    bench_mib: u64,
    /// Bench: size of each object of the fill (KiB; at most 4096, a push's limit).
    #[arg(long, default_value_t = 1024)]
    bench_object_kib: u64,
    /// Bench: concurrent writes of the fill.
    #[arg(long, default_value_t = 8)]
    bench_fill_depth: usize,
    /// Bench: objects each small writer overwrites in turn (a large number: every write during
    /// recovery goes to an object nobody misses).
    #[arg(long, default_value_t = 256)]
    bench_small_objects: u64,
    /// Bench: writer tasks of the client that keeps writing small (4 KiB) objects.
    #[arg(long, default_value_t = 2)]
    bench_writers: u32,
}

/// "debug" or "release": how this binary (and, through scripts/thrash, the daemons) was built.
pub fn build_name() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

#[derive(Debug, Default, Serialize)]
struct Ops {
    writes: u64,
    reads: u64,
    removes: u64,
    ok: u64,
    failed: u64,
    unknown: u64,
}

/// The target for `clean_after_last_fault_seconds`.
const CLEAN_TARGET_SECONDS: f64 = 60.0;

#[derive(Debug, Default, Serialize)]
struct Report {
    seed: u64,
    seconds: u64,
    osds: usize,
    ops: Ops,
    /// OSD down events the monitor marked (seen in the map).
    failovers: u64,
    /// PGs entering recovering / backfilling (from `PgList`; null while it is unimplemented).
    recoveries: Option<u64>,
    backfills: Option<u64>,
    recovered_objects: Option<u64>,
    recovered_bytes: Option<u64>,
    kills: u64,
    stops: u64,
    restarts: u64,
    wipes: u64,
    lost: u64,
    stale_reads: u64,
    corrupt: u64,
    /// 1: the PG refused I/O with only its stale member; 0: it served (a violation); null: the
    /// phase did not run or did not get there.
    splitbrain_refused: Option<u8>,
    inconsistent_pgs: u64,
    panics: u64,
    /// Seconds from the end of the last fault until every PG was active+clean.
    clean_seconds: Option<f64>,
    /// The same figure under the target's name (target: 60 s), and whether it was met.
    clean_after_last_fault_seconds: Option<f64>,
    clean_target_met: bool,
    /// "debug" or "release".
    build: &'static str,
    /// The monitor's down grace (s) and the failover target (grace + 2 s).
    down_grace_seconds: f64,
    failover_target_seconds: f64,
    /// Per SIGKILL / SIGSTOP / wipe fault: seconds until every PG the victim led was served
    /// again (a probe write acknowledged).
    failover_faults: Vec<failover::FailoverSample>,
    /// Over the faults whose victim led PGs; `None` without any.
    failover_seconds_max: Option<f64>,
    failover_seconds_p50: Option<f64>,
    /// Faults with a PG not served again within the probe cap (30 s).
    failover_unserved: u64,
    failover_target_met: bool,
    violations: Vec<String>,
    /// The first examples behind the counts.
    examples: Vec<String>,
    elapsed_seconds: f64,
    /// The run's directory, when it was kept.
    dir: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(random_seed);
    // The seed first, whatever happens next.
    if args.json {
        eprintln!("thrash: seed {seed}");
    } else {
        println!("thrash: seed {seed}");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    // One thread: the daemons' PR_SET_PDEATHSIG follows the thread that spawned them.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("thrash: cannot start a runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let dir = args
        .base_dir
        .join(format!("carmine-thrash-{seed}-{}", std::process::id()));
    if args.recovery_bench {
        return bench_main(&args, &rt, seed, &dir);
    }
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run(&args, seed, &dir) => Some(r),
            _ = interrupted() => None,
        }
    });
    // Every daemon was killed when `run` returned or was dropped.
    let report = match outcome {
        None => {
            eprintln!("thrash: interrupted (seed {seed}); every process it started is stopped");
            finish_dir(&dir, args.keep, false);
            return ExitCode::from(130);
        }
        Some(Err(e)) => {
            eprintln!("thrash: error: {e}");
            eprintln!("thrash FAILED (seed {seed}): replay with scripts/thrash --seed {seed}");
            let kept = finish_dir(&dir, args.keep, true);
            if let Some(k) = kept {
                eprintln!("thrash: logs kept in {}", k.display());
            }
            return ExitCode::from(2);
        }
        Some(Ok(mut r)) => {
            let failed = !r.violations.is_empty();
            r.dir = finish_dir(&dir, args.keep, failed).map(|d| d.display().to_string());
            r
        }
    };
    print_report(&args, &report);
    if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("thrash FAILED (seed {seed}): replay with scripts/thrash --seed {seed}");
        ExitCode::from(1)
    }
}

/// `--recovery-bench`: runs the bench instead of the thrash run.
fn bench_main(args: &Args, rt: &tokio::runtime::Runtime, seed: u64, dir: &Path) -> ExitCode {
    let t0 = Instant::now();
    let bins = bins(args);
    let outcome = rt.block_on(async {
        tokio::select! {
            r = bench::run(args, &bins, dir, t0) => Some(r),
            _ = interrupted() => None,
        }
    });
    match outcome {
        None => {
            eprintln!("thrash: interrupted; every process it started is stopped");
            finish_dir(dir, args.keep, false);
            ExitCode::from(130)
        }
        Some(Err(e)) => {
            eprintln!("thrash: recovery bench error (seed {seed}): {e}");
            if let Some(k) = finish_dir(dir, args.keep, true) {
                eprintln!("thrash: logs kept in {}", k.display());
            }
            ExitCode::from(2)
        }
        Some(Ok(r)) => {
            let failed = !r.violations.is_empty();
            if let Some(k) = finish_dir(dir, args.keep, failed) {
                eprintln!("thrash: files kept in {}", k.display());
            }
            bench::print(&r, args.json);
            if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

/// The daemons' binaries: `--bin-dir`, else this binary's directory.
fn bins(args: &Args) -> Bins {
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
            .unwrap_or_default(),
    };
    Bins {
        mon: bin_dir.join("carmine-mon"),
        osd: bin_dir.join("carmine-osd"),
    }
}

fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // Shorter numbers are easier to pass around; 2^32 seeds are plenty.
    (t ^ (u64::from(std::process::id()) << 20)) % 4_294_967_291
}

async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// Removes the run's directory unless `keep`; a failed run keeps its logs (`*.log`, configs).
/// The directory left, if any.
fn finish_dir(dir: &Path, keep: bool, failed: bool) -> Option<PathBuf> {
    if !dir.exists() {
        return None;
    }
    if keep {
        return Some(dir.into());
    }
    if failed {
        // Images are big and say little: drop them and the monitor's store, keep the text.
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    if p.file_name().is_some_and(|n| n == "mon") {
                        let _ = std::fs::remove_dir_all(&p);
                    } else {
                        stack.push(p);
                    }
                } else if p.extension().is_some_and(|x| x == "img") {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        return Some(dir.into());
    }
    let _ = std::fs::remove_dir_all(dir);
    None
}

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up the cluster: {0}")]
    Cluster(#[from] cluster::ClusterError),
    #[error("monitor: {0}")]
    Admin(#[from] admin::AdminError),
    #[error("client: {0}")]
    Client(#[from] carmine_client::Error),
    #[error("--osds must be at least 4 (a pool of size 3 and one OSD to fail), got {0}")]
    TooFewOsds(usize),
}

/// What the PG-state poller saw.
#[derive(Debug, Default)]
struct PgWatch {
    /// `PgList` answered at least once.
    available: bool,
    recoveries: u64,
    backfills: u64,
    /// Highest recovered counts per (pool, pg, primary): the counters are the primary's.
    recovered: HashMap<(u32, u32, u32), (u64, u64)>,
    last: HashMap<(u32, u32), u32>,
}

impl PgWatch {
    fn absorb(&mut self, pgs: &[carmine_proto::v1::PgStat]) {
        self.available = true;
        for s in pgs {
            let before = self.last.insert((s.pool, s.pg), s.state).unwrap_or(0);
            let entered = |bit| admin::has_bit(s.state, bit) && !admin::has_bit(before, bit);
            if entered(PgStateBit::PgStateRecovering) {
                self.recoveries += 1;
            }
            if entered(PgStateBit::PgStateBackfilling) {
                self.backfills += 1;
            }
            let primary = s.acting.first().copied().unwrap_or(u32::MAX);
            let e = self.recovered.entry((s.pool, s.pg, primary)).or_default();
            e.0 = e.0.max(s.recovered_objects);
            e.1 = e.1.max(s.recovered_bytes);
        }
    }
}

async fn run(args: &Args, seed: u64, dir: &Path) -> Result<Report, RunError> {
    if args.osds < 4 {
        return Err(RunError::TooFewOsds(args.osds));
    }
    let t0 = Instant::now();
    let bins = bins(args);
    let main_dir = dir.join("main");
    std::fs::create_dir_all(&main_dir).map_err(|source| RunError::Io {
        what: format!("mkdir {}", main_dir.display()),
        source,
    })?;
    let tag = format!("carmine-thrash-{}", std::process::id());
    let spec = Spec {
        osds: args.osds,
        img_mib: args.img_mib,
        mem_mib: args.mem_mib,
        heartbeat_ms: args.heartbeat_ms,
        down_grace_ms: args.down_grace_ms,
    };
    say(
        t0,
        &format!(
            "starting a mon and {} OSDs in {} (down grace {} ms)",
            args.osds,
            dir.display(),
            args.down_grace_ms
        ),
    );
    let (mut c, creds) = Cluster::start(&bins, &main_dir, &tag, &spec, "client.thrash").await?;
    let pool = c.admin.pool_create("thrash", args.pg_num, 3, 2).await?;
    let mut cfg = ClientConfig::new(c.mon.addr.clone(), creds.clone()).plaintext();
    cfg.op_timeout = Duration::from_secs(args.op_timeout);
    cfg.retry_budget = 100_000;
    let client = Arc::new(Client::connect(cfg).await?);
    client.pool(pool).await?;
    say(
        t0,
        &format!(
            "pool thrash: size 3, min_size 2, {} PGs; {} writers x {} objects for {} s{}",
            args.pg_num,
            args.clients,
            args.objects,
            args.seconds,
            if args.no_faults { ", no faults" } else { "" }
        ),
    );

    let shared = Arc::new(Shared {
        started: Some(t0),
        ..Default::default()
    });
    let writers: Vec<_> = (0..args.clients)
        .map(|w| {
            tokio::spawn(Writer::new(seed, w, args.objects).run(
                client.clone(),
                pool,
                shared.clone(),
            ))
        })
        .collect();
    // Failovers: up -> down transitions in the map the client follows.
    let watch_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failovers = {
        let (client, stop) = (client.clone(), watch_stop.clone());
        tokio::spawn(async move {
            let mut up: HashMap<u32, bool> = HashMap::new();
            let mut n = 0u64;
            let mut epoch = 0;
            while !stop.load(Ordering::Relaxed) {
                let m = client.map();
                if m.epoch != epoch {
                    epoch = m.epoch;
                    for (id, o) in &m.osds {
                        if up.insert(*id, o.up) == Some(true) && !o.up {
                            n += 1;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            n
        })
    };
    let clean_clock = Arc::new(std::sync::Mutex::new(measure::CleanClock::default()));
    // (the last fault's OSD, its latest boot epoch), once the faults are over.
    let fresh: Arc<std::sync::Mutex<Option<(u32, u64)>>> = Arc::default();
    let pg_watch = {
        let (a, stop, clock) = (c.admin.clone(), watch_stop.clone(), clean_clock.clone());
        let fresh = fresh.clone();
        let pg_num = args.pg_num;
        tokio::spawn(async move {
            let mut w = PgWatch::default();
            while !stop.load(Ordering::Relaxed) {
                match a.pg_list().await {
                    Ok(Some(pgs)) => {
                        w.absorb(&pgs);
                        let f = *lock(&fresh);
                        let clean = measure::all_active_clean_since(&pgs, pool, pg_num, f);
                        lock(&clock).observe(clean, Instant::now());
                    }
                    Ok(None) => break,
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            w
        })
    };

    // Failover probes go through a client of their own with a short op deadline (a probe to a
    // paused primary is superseded by the next one on a new map anyway).
    let mut pcfg = ClientConfig::new(c.mon.addr.clone(), creds.clone()).plaintext();
    pcfg.op_timeout = Duration::from_secs(5);
    pcfg.retry_budget = 100_000;
    let probe_client = Arc::new(Client::connect(pcfg).await?);
    let mut prober = failover::Prober::new(probe_client.clone(), pool, args.pg_num, t0);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let nem = if args.no_faults {
        tokio::time::sleep_until(deadline.into()).await;
        nemesis::NemesisStats::default()
    } else {
        nemesis::run(&mut c, pool, seed, deadline, t0, Some(&mut prober)).await
    };
    if let Some(id) = nem.last_victim {
        let up_from = c
            .map()
            .await
            .ok()
            .and_then(|m| m.osds.get(&id).map(|o| o.up_from));
        *lock(&fresh) = up_from.map(|e| (id, e));
    }
    let failover_faults = prober.finish().await;
    drop(probe_client);
    let mut violations: Vec<String> = nem.errors.clone();

    say(t0, "stopping the workload");
    shared.stop.store(true, Ordering::Relaxed);
    let mut done = Vec::new();
    for (w, h) in writers.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(args.op_timeout * 3 + 10), h).await {
            Ok(Ok(wr)) => done.push(wr),
            Ok(Err(e)) => violations.push(format!("writer {w} died: {e}")),
            Err(_) => violations.push(format!(
                "writer {w} did not finish its op within {} s of the stop",
                args.op_timeout * 3 + 10
            )),
        }
    }

    say(t0, "reviving every OSD");
    for e in c.revive_all().await {
        violations.push(format!("revive: {e}"));
    }

    say(t0, "waiting for every PG to be active+clean");
    let last_fault = nem.last_fault_end.unwrap_or_else(Instant::now);
    let last_fresh = *lock(&fresh);
    let clean_seconds = wait_clean(
        &c,
        pool,
        args,
        (last_fault, last_fresh),
        &clean_clock,
        &mut violations,
    )
    .await;

    // Read everything back with a fresh client.
    say(t0, "reading every object back");
    let mut cfg = ClientConfig::new(c.mon.addr.clone(), creds.clone()).plaintext();
    cfg.op_timeout = Duration::from_secs(20);
    cfg.retry_budget = 100_000;
    let reader = Arc::new(Client::connect(cfg).await?);
    let mut set = tokio::task::JoinSet::new();
    for mut w in done {
        let (reader, shared) = (reader.clone(), shared.clone());
        set.spawn(async move {
            for k in 0..w.objects.len() {
                w.read(&reader, pool, &shared, k, true).await;
            }
        });
    }
    while set.join_next().await.is_some() {}

    say(t0, "scrubbing every PG");
    let (inconsistent_pgs, examples_scrub) = scrub_all(&c, pool, &mut violations).await?;
    watch_stop.store(true, Ordering::Relaxed);
    let failovers = failovers.await.unwrap_or(0);
    let pgw = pg_watch.await.unwrap_or_default();
    let counts = shared.ops();
    drop(reader);
    drop(client);
    say(t0, "stopping the cluster");
    let mut logs = c.logs();
    c.stop().await;

    // Split brain on a cluster of its own.
    let mut splitbrain_refused = None;
    let mut examples_sb = Vec::new();
    if !args.no_splitbrain && !args.no_faults {
        let sb_dir = dir.join("splitbrain");
        std::fs::create_dir_all(&sb_dir).map_err(|source| RunError::Io {
            what: format!("mkdir {}", sb_dir.display()),
            source,
        })?;
        for n in ["mon.log", "osd0.log", "osd1.log"] {
            logs.push(sb_dir.join(n));
        }
        match splitbrain::run(&bins, &sb_dir, &format!("{tag}-sb"), &spec, t0).await {
            Ok(r) => {
                splitbrain_refused = r.refused.map(u8::from);
                if r.refused.is_none() {
                    violations.push("split brain: the scenario did not reach its check".into());
                }
                violations.extend(r.violations);
                examples_sb = r.notes;
            }
            Err(e) => violations.push(format!("split brain: {e}")),
        }
    }

    // Panics in any log.
    let mut panics = 0u64;
    for l in &logs {
        let p = procs::panics_in(l);
        if let Some(first) = p.first() {
            violations.push(format!(
                "{} panic(s) in {}: {first}",
                p.len(),
                l.strip_prefix(dir).unwrap_or(l).display()
            ));
        }
        panics += p.len() as u64;
    }

    let f = shared.findings_snapshot();
    let mut head = Vec::new();
    if f.lost > 0 {
        head.push(format!("lost: {} acknowledged mutations", f.lost));
    }
    if f.stale_reads > 0 {
        head.push(format!("stale_reads: {}", f.stale_reads));
    }
    if f.corrupt > 0 {
        head.push(format!("corrupt: {}", f.corrupt));
    }
    if inconsistent_pgs > 0 {
        head.push(format!("scrub: {inconsistent_pgs} inconsistent PGs"));
    }
    head.extend(violations);
    let mut examples = f.examples;
    examples.extend(examples_scrub);
    examples.extend(examples_sb);
    let grace = args.down_grace_ms as f64 / 1000.0;
    let target = grace + 2.0;
    let measured: Vec<f64> = failover_faults.iter().filter_map(|f| f.seconds).collect();
    let failover_unserved = failover_faults.iter().filter(|f| f.unserved > 0).count() as u64;
    let failover_seconds_max = measure::percentile(&measured, 1.0);
    let failover_seconds_p50 = measure::percentile(&measured, 0.5);
    let failover_target_met =
        failover_unserved == 0 && failover_seconds_max.is_none_or(|m| m <= target);
    if let Some(limit) = args.max_failover_seconds {
        for f in &failover_faults {
            if f.unserved > 0 || f.seconds.is_some_and(|s| s > limit) {
                head.push(format!(
                    "failover of {} osd.{} at {:.1}s: {} (limit {limit} s)",
                    f.kind,
                    f.osd,
                    f.at_seconds,
                    f.seconds.map_or_else(
                        || format!(
                            "{} of {} PGs not served within {} s",
                            f.unserved,
                            f.pgs,
                            failover::CAP.as_secs()
                        ),
                        |s| format!("{s:.2} s")
                    )
                ));
            }
        }
    }
    let recovered = pgw.available.then(|| {
        pgw.recovered
            .values()
            .fold((0, 0), |a, v| (a.0 + v.0, a.1 + v.1))
    });
    Ok(Report {
        seed,
        seconds: args.seconds,
        osds: args.osds,
        ops: counts,
        failovers,
        recoveries: pgw.available.then_some(pgw.recoveries),
        backfills: pgw.available.then_some(pgw.backfills),
        recovered_objects: recovered.map(|r| r.0),
        recovered_bytes: recovered.map(|r| r.1),
        kills: nem.kills,
        stops: nem.stops,
        restarts: nem.restarts,
        wipes: nem.wipes,
        lost: f.lost,
        stale_reads: f.stale_reads,
        corrupt: f.corrupt,
        splitbrain_refused,
        inconsistent_pgs,
        panics,
        clean_seconds,
        clean_after_last_fault_seconds: clean_seconds,
        clean_target_met: clean_seconds.is_some_and(|s| s <= CLEAN_TARGET_SECONDS),
        build: build_name(),
        down_grace_seconds: grace,
        failover_target_seconds: target,
        failover_faults,
        failover_seconds_max,
        failover_seconds_p50,
        failover_unserved,
        failover_target_met,
        violations: head,
        examples,
        elapsed_seconds: t0.elapsed().as_secs_f64(),
        dir: None,
    })
}

/// Waits (bounded by `--clean-timeout`) until every PG of `pool` is active+clean; the seconds
/// since `last_fault` it took, `None` if it did not happen or cannot be known (violations say
/// which).
/// The clock is fed by the run's PG poller too, so a pool that was clean before this wait
/// began counts from when the poller first saw it so.
async fn wait_clean(
    c: &Cluster,
    pool: u32,
    args: &Args,
    (last_fault, fresh): (Instant, Option<(u32, u64)>),
    clock: &std::sync::Mutex<measure::CleanClock>,
    violations: &mut Vec<String>,
) -> Option<f64> {
    let clean_deadline = Instant::now() + Duration::from_secs(args.clean_timeout);
    loop {
        match c.admin.pg_list().await {
            Ok(None) => {
                violations.push(
                    "pg states unavailable (MonAdmin.PgList answers UNIMPLEMENTED): \
                     active+clean not checked"
                        .into(),
                );
                return None;
            }
            Ok(Some(pgs)) => {
                let mine: Vec<_> = pgs.iter().filter(|s| s.pool == pool).collect();
                let unclean: Vec<String> = mine
                    .iter()
                    .filter(|s| !admin::is_active_clean(s.state))
                    .map(|s| format!("{}.{:x} {}", s.pool, s.pg, admin::state_name(s.state)))
                    .collect();
                let clean = unclean.is_empty()
                    && measure::all_active_clean_since(&pgs, pool, args.pg_num, fresh);
                let mut clk = lock(clock);
                clk.observe(clean, Instant::now());
                if clean {
                    return clk.seconds_after(last_fault);
                }
                drop(clk);
                if Instant::now() >= clean_deadline {
                    violations.push(format!(
                        "{} of {} PGs not active+clean {} s after the faults ended: {}",
                        unclean.len() + (args.pg_num as usize).saturating_sub(mine.len()),
                        args.pg_num,
                        args.clean_timeout,
                        unclean
                            .iter()
                            .take(8)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    return None;
                }
            }
            Err(e) => {
                if Instant::now() >= clean_deadline {
                    violations.push(format!("pg states: {e}"));
                    return None;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Scrubs every PG of `pool` on its primary: the number of inconsistent PGs and examples.
async fn scrub_all(
    c: &Cluster,
    pool: u32,
    violations: &mut Vec<String>,
) -> Result<(u64, Vec<String>), RunError> {
    let mut inconsistent_pgs = 0u64;
    let mut examples = Vec::new();
    let map = c.map().await?;
    let Some(p) = map.pools.get(&pool) else {
        violations.push(format!("scrub: pool {pool} is not in the map"));
        return Ok((0, examples));
    };
    for pg in 0..p.pg_num {
        let acting = carmine_placement::pg_to_osds(&map, p, pg);
        let Some(addr) = acting
            .first()
            .and_then(|&id| c.by_id(id))
            .map(|i| c.osds[i].ready.admin.clone())
        else {
            violations.push(format!("scrub {pool}.{pg:x}: no primary in the map"));
            continue;
        };
        match admin::scrub_full(&addr, pool, pg, p.size as usize).await {
            Ok(r) if r.acting.len() < p.size as usize => violations.push(format!(
                "scrub {pool}.{pg:x}: compared only {:?} with every OSD up",
                r.acting
            )),
            Ok(r) if r.inconsistent.is_empty() => {}
            Ok(r) => {
                inconsistent_pgs += 1;
                if examples.len() < 10 {
                    examples.push(format!(
                        "inconsistent PG {pool}.{pg:x} acting {:?}: {} objects, e.g. {}",
                        r.acting,
                        r.inconsistent.len(),
                        admin::describe_inconsistent(&r, 3)
                    ));
                }
            }
            Err(e) => violations.push(format!("scrub {pool}.{pg:x}: {e}")),
        }
    }
    Ok((inconsistent_pgs, examples))
}

impl Shared {
    fn ops(&self) -> Ops {
        let c = &self.counts;
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Ops {
            writes: g(&c.writes),
            reads: g(&c.reads),
            removes: g(&c.removes),
            ok: g(&c.ok),
            failed: g(&c.failed),
            unknown: g(&c.unknown),
        }
    }

    fn findings_snapshot(&self) -> workload::Findings {
        self.findings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain values: still consistent after a panic elsewhere.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("n/a".into(), |v| v.to_string())
}

fn print_report(args: &Args, r: &Report) {
    if args.json {
        match serde_json::to_string(r) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("thrash: cannot encode the report: {e}"),
        }
    }
    let mut s = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        s,
        "thrash: seed {} | {} s, {} OSDs | ops: {} writes, {} reads, {} removes; {} ok, {} failed, {} unknown",
        r.seed, r.seconds, r.osds, r.ops.writes, r.ops.reads, r.ops.removes, r.ops.ok, r.ops.failed, r.ops.unknown
    );
    let _ = writeln!(
        s,
        "thrash: faults: {} kills, {} stops, {} restarts, {} wipes; {} failovers; recoveries {}, backfills {}, recovered {} objects / {} bytes",
        r.kills,
        r.stops,
        r.restarts,
        r.wipes,
        r.failovers,
        opt(r.recoveries),
        opt(r.backfills),
        opt(r.recovered_objects),
        opt(r.recovered_bytes)
    );
    let _ = writeln!(
        s,
        "thrash: lost {}, stale_reads {}, corrupt {}, splitbrain_refused {}, inconsistent_pgs {}, panics {}, clean_seconds {} | {:.0} s end to end",
        r.lost,
        r.stale_reads,
        r.corrupt,
        opt(r.splitbrain_refused),
        r.inconsistent_pgs,
        r.panics,
        opt(r.clean_seconds.map(|c| format!("{c:.1}"))),
        r.elapsed_seconds
    );
    for f in &r.failover_faults {
        let _ = writeln!(
            s,
            "thrash: failover {} osd.{} at {:.1}s: {} PGs served again in {}{}",
            f.kind,
            f.osd,
            f.at_seconds,
            f.pgs,
            f.seconds.map_or_else(
                || format!(
                    "- ({} not within {} s)",
                    f.unserved,
                    failover::CAP.as_secs()
                ),
                |x| format!("{x:.2} s")
            ),
            if f.served_by_victim > 0 {
                format!(" ({} by the restarted victim)", f.served_by_victim)
            } else {
                String::new()
            }
        );
    }
    let met = |m: bool| if m { "met" } else { "NOT met" };
    let _ = writeln!(
        s,
        "thrash: failover max {} s, p50 {} s over {} faults; down grace {:.1} s, target grace + 2 = {:.1} s: {} | clean after last fault {} s, target {CLEAN_TARGET_SECONDS:.0} s: {} | {} build",
        opt(r.failover_seconds_max.map(|x| format!("{x:.2}"))),
        opt(r.failover_seconds_p50.map(|x| format!("{x:.2}"))),
        r.failover_faults.iter().filter(|f| f.pgs > 0).count(),
        r.down_grace_seconds,
        r.failover_target_seconds,
        met(r.failover_target_met),
        opt(r.clean_after_last_fault_seconds.map(|c| format!("{c:.1}"))),
        met(r.clean_target_met),
        r.build
    );
    for v in &r.violations {
        let _ = writeln!(s, "thrash: VIOLATION {v}");
    }
    for e in &r.examples {
        let _ = writeln!(s, "thrash:   {e}");
    }
    if let Some(d) = &r.dir {
        let _ = writeln!(s, "thrash: files kept in {d}");
    }
    if args.json {
        eprint!("{s}");
    } else {
        print!("{s}");
    }
}
