//! The shard-local executor and timers.
//!
//! Tasks are `!Send` futures owned by one shard: a fixed-capacity slab of boxed futures plus an
//! atomic "ready" bitmap. A task's [`Waker`] is created once at spawn (an `Arc` holding its slot
//! number); waking sets the slot's bit and, if the shard sleeps, signals its eventfd, so wakers
//! may be used from any thread. Polling never allocates: the future is taken out of its slot,
//! polled, and put back. `spawn_local` allocates once (the box and the join state), so the data
//! path should use long-lived tasks rather than a task per packet.
//!
//! Timers are a binary heap of (deadline, sequence, waker) with preallocated capacity; [`sleep`]
//! registers on first poll. A dropped `Sleep` leaves its entry in the heap: it fires later as a
//! harmless spurious wake-up.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake as StdWake, Waker};
use std::time::{Duration, Instant};

use crate::error::ReactorError;
use crate::stats::ShardStats;
use crate::wake::Wake;

type BoxFuture = Pin<Box<dyn Future<Output = ()>>>;

/// Bitmap of runnable task slots, shared with wakers on any thread.
#[derive(Debug)]
pub(crate) struct ReadySet {
    words: Box<[AtomicU64]>,
}

impl ReadySet {
    fn new(slots: usize) -> Self {
        Self {
            words: (0..slots.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn set(&self, slot: usize) {
        self.words[slot / 64].fetch_or(1 << (slot % 64), Ordering::SeqCst);
    }

    pub(crate) fn any(&self) -> bool {
        self.words.iter().any(|w| w.load(Ordering::SeqCst) != 0)
    }
}

struct TaskWaker {
    slot: usize,
    ready: Arc<ReadySet>,
    shard: Arc<Wake>,
}

impl StdWake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.set(self.slot);
        self.shard.notify();
    }
}

struct Slot {
    future: Option<BoxFuture>,
    waker: Waker,
}

struct TimerEntry {
    deadline: Instant,
    seq: u64,
    waker: Waker,
}

impl PartialEq for TimerEntry {
    fn eq(&self, o: &Self) -> bool {
        (self.deadline, self.seq) == (o.deadline, o.seq)
    }
}
impl Eq for TimerEntry {}
impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for TimerEntry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.deadline, self.seq).cmp(&(o.deadline, o.seq))
    }
}

/// Executor + timers of one shard; lives in a thread-local of the shard thread.
pub(crate) struct Executor {
    slots: RefCell<Vec<Option<Slot>>>,
    free: RefCell<Vec<usize>>,
    ready: Arc<ReadySet>,
    wake: Arc<Wake>,
    timers: RefCell<BinaryHeap<Reverse<TimerEntry>>>,
    timer_seq: Cell<u64>,
    stats: Arc<ShardStats>,
}

impl Executor {
    pub(crate) fn new(
        max_tasks: usize,
        timer_capacity: usize,
        wake: Arc<Wake>,
        stats: Arc<ShardStats>,
    ) -> Self {
        let mut slots = Vec::with_capacity(max_tasks);
        slots.resize_with(max_tasks, || None);
        Self {
            slots: RefCell::new(slots),
            free: RefCell::new((0..max_tasks).rev().collect()),
            ready: Arc::new(ReadySet::new(max_tasks)),
            wake,
            timers: RefCell::new(BinaryHeap::with_capacity(timer_capacity)),
            timer_seq: Cell::new(0),
            stats,
        }
    }

    pub(crate) fn ready_set(&self) -> &ReadySet {
        &self.ready
    }

    fn spawn_boxed(&self, future: BoxFuture) -> Result<(), ReactorError> {
        let slot = self
            .free
            .borrow_mut()
            .pop()
            .ok_or(ReactorError::TooManyTasks)?;
        let waker = Waker::from(Arc::new(TaskWaker {
            slot,
            ready: self.ready.clone(),
            shard: self.wake.clone(),
        }));
        self.slots.borrow_mut()[slot] = Some(Slot {
            future: Some(future),
            waker,
        });
        self.ready.set(slot);
        Ok(())
    }

