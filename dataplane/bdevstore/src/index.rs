//! The in-memory index (collections, onodes, extent maps) and the logical operations journal
//! records carry. The same `apply` runs when a record is built and when it is replayed, so
//! replay reproduces the running state exactly (onode ids included).

use std::collections::{BTreeMap, HashSet};

use carmine_objectstore::omap::Omap;
use carmine_objectstore::{AttrValue, CollectionId, ObjectId, OmapKey, OmapSetEntries, StoreView};
use serde::{Deserialize, Serialize};

use crate::format::{blocks_for, Geometry};

/// A checksummed run of bytes stored contiguously in the log (block aligned).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Partition-relative block.
    pub lba: u64,
    /// Bytes stored (the CRC covers exactly these).
    pub len: u32,
    pub crc: u32,
}

/// A piece of an object's data: `len` bytes of `chunk` starting at `skip`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub len: u64,
    pub skip: u32,
    pub chunk: ChunkRef,
}

/// Object metadata; all of it is memory resident.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Onode {
    pub size: u64,
    pub attrs: BTreeMap<String, AttrValue>,
    /// A sorted deque while small (the PG log's append and trim are O(1)); serialized as the
    /// ordered map it replaced (same bytes).
    pub omap: Omap,
    /// Logical offset -> extent; extents never overlap.
    pub extents: BTreeMap<u64, Extent>,
}

/// A logical operation as journaled: like `Op`, with data replaced by where it was stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LOp {
    CreateColl(CollectionId),
    RemoveColl(CollectionId),
    Touch(CollectionId, ObjectId),
    /// `chunk.len == 0`: a write of no bytes (only extends the size to `off`).
    Write {
        cid: CollectionId,
        oid: ObjectId,
        off: u64,
        chunk: ChunkRef,
    },
    Zero {
        cid: CollectionId,
        oid: ObjectId,
        off: u64,
        len: u64,
    },
    Truncate {
        cid: CollectionId,
        oid: ObjectId,
        size: u64,
    },
    Remove(CollectionId, ObjectId),
    SetAttr {
        cid: CollectionId,
        oid: ObjectId,
        name: String,
        value: AttrValue,
    },
    RmAttr {
        cid: CollectionId,
        oid: ObjectId,
        name: String,
    },
    OmapSet {
        cid: CollectionId,
        oid: ObjectId,
        entries: OmapSetEntries,
    },
    OmapRm {
        cid: CollectionId,
        oid: ObjectId,
        keys: Vec<OmapKey>,
    },
}

/// The cleaner moved an extent; applies only if the extent is still exactly `old`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reloc {
    pub onode: u64,
    pub off: u64,
    pub old: Extent,
    pub new: ChunkRef,
}

/// One entry of a journal record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Entry {
    /// One transaction (atomic: a record is all or nothing).
    Txn(Vec<LOp>),
    Reloc(Vec<Reloc>),
}

/// Per-segment live bytes and back references (derived; rebuilt on load).
///
/// The back references are *candidates*: adding an extent appends `(onode, offset)` to its
/// segment's list, removing one only decrements a count. Every 4 KiB overwrite changes several
/// extents, so keeping an exact ordered set (two B-tree updates per change) cost more than the
/// rest of the index update; a list with stale entries costs a push. Readers of the list (the
/// cleaner) check each entry against the extent map. An append that leaves a list longer than
/// twice its live count (+64) compacts it (stale and duplicate entries dropped), and a segment
/// that holds no extent has its list emptied: a list never exceeds twice the most extents its
/// segment held (+64).
#[derive(Default, Debug)]
pub struct Accounting {
    seg_area: u64,
    seg_blocks: u64,
    pub live: Vec<u64>,
    /// Blocks the segment's extents would take if the cleaner relocated them (each extent
    /// becomes its own chunk, rounded up to whole blocks): the cleaner's cost, where `live`
    /// (bytes) understates it for small or fragmented extents.
    pub blocks: Vec<u64>,
    /// Sum of `blocks` (O(1) to read: the store measures the garbage a record's transactions
    /// made from its change).
    pub total_blocks: u64,
    /// Candidate (onode, logical offset) of every extent in the segment (a superset, may hold
    /// duplicates): the cleaner's work list.
    pub refs: Vec<Vec<(u64, u64)>>,
    /// Extents really in the segment.
    nrefs: Vec<u32>,
    /// Segments whose candidate list outgrew its live count (compacted after the op).
    compact: Vec<u32>,
    /// Bumped whenever a list is compacted or emptied (positions in it change), so a reader
    /// can keep a cursor into a list between steps.
    gen: Vec<u32>,
    /// Segments with no live bytes (kept incrementally so polls never scan all segments).
    pub empty: usize,
}

