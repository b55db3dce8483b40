//! Placement groups as their owning shard holds them.
//!
//! A PG is served by exactly one shard of each OSD of its acting set (`pg_to_shard`): that
//! shard owns its [`Pg`] — acting set, interval, role (primary or replica), per-object
//! ordering, log — and only that shard's poll loop touches it, so none of this state is shared
//! or locked. The primary's shard executes client ops and sends each mutation to the other
//! members; a replica's shard applies what the primary sends. The [`PgTable`] of a shard holds
//! its PGs, and which PG collections its store partition already has.
//!
//! ## Intervals
//! An interval is a run of map epochs over which a PG's acting set does not change, nor any of
//! its members restart (each member's `up_from`, the epoch of its latest boot, is part of it:
//! Ceph's rule). The table keeps, per PG, the epoch its current interval started
//! (`interval_since`): a map whose acting set and boots for the PG equal the previous ones
//! keeps the interval, any change starts a new one at the map's epoch. Replication fences on this number (replica ops of an older interval
//! are refused).
//!
//! ## Fencing replica ops
//! Members do not agree on the epoch an interval began at: an OSD that (re)joined, or skipped
//! maps, starts its interval at the first map it saw. So a replica does not compare interval
//! numbers; it checks what each side has seen (Ceph's rule, `same_interval_since` against the
//! op's map epoch): an op sent under a map older than the one that began the replica's
//! interval is from an interval that has ended (a primary that was paused or partitioned while
//! the map moved on) and is refused as stale; an op whose interval began after the replica's
//! map waits for the replica to catch up (refused, retried by the client); otherwise both have
//! seen a map of the same interval, whose acting set must name the sender as primary.
//!
//! ## Per-object ordering
//! Mutations of one object are submitted to the store in arrival order, and the store commits
//! in submission order. A read or stat of an object with a mutation in flight waits ("parked"
//! in its PG) until that mutation has completed, so a client never reads around an acknowledged
//! write. Objects are tracked by a 64-bit hash of their name seeded with the PG's collection id:
//! a collision only serialises two objects.
//!
//! ## Invariants
//! - A PG stays in the table while it has mutations in flight or parked ops, even after a map
//!   moved it away (its ops were valid when routed and are answered); an idle PG this shard no
//!   longer serves is dropped at the next map.
//! - `parked` only holds reads and stats of objects with a mutation in flight in the same PG;
//!   every completion of a mutation of the PG gives its parked ops another try.

use std::collections::hash_map::Entry;
use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt, HashSet};

use carmine_objectstore::{CollectionId, ObjectStore};
use carmine_placement::{pg_to_osds, ClusterMap};
use carmine_wire::{Epoch, RepError};

use crate::messenger::Inbound;
use crate::ops::Target;
use crate::pglog::{log_object, PgLog};
use crate::recovery::PgRecovery;

/// A PG's identity: pool and PG number (pool ids are 32-bit in the map).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PgKey {
    pub pool: u32,
    pub pg: u32,
}

impl PgKey {
    /// The PG an op addresses; `None` for a pool id the map can never hold.
    pub fn of(t: &Target) -> Option<PgKey> {
        u32::try_from(t.pool)
            .ok()
            .map(|pool| PgKey { pool, pg: t.pg })
    }

    /// The store collection of this PG: pool in the high 32 bits, PG in the low ones.
    pub fn cid(self) -> CollectionId {
        CollectionId((u64::from(self.pool) << 32) | u64::from(self.pg))
    }

    /// The key of an object of this PG, for ordering and the log's duplicate table: a 64-bit
    /// hash of its name seeded with the collection id (a collision only serialises two
    /// objects, or makes a reused tid on another object look like a retry of it).
    pub fn object_key(self, object: &[u8]) -> u64 {
        xxhash_rust::xxh64::xxh64(object, self.cid().0)
    }

    /// The PG's meta collection (its log): the data collection's id with [`META_BIT`] set.
    pub fn meta_cid(self) -> CollectionId {
        CollectionId(self.cid().0 | META_BIT)
    }

