//! # carmine-reactor: shard-per-core poll loops
//!
//! A [`Reactor`] starts N shards, one per entry of [`ReactorConfig::cores`]. Each shard is an OS
//! thread pinned to its core (`sched_setaffinity`) that runs one loop, forever:
//!
//! 1. every registered [`Poller`] (`poll() -> work done`): the integrator registers the NIC
//!    queue of the shard (DPDK rx/tx burst + the smoltcp interface) and the shard's SPDK thread
//!    (`spdk_thread_poll`) here, so completions are reaped by the shard that submitted them;
//! 2. the inbound SPSC rings ([`Mailbox`] from other shards, [`ControlSender`] from the
//!    control plane), drained in batches into the shard's message handler;
//! 3. expired timers ([`sleep`]);
//! 4. the shard-local executor: `!Send` futures spawned with [`spawn_local`].
//!
//! Each turn starts with the one clock read it makes: [`clock::now`] gives that instant to
//! whatever runs in the turn, and the time from one busy turn's start to the next's is the
//! shard's `busy_ns`.
//!
//! Idle policy ([`IdlePolicy`]): `Busy` spins forever (bare metal); `Adaptive` spins, then
//! yields, then blocks in `ppoll` on the shard's eventfd and every poller's [`Poller::wait_fd`],
//! with a timeout of the earliest timer / [`Poller::next_deadline`] / the sleep cap, which
//! starts at `max_sleep` and doubles while the shard stays idle, up to `deep_sleep`. Producers
//! (ring pushes, task wakers) write the eventfd only when the consumer announced it is asleep
//! (see `wake.rs` for the handshake that makes lost wake-ups impossible).
//!
//! ## Registering pollers (how the NIC queue and the SPDK thread plug in)
//!
//! ```
//! use carmine_reactor::{Poller, Reactor, ReactorConfig, Source};
//!
//! /// Stand-in for the integrator's pollers, e.g. `spdk_thread_poll(thread, 0, 0)` (its return
//! /// value is the work count) or a DPDK rx/tx burst + smoltcp `NetStack::poll`.
//! struct Countdown(u32);
//! impl Poller for Countdown {
//!     fn poll(&mut self) -> usize {
//!         if self.0 == 0 { return 0; }
//!         self.0 -= 1;
//!         1
//!     }
//! }
//!
//! let cfg = ReactorConfig { cores: vec![0, 1], pin: false, ..Default::default() };
//! let (reactor, mut control) = Reactor::start::<u32, _>(cfg, |shard| {
//!     // Runs on the shard thread: create shard-local (even !Send) state here.
//!     shard.add_poller(Box::new(Countdown(10)));
//!     let mailbox = shard.mailbox();
//!     shard.on_message(move |src, epoch| {
//!         if src == Source::Control && mailbox.shard() == 0 {
//!             let _ = mailbox.send(1, epoch); // a counted cross-shard hop
//!         }
//!     });
//!     Ok(())
//! })?;
//! control.send(0, 42).map_err(|_| "ring full")?;
//! let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
//! while reactor.stats(1).map_or(0, |s| s.cross_shard_received.get()) == 0 {
//!     assert!(std::time::Instant::now() < deadline);
//!     std::thread::sleep(std::time::Duration::from_millis(1));
//! }
//! reactor.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Invariants
//! - Shared-nothing: all shard state (pollers, handler, tasks, timers) is created by the init
//!   closure *on the shard thread* and never leaves it; it need not be `Send`.
//! - Every cross-shard message is a counted hop ([`ShardStats::cross_shard_sent`] /
//!   `cross_shard_received`); control messages are counted separately.
//! - Steady state takes no lock and makes no global-allocator call on the shard path: rings
//!   are preallocated (`ring_capacity`), the task slab and ready bitmap are fixed-size
//!   (`max_tasks`), the timer heap is preallocated (`timer_capacity`; it grows only past that),
//!   the `pollfd` array is built once, counters are single-writer atomics. What does allocate:
//!   `spawn_local` (one box per task), and whatever pollers/handlers do themselves.
//! - At most 64 shards (the per-iteration notify set is a `u64` mask).
//! - A message is delivered in FIFO order per (source, destination) pair; there is no global
//!   order across sources.

pub mod clock;
mod error;
mod executor;
mod mailbox;
mod shard;
mod stats;
mod sys;
mod wake;

use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle as ThreadHandle;
use std::time::{Duration, Instant};

pub use error::ReactorError;
pub use executor::{sleep, sleep_until, spawn_local, task_count, yield_now, JoinHandle, Sleep};
pub use mailbox::{ControlSender, Mailbox, Source};
pub use shard::{Handler, ShardSetup};
pub use stats::{Counter, ShardStats, ShardStatsSnapshot};

use executor::Executor;
use shard::ShardLoop;
use wake::Wake;

/// Something a shard polls every loop iteration (a NIC queue, an SPDK thread, a TCP stack).
pub trait Poller {
    /// Does whatever work is ready without blocking; returns how much (0 = idle). Any non-zero
    /// value keeps the shard from backing off.
    fn poll(&mut self) -> usize;