impl Accounting {
    fn seg(&self, lba: u64) -> Option<usize> {
        let s = (lba.checked_sub(self.seg_area)? / self.seg_blocks.max(1)) as usize;
        (s < self.live.len()).then_some(s)
    }
    fn add(&mut self, id: u64, off: u64, e: &Extent) {
        if let Some(s) = self.seg(e.chunk.lba) {
            if self.live[s] == 0 && e.len > 0 {
                self.empty -= 1;
            }
            self.live[s] += e.len;
            self.blocks[s] += blocks_for(e.len);
            self.total_blocks += blocks_for(e.len);
            self.nrefs[s] += 1;
            let r = &mut self.refs[s];
            r.push((id, off));
            if r.len() >= 2 * self.nrefs[s] as usize + 64 {
                self.compact.push(s as u32);
            }
        }
    }
    fn sub(&mut self, e: &Extent) {
        if let Some(s) = self.seg(e.chunk.lba) {
            let before = self.live[s];
            self.live[s] = before.saturating_sub(e.len);
            let b = self.blocks[s].min(blocks_for(e.len));
            self.blocks[s] -= b;
            self.total_blocks -= b;
            if before > 0 && self.live[s] == 0 {
                self.empty += 1;
            }
            self.nrefs[s] = self.nrefs[s].saturating_sub(1);
            // No compaction here: removals do not grow the list, and compacting as the live
            // count falls cost a tree lookup per entry for every few removals.
            if self.nrefs[s] == 0 {
                self.refs[s].clear();
                self.gen[s] = self.gen[s].wrapping_add(1);
            }
        }
    }
    /// Extents really in segment `s` (its relocation record carries one `Reloc` each).
    pub fn extents(&self, s: usize) -> u32 {
        self.nrefs.get(s).copied().unwrap_or(0)
    }
    /// Is extent `e` (at `id`, `off`) in segment `s`?
    fn holds(&self, s: usize, e: &Extent) -> bool {
        self.seg(e.chunk.lba) == Some(s)
    }
}

/// Candidates [`Index::segment_extents_from`] examines per call (~60 ns each: two tree
/// lookups).
pub const MAX_SCAN: usize = 512;

/// Where the cleaner stopped in a segment's candidate list (see
/// [`Index::segment_extents_from`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefCursor {
    seg: usize,
    gen: u32,
    pos: usize,
}

/// Collection -> object name -> onode id, hashed.
pub type NameIndex = foldhash::HashMap<CollectionId, foldhash::HashMap<ObjectId, u64>>;

/// The whole metadata of one partition; serialized as the checkpoint body.
///
/// Invariant: `names` holds exactly the (collection, name, id) triples of `colls`.
#[derive(Default, Debug, Serialize, Deserialize)]
pub struct Index {
    /// The ordered truth: listings walk it and checkpoints serialize it.
    pub colls: BTreeMap<CollectionId, BTreeMap<ObjectId, u64>>,
    pub onodes: BTreeMap<u64, Onode>,
    pub next_onode: u64,
    /// `colls` again, hashed, for the point lookups every op makes: OSD object names share
    /// long prefixes, so each level of the ordered tree is a `memcmp` (11% of an OSD write's
    /// time went to those descents). Costs a second copy of every name in memory. Not in
    /// checkpoints: rebuilt at mount ([`Index::rebuild_derived`]).
    #[serde(skip)]
    names: NameIndex,
    #[serde(skip)]
    pub acct: Accounting,
}

impl StoreView for Index {
    fn collection_exists(&self, cid: CollectionId) -> bool {
        self.colls.contains_key(&cid)
    }
    fn object_exists(&self, cid: CollectionId, oid: &ObjectId) -> bool {
        self.names.get(&cid).is_some_and(|c| c.contains_key(oid))
    }
    fn collection_len(&self, cid: CollectionId) -> usize {
        self.colls.get(&cid).map_or(0, |c| c.len())
    }
}

