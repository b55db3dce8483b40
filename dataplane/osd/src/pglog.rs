//! Object versions and the PG log: what a PG remembers of its recent mutations.
//!
//! Every mutation a PG applies gets a [`Version`]: the primary's map epoch and a per-PG
//! sequence. The version is stored with the object (attribute [`VERSION_ATTR`]) and a log entry
//! (version, op, object, the client's request id) is written to the PG's log, both in the same
//! store transaction as the data, so data, version and log entry are durable together or not
//! at all.
//!
//! ## On the store
//! The log lives in the omap of one object, [`LOG_OBJECT`], in the PG's *meta collection*
//! ([`crate::pg::PgKey::meta_cid`]), apart from the PG's data collection so that it never shows
//! in a listing and no client name can collide with it. Keys are the version in big-endian
//! (`epoch`, `seq`), so omap order is version order; the value is a [`LogEntry`]:
//!
//! ```text
//! u8 op kind | u16 client id length | client id | u64 tid | u16 object length | object
//! ```
//!
//! ## Bounds and duplicates
//! A PG keeps its last [`LOG_KEEP`] entries (trimmed [`TRIM_BATCH`] at a time, in the same
//! transaction as a new entry). The request ids of the kept entries form the PG's duplicate
//! table: a client that retries a mutation it already had applied (same client id and tid, on
//! any connection) gets the first result back instead of a second application. This holds for
//! a retry that arrives within the last `LOG_KEEP` mutations of the PG, across restarts, since
//! the table is rebuilt from the log when the shard starts.
//!
//! ## Replicated PGs
//! In a PG of several copies the log alone cannot tell whether an entry was acknowledged to its
//! client: a replica commits entries whose write may still fail on another member, and a
//! primary that restarts reloads entries whose write failed on a replica. Until peering
//! reconciles the members' logs (issue 12), a replicated PG answers a retry from the duplicate
//! table only for entries this process committed as acknowledged in the PG's current interval
//! ([`DupScope::Interval`]); an older or reloaded one is applied again (re-applying a write is
//! safe, answering OK for one a member lacks is not). A PG of one copy trusts every entry.
//!
//! ## Invariants
//! - Versions of a PG only grow: `(epoch, seq)` with `seq` strictly increasing (a failed
//!   transaction leaves a gap, never a repeat) and `epoch` never below the last one. The epoch
//!   is the map epoch at assignment (at least the interval's first), so a primary whose head
//!   lags a member's (it skipped maps, or crashed before its own commit) still gets ahead with
//!   the next map.
//! - An entry is in the duplicate table only once its transaction committed.

use std::collections::VecDeque;
use std::sync::Arc;

use carmine_objectstore::{ObjectId, OmapKey, OmapValue};
use carmine_wire::op::OpKind;
use carmine_wire::Epoch;
use foldhash::{HashMap, HashMapExt};

/// Attribute holding an object's version (16 bytes, [`version_key`]).
pub const VERSION_ATTR: &str = "v";
/// The object of a PG's meta collection whose omap is the PG log.
pub const LOG_OBJECT: &[u8] = b"log";
/// Entries a PG keeps in its log (and so the reach of duplicate detection).
pub const LOG_KEEP: usize = 256;
/// Entries trimmed at once, when the log holds `LOG_KEEP + TRIM_BATCH`.
pub const TRIM_BATCH: usize = 32;

/// An object version (the wire's type): the primary's map epoch when it assigned it, then a
/// per-PG sequence.
pub use carmine_wire::Version;

/// The version as a store key: big-endian (epoch, seq), so byte order is version order.
pub fn version_key(v: Version) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&v.epoch.0.to_be_bytes());
    b[8..].copy_from_slice(&v.seq.to_be_bytes());
    b
}

/// The version of a store key ([`version_key`]).
pub fn version_of_key(b: &[u8]) -> Option<Version> {
    let b: &[u8; 16] = b.try_into().ok()?;
    let (e, s) = b.split_at(8);
    Some(Version {
        epoch: Epoch(u64::from_be_bytes(e.try_into().ok()?)),
        seq: u64::from_be_bytes(s.try_into().ok()?),
    })
}

