//! `carmine status` (like `ceph -s`), `carmine status --watch` (like `ceph -w`) and
//! `carmine osd df`.
//!
//! Everything shown comes from the monitor: the map, health, the primaries' PG reports and the
//! OSDs' heartbeat counters, from which the monitor computes the client I/O rates. The watch
//! polls the monitor; what it prints are differences between consecutive snapshots:
//! * map events for every epoch in between (each intermediate map is fetched, so an OSD that
//!   went down and came back between two polls still shows both), or against the current map
//!   when the monitor no longer holds them;
//! * health transitions in Ceph's words ("Health check failed/update/cleared", "Cluster is
//!   now healthy");
//! * a `pgmap` line when the PG states or the degraded/misplaced counts change, and every
//!   [`PGMAP_EVERY`] polls while there is client or recovery I/O.
//!
//! The pure parts (rendering, diffs) are functions of snapshots, unit-tested here; the loop
//! itself lives in `run.rs`, which owns the monitor connection.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use carmine_placement::ClusterMap;
use carmine_proto::v1;
use serde_json::{json, Value};

use crate::args::Format;
use crate::output::{bytes, health_json, json_text, level, Out};

/// While there is I/O, a `pgmap` line at least every this many polls.
pub const PGMAP_EVERY: u32 = 5;

fn rate(r: &v1::ClientIoRate) -> Value {
    json!({
        "read_bytes_per_sec": r.read_bytes_per_sec,
        "write_bytes_per_sec": r.write_bytes_per_sec,
        "read_ops_per_sec": r.read_ops_per_sec,
        "write_ops_per_sec": r.write_ops_per_sec,
    })
}

/// `1.2 MiB/s rd, 4 KiB/s wr, 300 op/s rd, 1 op/s wr`, as `ceph -s` puts it.
pub fn client_io_text(r: &v1::ClientIoRate) -> String {
    format!(
        "{}/s rd, {}/s wr, {} op/s rd, {} op/s wr",
        bytes(r.read_bytes_per_sec),
        bytes(r.write_bytes_per_sec),
        r.read_ops_per_sec,
        r.write_ops_per_sec
    )
}

/// `40 degraded, 2 misplaced objects`, when there are any.
fn degraded_text(s: &v1::StatusReply) -> Option<String> {
    (s.degraded_objects > 0 || s.misplaced_objects > 0).then(|| {
        format!(
            "{} degraded, {} misplaced objects",
            s.degraded_objects, s.misplaced_objects
        )
    })
}

/// `10.0 MiB/s, 3 objects/s` of recovery and backfill, when there is any.
fn recovery_text(s: &v1::StatusReply) -> Option<String> {
    (s.recovery_bytes_per_sec > 0 || s.recovery_objects_per_sec > 0).then(|| {
        format!(
            "{}/s, {} objects/s",
            bytes(s.recovery_bytes_per_sec),
            s.recovery_objects_per_sec
        )
    })
}

fn io_active(s: &v1::StatusReply) -> bool {
    let io = s.client_io.unwrap_or_default();
    io.read_ops_per_sec
        + io.write_ops_per_sec
        + s.recovery_bytes_per_sec
        + s.recovery_objects_per_sec
        > 0
}

/// PG states, most PGs first, then by name: `(count, state)`.
fn pg_states(s: &v1::StatusReply) -> Vec<(u32, &str)> {
    let mut states: Vec<(u32, &str)> = s
        .pgs_by_state
        .iter()
        .map(|(k, n)| (*n, k.as_str()))
        .collect();
    states.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    states
}

fn usage_text(s: &v1::StatusReply) -> String {
    if s.capacity_bytes == 0 {
        // Only stores without a capacity (memstore) reported.
        return format!("{} used, capacity unknown", bytes(s.used_bytes));
    }
    format!(
        "{} used, {} / {} avail",
        bytes(s.used_bytes),
        bytes(s.capacity_bytes.saturating_sub(s.used_bytes)),
        bytes(s.capacity_bytes)
    )
}

