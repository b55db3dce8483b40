//! Rendering: every command renders as plain text or as one JSON document.

use std::collections::BTreeMap;
use std::fmt::Write;

use carmine_placement::{pg_to_osds, ClusterMap, Pool};
use carmine_proto::v1;
use serde_json::{json, Value};

use crate::args::Format;

/// Output settings.
pub struct Out {
    /// Plain or JSON.
    pub format: Format,
}

pub(crate) fn json_text(v: Value) -> String {
    // Serialising a Value cannot fail.
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

pub(crate) fn level(s: i32) -> &'static str {
    v1::HealthStatus::try_from(s)
        .unwrap_or(v1::HealthStatus::HealthUnspecified)
        .as_str_name()
}

pub(crate) fn health_json(h: &v1::HealthReply) -> Value {
    json!({
        "status": level(h.status),
        "checks": h.checks.iter().map(|c| json!({
            "code": c.code,
            "severity": level(c.severity),
            "summary": c.summary,
            "detail": c.detail,
        })).collect::<Vec<_>>(),
    })
}

/// `n` bytes for people: B, KiB, MiB, GiB with one decimal.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// `health [detail]`
pub fn health(o: &Out, h: &v1::HealthReply, detail: bool) -> String {
    if o.format == Format::Json {
        return json_text(health_json(h));
    }
    let mut t = format!("{}\n", level(h.status));
    for c in &h.checks {
        let _ = writeln!(t, "{} ({}): {}", c.code, level(c.severity), c.summary);
        if detail {
            for d in &c.detail {
                let _ = writeln!(t, "    {d}");
            }
        }
    }
    t
}

fn up_in(up: bool, inn: bool) -> String {
    format!(
        "{} {}",
        if up { "up" } else { "down" },
        if inn { "in" } else { "out" }
    )
}

/// `osd ls`
pub fn osd_ls(o: &Out, m: &ClusterMap) -> String {
    if o.format == Format::Json {
        return json_text(json!(m.osds.values().collect::<Vec<_>>()));
    }
    let mut t = format!(
        "{:<5} {:<16} {:<8} {:>8} {:<22} {}\n",
        "ID", "HOST", "STATUS", "WEIGHT", "PUBLIC_ADDR", "SHARDS"
    );
    for d in m.osds.values() {
        let _ = writeln!(
            t,
            "{:<5} {:<16} {:<8} {:>8.3} {:<22} {}",
            d.id,
            d.host,
            up_in(d.up, d.in_),
            d.weight,
            d.public_addr,
            d.shard_count
        );
    }
    t
}

/// `osd tree`
pub fn osd_tree(o: &Out, m: &ClusterMap) -> String {
    let mut hosts: BTreeMap<&str, Vec<&carmine_placement::Osd>> = BTreeMap::new();
    for d in m.osds.values() {
        hosts.entry(d.host.as_str()).or_default().push(d);
    }
    if o.format == Format::Json {
        return json_text(json!(hosts
            .iter()
            .map(|(h, osds)| json!({
                "host": h,
                "weight": osds.iter().map(|d| d.weight).sum::<f64>(),
                "osds": osds,
            }))
            .collect::<Vec<_>>()));
    }
    let mut t = format!(
        "{:<6} {:>8}  {:<5} {:<16} {}\n",
        "ID", "WEIGHT", "TYPE", "NAME", "STATUS"
    );
    for (h, osds) in &hosts {
        let w: f64 = osds.iter().map(|d| d.weight).sum();
        let _ = writeln!(t, "{:<6} {:>8.3}  {:<5} {:<16}", "-", w, "host", h);
        for d in osds {
            let _ = writeln!(
                t,
                "{:<6} {:>8.3}  {:<5} {:<16} {}",
                d.id,
                d.weight,
                "osd",
                format!("  osd.{}", d.id),
                up_in(d.up, d.in_)
            );
        }
    }
    t
}

/// A change that made (or did not need) an epoch.
pub fn changed(o: &Out, what: &str, epoch: u64) -> String {
    if o.format == Format::Json {
        return json_text(json!({"result": what, "epoch": epoch}));
    }
    format!("{what} (epoch {epoch})\n")
}

/// `pool create`
pub fn pool_created(o: &Out, name: &str, id: u32, epoch: u64) -> String {
    if o.format == Format::Json {
        return json_text(json!({"pool": name, "id": id, "epoch": epoch}));
    }
    format!("created pool {name} (id {id}, epoch {epoch})\n")
}