const VERSION_ZERO: Version = Version {
    epoch: Epoch(0),
    seq: 0,
};

/// A client's request identity, owned (the wire's [`carmine_wire::ReqId`] borrows): its
/// authenticated id and the op's tid. A client keeps an op's tid over all its attempts, on any
/// connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReqId {
    pub client: Arc<str>,
    pub tid: u64,
}

/// One mutation in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub version: Version,
    pub kind: OpKind,
    pub req: ReqId,
    pub object: Vec<u8>,
}

/// Why a stored log entry could not be read back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogDecodeError {
    #[error("log key is {0} bytes, not 16")]
    Key(usize),
    #[error("log entry truncated")]
    Truncated,
    #[error("log entry has unknown op kind {0}")]
    Kind(u8),
    #[error("log entry's client id is not UTF-8")]
    Client,
    #[error("log entry has {0} trailing bytes")]
    Trailing(usize),
}

/// The omap value of a log entry (see the module docs), written without building the entry.
/// Inline (no allocation) when it fits [`OmapValue`]'s 64 bytes, as with most client ids
/// and object names.
fn encode_value(kind: OpKind, req: &ReqId, object: &[u8]) -> OmapValue {
    let client = req.client.as_bytes();
    let mut v = OmapValue::with_capacity(1 + 2 + client.len() + 8 + 2 + object.len());
    v.push(kind_code(kind));
    // Client ids and object names are bounded by the wire limits (u16 lengths there).
    v.extend_from_slice(&(client.len() as u16).to_le_bytes());
    v.extend_from_slice(client);
    v.extend_from_slice(&req.tid.to_le_bytes());
    v.extend_from_slice(&(object.len() as u16).to_le_bytes());
    v.extend_from_slice(object);
    v
}

fn kind_code(k: OpKind) -> u8 {
    k as u8
}

fn kind_of(c: u8) -> Result<OpKind, LogDecodeError> {
    Ok(match c {
        1 => OpKind::Write,
        2 => OpKind::WriteFull,
        5 => OpKind::Remove,
        other => return Err(LogDecodeError::Kind(other)),
    })
}

impl LogEntry {
    /// The omap value of this entry (the key is [`version_key`] of its version).
    #[cfg(test)]
    pub fn encode_value(&self) -> OmapValue {
        encode_value(self.kind, &self.req, &self.object)
    }

    /// The entry stored under `key` with `value`.
    pub fn decode(key: &[u8], value: &[u8]) -> Result<LogEntry, LogDecodeError> {
        let version = version_of_key(key).ok_or(LogDecodeError::Key(key.len()))?;
        let mut r = value;
        let mut take = |n: usize| -> Result<&[u8], LogDecodeError> {
            if r.len() < n {
                return Err(LogDecodeError::Truncated);
            }
            let (a, b) = r.split_at(n);
            r = b;
            Ok(a)
        };
        let kind = kind_of(take(1)?[0])?;
        let clen = u16::from_le_bytes([take(1)?[0], take(1)?[0]]) as usize;
        let client = std::str::from_utf8(take(clen)?).map_err(|_| LogDecodeError::Client)?;
        let client: Arc<str> = Arc::from(client);
        let mut tid = [0u8; 8];
        tid.copy_from_slice(take(8)?);
        let olen = u16::from_le_bytes([take(1)?[0], take(1)?[0]]) as usize;
        let object = take(olen)?.to_vec();
        if !r.is_empty() {
            return Err(LogDecodeError::Trailing(r.len()));
        }
        Ok(LogEntry {
            version,
            kind,
            req: ReqId {
                client,
                tid: u64::from_le_bytes(tid),
            },
            object,
        })
    }
}

/// A PG's log as its shard keeps it in memory: the last version handed out, the committed
/// entries still in the log (oldest first) and their request ids.
#[derive(Debug)]
pub struct PgLog {
    /// The last version assigned (committed or in flight).
    head: Version,
    /// Versions of the committed entries in the log, oldest first, with their request ids.
    entries: VecDeque<(Version, ReqId)>,
    /// Committed request id -> its entry: the duplicate table.
    dups: HashMap<ReqId, Applied>,
    /// Request ids of mutations in flight (a retry of one waits for it).
    inflight: HashMap<ReqId, Applied>,
}

