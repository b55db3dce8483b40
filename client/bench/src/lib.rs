//! # carmine-bench: the engine of `carmine bench`
//!
//! Like `rados bench`: load a pool with `--clients` independent [`Client`]s, each keeping
//! `--concurrency` ops in flight, for `--seconds`, then report ops, IOPS, MB/s (10⁶ bytes) and
//! latency percentiles from an HDR histogram.
//!
//! ## Modes
//!
//! - `write`: `write_full` of `block_size` bytes to objects `<prefix>_<n>`, `n` cycling over
//!   `0..objects`. The run lasts `duration` **and** at least one full pass over the objects, so
//!   a later read run finds every object (unless an op failed: then it ends at `duration`).
//! - `seq`: reads `block_size` bytes of those objects in order (cycling) for `duration`.
//! - `rand`: reads them in random order for `duration`.
//!
//! The object set depends only on `prefix` and `objects`, so a `rand` run finds what a `write`
//! run with the same two values left.
//!
//! ## Probes
//!
//! `pause` makes every worker sleep that long before each op, and `max_ops` ends the run after
//! that many ops (whatever `duration` says). With one client and `concurrency` 1 this measures
//! the latency of an op that finds the cluster idle (e.g. an adaptive OSD shard asleep), one
//! sample per op, instead of a loaded cluster's.
//!
//! ## Verification
//!
//! Written data is [`pattern::fill`]`(name, 0)`, a pure function of the object name. Reads
//! check every byte (unless `verify` is off) and the length (a read shorter than `block_size`
//! is a mismatch: read with the block size you wrote with). Mismatches and op errors are
//! counted and reported; the CLI exits non-zero when either is non-zero.
//!
//! ## Invariants
//!
//! - A latency sample is the time of one client op, retries included, in µs; it is recorded
//!   into the run's histogram and into the current second's (the progress line's p99).
//! - Workers never busy-wait: each awaits its op; the progress ticker sleeps a second.

pub mod pattern;
pub mod shard;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use carmine_client::{Client, ClientConfig, ClientStats};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::Instant;
use thiserror::Error;

/// Longest latency the histograms hold (longer samples are clamped to it).
const MAX_LATENCY_US: u64 = 120_000_000;

/// What the run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Write,
    Seq,
    Rand,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Write => "write",
            Mode::Seq => "seq",
            Mode::Rand => "rand",
        })
    }
}

/// The run's parameters.
#[derive(Debug, Clone, Serialize)]
pub struct BenchConfig {
    pub mode: Mode,
    pub pool: String,
    #[serde(rename = "seconds", serialize_with = "secs")]
    pub duration: Duration,
    pub block_size: u32,
    pub objects: u64,
    /// Ops in flight per client.
    pub concurrency: usize,
    /// Independent clients (own map, own connections).
    pub clients: usize,
    pub prefix: String,
    pub verify: bool,
    /// Sleep of each worker before each op (zero: none).
    #[serde(rename = "pause_ms", serialize_with = "millis")]
    pub pause: Duration,
    /// Ops after which the run ends (None: `duration` alone decides).
    pub max_ops: Option<u64>,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl BenchConfig {
    /// Object `n`'s name.
    pub fn object_name(&self, n: u64) -> String {
        format!("{}_{n}", self.prefix)
    }
}

#[derive(Debug, Error)]
pub enum BenchError {
    #[error("bad parameters: {0}")]
    Config(String),
    #[error(transparent)]
    Client(#[from] carmine_client::Error),
    #[error("histogram: {0}")]
    Histogram(String),
    #[error("a bench worker failed: {0}")]
    Worker(String),
    /// Setting up or stopping the transport (the memif port, the reactor shard) failed.
    #[error("transport: {0}")]
    Transport(String),
}

/// The result of a run: the parameters, then the figures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    #[serde(flatten)]
    pub config: BenchConfig,
    pub ops: u64,
    pub bytes: u64,
    pub errors: u64,
    pub mismatches: u64,
    pub elapsed_s: f64,
    pub iops: f64,
    pub mb_per_s: f64,
    pub lat_mean_us: f64,
    pub lat_p50_us: u64,
    pub lat_p99_us: u64,
    pub lat_p999_us: u64,
    pub lat_max_us: u64,
    pub retries: u64,
    pub stale_map_retries: u64,
    pub reconnects: u64,
    /// The first op error or mismatch, for the operator.
    pub first_problem: Option<String>,
    /// On a reactor shard (`--transport memif`): the shard's busy time (its turns that did
    /// work, `busy_ns`) per op, in µs. It busy-polls, so its process CPU says nothing of its
    /// load; this tells whether the bench itself was the limit (near 1e6 / IOPS). None on the
    /// kernel transport.
    pub shard_busy_us_per_op: Option<f64>,
}

impl BenchReport {
    /// Human-readable summary.
    pub fn to_text(&self) -> String {
        let c = &self.config;
        let mut s = format!(
            "bench {} pool={} block_size={} objects={} prefix={} concurrency={} clients={} verify={}\n",
            c.mode, c.pool, c.block_size, c.objects, c.prefix, c.concurrency, c.clients, c.verify
        );
        s += &format!(
            "ops:          {}\nelapsed:      {:.2} s\nIOPS:         {:.0}\nMB/s:         {:.2}\n",
            self.ops, self.elapsed_s, self.iops, self.mb_per_s
        );
        s += &format!(
            "latency (us): p50 {}  p99 {}  p99.9 {}  max {}  mean {:.0}\n",
            self.lat_p50_us, self.lat_p99_us, self.lat_p999_us, self.lat_max_us, self.lat_mean_us
        );
        s += &format!(
            "errors: {}  mismatches: {}  retries: {} (stale map {})  reconnects: {}\n",
            self.errors, self.mismatches, self.retries, self.stale_map_retries, self.reconnects
        );
        if let Some(b) = self.shard_busy_us_per_op {
            s += &format!("bench shard busy: {b:.2} us/op\n");
        }
        if let Some(p) = &self.first_problem {
            s += &format!("first problem: {p}\n");
        }
        s
    }

