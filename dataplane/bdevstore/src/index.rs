//! The in-memory index (collections, onodes, extent maps) and the logical operations journal
//! records carry. The same `apply` runs when a record is built and when it is replayed, so
//! replay reproduces the running state exactly (onode ids included).

use std::collections::{BTreeMap, BTreeSet};

use carmine_objectstore::{CollectionId, ObjectId, StoreView};
use serde::{Deserialize, Serialize};

use crate::format::Geometry;

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
    pub attrs: BTreeMap<String, Vec<u8>>,
    pub omap: BTreeMap<Vec<u8>, Vec<u8>>,
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
        value: Vec<u8>,
    },
    RmAttr {
        cid: CollectionId,
        oid: ObjectId,
        name: String,
    },
    OmapSet {
        cid: CollectionId,
        oid: ObjectId,
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    },
    OmapRm {
        cid: CollectionId,
        oid: ObjectId,
        keys: Vec<Vec<u8>>,
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
#[derive(Default, Debug)]
pub struct Accounting {
    seg_area: u64,
    seg_blocks: u64,
    pub live: Vec<u64>,
    /// (onode, logical offset) of every extent in the segment: the cleaner's work list.
    pub refs: Vec<BTreeSet<(u64, u64)>>,
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
            self.refs[s].insert((id, off));
        }
    }
    fn sub(&mut self, id: u64, off: u64, e: &Extent) {
        if let Some(s) = self.seg(e.chunk.lba) {
            let before = self.live[s];
            self.live[s] = before.saturating_sub(e.len);
            if before > 0 && self.live[s] == 0 {
                self.empty += 1;
            }
            self.refs[s].remove(&(id, off));
        }
    }
}

/// The whole metadata of one partition; serialized as the checkpoint body.
#[derive(Default, Debug, Serialize, Deserialize)]
pub struct Index {
    pub colls: BTreeMap<CollectionId, BTreeMap<ObjectId, u64>>,
    pub onodes: BTreeMap<u64, Onode>,
    pub next_onode: u64,
    #[serde(skip)]
    pub acct: Accounting,
}

impl StoreView for Index {
    fn collection_exists(&self, cid: CollectionId) -> bool {
        self.colls.contains_key(&cid)
    }
    fn object_exists(&self, cid: CollectionId, oid: &ObjectId) -> bool {
        self.colls.get(&cid).is_some_and(|c| c.contains_key(oid))
    }
    fn collection_len(&self, cid: CollectionId) -> usize {
        self.colls.get(&cid).map_or(0, |c| c.len())
    }
}

fn insert_ext(o: &mut Onode, acct: &mut Accounting, id: u64, off: u64, e: Extent) {
    acct.add(id, off, &e);
    o.extents.insert(off, e);
}

fn remove_ext(o: &mut Onode, acct: &mut Accounting, id: u64, off: u64) -> Option<Extent> {
    let e = o.extents.remove(&off)?;
    acct.sub(id, off, &e);
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
        remove_ext(o, acct, id, k);
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
    /// Recompute the derived accounting for this geometry.
    pub fn rebuild_accounting(&mut self, geo: &Geometry) {
        let n = geo.nsegs as usize;
        self.acct = Accounting {
            seg_area: geo.seg_area(),
            seg_blocks: geo.seg_blocks,
            live: vec![0; n],
            refs: vec![BTreeSet::new(); n],
            empty: n,
        };
        for (&id, o) in &self.onodes {
            for (&off, e) in &o.extents {
                self.acct.add(id, off, e);
            }
        }
    }

    pub fn onode(&self, cid: CollectionId, oid: &ObjectId) -> Option<(u64, &Onode)> {
        let id = *self.colls.get(&cid)?.get(oid)?;
        Some((id, self.onodes.get(&id)?))
    }

    /// The onode of (cid, oid), created if missing (validation guarantees the collection).
    fn onode_mut(&mut self, cid: CollectionId, oid: &ObjectId) -> (u64, &mut Onode) {
        let coll = self.colls.entry(cid).or_default();
        let id = match coll.get(oid) {
            Some(&id) => id,
            None => {
                self.next_onode += 1;
                coll.insert(oid.clone(), self.next_onode);
                self.next_onode
            }
        };
        (id, self.onodes.entry(id).or_default())
    }

    /// Apply one validated logical op. No failure paths.
    pub fn apply(&mut self, op: &LOp) {
        match op {
            LOp::CreateColl(cid) => {
                self.colls.insert(*cid, BTreeMap::new());
            }
            LOp::RemoveColl(cid) => {
                if let Some(objs) = self.colls.remove(cid) {
                    // Validation requires empty; stay robust on replay anyway.
                    for (_, id) in objs {
                        self.drop_onode(id);
                    }
                }
            }
            LOp::Remove(cid, oid) => {
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
            for (off, e) in &o.extents {
                self.acct.sub(id, *off, e);
            }
        }
    }

    /// Apply a relocation if the extent is unchanged since the cleaner read it.
    pub fn apply_reloc(&mut self, r: &Reloc) -> bool {
        let acct = &mut self.acct;
        let Some(o) = self.onodes.get_mut(&r.onode) else {
            return false;
        };
        if o.extents.get(&r.off) != Some(&r.old) {
            return false;
        }
        remove_ext(o, acct, r.onode, r.off);
        insert_ext(
            o,
            acct,
            r.onode,
            r.off,
            Extent {
                len: r.old.len,
                skip: 0,
                chunk: r.new,
            },
        );
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
