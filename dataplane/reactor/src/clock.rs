//! The turn clock: one clock read per shard loop iteration.
//!
//! A shard turn (pollers, rings, timers, tasks) takes microseconds, and the code in it asks for
//! the time many times over: smoltcp's timers and its poll deadline, the messenger's sweep, an
//! op's start, the executor's timers. Each `Instant::now()` is a vDSO `clock_gettime`, tens of
//! nanoseconds; about eight per turn were 3-5% of an OSD op and a seventh of the memif bench
//! client's core. So the shard loop reads the clock once, at the start of each turn, and
//! [`now`] hands out that reading.
//!
//! Invariants:
//! - On a shard thread, inside a turn, [`now`] is the instant the turn started: never later
//!   than the real time, and behind it by at most the turn's length so far.
//! - Anywhere else (another thread, or a shard's init closure before its first turn) it is
//!   `Instant::now()`.
//!
//! So it serves timeouts, sweeps, deadlines to poll again and the start of an op. Where a time
//! within the turn matters, read the real clock: an op's completion for its latency, or a
//! sleep's deadline, which must not come early.

use std::cell::Cell;
use std::time::Instant;

thread_local! {
    /// The current turn's start on a shard thread (None elsewhere).
    static TURN_STARTED: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The current turn's start on a shard thread, the real time elsewhere (module docs).
#[inline]
pub fn now() -> Instant {
    TURN_STARTED.with(Cell::get).unwrap_or_else(Instant::now)
}

/// Reads the clock for a new turn; what [`now`] returns on this thread until the next call.
#[inline]
pub(crate) fn start_turn() -> Instant {
    let t = Instant::now();
    TURN_STARTED.with(|c| c.set(Some(t)));
    t
}

/// This thread is no longer in a turn (the shard loop ended).
pub(crate) fn end_turns() {
    TURN_STARTED.with(|c| c.set(None));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_a_shard_the_clock_moves_and_in_a_turn_it_holds() {
        let a = now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(now() > a, "off a shard now() is the real time");
        let started = start_turn();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_eq!(now(), started, "in a turn now() is the turn's start");
        let next = start_turn();
        assert!(next > started);
        assert_eq!(now(), next);
        end_turns();
        assert!(now() > next, "after the loop now() is the real time again");
    }
}
