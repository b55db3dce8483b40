//! Per-shard performance counters, and the [`carmine_agent::Stats`] provider that publishes
//! them through the OSD admin gRPC (`carmine osd perf <id>`).
//!
//! Each shard is the only writer of its [`ShardCounters`] (relaxed atomic stores, no lock, no
//! allocation); the agent thread reads them whenever an admin asks. Op latency goes into a
//! shard-local HDR histogram (`hdrhistogram`: the standard structure for latency percentiles,
//! recorded without allocation once created); the shard publishes its quantiles into the
//! counters every [`PUBLISH_EVERY`], so the reader never touches the histogram itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use carmine_reactor::ShardStats;
use hdrhistogram::Histogram;

/// How often a shard refreshes the published latency quantiles.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(500);

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// One shard's counters (single writer: the shard).
        #[derive(Debug, Default)]
        pub struct ShardCounters {
            $(pub $name: AtomicU64,)*
        }

        impl ShardCounters {
            /// `(name, value)` of every counter.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters!(
    ops,
    ops_write,
    ops_read,
    ops_stat,
    ops_remove,
    ops_list,
    bytes_in,
    bytes_out,
    errors,
    stale_map,
    again,
    forwards_sent,
    forwards_received,
    parked,
    dup_replies,
    rep_sent,
    rep_applied,
    rep_refused,
    rep_write_failures,
    lease_refused,
    push_sent,
    push_applied,
    conns_accepted,
    conns_closed,
    protocol_errors,
    auth_failures,
    handshake_timeouts,
    idle_timeouts,
    unauth_evicted,
    conns_refused,
    revoked_closed,
    backpressure_stalls,
    budget_waits,
    budget_used,
    syn_recycled,
    inflight,
    map_epoch,
    lat_p50_us,
    lat_p99_us,
    lat_p999_us,
    lat_max_us,
);

impl ShardCounters {
    /// Adds `n` (single writer: a load and a store, no read-modify-write instruction).
    #[inline]
    pub fn add(c: &AtomicU64, n: u64) {
        c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    #[inline]
    pub fn set(c: &AtomicU64, v: u64) {
        c.store(v, Ordering::Relaxed);
    }
}

/// A shard's latency histogram and when it last published.
pub struct Latency {
    hist: Histogram<u64>,
    last_publish: Instant,
    dirty: bool,
}

impl Latency {
    pub fn new() -> Self {
        // 1 µs .. 60 s at 2 significant digits: ~20 KiB, allocated once.
        let hist = Histogram::new_with_bounds(1, 60_000_000, 2)
            .expect("constant histogram bounds are valid");
        Latency {
            hist,
            last_publish: Instant::now(),
            dirty: false,
        }
    }

    /// Records one op that started at `started`.
    #[inline]
    pub fn record(&mut self, started: Instant, now: Instant) {
        let us = now.saturating_duration_since(started).as_micros() as u64;
        self.hist.saturating_record(us.max(1));
        self.dirty = true;
    }

    /// Publishes the quantiles into `c` if due; true when it did.
    pub fn maybe_publish(&mut self, c: &ShardCounters, now: Instant) -> bool {
        if !self.dirty || now.saturating_duration_since(self.last_publish) < PUBLISH_EVERY {
            return false;
        }
        self.publish(c);
        self.last_publish = now;
        true
    }

