//! What the members of an active PG still miss, as its primary's shard recovers them.
//!
//! Peering hands the primary, per other member, the sorted list of objects (and tombstones)
//! that member lacks at the authoritative version ([`MemberMissing`]). The shard pushes them
//! in name order, a bounded number at a time over the whole shard; a member's *watermark* is
//! the last name it was handed, so a backfill is an ordered scan. Client writes go to every
//! member whatever the watermark; a write to an object some member still lacks first pushes
//! the object there ([`PgRecovery::take_urgent`]) and waits for it, so a member never applies
//! a partial write to a stale or missing object.
//!
//! Invariants: a name is either pending or in flight for a member, never both; a push that
//! fails goes back to pending (and the PG pauses its recovery for [`RETRY_PAUSE`]); the PG is
//! clean when no member has anything pending or in flight.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use carmine_agent::peering::{MemberMissing, PushTotals};
use smallvec::SmallVec;

use crate::pglog::Version;
use crate::replication::MAX_PEERS;

/// How long a PG's recovery pauses after a failed push.
pub const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// One member's remaining work.
#[derive(Debug)]
struct MemberRecovery {
    osd: u32,
    backfill: bool,
    /// Not started yet: name → (version, tombstone).
    pending: BTreeMap<Vec<u8>, (Version, bool)>,
    in_flight: BTreeMap<Vec<u8>, (Version, bool)>,
    /// The last name handed out (the backfill watermark).
    watermark: Option<Vec<u8>>,
}

/// A PG's recovery on its primary.
#[derive(Debug)]
pub struct PgRecovery {
    pub since: u64,
    /// Live objects in the authoritative state.
    pub objects: u64,
    members: Vec<MemberRecovery>,
    /// Round-robin position over the members.
    turn: usize,
    pub recovered: PushTotals,
    paused_until: Option<Instant>,
    /// Whether the counts changed since the last progress report.
    pub dirty: bool,
}

fn to_version(v: carmine_agent::peering::ObjectVersion) -> Version {
    Version {
        epoch: carmine_wire::Epoch(v.epoch),
        seq: v.seq,
    }
}

impl PgRecovery {
    /// `None` when no member misses anything (the PG is clean at once).
    pub fn new(since: u64, objects: u64, members: Vec<MemberMissing>) -> Option<PgRecovery> {
        let members: Vec<MemberRecovery> = members
            .into_iter()
            .filter(|m| !m.missing.is_empty())
            .map(|m| MemberRecovery {
                osd: m.osd,
                backfill: m.backfill,
                pending: m
                    .missing
                    .into_iter()
                    .map(|(n, v, t)| (n, (to_version(v), t)))
                    .collect(),
                in_flight: BTreeMap::new(),
                watermark: None,
            })
            .collect();
        (!members.is_empty()).then_some(PgRecovery {
            since,
            objects,
            members,
            turn: 0,
            recovered: PushTotals::default(),
            paused_until: None,
            dirty: true,
        })
    }

    pub fn is_clean(&self) -> bool {
        self.members
            .iter()
            .all(|m| m.pending.is_empty() && m.in_flight.is_empty())
    }

    /// Copies still missing: (on history members, on backfill members).
    pub fn counts(&self) -> (u64, u64) {
        let mut c = (0, 0);
        for m in &self.members {
            let n = (m.pending.len() + m.in_flight.len()) as u64;
            if m.backfill {
                c.1 += n;
            } else {
                c.0 += n;
            }
        }
        c
    }

    /// Whether some member still lacks `name` (pending or being pushed).
    pub fn blocks(&self, name: &[u8]) -> bool {
        self.members
            .iter()
            .any(|m| m.pending.contains_key(name) || m.in_flight.contains_key(name))
    }

    /// Whether recovery is paused after a failed push (a write that needs a push waits for
    /// the client's retry instead of pushing at once).
    pub fn paused(&self, now: Instant) -> bool {
        self.paused_until.is_some_and(|t| now < t)
    }

    /// The members `name` is still pending on, moved to in flight (a client write waits for
    /// them), whatever the budget.
    pub fn take_urgent(&mut self, name: &[u8]) -> SmallVec<[u32; MAX_PEERS]> {
        let mut out = SmallVec::new();
        for m in &mut self.members {
            if let Some((k, v)) = m.pending.remove_entry(name) {
                m.in_flight.insert(k, v);
                out.push(m.osd);
            }
        }
        out
    }