    /// The PG a collection belongs to, and whether it is the PG's meta collection (the
    /// inverse of [`PgKey::cid`] and [`PgKey::meta_cid`]).
    pub fn split_cid(cid: CollectionId) -> (PgKey, bool) {
        let key = PgKey {
            pool: (cid.0 >> 32) as u32,
            pg: (cid.0 & !META_BIT) as u32,
        };
        (key, cid.0 & META_BIT != 0)
    }
}

/// Which collections of a PG a transaction creates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Creates {
    pub data: bool,
    pub meta: bool,
}

/// Marks a PG's meta collection. PG numbers stay below 2^16 (the map's `pg_num` limit), so
/// the bit is never part of a data collection id.
pub const META_BIT: u64 = 1 << 31;

/// Where a PG this shard leads stands in its interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving I/O (replicas, and the PGs this shard leads once peered).
    Active,
    /// A PG this shard leads in a new interval, not yet peered: no client I/O. PGs of one
    /// copy peer too: the OSD that held the only copy in an earlier interval may be down,
    /// and serving the PG empty would answer "not found" for data that was acknowledged.
    Peering,
}

/// A PG this shard leads whose interval began (a replicated one peers it), or one it stopped
/// leading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntervalChange {
    Began {
        key: PgKey,
        since: u64,
        acting: Vec<u32>,
        boots: Vec<u64>,
        size: u32,
        min_size: u32,
    },
    Left(PgKey),
}

/// One PG on its owning shard.
#[derive(Debug)]
pub struct Pg {
    key: PgKey,
    /// Acting set of the current map, primary first; empty for a PG held only because it
    /// still has ops in flight after a map moved it away.
    acting: Vec<u32>,
    /// The boot epoch (`up_from`) of each acting member: part of what makes the interval.
    boots: Vec<u64>,
    /// Whether this OSD is the primary (`acting[0]`) in the current map.
    primary: bool,
    /// The pool's replication factor and minimum.
    size: u32,
    min_size: u32,
    /// Map epoch at which the current acting set took over.
    interval_since: u64,
    /// Whether this shard serves the PG in the current map.
    served: bool,
    /// Mutations in flight per object key.
    inflight: HashMap<u64, u32>,
    /// Reads and stats waiting behind a mutation of their object, and retries waiting for
    /// their first attempt to commit.
    parked: VecDeque<Inbound>,
    /// Versions, the log and its duplicate table.
    pub log: PgLog,
    /// Peering state of a replicated PG this shard leads (always `Active` otherwise).
    phase: Phase,
    /// What the other members still miss, while the primary recovers them.
    pub recovery: Option<PgRecovery>,
}