fn insert_ext(o: &mut Onode, acct: &mut Accounting, id: u64, off: u64, e: Extent) {
    acct.add(id, off, &e);
    o.extents.insert(off, e);
}

fn remove_ext(o: &mut Onode, acct: &mut Accounting, off: u64) -> Option<Extent> {
    let e = o.extents.remove(&off)?;
    acct.sub(&e);
    Some(e)
}

/// Drop `[off, off+len)` from the extent map, splitting extents that straddle the edges.
fn punch(o: &mut Onode, acct: &mut Accounting, id: u64, off: u64, len: u64) {
    let end = off.saturating_add(len);
    // Extents never overlap, so the last one starting before `end` is the only candidate:
    // if it does not reach past `off`, none before it does. Each round removes one
    // overlapping extent and re-inserts only pieces outside `[off, end)`, so this ends; no
    // key list is collected (this runs for every write).
    while let Some((&k, &e)) = o.extents.range(..end).next_back() {
        if k + e.len <= off {
            break;
        }
        remove_ext(o, acct, k);
        if k < off {
            insert_ext(o, acct, id, k, Extent { len: off - k, ..e });
        }
        if k + e.len > end {
            let cut = end - k;
            let right = Extent {
                len: k + e.len - end,
                skip: e.skip + cut as u32,
                chunk: e.chunk,
            };
            insert_ext(o, acct, id, end, right);
        }
    }
}

impl Index {
    /// Recompute what is derived from the serialized index (after a checkpoint is decoded, or
    /// for a new one): the accounting for this geometry and the hashed names.
    pub fn rebuild_derived(&mut self, geo: &Geometry) {
        self.names = self
            .colls
            .iter()
            .map(|(&cid, objs)| {
                let names = objs.iter().map(|(oid, &id)| (oid.clone(), id)).collect();
                (cid, names)
            })
            .collect();
        self.rebuild_accounting(geo);
    }

    /// True when `names` mirrors `colls` exactly (the invariant).
    #[cfg(test)]
    fn names_consistent(&self) -> bool {
        self.names.len() == self.colls.len()
            && self.colls.iter().all(|(cid, objs)| {
                self.names.get(cid).is_some_and(|n| {
                    n.len() == objs.len() && objs.iter().all(|(oid, id)| n.get(oid) == Some(id))
                })
            })
    }

    /// Recompute the derived accounting for this geometry.
    fn rebuild_accounting(&mut self, geo: &Geometry) {
        let n = geo.nsegs as usize;
        self.acct = Accounting {
            seg_area: geo.seg_area(),
            seg_blocks: geo.seg_blocks,
            live: vec![0; n],
            blocks: vec![0; n],
            total_blocks: 0,
            refs: vec![Vec::new(); n],
            nrefs: vec![0; n],
            compact: Vec::new(),
            gen: vec![0; n],
            empty: n,
        };
        for (&id, o) in &self.onodes {
            for (&off, e) in &o.extents {
                self.acct.add(id, off, e);
            }
        }
        self.compact_refs();
    }

    /// Live extents of segment `s` (candidates checked against the extent maps, duplicates
    /// skipped), in no particular order, adding up to at most `budget` bytes, except that the
    /// first one is always taken.
    pub fn segment_extents(&self, s: usize, budget: u64) -> Vec<(u64, u64, Extent)> {
        let mut cursor = RefCursor::default();
        let mut out = Vec::new();
        // Past the scan bound, keep going (this is the unbounded form, for tests and tools);
        // bounded so a broken invariant cannot loop forever.
        let calls = self.acct.refs.get(s).map_or(0, |r| r.len() / MAX_SCAN + 2);
        for _ in 0..calls {
            out = self.segment_extents_from(s, &mut cursor, budget);
            if !out.is_empty() {
                break;
            }
        }
        out
    }