fn monitors_text(s: &v1::StatusReply) -> String {
    let leader: Vec<&str> = s
        .monitors
        .iter()
        .filter(|m| m.leader)
        .map(|m| m.addr.as_str())
        .collect();
    let standby: Vec<&str> = s
        .monitors
        .iter()
        .filter(|m| !m.leader)
        .map(|m| m.addr.as_str())
        .collect();
    let n = s.monitors.len();
    let mut t = format!(
        "{n} daemon{}, leader {}",
        if n == 1 { "" } else { "s" },
        if leader.is_empty() {
            "unknown".to_string()
        } else {
            leader.join(", ")
        }
    );
    if !standby.is_empty() {
        let _ = write!(t, ", standbys: {}", standby.join(", "));
    }
    t
}

/// `status`
pub fn status(o: &Out, s: &v1::StatusReply) -> String {
    let h = s.health.clone().unwrap_or_default();
    let io = s.client_io.unwrap_or_default();
    if o.format == Format::Json {
        return json_text(json!({
            "epoch": s.epoch,
            "health": health_json(&h),
            "monitors": s.monitors.iter().map(|m| json!({"addr": m.addr, "leader": m.leader})).collect::<Vec<_>>(),
            "osds": {"total": s.num_osds, "up": s.num_up, "in": s.num_in},
            "flags": s.flags,
            "pools": s.num_pools,
            "pgs": s.num_pgs,
            "mon_uptime_secs": s.uptime_secs,
            "pgs_by_state": s.pgs_by_state.iter().collect::<BTreeMap<_, _>>(),
            "objects": {
                "total": s.objects,
                "degraded": s.degraded_objects,
                "misplaced": s.misplaced_objects,
            },
            "usage": {
                "used_bytes": s.used_bytes,
                "capacity_bytes": s.capacity_bytes,
                "avail_bytes": s.capacity_bytes.saturating_sub(s.used_bytes),
            },
            "client_io": rate(&io),
            "recovery": {
                "bytes_per_sec": s.recovery_bytes_per_sec,
                "objects_per_sec": s.recovery_objects_per_sec,
            },
        }));
    }
    let mut t = String::new();
    let _ = writeln!(t, "  cluster:");
    let _ = writeln!(t, "    epoch:  {}", s.epoch);
    let _ = writeln!(t, "    health: {}", level(h.status));
    for c in &h.checks {
        let _ = writeln!(t, "            {}: {}", c.code, c.summary);
    }
    let _ = writeln!(t);
    let _ = writeln!(t, "  services:");
    let _ = writeln!(t, "    mon: {} (up {} s)", monitors_text(s), s.uptime_secs);
    let _ = writeln!(
        t,
        "    osd: {} osds: {} up, {} in",
        s.num_osds, s.num_up, s.num_in
    );
    if !s.flags.is_empty() {
        let _ = writeln!(t, "         flags {}", s.flags.join(","));
    }
    let _ = writeln!(t);
    let _ = writeln!(t, "  data:");
    let _ = writeln!(t, "    pools:   {} pools, {} pgs", s.num_pools, s.num_pgs);
    let _ = writeln!(t, "    objects: {} objects", s.objects);
    let _ = writeln!(t, "    usage:   {}", usage_text(s));
    let states = pg_states(s);
    let width = states
        .iter()
        .map(|(n, _)| n.to_string().len())
        .max()
        .unwrap_or(1);
    for (i, (n, state)) in states.iter().enumerate() {
        let head = if i == 0 {
            "    pgs:     "
        } else {
            "             "
        };
        let _ = writeln!(t, "{head}{n:<width$} {state}");
    }
    if let Some(d) = degraded_text(s) {
        let _ = writeln!(t, "             {d}");
    }
    let _ = writeln!(t);
    let _ = writeln!(t, "  io:");
    let _ = writeln!(t, "    client:   {}", client_io_text(&io));
    if let Some(r) = recovery_text(s) {
        let _ = writeln!(t, "    recovery: {r}");
    }
    t
}