/// `pool ls`
pub fn pool_ls(o: &Out, l: &v1::PoolList) -> String {
    let pools: Vec<Pool> = l.pools.iter().cloned().map(Into::into).collect();
    if o.format == Format::Json {
        return json_text(json!(pools));
    }
    let mut t = format!(
        "{:<5} {:<20} {:>5} {:>9} {:>7}\n",
        "ID", "NAME", "SIZE", "MIN_SIZE", "PG_NUM"
    );
    for p in &pools {
        let _ = writeln!(
            t,
            "{:<5} {:<20} {:>5} {:>9} {:>7}",
            p.id, p.name, p.size, p.min_size, p.pg_num
        );
    }
    t
}

fn pgid(pool: u32, pg: u32) -> String {
    format!("{pool}.{pg:x}")
}

/// `pg map <pool> <object>`
pub fn pg_map(o: &Out, m: &ClusterMap, p: &Pool, object: &str, pg: u32) -> String {
    let osds = pg_to_osds(m, p, pg);
    if o.format == Format::Json {
        return json_text(json!({
            "epoch": m.epoch,
            "pool": p.name,
            "pool_id": p.id,
            "object": object,
            "pg": pg,
            "pgid": pgid(p.id, pg),
            "osds": osds,
            "primary": osds.first(),
        }));
    }
    let primary = osds
        .first()
        .map_or("none".to_string(), |id| format!("osd.{id}"));
    format!(
        "epoch {} pool {} ({}) object {object:?} -> pg {} -> {osds:?} primary {primary}\n",
        m.epoch,
        p.name,
        p.id,
        pgid(p.id, pg)
    )
}

/// `pg dump`
pub fn pg_dump(o: &Out, m: &ClusterMap) -> String {
    let rows: Vec<(String, Vec<u32>, &Pool)> = m
        .pools
        .values()
        .flat_map(|p| (0..p.pg_num).map(move |pg| (pgid(p.id, pg), pg_to_osds(m, p, pg), p)))
        .collect();
    let state = |n: usize, p: &Pool| {
        if (n as u32) < p.min_size {
            "unavailable"
        } else if (n as u32) < p.size {
            "degraded"
        } else {
            "active"
        }
    };
    if o.format == Format::Json {
        return json_text(json!({
            "epoch": m.epoch,
            "pgs": rows.iter().map(|(id, osds, p)| json!({
                "pgid": id,
                "osds": osds,
                "primary": osds.first(),
                "state": state(osds.len(), p),
            })).collect::<Vec<_>>(),
        }));
    }
    let mut t = format!(
        "{:<10} {:<12} {:<24} {}\n",
        "PG", "STATE", "OSDS", "PRIMARY"
    );
    for (id, osds, p) in &rows {
        let primary = osds.first().map_or("-".to_string(), |x| x.to_string());
        let _ = writeln!(
            t,
            "{:<10} {:<12} {:<24} {}",
            id,
            state(osds.len(), p),
            format!("{osds:?}"),
            primary
        );
    }
    t
}

/// `map get`
pub fn map(o: &Out, m: &ClusterMap) -> String {
    if o.format == Format::Json {
        return json_text(json!({
            "epoch": m.epoch,
            "flags": m.flags,
            "osds": m.osds.values().collect::<Vec<_>>(),
            "pools": m.pools.values().collect::<Vec<_>>(),
            "next_osd_id": m.next_osd_id,
            "next_pool_id": m.next_pool_id,
        }));
    }
    let mut t = format!("epoch {}\n", m.epoch);
    let flags: Vec<&str> = m.flags.iter().map(String::as_str).collect();
    let _ = writeln!(
        t,
        "flags {}",
        if flags.is_empty() {
            "-".into()
        } else {
            flags.join(",")
        }
    );
    for p in m.pools.values() {
        let _ = writeln!(
            t,
            "pool {} '{}' size {} min_size {} pg_num {}",
            p.id, p.name, p.size, p.min_size, p.pg_num
        );
    }
    for d in m.osds.values() {
        let _ = writeln!(
            t,
            "osd.{} {} weight {} host {} public {} cluster {} shard_ports {:?} uuid {}",
            d.id,
            up_in(d.up, d.in_),
            d.weight,
            d.host,
            d.public_addr,
            d.cluster_addr,
            d.shard_ports,
            d.uuid
        );
    }
    t
}