    /// True when every op succeeded and every read verified.
    pub fn clean(&self) -> bool {
        self.errors == 0 && self.mismatches == 0
    }
}

/// Figures shared by the workers and the progress ticker.
struct Agg {
    total: Histogram<u64>,
    interval: Histogram<u64>,
    ops: u64,
    bytes: u64,
    errors: u64,
    mismatches: u64,
    interval_bytes: u64,
    first_problem: Option<String>,
}

struct Shared {
    cfg: BenchConfig,
    agg: Mutex<Agg>,
    next: AtomicU64,
    /// Ops started so far (the `max_ops` budget).
    issued: AtomicU64,
    /// An op failed: a write run no longer completes its first pass past the duration.
    failed: AtomicBool,
    start: Instant,
}

impl Shared {
    fn agg(&self) -> std::sync::MutexGuard<'_, Agg> {
        // Counters only: a poisoned lock (a panicking worker) still holds usable figures.
        self.agg.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, lat: Duration, bytes: u64, problem: Option<(bool, String)>) {
        let us = u64::try_from(lat.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_LATENCY_US);
        let mut a = self.agg();
        match problem {
            None => {
                // In bounds by the clamp above: recording cannot fail.
                let _ = a.total.record(us);
                let _ = a.interval.record(us);
                a.ops += 1;
                a.bytes += bytes;
                a.interval_bytes += bytes;
            }
            Some((mismatch, why)) => {
                if mismatch {
                    a.mismatches += 1;
                } else {
                    a.errors += 1;
                    self.failed.store(true, Ordering::Relaxed);
                }
                if a.first_problem.is_none() {
                    a.first_problem = Some(why);
                }
            }
        }
    }
}

fn histogram() -> Result<Histogram<u64>, BenchError> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .map_err(|e| BenchError::Histogram(e.to_string()))
}

/// xorshift64*: the rand mode's object picker (one per worker; quality is ample for picking
/// object numbers, and it needs no dependency).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The ops a bench worker runs, on whichever transport.
#[allow(async_fn_in_trait)]
pub(crate) trait BenchOps {
    async fn write_full(
        &self,
        pool: &str,
        name: &str,
        data: &[u8],
    ) -> Result<(), carmine_client::Error>;
    /// Reads `len` bytes at offset 0.
    async fn read(
        &self,
        pool: &str,
        name: &str,
        len: u32,
    ) -> Result<Vec<u8>, carmine_client::Error>;
    /// The worker's pause before an op (`BenchConfig::pause`).
    async fn pause(&self, d: Duration);
}

impl BenchOps for Client {
    async fn write_full(
        &self,
        pool: &str,
        name: &str,
        data: &[u8],
    ) -> Result<(), carmine_client::Error> {
        Client::write_full(self, pool, name, data).await
    }

    async fn read(
        &self,
        pool: &str,
        name: &str,
        len: u32,
    ) -> Result<Vec<u8>, carmine_client::Error> {
        Client::read(self, pool, name, 0, len).await
    }

    async fn pause(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }
}

