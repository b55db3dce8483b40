//! Client I/O rates for `status` (like the `io: client: ...` line of `ceph -s`), from the
//! cumulative counters every OSD sends with its heartbeats.
//!
//! Per OSD the monitor keeps a short window of `(receive instant, counters)` samples: at most
//! [`WINDOW_SAMPLES`], none older than [`WINDOW`]. An OSD's rate is the difference between its
//! newest and oldest sample over the time between them, so one late or lost heartbeat smooths
//! the figure instead of spiking it. The cluster's rate is the sum over OSDs whose newest
//! sample is fresh (within the PG staleness bound the caller passes): a dead OSD's last rate
//! does not linger.
//!
//! Counters only grow while a process lives. A counter that went down means the OSD restarted:
//! its window restarts from that sample (no negative or wrapped rate). Nothing is persisted: a
//! restarted monitor shows 0 until each OSD has sent two heartbeats.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use carmine_proto::v1;

/// Samples older than this (relative to the newest) are dropped from an OSD's window.
pub const WINDOW: Duration = Duration::from_secs(5);
/// At most this many samples per OSD (bounds memory whatever the heartbeat interval).
pub const WINDOW_SAMPLES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counters([u64; 4]);

impl From<&v1::ClientIoCounters> for Counters {
    fn from(c: &v1::ClientIoCounters) -> Self {
        Counters([c.read_ops, c.read_bytes, c.write_ops, c.write_bytes])
    }
}

impl Counters {
    /// Whether every counter is at least `old`'s (same process).
    fn follows(&self, old: &Counters) -> bool {
        self.0.iter().zip(old.0.iter()).all(|(n, o)| n >= o)
    }
}

/// The client I/O counters of every OSD, over a short window.
#[derive(Debug, Default)]
pub struct ClientIo {
    osds: BTreeMap<u32, VecDeque<(Instant, Counters)>>,
}