/// What the log knows of an applied request: enough to answer a retry, and to tell a retry
/// from a client reusing a tid for another op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub version: Version,
    pub kind: OpKind,
    /// The object's key in its PG (`Pg::object_key`: a hash of its name).
    object: u64,
    /// Loaded from the store at start, not committed by this process: whether its write was
    /// acknowledged is unknown.
    loaded: bool,
}

/// Which entries of the duplicate table a PG trusts to answer a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DupScope {
    /// Every entry (a PG of one copy: its only commit is the acknowledgment).
    All,
    /// Entries this process committed as acknowledged, with a version from the interval that
    /// began at this epoch or later (a replicated PG; see the module docs).
    Interval(u64),
}

impl Default for PgLog {
    fn default() -> Self {
        PgLog {
            head: VERSION_ZERO,
            entries: VecDeque::new(),
            dups: HashMap::new(),
            inflight: HashMap::new(),
        }
    }
}

/// What a mutation must add to its transaction for the log: the entry, and the keys of the
/// oldest entries to trim.
#[derive(Debug)]
pub struct LogWrite {
    /// The mutation's version (the entry's key is [`version_key`] of it).
    pub version: Version,
    pub value: OmapValue,
    pub trim: Vec<OmapKey>,
}

impl PgLog {
    /// The log of a PG as stored: its entries in key order; `object_key` is the PG's key of an
    /// object name (`Pg::object_key`). Entries that cannot be read are skipped and returned as
    /// errors, so one bad entry does not take a PG down.
    pub fn load(
        stored: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
        object_key: impl Fn(&[u8]) -> u64,
    ) -> (PgLog, Vec<LogDecodeError>) {
        let mut log = PgLog::default();
        let mut errors = Vec::new();
        for (k, v) in stored {
            match LogEntry::decode(&k, &v) {
                Ok(e) => {
                    let a = Applied {
                        version: e.version,
                        kind: e.kind,
                        object: object_key(&e.object),
                        loaded: true,
                    };
                    log.committed_entry(e.req, a, true)
                }
                Err(err) => errors.push(err),
            }
        }
        (log, errors)
    }

    /// Entries in the log (committed).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The first result of `req` on the object with key `object` (`Pg::object_key`) with
    /// `kind`, if it committed and is still in the log. The same request id on another object
    /// or op is no retry (a client that reused a tid): it is applied as the new request it is.
    pub fn duplicate(
        &self,
        req: &ReqId,
        kind: OpKind,
        object: u64,
        scope: DupScope,
    ) -> Option<Applied> {
        self.dups
            .get(req)
            .filter(|a| a.kind == kind && a.object == object)
            .filter(|a| match scope {
                DupScope::All => true,
                DupScope::Interval(since) => !a.loaded && a.version.epoch.0 >= since,
            })
            .copied()
    }

    /// Whether a mutation with `req` on the object with key `object` is in flight.
    pub fn in_flight(&self, req: &ReqId, object: u64) -> bool {
        self.inflight.get(req).is_some_and(|a| a.object == object)
    }

    /// Starts a mutation of `object` (whose key in the PG is `object_key`) on the primary,
    /// whose map is at `epoch`: assigns its version and returns what the transaction must
    /// write to the log.
    pub fn begin(
        &mut self,
        epoch: u64,
        kind: OpKind,
        req: ReqId,
        object: &[u8],
        object_key: u64,
    ) -> LogWrite {
        let version = Version {
            epoch: Epoch(epoch).max(self.head.epoch),
            seq: self.head.seq + 1,
        };
        self.begin_at(version, kind, req, object, object_key)
    }

