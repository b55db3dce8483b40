//! Cluster health from the map and OSD usage.
//!
//! Checks (the worst severity wins):
//! * `OSD_STORE_FAILED` (ERR): OSDs whose object store failed (an I/O error on the device), as
//!   they report it with their heartbeats: each named with its host and the reason. The
//!   monitor keeps such an OSD down while it reports the failure, and until it boots again as
//!   a new process (its store mounted afresh) or is removed;
//! * `OSD_DOWN` (WARN): OSDs that are down but still in (their data has not moved yet);
//! * `PG_DEGRADED` (WARN): PGs placed on fewer than `size` OSDs, and PGs whose primary reports
//!   them degraded (copies missing on members), with the number of missing copies;
//! * `PG_UNAVAILABLE` (ERR): PGs placed on fewer than `min_size` OSDs (no I/O; `down` in
//!   `pg ls`);
//! * `PG_INCOMPLETE` (ERR): PGs whose primary found a recorded interval no reachable member
//!   speaks for (no I/O until one returns), each with the intervals that block it;
//! * `PG_STALE` (WARN): PGs whose current primary has not reported them recently (a PG never
//!   reported since the monitor started is `unknown`, not stale, and raises nothing);
//! * `OSD_NEARFULL` (WARN) / `OSD_FULL` (ERR): OSDs above the usage ratios;
//! * `PG_INCONSISTENT` (ERR, Ceph's `PG_DAMAGED`/`OSD_SCRUB_ERRORS`): PGs whose last scrub
//!   found objects that differ between their copies, as their primaries report them (one
//!   detail line per PG, naming its objects). A clean scrub of the PG clears it.
//!
//! PG checks run the placement function over every PG of every pool: cheap for the pg counts
//! a monitor serves (it is pure arithmetic). The reported states come from
//! [`crate::pgstats`] (one entry per PG, as `PgList` gives them).

use carmine_placement::{pg_to_osds, ClusterMap};
use carmine_proto::v1::{
    HealthCheck, HealthReply, HealthStatus, InconsistentPg, PgStat, PgStateBit,
};

use crate::pgstats::state_string;

/// At most this many detail lines per check.
const MAX_DETAIL: usize = 50;

fn check(code: &str, severity: HealthStatus, summary: String, detail: Vec<String>) -> HealthCheck {
    HealthCheck {
        code: code.into(),
        severity: severity as i32,
        summary,
        detail: detail.into_iter().take(MAX_DETAIL).collect(),
    }
}

/// Health of `map`; `usage` gives (osd, used, capacity); `inconsistent`: the PGs scrubs found
/// inconsistent (one entry per PG); `pgs`: every PG's state ([`crate::pgstats`]). No store
/// failures: see [`health_with_failures`].
pub fn health(
    map: &ClusterMap,
    usage: impl Iterator<Item = (u32, u64, u64)>,
    nearfull: f64,
    full: f64,
    inconsistent: &[InconsistentPg],
    pgs: &[PgStat],
) -> HealthReply {
    health_with_failures(map, usage, nearfull, full, inconsistent, pgs, &[])
}

