//! PG states as the primaries report them (soft state), for `pg ls`, `pg query`, `status` and
//! health.
//!
//! Every heartbeat carries the stat of every PG its OSD leads (the whole set). The monitor keeps
//! the last report of each PG, whoever sent it, with its receive instant, and per reporting OSD
//! the recovery counters of its previous report (for a throughput). Nothing is persisted: a
//! restarted monitor knows no PG until the primaries report again ("unknown").
//!
//! What the monitor says of a PG (see [`PgStats::list`]):
//! * its acting set is the current map's (the placement function);
//! * its state is the last reported one; it is `stale` unless the report came from the PG's
//!   current primary, for the current acting set, within the last [`STALE_HEARTBEATS`]
//!   heartbeat intervals;
//! * `down` (and neither `active` nor `clean`) when the map gives it fewer OSDs than the pool's
//!   min_size, whatever was reported: such a PG serves no I/O;
//! * never reported: state 0, shown "unknown".
//!
//! A report from an OSD that is not the PG's current primary (an old primary that has not
//! applied the new map yet) never replaces one from the current primary, so the two do not make
//! the PG flap between fresh and stale.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use carmine_placement::{pg_to_osds, ClusterMap};
use carmine_proto::v1::{self, PgStateBit};

use crate::store::PgKey;

/// A PG's report is stale after this many heartbeat intervals without a fresh one.
pub const STALE_HEARTBEATS: u32 = 3;

/// At most this many `blocked_by` lines are kept per PG, each at most [`MAX_BLOCKED_LEN`] bytes.
pub const MAX_BLOCKED_BY: usize = 16;
/// See [`MAX_BLOCKED_BY`].
pub const MAX_BLOCKED_LEN: usize = 256;

pub use carmine_proto::pg_state::{
    name as state_string, parse as parse_state, NAMES as STATE_NAMES,
};

fn bit(b: PgStateBit) -> u32 {
    b as u32
}

#[derive(Debug, Clone)]
struct Reported {
    osd: u32,
    at: Instant,
    stat: v1::PgStat,
}

#[derive(Debug, Clone, Default)]
struct OsdRecovery {
    at: Option<Instant>,
    /// PG → (recovered bytes, recovered objects) in the OSD's last report.
    counters: BTreeMap<PgKey, (u64, u64)>,
    bytes_per_sec: f64,
    objects_per_sec: f64,
}

/// Sums over the PGs, for `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// State string → number of PGs.
    pub by_state: BTreeMap<String, u32>,
    /// Degraded copies.
    pub degraded_objects: u64,
    /// Misplaced copies.
    pub misplaced_objects: u64,
    /// Live objects.
    pub objects: u64,
}

/// Sums `pgs` (as [`PgStats::list`] gives them).
pub fn summarize(pgs: &[v1::PgStat]) -> Summary {
    let mut s = Summary::default();
    for p in pgs {
        *s.by_state.entry(state_string(p.state)).or_default() += 1;
        s.degraded_objects += p.degraded_objects;
        s.misplaced_objects += p.misplaced_objects;
        s.objects += p.objects;
    }
    s
}

/// The primaries' PG reports.
#[derive(Debug, Default)]
pub struct PgStats {
    table: BTreeMap<PgKey, Reported>,
    osds: BTreeMap<u32, OsdRecovery>,
}

