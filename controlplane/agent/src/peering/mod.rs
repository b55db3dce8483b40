//! Peering and recovery: what the agent and the OSD's shards say to each other.
//!
//! The design (Ceph's peering, with Vitastor's per-object listings):
//! - A shard that leads a replicated PG in a new interval holds its client I/O back (`Again`)
//!   and tells the agent ([`ShardEvent::NewInterval`]). The agent's peering task
//!   (`driver`) gathers the PG's recorded history from the monitor and every member's copy
//!   ([`PgCopy`], from [`ShardRequest::List`] here and `OsdAdmin.PgListing` on the others),
//!   decides ([`crate::peering_plan`]), prepares the members ([`ShardRequest::Prepare`]),
//!   fills the primary ([`ShardRequest::Push`] on the holders), waits out an unreached earlier
//!   primary's read lease, records the interval with the monitor and only then activates the
//!   shard ([`ShardRequest::Activate`]).
//! - The active primary's shard pushes what each member misses over the data plane, a bounded
//!   number at a time; a client write to an object some member misses pushes it first. It
//!   reports progress ([`ShardEvent::Progress`]) and, once every member has everything,
//!   [`ShardEvent::Clean`]; the agent then trims the PG's history at the monitor.
//!
//! This crate knows nothing of shards or stores: the OSD implements [`PeeringShards`] by
//! pushing requests into the shard's control ring, and hands the shards an
//! [`EventSender`]. Invariant: a shard answers every request it takes (dropping the reply
//! sender counts as [`PeeringError::Gone`]).

pub(crate) mod driver;

pub use driver::Peering;

/// Most removes one [`ShardRequest::Prepare`] carries (one store transaction must fit one
/// journal record); the agent splits longer lists.
pub const MAX_PREPARE_REMOVES: usize = 256;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

pub use crate::scrub::{ObjectVersion, PgId};

/// One object (or tombstone) as one OSD holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub name: Vec<u8>,
    pub version: ObjectVersion,
    /// Removed at `version`.
    pub tombstone: bool,
}

/// One OSD's copy of a PG, for peering.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgCopy {
    /// Whether the OSD holds the PG's info (false: never held it, or was wiped).
    pub has_info: bool,
    /// The first interval this copy has every write of.
    pub info_since: u64,
    /// Objects and tombstones, sorted by name, one entry per name.
    pub objects: Vec<ListedObject>,
}

/// What one member of an active PG still misses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberMissing {
    pub osd: u32,
    /// The member is outside the PG's history (backfill) rather than behind in it.
    pub backfill: bool,
    /// (name, version, tombstone), sorted by name: pushed in this order.
    pub missing: Vec<(Vec<u8>, ObjectVersion, bool)>,
}

/// Totals of a push job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushTotals {
    pub objects: u64,
    pub bytes: u64,
}

/// Why a shard could not do what peering asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeeringError {
    #[error("the shard's ring is full: try again")]
    Busy,
    #[error("the shard went away before answering")]
    Gone,
    #[error("this OSD is at map epoch {have}, the request needs {need}")]
    Behind { have: u64, need: u64 },
    #[error("the PG's interval changed (now since epoch {now})")]
    IntervalChanged { now: u64 },
    #[error("this shard does not lead the PG")]
    NotPrimary,
    #[error("no link to osd.{0}")]
    NoLink(u32),
    #[error("osd.{osd} refused a push: {reason}")]
    PushRefused { osd: u32, reason: String },
    #[error("store error: {0}")]
    Store(String),
}

pub type Reply<T> = oneshot::Sender<Result<T, PeeringError>>;

/// A request from the agent to the shard that holds a PG.
#[derive(Debug)]
pub enum ShardRequest {
    /// This OSD's copy of the PG, once the shard runs `epoch` or later and no mutation of the
    /// PG is in flight.
    List {
        pg: PgId,
        epoch: u64,
        reply: Reply<PgCopy>,
    },
    /// Remove `remove` (objects the authoritative state lacks) and, with `set_since`, record
    /// that this copy has every write from that interval on.
    Prepare {
        pg: PgId,
        /// The asking primary, its map epoch, and its interval: first epoch, acting set and
        /// the members' boot epochs. A member takes it only in that same interval (see the
        /// shard's `Prepare` admission).
        primary: u32,
        epoch: u64,
        since: u64,
        acting: Vec<u32>,
        boots: Vec<u64>,
        /// Names whose object and tombstone this copy drops.
        remove: Vec<Vec<u8>>,
        set_since: Option<u64>,
        reply: Reply<()>,
    },
    /// Push `objects` as this OSD holds them to `target` (recovery towards a primary that is
    /// not active yet), stamped with the primary's `epoch` and interval `since`.
    Push {
        pg: PgId,
        epoch: u64,
        since: u64,
        target: u32,
        objects: Vec<Vec<u8>>,
        reply: Reply<PushTotals>,
    },
    /// The primary goes active in interval `since`, with what each other member misses.
    Activate {
        pg: PgId,
        since: u64,
        objects: u64,
        members: Vec<MemberMissing>,
        reply: Reply<()>,
    },
}