    /// The latest instant by which the shard must poll again even if nothing else happens
    /// (e.g. smoltcp's `poll_at` for retransmissions). `None`: no deadline.
    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    /// A file descriptor that becomes readable when this poller has work (an AF_PACKET or
    /// epoll fd). An adaptive shard sleeps on it. Read once, when the loop starts.
    fn wait_fd(&self) -> Option<RawFd> {
        None
    }

    /// True when work is waiting that neither `wait_fd` nor a deadline announces, e.g. a
    /// ring another shard pushes into and rings this shard's [`ShardWaker`] for. The shard
    /// asks every poller after it announced its sleep and before it blocks: with the
    /// producer's `notify` after its push, no wake-up is lost (see `wake.rs`).
    fn has_pending(&self) -> bool {
        false
    }
}

/// Wakes one shard if it sleeps, from any thread: for work a poller receives from elsewhere
/// (another shard's ring) that has no fd. Call [`ShardWaker::notify`] after publishing the work;
/// the poller reports it in [`Poller::has_pending`].
#[derive(Debug, Clone)]
pub struct ShardWaker(Arc<Wake>);

impl ShardWaker {
    /// Publishes "work was pushed" to the shard: signals its eventfd if it is (about to be)
    /// asleep. Costs a fence and a load when it is awake.
    #[inline]
    pub fn notify(&self) {
        self.0.notify();
    }
}

/// What a shard does when an iteration found no work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdlePolicy {
    /// Spin forever (bare metal, dedicated cores).
    Busy,
    /// Spin `spin` idle iterations, then `yields` iterations with `sched_yield`, then block on
    /// the eventfd (and pollers' fds) for at most `max_sleep`; every further sleep that finds
    /// nothing to do doubles that cap, up to `deep_sleep`, until work comes in.
    ///
    /// `deep_sleep > max_sleep` is the integrator's promise that every source of work wakes
    /// the shard (the eventfd, a [`Poller::wait_fd`]) or says when to look
    /// ([`Poller::next_deadline`]); work found after a sleep that only timed out is then taken
    /// for housekeeping and does not restart the spin ladder. `deep_sleep <= max_sleep`: every
    /// sleep is capped at `max_sleep`, for sources that must be polled (a NIC queue with no fd).
    Adaptive {
        spin: u32,
        yields: u32,
        max_sleep: Duration,
        deep_sleep: Duration,
    },
}

impl IdlePolicy {
    /// A policy suited to tests and shared machines: short spin, then sleep up to 10 ms (no
    /// deeper sleeps: it makes no promise about the pollers).
    pub fn adaptive() -> Self {
        IdlePolicy::Adaptive {
            spin: 64,
            yields: 4,
            max_sleep: Duration::from_millis(10),
            deep_sleep: Duration::from_millis(10),
        }
    }
}

/// Reactor configuration.
#[derive(Debug, Clone)]
pub struct ReactorConfig {
    /// One shard per entry: the core it is pinned to.
    pub cores: Vec<usize>,
    /// Pin shard threads (off: the cores list only sets the shard count).
    pub pin: bool,
    pub idle: IdlePolicy,
    /// Capacity of every SPSC ring (messages).
    pub ring_capacity: usize,
    /// Most messages taken from one ring per iteration.
    pub batch: usize,
    /// Task slab size per shard.
    pub max_tasks: usize,
    /// Preallocated timer heap entries per shard.
    pub timer_capacity: usize,
}

impl Default for ReactorConfig {
    fn default() -> Self {
        Self {
            cores: vec![0],
            pin: true,
            idle: IdlePolicy::adaptive(),
            ring_capacity: 1024,
            batch: 64,
            max_tasks: 1024,
            timer_capacity: 1024,
        }
    }
}

type InitFn<M> = dyn Fn(&mut ShardSetup<M>) -> Result<(), String> + Send + Sync;

/// A running set of shards.
pub struct Reactor {
    threads: Vec<ThreadHandle<()>>,
    stop: Arc<AtomicBool>,
    wakes: Arc<[Arc<Wake>]>,
    stats: Vec<Arc<ShardStats>>,
}

