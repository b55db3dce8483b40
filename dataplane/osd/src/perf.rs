//! Per-shard performance counters, and the [`carmine_agent::Stats`] provider that publishes
//! them through the OSD admin gRPC (`carmine osd perf <id>`) and as Prometheus metrics
//! (`/metrics`, see [`OsdStats`]'s `metrics`).
//!
//! Each shard is the only writer of its [`ShardCounters`] (relaxed atomic stores, no lock, no
//! allocation); the agent thread reads them whenever an admin asks or Prometheus scrapes. Op
//! latency goes into a shard-local HDR histogram (`hdrhistogram`: the standard structure for
//! latency percentiles, recorded without allocation once created) and into plain per-op-kind
//! log2 buckets ([`carmine_metrics::latency_bucket`]: one array index per op); the shard
//! publishes both (quantiles, buckets and sums) into the counters every [`PUBLISH_EVERY`], so
//! the reader never touches the shard's own state, and the op path no atomic beyond the
//! existing counter stores. The store's own counters (bdevstore: bytes written by clients and
//! by its cleaner, device bytes, cleaner steps) are published on the same tick.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use carmine_metrics::{latency_bucket, latency_histogram, Exposition, LATENCY_BUCKETS};
use carmine_reactor::ShardStats;
use carmine_wire::op::OpKind;
use hdrhistogram::Histogram;

/// How often a shard refreshes the published latency quantiles.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(500);

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// One shard's counters (single writer: the shard).
        #[derive(Debug, Default)]
        pub struct ShardCounters {
            $(pub $name: AtomicU64,)*
            /// Per op kind ([`OP_KINDS`]): ops per log2 latency bucket, the last entry above
            /// every bound (published every [`PUBLISH_EVERY`]).
            pub lat_buckets: [[AtomicU64; LATENCY_BUCKETS + 1]; OP_KINDS.len()],
            /// Per op kind: total latency in microseconds (published with the buckets).
            pub lat_sum_us: [AtomicU64; OP_KINDS.len()],
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
    // Payload bytes: written by client writes (executed by a primary), returned by reads.
    bytes_written,
    bytes_read,
    // Payload bytes a primary sent to its replicas (writes) and pushed (recovery, backfill).
    rep_sent_bytes,
    push_sent_bytes,
    // The store's counters, published every PUBLISH_EVERY (bdevstore; 0 for memstore).
    store_user_bytes,
    store_relocated_bytes,
    store_device_written_bytes,
    store_cleaner_steps,
    store_segments_freed,
    store_cleaner_stalls,
    store_checkpoints,
);

/// The op kinds of the latency histograms and op counters (the `op` label); writes and
/// whole-object writes are both `write`.
pub const OP_KINDS: [&str; 5] = ["write", "read", "stat", "remove", "list"];

/// The index of `kind` in [`OP_KINDS`].
#[inline]
pub fn op_index(kind: OpKind) -> usize {
    match kind {
        OpKind::Write | OpKind::WriteFull => 0,
        OpKind::Read => 1,
        OpKind::Stat => 2,
        OpKind::Remove => 3,
        OpKind::List => 4,
    }
}

/// The store's counters a shard publishes (bdevstore's; see [`ShardCounters`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounters {
    pub user_bytes: u64,
    pub relocated_bytes: u64,
    pub device_written_bytes: u64,
    pub cleaner_steps: u64,
    pub segments_freed: u64,
    pub cleaner_stalls: u64,
    pub checkpoints: u64,
}

impl StoreCounters {
    pub fn publish(&self, c: &ShardCounters) {
        ShardCounters::set(&c.store_user_bytes, self.user_bytes);
        ShardCounters::set(&c.store_relocated_bytes, self.relocated_bytes);
        ShardCounters::set(&c.store_device_written_bytes, self.device_written_bytes);
        ShardCounters::set(&c.store_cleaner_steps, self.cleaner_steps);
        ShardCounters::set(&c.store_segments_freed, self.segments_freed);
        ShardCounters::set(&c.store_cleaner_stalls, self.cleaner_stalls);
        ShardCounters::set(&c.store_checkpoints, self.checkpoints);
    }
}

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

