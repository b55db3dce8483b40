//! One shard's poll loop.
//!
//! Adaptive idle, in order: spin `spin` empty iterations, `sched_yield` `yields` more, then
//! sleep in `ppoll` on the eventfd and the pollers' fds until the earliest deadline or the
//! sleep cap ([`Backoff`]). The cap starts at `max_sleep` and doubles with every sleep after
//! which the shard still found nothing to do, up to `deep_sleep`; work that came in through a
//! wake-up (eventfd, a poller's fd) resets it and the spin ladder. When the policy allows deep
//! sleeps (`deep_sleep > max_sleep`), work found after a sleep that merely timed out is
//! housekeeping (a sweep, a retransmission, a counter publish): the shard does it and goes back
//! to sleep with the cap it had, instead of spinning the whole ladder again for nothing.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::executor::Executor;
use crate::mailbox::{Mailbox, Source};
use crate::stats::ShardStats;
use crate::sys;
use crate::wake::Wake;
use crate::{IdlePolicy, Poller, ShardWaker};

/// A message handler: called on the shard for every inbound message.
pub type Handler<M> = Box<dyn FnMut(Source, M)>;

/// What a shard's init closure gets: register pollers, a message handler, spawn tasks.
pub struct ShardSetup<M> {
    pub(crate) shard: usize,
    pub(crate) core: Option<usize>,
    pub(crate) wakes: Arc<[Arc<Wake>]>,
    pub(crate) pollers: Vec<Box<dyn Poller>>,
    pub(crate) handler: Option<Handler<M>>,
    pub(crate) mailbox: Rc<Mailbox<M>>,
}

impl<M> ShardSetup<M> {
    /// This shard's index (0..N).
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// The core this shard is pinned to, if pinning is on.
    pub fn core(&self) -> Option<usize> {
        self.core
    }

    /// A handle that wakes shard `shard` (this one or another) when it sleeps; `None` past the
    /// last shard.
    pub fn waker(&self, shard: usize) -> Option<ShardWaker> {
        self.wakes.get(shard).cloned().map(ShardWaker)
    }

    /// Registers a poller; it is polled once per loop iteration, in registration order.
    pub fn add_poller(&mut self, poller: Box<dyn Poller>) {
        self.pollers.push(poller);
    }

    /// Sets the handler for inbound messages (replaces any earlier one).
    pub fn on_message(&mut self, handler: impl FnMut(Source, M) + 'static) {
        self.handler = Some(Box::new(handler));
    }

    /// The shard's mailbox for sending to other shards (keep a clone in tasks/handlers).
    pub fn mailbox(&self) -> Rc<Mailbox<M>> {
        self.mailbox.clone()
    }
}

pub(crate) struct ShardLoop<M> {
    pub(crate) setup: ShardSetup<M>,
    pub(crate) inbound: Vec<(Source, rtrb::Consumer<M>)>,
    pub(crate) executor: Rc<Executor>,
    pub(crate) wake: Arc<Wake>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) stats: Arc<ShardStats>,
    pub(crate) idle: IdlePolicy,
    pub(crate) batch: usize,
}

impl<M> ShardLoop<M> {
    fn drain_rings(&mut self) -> usize {
        let mut n = 0;
        for (src, cons) in self.inbound.iter_mut() {
            let avail = cons.slots().min(self.batch);
            if avail == 0 {
                continue;
            }
            let Ok(chunk) = cons.read_chunk(avail) else {
                continue;
            };
            // Counted before handling so that a reply can never overtake its count.
            match src {
                Source::Shard(_) => self.stats.cross_shard_received.add(avail as u64),
                Source::Control => self.stats.control_received.add(avail as u64),
            }
            for msg in chunk {
                n += 1;
                match self.setup.handler.as_mut() {
                    Some(h) => h(*src, msg),
                    None => self.stats.unhandled.add(1),
                }
            }
        }
        n
    }

    fn rings_pending(&self) -> bool {
        self.inbound.iter().any(|(_, c)| c.slots() > 0)
    }

    /// One iteration: pollers, rings, timers, tasks. Returns the work done.
    fn turn(&mut self) -> usize {
        let mut work = 0;
        for p in self.setup.pollers.iter_mut() {
            work += p.poll();
        }
        work += self.drain_rings();
        if self.executor.has_timers() {
            work += self.executor.fire_timers(crate::clock::now());
        }
        work += self.executor.run_ready();
        self.setup.mailbox.flush();
        work
    }

    /// Counts a turn that did work: CPU time that did work (with busy polling the core is
    /// always at 100%, so this is what tells how much of it the requests cost).
    fn add_busy(&self, d: std::time::Duration) {
        self.stats.busy_loops.add(1);
        self.stats
            .busy_ns
            .add(d.as_nanos().min(u128::from(u64::MAX)) as u64);
    }

