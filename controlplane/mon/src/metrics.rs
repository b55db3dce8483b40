//! The monitor's `/metrics` and Prometheus service discovery, served over plain HTTP on
//! `--metrics-listen` (crate `carmine-metrics`). Built from the monitor's state on each scrape:
//! nothing is counted for it.
//!
//! Series (gauges unless noted; `carmine_` is the cluster as this monitor sees it):
//! * `carmine_mon_leader` (1: this monitor serves the map; 0: an etcd follower, which exports
//!   nothing else), `carmine_mon_ha{mode="single"|"etcd"}` (always 1),
//!   `carmine_mon_uptime_seconds`;
//! * `carmine_map_epoch`;
//! * `carmine_osds{state="up"|"down"|"in"|"out"}`, and per OSD `carmine_osd_up{osd}`,
//!   `carmine_osd_in{osd}`, `carmine_osd_weight{osd}`, `carmine_osd_used_bytes{osd}`,
//!   `carmine_osd_capacity_bytes{osd}` (the last two from its heartbeats);
//!   `carmine_cluster_used_bytes`, `carmine_cluster_capacity_bytes`;
//! * `carmine_pools`, per pool (`pool` = its id, `name`): `carmine_pool_size`,
//!   `carmine_pool_min_size`, `carmine_pool_pgs`, `carmine_pool_objects`;
//! * `carmine_pgs{state}`: PGs with each state bit (`active`, `clean`, `degraded`, ...; a
//!   PG counts under each of its bits; `unknown`: not reported yet);
//!   `carmine_objects`, `carmine_objects_degraded`, `carmine_objects_misplaced`,
//!   `carmine_recovery_bytes_per_second`, `carmine_recovery_objects_per_second`;
//! * `carmine_health_status` (0 OK, 1 WARN, 2 ERR) and `carmine_health_check{code,severity}`
//!   (1 for every failing check).
//!
//! `GET /prometheus/targets` answers Prometheus's HTTP service discovery (`http_sd_configs`)
//! with the metrics address of every OSD that reported one: Prometheus finds the OSDs through
//! the monitor, as the clients find them through the map.

use std::sync::Arc;
use std::time::Instant;

use carmine_metrics::{Exposition, Handler, Kind, Page};
use carmine_proto::pg_state;
use carmine_proto::v1::HealthStatus;

use crate::pgstats::summarize;
use crate::service::{health_of, MonSlot};
use crate::state::Monitor;

/// One scrape of the monitor in `slot`; `etcd`: the monitors run with etcd (HA).
pub fn collect(slot: &MonSlot, etcd: bool) -> Exposition {
    let mut e = Exposition::new();
    let mon = slot.get().and_then(|m| m.lock().ok());
    e.gauge(
        "carmine_mon_leader",
        "1 when this monitor serves the map (the leader, or the only monitor).",
        vec![],
        f64::from(u8::from(mon.is_some())),
    );
    e.gauge(
        "carmine_mon_ha",
        "How the monitors run: a single monitor or several with etcd (always 1).",
        vec![("mode", if etcd { "etcd" } else { "single" }.into())],
        1.0,
    );
    if let Some(m) = mon {
        monitor(&mut e, &m, Instant::now());
    }
    e
}