/// `osd df`: one row per OSD, totals, and the spread of utilisation (as `ceph osd df`).
pub fn osd_df(o: &Out, rows: &[v1::OsdDfRow]) -> String {
    let pct = |r: &v1::OsdDfRow| {
        if r.capacity_bytes == 0 {
            0.0
        } else {
            100.0 * r.used_bytes as f64 / r.capacity_bytes as f64
        }
    };
    // A store without a capacity (memstore) shows its used bytes only; the utilisation
    // figures are over the OSDs that have one.
    let used: u64 = rows.iter().map(|r| r.used_bytes).sum();
    let capacity: u64 = rows.iter().map(|r| r.capacity_bytes).sum();
    let used_sized: u64 = rows
        .iter()
        .filter(|r| r.capacity_bytes > 0)
        .map(|r| r.used_bytes)
        .sum();
    let avg = if capacity == 0 {
        0.0
    } else {
        100.0 * used_sized as f64 / capacity as f64
    };
    // Only OSDs that reported a capacity count for the spread.
    let reported: Vec<f64> = rows
        .iter()
        .filter(|r| r.capacity_bytes > 0)
        .map(pct)
        .collect();
    let stddev = if reported.is_empty() {
        0.0
    } else {
        let n = reported.len() as f64;
        (reported.iter().map(|p| (p - avg).powi(2)).sum::<f64>() / n).sqrt()
    };
    let var = |p: f64| if avg > 0.0 { p / avg } else { 0.0 };
    if o.format == Format::Json {
        return json_text(json!({
            "osds": rows.iter().map(|r| json!({
                "id": r.id,
                "host": r.host,
                "weight": r.weight,
                "up": r.up,
                "in": r.r#in,
                "used_bytes": r.used_bytes,
                "capacity_bytes": r.capacity_bytes,
                "avail_bytes": r.capacity_bytes.saturating_sub(r.used_bytes),
                "utilization_pct": (r.capacity_bytes > 0).then(|| pct(r)),
                "var": (r.capacity_bytes > 0).then(|| var(pct(r))),
                "pgs": r.pgs,
                "primary_pgs": r.primary_pgs,
            })).collect::<Vec<_>>(),
            "total": {
                "used_bytes": used,
                "capacity_bytes": capacity,
                "avail_bytes": capacity.saturating_sub(used),
                "utilization_pct": avg,
                "stddev_pct": stddev,
            },
        }));
    }
    let mut t = format!(
        "{:<5} {:<16} {:>7} {:<8} {:>11} {:>11} {:>11} {:>6} {:>5} {:>5} {:>5}\n",
        "ID", "HOST", "WEIGHT", "STATUS", "SIZE", "USED", "AVAIL", "%USE", "VAR", "PGS", "PRI"
    );
    let sized = |r: &v1::OsdDfRow, v: String| {
        if r.capacity_bytes > 0 {
            v
        } else {
            "-".to_string()
        }
    };
    for r in rows {
        let _ = writeln!(
            t,
            "{:<5} {:<16} {:>7.3} {:<8} {:>11} {:>11} {:>11} {:>6} {:>5} {:>5} {:>5}",
            r.id,
            r.host,
            r.weight,
            format!(
                "{} {}",
                if r.up { "up" } else { "down" },
                if r.r#in { "in" } else { "out" }
            ),
            sized(r, bytes(r.capacity_bytes)),
            bytes(r.used_bytes),
            sized(r, bytes(r.capacity_bytes.saturating_sub(r.used_bytes))),
            sized(r, format!("{:.2}", pct(r))),
            sized(r, format!("{:.2}", var(pct(r)))),
            r.pgs,
            r.primary_pgs
        );
    }
    let _ = writeln!(
        t,
        "{:<5} {:<16} {:>7} {:<8} {:>11} {:>11} {:>11} {:>6.2}",
        "TOTAL",
        "",
        "",
        "",
        bytes(capacity),
        bytes(used),
        bytes(capacity.saturating_sub(used)),
        avg
    );
    let (min, max) = reported.iter().fold((f64::INFINITY, 0f64), |(lo, hi), p| {
        (lo.min(*p), hi.max(*p))
    });
    if !reported.is_empty() {
        let _ = writeln!(
            t,
            "MIN/MAX VAR: {:.2}/{:.2}  STDDEV: {stddev:.2}",
            var(min),
            var(max)
        );
    }
    t
}

