//! Mutations in flight on their primary: what each still waits for before its client is
//! answered.
//!
//! A mutation of a PG is acknowledged to its client only once **every** member of the PG's
//! acting set has made it durable: the primary's own store transaction and one `RepReply::OK`
//! from each other member (the rule of Ceph, Vitastor and Mayastor; no majority quorum on the
//! data path). A pool of size 1 is the same with no peers. The [`WriteTracker`] holds, per
//! mutation, the local result (once its transaction completed) and the peers that have not
//! answered yet, and hands back a [`Finished`] mutation when nothing is left to wait for.
//!
//! ## Failures
//! - A peer answering with an error, a peer connection that is lost ([`WriteTracker::peer_lost`])
//!   and a map that starts a new interval for the PG ([`WriteTracker::fence`]) each fail the
//!   mutation: its client gets the error (`Again` for the retryable ones), never a success.
//! - A failed mutation still waits for its local transaction: the per-object order and the PG
//!   log hold it until the store has answered.
//!
//! ## Invariants
//! - A mutation finishes exactly once, with `Ok` only when the local transaction committed and
//!   every peer it was sent to answered OK in the interval it was sent in.
//! - The tracker is sized at start and reused: no allocation per mutation while fewer than its
//!   capacity are in flight (peers are held inline, at most [`MAX_PEERS`]).

use foldhash::{HashMap, HashMapExt};
use std::time::{Duration, Instant};

use carmine_wire::op::OpKind;
use carmine_wire::{OpError, RepError};

use crate::messenger::ConnRef;
use crate::pg::{Creates, PgKey};
use crate::pglog::ReqId;

/// Most peers a mutation waits for: pools have at most 5 copies.
pub const MAX_PEERS: usize = 4;

/// Longest a mutation waits for its replicas before it fails with `Again`.
pub const REPLICA_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a mutation's answer goes, and what the client asked.
#[derive(Debug, Clone)]
pub struct ReplyTo {
    pub conn: ConnRef,
    pub tid: u64,
    pub kind: OpKind,
    pub started: Instant,
}

/// A mutation on its way, as the primary's shard tracks it.
#[derive(Debug)]
pub struct Mutation {
    pub reply: ReplyTo,
    pub pg: PgKey,
    /// The PG's interval when the mutation was sent: a map that starts another fails it.
    pub interval_since: u64,
    pub order_key: u64,
    pub req: ReqId,
    /// The PG collections its transaction creates (forgotten if it fails).
    pub creates: Creates,
}

#[derive(Debug)]
struct InFlight {
    m: Mutation,
    /// The local transaction's result, once it completed.
    local: Option<Result<(), OpError>>,
    /// Peers that have not answered yet.
    waiting: [u32; MAX_PEERS],
    n_waiting: u8,
    /// The first failure (a local one takes precedence: it says what happened to the data).
    error: Option<OpError>,
}

impl InFlight {
    fn fail(&mut self, e: OpError) {
        self.error.get_or_insert(e);
    }

    fn done(&self) -> bool {
        self.local.is_some() && self.n_waiting == 0
    }

    fn stop_waiting(&mut self, osd: u32) -> bool {
        let n = usize::from(self.n_waiting);
        match self.waiting[..n].iter().position(|&o| o == osd) {
            Some(i) => {
                self.waiting.swap(i, n - 1);
                self.n_waiting -= 1;
                true
            }
            None => false,
        }
    }
}

/// A mutation with nothing left to wait for, and its client's answer.
#[derive(Debug)]
pub struct Finished {
    pub m: Mutation,
    pub result: Result<(), OpError>,
    /// Whether the local transaction committed (the data is in this OSD's store).
    pub committed_here: bool,
}

/// What the primary's client sees for a replica's error.
pub fn client_error(e: RepError) -> OpError {
    match e {
        // The primary's map or interval is out of date, or the replica's is: the client
        // tries again, by then with a map both agree on.
        RepError::StaleInterval { .. } | RepError::NotMember => OpError::Again,
        // A version the replica cannot take (this primary handed it out before a crash, or
        // its head lags): the next attempt gets a newer one.
        RepError::Invalid => OpError::Again,
        RepError::NoSpace => OpError::NoSpace,
        // The replica's store failed (or fails now): it reports itself to the monitor, which
        // marks it down; the retry goes to the new interval's members.
        RepError::Io => OpError::Again,
    }
}

/// Mutations in flight on one shard, by id (the id is also the replica ops' tid).
#[derive(Debug)]
pub struct WriteTracker {
    next_id: u64,
    writes: HashMap<u64, InFlight>,
}

impl WriteTracker {
    pub fn with_capacity(n: usize) -> WriteTracker {
        WriteTracker {
            next_id: 1,
            writes: HashMap::with_capacity(n),
        }
    }