async fn worker<T: BenchOps>(shared: &Shared, client: &T, id: u64) {
    let cfg = &shared.cfg;
    let mut rng =
        Rng(0x9e37_79b9_7f4a_7c15 ^ (id.wrapping_add(1)).wrapping_mul(0xff51_afd7_ed55_8ccd));
    let mut buf = vec![0u8; cfg.block_size as usize];
    loop {
        if !cfg.pause.is_zero() {
            client.pause(cfg.pause).await;
        }
        if let Some(max) = cfg.max_ops {
            if shared.issued.fetch_add(1, Ordering::Relaxed) >= max {
                return;
            }
        }
        let elapsed = shared.start.elapsed();
        let n = match cfg.mode {
            Mode::Rand => {
                if elapsed >= cfg.duration {
                    return;
                }
                rng.next() % cfg.objects
            }
            Mode::Seq | Mode::Write => {
                let k = shared.next.fetch_add(1, Ordering::Relaxed);
                // write: the first pass completes even past the duration, unless an op failed
                // (the pass is incomplete anyway, and a cluster that answers every op only at
                // its timeout would hold the run for objects × timeout / concurrency).
                let first_pass = cfg.mode == Mode::Write
                    && k < cfg.objects
                    && !shared.failed.load(Ordering::Relaxed);
                if elapsed >= cfg.duration && !first_pass {
                    return;
                }
                k % cfg.objects
            }
        };
        let name = cfg.object_name(n);
        if cfg.mode == Mode::Write {
            pattern::fill(&name, 0, &mut buf);
        }
        let t0 = Instant::now();
        match cfg.mode {
            Mode::Write => {
                let r = client.write_full(&cfg.pool, &name, &buf).await;
                let lat = t0.elapsed();
                match r {
                    Ok(()) => shared.record(lat, buf.len() as u64, None),
                    Err(e) => shared.record(lat, 0, Some((false, format!("write {name}: {e}")))),
                }
            }
            Mode::Seq | Mode::Rand => {
                let r = client.read(&cfg.pool, &name, cfg.block_size).await;
                let lat = t0.elapsed();
                match r {
                    Err(e) => shared.record(lat, 0, Some((false, format!("read {name}: {e}")))),
                    Ok(data) => {
                        let problem = if !cfg.verify {
                            None
                        } else if data.len() != buf.len() {
                            Some((
                                true,
                                format!(
                                    "read {name}: {} bytes, expected {} (written with another block size?)",
                                    data.len(),
                                    buf.len()
                                ),
                            ))
                        } else {
                            pattern::verify(&name, 0, &data).err().map(|at| {
                                (true, format!("read {name}: data differs from byte {at} on"))
                            })
                        };
                        match problem {
                            None => shared.record(lat, data.len() as u64, None),
                            Some(p) => shared.record(lat, 0, Some(p)),
                        }
                    }
                }
            }
        }
    }
}

/// The header of the progress lines.
pub const PROGRESS_HEADER: &str = "  sec        ops    cur MB/s   cur IOPS   p99(us)";

/// Runs the bench. `progress` gets one line per second (ops so far, this second's MB/s, IOPS
/// and p99); pass `|_| {}` for none.
pub async fn run(
    client_cfg: &ClientConfig,
    cfg: &BenchConfig,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, BenchError> {
    check(client_cfg, cfg)?;
    let mut clients = Vec::with_capacity(cfg.clients);
    for _ in 0..cfg.clients {
        let c = Client::connect(client_cfg.clone()).await?;
        c.pool(cfg.pool.as_str()).await?;
        clients.push(Arc::new(c));
    }
    let shared = Arc::new(Shared::new(cfg)?);
    let mut tasks = tokio::task::JoinSet::new();
    let mut id = 0u64;
    for c in &clients {
        for _ in 0..cfg.concurrency {
            let (shared, c) = (shared.clone(), c.clone());
            tasks.spawn(async move { worker(&shared, &*c, id).await });
            id += 1;
        }
    }
    progress(PROGRESS_HEADER);
    let mut ticker = Ticker::new(&shared);
    let mut failure = None;
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(())) => {}
                Some(Err(e)) => failure = Some(e.to_string()),
            },
            line = ticker.tick(&shared) => progress(&line),
        }
    }
    if let Some(f) = failure {
        return Err(BenchError::Worker(f));
    }
    let stats: Vec<ClientStats> = clients.iter().map(|c| c.stats()).collect();
    Ok(shared.report(&stats))
}

/// Refuses parameters no run can use.
fn check(client_cfg: &ClientConfig, cfg: &BenchConfig) -> Result<(), BenchError> {
    if cfg.objects == 0 || cfg.concurrency == 0 || cfg.clients == 0 || cfg.block_size == 0 {
        return Err(BenchError::Config(
            "objects, concurrency, clients and block size must be at least 1".into(),
        ));
    }
    if cfg.block_size > client_cfg.limits.max_io_size {
        return Err(BenchError::Config(format!(
            "block size {} exceeds the largest op of {} bytes",
            cfg.block_size, client_cfg.limits.max_io_size
        )));
    }
    Ok(())
}

/// The once-a-second progress line.
struct Ticker {
    interval: tokio::time::Interval,
    last: Instant,
}