impl Pg {
    /// A PG entry, with its log as the store holds it.
    fn new(key: PgKey, store: &dyn ObjectStore) -> Pg {
        let stored = match store.omap_range(key.meta_cid(), &log_object(), None, usize::MAX) {
            Ok(entries) => entries,
            // No meta collection yet: the PG has never been written (or predates the log).
            Err(carmine_objectstore::StoreError::NotFound(_)) => Vec::new(),
            Err(e) => {
                tracing::error!(pg = ?key, error = %e, "cannot read the PG log: starting empty");
                Vec::new()
            }
        };
        let (log, errors) = PgLog::load(stored, |o| key.object_key(o));
        for e in errors {
            tracing::error!(pg = ?key, error = %e, "PG log entry skipped");
        }
        Pg {
            key,
            acting: Vec::new(),
            boots: Vec::new(),
            primary: false,
            size: 1,
            min_size: 1,
            interval_since: 0,
            served: false,
            inflight: HashMap::new(),
            parked: VecDeque::new(),
            log,
            phase: Phase::Active,
            recovery: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Peering is done: the PG serves I/O in its interval.
    pub fn activate(&mut self, recovery: Option<PgRecovery>) {
        self.phase = Phase::Active;
        self.recovery = recovery;
    }

    /// Whether this is the interval (acting set and members' boot epochs) another member
    /// describes: members number an interval by the first map each saw of it, so the
    /// numbers may differ, the identity does not.
    pub fn same_interval(&self, acting: &[u32], boots: &[u64]) -> bool {
        self.served && self.acting == acting && self.boots == boots
    }

    /// The acting set, primary first (empty: not served in the current map).
    pub fn acting(&self) -> &[u32] {
        &self.acting
    }

    /// Whether this shard serves the PG in the current map, and as its primary.
    pub fn is_primary(&self) -> bool {
        self.served && self.primary
    }

    /// Whether the PG's pool keeps more than one copy.
    pub fn replicated(&self) -> bool {
        self.size > 1
    }

    /// Whether this shard serves the PG in the current map (as primary or replica).
    pub fn served(&self) -> bool {
        self.served
    }

    /// Whether the PG may serve I/O in this map: this shard serves it and its acting set has
    /// at least `min_size` members. (A PG held only for its ops in flight counts as active:
    /// those ops were routed while it was.)
    pub fn active(&self) -> bool {
        !self.served || (self.acting.len() >= self.min_size as usize && self.phase == Phase::Active)
    }

    /// The epoch at which the current interval began (0: a PG held only for its ops in
    /// flight).
    pub fn interval_since(&self) -> u64 {
        self.interval_since
    }

    /// Whether this (replica) PG takes a replica op from OSD `from`, sent under map epoch
    /// `op_epoch` in the interval the primary saw begin at `op_since`; `my_epoch` is this
    /// shard's map epoch. See the module docs.
    pub fn admit_replica_op(
        &self,
        my_epoch: u64,
        from: u32,
        op_epoch: u64,
        op_since: u64,
    ) -> Result<(), RepError> {
        if op_epoch < self.interval_since {
            return Err(RepError::StaleInterval {
                replica_epoch: Epoch(my_epoch),
                interval_since: Epoch(self.interval_since),
            });
        }
        if my_epoch < op_since || self.acting.first() != Some(&from) {
            return Err(RepError::NotMember);
        }
        Ok(())
    }

    /// The ordering key of an object of this PG.
    pub fn object_key(&self, object: &[u8]) -> u64 {
        self.key.object_key(object)
    }

    /// Whether a mutation of the object with `key` is in flight.
    pub fn writing(&self, key: u64) -> bool {
        self.inflight.contains_key(&key)
    }

    /// A mutation of `key` goes to the store.
    pub fn begin_mutation(&mut self, key: u64) {
        *self.inflight.entry(key).or_insert(0) += 1;
    }

    /// A mutation of `key` completed; true when it was the object's last one in flight.
    pub fn end_mutation(&mut self, key: u64) -> bool {
        match self.inflight.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.inflight.remove(&key);
                true
            }
            None => false,
        }
    }

    /// Parks a read or stat until the mutation it waits for has completed.
    pub fn park(&mut self, p: Inbound) {
        self.parked.push_back(p);
    }

    /// Takes every parked op, to be tried again (those still blocked park themselves again).
    pub fn take_parked(&mut self, into: &mut Vec<Inbound>) {
        into.extend(self.parked.drain(..));
    }

    fn idle(&self) -> bool {
        self.inflight.is_empty() && self.parked.is_empty()
    }

    /// Whether no mutation of the PG is in flight (a peering listing waits for that).
    pub fn quiet(&self) -> bool {
        self.inflight.is_empty()
    }
}

/// A shard's PGs, and which PG collections its store partition holds.
#[derive(Debug, Default)]
pub struct PgTable {
    pgs: HashMap<PgKey, Pg>,
    /// PGs whose data collection exists in the store (created by a PG's first write).
    on_store: HashSet<PgKey>,
    /// PGs whose meta collection (the log) exists in the store. A store written before the PG
    /// log existed has data collections without one: the next write creates it.
    meta_on_store: HashSet<PgKey>,
    epoch: u64,
}

impl PgTable {
    /// A table for a store that holds `collections`.
    pub fn new(collections: impl IntoIterator<Item = CollectionId>) -> PgTable {
        let mut t = PgTable::default();
        for cid in collections {
            let (key, meta) = PgKey::split_cid(cid);
            if meta {
                t.meta_on_store.insert(key);
            } else {
                t.on_store.insert(key);
            }
        }
        t
    }