    /// Like [`Index::segment_extents`], resuming at `cursor` (a position in segment `s`'s
    /// candidate list) and leaving it after the last entry examined. The cleaner relocates
    /// what it takes, so entries before the cursor are dead: resuming there saves rescanning
    /// them on every step. A cursor of another segment or list generation restarts at 0.
    /// At most [`MAX_SCAN`] candidates are examined per call (bounds the cleaner's pause):
    /// an empty result with live data left means "call again".
    pub fn segment_extents_from(
        &self,
        s: usize,
        cursor: &mut RefCursor,
        budget: u64,
    ) -> Vec<(u64, u64, Extent)> {
        let mut out = Vec::new();
        self.segment_extents_into(s, cursor, budget, &mut out, &mut HashSet::new());
        out
    }

    /// [`Index::segment_extents_from`] into `out` (cleared first), with `seen` as scratch: the
    /// cleaner's form, which allocates nothing once both have grown to a batch.
    pub fn segment_extents_into(
        &self,
        s: usize,
        cursor: &mut RefCursor,
        budget: u64,
        out: &mut Vec<(u64, u64, Extent)>,
        seen: &mut HashSet<(u64, u64)>,
    ) {
        out.clear();
        seen.clear();
        let gen = self.acct.gen.get(s).copied().unwrap_or(0);
        let list = self.acct.refs.get(s).map_or(&[][..], |r| &r[..]);
        if cursor.seg != s || cursor.gen != gen || cursor.pos > list.len() {
            *cursor = RefCursor {
                seg: s,
                gen,
                pos: 0,
            };
        }
        let start = cursor.pos;
        let mut taken = 0u64;
        for &(id, off) in list[start..].iter().take(MAX_SCAN) {
            cursor.pos += 1;
            let Some(e) = self.onodes.get(&id).and_then(|o| o.extents.get(&off)) else {
                continue;
            };
            if !self.acct.holds(s, e) {
                continue;
            }
            if !out.is_empty() && taken.saturating_add(e.len) > budget {
                // Not taken: the next step starts here.
                cursor.pos -= 1;
                break;
            }
            if seen.insert((id, off)) {
                taken = taken.saturating_add(e.len);
                out.push((id, off, *e));
            }
        }
        if out.is_empty() && start > 0 && cursor.pos == list.len() {
            // Nothing live past the cursor (should not happen while the segment holds data,
            // but never miss live extents): rescan from the start.
            cursor.pos = 0;
            self.segment_extents_into(s, cursor, budget, out, seen);
        }
    }

    /// Drop stale and duplicate candidates of the segments flagged by `Accounting::add`.
    fn compact_refs(&mut self) {
        self.acct.compact.sort_unstable();
        self.acct.compact.dedup();
        while let Some(s) = self.acct.compact.pop() {
            let s = s as usize;
            let mut r = std::mem::take(&mut self.acct.refs[s]);
            r.sort_unstable();
            r.dedup();
            let acct = &self.acct;
            r.retain(|(id, off)| {
                self.onodes
                    .get(id)
                    .and_then(|o| o.extents.get(off))
                    .is_some_and(|e| acct.holds(s, e))
            });
            self.acct.refs[s] = r;
            self.acct.gen[s] = self.acct.gen[s].wrapping_add(1);
        }
    }

    pub fn onode(&self, cid: CollectionId, oid: &ObjectId) -> Option<(u64, &Onode)> {
        let id = *self.names.get(&cid)?.get(oid)?;
        Some((id, self.onodes.get(&id)?))
    }

    /// The onode of (cid, oid), created if missing (validation guarantees the collection).
    fn onode_mut(&mut self, cid: CollectionId, oid: &ObjectId) -> (u64, &mut Onode) {
        let names = self.names.entry(cid).or_default();
        let id = match names.get(oid) {
            Some(&id) => id,
            None => {
                self.next_onode += 1;
                names.insert(oid.clone(), self.next_onode);
                self.colls
                    .entry(cid)
                    .or_default()
                    .insert(oid.clone(), self.next_onode);
                self.next_onode
            }
        };
        (id, self.onodes.entry(id).or_default())
    }

    /// Apply one validated logical op. No failure paths.
    pub fn apply(&mut self, op: &LOp) {
        self.apply_op(op);
        if !self.acct.compact.is_empty() {
            self.compact_refs();
        }
    }

