//! `carmine pg ls [--state S]` and `carmine pg query <pgid>`: PG states as the monitor has them
//! (`MonAdmin.PgList`, `PgQuery`: each PG's primary reports it with its heartbeats; the monitor
//! adds `stale` and `down`), with the last scrub's inconsistent objects (`ListInconsistentPgs`).
//!
//! A state is its bits' names joined with '+' in a fixed order (`active+clean`,
//! `active+degraded+recovering`); a PG never reported since the monitor started is `unknown`.
//! `+inconsistent` is appended when the PG's last scrub found objects whose copies differ.
//! `--state S` keeps the PGs whose state has every name of `S` (`--state active+clean`,
//! `--state degraded`, `--state inconsistent`); `--state unknown` keeps the never-reported ones.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use carmine_placement::{ClusterMap, Pool};
use carmine_proto::v1;
use serde_json::{json, Value};

use crate::args::Format;
use crate::output::Out;

pub use carmine_proto::pg_state::NAMES as STATE_NAMES;

/// "active+clean", with "+inconsistent" when its last scrub found differences.
pub fn state_string(state: u32, inconsistent: bool) -> String {
    let mut s = carmine_proto::pg_state::name(state);
    if inconsistent {
        s.push_str("+inconsistent");
    }
    s
}

/// What `pg ls --state S` keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFilter {
    bits: u32,
    unknown: bool,
    inconsistent: bool,
}

impl StateFilter {
    /// Whether a PG in `state` (with its scrub finding) has every name of the filter.
    pub fn matches(&self, state: u32, inconsistent: bool) -> bool {
        state & self.bits == self.bits
            && (!self.unknown || state == 0)
            && (!self.inconsistent || inconsistent)
    }
}

/// Parses `--state`: names joined with '+' (clap's value parser: a bad name is a usage error).
pub fn parse_state_filter(s: &str) -> Result<StateFilter, String> {
    let mut f = StateFilter {
        bits: 0,
        unknown: false,
        inconsistent: false,
    };
    for name in s.split('+') {
        match name {
            "unknown" => f.unknown = true,
            "inconsistent" => f.inconsistent = true,
            _ => match STATE_NAMES.iter().find(|(_, n)| *n == name) {
                Some((b, _)) => f.bits |= *b as u32,
                None => {
                    let known: Vec<&str> = STATE_NAMES.iter().map(|(_, n)| *n).collect();
                    return Err(format!(
                        "unknown PG state {name:?}: states are {}, unknown and inconsistent, \
                         joined with '+'",
                        known.join(", ")
                    ));
                }
            },
        }
    }
    Ok(f)
}

fn pgid(pool: u32, pg: u32) -> String {
    format!("{pool}.{pg:x}")
}