    /// Takes in a new map: `serves(key)` says which PGs this shard serves in it (from the
    /// routing table), `me` is this OSD's id. Their acting sets, roles and intervals are
    /// updated; PGs that left are dropped once idle. Returns how many PGs started a new
    /// interval.
    pub fn apply_map(
        &mut self,
        map: &ClusterMap,
        me: Option<u32>,
        serves: impl Fn(PgKey) -> bool,
        store: &dyn ObjectStore,
        changes: &mut Vec<IntervalChange>,
    ) -> usize {
        if map.epoch <= self.epoch {
            return 0;
        }
        self.epoch = map.epoch;
        let led_before: Vec<PgKey> = self
            .pgs
            .values()
            .filter(|p| p.is_primary())
            .map(|p| p.key)
            .collect();
        for pg in self.pgs.values_mut() {
            pg.served = false;
        }
        let mut new_intervals = 0;
        for pool in map.pools.values() {
            for n in 0..pool.pg_num {
                let key = PgKey {
                    pool: pool.id,
                    pg: n,
                };
                if !serves(key) {
                    continue;
                }
                let acting = pg_to_osds(map, pool, n);
                let boots: Vec<u64> = acting
                    .iter()
                    .map(|o| map.osds.get(o).map_or(0, |o| o.up_from))
                    .collect();
                let pg = self.pgs.entry(key).or_insert_with(|| Pg::new(key, store));
                // A member that booted again is a new member (it may have lost its data): the
                // interval changes as if the acting set had.
                let began = pg.acting != acting || pg.boots != boots || pg.interval_since == 0;
                if began {
                    pg.acting = acting;
                    pg.boots = boots;
                    pg.interval_since = map.epoch;
                    new_intervals += 1;
                }
                pg.primary = me.is_some() && pg.acting.first().copied() == me;
                pg.size = pool.size;
                pg.min_size = pool.min_size;
                pg.served = true;
                if began {
                    // A new interval: whatever was being recovered belongs to the old one.
                    pg.recovery = None;
                    pg.phase = Phase::Active;
                    if pg.primary {
                        pg.phase = Phase::Peering;
                        changes.push(IntervalChange::Began {
                            key,
                            since: pg.interval_since,
                            acting: pg.acting.clone(),
                            boots: pg.boots.clone(),
                            size: pg.size,
                            min_size: pg.min_size,
                        });
                    }
                }
            }
        }
        for key in led_before {
            if !self.pgs.get(&key).is_some_and(|p| p.is_primary()) {
                if let Some(pg) = self.pgs.get_mut(&key) {
                    pg.recovery = None;
                    pg.phase = Phase::Active;
                }
                changes.push(IntervalChange::Left(key));
            }
        }
        self.pgs.retain(|_, pg| {
            if !pg.served {
                // Held only for its ops in flight: it has no acting set in this map.
                pg.acting.clear();
                pg.primary = false;
                pg.interval_since = 0;
            }
            pg.served || !pg.idle()
        });
        new_intervals
    }

    /// The PG, kept in the table for as long as it has work. An op forwarded across a map
    /// change may address a PG this shard no longer (or not yet) serves: it gets an entry for
    /// its ordering, dropped again at the next map once idle.
    #[cfg(test)]
    pub fn pg_mut(&mut self, key: PgKey, store: &dyn ObjectStore) -> &mut Pg {
        self.pgs.entry(key).or_insert_with(|| Pg::new(key, store))
    }

    pub fn get_mut(&mut self, key: PgKey) -> Option<&mut Pg> {
        self.pgs.get_mut(&key)
    }

    pub fn get(&self, key: PgKey) -> Option<&Pg> {
        self.pgs.get(&key)
    }

    /// The PGs this shard leads in the current map, with their acting sets.
    pub fn primaries(&self) -> impl Iterator<Item = (PgKey, &[u32])> {
        self.pgs
            .values()
            .filter(|p| p.is_primary())
            .map(|p| (p.key, p.acting.as_slice()))
    }

    /// PGs this shard serves in the current map.
    pub fn served(&self) -> usize {
        self.pgs.values().filter(|p| p.served).count()
    }

    /// Whether the store holds the PG's collection.
    pub fn on_store(&self, key: PgKey) -> bool {
        self.on_store.contains(&key)
    }

    /// Records that a transaction creates the PG's collections: which of (data, meta) it must
    /// create, those the store does not have yet.
    pub fn create_on_store(&mut self, key: PgKey) -> Creates {
        Creates {
            data: self.on_store.insert(key),
            meta: self.meta_on_store.insert(key),
        }
    }