impl Reactor {
    /// Starts one pinned shard per configured core. `init` runs on each shard thread before its
    /// loop starts; it registers pollers and a message handler and may spawn tasks. Returns once
    /// every shard is initialised (or the first init error), with the control plane's sender.
    pub fn start<M, F>(
        config: ReactorConfig,
        init: F,
    ) -> Result<(Reactor, ControlSender<M>), ReactorError>
    where
        M: Send + 'static,
        F: Fn(&mut ShardSetup<M>) -> Result<(), String> + Send + Sync + 'static,
    {
        let n = config.cores.len();
        if n == 0 {
            return Err(ReactorError::NoShards);
        }
        if n > 64 {
            return Err(ReactorError::TooManyShards { max: 64, got: n });
        }
        if config.ring_capacity == 0 || config.batch == 0 || config.max_tasks == 0 {
            return Err(ReactorError::Config(
                "ring_capacity, batch and max_tasks must be > 0",
            ));
        }
        let wakes: Arc<[Arc<Wake>]> = (0..n)
            .map(|_| Wake::new().map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?
            .into();
        let stats: Vec<Arc<ShardStats>> = (0..n).map(|_| Arc::new(ShardStats::default())).collect();

        // The mesh: producers[src][dst], consumers[dst] = [(Source, consumer)].
        let mut producers: Vec<Vec<Option<rtrb::Producer<M>>>> =
            (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        let mut consumers: Vec<Vec<(Source, rtrb::Consumer<M>)>> =
            (0..n).map(|_| Vec::with_capacity(n)).collect();
        let mut control = Vec::with_capacity(n);
        for (dst, cons) in consumers.iter_mut().enumerate() {
            let (p, c) = rtrb::RingBuffer::new(config.ring_capacity);
            control.push(p);
            cons.push((Source::Control, c));
            for (src, prods) in producers.iter_mut().enumerate() {
                if src != dst {
                    let (p, c) = rtrb::RingBuffer::new(config.ring_capacity);
                    prods[dst] = Some(p);
                    cons.push((Source::Shard(src), c));
                }
            }
        }

        let stop = Arc::new(AtomicBool::new(false));
        let init: Arc<InitFn<M>> = Arc::new(init);
        let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<(), ReactorError>)>();
        let mut threads = Vec::with_capacity(n);
        let per_shard = producers.into_iter().zip(consumers).enumerate();
        for (shard, (outbound, inbound)) in per_shard {
            let core = config.cores[shard];
            let pin = config.pin;
            let wakes2 = wakes.clone();
            let stats2 = stats[shard].clone();
            let stop2 = stop.clone();
            let init2 = init.clone();
            let ready = ready_tx.clone();
            let cfg = config.clone();
            let t = std::thread::Builder::new()
                .name(format!("carmine-shard-{shard}"))
                .spawn(move || {
                    let started = (|| {
                        if pin {
                            sys::pin_current_thread(core).map_err(|source| ReactorError::Pin {
                                shard,
                                core,
                                source,
                            })?;
                        }
                        let wake = wakes2[shard].clone();
                        let executor = Rc::new(Executor::new(
                            cfg.max_tasks,
                            cfg.timer_capacity,
                            wake.clone(),
                            stats2.clone(),
                        ));
                        executor::set_current(Some(executor.clone()));
                        let mailbox = Rc::new(Mailbox::new(
                            shard,
                            outbound,
                            wakes2.clone(),
                            stats2.clone(),
                        ));
                        let mut setup = ShardSetup {
                            shard,
                            core: pin.then_some(core),
                            wakes: wakes2.clone(),
                            pollers: Vec::new(),
                            handler: None,
                            mailbox,
                        };
                        init2(&mut setup).map_err(|reason| ReactorError::Init { shard, reason })?;
                        Ok(ShardLoop {
                            setup,
                            inbound,
                            executor,
                            wake,
                            stop: stop2,
                            stats: stats2,
                            idle: cfg.idle,
                            batch: cfg.batch,
                        })
                    })();
                    match started {
                        Ok(l) => {
                            let _ = ready.send((shard, Ok(())));
                            drop(ready);
                            tracing::debug!(shard, "shard loop running");
                            l.run();
                        }
                        Err(e) => {
                            executor::set_current(None);
                            let _ = ready.send((shard, Err(e)));
                        }
                    }
                })?;
            threads.push(t);
        }
        drop(ready_tx);
        let reactor = Reactor {
            threads,
            stop,
            wakes: wakes.clone(),
            stats,
        };
        let mut first_err = None;
        for _ in 0..n {
            match ready_rx.recv() {
                Ok((_, Ok(()))) => {}
                Ok((_, Err(e))) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(ReactorError::Panicked(usize::MAX));
                    break;
                }
            }
        }
        if let Some(e) = first_err {
            let _ = reactor.shutdown();
            return Err(e);
        }
        Ok((reactor, ControlSender::new(control, wakes)))
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.stats.len()
    }

    /// Counters of one shard.
    pub fn stats(&self, shard: usize) -> Option<&ShardStats> {
        self.stats.get(shard).map(|s| &**s)
    }

    /// A shared handle on one shard's counters, for readers that outlive a borrow of the
    /// reactor (e.g. the OSD's perf-counter provider on the agent thread).
    pub fn stats_handle(&self, shard: usize) -> Option<Arc<ShardStats>> {
        self.stats.get(shard).cloned()
    }

    /// Asks every shard to stop after its current iteration and wakes the sleeping ones.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.wakes.iter() {
            w.force();
        }
    }

    /// Stops every shard and joins the threads.
    pub fn shutdown(mut self) -> Result<(), ReactorError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), ReactorError> {
        self.request_stop();
        let mut res = Ok(());
        for (i, t) in self.threads.drain(..).enumerate() {
            if t.join().is_err() {
                res = Err(ReactorError::Panicked(i));
            }
        }
        res
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}