/// [`health`], with the OSDs whose object store failed, as `(osd id, reason)` (what
/// [`crate::state::Monitor::store_failures`] holds): `OSD_STORE_FAILED` (ERR), one detail
/// line per OSD naming it, its host and the reason. OSDs no longer in the map are left out.
pub fn health_with_failures(
    map: &ClusterMap,
    usage: impl Iterator<Item = (u32, u64, u64)>,
    nearfull: f64,
    full: f64,
    inconsistent: &[InconsistentPg],
    pgs: &[PgStat],
    store_failed: &[(u32, String)],
) -> HealthReply {
    let mut checks = Vec::new();
    let failed: Vec<String> = store_failed
        .iter()
        .filter_map(|(id, why)| {
            let o = map.osds.get(id)?;
            let state = if o.up { "up" } else { "down" };
            Some(format!(
                "osd.{id} (host {}) store failed: {why} ({state})",
                o.host
            ))
        })
        .collect();
    if !failed.is_empty() {
        checks.push(check(
            "OSD_STORE_FAILED",
            HealthStatus::HealthErr,
            format!(
                "{} osds with a failed store (I/O errors): marked down, data served by the other copies",
                failed.len()
            ),
            failed,
        ));
    }
    let down: Vec<String> = map
        .osds
        .values()
        .filter(|o| !o.up && o.in_)
        .map(|o| format!("osd.{} (host {}) is down", o.id, o.host))
        .collect();
    if !down.is_empty() {
        checks.push(check(
            "OSD_DOWN",
            HealthStatus::HealthWarn,
            format!("{} osds down", down.len()),
            down,
        ));
    }
    let reported: std::collections::BTreeMap<(u32, u32), &PgStat> =
        pgs.iter().map(|s| ((s.pool, s.pg), s)).collect();
    let has = |s: &PgStat, b: PgStateBit| s.state & b as u32 != 0;
    let (mut degraded, mut unavailable) = (Vec::new(), Vec::new());
    let mut degraded_objects = 0u64;
    for p in map.pools.values() {
        for pg in 0..p.pg_num {
            let n = pg_to_osds(map, p, pg).len() as u32;
            let stat = reported.get(&(p.id, pg)).copied();
            let missing = stat.map_or(0, |s| s.degraded_objects);
            let reported_degraded = stat.is_some_and(|s| has(s, PgStateBit::PgStateDegraded));
            if n < p.min_size {
                unavailable.push(format!(
                    "pg {}.{pg:x} has {n} of {} osds (min_size {})",
                    p.id, p.size, p.min_size
                ));
            } else if n < p.size {
                degraded_objects += missing;
                degraded.push(format!("pg {}.{pg:x} has {n} of {} osds", p.id, p.size));
            } else if reported_degraded {
                degraded_objects += missing;
                degraded.push(format!(
                    "pg {}.{pg:x} is {}: {missing} objects degraded",
                    p.id,
                    stat.map_or_else(String::new, |s| state_string(s.state))
                ));
            }
        }
    }
    if !unavailable.is_empty() {
        checks.push(check(
            "PG_UNAVAILABLE",
            HealthStatus::HealthErr,
            format!("{} pgs below min_size", unavailable.len()),
            unavailable,
        ));
    }
    let incomplete: Vec<String> = pgs
        .iter()
        .filter(|s| has(s, PgStateBit::PgStateIncomplete))
        .map(|s| {
            let by = if s.blocked_by.is_empty() {
                String::new()
            } else {
                format!(": blocked by {}", s.blocked_by.join("; "))
            };
            format!("pg {}.{:x} is {}{by}", s.pool, s.pg, state_string(s.state))
        })
        .collect();
    if !incomplete.is_empty() {
        checks.push(check(
            "PG_INCOMPLETE",
            HealthStatus::HealthErr,
            format!(
                "{} pgs incomplete: no reachable member of a past interval, no I/O",
                incomplete.len()
            ),
            incomplete,
        ));
    }
    if !inconsistent.is_empty() {
        let objects: u64 = inconsistent.iter().map(|p| u64::from(p.num_objects)).sum();
        let detail = inconsistent
            .iter()
            .map(|p| {
                let more = (p.num_objects as usize).saturating_sub(p.objects.len());
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                format!(
                    "pg {}.{:x} is inconsistent: {} objects ({}{more}), scrubbed by osd.{} in epoch {}",
                    p.pool,
                    p.pg,
                    p.num_objects,
                    p.objects.join(", "),
                    p.osd,
                    p.epoch
                )
            })
            .collect();
        checks.push(check(
            "PG_INCONSISTENT",
            HealthStatus::HealthErr,
            format!(
                "{} pgs inconsistent: {objects} scrub errors (possible data damage)",
                inconsistent.len()
            ),
            detail,
        ));
    }
    if !degraded.is_empty() {
        checks.push(check(
            "PG_DEGRADED",
            HealthStatus::HealthWarn,
            format!(
                "{} pgs degraded, {degraded_objects} objects degraded",
                degraded.len()
            ),
            degraded,
        ));
    }
    let stale: Vec<String> = pgs
        .iter()
        .filter(|s| has(s, PgStateBit::PgStateStale))
        .map(|s| {
            let primary = s
                .acting
                .first()
                .map_or("no primary".to_string(), |p| format!("primary osd.{p}"));
            format!(
                "pg {}.{:x} is {}: not reported by its {primary}",
                s.pool,
                s.pg,
                state_string(s.state)
            )
        })
        .collect();
    if !stale.is_empty() {
        checks.push(check(
            "PG_STALE",
            HealthStatus::HealthWarn,
            format!("{} pgs stale", stale.len()),
            stale,
        ));
    }
    let (mut nf, mut fl) = (Vec::new(), Vec::new());
    for (id, used, cap) in usage {
        if cap == 0 || !map.osds.contains_key(&id) {
            continue;
        }
        let r = used as f64 / cap as f64;
        let line = format!("osd.{id} is {:.1}% full", r * 100.0);
        if r >= full {
            fl.push(line);
        } else if r >= nearfull {
            nf.push(line);
        }
    }
    if !fl.is_empty() {
        checks.push(check(
            "OSD_FULL",
            HealthStatus::HealthErr,
            format!("{} full osds", fl.len()),
            fl,
        ));
    }
    if !nf.is_empty() {
        checks.push(check(
            "OSD_NEARFULL",
            HealthStatus::HealthWarn,
            format!("{} nearly full osds", nf.len()),
            nf,
        ));
    }
    let status = checks
        .iter()
        .map(|c| c.severity)
        .max()
        .unwrap_or(HealthStatus::HealthOk as i32);
    HealthReply { status, checks }
}