    fn apply_op(&mut self, op: &LOp) {
        match op {
            LOp::CreateColl(cid) => {
                self.colls.insert(*cid, BTreeMap::new());
                self.names.insert(*cid, Default::default());
            }
            LOp::RemoveColl(cid) => {
                self.names.remove(cid);
                if let Some(objs) = self.colls.remove(cid) {
                    // Validation requires empty; stay robust on replay anyway.
                    for (_, id) in objs {
                        self.drop_onode(id);
                    }
                }
            }
            LOp::Remove(cid, oid) => {
                if let Some(n) = self.names.get_mut(cid) {
                    n.remove(oid);
                }
                if let Some(id) = self.colls.get_mut(cid).and_then(|c| c.remove(oid)) {
                    self.drop_onode(id);
                }
            }
            LOp::Touch(cid, oid) => {
                self.onode_mut(*cid, oid);
            }
            LOp::Write {
                cid,
                oid,
                off,
                chunk,
            } => {
                let (id, _) = self.onode_mut(*cid, oid);
                let len = chunk.len as u64;
                let acct = &mut self.acct;
                let Some(o) = self.onodes.get_mut(&id) else {
                    return;
                };
                // The steady state of small random overwrites: an extent of exactly this range
                // exists. Replace it in place (one tree lookup instead of a range search, a
                // removal and an insertion).
                if let Some(e) = o.extents.get_mut(off).filter(|e| len > 0 && e.len == len) {
                    acct.sub(e);
                    *e = Extent {
                        len,
                        skip: 0,
                        chunk: *chunk,
                    };
                    acct.add(id, *off, e);
                    o.size = o.size.max(off + len);
                    return;
                }
                if len > 0 {
                    punch(o, acct, id, *off, len);
                    insert_ext(
                        o,
                        acct,
                        id,
                        *off,
                        Extent {
                            len,
                            skip: 0,
                            chunk: *chunk,
                        },
                    );
                }
                o.size = o.size.max(off + len);
            }
            LOp::Zero { cid, oid, off, len } => {
                let (id, _) = self.onode_mut(*cid, oid);
                let acct = &mut self.acct;
                let Some(o) = self.onodes.get_mut(&id) else {
                    return;
                };
                punch(o, acct, id, *off, *len);
                o.size = o.size.max(off + len);
            }
            LOp::Truncate { cid, oid, size } => {
                let (id, _) = self.onode_mut(*cid, oid);
                let acct = &mut self.acct;
                let Some(o) = self.onodes.get_mut(&id) else {
                    return;
                };
                if *size < o.size {
                    punch(o, acct, id, *size, u64::MAX - *size);
                }
                o.size = *size;
            }
            LOp::SetAttr {
                cid,
                oid,
                name,
                value,
            } => {
                self.onode_mut(*cid, oid)
                    .1
                    .attrs
                    .insert(name.clone(), value.clone());
            }
            LOp::RmAttr { cid, oid, name } => {
                self.onode_mut(*cid, oid).1.attrs.remove(name);
            }
            LOp::OmapSet { cid, oid, entries } => {
                let o = self.onode_mut(*cid, oid).1;
                for (k, v) in entries {
                    o.omap.insert(k.clone(), v.clone());
                }
            }
            LOp::OmapRm { cid, oid, keys } => {
                let o = self.onode_mut(*cid, oid).1;
                for k in keys {
                    o.omap.remove(k);
                }
            }
        }
    }

    fn drop_onode(&mut self, id: u64) {
        if let Some(o) = self.onodes.remove(&id) {
            for e in o.extents.values() {
                self.acct.sub(e);
            }
        }
    }

    /// Apply a relocation if the extent is unchanged since the cleaner read it.
    pub fn apply_reloc(&mut self, r: &Reloc) -> bool {
        let acct = &mut self.acct;
        let Some(o) = self.onodes.get_mut(&r.onode) else {
            return false;
        };
        let Some(e) = o.extents.get_mut(&r.off).filter(|e| **e == r.old) else {
            return false;
        };
        // Replaced in place: same key, same length (a removal and an insertion would free
        // and allocate tree nodes as the map shrinks and grows back).
        acct.sub(e);
        *e = Extent {
            len: r.old.len,
            skip: 0,
            chunk: r.new,
        };
        acct.add(r.onode, r.off, e);
        if !self.acct.compact.is_empty() {
            self.compact_refs();
        }
        true
    }