    /// Blocks until a wake-up, a deadline or `max_sleep`; says how the sleep ended.
    fn sleep(&mut self, pollfds: &mut [libc::pollfd], max_sleep: Duration) -> Slept {
        let now = Instant::now();
        let mut deadline = now + max_sleep;
        if let Some(t) = self.executor.next_deadline() {
            deadline = deadline.min(t);
        }
        for p in self.setup.pollers.iter() {
            if let Some(t) = p.next_deadline() {
                deadline = deadline.min(t);
            }
        }
        let timeout = deadline.saturating_duration_since(now);
        if timeout.is_zero() {
            return Slept::No;
        }
        let mut slept = Slept::No;
        self.wake.begin_sleep();
        if !self.rings_pending()
            && !self.executor.ready_set().any()
            && !self.setup.pollers.iter().any(|p| p.has_pending())
            && !self.stop.load(Ordering::SeqCst)
        {
            self.stats.sleeps.add(1);
            for p in pollfds.iter_mut() {
                p.revents = 0;
            }
            slept = match sys::wait_readable(pollfds, timeout) {
                Ok(0) => {
                    self.stats.sleep_timeouts.add(1);
                    Slept::TimedOut
                }
                Ok(_) => {
                    self.stats.sleep_wakeups.add(1);
                    Slept::Woken
                }
                Err(e) => {
                    tracing::warn!(shard = self.setup.shard, error = %e, "ppoll failed");
                    Slept::Woken
                }
            };
        }
        self.wake.end_sleep();
        slept
    }

    pub(crate) fn run(mut self) {
        // Allocated once: the eventfd first, then every poller's fd.
        let mut pollfds: Vec<libc::pollfd> = std::iter::once(self.wake.fd())
            .chain(self.setup.pollers.iter().filter_map(|p| p.wait_fd()))
            .map(sys::pollfd)
            .collect::<Vec<_>>();
        let mut idle_streak: u32 = 0;
        let mut backoff = match self.idle {
            IdlePolicy::Busy => Backoff::new(Duration::ZERO, Duration::ZERO),
            IdlePolicy::Adaptive {
                max_sleep,
                deep_sleep,
                ..
            } => Backoff::new(max_sleep, deep_sleep),
        };
        // How the last iteration's sleep ended (No: it did not sleep).
        let mut last_sleep = Slept::No;
        // The start of the previous turn, if it did work: its busy time ends where this turn
        // starts (a busy turn goes straight on to the next), so one clock read a turn serves
        // both the turn clock and the busy counter.
        let mut busy_since: Option<Instant> = None;
        while !self.stop.load(Ordering::Relaxed) {
            let started = crate::clock::start_turn();
            if let Some(t) = busy_since.take() {
                self.add_busy(started - t);
            }
            let work = self.turn();
            let after = std::mem::replace(&mut last_sleep, Slept::No);
            if work > 0 {
                busy_since = Some(started);
                if after == Slept::TimedOut && backoff.deep() {
                    // Housekeeping on a timer: back to sleep without the ladder (module docs).
                    self.stats.housekeeping_wakes.add(1);
                } else {
                    idle_streak = 0;
                    backoff.reset();
                }
                continue;
            }
            self.stats.idle_loops.add(1);
            if after != Slept::No {
                // Woke up and found nothing to do: sleep longer next time.
                backoff.grow();
            }
            idle_streak = idle_streak.saturating_add(1);
            match self.idle {
                IdlePolicy::Busy => std::hint::spin_loop(),
                IdlePolicy::Adaptive { spin, yields, .. } => {
                    if idle_streak <= spin {
                        std::hint::spin_loop();
                    } else if idle_streak <= spin.saturating_add(yields) {
                        std::thread::yield_now();
                    } else {
                        last_sleep = self.sleep(&mut pollfds, backoff.cap());
                    }
                }
            }
        }
        if let Some(t) = busy_since {
            self.add_busy(t.elapsed());
        }
        crate::clock::end_turns();
        // Run the remaining tasks' destructors on this thread (they are !Send).
        crate::executor::set_current(None);
    }
}

/// How a sleep ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slept {
    /// It did not block (a deadline due, or work published meanwhile).
    No,
    /// Its timeout (deadline or cap) passed.
    TimedOut,
    /// The eventfd or a poller's fd woke it (or ppoll failed).
    Woken,
}

/// The adaptive sleep cap: `first` after work, doubled by every sleep that found nothing to
/// do, never above `deep`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    first: Duration,
    deep: Duration,
    cap: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, deep: Duration) -> Self {
        Self {
            first,
            deep: deep.max(first),
            cap: first,
        }
    }

    /// The current cap of one sleep.
    pub(crate) fn cap(&self) -> Duration {
        self.cap
    }

    /// True when the cap can grow beyond the first sleep (the policy allows deep sleeps).
    pub(crate) fn deep(&self) -> bool {
        self.deep > self.first
    }

    pub(crate) fn grow(&mut self) {
        self.cap = self.cap.saturating_mul(2).min(self.deep);
    }

    pub(crate) fn reset(&mut self) {
        self.cap = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_sleep_cap_doubles_while_idle_up_to_the_deep_sleep_and_resets_on_work() {
        let mut b = Backoff::new(MS / 5, 100 * MS);
        assert!(b.deep());
        let mut caps = Vec::new();
        for _ in 0..12 {
            caps.push(b.cap());
            b.grow();
        }
        assert_eq!(caps[0], MS / 5);
        assert_eq!(caps[1], 2 * MS / 5);
        assert!(caps.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(caps[10], 100 * MS, "{caps:?}");
        assert_eq!(b.cap(), 100 * MS);
        b.reset();
        assert_eq!(b.cap(), MS / 5);
    }

    #[test]
    fn without_a_deeper_sleep_the_cap_stays() {
        for deep in [Duration::ZERO, 10 * MS] {
            let mut b = Backoff::new(10 * MS, deep);
            assert!(!b.deep());
            b.grow();
            assert_eq!(b.cap(), 10 * MS);
        }
        let mut huge = Backoff::new(Duration::MAX / 3, Duration::MAX);
        huge.grow();
        huge.grow();
        assert_eq!(huge.cap(), Duration::MAX);
    }
}