    /// The id the next [`insert`](Self::insert) will use (the tid of its replica ops, which
    /// are encoded before the mutation is inserted).
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Tracks a mutation sent to `peers` (and submitted locally); `failed` is an error that
    /// already fails it (a peer it could not be sent to). Returns its id.
    pub fn insert(&mut self, m: Mutation, peers: &[u32], failed: Option<OpError>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut waiting = [0u32; MAX_PEERS];
        let n = peers.len().min(MAX_PEERS);
        waiting[..n].copy_from_slice(&peers[..n]);
        self.writes.insert(
            id,
            InFlight {
                m,
                local: None,
                waiting,
                n_waiting: n as u8,
                error: failed,
            },
        );
        id
    }

    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// The local transaction of mutation `id` completed.
    pub fn local_done(&mut self, id: u64, result: Result<(), OpError>) -> Option<Finished> {
        let w = self.writes.get_mut(&id)?;
        if let Err(e) = result {
            // The local error says what happened to the data: it replaces a peer's.
            w.error = Some(e);
        }
        w.local = Some(result);
        self.finish_if_done(id)
    }

    /// Peer `osd` answered mutation `id` (an answer for a mutation already failed, or from a
    /// peer it no longer waits for, is dropped).
    pub fn peer_done(
        &mut self,
        id: u64,
        osd: u32,
        result: Result<(), RepError>,
    ) -> Option<Finished> {
        let w = self.writes.get_mut(&id)?;
        if !w.stop_waiting(osd) {
            return None;
        }
        if let Err(e) = result {
            w.fail(client_error(e));
        }
        self.finish_if_done(id)
    }

    /// The connection to `osd` is gone: every mutation waiting for it fails with `Again`.
    pub fn peer_lost(&mut self, osd: u32, out: &mut Vec<Finished>) {
        self.fail_where(out, |w| w.stop_waiting(osd));
    }

    /// A new map: every mutation whose PG is no longer in the interval it was sent in
    /// (`interval(pg)`: the PG's current interval on this shard as its primary, `None` when
    /// this shard is no longer its primary) fails with `Again` and stops waiting for its peers.
    pub fn fence(&mut self, interval: impl Fn(PgKey) -> Option<u64>, out: &mut Vec<Finished>) {
        self.fail_where(out, |w| {
            if interval(w.m.pg) == Some(w.m.interval_since) {
                return false;
            }
            w.n_waiting = 0;
            true
        });
    }

    /// Mutations started before `deadline` that still wait for a peer fail with `Again`
    /// (called about once a second with now − [`REPLICA_TIMEOUT`]).
    pub fn expire(&mut self, deadline: Instant, out: &mut Vec<Finished>) {
        self.fail_where(out, |w| {
            if w.n_waiting == 0 || w.m.reply.started >= deadline {
                return false;
            }
            w.n_waiting = 0;
            true
        });
    }

    fn fail_where(&mut self, out: &mut Vec<Finished>, mut hit: impl FnMut(&mut InFlight) -> bool) {
        let mut ids = Vec::new();
        for (&id, w) in self.writes.iter_mut() {
            if hit(w) {
                w.fail(OpError::Again);
                if w.done() {
                    ids.push(id);
                }
            }
        }
        ids.sort_unstable();
        out.extend(ids.into_iter().filter_map(|id| self.finish_if_done(id)));
    }