/// A shard's latency histograms and when it last published.
pub struct Latency {
    hist: Histogram<u64>,
    /// Per op kind: ops per log2 bucket (plain numbers; published into the counters).
    buckets: [[u64; LATENCY_BUCKETS + 1]; OP_KINDS.len()],
    sum_us: [u64; OP_KINDS.len()],
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
            buckets: [[0; LATENCY_BUCKETS + 1]; OP_KINDS.len()],
            sum_us: [0; OP_KINDS.len()],
            last_publish: Instant::now(),
            dirty: false,
        }
    }

    /// Records one op of kind `kind` ([`op_index`]) that started at `started`.
    #[inline]
    pub fn record(&mut self, kind: usize, started: Instant, now: Instant) {
        let us = now.saturating_duration_since(started).as_micros() as u64;
        self.hist.saturating_record(us.max(1));
        if let (Some(b), Some(sum)) = (self.buckets.get_mut(kind), self.sum_us.get_mut(kind)) {
            b[latency_bucket(us)] += 1;
            *sum = sum.wrapping_add(us);
        }
        self.dirty = true;
    }

    /// When the shard must poll again so that recorded ops get published (`None`: nothing
    /// to publish): an idle shard would otherwise sit on its last ops' latencies.
    pub fn publish_due(&self) -> Option<Instant> {
        self.dirty.then(|| self.last_publish + PUBLISH_EVERY)
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
        for (k, b) in self.buckets.iter().enumerate() {
            for (i, n) in b.iter().enumerate() {
                ShardCounters::set(&c.lat_buckets[k][i], *n);
            }
            ShardCounters::set(&c.lat_sum_us[k], self.sum_us[k]);
        }
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

/// Everything `carmine osd perf` and `/metrics` show, read on the agent thread.
pub struct OsdStats {
    /// When the shards started (their idle time is the wall time since, less their busy time).
    pub started: Instant,
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

    fn client_io(&self) -> Option<carmine_proto::v1::ClientIoCounters> {
        let mut io = carmine_proto::v1::ClientIoCounters::default();
        for (c, _) in &self.shards {
            let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
            io.read_ops += v(&c.ops_read);
            io.read_bytes += v(&c.bytes_read);
            io.write_ops += v(&c.ops_write);
            io.write_bytes += v(&c.bytes_written);
        }
        Some(io)
    }

    fn metrics(&self, out: &mut Exposition) {
        self.encode_metrics(out, Instant::now());
    }
}

/// A shard's `shard` label.
fn shard(i: usize) -> Vec<(&'static str, String)> {
    vec![("shard", i.to_string())]
}

/// `shard` and one more label.
fn shard_and(i: usize, k: &'static str, v: &str) -> Vec<(&'static str, String)> {
    vec![("shard", i.to_string()), (k, v.to_string())]
}

impl OsdStats {
    /// The shards' series of `/metrics` (the agent adds `osd` and its own), as of `now`.
    /// Every family is declared even when no shard has a sample of it.
    pub fn encode_metrics(&self, out: &mut Exposition, now: Instant) {
        let uptime = now.saturating_duration_since(self.started).as_secs_f64();
        for (i, (c, r)) in self.shards.iter().enumerate() {
            let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
            let kinds = [
                &c.ops_write,
                &c.ops_read,
                &c.ops_stat,
                &c.ops_remove,
                &c.ops_list,
            ];
            for (k, ops) in OP_KINDS.iter().zip(kinds) {
                out.counter(
                    "carmine_osd_ops",
                    "Client ops answered, by op kind.",
                    shard_and(i, "op", k),
                    v(ops),
                );
            }
            for (k, n) in [("write", &c.bytes_written), ("read", &c.bytes_read)] {
                out.counter(
                    "carmine_osd_op_bytes",
                    "Payload bytes of client ops: written by writes, returned by reads.",
                    shard_and(i, "op", k),
                    v(n),
                );
            }
            for (k, name) in OP_KINDS.iter().enumerate() {
                let counts: Vec<u64> = c.lat_buckets[k][..LATENCY_BUCKETS].iter().map(v).collect();
                out.histogram(
                    "carmine_osd_op_latency_seconds",
                    "Client op latency on the OSD (decoded to answered), log2 buckets.",
                    shard_and(i, "op", name),
                    latency_histogram(
                        &counts,
                        v(&c.lat_buckets[k][LATENCY_BUCKETS]),
                        v(&c.lat_sum_us[k]),
                    ),
                );
            }
            for (kind, n) in [
                ("stale_map", &c.stale_map),
                ("again", &c.again),
                ("other", &c.errors),
            ] {
                out.counter(
                    "carmine_osd_op_errors",
                    "Client ops answered with an error, by kind (stale_map: the client's map \
                     was old; again: retry later, e.g. PG not active or lease expired; other: \
                     not found, invalid, store errors).",
                    shard_and(i, "kind", kind),
                    v(n),
                );
            }
            let simple: [(&'static str, &'static str, &AtomicU64); 21] = [
                (
                    "carmine_osd_lease_refused_ops",
                    "Ops refused because the read lease had run out.",
                    &c.lease_refused,
                ),
                (
                    "carmine_osd_forwards_sent",
                    "Ops forwarded to the shard that owns their PG.",
                    &c.forwards_sent,
                ),
                (
                    "carmine_osd_forwards_received",
                    "Ops received from another shard.",
                    &c.forwards_received,
                ),
                (
                    "carmine_osd_ops_parked",
                    "Ops that waited behind another op on the same object or a recovery push.",
                    &c.parked,
                ),
                (
                    "carmine_osd_dup_replies",
                    "Retried mutations answered from the PG log.",
                    &c.dup_replies,
                ),
                (
                    "carmine_osd_replica_ops_sent",
                    "Replica ops sent by this primary to its acting set.",
                    &c.rep_sent,
                ),
                (
                    "carmine_osd_replica_ops_applied",
                    "Replica ops applied for a primary.",
                    &c.rep_applied,
                ),
                (
                    "carmine_osd_replica_ops_refused",
                    "Replica ops refused (old interval, unknown PG or sender).",
                    &c.rep_refused,
                ),
                (
                    "carmine_osd_replica_write_failures",
                    "Writes failed because a replica failed or did not answer.",
                    &c.rep_write_failures,
                ),
                (
                    "carmine_osd_recovery_pushes_sent",
                    "Objects pushed to members by recovery and backfill.",
                    &c.push_sent,
                ),
                (
                    "carmine_osd_recovery_pushes_applied",
                    "Objects received from a primary by recovery and backfill.",
                    &c.push_applied,
                ),
                (
                    "carmine_osd_connections_accepted",
                    "Client and peer connections accepted.",
                    &c.conns_accepted,
                ),
                (
                    "carmine_osd_connections_closed",
                    "Connections closed.",
                    &c.conns_closed,
                ),
                (
                    "carmine_osd_connections_refused",
                    "Connections refused at the connection limit.",
                    &c.conns_refused,
                ),
                (
                    "carmine_osd_protocol_errors",
                    "Connections closed on a malformed frame or protocol violation.",
                    &c.protocol_errors,
                ),
                (
                    "carmine_osd_auth_failures",
                    "Handshakes that failed authentication.",
                    &c.auth_failures,
                ),
                (
                    "carmine_osd_handshake_timeouts",
                    "Connections closed because the handshake took too long.",
                    &c.handshake_timeouts,
                ),
                (
                    "carmine_osd_idle_timeouts",
                    "Connections closed for being idle.",
                    &c.idle_timeouts,
                ),
                (
                    "carmine_osd_unauthenticated_evicted",
                    "Unauthenticated connections evicted to make room.",
                    &c.unauth_evicted,
                ),
                (
                    "carmine_osd_revoked_closed",
                    "Connections closed because their key was revoked.",
                    &c.revoked_closed,
                ),
                (
                    "carmine_osd_backpressure_stalls",
                    "Times a connection stopped reading because its replies backed up.",
                    &c.backpressure_stalls,
                ),
            ];
            for (name, help, n) in simple {
                out.counter(name, help, shard(i), v(n));
            }
            out.counter(
                "carmine_osd_replica_sent_bytes",
                "Payload bytes of client writes this primary sent to its replicas.",
                shard(i),
                v(&c.rep_sent_bytes),
            );
            out.counter(
                "carmine_osd_recovery_pushed_bytes",
                "Object bytes pushed to members by recovery and backfill.",
                shard(i),
                v(&c.push_sent_bytes),
            );
            out.counter(
                "carmine_osd_received_bytes",
                "Bytes received on client and peer connections.",
                shard(i),
                v(&c.bytes_in),
            );
            out.gauge(
                "carmine_osd_connections",
                "Open connections (accepted and not yet closed).",
                shard(i),
                v(&c.conns_accepted).saturating_sub(v(&c.conns_closed)) as f64,
            );
            out.gauge(
                "carmine_osd_ops_in_flight",
                "Store operations in flight on the shard.",
                shard(i),
                v(&c.inflight) as f64,
            );
            out.gauge(
                "carmine_osd_shard_map_epoch",
                "The map epoch the shard has applied.",
                shard(i),
                v(&c.map_epoch) as f64,
            );
            let rs = r.snapshot();
            let busy = rs.busy_ns as f64 / 1e9;
            out.counter_f64(
                "carmine_osd_reactor_busy_seconds",
                "Time the shard's loop spent in iterations that did work.",
                shard(i),
                busy,
            );
            out.counter_f64(
                "carmine_osd_reactor_idle_seconds",
                "Time since the shard started not spent busy (polling empty or asleep).",
                shard(i),
                (uptime - busy).max(0.0),
            );
            for (state, n) in [("busy", rs.busy_loops), ("idle", rs.idle_loops)] {
                out.counter(
                    "carmine_osd_reactor_loops",
                    "Loop iterations, by whether they did work.",
                    shard_and(i, "state", state),
                    n,
                );
            }
            out.counter(
                "carmine_osd_reactor_sleeps",
                "Times the shard slept on its event fd (adaptive idle).",
                shard(i),
                rs.sleeps,
            );
            for (dir, n) in [
                ("sent", rs.cross_shard_sent),
                ("received", rs.cross_shard_received),
            ] {
                out.counter(
                    "carmine_osd_ring_hops",
                    "Messages between shards through their rings.",
                    shard_and(i, "direction", dir),
                    n,
                );
            }
            out.counter(
                "carmine_osd_ring_full",
                "Sends refused because the destination ring was full.",
                shard(i),
                rs.ring_full,
            );
            let store: [(&'static str, &'static str, &AtomicU64); 7] = [
                ("carmine_osd_store_user_bytes", "Bytes of client data the store wrote (bdevstore).", &c.store_user_bytes),
                ("carmine_osd_store_relocated_bytes", "Bytes the store's cleaner moved (bdevstore).", &c.store_relocated_bytes),
                ("carmine_osd_store_device_written_bytes", "Bytes written to the device, records and checkpoints included (bdevstore): write amplification = this / user bytes.", &c.store_device_written_bytes),
                ("carmine_osd_store_cleaner_steps", "Cleaner steps (bdevstore).", &c.store_cleaner_steps),
                ("carmine_osd_store_segments_freed", "Segments the cleaner freed (bdevstore).", &c.store_segments_freed),
                ("carmine_osd_store_cleaner_stalls", "Times the cleaner stalled (bdevstore).", &c.store_cleaner_stalls),
                ("carmine_osd_store_checkpoints", "Checkpoints written (bdevstore).", &c.store_checkpoints),
            ];
            for (name, help, n) in store {
                out.counter(name, help, shard(i), v(n));
            }
            let user = v(&c.store_user_bytes);
            if user > 0 {
                out.gauge(
                    "carmine_osd_store_write_amplification",
                    "Device bytes written per byte of client data since the store mounted (bdevstore).",
                    shard(i),
                    v(&c.store_device_written_bytes) as f64 / user as f64,
                );
            }
        }
        out.declare(
            "carmine_osd_store_write_amplification",
            "Device bytes written per byte of client data since the store mounted (bdevstore).",
            carmine_metrics::Kind::Gauge,
        );
        out.gauge(
            "carmine_osd_shards",
            "Shards (polling cores) of the OSD.",
            vec![],
            self.shards.len() as f64,
        );
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
            l.record(1, t0, t0 + Duration::from_micros(us));
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
            started: Instant::now(),
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

    /// `/metrics` of known shard counters: ops by kind, bytes, latency buckets in seconds
    /// with the `shard` label, and the reactor's busy/idle split.
    #[test]
    fn metrics_expose_the_published_counters_per_shard() {
        use carmine_metrics::Value;
        let c0 = Arc::new(ShardCounters::default());
        let c1 = Arc::new(ShardCounters::default());
        ShardCounters::add(&c0.ops_write, 500);
        ShardCounters::add(&c1.ops_write, 7);
        ShardCounters::add(&c1.ops_read, 3);
        ShardCounters::add(&c0.bytes_written, 500 * 4096);
        ShardCounters::add(&c1.auth_failures, 2);
        let mut l = Latency::new();
        let t0 = Instant::now();
        // Writes of 3 µs (bucket <= 4 µs) and 100 µs (<= 128 µs); one read of 1 s.
        l.record(op_index(OpKind::Write), t0, t0 + Duration::from_micros(3));
        l.record(
            op_index(OpKind::WriteFull),
            t0,
            t0 + Duration::from_micros(100),
        );
        l.record(op_index(OpKind::Read), t0, t0 + Duration::from_secs(1));
        assert!(l.publish_due().is_some());
        l.publish(&c1);
        assert_eq!(l.publish_due(), None);
        let r1 = Arc::new(ShardStats::default());
        let started = Instant::now();
        let stats = OsdStats {
            started,
            shards: vec![(c0, Arc::new(ShardStats::default())), (c1, r1.clone())],
            usage: vec![],
            store_failures: vec![],
        };
        let mut e = Exposition::new();
        stats.encode_metrics(&mut e, started + Duration::from_secs(10));
        let ops = |s: &str, op: &str| {
            e.value("carmine_osd_ops", &[("shard", s), ("op", op)])
                .cloned()
        };
        assert_eq!(ops("0", "write"), Some(Value::Counter(500)));
        assert_eq!(ops("1", "write"), Some(Value::Counter(7)));
        assert_eq!(ops("1", "read"), Some(Value::Counter(3)));
        assert_eq!(ops("0", "list"), Some(Value::Counter(0)));
        assert_eq!(
            e.value("carmine_osd_op_bytes", &[("shard", "0"), ("op", "write")]),
            Some(&Value::Counter(500 * 4096))
        );
        assert_eq!(
            e.value("carmine_osd_auth_failures", &[("shard", "1")]),
            Some(&Value::Counter(2))
        );
        assert_eq!(
            e.value("carmine_osd_reactor_idle_seconds", &[("shard", "0")]),
            Some(&Value::CounterF64(10.0))
        );
        let Some(Value::Histogram(h)) = e.value(
            "carmine_osd_op_latency_seconds",
            &[("shard", "1"), ("op", "write")],
        ) else {
            panic!("no write latency histogram");
        };
        assert_eq!(h.count, 2);
        assert!((h.sum - 103e-6).abs() < 1e-12, "{}", h.sum);
        assert_eq!(h.buckets[2], (4e-6, 1));
        assert_eq!(h.buckets[7], (128e-6, 1));
        let text = e.encode();
        assert!(
            text.contains(
                "carmine_osd_op_latency_seconds_bucket{shard=\"1\",op=\"read\",le=\"1.048576\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("carmine_osd_ops_total{shard=\"0\",op=\"write\"} 500"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE carmine_osd_store_write_amplification gauge"),
            "{text}"
        );
    }
}