    /// A transaction that created collections failed: they do not exist after all.
    pub fn creation_failed(&mut self, key: PgKey, c: Creates) {
        if c.data {
            self.on_store.remove(&key);
        }
        if c.meta {
            self.meta_on_store.remove(&key);
        }
    }

    /// Drops a PG whose map moved it away, once it has become idle.
    pub fn forget_if_done(&mut self, key: PgKey) {
        if let Entry::Occupied(e) = self.pgs.entry(key) {
            if !e.get().served && e.get().idle() {
                e.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carmine_memstore::MemStore;
    use carmine_placement::{Osd, Pool};

    fn osd(id: u32, up: bool) -> Osd {
        Osd {
            id,
            uuid: format!("u{id}"),
            host: format!("h{id}"),
            public_addr: "127.0.0.1".into(),
            cluster_addr: "127.0.0.1".into(),
            shard_count: 1,
            shard_ports: vec![1],
            up,
            in_: true,
            weight: 1.0,
            up_from: 0,
        }
    }

    fn map(epoch: u64, up: &[bool], size: u32) -> ClusterMap {
        map_min(epoch, up, size, 1)
    }

    fn map_min(epoch: u64, up: &[bool], size: u32, min_size: u32) -> ClusterMap {
        let mut m = ClusterMap {
            epoch,
            ..Default::default()
        };
        for (i, &u) in up.iter().enumerate() {
            m.osds.insert(i as u32, osd(i as u32, u));
        }
        m.pools.insert(
            1,
            Pool {
                id: 1,
                name: "p".into(),
                size,
                min_size,
                pg_num: 8,
            },
        );
        m
    }

    #[test]
    fn pg_keys_and_collections_map_both_ways() {
        let k = PgKey { pool: 3, pg: 7 };
        assert_eq!(k.cid(), CollectionId((3 << 32) | 7));
        assert_eq!(PgKey::split_cid(k.cid()), (k, false));
        assert_eq!(k.meta_cid(), CollectionId((3 << 32) | (1 << 31) | 7));
        assert_eq!(PgKey::split_cid(k.meta_cid()), (k, true));
        let t = Target {
            pool: 3,
            pg: 7,
            epoch: 1,
        };
        assert_eq!(PgKey::of(&t), Some(k));
        let big = Target {
            pool: u64::from(u32::MAX) + 1,
            ..t
        };
        assert_eq!(PgKey::of(&big), None);
    }

    #[test]
    fn an_interval_lasts_while_the_acting_set_does() {
        let st = MemStore::new();
        let mut t = PgTable::new([]);
        let all = |_: PgKey| true;
        assert_eq!(
            t.apply_map(
                &map(5, &[true, true, true], 2),
                Some(0),
                all,
                &st,
                &mut Vec::new()
            ),
            8
        );
        let k = PgKey { pool: 1, pg: 0 };
        let first = t.get(k).unwrap().acting().to_vec();
        assert_eq!(first.len(), 2);
        assert_eq!(t.get(k).unwrap().interval_since(), 5);
        // Same acting sets: every interval goes on.
        assert_eq!(
            t.apply_map(
                &map(6, &[true, true, true], 2),
                Some(0),
                all,
                &st,
                &mut Vec::new()
            ),
            0
        );
        assert_eq!(t.get(k).unwrap().interval_since(), 5);
        // An older or equal map changes nothing.
        assert_eq!(
            t.apply_map(
                &map(6, &[false, false, false], 2),
                Some(0),
                all,
                &st,
                &mut Vec::new()
            ),
            0
        );
        // One of PG 0's OSDs goes down: its interval starts again, at the new epoch.
        let mut up = [true; 3];
        up[first[1] as usize] = false;
        let changed = t.apply_map(&map(9, &up, 2), Some(0), all, &st, &mut Vec::new());
        assert!(changed >= 1);
        let pg = t.get(k).unwrap();
        assert_eq!(pg.interval_since(), 9);
        assert!(!pg.acting().contains(&first[1]));
        assert_eq!(t.served(), 8);
        // A member restarts (same id, same acting set, a new boot epoch): a new interval.
        let member = t.get(k).unwrap().acting()[0];
        let mut m = map(10, &up, 2);
        m.osds.get_mut(&member).unwrap().up_from = 10;
        t.apply_map(&m, Some(0), all, &st, &mut Vec::new());
        assert_eq!(t.get(k).unwrap().interval_since(), 10);
        let mut m = map(11, &up, 2);
        m.osds.get_mut(&member).unwrap().up_from = 10;
        t.apply_map(&m, Some(0), all, &st, &mut Vec::new());
        assert_eq!(
            t.get(k).unwrap().interval_since(),
            10,
            "same boot: same interval"
        );
    }

    #[test]
    fn a_pg_that_left_stays_while_it_has_work() {
        let st = MemStore::new();
        let mut t = PgTable::new([]);
        t.apply_map(&map(1, &[true], 1), Some(0), |_| true, &st, &mut Vec::new());
        let k = PgKey { pool: 1, pg: 2 };
        let key = t.get(k).unwrap().object_key(b"obj");
        t.pg_mut(k, &st).begin_mutation(key);
        t.pg_mut(k, &st).begin_mutation(key);
        // The next map gives this shard no PG at all.
        t.apply_map(
            &map(2, &[true], 1),
            Some(0),
            |_| false,
            &st,
            &mut Vec::new(),
        );
        assert_eq!(t.served(), 0);
        let pg = t.get_mut(k).expect("kept for its mutations in flight");
        assert!(pg.acting().is_empty());
        assert!(pg.writing(key));
        assert!(!pg.end_mutation(key), "one more in flight");
        assert!(pg.end_mutation(key), "the last one");
        assert!(!pg.writing(key));
        t.forget_if_done(k);
        assert!(t.get(k).is_none());
        // Idle PGs that left are dropped at the map itself.
        t.apply_map(&map(3, &[true], 1), Some(0), |_| true, &st, &mut Vec::new());
        t.apply_map(
            &map(4, &[true], 1),
            Some(0),
            |_| false,
            &st,
            &mut Vec::new(),
        );
        assert!(t.get(PgKey { pool: 1, pg: 5 }).is_none());
    }

    #[test]
    fn a_pg_below_min_size_is_not_active() {
        let st = MemStore::new();
        let mut t = PgTable::new([]);
        let k = PgKey { pool: 1, pg: 4 };
        let apply = |t: &mut PgTable, m: &ClusterMap, serves: bool| {
            t.apply_map(m, Some(0), |_| serves, &st, &mut Vec::new());
            // Peering is done (what the agent's activation does).
            if let Some(pg) = t.get_mut(k) {
                pg.activate(None);
            }
        };
        apply(&mut t, &map_min(1, &[true, true], 2, 2), true);
        assert!(t.get(k).unwrap().active());
        // One of two OSDs down: one acting member, min_size 2.
        apply(&mut t, &map_min(2, &[true, false], 2, 2), true);
        let pg = t.get(k).unwrap();
        assert_eq!(pg.acting(), &[0]);
        assert!(!pg.active());
        // min_size 1 makes the same acting set enough.
        apply(&mut t, &map_min(3, &[true, false], 2, 1), true);
        assert!(t.get(k).unwrap().active());
        // A PG held only for its ops in flight stays active for them.
        t.get_mut(k).unwrap().begin_mutation(1);
        apply(&mut t, &map_min(4, &[true, false], 2, 2), false);
        assert!(t.get(k).unwrap().active());
    }

    #[test]
    fn a_replicated_pg_its_primary_leads_peers_in_every_new_interval() {
        let st = MemStore::new();
        let mut t = PgTable::new([]);
        let mut changes = Vec::new();
        t.apply_map(
            &map(3, &[true, true, true], 2),
            Some(0),
            |_| true,
            &st,
            &mut changes,
        );
        let led: Vec<PgKey> = t.primaries().map(|(k, _)| k).collect();
        assert!(!led.is_empty());
        // Every PG it leads began an interval and waits for peering; none it replicates does.
        assert_eq!(changes.len(), led.len());
        for c in &changes {
            let IntervalChange::Began {
                key,
                since,
                acting,
                size,
                ..
            } = c
            else {
                panic!("{c:?}");
            };
            assert!(led.contains(key));
            assert_eq!((*since, *size, acting[0]), (3, 2, 0));
            let pg = t.get(*key).unwrap();
            assert_eq!(pg.phase(), Phase::Peering);
            assert!(!pg.active());
        }
        let k = led[0];
        t.get_mut(k).unwrap().activate(None);
        assert!(t.get(k).unwrap().active());
        // Same acting sets: no new interval, the PG stays active.
        changes.clear();
        t.apply_map(
            &map(4, &[true, true, true], 2),
            Some(0),
            |_| true,
            &st,
            &mut changes,
        );
        assert!(changes.is_empty());
        assert!(t.get(k).unwrap().active());
        // osd.0 goes down in the map: it leads nothing, and says so for each PG it led.
        t.apply_map(
            &map(5, &[false, true, true], 2),
            Some(0),
            |_| true,
            &st,
            &mut changes,
        );
        let left: Vec<PgKey> = changes
            .iter()
            .filter_map(|c| match c {
                IntervalChange::Left(k) => Some(*k),
                _ => None,
            })
            .collect();
        assert_eq!(left.len(), led.len(), "{changes:?}");
        // A pool of one copy peers too: no I/O until the agent activates it (the OSD of an
        // earlier interval, the only one with the data, may be down).
        let mut single = PgTable::new([]);
        changes.clear();
        single.apply_map(&map(3, &[true], 1), Some(0), |_| true, &st, &mut changes);
        assert_eq!(changes.len(), 8);
        assert!(!single.get(k).unwrap().active());
    }

    #[test]
    fn a_replica_admits_ops_by_what_each_side_has_seen() {
        let st = MemStore::new();
        let mut t = PgTable::new([]);
        // osd.1's view: its interval for PG 0 began at epoch 7 (the first map it saw).
        t.apply_map(
            &map(7, &[true, true, true], 3),
            Some(1),
            |_| true,
            &st,
            &mut Vec::new(),
        );
        let pg = t.get(PgKey { pool: 1, pg: 0 }).unwrap();
        let primary = pg.acting()[0];
        let other = *pg.acting().iter().find(|&&o| o != primary).unwrap();
        let stale = Err(RepError::StaleInterval {
            replica_epoch: Epoch(9),
            interval_since: Epoch(7),
        });
        // (my epoch, from, op epoch, op since) -> verdict
        let cases = [
            // The primary saw the interval begin earlier (it was there before us): same acting.
            ((9, primary, 9, 3), Ok(())),
            ((9, primary, 7, 7), Ok(())),
            // Sent under a map older than the one that began our interval: fenced.
            ((9, primary, 6, 3), stale),
            // Its interval began after our map: we are behind, the client retries.
            ((9, primary, 12, 10), Err(RepError::NotMember)),
            // Not the primary.
            ((9, other, 9, 7), Err(RepError::NotMember)),
        ];
        for ((mine, from, ep, since), want) in cases {
            assert_eq!(
                pg.admit_replica_op(mine, from, ep, since),
                want,
                "{:?}",
                (mine, from, ep, since)
            );
        }
    }

    #[test]
    fn collections_on_store_are_tracked_per_pg() {
        let k = PgKey { pool: 2, pg: 1 };
        let mut t = PgTable::new([k.cid(), k.meta_cid()]);
        assert!(t.on_store(k));
        assert_eq!(t.on_store.len(), 1, "a meta collection is no PG of its own");
        assert_eq!(t.create_on_store(k), Creates::default(), "both exist");
        // A PG written before the log existed has only its data collection.
        let old = PgKey { pool: 2, pg: 2 };
        let mut t = PgTable::new([k.cid(), k.meta_cid(), old.cid()]);
        assert_eq!(
            t.create_on_store(old),
            Creates {
                data: false,
                meta: true
            }
        );
        let n = PgKey { pool: 2, pg: 3 };
        let both = Creates {
            data: true,
            meta: true,
        };
        assert_eq!(t.create_on_store(n), both);
        t.creation_failed(n, both);
        assert!(!t.on_store(n));
        assert_eq!(
            t.create_on_store(n),
            both,
            "created again after the failure"
        );
    }
}