impl PgStats {
    /// OSD `osd`'s heartbeat at `now` carried `stats` (every PG it leads). PGs the map does not
    /// have are ignored.
    pub fn report(&mut self, map: &ClusterMap, osd: u32, stats: Vec<v1::PgStat>, now: Instant) {
        let mut counters = BTreeMap::new();
        for mut s in stats {
            let key = (s.pool, s.pg);
            let Some(pool) = map.pools.get(&s.pool).filter(|p| s.pg < p.pg_num) else {
                continue;
            };
            s.blocked_by.truncate(MAX_BLOCKED_BY);
            for b in &mut s.blocked_by {
                if b.len() > MAX_BLOCKED_LEN {
                    let mut cut = MAX_BLOCKED_LEN;
                    while !b.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    b.truncate(cut);
                }
            }
            counters.insert(key, (s.recovered_bytes, s.recovered_objects));
            if let Some(old) = self.table.get(&key) {
                // A report from an OSD that is not the current primary (an old primary behind
                // on maps) does not replace the current primary's.
                let primary = pg_to_osds(map, pool, s.pg).first().copied();
                if old.osd != osd && primary == Some(old.osd) && primary != Some(osd) {
                    continue;
                }
            }
            self.table.insert(
                key,
                Reported {
                    osd,
                    at: now,
                    stat: s,
                },
            );
        }
        let rec = self.osds.entry(osd).or_default();
        let (mut bytes, mut objects) = (0u64, 0u64);
        for (k, (b, o)) in &counters {
            if let Some((pb, po)) = rec.counters.get(k) {
                bytes += b.saturating_sub(*pb);
                objects += o.saturating_sub(*po);
            }
        }
        let dt = rec
            .at
            .map(|at| now.saturating_duration_since(at).as_secs_f64())
            .unwrap_or(0.0);
        if dt > 0.0 {
            rec.bytes_per_sec = bytes as f64 / dt;
            rec.objects_per_sec = objects as f64 / dt;
        } else if rec.at.is_none() {
            rec.bytes_per_sec = 0.0;
            rec.objects_per_sec = 0.0;
        }
        rec.at = Some(now);
        rec.counters = counters;
    }

    /// Forgets what `osd` reported (it left the map).
    pub fn forget_osd(&mut self, osd: u32) {
        self.osds.remove(&osd);
        self.table.retain(|_, r| r.osd != osd);
    }

    /// Forgets reports of PGs the map no longer has.
    pub fn prune(&mut self, map: &ClusterMap) {
        self.table
            .retain(|(pool, pg), _| map.pools.get(pool).is_some_and(|p| *pg < p.pg_num));
    }

    /// One PG as the monitor shows it (see the module doc), and when it was reported.
    fn show(
        &self,
        map: &ClusterMap,
        pool: &carmine_placement::Pool,
        pg: u32,
        now: Instant,
        stale_after: Duration,
    ) -> (v1::PgStat, Option<Instant>) {
        let acting = pg_to_osds(map, pool, pg);
        let reported = self.table.get(&(pool.id, pg));
        let mut s = match reported {
            Some(r) => {
                let fresh = acting.first() == Some(&r.osd)
                    && r.stat.acting == acting
                    && now.saturating_duration_since(r.at) <= stale_after;
                let mut s = r.stat.clone();
                if fresh {
                    s.state &= !bit(PgStateBit::PgStateStale);
                } else {
                    s.state |= bit(PgStateBit::PgStateStale);
                }
                s
            }
            None => v1::PgStat::default(),
        };
        s.pool = pool.id;
        s.pg = pg;
        s.acting = acting;
        if (s.acting.len() as u32) < pool.min_size {
            s.state &= !(bit(PgStateBit::PgStateActive) | bit(PgStateBit::PgStateClean));
            s.state |= bit(PgStateBit::PgStateDown);
        }
        (s, reported.map(|r| r.at))
    }

    /// Every PG of every pool, sorted by (pool, pg).
    pub fn list(&self, map: &ClusterMap, now: Instant, stale_after: Duration) -> Vec<v1::PgStat> {
        map.pools
            .values()
            .flat_map(|p| (0..p.pg_num).map(move |pg| self.show(map, p, pg, now, stale_after).0))
            .collect()
    }