    /// Starts a mutation with the `version` its primary assigned (on a replica; the primary's
    /// [`begin`](Self::begin) comes here too). The caller has checked that `version` is newer
    /// than [`head`](Self::head).
    pub fn begin_at(
        &mut self,
        version: Version,
        kind: OpKind,
        req: ReqId,
        object: &[u8],
        object_key: u64,
    ) -> LogWrite {
        self.head = self.head.max(version);
        let value = encode_value(kind, &req, object);
        // Trim what will be past LOG_KEEP once this entry and those in flight commit.
        let mut trim = Vec::new();
        let held = self.entries.len() + self.inflight.len() + 1;
        if held >= LOG_KEEP + TRIM_BATCH {
            let n = (held - LOG_KEEP).min(self.entries.len());
            trim.extend(
                self.entries
                    .iter()
                    .take(n)
                    .map(|(v, _)| OmapKey::from_slice(&version_key(*v))),
            );
            for (v, r) in self.entries.drain(..n) {
                // A request applied twice (its first attempt was not acknowledged everywhere)
                // is in the log twice: only its own entry's trim forgets it.
                if self.dups.get(&r).is_some_and(|a| a.version == v) {
                    self.dups.remove(&r);
                }
            }
        }
        let applied = Applied {
            version,
            kind,
            object: object_key,
            loaded: false,
        };
        self.inflight.insert(req, applied);
        LogWrite {
            version,
            value,
            trim,
        }
    }

    /// The newest version handed out or applied.
    pub fn head(&self) -> Version {
        self.head
    }

    /// Whether the committed entry with `version` is in the log and is request `req` (a
    /// replica op sent again). The same version for another request is a primary that handed
    /// it out twice (it crashed before its own commit): no duplicate.
    pub fn has_committed(&self, version: Version, req: &ReqId) -> bool {
        self.entries
            .iter()
            .rev()
            .any(|(v, r)| *v == version && r == req)
    }

    /// The mutation with `req` committed (on every member of the acting set): it joins the
    /// log and the duplicate table.
    pub fn commit(&mut self, req: ReqId) {
        if let Some(a) = self.inflight.remove(&req) {
            self.committed_entry(req, a, true);
        }
    }

    /// The mutation with `req` committed here, but the client was not told it is done (a
    /// replica did not confirm it): its entry is in the stored log (and is trimmed with it),
    /// but it is no duplicate, so the client's retry is applied again.
    pub fn commit_unacknowledged(&mut self, req: ReqId) {
        if let Some(a) = self.inflight.remove(&req) {
            self.committed_entry(req, a, false);
        }
    }

    /// The mutation with `req` failed: nothing of it was written (its version stays unused).
    pub fn abort(&mut self, req: &ReqId) {
        self.inflight.remove(req);
    }

    fn committed_entry(&mut self, req: ReqId, a: Applied, acknowledged: bool) {
        if a.version > self.head {
            self.head = a.version;
        }
        if acknowledged {
            self.dups.insert(req.clone(), a);
        }
        // Commits arrive in submission order, which is version order.
        self.entries.push_back((a.version, req));
    }
}