/// What changed between two maps, one line per event, in Ceph's cluster-log words.
pub fn map_events(old: &ClusterMap, new: &ClusterMap) -> Vec<String> {
    let mut ev = Vec::new();
    for (id, o) in &new.osds {
        match old.osds.get(id) {
            None => ev.push(format!("osd.{id} created on host {}", o.host)),
            Some(p) => {
                if p.up && !o.up {
                    ev.push(format!("osd.{id} marked down"));
                }
                if !p.up && o.up {
                    ev.push(format!("osd.{id} boot ({})", o.public_addr));
                } else if p.up && o.up && p.up_from != o.up_from {
                    // Down and up again within one epoch step (a restart the monitor saw as
                    // a new process).
                    ev.push(format!("osd.{id} restarted ({})", o.public_addr));
                }
                if p.in_ && !o.in_ {
                    ev.push(format!("osd.{id} marked out"));
                }
                if !p.in_ && o.in_ {
                    ev.push(format!("osd.{id} marked in"));
                }
                if p.weight != o.weight {
                    ev.push(format!(
                        "osd.{id} reweighted {:.3} -> {:.3}",
                        p.weight, o.weight
                    ));
                }
            }
        }
    }
    for id in old.osds.keys().filter(|id| !new.osds.contains_key(id)) {
        ev.push(format!("osd.{id} removed"));
    }
    for (id, p) in &new.pools {
        match old.pools.get(id) {
            None => ev.push(format!(
                "pool '{}' created (size {}, min_size {}, {} pgs)",
                p.name, p.size, p.min_size, p.pg_num
            )),
            Some(q) if q != p => ev.push(format!(
                "pool '{}' set size {}, min_size {}, {} pgs",
                p.name, p.size, p.min_size, p.pg_num
            )),
            Some(_) => {}
        }
    }
    for (id, q) in &old.pools {
        if !new.pools.contains_key(id) {
            ev.push(format!("pool '{}' removed", q.name));
        }
    }
    let (of, nf): (&BTreeSet<String>, &BTreeSet<String>) = (&old.flags, &new.flags);
    for f in nf.difference(of) {
        ev.push(format!("flag {f} set"));
    }
    for f in of.difference(nf) {
        ev.push(format!("flag {f} unset"));
    }
    ev
}

fn severity_tag(s: i32) -> &'static str {
    match v1::HealthStatus::try_from(s) {
        Ok(v1::HealthStatus::HealthErr) => "[ERR]",
        Ok(v1::HealthStatus::HealthWarn) => "[WRN]",
        _ => "[INF]",
    }
}

/// Health transitions between two replies, as Ceph's monitor logs them.
pub fn health_events(old: &v1::HealthReply, new: &v1::HealthReply) -> Vec<String> {
    let by_code = |h: &v1::HealthReply| -> BTreeMap<String, v1::HealthCheck> {
        h.checks
            .iter()
            .map(|c| (c.code.clone(), c.clone()))
            .collect()
    };
    let (o, n) = (by_code(old), by_code(new));
    let mut ev = Vec::new();
    for (code, c) in &n {
        match o.get(code) {
            None => ev.push(format!(
                "{} Health check failed: {} ({code})",
                severity_tag(c.severity),
                c.summary
            )),
            Some(p) if p.summary != c.summary || p.severity != c.severity => ev.push(format!(
                "{} Health check update: {} ({code})",
                severity_tag(c.severity),
                c.summary
            )),
            Some(_) => {}
        }
    }
    for (code, c) in &o {
        if !n.contains_key(code) {
            ev.push(format!(
                "[INF] Health check cleared: {code} (was: {})",
                c.summary
            ));
        }
    }
    if old.status != new.status {
        if v1::HealthStatus::try_from(new.status) == Ok(v1::HealthStatus::HealthOk) {
            ev.push("[INF] Cluster is now healthy".to_string());
        } else {
            ev.push(format!(
                "{} Overall status {} -> {}",
                severity_tag(new.status),
                level(old.status),
                level(new.status)
            ));
        }
    }
    ev
}

