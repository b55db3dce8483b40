//! Cross-shard and control-plane messaging over SPSC rings.
//!
//! There is one ring per ordered pair (producer shard, consumer shard), plus one ring from the
//! control plane into every shard: a full mesh of N*(N-1)+N rings, all allocated at start-up.
//! The producer side of every ring a shard may write lives in that shard's [`Mailbox`]; the
//! control rings live in the single [`ControlSender`]. Because each ring has exactly one
//! producer and one consumer, no push or pop takes a lock.
//!
//! Batching: a shard's sends only mark the destination "to notify"; the shard loop signals
//! each marked destination once per iteration (and only if that destination sleeps). The
//! consumer drains each inbound ring in chunks of up to `ReactorConfig::batch` messages.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use crate::stats::ShardStats;
use crate::wake::Wake;

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Another shard (its index).
    Shard(usize),
    /// The control-plane thread.
    Control,
}

/// The sending side of one shard: producers of its rings to every other shard.
///
/// Shard-local (`!Sync`): tasks and handlers of the shard share it through an `Rc`.
pub struct Mailbox<M> {
    shard: usize,
    outbound: Vec<RefCell<Option<rtrb::Producer<M>>>>,
    wakes: Arc<[Arc<Wake>]>,
    to_notify: Cell<u64>,
    stats: Arc<ShardStats>,
}

impl<M> Mailbox<M> {
    pub(crate) fn new(
        shard: usize,
        outbound: Vec<Option<rtrb::Producer<M>>>,
        wakes: Arc<[Arc<Wake>]>,
        stats: Arc<ShardStats>,
    ) -> Self {
        Self {
            shard,
            outbound: outbound.into_iter().map(RefCell::new).collect(),
            wakes,
            to_notify: Cell::new(0),
            stats,
        }
    }

    /// This shard's index.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.outbound.len()
    }

    /// Queues `msg` for shard `dst` (one counted cross-shard hop). Returns the message when the
    /// ring is full (backpressure: retry later) or `dst` is this shard or does not exist.
    pub fn send(&self, dst: usize, msg: M) -> Result<(), M> {
        let Some(cell) = self.outbound.get(dst) else {
            return Err(msg);
        };
        let mut slot = cell.borrow_mut();
        let Some(p) = slot.as_mut() else {
            return Err(msg);
        };
        match p.push(msg) {
            Ok(()) => {
                self.stats.cross_shard_sent.add(1);
                self.to_notify.set(self.to_notify.get() | (1 << dst));
                Ok(())
            }
            Err(rtrb::PushError::Full(m)) => {
                self.stats.ring_full.add(1);
                Err(m)
            }
        }
    }

    /// Free slots in the ring to `dst` (0 for self or unknown shards).
    pub fn free_slots(&self, dst: usize) -> usize {
        self.outbound
            .get(dst)
            .and_then(|c| c.borrow().as_ref().map(|p| p.slots()))
            .unwrap_or(0)
    }

    /// Signals every destination written since the last flush (if it sleeps).
    pub(crate) fn flush(&self) {
        let mut mask = self.to_notify.replace(0);
        while mask != 0 {
            let dst = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            self.wakes[dst].notify();
        }
    }
}

/// The control plane's sending side: one ring into every shard. `Send`, not `Sync`: exactly one
/// control thread owns it (the rings are single-producer).
pub struct ControlSender<M> {
    producers: Vec<rtrb::Producer<M>>,
    wakes: Arc<[Arc<Wake>]>,
}

impl<M> ControlSender<M> {
    pub(crate) fn new(producers: Vec<rtrb::Producer<M>>, wakes: Arc<[Arc<Wake>]>) -> Self {
        Self { producers, wakes }
    }

    /// Queues `msg` for `shard` and wakes it if it sleeps. Returns the message if the ring is
    /// full or the shard does not exist.
    pub fn send(&mut self, shard: usize, msg: M) -> Result<(), M> {
        let Some(p) = self.producers.get_mut(shard) else {
            return Err(msg);
        };
        match p.push(msg) {
            Ok(()) => {
                self.wakes[shard].notify();
                Ok(())
            }
            Err(rtrb::PushError::Full(m)) => Err(m),
        }
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.producers.len()
    }
}