/// The object id of the log object.
pub fn log_object() -> ObjectId {
    ObjectId::from_slice(LOG_OBJECT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An object key as the PG makes it (any hash does here).
    fn k(object: &[u8]) -> u64 {
        xxhash_rust::xxh64::xxh64(object, 7)
    }

    fn req(c: &str, tid: u64) -> ReqId {
        ReqId {
            client: Arc::from(c),
            tid,
        }
    }

    fn v(epoch: u64, seq: u64) -> Version {
        Version {
            epoch: Epoch(epoch),
            seq,
        }
    }

    #[test]
    fn versions_order_as_their_keys() {
        let (a, b, c) = (v(3, 9), v(4, 1), v(4, 1 << 40));
        assert!(a < b && b < c);
        assert!(version_key(a) < version_key(b) && version_key(b) < version_key(c));
        assert_eq!(version_of_key(&version_key(a)), Some(a));
        assert_eq!(version_of_key(&[0; 15]), None);
    }

    #[test]
    fn versions_grow_across_intervals_and_failures() {
        let mut log = PgLog::default();
        let w1 = log.begin(5, OpKind::Write, req("client.a", 1), b"o", k(b"o"));
        assert_eq!(w1.version, v(5, 1));
        log.abort(&req("client.a", 1));
        let w2 = log.begin(5, OpKind::Write, req("client.a", 2), b"o", k(b"o"));
        assert_eq!(w2.version, v(5, 2), "a gap, no repeat");
        log.commit(req("client.a", 2));
        // A new interval raises the epoch; an older interval number cannot lower it.
        let w3 = log.begin(9, OpKind::Remove, req("client.b", 7), b"o", k(b"o"));
        assert_eq!(w3.version, v(9, 3));
        let w4 = log.begin(2, OpKind::Write, req("client.b", 8), b"o", k(b"o"));
        assert_eq!(w4.version, v(9, 4));
        assert!(w1.version < w2.version && w2.version < w3.version && w3.version < w4.version);
    }

    #[test]
    fn a_committed_request_is_a_duplicate_and_one_in_flight_is_not_yet() {
        let mut log = PgLog::default();
        let r = req("client.x", 42);
        let wf = OpKind::WriteFull;
        let w = log.begin(1, wf, r.clone(), b"obj", k(b"obj"));
        assert!(log.in_flight(&r, k(b"obj")));
        assert_eq!(
            log.duplicate(&r, wf, k(b"obj"), DupScope::All),
            None,
            "not durable yet"
        );
        log.commit(r.clone());
        assert!(!log.in_flight(&r, k(b"obj")));
        let d = log
            .duplicate(&r, wf, k(b"obj"), DupScope::All)
            .expect("a duplicate");
        assert_eq!((d.version, d.kind), (w.version, wf));
        // Same tid from another client is another request.
        assert_eq!(
            log.duplicate(&req("client.y", 42), wf, k(b"obj"), DupScope::All),
            None
        );
        // So is the same request id on another object or op (a client reusing a tid).
        assert_eq!(log.duplicate(&r, wf, k(b"other"), DupScope::All), None);
        assert_eq!(
            log.duplicate(&r, OpKind::Remove, k(b"obj"), DupScope::All),
            None
        );
        // A failed one is no duplicate.
        let f = req("client.x", 43);
        log.begin(1, OpKind::Write, f.clone(), b"obj", k(b"obj"));
        assert!(!log.in_flight(&f, k(b"other")));
        log.abort(&f);
        assert_eq!(
            log.duplicate(&f, OpKind::Write, k(b"obj"), DupScope::All),
            None
        );
    }

    #[test]
    fn the_log_is_trimmed_to_its_bound_in_batches() {
        let mut log = PgLog::default();
        let mut trimmed = 0;
        for tid in 0..(LOG_KEEP + 3 * TRIM_BATCH) as u64 {
            let w = log.begin(1, OpKind::Write, req("c", tid), b"o", k(b"o"));
            trimmed += w.trim.len();
            // Trimmed keys are the oldest versions, in order.
            if let Some(first) = w.trim.first() {
                assert_eq!(
                    version_of_key(first).unwrap().seq,
                    trimmed as u64 - w.trim.len() as u64 + 1
                );
            }
            log.commit(req("c", tid));
            assert!(log.len() < LOG_KEEP + TRIM_BATCH, "{}", log.len());
        }
        assert!(log.len() >= LOG_KEEP);
        assert_eq!(trimmed + log.len(), LOG_KEEP + 3 * TRIM_BATCH);
        // Trimmed requests are no longer known; recent ones are.
        let w = OpKind::Write;
        assert_eq!(log.duplicate(&req("c", 0), w, k(b"o"), DupScope::All), None);
        let last = (LOG_KEEP + 3 * TRIM_BATCH - 1) as u64;
        assert!(log
            .duplicate(&req("c", last), w, k(b"o"), DupScope::All)
            .is_some());
    }

    #[test]
    fn a_stored_log_loads_back_with_its_duplicates_and_head() {
        let mut log = PgLog::default();
        let mut stored = Vec::new();
        for tid in 1..=5u64 {
            let kind = if tid == 3 {
                OpKind::Remove
            } else {
                OpKind::WriteFull
            };
            let w = log.begin(
                7,
                kind,
                req("client.z", tid),
                format!("o{tid}").as_bytes(),
                k(format!("o{tid}").as_bytes()),
            );
            stored.push((version_key(w.version).to_vec(), w.value.into_vec()));
            log.commit(req("client.z", tid));
        }
        stored.push((vec![1, 2, 3], vec![]));
        let (loaded, errors) = PgLog::load(stored, k);
        assert_eq!(errors, vec![LogDecodeError::Key(3)]);
        assert_eq!(loaded.head(), v(7, 5));
        assert_eq!(loaded.len(), 5);
        let d = loaded
            .duplicate(&req("client.z", 3), OpKind::Remove, k(b"o3"), DupScope::All)
            .expect("loaded with its object and kind");
        assert_eq!(d.version, v(7, 3));
    }

    #[test]
    fn a_replicated_pg_trusts_only_entries_acknowledged_in_its_interval() {
        let mut log = PgLog::default();
        let w = OpKind::WriteFull;
        // Acknowledged at epoch 7, in an interval that began at 5.
        log.begin(7, w, req("c", 1), b"o", k(b"o"));
        log.commit(req("c", 1));
        assert!(log
            .duplicate(&req("c", 1), w, k(b"o"), DupScope::Interval(5))
            .is_some());
        // The next interval (from 9) cannot tell whether every member has it: applied again.
        assert_eq!(
            log.duplicate(&req("c", 1), w, k(b"o"), DupScope::Interval(9)),
            None
        );
        // One copy trusts it whatever the interval.
        assert!(log
            .duplicate(&req("c", 1), w, k(b"o"), DupScope::All)
            .is_some());
        // Committed here but not acknowledged (a replica failed): never a duplicate.
        log.begin(7, w, req("c", 2), b"o", k(b"o"));
        log.commit_unacknowledged(req("c", 2));
        assert_eq!(log.duplicate(&req("c", 2), w, k(b"o"), DupScope::All), None);
        // Reloaded from the store: trusted by one copy only.
        let stored: Vec<_> = [1u64, 2]
            .iter()
            .map(|&t| {
                let e = LogEntry {
                    version: v(7, t),
                    kind: w,
                    req: req("c", t),
                    object: b"o".to_vec(),
                };
                (version_key(e.version).to_vec(), e.encode_value().into_vec())
            })
            .collect();
        let (loaded, errors) = PgLog::load(stored, k);
        assert!(errors.is_empty());
        assert!(loaded
            .duplicate(&req("c", 2), w, k(b"o"), DupScope::All)
            .is_some());
        assert_eq!(
            loaded.duplicate(&req("c", 2), w, k(b"o"), DupScope::Interval(5)),
            None
        );
    }

    #[test]
    fn a_resent_version_is_a_duplicate_only_for_its_own_request() {
        let mut log = PgLog::default();
        let wv = log
            .begin_at(v(7, 41), OpKind::Write, req("c", 1), b"o", k(b"o"))
            .version;
        log.commit(req("c", 1));
        assert!(log.has_committed(wv, &req("c", 1)));
        // A primary that handed (7, 41) out again for another write: no duplicate.
        assert!(!log.has_committed(wv, &req("c", 2)));
        assert!(!log.has_committed(v(7, 40), &req("c", 1)));
    }

    #[test]
    fn versions_take_the_primarys_map_epoch() {
        let mut log = PgLog::default();
        // A member led at epoch 11 up to seq 50; this primary's interval began at 5, but its
        // map is at 12: its next version is above what the member holds.
        log.begin_at(v(11, 50), OpKind::Write, req("c", 1), b"o", k(b"o"));
        log.commit(req("c", 1));
        let mut lagging = PgLog::default();
        lagging.begin_at(v(5, 40), OpKind::Write, req("c", 0), b"o", k(b"o"));
        let w = lagging.begin(12, OpKind::Write, req("c", 2), b"o", k(b"o"));
        assert!(w.version > log.head(), "{:?}", w.version);
    }

    proptest! {
        #[test]
        fn entries_roundtrip_and_garbage_never_panics(
            client in "[a-z.]{1,40}",
            tid in any::<u64>(),
            object in proptest::collection::vec(any::<u8>(), 0..300),
            epoch in any::<u64>(),
            seq in any::<u64>(),
            kind in prop_oneof![Just(OpKind::Write), Just(OpKind::WriteFull), Just(OpKind::Remove)],
            garbage in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let e = LogEntry {
                version: v(epoch, seq),
                kind,
                req: req(&client, tid),
                object,
            };
            let got = LogEntry::decode(&version_key(e.version), &e.encode_value()).unwrap();
            prop_assert_eq!(got, e);
            let _ = LogEntry::decode(&[0; 16], &garbage);
        }
    }
}
