//! The pure arithmetic behind the run's figures (issue 12 targets): percentiles of failover
//! times, the moment the cluster became clean, recovered bytes per PG interval, throughput and
//! IOPS. Everything here is a function of its inputs, so it is unit-tested without a cluster.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use carmine_placement::object_to_pg;
use carmine_proto::v1::PgStat;

use crate::admin;

/// The `q`-quantile (0.0..=1.0) of `v` by the nearest-rank method (the smallest value with at
/// least `q` of the values at or below it); `None` for no values. NaNs are ignored.
pub fn percentile(v: &[f64], q: f64) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let q = q.clamp(0.0, 1.0);
    // Nearest rank: ceil(q * n), at least 1.
    let rank = ((q * s.len() as f64).ceil() as usize).max(1);
    Some(s[rank - 1])
}

/// Decimal megabytes (10^6 bytes) per second, as disk and network figures are given; `None`
/// over no time.
pub fn mb_per_s(bytes: u64, elapsed: Duration) -> Option<f64> {
    let s = elapsed.as_secs_f64();
    (s > 0.0).then(|| bytes as f64 / 1e6 / s)
}

/// Operations per second; `None` over no time.
pub fn per_second(ops: u64, elapsed: Duration) -> Option<f64> {
    let s = elapsed.as_secs_f64();
    (s > 0.0).then(|| ops as f64 / s)
}

/// `during / before`, `None` when there was nothing before to compare with.
pub fn ratio(during: f64, before: f64) -> Option<f64> {
    (before > 0.0).then(|| during / before)
}

/// For every PG of a pool of `pg_num` PGs, an object name (`probe.<pg>.<i>`, the smallest such
/// `i`) that places in that PG: what the failover probes write.
pub fn probe_names(pg_num: u32) -> Vec<String> {
    let mut names: Vec<Option<String>> = vec![None; pg_num as usize];
    let mut missing = pg_num as usize;
    for pg in 0..pg_num {
        if names[pg as usize].is_some() {
            continue;
        }
        for i in 0u64.. {
            let n = format!("probe.{pg}.{i}");
            // pg_num > 0 here (the loop runs), so placement cannot fail.
            let Ok(p) = object_to_pg(n.as_bytes(), pg_num) else {
                break;
            };
            if p == pg {
                names[pg as usize] = Some(n);
                missing -= 1;
                break;
            }
        }
    }
    debug_assert_eq!(missing, 0);
    names.into_iter().map(Option::unwrap_or_default).collect()
}

/// Whether `pgs` (a `PgList` answer) has all `pg_num` PGs of `pool` active+clean.
pub fn all_active_clean(pgs: &[PgStat], pool: u32, pg_num: u32) -> bool {
    let mine: Vec<_> = pgs.iter().filter(|s| s.pool == pool).collect();
    mine.len() as u32 == pg_num && mine.iter().all(|s| admin::is_active_clean(s.state))
}

/// [`all_active_clean`], counting a PG with OSD `osd` in its acting set only in an interval
/// that began at or after `from_epoch` (`fresh`: the OSD's latest boot), so that a state its
/// primary reported before that OSD came back does not pass for the state after.
pub fn all_active_clean_since(
    pgs: &[PgStat],
    pool: u32,
    pg_num: u32,
    fresh: Option<(u32, u64)>,
) -> bool {
    all_active_clean(pgs, pool, pg_num)
        && fresh.is_none_or(|(osd, from_epoch)| {
            pgs.iter()
                .filter(|s| s.pool == pool && s.acting.contains(&osd))
                .all(|s| s.interval_since >= from_epoch)
        })
}

/// When the pool became active+clean and stayed so, from samples of its state (several
/// pollers may feed it: the earliest sample of an unbroken clean run counts).
#[derive(Debug, Default, Clone, Copy)]
pub struct CleanClock {
    since: Option<Instant>,
}

impl CleanClock {
    /// A sample taken at `at`. Samples must come in time order.
    pub fn observe(&mut self, clean: bool, at: Instant) {
        match (clean, self.since) {
            (true, None) => self.since = Some(at),
            (true, Some(_)) => {}
            (false, _) => self.since = None,
        }
    }

    /// Seconds from `from` until the current clean run began (0 when it began earlier);
    /// `None` while not clean.
    pub fn seconds_after(&self, from: Instant) -> Option<f64> {
        self.since
            .map(|t| t.saturating_duration_since(from).as_secs_f64())
    }
}

/// Bytes and objects recovered per (pg, interval) in PGs whose interval began at or after
/// `from_epoch`: a primary's counters start at 0 in every interval, so the highest value seen
/// per interval is what that interval moved, and the intervals add up.
#[derive(Debug, Default, Clone)]
pub struct RecoveredTally {
    per: HashMap<(u32, u64), (u64, u64)>,
}

impl RecoveredTally {
    pub fn absorb(&mut self, pgs: &[PgStat], pool: u32, from_epoch: u64) {
        for s in pgs
            .iter()
            .filter(|s| s.pool == pool && s.interval_since >= from_epoch)
        {
            let e = self.per.entry((s.pg, s.interval_since)).or_default();
            e.0 = e.0.max(s.recovered_bytes);
            e.1 = e.1.max(s.recovered_objects);
        }
    }