/// `AUTH_INSECURE`: the monitor runs with `--insecure` (calls without a credential act as
/// any OSD).
pub fn auth_insecure() -> HealthCheck {
    check(
        "AUTH_INSECURE",
        HealthStatus::HealthWarn,
        "the monitor accepts calls without a credential (--insecure)".into(),
        vec![
            "anyone who reaches the monitor can boot OSDs, report failures and read the keyring; \
              restart it with --admin-token and give OSDs keys from `carmine osd new`"
                .into(),
        ],
    )
}

/// `reply` with `c` added (and the overall status raised to it).
pub fn with_check(mut reply: HealthReply, c: HealthCheck) -> HealthReply {
    reply.status = reply.status.max(c.severity);
    reply.checks.push(c);
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use carmine_placement::{Osd, Pool};

    fn map(up: &[bool]) -> ClusterMap {
        let mut m = ClusterMap::default();
        for (i, &u) in up.iter().enumerate() {
            let id = i as u32;
            m.osds.insert(
                id,
                Osd {
                    id,
                    uuid: format!("{id}"),
                    host: format!("h{id}"),
                    shard_count: 1,
                    shard_ports: vec![1],
                    up: u,
                    in_: true,
                    weight: 1.0,
                    ..Default::default()
                },
            );
        }
        m.pools.insert(
            0,
            Pool {
                id: 0,
                name: "p".into(),
                size: 3,
                min_size: 2,
                pg_num: 16,
            },
        );
        m
    }

    #[test]
    fn a_failed_store_is_an_error_naming_the_osd_and_the_reason() {
        let m = map(&[true, true, false]);
        let failures = [
            (2, "shard 0: read of block 7 failed: I/O error".to_string()),
            // An OSD no longer in the map raises nothing.
            (9, "gone".to_string()),
        ];
        let h = health_with_failures(&m, std::iter::empty(), 0.85, 0.95, &[], &[], &failures);
        assert_eq!(h.status, HealthStatus::HealthErr as i32);
        let c = &h.checks[0];
        assert_eq!(c.code, "OSD_STORE_FAILED");
        assert_eq!(c.severity, HealthStatus::HealthErr as i32);
        assert_eq!(c.detail.len(), 1, "{:?}", c.detail);
        assert!(
            c.detail[0].starts_with("osd.2 (host h2) store failed: shard 0: read of block 7")
                && c.detail[0].ends_with("(down)"),
            "{:?}",
            c.detail
        );
        // Without failures: only the down OSD's warning.
        let h = health_with_failures(&m, std::iter::empty(), 0.85, 0.95, &[], &[], &[]);
        assert!(h.checks.iter().all(|c| c.code != "OSD_STORE_FAILED"));
    }

    #[test]
    fn levels_follow_the_worst_check() {
        let h = health(
            &map(&[true, true, true]),
            std::iter::empty(),
            0.85,
            0.95,
            &[],
            &[],
        );
        assert_eq!(h.status, HealthStatus::HealthOk as i32);
        assert!(h.checks.is_empty());

        let h = health(
            &map(&[true, true, false]),
            std::iter::empty(),
            0.85,
            0.95,
            &[],
            &[],
        );
        assert_eq!(h.status, HealthStatus::HealthWarn as i32);
        let codes: Vec<&str> = h.checks.iter().map(|c| c.code.as_str()).collect();
        assert_eq!(codes, ["OSD_DOWN", "PG_DEGRADED"]);

        let h = health(
            &map(&[true, false, false]),
            std::iter::empty(),
            0.85,
            0.95,
            &[],
            &[],
        );
        assert_eq!(h.status, HealthStatus::HealthErr as i32);
        assert!(h.checks.iter().any(|c| c.code == "PG_UNAVAILABLE"));

        let usage = [(0u32, 90u64, 100u64), (1, 96, 100)];
        let h = health(
            &map(&[true, true, true]),
            usage.into_iter(),
            0.85,
            0.95,
            &[],
            &[],
        );
        assert_eq!(h.status, HealthStatus::HealthErr as i32);
        let codes: Vec<&str> = h.checks.iter().map(|c| c.code.as_str()).collect();
        assert_eq!(codes, ["OSD_FULL", "OSD_NEARFULL"]);
    }

    #[test]
    fn an_inconsistent_pg_is_an_error_naming_its_objects() {
        let m = map(&[true, true, true]);
        let pg = InconsistentPg {
            pool: 0,
            pg: 10,
            objects: vec!["obj-a".into(), "obj-b".into()],
            num_objects: 3,
            osd: 2,
            epoch: 9,
        };
        let h = health(
            &m,
            std::iter::empty(),
            0.85,
            0.95,
            std::slice::from_ref(&pg),
            &[],
        );
        assert_eq!(h.status, HealthStatus::HealthErr as i32);
        assert_eq!(h.checks.len(), 1);
        let c = &h.checks[0];
        assert_eq!(c.code, "PG_INCONSISTENT");
        assert_eq!(c.severity, HealthStatus::HealthErr as i32);
        assert!(
            c.summary.starts_with("1 pgs inconsistent: 3 scrub errors"),
            "{}",
            c.summary
        );
        assert_eq!(
            c.detail,
            ["pg 0.a is inconsistent: 3 objects (obj-a, obj-b and 1 more), scrubbed by osd.2 in epoch 9"]
        );
        // It comes before the warnings of a degraded cluster, and goes with the report.
        let h = health(
            &map(&[true, true, false]),
            std::iter::empty(),
            0.85,
            0.95,
            &[pg],
            &[],
        );
        let codes: Vec<&str> = h.checks.iter().map(|c| c.code.as_str()).collect();
        assert_eq!(codes, ["OSD_DOWN", "PG_INCONSISTENT", "PG_DEGRADED"]);
        let h = health(&m, std::iter::empty(), 0.85, 0.95, &[], &[]);
        assert!(h.checks.is_empty());
    }

    fn reported(m: &ClusterMap, pg: u32, state: u32) -> PgStat {
        PgStat {
            pool: 0,
            pg,
            state,
            acting: pg_to_osds(m, &m.pools[&0], pg),
            ..Default::default()
        }
    }

    /// Reported states: degraded is a warning counting the missing copies, incomplete an error
    /// naming what blocks it, stale a warning; unknown (never reported) raises nothing.
    #[test]
    fn reported_pg_states_raise_degraded_incomplete_and_stale() {
        use PgStateBit as B;
        let m = map(&[true, true, true]);
        let active = B::PgStateActive as u32;
        let mut d = reported(&m, 1, active | B::PgStateDegraded as u32);
        d.degraded_objects = 12;
        let mut d2 = reported(&m, 2, active | B::PgStateDegraded as u32);
        d2.degraded_objects = 3;
        let mut inc = reported(&m, 3, B::PgStateIncomplete as u32);
        inc.blocked_by = vec!["since 12 [1,4,2]".into()];
        let stale = reported(
            &m,
            4,
            active | B::PgStateClean as u32 | B::PgStateStale as u32,
        );
        let unknown = reported(&m, 5, 0);
        let run = |pgs: &[PgStat]| health(&m, std::iter::empty(), 0.85, 0.95, &[], pgs);

        let h = run(std::slice::from_ref(&unknown));
        assert_eq!(h.status, HealthStatus::HealthOk as i32, "{h:?}");

        let h = run(&[d.clone(), d2.clone(), unknown.clone()]);
        assert_eq!(h.status, HealthStatus::HealthWarn as i32);
        assert_eq!(h.checks.len(), 1);
        assert_eq!(h.checks[0].code, "PG_DEGRADED");
        assert_eq!(h.checks[0].summary, "2 pgs degraded, 15 objects degraded");
        assert_eq!(
            h.checks[0].detail[0],
            "pg 0.1 is active+degraded: 12 objects degraded"
        );

        let h = run(&[d, inc, stale]);
        assert_eq!(h.status, HealthStatus::HealthErr as i32);
        let codes: Vec<&str> = h.checks.iter().map(|c| c.code.as_str()).collect();
        assert_eq!(codes, ["PG_INCOMPLETE", "PG_DEGRADED", "PG_STALE"]);
        assert_eq!(
            h.checks[0].detail,
            ["pg 0.3 is incomplete: blocked by since 12 [1,4,2]"]
        );
        assert_eq!(h.checks[2].summary, "1 pgs stale");
        assert!(h.checks[2].detail[0].starts_with("pg 0.4 is active+clean+stale"));
    }
}