impl Ticker {
    fn new(shared: &Shared) -> Self {
        let first = tokio::time::Instant::from_std(shared.start + Duration::from_secs(1));
        Ticker {
            interval: tokio::time::interval_at(first, Duration::from_secs(1)),
            last: shared.start,
        }
    }

    /// Waits for the next second; that second's line (and starts the next interval).
    async fn tick(&mut self, shared: &Shared) -> String {
        let now = self.interval.tick().await.into_std();
        let secs = now.duration_since(self.last).as_secs_f64().max(1e-9);
        self.last = now;
        let mut a = shared.agg();
        let cur_ops = a.interval.len();
        let line = format!(
            "{:5} {:10} {:11.2} {:10.0} {:9}",
            now.duration_since(shared.start).as_secs(),
            a.ops,
            a.interval_bytes as f64 / 1e6 / secs,
            cur_ops as f64 / secs,
            a.interval.value_at_quantile(0.99),
        );
        a.interval.reset();
        a.interval_bytes = 0;
        line
    }
}

impl Shared {
    fn new(cfg: &BenchConfig) -> Result<Self, BenchError> {
        Ok(Shared {
            cfg: cfg.clone(),
            agg: Mutex::new(Agg {
                total: histogram()?,
                interval: histogram()?,
                ops: 0,
                bytes: 0,
                errors: 0,
                mismatches: 0,
                interval_bytes: 0,
                first_problem: None,
            }),
            next: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            start: Instant::now(),
        })
    }

    /// The run's figures so far, with the clients' retry counters.
    fn report(&self, stats: &[ClientStats]) -> BenchReport {
        let elapsed = self.start.elapsed().as_secs_f64().max(1e-9);
        let sum = |f: fn(&ClientStats) -> u64| stats.iter().map(f).sum::<u64>();
        let a = self.agg();
        BenchReport {
            config: self.cfg.clone(),
            ops: a.ops,
            bytes: a.bytes,
            errors: a.errors,
            mismatches: a.mismatches,
            elapsed_s: elapsed,
            iops: a.ops as f64 / elapsed,
            mb_per_s: a.bytes as f64 / 1e6 / elapsed,
            lat_mean_us: if a.ops == 0 { 0.0 } else { a.total.mean() },
            lat_p50_us: a.total.value_at_quantile(0.50),
            lat_p99_us: a.total.value_at_quantile(0.99),
            lat_p999_us: a.total.value_at_quantile(0.999),
            lat_max_us: a.total.max(),
            retries: sum(|s| s.retries),
            stale_map_retries: sum(|s| s.stale_map_retries),
            reconnects: sum(|s| s.reconnects),
            first_problem: a.first_problem.clone(),
            shard_busy_us_per_op: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BenchConfig {
        BenchConfig {
            mode: Mode::Rand,
            pool: "p".into(),
            duration: Duration::from_millis(1500),
            block_size: 4096,
            objects: 10,
            concurrency: 2,
            clients: 1,
            prefix: "bench".into(),
            verify: true,
            pause: Duration::ZERO,
            max_ops: None,
        }
    }

    #[test]
    fn names_are_deterministic_from_prefix_and_number() {
        let c = cfg();
        assert_eq!(c.object_name(7), "bench_7");
        assert_eq!(c.object_name(7), cfg().object_name(7));
    }

    #[test]
    fn report_json_has_parameters_and_figures() {
        let r = BenchReport {
            config: cfg(),
            ops: 10,
            bytes: 40960,
            errors: 0,
            mismatches: 1,
            elapsed_s: 1.0,
            iops: 10.0,
            mb_per_s: 0.04096,
            lat_mean_us: 5.0,
            lat_p50_us: 4,
            lat_p99_us: 9,
            lat_p999_us: 9,
            lat_max_us: 9,
            retries: 0,
            stale_map_retries: 0,
            reconnects: 0,
            first_problem: Some("x".into()),
            shard_busy_us_per_op: Some(2.5),
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["shard_busy_us_per_op"], 2.5);
        assert!(r.to_text().contains("bench shard busy: 2.50 us/op"));
        assert_eq!(v["mode"], "rand");
        assert_eq!(v["seconds"], 1.5);
        assert_eq!(v["block_size"], 4096);
        assert_eq!(v["lat_p999_us"], 9);
        assert_eq!(v["mismatches"], 1);
        assert_eq!(v["pause_ms"], 0.0);
        assert_eq!(v["max_ops"], serde_json::Value::Null);
        assert!(!r.clean());
        assert!(r.to_text().contains("p99.9 9"));
    }

    #[test]
    fn rng_spreads_over_objects() {
        let mut r = Rng(0x1234);
        let mut seen = [0u32; 10];
        for _ in 0..1000 {
            seen[(r.next() % 10) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }
}