/// One line of PG states, usage and I/O (`ceph -w`'s pgmap line).
pub fn pgmap_line(s: &v1::StatusReply) -> String {
    let states: Vec<String> = pg_states(s)
        .iter()
        .map(|(n, k)| format!("{n} {k}"))
        .collect();
    let mut t = format!(
        "pgmap e{}: {} pgs: {}; {} objects; {}",
        s.epoch,
        s.num_pgs,
        states.join(", "),
        s.objects,
        usage_text(s)
    );
    if let Some(d) = degraded_text(s) {
        let _ = write!(t, "; {d}");
    }
    let io = s.client_io.unwrap_or_default();
    let _ = write!(t, "; client {}", client_io_text(&io));
    if let Some(r) = recovery_text(s) {
        let _ = write!(t, "; recovering {r}");
    }
    t
}

/// Whether the PG states of two status replies differ.
fn pgs_changed(old: &v1::StatusReply, new: &v1::StatusReply) -> bool {
    old.pgs_by_state != new.pgs_by_state || old.num_pgs != new.num_pgs
}

/// Copies still to recover or backfill.
fn to_recover(s: &v1::StatusReply) -> u64 {
    s.degraded_objects + s.misplaced_objects
}

/// A recovery the watch follows: from the first status with copies to recover until none
/// are left.
#[derive(Debug, Clone, Copy)]
struct Recovery {
    /// The most copies left at once (grows if more OSDs fail meanwhile).
    peak: u64,
    started: std::time::Instant,
}

/// The watch's memory between polls.
#[derive(Debug)]
pub struct Watch {
    last: v1::StatusReply,
    /// Polls since the last `pgmap` line.
    since_pgmap: u32,
    recovery: Option<Recovery>,
}

impl Watch {
    pub fn new(first: v1::StatusReply) -> Self {
        let left = to_recover(&first);
        Watch {
            last: first,
            since_pgmap: 0,
            recovery: (left > 0).then(|| Recovery {
                peak: left,
                started: std::time::Instant::now(),
            }),
        }
    }

    /// The epoch the watch has shown.
    pub fn epoch(&self) -> u64 {
        self.last.epoch
    }

    /// The lines for a new status (map events are the caller's: it fetches the maps).
    pub fn update(&mut self, s: v1::StatusReply) -> Vec<String> {
        let mut ev = health_events(
            &self.last.health.clone().unwrap_or_default(),
            &s.health.clone().unwrap_or_default(),
        );
        self.since_pgmap += 1;
        let left = to_recover(&s);
        let busy = io_active(&s) || io_active(&self.last) || left != to_recover(&self.last);
        if pgs_changed(&self.last, &s) || (busy && self.since_pgmap >= PGMAP_EVERY) {
            let mut line = pgmap_line(&s);
            if let Some(r) = self.recovery.filter(|_| left > 0) {
                let peak = r.peak.max(left);
                let _ = write!(
                    line,
                    "; recovery {}% done ({left} of {peak} copies left)",
                    (peak - left) * 100 / peak
                );
            }
            ev.push(line);
            self.since_pgmap = 0;
        }
        match (&mut self.recovery, left) {
            (None, 0) => {}
            (None, n) => {
                self.recovery = Some(Recovery {
                    peak: n,
                    started: std::time::Instant::now(),
                });
            }
            (Some(r), 0) => {
                ev.push(format!(
                    "[INF] recovery complete: {} copies in {} s",
                    r.peak,
                    r.started.elapsed().as_secs()
                ));
                self.recovery = None;
            }
            (Some(r), n) => r.peak = r.peak.max(n),
        }
        self.last = s;
        ev
    }
}