fn monitor(e: &mut Exposition, m: &Monitor, now: Instant) {
    let map = m.map();
    e.gauge(
        "carmine_mon_uptime_seconds",
        "Seconds since this monitor started.",
        vec![],
        m.uptime().as_secs_f64(),
    );
    e.gauge(
        "carmine_map_epoch",
        "The map's epoch.",
        vec![],
        map.epoch as f64,
    );
    let up = map.osds.values().filter(|o| o.up).count();
    let inn = map.osds.values().filter(|o| o.in_).count();
    let all = map.osds.len();
    for (state, n) in [
        ("up", up),
        ("down", all - up),
        ("in", inn),
        ("out", all - inn),
    ] {
        e.gauge(
            "carmine_osds",
            "OSDs in the map, by state.",
            vec![("state", state.into())],
            n as f64,
        );
    }
    for o in map.osds.values() {
        let l = || vec![("osd", o.id.to_string())];
        e.gauge(
            "carmine_osd_up",
            "1 when the map has the OSD up.",
            l(),
            f64::from(u8::from(o.up)),
        );
        e.gauge(
            "carmine_osd_in",
            "1 when the map has the OSD in.",
            l(),
            f64::from(u8::from(o.in_)),
        );
        e.gauge(
            "carmine_osd_weight",
            "The OSD's placement weight.",
            l(),
            o.weight,
        );
    }
    let (mut used, mut capacity) = (0u64, 0u64);
    for (id, u, c) in m.usage() {
        let l = || vec![("osd", id.to_string())];
        e.gauge(
            "carmine_osd_used_bytes",
            "Bytes the OSD's store uses, from its heartbeats.",
            l(),
            u as f64,
        );
        e.gauge(
            "carmine_osd_capacity_bytes",
            "Bytes the OSD's store can hold, from its heartbeats.",
            l(),
            c as f64,
        );
        used += u;
        capacity += c;
    }
    e.gauge(
        "carmine_cluster_used_bytes",
        "Bytes used over every OSD that reported.",
        vec![],
        used as f64,
    );
    e.gauge(
        "carmine_cluster_capacity_bytes",
        "Capacity over every OSD that reported.",
        vec![],
        capacity as f64,
    );
    let pgs = m.pg_list(now);
    e.gauge("carmine_pools", "Pools.", vec![], map.pools.len() as f64);
    for p in map.pools.values() {
        let l = || vec![("pool", p.id.to_string()), ("name", p.name.clone())];
        e.gauge(
            "carmine_pool_size",
            "Replicas per object.",
            l(),
            f64::from(p.size),
        );
        e.gauge(
            "carmine_pool_min_size",
            "Replicas a PG needs to serve I/O.",
            l(),
            f64::from(p.min_size),
        );
        e.gauge(
            "carmine_pool_pgs",
            "PGs of the pool.",
            l(),
            f64::from(p.pg_num),
        );
        let objects: u64 = pgs
            .iter()
            .filter(|s| s.pool == p.id)
            .map(|s| s.objects)
            .sum();
        e.gauge(
            "carmine_pool_objects",
            "Live objects of the pool (the primaries' reports).",
            l(),
            objects as f64,
        );
    }
    let help = "PGs with each state bit (a PG counts under each of its bits; unknown: not \
                reported yet).";
    let mut unknown = 0u64;
    let mut by_bit = [0u64; pg_state::NAMES.len()];
    for s in &pgs {
        if s.state == 0 {
            unknown += 1;
        }
        for (i, (bit, _)) in pg_state::NAMES.iter().enumerate() {
            if s.state & *bit as u32 != 0 {
                by_bit[i] += 1;
            }
        }
    }
    for (i, (_, name)) in pg_state::NAMES.iter().enumerate() {
        e.gauge(
            "carmine_pgs",
            help,
            vec![("state", (*name).into())],
            by_bit[i] as f64,
        );
    }
    e.gauge(
        "carmine_pgs",
        help,
        vec![("state", "unknown".into())],
        unknown as f64,
    );
    let sum = summarize(&pgs);
    e.gauge(
        "carmine_objects",
        "Live objects (the primaries' reports).",
        vec![],
        sum.objects as f64,
    );
    e.gauge(
        "carmine_objects_degraded",
        "Copies missing on members of the PGs' history.",
        vec![],
        sum.degraded_objects as f64,
    );
    e.gauge(
        "carmine_objects_misplaced",
        "Copies missing on members outside the PGs' history (backfill).",
        vec![],
        sum.misplaced_objects as f64,
    );
    let (rb, ro) = m.recovery_rate(now);
    e.gauge(
        "carmine_recovery_bytes_per_second",
        "Recovery and backfill throughput over the last reports.",
        vec![],
        rb as f64,
    );
    e.gauge(
        "carmine_recovery_objects_per_second",
        "Objects recovered or backfilled per second over the last reports.",
        vec![],
        ro as f64,
    );
    let h = health_of(m, &pgs);
    let level = |s: HealthStatus| match s {
        HealthStatus::HealthErr => 2.0,
        HealthStatus::HealthWarn => 1.0,
        _ => 0.0,
    };
    e.gauge(
        "carmine_health_status",
        "Cluster health: 0 OK, 1 WARN, 2 ERR.",
        vec![],
        level(h.status()),
    );
    e.declare(
        "carmine_health_check",
        "1 for every failing health check, by code and severity.",
        Kind::Gauge,
    );
    for c in &h.checks {
        let sev = match c.severity() {
            HealthStatus::HealthErr => "err",
            HealthStatus::HealthWarn => "warn",
            _ => "ok",
        };
        e.gauge(
            "carmine_health_check",
            "1 for every failing health check, by code and severity.",
            vec![("code", c.code.clone()), ("severity", sev.into())],
            1.0,
        );
    }
}

