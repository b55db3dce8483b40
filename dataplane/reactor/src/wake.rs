//! Waking a sleeping shard: an eventfd plus a "sleeping" flag so that producers make the
//! `write(2)` only when the consumer is (about to be) blocked.
//!
//! Protocol (a Dekker-style handshake, both sides use SeqCst):
//! - producer: publish work (ring push / ready bit), `fence(SeqCst)`, load `sleeping`; if set,
//!   signal the eventfd.
//! - consumer: store `sleeping = true`, `fence(SeqCst)`, re-check every work source (its
//!   rings, the ready tasks, every poller's `has_pending`: e.g. a steering ring whose producer
//!   rings a `ShardWaker`); block in ppoll only if all are empty; on wake store
//!   `sleeping = false` and drain the eventfd.
//!
//! Either the producer sees `sleeping == true` and signals, or the consumer's re-check sees the
//! published work; a wake-up cannot be lost.

use std::sync::atomic::{fence, AtomicBool, Ordering};

use crate::sys::EventFd;

#[derive(Debug)]
pub(crate) struct Wake {
    efd: EventFd,
    sleeping: AtomicBool,
}

impl Wake {
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(Self {
            efd: EventFd::new()?,
            sleeping: AtomicBool::new(false),
        })
    }

    /// Called by a producer after it published work.
    #[inline]
    pub(crate) fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            self.efd.signal();
        }
    }

    /// Wakes the shard unconditionally (stop requests).
    pub(crate) fn force(&self) {
        self.efd.signal();
    }

    pub(crate) fn begin_sleep(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    pub(crate) fn end_sleep(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
        self.efd.drain();
    }

    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        self.efd.fd()
    }
}