    pub fn publish(&mut self, c: &ShardCounters) {
        ShardCounters::set(&c.lat_p50_us, self.hist.value_at_quantile(0.5));
        ShardCounters::set(&c.lat_p99_us, self.hist.value_at_quantile(0.99));
        ShardCounters::set(&c.lat_p999_us, self.hist.value_at_quantile(0.999));
        ShardCounters::set(&c.lat_max_us, self.hist.max());
        self.dirty = false;
    }
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a shard's store failed: set once, by the shard, when it sees its store fail (never on
/// the steady-state path: a `OnceLock` read is a load); read by the agent for its heartbeats.
pub type StoreFailure = Arc<OnceLock<String>>;

/// Everything `carmine osd perf` shows, read on the agent thread.
pub struct OsdStats {
    pub shards: Vec<(Arc<ShardCounters>, Arc<ShardStats>)>,
    /// Store usage (used, capacity) per shard, refreshed by the shards.
    pub usage: Vec<Arc<(AtomicU64, AtomicU64)>>,
    /// Per shard: why its store failed, once it has.
    pub store_failures: Vec<StoreFailure>,
}

impl carmine_agent::Stats for OsdStats {
    fn counters(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (i, (c, r)) in self.shards.iter().enumerate() {
            for (name, v) in c.snapshot() {
                out.push((format!("shard{i}.{name}"), v));
            }
            let s = r.snapshot();
            out.push((format!("shard{i}.busy_loops"), s.busy_loops));
            out.push((format!("shard{i}.idle_loops"), s.idle_loops));
            out.push((format!("shard{i}.busy_us"), s.busy_ns / 1000));
            out.push((format!("shard{i}.sleeps"), s.sleeps));
            out.push((format!("shard{i}.ring_hops_in"), s.cross_shard_received));
            out.push((format!("shard{i}.ring_hops_out"), s.cross_shard_sent));
        }
        let total = |f: fn(&ShardCounters) -> &AtomicU64| {
            self.shards
                .iter()
                .map(|(c, _)| f(c).load(Ordering::Relaxed))
                .sum::<u64>()
        };
        out.push(("ops".into(), total(|c| &c.ops)));
        out.push(("bytes_in".into(), total(|c| &c.bytes_in)));
        out.push(("bytes_out".into(), total(|c| &c.bytes_out)));
        out.push(("forwards".into(), total(|c| &c.forwards_sent)));
        out
    }

    fn applied_epoch(&self) -> Option<u64> {
        self.shards
            .iter()
            .map(|(c, _)| c.map_epoch.load(Ordering::Acquire))
            .min()
    }

    fn store_failure(&self) -> Option<String> {
        let failed: Vec<String> = self
            .store_failures
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.get().map(|why| format!("shard {i}: {why}")))
            .collect();
        (!failed.is_empty()).then(|| failed.join("; "))
    }

    fn usage(&self) -> (u64, u64) {
        self.usage.iter().fold((0, 0), |(u, c), x| {
            (
                u + x.0.load(Ordering::Relaxed),
                c + x.1.load(Ordering::Relaxed),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_published_and_counters_named_per_shard() {
        let c = Arc::new(ShardCounters::default());
        let mut l = Latency::new();
        let t0 = Instant::now();
        for us in 1..=1000u64 {
            l.record(t0, t0 + Duration::from_micros(us));
        }
        l.publish(&c);
        let p50 = c.lat_p50_us.load(Ordering::Relaxed);
        let p99 = c.lat_p99_us.load(Ordering::Relaxed);
        assert!((495..=505).contains(&p50), "p50 {p50}");
        assert!((985..=995).contains(&p99), "p99 {p99}");
        assert!(c.lat_max_us.load(Ordering::Relaxed) >= 1000);
        ShardCounters::add(&c.ops, 3);
        let failures = vec![StoreFailure::default(), StoreFailure::default()];
        let stats = OsdStats {
            shards: vec![(c, Arc::new(ShardStats::default()))],
            usage: vec![Arc::new((AtomicU64::new(5), AtomicU64::new(10)))],
            store_failures: failures.clone(),
        };
        let all = carmine_agent::Stats::counters(&stats);
        assert!(all.contains(&("shard0.ops".to_string(), 3)));
        assert!(all.contains(&("ops".to_string(), 3)));
        assert_eq!(carmine_agent::Stats::usage(&stats), (5, 10));
        assert_eq!(carmine_agent::Stats::store_failure(&stats), None);
        failures[1].set("read of block 3 failed".into()).unwrap();
        assert_eq!(
            carmine_agent::Stats::store_failure(&stats).as_deref(),
            Some("shard 1: read of block 3 failed")
        );
    }
}
