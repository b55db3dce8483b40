//! Async byte streams on the shard-local executor, over any [`NetStack`].
//!
//! [`AsyncNet::new`] splits a stack into a cloneable handle (`Rc`, shard-local) for tasks and a
//! [`NetPoller`] to register on the shard. Futures that cannot make progress (no data, send
//! buffer full, handshake pending, accept queue empty) park their waker in one shared list;
//! whenever the poller's `NetStack::poll` reports work, it wakes every parked waker and they
//! re-check. That is backend-independent and cheap for the few long-lived connections per shard
//! the design calls for; wakers are clones of the task's (an `Arc` increment, no allocation) and
//! the list is preallocated (`waiter_capacity`; it grows past that).

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::SocketAddrV4;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use carmine_reactor::Poller;

use crate::api::{ConnId, ConnState, ListenerId, NetStack};
use crate::NetError;

struct Shared<S> {
    stack: RefCell<S>,
    waiters: RefCell<Vec<Waker>>,
}

/// A shard-local async handle on a stack. Clone it into tasks.
pub struct AsyncNet<S: NetStack> {
    inner: Rc<Shared<S>>,
}

impl<S: NetStack> Clone for AsyncNet<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

/// Drives the stack and wakes parked tasks; register it with `ShardSetup::add_poller`.
pub struct NetPoller<S: NetStack> {
    inner: Rc<Shared<S>>,
    woken: Vec<Waker>,
}

impl<S: NetStack> AsyncNet<S> {
    pub fn new(stack: S, waiter_capacity: usize) -> (Self, NetPoller<S>) {
        let inner = Rc::new(Shared {
            stack: RefCell::new(stack),
            waiters: RefCell::new(Vec::with_capacity(waiter_capacity)),
        });
        let poller = NetPoller {
            inner: inner.clone(),
            woken: Vec::with_capacity(waiter_capacity),
        };
        (Self { inner }, poller)
    }

    /// Runs `f` on the stack (listen, stats, ...). Do not await inside.
    pub fn with<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        f(&mut self.inner.stack.borrow_mut())
    }

    fn park<T>(&self, cx: &mut Context<'_>) -> Poll<T> {
        self.wake_on_work(cx);
        Poll::Pending
    }

    /// Registers the task to be woken after the next [`NetPoller`] turn that moved packets:
    /// for a task that drives connections with the non-blocking [`NetStack`] calls itself (via
    /// [`AsyncNet::with`]) and returns `Pending` when none of them made progress.
    pub fn wake_on_work(&self, cx: &mut Context<'_>) {
        let mut w = self.inner.waiters.borrow_mut();
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
    }

    /// Waits for the next connection on `l`.
    pub async fn accept(&self, l: ListenerId) -> Result<ConnId, NetError> {
        poll_fn(|cx| match self.with(|s| s.accept(l)) {
            Ok(Some(c)) => Poll::Ready(Ok(c)),
            Ok(None) => self.park(cx),
            Err(e) => Poll::Ready(Err(e)),
        })
        .await
    }

    /// Connects and waits for the handshake; `Err(Closed)` if refused or timed out (the
    /// handle is closed for you then).
    pub async fn connect(&self, remote: SocketAddrV4) -> Result<ConnId, NetError> {
        let c = self.with(|s| s.connect(remote))?;
        let r = poll_fn(|cx| match self.with(|s| s.conn_state(c)) {
            Ok(ConnState::Connecting) => self.park(cx),
            Ok(ConnState::Closed) => Poll::Ready(Err(NetError::Closed)),
            Ok(_) => Poll::Ready(Ok(c)),
            Err(e) => Poll::Ready(Err(e)),
        })
        .await;
        if r.is_err() {
            let _ = self.with(|s| s.close(c));
        }
        r
    }

    /// Reads at least one byte; `Ok(0)` at end of stream (std semantics).
    pub async fn read(&self, c: ConnId, buf: &mut [u8]) -> Result<usize, NetError> {
        if buf.is_empty() {
            return Ok(0);
        }
        poll_fn(|cx| match self.with(|s| s.read(c, buf)) {
            Ok(0) => self.park(cx),
            Ok(n) => Poll::Ready(Ok(n)),
            Err(NetError::Eof) => Poll::Ready(Ok(0)),
            Err(e) => Poll::Ready(Err(e)),
        })
        .await
    }

    /// Writes all of `buf`, waiting whenever the send buffer is full (backpressure).
    pub async fn write_all(&self, c: ConnId, mut buf: &[u8]) -> Result<(), NetError> {
        while !buf.is_empty() {
            let n = poll_fn(|cx| match self.with(|s| s.write(c, buf)) {
                Ok(0) => self.park(cx),
                r => Poll::Ready(r),
            })
            .await?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Starts an orderly close (see [`NetStack::close`]).
    pub fn close(&self, c: ConnId) -> Result<(), NetError> {
        self.with(|s| s.close(c))
    }
}

impl<S: NetStack> Poller for NetPoller<S> {
    fn poll(&mut self) -> usize {
        let work = self.inner.stack.borrow_mut().poll();
        if work > 0 {
            // Swap the lists so wakers run without the RefCell held (a woken task only runs
            // later, but keep the borrow short anyway); both keep their capacity.
            std::mem::swap(&mut self.woken, &mut self.inner.waiters.borrow_mut());
            for w in self.woken.drain(..) {
                w.wake();
            }
        }
        work
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.inner.stack.borrow().next_deadline()
    }

    fn wait_fd(&self) -> Option<RawFd> {
        self.inner.stack.borrow().wait_fd()
    }
}