    /// Polls every task whose bit is set. Returns the number of polls.
    pub(crate) fn run_ready(&self) -> usize {
        let mut polls = 0;
        for w in 0..self.ready.words.len() {
            let mut bits = self.ready.words[w].swap(0, Ordering::SeqCst);
            while bits != 0 {
                let slot = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                // Take the future out so the task may spawn or wake others while it runs.
                let taken = {
                    let mut slots = self.slots.borrow_mut();
                    match slots.get_mut(slot).and_then(|s| s.as_mut()) {
                        Some(s) => s.future.take().map(|f| (f, s.waker.clone())),
                        None => None,
                    }
                };
                let Some((mut fut, waker)) = taken else {
                    continue;
                };
                polls += 1;
                let mut cx = Context::from_waker(&waker);
                match fut.as_mut().poll(&mut cx) {
                    Poll::Ready(()) => {
                        self.slots.borrow_mut()[slot] = None;
                        self.free.borrow_mut().push(slot);
                    }
                    Poll::Pending => {
                        if let Some(s) = self.slots.borrow_mut()[slot].as_mut() {
                            s.future = Some(fut);
                        }
                    }
                }
            }
        }
        self.stats.task_polls.add(polls as u64);
        polls
    }

    /// Wakes every timer whose deadline passed. Returns the number fired.
    pub(crate) fn fire_timers(&self, now: Instant) -> usize {
        let mut fired = 0;
        loop {
            let entry = {
                let mut t = self.timers.borrow_mut();
                match t.peek() {
                    Some(Reverse(e)) if e.deadline <= now => t.pop(),
                    _ => None,
                }
            };
            let Some(Reverse(e)) = entry else { break };
            e.waker.wake();
            fired += 1;
        }
        self.stats.timers_fired.add(fired as u64);
        fired
    }

    pub(crate) fn has_timers(&self) -> bool {
        !self.timers.borrow().is_empty()
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.timers.borrow().peek().map(|Reverse(e)| e.deadline)
    }

    fn add_timer(&self, deadline: Instant, waker: Waker) {
        let seq = self.timer_seq.get();
        self.timer_seq.set(seq + 1);
        self.timers.borrow_mut().push(Reverse(TimerEntry {
            deadline,
            seq,
            waker,
        }));
    }

    /// Number of live tasks.
    pub(crate) fn task_count(&self) -> usize {
        self.slots.borrow().len() - self.free.borrow().len()
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Executor>>> = const { RefCell::new(None) };
}

pub(crate) fn set_current(ex: Option<Rc<Executor>>) {
    CURRENT.with(|c| *c.borrow_mut() = ex);
}

fn with_current<R>(f: impl FnOnce(&Executor) -> R) -> Result<R, ReactorError> {
    CURRENT
        .with(|c| c.borrow().as_deref().map(f))
        .ok_or(ReactorError::NotOnShard)
}

struct JoinState<T> {
    result: Option<T>,
    waiter: Option<Waker>,
}

/// Awaits the output of a task spawned with [`spawn_local`]. Dropping it detaches the task.
pub struct JoinHandle<T> {
    state: Rc<RefCell<JoinState<T>>>,
}

impl<T> Future for JoinHandle<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut s = self.state.borrow_mut();
        match s.result.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.waiter = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Spawns a `!Send` future on the current shard. Fails off a shard thread or when the shard's
/// task slab (`ReactorConfig::max_tasks`) is full.
pub fn spawn_local<F>(future: F) -> Result<JoinHandle<F::Output>, ReactorError>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let state = Rc::new(RefCell::new(JoinState {
        result: None,
        waiter: None,
    }));
    let st = state.clone();
    let wrapped = async move {
        let v = future.await;
        let waiter = {
            let mut s = st.borrow_mut();
            s.result = Some(v);
            s.waiter.take()
        };
        if let Some(w) = waiter {
            w.wake();
        }
    };
    with_current(|ex| ex.spawn_boxed(Box::pin(wrapped)))??;
    Ok(JoinHandle { state })
}

/// Number of live tasks on the current shard (None off a shard).
pub fn task_count() -> Option<usize> {
    with_current(|ex| ex.task_count()).ok()
}

/// A future that completes at a deadline; see [`sleep`] and [`sleep_until`].
#[derive(Debug)]
pub struct Sleep {
    deadline: Instant,
    registered: Option<Waker>,
}

/// Completes after `d` on the current shard's timer heap.
pub fn sleep(d: Duration) -> Sleep {
    sleep_until(Instant::now() + d)
}

/// Completes at `deadline`.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        deadline,
        registered: None,
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        let same = self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()));
        if !same {
            let deadline = self.deadline;
            let waker = cx.waker().clone();
            // Off a shard there is no timer heap: complete at once rather than hang forever.
            if with_current(|ex| ex.add_timer(deadline, waker.clone())).is_err() {
                return Poll::Ready(());
            }
            self.registered = Some(waker);
        }
        Poll::Pending
    }
}

/// Yields once to the shard loop (lets pollers and other tasks run).
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(move |cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}
