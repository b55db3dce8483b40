//! One shard's poll loop.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::executor::Executor;
use crate::mailbox::{Mailbox, Source};
use crate::stats::ShardStats;
use crate::sys;
use crate::wake::Wake;
use crate::{IdlePolicy, Poller};

/// A message handler: called on the shard for every inbound message.
pub type Handler<M> = Box<dyn FnMut(Source, M)>;

/// What a shard's init closure gets: register pollers, a message handler, spawn tasks.
pub struct ShardSetup<M> {
    pub(crate) shard: usize,
    pub(crate) core: Option<usize>,
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
            work += self.executor.fire_timers(Instant::now());
        }
        work += self.executor.run_ready();
        self.setup.mailbox.flush();
        work
    }

    fn sleep(&mut self, pollfds: &mut [libc::pollfd], max_sleep: Duration) {
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
            return;
        }
        self.wake.begin_sleep();
        if !self.rings_pending()
            && !self.executor.ready_set().any()
            && !self.stop.load(Ordering::SeqCst)
        {
            self.stats.sleeps.add(1);
            for p in pollfds.iter_mut() {
                p.revents = 0;
            }
            if let Err(e) = sys::wait_readable(pollfds, timeout) {
                tracing::warn!(shard = self.setup.shard, error = %e, "ppoll failed");
            }
        }
        self.wake.end_sleep();
    }

    pub(crate) fn run(mut self) {
        // Allocated once: the eventfd first, then every poller's fd.
        let mut pollfds: Vec<libc::pollfd> = std::iter::once(self.wake.fd())
            .chain(self.setup.pollers.iter().filter_map(|p| p.wait_fd()))
            .map(sys::pollfd)
            .collect::<Vec<_>>();
        let mut idle_streak: u32 = 0;
        while !self.stop.load(Ordering::Relaxed) {
            let started = std::time::Instant::now();
            let work = self.turn();
            if work > 0 {
                self.stats.busy_loops.add(1);
                // CPU time that did work: with busy polling the core is always at 100%, so
                // this is what tells how much of it the requests cost.
                self.stats
                    .busy_ns
                    .add(started.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64);
                idle_streak = 0;
                continue;
            }
            self.stats.idle_loops.add(1);
            idle_streak = idle_streak.saturating_add(1);
            match self.idle {
                IdlePolicy::Busy => std::hint::spin_loop(),
                IdlePolicy::Adaptive {
                    spin,
                    yields,
                    max_sleep,
                } => {
                    if idle_streak <= spin {
                        std::hint::spin_loop();
                    } else if idle_streak <= spin.saturating_add(yields) {
                        std::thread::yield_now();
                    } else {
                        self.sleep(&mut pollfds, max_sleep);
                    }
                }
            }
        }
        // Run the remaining tasks' destructors on this thread (they are !Send).
        crate::executor::set_current(None);
    }
}