fn json_text(v: Value) -> String {
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

fn stat_json(s: &v1::PgStat, bad: Option<&v1::InconsistentPg>) -> Value {
    json!({
        "pgid": pgid(s.pool, s.pg),
        "acting": s.acting,
        "primary": s.acting.first(),
        "state": state_string(s.state, bad.is_some()),
        "interval_since": s.interval_since,
        "objects": s.objects,
        "degraded_objects": s.degraded_objects,
        "misplaced_objects": s.misplaced_objects,
        "recovered_bytes": s.recovered_bytes,
        "recovered_objects": s.recovered_objects,
        "blocked_by": s.blocked_by,
        "inconsistent_objects": bad.map(|b| b.objects.clone()).unwrap_or_default(),
    })
}

/// `pg ls [--pool P] [--state S]`: the PGs of `pools` (from `pgs`, the monitor's `PgList`)
/// whose state matches `filter`, with their scrub findings `bad`.
pub fn pg_ls(
    o: &Out,
    m: &ClusterMap,
    pools: &[&Pool],
    pgs: &[v1::PgStat],
    bad: &[v1::InconsistentPg],
    filter: Option<&StateFilter>,
) -> String {
    let bad: BTreeMap<(u32, u32), &v1::InconsistentPg> =
        bad.iter().map(|b| ((b.pool, b.pg), b)).collect();
    let rows: Vec<(&v1::PgStat, Option<&v1::InconsistentPg>)> = pgs
        .iter()
        .filter(|s| pools.iter().any(|p| p.id == s.pool))
        .map(|s| (s, bad.get(&(s.pool, s.pg)).copied()))
        .filter(|(s, b)| filter.is_none_or(|f| f.matches(s.state, b.is_some())))
        .collect();
    if o.format == Format::Json {
        return json_text(json!({
            "epoch": m.epoch,
            "pgs": rows.iter().map(|(s, b)| stat_json(s, *b)).collect::<Vec<Value>>(),
        }));
    }
    let mut t = format!(
        "{:<10} {:<32} {:<16} {:<8} {:>8} {:>9} {:>10} {:>6} {}\n",
        "PG",
        "STATE",
        "ACTING",
        "PRIMARY",
        "OBJECTS",
        "DEGRADED",
        "MISPLACED",
        "SINCE",
        "INCONSISTENT"
    );
    for (s, b) in &rows {
        let primary = s
            .acting
            .first()
            .map_or("-".to_string(), |x| format!("osd.{x}"));
        let objects = b.map_or(String::new(), |b| {
            let more = (b.num_objects as usize).saturating_sub(b.objects.len());
            let mut s = b.objects.join(",");
            if more > 0 {
                let _ = write!(s, " (+{more})");
            }
            s
        });
        let since = if s.interval_since == 0 {
            "-".to_string()
        } else {
            s.interval_since.to_string()
        };
        let _ = writeln!(
            t,
            "{:<10} {:<32} {:<16} {:<8} {:>8} {:>9} {:>10} {:>6} {}",
            pgid(s.pool, s.pg),
            state_string(s.state, b.is_some()),
            format!("{:?}", s.acting),
            primary,
            s.objects,
            s.degraded_objects,
            s.misplaced_objects,
            since,
            objects
        );
    }
    t
}

fn interval_json(i: &v1::PgInterval) -> Value {
    json!({"since": i.since, "acting": i.acting})
}

/// `pg query <pgid>`: one PG's state, acting set, interval, counts, recorded history and
/// what blocks it.
pub fn pg_query(
    o: &Out,
    pool: &Pool,
    pg: u32,
    r: &v1::PgQueryReply,
    bad: Option<&v1::InconsistentPg>,
) -> String {
    let s = r.stat.clone().unwrap_or_else(|| v1::PgStat {
        pool: pool.id,
        pg,
        ..Default::default()
    });
    if o.format == Format::Json {
        let mut v = stat_json(&s, bad);
        v["pool"] = json!(pool.name);
        v["reported_secs_ago"] = json!(r.reported_secs_ago);
        v["history"] = json!(r.history.iter().map(interval_json).collect::<Vec<_>>());
        return json_text(v);
    }
    let mut t = format!("pg {} (pool {})\n", pgid(s.pool, s.pg), pool.name);
    let _ = writeln!(t, "  state:      {}", state_string(s.state, bad.is_some()));
    let primary = s
        .acting
        .first()
        .map_or("no primary".to_string(), |p| format!("primary osd.{p}"));
    let _ = writeln!(t, "  acting:     {:?} ({primary})", s.acting);
    if s.interval_since > 0 {
        let _ = writeln!(t, "  interval:   since epoch {}", s.interval_since);
    }
    let _ = writeln!(
        t,
        "  objects:    {} ({} degraded, {} misplaced)",
        s.objects, s.degraded_objects, s.misplaced_objects
    );
    let _ = writeln!(
        t,
        "  recovered:  {} objects, {} bytes",
        s.recovered_objects, s.recovered_bytes
    );
    let reported = if r.reported_secs_ago == 0 {
        "never (since the monitor started)".to_string()
    } else {
        format!("{} s ago", r.reported_secs_ago)
    };
    let _ = writeln!(t, "  reported:   {reported}");
    if r.history.is_empty() {
        let _ = writeln!(t, "  history:    none recorded");
    }
    for (i, h) in r.history.iter().enumerate() {
        let label = if i == 0 { "history:" } else { "" };
        let acting: Vec<String> = h.acting.iter().map(u32::to_string).collect();
        let _ = writeln!(t, "  {label:<11} since {} [{}]", h.since, acting.join(","));
    }
    for (i, b) in s.blocked_by.iter().enumerate() {
        let label = if i == 0 { "blocked by:" } else { "" };
        let _ = writeln!(t, "  {label:<11} {b}");
    }
    if let Some(b) = bad {
        let _ = writeln!(
            t,
            "  scrub:      {} inconsistent objects ({})",
            b.num_objects,
            b.objects.join(", ")
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use carmine_placement::Osd;
    use carmine_proto::v1::PgStateBit;

    const ACTIVE: u32 = PgStateBit::PgStateActive as u32;
    const CLEAN: u32 = PgStateBit::PgStateClean as u32;
    const DEGRADED: u32 = PgStateBit::PgStateDegraded as u32;

    #[test]
    fn state_filters_need_every_named_bit() {
        let f = parse_state_filter("active+clean").unwrap();
        assert!(f.matches(ACTIVE | CLEAN, false));
        assert!(f.matches(ACTIVE | CLEAN | DEGRADED, true));
        assert!(!f.matches(ACTIVE | DEGRADED, false));
        let f = parse_state_filter("degraded").unwrap();
        assert!(f.matches(ACTIVE | DEGRADED, false));
        assert!(!f.matches(ACTIVE | CLEAN, false));
        let f = parse_state_filter("unknown").unwrap();
        assert!(f.matches(0, false) && !f.matches(ACTIVE, false));
        let f = parse_state_filter("inconsistent").unwrap();
        assert!(f.matches(ACTIVE, true) && !f.matches(ACTIVE, false));
        let e = parse_state_filter("active+bogus").unwrap_err();
        assert!(e.contains("\"bogus\""), "{e}");
        assert_eq!(state_string(0, true), "unknown+inconsistent");
        assert_eq!(state_string(CLEAN | ACTIVE, false), "active+clean");
    }

    #[test]
    fn pg_ls_filters_and_keeps_the_scrub_findings() {
        let mut m = ClusterMap {
            epoch: 4,
            ..Default::default()
        };
        m.osds.insert(
            0,
            Osd {
                id: 0,
                uuid: "u".into(),
                host: "h".into(),
                public_addr: String::new(),
                cluster_addr: String::new(),
                shard_count: 1,
                shard_ports: vec![1],
                up: true,
                in_: true,
                weight: 1.0,
                up_from: 0,
            },
        );
        let pool = Pool {
            id: 7,
            name: "data".into(),
            size: 1,
            min_size: 1,
            pg_num: 3,
        };
        m.pools.insert(7, pool.clone());
        let st = |pg, state| v1::PgStat {
            pool: 7,
            pg,
            state,
            acting: vec![0],
            objects: 3,
            ..Default::default()
        };
        let pgs = [st(0, ACTIVE | CLEAN), st(1, ACTIVE | DEGRADED), st(2, 0)];
        let bad = [v1::InconsistentPg {
            pool: 7,
            pg: 1,
            objects: vec!["a".into()],
            num_objects: 2,
            osd: 0,
            epoch: 4,
        }];
        let plain = Out {
            format: Format::Plain,
        };
        let t = pg_ls(&plain, &m, &[&pool], &pgs, &bad, None);
        assert_eq!(t.lines().count(), 4, "{t}");
        let line = t.lines().find(|l| l.starts_with("7.1 ")).unwrap();
        assert!(line.contains(" active+degraded+inconsistent "), "{t}");
        assert!(line.ends_with(" a (+1)"), "{t}");
        let f = parse_state_filter("active").unwrap();
        let t = pg_ls(&plain, &m, &[&pool], &pgs, &bad, Some(&f));
        assert_eq!(t.lines().count(), 3, "{t}");
        let json = Out {
            format: Format::Json,
        };
        let f = parse_state_filter("unknown").unwrap();
        let v: Value =
            serde_json::from_str(&pg_ls(&json, &m, &[&pool], &pgs, &bad, Some(&f))).unwrap();
        assert_eq!(v["pgs"].as_array().unwrap().len(), 1);
        assert_eq!(v["pgs"][0]["pgid"], "7.2");
        assert_eq!(v["pgs"][0]["state"], "unknown");
        assert_eq!(v["pgs"][0]["inconsistent_objects"], json!([]));
        // pg query
        let r = v1::PgQueryReply {
            stat: Some(v1::PgStat {
                blocked_by: vec!["since 12 [1,4,2]".into()],
                state: PgStateBit::PgStateIncomplete as u32,
                interval_since: 15,
                ..st(1, 0)
            }),
            history: vec![v1::PgInterval {
                pool: 7,
                pg: 1,
                since: 12,
                acting: vec![1, 4, 2],
            }],
            reported_secs_ago: 3,
        };
        let t = pg_query(&plain, &pool, 1, &r, None);
        assert!(
            t.starts_with("pg 7.1 (pool data)\n  state:      incomplete\n"),
            "{t}"
        );
        assert!(t.contains("  history:    since 12 [1,4,2]\n"), "{t}");
        assert!(t.contains("  blocked by: since 12 [1,4,2]\n"), "{t}");
        assert!(t.contains("  reported:   3 s ago\n"), "{t}");
        let v: Value = serde_json::from_str(&pg_query(&json, &pool, 1, &r, None)).unwrap();
        assert_eq!(v["history"][0]["acting"], json!([1, 4, 2]));
        assert_eq!(v["blocked_by"][0], "since 12 [1,4,2]");
        assert_eq!(v["interval_since"], 15);
    }
}