/// `2026-12-06 17:50:01` (UTC), the watch's line prefix.
pub fn now_stamp() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// One watch line: plain `<time> <event>`, or a JSON object per line.
pub fn watch_line(o: &Out, event: &str) -> String {
    let stamp = now_stamp();
    if o.format == Format::Json {
        // Serialising a Value cannot fail.
        let mut s =
            serde_json::to_string(&json!({"time": stamp, "event": event})).unwrap_or_default();
        s.push('\n');
        return s;
    }
    format!("{stamp} {event}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use carmine_placement::{Osd, Pool};

    fn osd(id: u32, up: bool, inn: bool) -> Osd {
        Osd {
            id,
            uuid: format!("u{id}"),
            host: format!("h{id}"),
            public_addr: format!("10.0.0.{id}:6800"),
            cluster_addr: String::new(),
            shard_count: 1,
            shard_ports: vec![],
            up,
            in_: inn,
            weight: 1.0,
            up_from: 1,
        }
    }

    fn map(osds: Vec<Osd>) -> ClusterMap {
        let mut m = ClusterMap::default();
        for o in osds {
            m.osds.insert(o.id, o);
        }
        m
    }

    #[test]
    fn map_events_name_every_osd_pool_and_flag_change() {
        let a = map(vec![
            osd(0, true, true),
            osd(1, true, true),
            osd(2, false, true),
        ]);
        let mut b = map(vec![
            osd(0, false, true),
            osd(1, true, false),
            osd(2, true, true),
            osd(3, false, false),
        ]);
        b.osds.get_mut(&1).unwrap().weight = 0.5;
        b.pools.insert(
            1,
            Pool {
                id: 1,
                name: "rbd".into(),
                size: 3,
                min_size: 2,
                pg_num: 32,
            },
        );
        b.flags.insert("noout".into());
        let ev = map_events(&a, &b);
        for want in [
            "osd.0 marked down",
            "osd.1 marked out",
            "osd.1 reweighted 1.000 -> 0.500",
            "osd.2 boot (10.0.0.2:6800)",
            "osd.3 created on host h3",
            "pool 'rbd' created (size 3, min_size 2, 32 pgs)",
            "flag noout set",
        ] {
            assert!(ev.iter().any(|e| e == want), "{want:?} not in {ev:?}");
        }
        assert_eq!(ev.len(), 7, "{ev:?}");
        let back = map_events(&b, &a);
        for want in [
            "osd.0 boot (10.0.0.0:6800)",
            "osd.3 removed",
            "pool 'rbd' removed",
            "flag noout unset",
            "osd.1 marked in",
            "osd.2 marked down",
        ] {
            assert!(back.iter().any(|e| e == want), "{want:?} not in {back:?}");
        }
        assert!(map_events(&a, &a).is_empty());
        // A restart seen within one step: up both times, a new up_from.
        let mut c = a.clone();
        c.osds.get_mut(&0).unwrap().up_from = 9;
        assert_eq!(map_events(&a, &c), vec!["osd.0 restarted (10.0.0.0:6800)"]);
    }

    fn check(code: &str, sev: v1::HealthStatus, summary: &str) -> v1::HealthCheck {
        v1::HealthCheck {
            code: code.into(),
            severity: sev as i32,
            summary: summary.into(),
            detail: vec![],
        }
    }

    #[test]
    fn health_events_fail_update_clear_and_recover() {
        let ok = v1::HealthReply {
            status: v1::HealthStatus::HealthOk as i32,
            checks: vec![],
        };
        let warn = v1::HealthReply {
            status: v1::HealthStatus::HealthWarn as i32,
            checks: vec![check(
                "OSD_DOWN",
                v1::HealthStatus::HealthWarn,
                "1 osds down",
            )],
        };
        let worse = v1::HealthReply {
            status: v1::HealthStatus::HealthErr as i32,
            checks: vec![
                check("OSD_DOWN", v1::HealthStatus::HealthWarn, "2 osds down"),
                check("PG_DOWN", v1::HealthStatus::HealthErr, "4 pgs down"),
            ],
        };
        assert_eq!(
            health_events(&ok, &warn),
            vec![
                "[WRN] Health check failed: 1 osds down (OSD_DOWN)",
                "[WRN] Overall status HEALTH_OK -> HEALTH_WARN"
            ]
        );
        assert_eq!(
            health_events(&warn, &worse),
            vec![
                "[WRN] Health check update: 2 osds down (OSD_DOWN)",
                "[ERR] Health check failed: 4 pgs down (PG_DOWN)",
                "[ERR] Overall status HEALTH_WARN -> HEALTH_ERR"
            ]
        );
        assert_eq!(
            health_events(&worse, &ok),
            vec![
                "[INF] Health check cleared: OSD_DOWN (was: 2 osds down)",
                "[INF] Health check cleared: PG_DOWN (was: 4 pgs down)",
                "[INF] Cluster is now healthy"
            ]
        );
        assert!(health_events(&warn, &warn).is_empty());
    }

    fn status_with(states: &[(&str, u32)], reads: u64) -> v1::StatusReply {
        v1::StatusReply {
            epoch: 7,
            num_pgs: states.iter().map(|(_, n)| n).sum(),
            pgs_by_state: states.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            client_io: Some(v1::ClientIoRate {
                read_ops_per_sec: reads,
                read_bytes_per_sec: reads * 4096,
                ..Default::default()
            }),
            used_bytes: 1 << 30,
            capacity_bytes: 4 << 30,
            ..Default::default()
        }
    }

    #[test]
    fn the_watch_prints_pg_changes_at_once_and_io_every_few_polls() {
        let mut w = Watch::new(status_with(&[("active+clean", 8)], 0));
        // Nothing changed, no I/O: silence.
        for _ in 0..10 {
            assert!(w.update(status_with(&[("active+clean", 8)], 0)).is_empty());
        }
        let ev = w.update(status_with(&[("active+clean", 6), ("peering", 2)], 0));
        assert_eq!(
            ev,
            vec!["pgmap e7: 8 pgs: 6 active+clean, 2 peering; 0 objects; 1.0 GiB used, 3.0 GiB / 4.0 GiB avail; client 0 B/s rd, 0 B/s wr, 0 op/s rd, 0 op/s wr"]
        );
        // With I/O: one line per PGMAP_EVERY polls.
        let mut lines = 0;
        for _ in 0..(PGMAP_EVERY * 3) {
            lines += w
                .update(status_with(&[("active+clean", 6), ("peering", 2)], 1000))
                .len();
        }
        assert_eq!(lines, 3);
        // A recovery: progress on the pgmap lines, then its completion.
        let degraded = |n: u64| {
            let mut s = status_with(&[("active+degraded", 2), ("active+clean", 6)], 0);
            s.degraded_objects = n;
            if n == 0 {
                s.pgs_by_state = [("active+clean".to_string(), 8)].into_iter().collect();
            }
            s
        };
        let first = w.update(degraded(100));
        assert_eq!(first.len(), 1, "{first:?}");
        let mut progress = Vec::new();
        for left in [90, 80, 70, 60, 50, 40, 30, 20, 10] {
            progress.extend(w.update(degraded(left)));
        }
        assert!(
            progress
                .iter()
                .any(|l| l.ends_with("; recovery 50% done (50 of 100 copies left)")),
            "{progress:?}"
        );
        let done = w.update(degraded(0));
        assert!(
            done.iter()
                .any(|l| l.starts_with("[INF] recovery complete: 100 copies in ")),
            "{done:?}"
        );
        assert!(w.update(degraded(0)).is_empty());
        let last = pgmap_line(&status_with(&[("active+clean", 8)], 1000));
        assert!(
            last.contains("client 3.9 MiB/s rd, 0 B/s wr, 1000 op/s rd, 0 op/s wr"),
            "{last}"
        );
    }

    #[test]
    fn watch_lines_are_stamped_text_or_one_json_object_each() {
        let plain = watch_line(
            &Out {
                format: Format::Plain,
            },
            "[INF] e3: osd.1 marked down",
        );
        assert!(plain.ends_with(" [INF] e3: osd.1 marked down\n"), "{plain}");
        assert_eq!(
            plain.len(),
            "2026-12-06 17:50:01 ".len() + "[INF] e3: osd.1 marked down\n".len()
        );
        let j = watch_line(
            &Out {
                format: Format::Json,
            },
            "pgmap e3: 8 pgs",
        );
        assert_eq!(j.matches('\n').count(), 1, "{j}");
        let v: Value = serde_json::from_str(j.trim()).unwrap();
        assert_eq!(v["event"], "pgmap e3: 8 pgs");
        assert_eq!(v["time"].as_str().unwrap().len(), 19);
    }

    #[test]
    fn status_reads_like_ceph_s() {
        let mut s = status_with(&[("active+clean", 30), ("active+degraded", 2)], 250);
        s.num_osds = 3;
        s.num_up = 2;
        s.num_in = 3;
        s.num_pools = 1;
        s.objects = 1200;
        s.degraded_objects = 40;
        s.flags = vec!["noout".into()];
        s.monitors = vec![
            v1::MonitorInfo {
                addr: "10.0.0.1:6789".into(),
                leader: true,
            },
            v1::MonitorInfo {
                addr: "10.0.0.2:6789".into(),
                leader: false,
            },
        ];
        s.health = Some(v1::HealthReply {
            status: v1::HealthStatus::HealthWarn as i32,
            checks: vec![check(
                "OSD_DOWN",
                v1::HealthStatus::HealthWarn,
                "1 osds down",
            )],
        });
        let t = status(
            &Out {
                format: Format::Plain,
            },
            &s,
        );
        for want in [
            "    health: HEALTH_WARN\n            OSD_DOWN: 1 osds down\n",
            "    mon: 2 daemons, leader 10.0.0.1:6789, standbys: 10.0.0.2:6789 (up 0 s)\n",
            "    osd: 3 osds: 2 up, 3 in\n         flags noout\n",
            "    pools:   1 pools, 32 pgs\n",
            "    objects: 1200 objects\n",
            "    usage:   1.0 GiB used, 3.0 GiB / 4.0 GiB avail\n",
            "    pgs:     30 active+clean\n             2  active+degraded\n",
            "             40 degraded, 0 misplaced objects\n",
            "    client:   1000.0 KiB/s rd, 0 B/s wr, 250 op/s rd, 0 op/s wr\n",
        ] {
            assert!(t.contains(want), "{want:?} not in\n{t}");
        }
        let j: Value = serde_json::from_str(&status(
            &Out {
                format: Format::Json,
            },
            &s,
        ))
        .unwrap();
        assert_eq!(j["client_io"]["read_ops_per_sec"], 250);
        assert_eq!(j["usage"]["avail_bytes"], 3u64 << 30);
        assert_eq!(j["monitors"][1]["leader"], false);
        assert_eq!(j["flags"][0], "noout");
    }

    #[test]
    fn osd_df_shows_utilisation_and_its_spread() {
        let row = |id: u32, used: u64, cap: u64, pgs: u32| v1::OsdDfRow {
            id,
            host: format!("h{id}"),
            weight: 1.0,
            up: true,
            r#in: true,
            used_bytes: used,
            capacity_bytes: cap,
            pgs,
            primary_pgs: pgs / 3,
        };
        let rows = vec![
            row(0, 1 << 30, 4 << 30, 30),
            row(1, 3 << 30, 4 << 30, 33),
            row(2, 0, 0, 0),
        ];
        let t = osd_df(
            &Out {
                format: Format::Plain,
            },
            &rows,
        );
        assert!(
            t.lines()
                .nth(1)
                .unwrap()
                .contains("25.00  0.50    30    10"),
            "{t}"
        );
        assert!(
            t.lines()
                .nth(2)
                .unwrap()
                .contains("75.00  1.50    33    11"),
            "{t}"
        );
        assert!(t.contains("TOTAL"), "{t}");
        assert!(t.contains("MIN/MAX VAR: 0.50/1.50  STDDEV: 25.00"), "{t}");
        let j: Value = serde_json::from_str(&osd_df(
            &Out {
                format: Format::Json,
            },
            &rows,
        ))
        .unwrap();
        assert_eq!(j["total"]["used_bytes"], 4u64 << 30);
        assert_eq!(j["total"]["utilization_pct"], 50.0);
        assert!(j["osds"][2]["utilization_pct"].is_null());
        assert!(
            t.lines()
                .nth(3)
                .unwrap()
                .contains("      -     -     0     0"),
            "{t}"
        );
    }
}