impl ShardRequest {
    pub fn pg(&self) -> PgId {
        match self {
            ShardRequest::List { pg, .. }
            | ShardRequest::Prepare { pg, .. }
            | ShardRequest::Push { pg, .. }
            | ShardRequest::Activate { pg, .. } => *pg,
        }
    }
}

/// The OSD's side: hands a request to the shard that holds the PG (through its control
/// ring). Called on the agent thread; never blocks.
pub trait PeeringShards: Send + Sync + 'static {
    /// Queues `req`, or gives it back when the ring is full.
    fn submit(&self, req: ShardRequest) -> Result<(), ShardRequest>;
}

/// What a shard tells the agent about the PGs it leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardEvent {
    /// This OSD leads a PG in a new interval (its first epoch `since`, seen at map `epoch`):
    /// peer it (client I/O waits until it is activated), whatever its number of copies.
    NewInterval {
        pg: PgId,
        since: u64,
        epoch: u64,
        acting: Vec<u32>,
        /// The acting members' boot epochs (`up_from`): with `acting`, what identifies the
        /// interval on every member.
        boots: Vec<u64>,
        size: u32,
        min_size: u32,
    },
    /// This OSD no longer leads the PG.
    Left { pg: PgId },
    /// Recovery progress of an active PG (sent when it changes, at most every few hundred
    /// milliseconds).
    Progress {
        pg: PgId,
        since: u64,
        degraded: u64,
        misplaced: u64,
        recovered: PushTotals,
    },
    /// Every member of the PG has every object of interval `since`.
    Clean { pg: PgId, since: u64 },
    /// The live objects of an active, clean PG this OSD leads, when the count changed (sent
    /// at most once per PG per peering tick).
    Objects { pg: PgId, since: u64, objects: u64 },
}

/// Where shards send [`ShardEvent`]s (unbounded: events come per PG and interval, not per op).
pub type EventSender = mpsc::UnboundedSender<ShardEvent>;
pub type EventReceiver = mpsc::UnboundedReceiver<ShardEvent>;

/// A new channel for [`ShardEvent`]s.
pub fn event_channel() -> (EventSender, EventReceiver) {
    mpsc::unbounded_channel()
}

/// The read lease of this OSD as a primary, shared by the agent (writer, at each answered
/// heartbeat) and the shards (readers, at each client op of a PG they lead).
#[derive(Debug)]
pub struct Lease {
    base: Instant,
    /// Nanoseconds after `base` until which this OSD may serve; `u64::MAX`: no lease (a
    /// monitor that grants none).
    until_ns: AtomicU64,
}

impl Default for Lease {
    fn default() -> Self {
        Lease::new()
    }
}

impl Lease {
    /// No lease yet: nothing may be served until the first heartbeat is answered.
    pub fn new() -> Lease {
        Lease {
            base: Instant::now(),
            until_ns: AtomicU64::new(0),
        }
    }

    /// Serve without a lease (a monitor that grants none).
    pub fn unfenced(&self) {
        self.until_ns.store(u64::MAX, Ordering::Release);
    }

    /// Extends the lease to `from + duration` (never shortens it).
    pub fn renew(&self, from: Instant, duration: Duration) {
        let until = from.saturating_duration_since(self.base) + duration;
        let ns = u64::try_from(until.as_nanos()).unwrap_or(u64::MAX - 1);
        self.until_ns.fetch_max(ns, Ordering::AcqRel);
    }

    /// Whether the lease holds at `now`.
    pub fn valid_at(&self, now: Instant) -> bool {
        let until = self.until_ns.load(Ordering::Acquire);
        if until == u64::MAX {
            return true;
        }
        let ns =
            u64::try_from(now.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX);
        ns < until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_holds_until_it_runs_out_and_only_grows() {
        let l = Lease::new();
        let t0 = Instant::now();
        assert!(!l.valid_at(t0), "no lease before the first renewal");
        l.renew(t0, Duration::from_secs(2));
        assert!(l.valid_at(t0 + Duration::from_secs(1)));
        assert!(!l.valid_at(t0 + Duration::from_secs(3)));
        // A renewal from an older send time does not shorten it.
        l.renew(t0, Duration::from_millis(1));
        assert!(l.valid_at(t0 + Duration::from_secs(1)));
        l.unfenced();
        assert!(l.valid_at(t0 + Duration::from_secs(3600)));
    }
}
