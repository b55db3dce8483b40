//! Read leases: how long an earlier primary of a PG may still serve it.
//!
//! An OSD serves as primary only until `heartbeat send time + lease` (the lease is
//! `BootReply.lease_ms`: four heartbeat intervals, at most the monitor's down grace), renewed by a heartbeat reply only when the
//! OSD has applied the epoch that reply carries. A new primary that could not reach an earlier
//! one while peering asks `LeaseWait(osds, epoch)` (epoch: the first of its new interval) and
//! waits that long before it accepts writes, so no client reads from the old primary a value
//! older than one the new primary acknowledged.
//!
//! For one OSD, two independent bounds, each sufficient on its own; the wait is the smaller:
//!
//! * **commit bound**: `commit(epoch) + lease`. Every heartbeat reply sent after the monitor
//!   committed `epoch` carries `epoch` or later; an OSD renews only with an epoch it has
//!   applied, and having applied it, it knows it no longer leads the PG. So the last renewal
//!   that matters came from a heartbeat answered before the commit, sent earlier still.
//! * **heartbeat bound**: `last heartbeat received + lease`. Every renewal comes from a reply
//!   to a heartbeat the monitor received, which the OSD sent no later than that.
//!
//! What the monitor does not know, it replaces by an instant that is no earlier than the truth:
//!
//! * the commit instants are soft state kept for the last [`EPOCH_WINDOW`] epochs this monitor
//!   committed. An epoch older than the window was committed before the oldest one kept: that
//!   instant stands in. An epoch committed before this monitor started (a restart, or another
//!   monitor that led before in etcd mode) stands in with the monitor's start. An epoch not
//!   committed yet has no commit bound.
//! * the last heartbeat received is soft state too: a restarted monitor does not know which
//!   heartbeats its previous life (or the previous leader) answered, so it takes its own start
//!   as every OSD's last heartbeat. Heartbeats are counted whatever the reply said (even "boot
//!   again", even from a process with the wrong uuid): a reply is a reply. An OSD the monitor
//!   has no record of (removed) has no heartbeat bound.
//!
//! Neither known: the whole lease, from now.
//!
//! etcd mode: a deposed leader must not answer heartbeats (nor `LeaseWait`: it would not know
//! the heartbeats the next leader answered) after the next leader started. The
//! election makes the next one start only after the old leader's etcd lease expired; the old
//! leader answers no heartbeat past `keep-alive sent + TTL granted`, which is no later than that
//! expiry (see [`crate::ha::Leadership::valid_until`]), even if it was paused and resumed.
//! This assumes monotonic clocks that run at about the same rate on the monitors and etcd.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Commit instants of this many recent epochs are kept.
pub const EPOCH_WINDOW: usize = 1024;

/// Commit instants of recent epochs (oldest first), and the monitor's start.
#[derive(Debug, Clone)]
pub struct EpochClock {
    started: Instant,
    /// Epoch of the map current at start: epochs up to it were committed before `started`.
    started_epoch: u64,
    commits: VecDeque<(u64, Instant)>,
}

impl EpochClock {
    /// A clock for a monitor started at `started` with its map at `epoch`.
    pub fn new(started: Instant, epoch: u64) -> Self {
        EpochClock {
            started,
            started_epoch: epoch,
            commits: VecDeque::new(),
        }
    }

    /// `epoch` was committed at `at`.
    pub fn committed(&mut self, epoch: u64, at: Instant) {
        self.commits.push_back((epoch, at));
        while self.commits.len() > EPOCH_WINDOW {
            self.commits.pop_front();
        }
    }

    /// An instant no earlier than `epoch`'s commit, `None` if it is not committed (as far as
    /// this monitor knows).
    pub fn commit_bound(&self, epoch: u64) -> Option<Instant> {
        if epoch <= self.started_epoch {
            return Some(self.started);
        }
        match self.commits.iter().find(|(e, _)| *e >= epoch) {
            Some((e, at)) if *e == epoch => Some(*at),
            // An epoch between two kept ones cannot happen (epochs are consecutive); older than
            // the window: the oldest kept one was committed after it.
            Some((_, at)) => Some(*at),
            None => None,
        }
    }
}

/// How long the lease of an OSD whose last heartbeat (as far as the monitor knows) came at
/// `last_heartbeat` may still run when the new interval's epoch was committed at `committed`.
pub fn wait(
    now: Instant,
    lease: Duration,
    committed: Option<Instant>,
    last_heartbeat: Option<Instant>,
) -> Duration {
    let end = match (committed, last_heartbeat) {
        (Some(c), Some(h)) => c.min(h) + lease,
        (Some(c), None) => c + lease,
        (None, Some(h)) => h + lease,
        (None, None) => now + lease,
    };
    end.saturating_duration_since(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_smaller_bound_wins_and_a_passed_lease_is_zero() {
        let t0 = Instant::now();
        let lease = 6 * S;
        // Heartbeat at t0+1, epoch committed at t0+3, asked at t0+4: 1 + 6 - 4 = 3 s.
        assert_eq!(
            wait(t0 + 4 * S, lease, Some(t0 + 3 * S), Some(t0 + S)),
            3 * S
        );
        // Heartbeats kept coming after the commit: the commit bounds it (3 + 6 - 4).
        assert_eq!(
            wait(t0 + 4 * S, lease, Some(t0 + 3 * S), Some(t0 + 4 * S)),
            5 * S
        );
        assert_eq!(wait(t0 + 20 * S, lease, Some(t0), Some(t0)), Duration::ZERO);
        assert_eq!(wait(t0 + 4 * S, lease, None, Some(t0 + S)), 3 * S);
        assert_eq!(wait(t0 + 4 * S, lease, Some(t0 + 3 * S), None), 5 * S);
        assert_eq!(wait(t0 + 4 * S, lease, None, None), lease);
    }

    #[test]
    fn unknown_commit_instants_are_replaced_by_later_ones() {
        let t0 = Instant::now();
        let mut c = EpochClock::new(t0, 10);
        assert_eq!(c.commit_bound(3), Some(t0), "before start: the start");
        assert_eq!(c.commit_bound(10), Some(t0));
        assert_eq!(c.commit_bound(11), None, "not committed yet");
        for e in 11..11 + EPOCH_WINDOW as u64 + 5 {
            c.committed(e, t0 + Duration::from_millis(e));
        }
        let newest = 10 + EPOCH_WINDOW as u64 + 5;
        assert_eq!(
            c.commit_bound(newest),
            Some(t0 + Duration::from_millis(newest))
        );
        // Out of the window: the oldest kept one (epoch 16), later than the truth.
        assert_eq!(c.commit_bound(12), Some(t0 + Duration::from_millis(16)));
        assert_eq!(c.commit_bound(newest + 1), None);
    }

    /// A restarted monitor: it takes its start as every OSD's last heartbeat and as the commit
    /// of every epoch it loaded, so the wait is a full lease from its start, even if the OSD's
    /// real last heartbeat (answered by the previous life) was earlier.
    #[test]
    fn a_restarted_monitor_waits_a_full_lease_from_its_start() {
        let t0 = Instant::now();
        let started = t0 + 100 * S;
        let c = EpochClock::new(started, 40);
        let lease = 6 * S;
        let w = wait(started + 2 * S, lease, c.commit_bound(40), Some(started));
        assert_eq!(w, 4 * S);
    }
}