    /// One PG (`None`: no such PG in the map) and how long ago it was reported.
    pub fn query(
        &self,
        map: &ClusterMap,
        pool: u32,
        pg: u32,
        now: Instant,
        stale_after: Duration,
    ) -> Option<(v1::PgStat, Option<Duration>)> {
        let p = map.pools.get(&pool).filter(|p| pg < p.pg_num)?;
        let (s, at) = self.show(map, p, pg, now, stale_after);
        Some((s, at.map(|at| now.saturating_duration_since(at))))
    }

    /// Recovery and backfill throughput, (bytes, objects) per second: the sum over OSDs that
    /// reported within `stale_after` of the rate between their last two reports.
    pub fn recovery_rate(&self, now: Instant, stale_after: Duration) -> (u64, u64) {
        let (mut b, mut o) = (0.0, 0.0);
        for r in self.osds.values() {
            if r.at
                .is_some_and(|at| now.saturating_duration_since(at) <= stale_after)
            {
                b += r.bytes_per_sec;
                o += r.objects_per_sec;
            }
        }
        (b.round() as u64, o.round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carmine_placement::{Osd, Pool};

    const ACTIVE: u32 = PgStateBit::PgStateActive as u32;
    const CLEAN: u32 = PgStateBit::PgStateClean as u32;
    const DEGRADED: u32 = PgStateBit::PgStateDegraded as u32;
    const RECOVERING: u32 = PgStateBit::PgStateRecovering as u32;
    const STALE: u32 = PgStateBit::PgStateStale as u32;
    const DOWN: u32 = PgStateBit::PgStateDown as u32;

    fn map(up: &[bool]) -> ClusterMap {
        let mut m = ClusterMap {
            epoch: 7,
            ..Default::default()
        };
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
            1,
            Pool {
                id: 1,
                name: "p".into(),
                size: 3,
                min_size: 2,
                pg_num: 4,
            },
        );
        m
    }

    fn stat(m: &ClusterMap, pg: u32, state: u32) -> v1::PgStat {
        v1::PgStat {
            pool: 1,
            pg,
            state,
            interval_since: 5,
            acting: pg_to_osds(m, &m.pools[&1], pg),
            objects: 10,
            ..Default::default()
        }
    }

    fn primary(m: &ClusterMap, pg: u32) -> u32 {
        pg_to_osds(m, &m.pools[&1], pg)[0]
    }

    #[test]
    fn state_strings_join_bits_in_a_fixed_order() {
        assert_eq!(state_string(0), "unknown");
        assert_eq!(state_string(CLEAN | ACTIVE), "active+clean");
        assert_eq!(
            state_string(STALE | DEGRADED | ACTIVE | RECOVERING | 1 << 20),
            "active+degraded+recovering+stale"
        );
        assert_eq!(
            state_string(PgStateBit::PgStateUndersized as u32 | DOWN),
            "down+undersized"
        );
        assert_eq!(parse_state("clean+active"), Some(ACTIVE | CLEAN));
        assert_eq!(parse_state("unknown"), Some(0));
        assert_eq!(parse_state("active+bogus"), None);
        for (b, n) in STATE_NAMES {
            assert_eq!(parse_state(n), Some(b as u32));
            assert_eq!(state_string(b as u32), n);
        }
    }

    #[test]
    fn fresh_reports_from_the_primary_stale_otherwise_down_below_min_size() {
        let m = map(&[true, true, true]);
        let t0 = Instant::now();
        let stale_after = Duration::from_secs(3);
        let mut s = PgStats::default();
        // Never reported: unknown.
        let l = s.list(&m, t0, stale_after);
        assert_eq!(l.len(), 4);
        assert!(l.iter().all(|p| p.state == 0 && p.acting.len() == 3));
        // pg 0 from its primary; pg 1 from a non-primary; pg 2 for another acting set.
        s.report(&m, primary(&m, 0), vec![stat(&m, 0, ACTIVE | CLEAN)], t0);
        let other = (0..3).find(|o| *o != primary(&m, 1)).unwrap();
        s.report(&m, other, vec![stat(&m, 1, ACTIVE | CLEAN)], t0);
        let mut wrong = stat(&m, 2, ACTIVE | DEGRADED);
        wrong.acting.reverse();
        s.report(&m, primary(&m, 2), vec![wrong, stat(&m, 99, ACTIVE)], t0);
        let l = s.list(&m, t0 + Duration::from_secs(1), stale_after);
        assert_eq!(state_string(l[0].state), "active+clean");
        assert_eq!(state_string(l[1].state), "active+clean+stale");
        assert_eq!(state_string(l[2].state), "active+degraded+stale");
        assert_eq!(l[2].acting, pg_to_osds(&m, &m.pools[&1], 2), "the map's");
        assert_eq!(state_string(l[3].state), "unknown");
        // Too old: stale, with the last known bits.
        let l = s.list(&m, t0 + Duration::from_secs(4), stale_after);
        assert_eq!(state_string(l[0].state), "active+clean+stale");
        let (q, ago) = s
            .query(&m, 1, 0, t0 + Duration::from_secs(4), stale_after)
            .unwrap();
        assert_eq!(q.objects, 10);
        assert_eq!(ago, Some(Duration::from_secs(4)));
        assert!(s.query(&m, 1, 4, t0, stale_after).is_none());
        assert_eq!(s.query(&m, 1, 3, t0, stale_after).unwrap().1, None);
        // The current primary's report is not replaced by a non-primary's.
        s.report(&m, primary(&m, 0), vec![stat(&m, 0, ACTIVE | CLEAN)], t0);
        let not_primary = (0..3).find(|o| *o != primary(&m, 0)).unwrap();
        s.report(&m, not_primary, vec![stat(&m, 0, ACTIVE)], t0);
        let l = s.list(&m, t0, stale_after);
        assert_eq!(state_string(l[0].state), "active+clean");
        // Two OSDs down: every PG is below min_size, down, not active.
        let m2 = map(&[true, false, false]);
        let l = s.list(&m2, t0, stale_after);
        assert!(l
            .iter()
            .all(|p| p.state & DOWN != 0 && p.state & ACTIVE == 0));
        assert_eq!(state_string(l[3].state), "down", "never reported, but down");
        assert_eq!(state_string(l[0].state), "down+stale");
        // A removed OSD's reports go with it.
        s.forget_osd(primary(&m, 0));
        assert_eq!(s.list(&m, t0, stale_after)[0].state, 0);
    }

    #[test]
    fn summary_and_recovery_rate() {
        let m = map(&[true, true, true]);
        let t0 = Instant::now();
        let stale_after = Duration::from_secs(3);
        let mut s = PgStats::default();
        let p0 = primary(&m, 0);
        let mut st = stat(&m, 0, ACTIVE | DEGRADED | RECOVERING);
        st.degraded_objects = 7;
        st.misplaced_objects = 2;
        st.recovered_bytes = 1000;
        st.recovered_objects = 10;
        s.report(&m, p0, vec![st.clone()], t0);
        assert_eq!(
            s.recovery_rate(t0, stale_after),
            (0, 0),
            "one report: no rate"
        );
        st.recovered_bytes = 5000;
        st.recovered_objects = 50;
        s.report(&m, p0, vec![st], t0 + Duration::from_secs(2));
        assert_eq!(
            s.recovery_rate(t0 + Duration::from_secs(2), stale_after),
            (2000, 20)
        );
        assert_eq!(
            s.recovery_rate(t0 + Duration::from_secs(10), stale_after),
            (0, 0),
            "a silent OSD recovers nothing"
        );
        let sum = summarize(&s.list(&m, t0 + Duration::from_secs(2), stale_after));
        assert_eq!(sum.by_state["active+degraded+recovering"], 1);
        assert_eq!(sum.by_state["unknown"], 3);
        assert_eq!(
            (sum.degraded_objects, sum.misplaced_objects, sum.objects),
            (7, 2, 10)
        );
    }
}