impl ClientIo {
    /// OSD `osd` reported `counters` at `now`.
    pub fn report(&mut self, osd: u32, counters: &v1::ClientIoCounters, now: Instant) {
        let c = Counters::from(counters);
        let w = self.osds.entry(osd).or_default();
        if w.back()
            .is_some_and(|(at, last)| *at > now || !c.follows(last))
        {
            // Restarted (counters went down) or a clock oddity: start the window again.
            w.clear();
        }
        w.push_back((now, c));
        while w.len() > WINDOW_SAMPLES
            || w.front()
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) > WINDOW)
        {
            w.pop_front();
        }
    }

    /// Forgets an OSD (removed from the map, or marked down: its next process starts from 0).
    pub fn forget_osd(&mut self, osd: u32) {
        self.osds.remove(&osd);
    }

    /// The summed rate of the OSDs whose newest report is at most `fresh_within` old at `now`.
    pub fn rate(&self, now: Instant, fresh_within: Duration) -> v1::ClientIoRate {
        let mut sum = [0f64; 4];
        for w in self.osds.values() {
            let (Some((first_at, first)), Some((last_at, last))) = (w.front(), w.back()) else {
                continue;
            };
            if now.saturating_duration_since(*last_at) > fresh_within {
                continue;
            }
            let secs = last_at.saturating_duration_since(*first_at).as_secs_f64();
            if secs <= 0.0 {
                continue;
            }
            for (s, (l, f)) in sum.iter_mut().zip(last.0.iter().zip(first.0.iter())) {
                *s += (l - f) as f64 / secs;
            }
        }
        let r = |v: f64| v.round() as u64;
        v1::ClientIoRate {
            read_ops_per_sec: r(sum[0]),
            read_bytes_per_sec: r(sum[1]),
            write_ops_per_sec: r(sum[2]),
            write_bytes_per_sec: r(sum[3]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn io(ro: u64, rb: u64, wo: u64, wb: u64) -> v1::ClientIoCounters {
        v1::ClientIoCounters {
            read_ops: ro,
            read_bytes: rb,
            write_ops: wo,
            write_bytes: wb,
        }
    }

    const FRESH: Duration = Duration::from_secs(3);

    #[test]
    fn rate_is_the_difference_over_the_window_summed_over_fresh_osds() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut c = ClientIo::default();
        assert_eq!(c.rate(t0, FRESH), v1::ClientIoRate::default());
        c.report(0, &io(0, 0, 0, 0), t0);
        // One sample: no rate yet.
        assert_eq!(c.rate(t0, FRESH), v1::ClientIoRate::default());
        c.report(0, &io(100, 409_600, 50, 204_800), t0 + s);
        c.report(0, &io(300, 1_228_800, 150, 614_400), t0 + 2 * s);
        c.report(1, &io(1000, 0, 0, 0), t0 + s);
        c.report(1, &io(1010, 0, 2, 8192), t0 + 2 * s);
        let r = c.rate(t0 + 2 * s, FRESH);
        assert_eq!(r.read_ops_per_sec, 150 + 10);
        assert_eq!(r.read_bytes_per_sec, 614_400);
        assert_eq!(r.write_ops_per_sec, 75 + 2);
        assert_eq!(r.write_bytes_per_sec, 307_200 + 8192);
        // OSD 1 goes quiet past the freshness bound; OSD 0 keeps reporting.
        c.report(0, &io(300, 1_228_800, 150, 614_400), t0 + 6 * s);
        let r = c.rate(t0 + 6 * s, FRESH);
        // OSD 0 alone, its window now t0+1 s..t0+6 s (the t0 sample is past WINDOW): 200 reads
        // over 5 s.
        assert_eq!(r.read_ops_per_sec, 40);
        // Everything is old now: nothing is fresh.
        assert_eq!(c.rate(t0 + 20 * s, FRESH), v1::ClientIoRate::default());
    }

    #[test]
    fn a_restarted_osd_starts_its_window_again() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut c = ClientIo::default();
        c.report(3, &io(10_000, 0, 10_000, 0), t0);
        c.report(3, &io(11_000, 0, 10_500, 0), t0 + s);
        c.report(3, &io(5, 0, 7, 0), t0 + 2 * s);
        assert_eq!(c.rate(t0 + 2 * s, FRESH), v1::ClientIoRate::default());
        c.report(3, &io(105, 0, 7, 0), t0 + 3 * s);
        assert_eq!(c.rate(t0 + 3 * s, FRESH).read_ops_per_sec, 100);
        c.forget_osd(3);
        assert_eq!(c.rate(t0 + 3 * s, FRESH), v1::ClientIoRate::default());
    }

    proptest! {
        /// Whatever the reports (restarts, gaps, bursts), the window stays bounded and the
        /// rate never exceeds the largest per-second increase any OSD reported.
        #[test]
        fn window_bounded_and_rate_within_what_was_reported(
            steps in proptest::collection::vec((0u32..3, 0u64..50, 0u64..5_000, any::<bool>()), 1..200)
        ) {
            let t0 = Instant::now();
            let mut c = ClientIo::default();
            let mut now = t0;
            let mut totals = [0u64; 3];
            let mut max_step_per_sec = 0f64;
            for (osd, ms_tenths, add, restart) in steps {
                let dt = Duration::from_millis(100 * (ms_tenths + 1));
                now += dt;
                let t = &mut totals[osd as usize];
                *t = if restart { add } else { *t + add };
                max_step_per_sec = max_step_per_sec.max(add as f64 / dt.as_secs_f64());
                c.report(osd, &io(*t, 0, 0, 0), now);
                for w in c.osds.values() {
                    prop_assert!(w.len() <= WINDOW_SAMPLES);
                }
                let r = c.rate(now, Duration::from_secs(3600));
                // Each OSD's rate is an average of its own steps, each at most the max; the
                // sum over 3 OSDs at most 3 times it (+1 for rounding).
                prop_assert!(r.read_ops_per_sec as f64 <= 3.0 * max_step_per_sec + 1.0,
                    "{} > 3 x {}", r.read_ops_per_sec, max_step_per_sec);
            }
        }
    }
}