/// The `http_sd_configs` answer: one target group with the metrics address of every OSD that
/// reported one (addresses that are not `ip:port` are left out).
pub fn targets(slot: &MonSlot) -> String {
    let addrs: Vec<String> = slot
        .get()
        .and_then(|m| m.lock().ok())
        .map(|m| m.metrics_addrs())
        .unwrap_or_default()
        .into_values()
        .filter(|a| a.parse::<std::net::SocketAddr>().is_ok())
        .map(|a| format!("\"{a}\""))
        .collect();
    format!(
        "[{{\"targets\":[{}],\"labels\":{{\"job\":\"carmine-osd\"}}}}]\n",
        addrs.join(",")
    )
}

/// `/metrics` and `/prometheus/targets`.
pub fn handler(slot: Arc<MonSlot>, etcd: bool) -> Handler {
    Arc::new(move |path: &str| match path {
        "/metrics" => Some(Page::metrics(collect(&slot, etcd))),
        "/prometheus/targets" => Some(Page {
            content_type: "application/json",
            body: targets(&slot),
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{BootInfo, Policy};
    use crate::store::MapStore;
    use carmine_metrics::Value;

    #[test]
    fn a_scrape_shows_osds_pools_pgs_health_and_leadership() {
        let dir = tempfile::tempdir().unwrap();
        let store = MapStore::open(dir.path()).unwrap();
        let policy = Policy {
            heartbeat_interval: std::time::Duration::from_millis(100),
            down_grace: std::time::Duration::from_secs(10),
            out_interval: std::time::Duration::from_secs(60),
            history: 4,
            min_failure_reporters: 2,
            nearfull_ratio: 0.85,
            full_ratio: 0.95,
        };
        let mut mon = Monitor::open(store, policy).unwrap();
        let now = Instant::now();
        for i in 0..2u32 {
            let b = mon
                .boot(
                    BootInfo {
                        uuid: format!("u{i}"),
                        host: format!("h{i}"),
                        public_addr: "127.0.0.1".into(),
                        cluster_addr: "127.0.0.1".into(),
                        shard_ports: vec![6800],
                        weight: 1.0,
                        ..Default::default()
                    },
                    now,
                )
                .unwrap();
            mon.set_metrics_addr(b.id, &format!("127.0.0.1:{}", 9300 + i));
        }
        let (pool, _) = mon.pool_create("rbd", 8, 1, 1).unwrap();
        mon.osd_out(1).unwrap();
        let epoch = mon.map().epoch;
        let slot = MonSlot::leading(mon);
        let e = collect(&slot, false);
        let g = |name: &str, l: &[(&str, &str)]| match e.value(name, l) {
            Some(Value::Gauge(v)) => *v,
            other => panic!("{name} {l:?}: {other:?} in\n{}", e.clone().encode()),
        };
        assert_eq!(g("carmine_mon_leader", &[]), 1.0);
        assert_eq!(g("carmine_mon_ha", &[("mode", "single")]), 1.0);
        assert_eq!(g("carmine_map_epoch", &[]), epoch as f64);
        assert_eq!(g("carmine_osds", &[("state", "up")]), 2.0);
        assert_eq!(g("carmine_osds", &[("state", "out")]), 1.0);
        assert_eq!(g("carmine_osd_in", &[("osd", "1")]), 0.0);
        assert_eq!(g("carmine_osd_up", &[("osd", "0")]), 1.0);
        assert_eq!(g("carmine_pools", &[]), 1.0);
        let pool = pool.to_string();
        assert_eq!(
            g("carmine_pool_pgs", &[("pool", &pool), ("name", "rbd")]),
            8.0
        );
        // 8 PGs, none reported by a primary yet.
        let pgs: f64 = ["unknown", "stale"]
            .iter()
            .map(|s| g("carmine_pgs", &[("state", s)]))
            .sum();
        assert!(pgs >= 8.0, "{pgs}");
        let text = e.encode();
        assert!(text.contains("# TYPE carmine_health_check gauge"), "{text}");
        assert!(text.contains("carmine_health_status "), "{text}");
        let t = targets(&slot);
        assert!(
            t.contains("\"127.0.0.1:9300\"") && t.contains("\"127.0.0.1:9301\""),
            "{t}"
        );
        // A follower exports its role only.
        let follower = MonSlot::following(tokio::sync::watch::channel(None).1);
        let f = collect(&follower, true);
        assert_eq!(f.value("carmine_mon_leader", &[]), Some(&Value::Gauge(0.0)));
        assert_eq!(f.value("carmine_map_epoch", &[]), None);
        assert_eq!(
            targets(&follower),
            "[{\"targets\":[],\"labels\":{\"job\":\"carmine-osd\"}}]\n"
        );
    }
}