    fn finish_if_done(&mut self, id: u64) -> Option<Finished> {
        if !self.writes.get(&id)?.done() {
            return None;
        }
        let w = self.writes.remove(&id)?;
        let committed_here = matches!(w.local, Some(Ok(())));
        Some(Finished {
            m: w.m,
            result: w.error.map_or(Ok(()), Err),
            committed_here,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carmine_wire::Epoch;
    use std::sync::Arc;

    fn mutation(pg: u32, since: u64) -> Mutation {
        Mutation {
            reply: ReplyTo {
                conn: ConnRef::test(0),
                tid: 9,
                kind: OpKind::Write,
                started: Instant::now(),
            },
            pg: PgKey { pool: 1, pg },
            interval_since: since,
            order_key: 5,
            req: ReqId {
                client: Arc::from("client.t"),
                tid: 9,
            },
            creates: Creates::default(),
        }
    }

    #[test]
    fn a_mutation_finishes_only_when_every_copy_is_in() {
        let mut t = WriteTracker::with_capacity(4);
        let id = t.insert(mutation(0, 3), &[1, 2], None);
        assert!(t.peer_done(id, 1, Ok(())).is_none());
        assert!(t.local_done(id, Ok(())).is_none(), "osd.2 has not answered");
        // An answer from a peer the write was not sent to changes nothing.
        assert!(t.peer_done(id, 7, Ok(())).is_none());
        let f = t.peer_done(id, 2, Ok(())).expect("all in");
        assert_eq!(f.result, Ok(()));
        assert!(f.committed_here);
        assert_eq!(t.len(), 0);
        // A second answer for a finished mutation is dropped.
        assert!(t.peer_done(id, 2, Ok(())).is_none());
    }

    #[test]
    fn size_one_finishes_on_the_local_commit() {
        let mut t = WriteTracker::with_capacity(4);
        let id = t.insert(mutation(0, 3), &[], None);
        let f = t.local_done(id, Ok(())).expect("no peers");
        assert_eq!(f.result, Ok(()));
    }

    #[test]
    fn a_replica_error_fails_the_write_and_a_local_error_says_what_happened() {
        let mut t = WriteTracker::with_capacity(4);
        let id = t.insert(mutation(0, 3), &[1, 2], None);
        assert!(t.peer_done(id, 1, Err(RepError::Io)).is_none());
        assert!(t.peer_done(id, 2, Ok(())).is_none(), "local not in");
        let f = t.local_done(id, Ok(())).unwrap();
        // A replica whose store failed is marked down: the client's retry goes elsewhere.
        assert_eq!(f.result, Err(OpError::Again));
        assert!(
            f.committed_here,
            "the local copy is written, the client is not told so"
        );

        let id = t.insert(mutation(0, 3), &[1], None);
        let stale = RepError::StaleInterval {
            replica_epoch: Epoch(9),
            interval_since: Epoch(9),
        };
        assert!(t.peer_done(id, 1, Err(stale)).is_none());
        assert_eq!(
            t.local_done(id, Ok(())).unwrap().result,
            Err(OpError::Again)
        );

        let id = t.insert(mutation(0, 3), &[1], None);
        assert!(t.peer_done(id, 1, Err(RepError::NoSpace)).is_none());
        let f = t.local_done(id, Err(OpError::NotFound)).unwrap();
        assert_eq!(f.result, Err(OpError::NotFound));
        assert!(!f.committed_here);
    }

    #[test]
    fn a_lost_peer_fails_only_the_writes_that_wait_for_it() {
        let mut t = WriteTracker::with_capacity(4);
        let a = t.insert(mutation(0, 3), &[1, 2], None);
        let b = t.insert(mutation(1, 3), &[2, 3], None);
        let c = t.insert(mutation(2, 3), &[1], None);
        assert!(t.local_done(a, Ok(())).is_none());
        let mut out = Vec::new();
        t.peer_lost(1, &mut out);
        // `a` still waits for osd.2; `c` for its local commit.
        assert!(out.is_empty());
        let f = t.peer_done(a, 2, Ok(())).unwrap();
        assert_eq!(f.result, Err(OpError::Again));
        assert_eq!(t.local_done(c, Ok(())).unwrap().result, Err(OpError::Again));
        // `b` never waited for osd.1.
        assert!(t.local_done(b, Ok(())).is_none());
        assert!(t.peer_done(b, 2, Ok(())).is_none());
        assert_eq!(t.peer_done(b, 3, Ok(())).unwrap().result, Ok(()));
    }

    #[test]
    fn a_new_interval_fails_the_writes_of_its_pg_at_once() {
        let mut t = WriteTracker::with_capacity(4);
        let a = t.insert(mutation(0, 3), &[1, 2], None);
        let b = t.insert(mutation(1, 3), &[1, 2], None);
        t.local_done(a, Ok(()));
        t.local_done(b, Ok(()));
        let mut out = Vec::new();
        // PG 0 moved to a new interval; PG 1 kept its own.
        t.fence(|pg| Some(if pg.pg == 0 { 8 } else { 3 }), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].m.pg.pg, 0);
        assert_eq!(out[0].result, Err(OpError::Again));
        // A PG this shard no longer leads fails too.
        t.fence(|_| None, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_peer_that_never_answers_fails_the_write_after_the_timeout() {
        let mut t = WriteTracker::with_capacity(4);
        let id = t.insert(mutation(0, 3), &[1, 2], None);
        t.local_done(id, Ok(()));
        let mut out = Vec::new();
        let started = Instant::now();
        // Not yet due: nothing happens.
        t.expire(started - Duration::from_secs(1), &mut out);
        assert!(out.is_empty());
        assert!(t.peer_done(id, 1, Ok(())).is_none());
        t.expire(started + REPLICA_TIMEOUT, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].result, Err(OpError::Again));
        assert_eq!(t.len(), 0);
        // Its late answer is dropped.
        assert!(t.peer_done(id, 2, Ok(())).is_none());
    }

    #[test]
    fn a_write_not_sent_to_every_peer_never_succeeds() {
        let mut t = WriteTracker::with_capacity(4);
        let id = t.insert(mutation(0, 3), &[1], Some(OpError::Again));
        assert!(t.peer_done(id, 1, Ok(())).is_none());
        assert_eq!(
            t.local_done(id, Ok(())).unwrap().result,
            Err(OpError::Again)
        );
    }
}