    /// (bytes, objects).
    pub fn total(&self) -> (u64, u64) {
        self.per
            .values()
            .fold((0, 0), |a, v| (a.0 + v.0, a.1 + v.1))
    }
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|t| t as f64 / clock_ticks())
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // "pid (comm) S ppid ...": count fields after the last ')' (comm may contain spaces).
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carmine_proto::v1::PgStateBit;

    const CLEAN: u32 = PgStateBit::PgStateActive as u32 | PgStateBit::PgStateClean as u32;

    fn stat(pool: u32, pg: u32, state: u32, since: u64, bytes: u64) -> PgStat {
        PgStat {
            pool,
            pg,
            state,
            interval_since: since,
            recovered_bytes: bytes,
            recovered_objects: bytes / 10,
            ..Default::default()
        }
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&v, 0.5), Some(3.0));
        assert_eq!(percentile(&v, 1.0), Some(5.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), Some(2.0));
        assert_eq!(percentile(&[7.5], 0.5), Some(7.5));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[f64::NAN, 2.0], 1.0), Some(2.0));
    }

    #[test]
    fn throughput_and_iops_arithmetic() {
        assert_eq!(mb_per_s(300_000_000, Duration::from_secs(3)), Some(100.0));
        assert_eq!(mb_per_s(1, Duration::ZERO), None);
        assert_eq!(per_second(500, Duration::from_millis(2500)), Some(200.0));
        assert_eq!(ratio(50.0, 200.0), Some(0.25));
        assert_eq!(ratio(50.0, 0.0), None);
    }

    #[test]
    fn probe_names_place_in_their_pg() {
        let names = probe_names(32);
        assert_eq!(names.len(), 32);
        for (pg, n) in names.iter().enumerate() {
            assert_eq!(object_to_pg(n.as_bytes(), 32).unwrap(), pg as u32, "{n}");
        }
        assert!(probe_names(0).is_empty());
    }

    #[test]
    fn clean_needs_every_pg_of_the_pool() {
        let mut pgs = vec![stat(1, 0, CLEAN, 5, 0), stat(1, 1, CLEAN, 5, 0)];
        assert!(all_active_clean(&pgs, 1, 2));
        assert!(!all_active_clean(&pgs, 1, 3), "a PG is missing");
        pgs.push(stat(2, 0, PgStateBit::PgStatePeering as u32, 5, 0));
        assert!(all_active_clean(&pgs, 1, 2), "other pools do not count");
        pgs[1].state |= PgStateBit::PgStateDegraded as u32;
        assert!(!all_active_clean(&pgs, 1, 2));
    }

    #[test]
    fn clean_since_ignores_states_from_before_the_osd_came_back() {
        let mut pgs = vec![stat(1, 0, CLEAN, 5, 0), stat(1, 1, CLEAN, 5, 0)];
        pgs[0].acting = vec![2, 0, 1];
        pgs[1].acting = vec![0, 1, 3];
        assert!(all_active_clean_since(&pgs, 1, 2, None));
        assert!(!all_active_clean_since(&pgs, 1, 2, Some((2, 7))));
        assert!(all_active_clean_since(&pgs, 1, 2, Some((2, 5))));
        pgs[0].interval_since = 8;
        assert!(all_active_clean_since(&pgs, 1, 2, Some((2, 7))));
    }

    #[test]
    fn clean_clock_counts_the_last_unbroken_clean_run() {
        let t = Instant::now();
        let s = |ms| t + Duration::from_millis(ms);
        let mut c = CleanClock::default();
        c.observe(true, s(0));
        c.observe(false, s(1000));
        assert_eq!(c.seconds_after(s(500)), None);
        c.observe(true, s(3000));
        c.observe(true, s(4000));
        assert_eq!(c.seconds_after(s(500)), Some(2.5));
        // A clean run that began before the reference point counts as 0.
        assert_eq!(c.seconds_after(s(3500)), Some(0.0));
    }

    #[test]
    fn recovered_bytes_add_up_over_intervals_since_the_epoch() {
        let mut t = RecoveredTally::default();
        t.absorb(&[stat(1, 0, 0, 10, 100), stat(1, 1, 0, 3, 999)], 1, 10);
        t.absorb(&[stat(1, 0, 0, 10, 400), stat(2, 0, 0, 12, 999)], 1, 10);
        // A new interval of PG 0 starts its counter again: both intervals count.
        t.absorb(&[stat(1, 0, 0, 12, 50)], 1, 10);
        // A stale lower report does not lower the highest seen.
        t.absorb(&[stat(1, 0, 0, 10, 200)], 1, 10);
        assert_eq!(t.total(), (450, 45));
    }

    #[test]
    fn cpu_ticks_parse_past_a_comm_with_spaces() {
        let line = "42 (carmine osd) S 1 42 42 0 -1 4194304 100 0 0 0 250 70 0 0 20 0 9 0 1 1 1";
        assert_eq!(parse_cpu_ticks(line), Some(320));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert!(cpu_seconds(std::process::id()).is_some());
    }
}
