//! Per-shard counters. Each is written only by its shard's thread (a plain load + store, no
//! locked read-modify-write on the hot path) and read by anyone with relaxed loads.

use std::sync::atomic::{AtomicU64, Ordering};

/// A single-writer counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning shard calls this, so load + store cannot lose updates.
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Current value (relaxed: a monitoring snapshot, not a synchronisation point).
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters of one shard.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Loop iterations that did some work.
    pub busy_loops: Counter,
    /// Loop iterations that found nothing to do.
    pub idle_loops: Counter,
    /// Nanoseconds spent in iterations that did some work.
    pub busy_ns: Counter,
    /// Times the shard blocked on its eventfd (adaptive idle policy only).
    pub sleeps: Counter,
    /// Sleeps that ended by their timeout (a deadline or the sleep cap), not a wake-up.
    pub sleep_timeouts: Counter,
    /// Sleeps that a wake-up ended (the eventfd, a poller's fd).
    pub sleep_wakeups: Counter,
    /// Iterations that did work right after a sleep timed out and did not restart the spin
    /// ladder (housekeeping on a timer; adaptive idle with deep sleeps only).
    pub housekeeping_wakes: Counter,
    /// Messages this shard pushed into another shard's ring (cross-shard hops).
    pub cross_shard_sent: Counter,
    /// Messages this shard received from other shards.
    pub cross_shard_received: Counter,
    /// Messages received from the control plane.
    pub control_received: Counter,
    /// Sends refused because the destination ring was full (the caller got its message back).
    pub ring_full: Counter,
    /// Messages dropped because no handler was registered.
    pub unhandled: Counter,
    /// Task polls run by the local executor.
    pub task_polls: Counter,
    /// Timers that fired.
    pub timers_fired: Counter,
}

/// A plain-value copy of [`ShardStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStatsSnapshot {
    pub busy_loops: u64,
    pub idle_loops: u64,
    pub busy_ns: u64,
    pub sleeps: u64,
    pub sleep_timeouts: u64,
    pub sleep_wakeups: u64,
    pub housekeeping_wakes: u64,
    pub cross_shard_sent: u64,
    pub cross_shard_received: u64,
    pub control_received: u64,
    pub ring_full: u64,
    pub unhandled: u64,
    pub task_polls: u64,
    pub timers_fired: u64,
}

impl ShardStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> ShardStatsSnapshot {
        ShardStatsSnapshot {
            busy_loops: self.busy_loops.get(),
            idle_loops: self.idle_loops.get(),
            busy_ns: self.busy_ns.get(),
            sleeps: self.sleeps.get(),
            sleep_timeouts: self.sleep_timeouts.get(),
            sleep_wakeups: self.sleep_wakeups.get(),
            housekeeping_wakes: self.housekeeping_wakes.get(),
            cross_shard_sent: self.cross_shard_sent.get(),
            cross_shard_received: self.cross_shard_received.get(),
            control_received: self.control_received.get(),
            ring_full: self.ring_full.get(),
            unhandled: self.unhandled.get(),
            task_polls: self.task_polls.get(),
            timers_fired: self.timers_fired.get(),
        }
    }
}