    pub fn apply_entry(&mut self, e: &Entry) {
        match e {
            Entry::Txn(ops) => ops.iter().for_each(|op| self.apply(op)),
            Entry::Reloc(rs) => {
                for r in rs {
                    self.apply_reloc(r);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> Geometry {
        Geometry {
            uuid: 1,
            ratio: 1,
            part_start: 1,
            part_blocks: 2 * 4 + 8 * 64,
            slot_blocks: 4,
            seg_blocks: 64,
            nsegs: 8,
        }
    }

    /// The exact set of (onode, offset, extent) in segment `s`, from the extent maps.
    fn truth(idx: &Index, g: &Geometry, s: u32) -> Vec<(u64, u64, Extent)> {
        let mut v: Vec<_> = idx
            .onodes
            .iter()
            .flat_map(|(&id, o)| o.extents.iter().map(move |(&off, e)| (id, off, *e)))
            .filter(|(_, _, e)| g.seg_of(e.chunk.lba) == Some(s))
            .collect();
        v.sort_by_key(|x| (x.0, x.1));
        v
    }

    /// Back references stay a small superset of the segment's extents through splits,
    /// in-place overwrites and removals, and the cleaner's view is exact.
    #[test]
    fn back_references_track_extents() {
        let g = geo();
        let mut idx = Index::default();
        idx.rebuild_derived(&g);
        let c = CollectionId(1);
        idx.apply(&LOp::CreateColl(c));
        let big = |oid: &str, lba: u64| LOp::Write {
            cid: c,
            oid: ObjectId::from(oid),
            off: 0,
            chunk: ChunkRef {
                lba,
                len: 32 * 4096,
                crc: 0,
            },
        };
        // Two objects with one 128 KiB extent each in segment 0.
        let s0 = g.seg_lba(0);
        idx.apply(&big("a", s0));
        idx.apply(&big("b", s0 + 32));
        // Many small overwrites into segment 1 (and back over themselves), splitting the big
        // extents piece by piece.
        let s1 = g.seg_lba(1);
        let mut x = 7u64;
        let mut peak = [0usize; 2];
        for i in 0..2000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let oid = if x >> 63 == 0 { "a" } else { "b" };
            let block = (x >> 20) % 32;
            let len = 1 + (x >> 40) % 3 * 2048;
            idx.apply(&LOp::Write {
                cid: c,
                oid: ObjectId::from(oid),
                off: block * 4096,
                chunk: ChunkRef {
                    lba: s1 + i % 64,
                    len: len as u32,
                    crc: 0,
                },
            });
            for s in 0..2 {
                let n = truth(&idx, &g, s).len();
                peak[s as usize] = peak[s as usize].max(n);
                assert!(idx.acct.refs[s as usize].len() <= 2 * peak[s as usize] + 64);
                if i % 97 == 0 {
                    let mut got = idx.segment_extents(s as usize, u64::MAX);
                    got.sort_by_key(|x| (x.0, x.1));
                    assert_eq!(got, truth(&idx, &g, s));
                }
            }
        }
        // Drain segment 0 the way the cleaner does: budgeted steps from a cursor, each taken
        // extent relocated to segment 2, interleaved with more overwrites. It must empty.
        let mut cursor = RefCursor::default();
        let mut to = g.seg_lba(2);
        for step in 0..10_000 {
            if idx.acct.live[0] == 0 {
                break;
            }
            assert!(step < 9_999, "segment 0 never drained");
            let batch = idx.segment_extents_from(0, &mut cursor, 3 * 4096);
            assert!(!batch.is_empty(), "live data but nothing found");
            for (id, off, old) in batch {
                assert!(idx.apply_reloc(&Reloc {
                    onode: id,
                    off,
                    old,
                    new: ChunkRef {
                        lba: to,
                        len: old.len as u32,
                        crc: 0,
                    },
                }));
                to += 1;
            }
            idx.apply(&LOp::Write {
                cid: c,
                oid: ObjectId::from("a"),
                off: (step % 32) * 4096,
                chunk: ChunkRef {
                    lba: g.seg_lba(3) + step % 64,
                    len: 4096,
                    crc: 0,
                },
            });
        }
        assert!(truth(&idx, &g, 0).is_empty());
        idx.apply(&LOp::Remove(c, ObjectId::from("a")));
        idx.apply(&LOp::Remove(c, ObjectId::from("b")));
        for s in 0..4 {
            assert_eq!(idx.acct.live[s], 0);
            assert!(idx.acct.refs[s].is_empty());
            assert!(idx.segment_extents(s, u64::MAX).is_empty());
        }
        assert_eq!(idx.acct.empty, g.nsegs as usize);
    }

    /// The hashed names mirror the ordered collections through creates, removes of objects
    /// and collections, and re-creations, and a rebuild from the ordered maps (as at mount)
    /// gives the same lookups.
    mod names {
        use super::*;
        use proptest::prelude::*;

        fn arb_lop() -> impl Strategy<Value = LOp> {
            let cid = (0u64..3).prop_map(CollectionId);
            let oid = (0u8..6).prop_map(|i| ObjectId::from(format!("pg-object-name-{i}").as_str()));
            prop_oneof![
                cid.clone().prop_map(LOp::CreateColl),
                cid.clone().prop_map(LOp::RemoveColl),
                (cid.clone(), oid.clone()).prop_map(|(c, o)| LOp::Remove(c, o)),
                (cid.clone(), oid.clone()).prop_map(|(c, o)| LOp::Touch(c, o)),
                (cid, oid, 0u64..4).prop_map(|(c, o, b)| LOp::Write {
                    cid: c,
                    oid: o,
                    off: b * 4096,
                    chunk: ChunkRef {
                        lba: 10 + b,
                        len: 4096,
                        crc: 0,
                    },
                }),
            ]
        }

        proptest! {
            #[test]
            fn names_mirror_colls(ops in proptest::collection::vec(arb_lop(), 1..80)) {
                let g = geo();
                let mut idx = Index::default();
                idx.rebuild_derived(&g);
                for op in &ops {
                    idx.apply(op);
                    prop_assert!(idx.names_consistent(), "after {op:?}");
                }
                let mut rebuilt = Index {
                    colls: idx.colls.clone(),
                    onodes: idx.onodes.clone(),
                    next_onode: idx.next_onode,
                    ..Index::default()
                };
                rebuilt.rebuild_derived(&g);
                prop_assert!(rebuilt.names_consistent());
                for c in 0..3 {
                    for i in 0..6u8 {
                        let oid = ObjectId::from(format!("pg-object-name-{i}").as_str());
                        let cid = CollectionId(c);
                        let want = idx.colls.get(&cid).and_then(|o| o.get(&oid)).copied();
                        prop_assert_eq!(idx.onode(cid, &oid).map(|x| x.0), want);
                        prop_assert_eq!(rebuilt.onode(cid, &oid).map(|x| x.0), want);
                        prop_assert_eq!(idx.object_exists(cid, &oid), want.is_some());
                    }
                }
            }
        }
    }

    /// An omap encodes as the `BTreeMap` it replaced, byte for byte, in both of its forms, and
    /// decodes back to the same entries: checkpoints and records from before read the same.
    #[test]
    fn an_omap_has_the_bytes_of_the_ordered_map_it_replaced() {
        use carmine_objectstore::omap::SMALL_MAX;
        use carmine_objectstore::OmapValue;
        for n in [0usize, 3, SMALL_MAX + 5] {
            let mut tree = BTreeMap::new();
            let mut omap = Omap::default();
            for i in 0..n {
                // Inserted out of order, so the deque form sorts too.
                let k = OmapKey::from_slice(&((i * 7919) as u32 % 100_000).to_be_bytes());
                let v = OmapValue::from_slice(&i.to_le_bytes()[..1 + i % 8]);
                tree.insert(k.clone(), v.clone());
                omap.insert(k, v);
            }
            let bytes = crate::format::encode(&tree);
            assert_eq!(crate::format::encode(&omap), bytes, "{n} entries");
            let back: Omap = crate::format::decode(&bytes).unwrap();
            assert_eq!(back, omap);
            let again: BTreeMap<OmapKey, OmapValue> = crate::format::decode(&bytes).unwrap();
            assert_eq!(again, tree);
        }
    }
}