    /// The next push: the first pending name of the next member in turn (none while paused).
    pub fn next(&mut self, now: Instant) -> Option<(u32, Vec<u8>)> {
        if self.paused_until.is_some_and(|t| now < t) {
            return None;
        }
        self.paused_until = None;
        for i in 0..self.members.len() {
            let idx = (self.turn + i) % self.members.len();
            let m = &mut self.members[idx];
            if let Some((name, v)) = m.pending.pop_first() {
                m.in_flight.insert(name.clone(), v);
                m.watermark = Some(name.clone());
                self.turn = idx + 1;
                return Some((m.osd, name));
            }
        }
        None
    }

    /// A push of `name` to `osd` landed (`bytes` of data).
    pub fn done(&mut self, osd: u32, name: &[u8], bytes: u64) {
        if let Some(m) = self.members.iter_mut().find(|m| m.osd == osd) {
            if m.in_flight.remove(name).is_some() {
                self.recovered.objects += 1;
                self.recovered.bytes += bytes;
                self.dirty = true;
            }
        }
    }

    /// A push of `name` to `osd` failed: it goes back to pending and the PG pauses.
    pub fn failed(&mut self, osd: u32, name: &[u8], now: Instant) {
        if let Some(m) = self.members.iter_mut().find(|m| m.osd == osd) {
            if let Some((k, v)) = m.in_flight.remove_entry(name) {
                m.pending.insert(k, v);
            }
        }
        self.paused_until = Some(now + RETRY_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carmine_agent::peering::ObjectVersion;

    fn missing(osd: u32, backfill: bool, names: &[&str]) -> MemberMissing {
        MemberMissing {
            osd,
            backfill,
            missing: names
                .iter()
                .map(|n| {
                    (
                        n.as_bytes().to_vec(),
                        ObjectVersion { epoch: 2, seq: 1 },
                        false,
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn nothing_missing_is_clean_at_once() {
        assert!(PgRecovery::new(5, 3, vec![missing(1, false, &[])]).is_none());
    }

    #[test]
    fn pushes_go_in_name_order_taking_turns_and_count_down_to_clean() {
        let now = Instant::now();
        let mut r = PgRecovery::new(
            5,
            3,
            vec![missing(1, false, &["b", "a"]), missing(2, true, &["c"])],
        )
        .unwrap();
        assert_eq!(r.counts(), (2, 1));
        assert_eq!(r.next(now), Some((1, b"a".to_vec())));
        assert_eq!(r.next(now), Some((2, b"c".to_vec())));
        assert_eq!(r.next(now), Some((1, b"b".to_vec())));
        assert_eq!(r.next(now), None);
        assert!(r.blocks(b"a") && r.blocks(b"c"));
        r.done(1, b"a", 10);
        r.done(2, b"c", 5);
        assert_eq!(r.counts(), (1, 0));
        // A failed push goes back and the PG pauses.
        r.failed(1, b"b", now);
        assert!(r.paused(now));
        assert_eq!(r.next(now), None, "paused");
        assert_eq!(r.next(now + RETRY_PAUSE), Some((1, b"b".to_vec())));
        assert!(!r.is_clean());
        r.done(1, b"b", 1);
        assert!(r.is_clean());
        assert_eq!(
            r.recovered,
            PushTotals {
                objects: 3,
                bytes: 16
            }
        );
        assert_eq!(r.counts(), (0, 0));
    }

    #[test]
    fn a_client_write_takes_its_object_out_of_turn() {
        let now = Instant::now();
        let mut r = PgRecovery::new(
            5,
            3,
            vec![missing(1, false, &["x", "y"]), missing(2, false, &["y"])],
        )
        .unwrap();
        let urgent = r.take_urgent(b"y");
        assert_eq!(urgent.as_slice(), &[1, 2]);
        assert!(r.take_urgent(b"y").is_empty(), "already in flight");
        assert!(r.blocks(b"y"));
        assert_eq!(r.next(now), Some((1, b"x".to_vec())));
        assert_eq!(r.next(now), None);
        r.done(1, b"y", 1);
        r.done(2, b"y", 1);
        assert!(!r.blocks(b"y"));
    }
}
