//! # carmine-memstore: the in-memory object store
//!
//! One instance per shard, for tests and OSD-only benchmarks (Crimson's CyanStore). It
//! implements the `carmine-objectstore` contract with maps: collections in a hash map, and
//! in each collection its objects in a hash map (every op looks an object up, often several
//! times: by hash, not by comparing names that share a long prefix, as an ordered map does at
//! every level; foldhash, seeded per process, rather than std's slower SipHash) beside an
//! ordered index of their names, touched only when an object is created or removed, for
//! listing. Object data is a sparse, sorted list of fixed-size pages, so large offsets do not
//! allocate the holes. An object's first page and first attribute sit inline in it
//! (`src/pages.rs`, `src/attrs.rs`): a one-block object with the OSD's version attribute is one
//! hash-table slot, no nodes. A small omap is a sorted deque, so the PG log's pattern (append
//! after the last key, trim the first) is O(1) and allocation-free (`carmine_objectstore::omap`,
//! shared with bdevstore).
//!
//! Invariants: a transaction is validated first (`carmine_objectstore::validate`) and then
//! applied by code with no failure path, so it is all-or-nothing. Work completes at submit; the
//! completion is handed out by the next `poll`, keeping the same shape as the durable engines.
//! Nothing here is durable.
//!
//! A whole-page write's buffer becomes the page; other write data, once copied into pages, and
//! the pages that writes replace are kept as spare buffers ([`SpareBufs`]), handed out again by
//! `data_buf` and for read results: a stream of small ops does not allocate its data.
//!
//! Usage ([`MemStore::used_bytes`]) counts the data pages held (4 KiB each), kept up to date by
//! `apply`: attributes and omap entries are not counted. The store has no capacity: it grows
//! until memory runs out.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, VecDeque};

use foldhash::HashMap;

mod attrs;
mod pages;
use attrs::Attrs;
use carmine_objectstore::omap::Omap;
use pages::{Pages, PAGE};

use carmine_objectstore::{
    meta, validate, CollectionId, Completion, Done, ListPage, ObjectId, ObjectStat, ObjectStore,
    OmapEntries, Op, SpareBufs, StoreError, StoreView, Ticket, Transaction,
};

#[derive(Default)]
struct Object {
    size: u64,
    /// Page index -> page bytes; a missing page reads as zeros.
    pages: Pages,
    /// Attribute and omap bytes inline as they come in the transaction (small ones need no
    /// allocation: the OSD's version attribute and PG log entries).
    attrs: Attrs,
    omap: Omap,
}

impl Object {
    fn zero_range(&mut self, off: u64, len: u64) {
        let end = off + len;
        let mut pos = off;
        while pos < end {
            let page = pos / PAGE;
            let in_page = pos % PAGE;
            let n = (PAGE - in_page).min(end - pos);
            if in_page == 0 && n == PAGE {
                self.pages.remove(page);
            } else if let Some(p) = self.pages.get_mut(page) {
                p[in_page as usize..(in_page + n) as usize].fill(0);
            }
            pos += n;
        }
    }

    /// Writes `data` at `off`. A write of exactly one whole page takes `data`'s buffer as the
    /// page, no copy, and hands the page it replaces back for reuse; otherwise the bytes are
    /// copied and `data` is handed back. Either way `spare` gets one buffer.
    fn write_owned(&mut self, off: u64, data: Vec<u8>, spare: &mut SpareBufs) {
        if off.is_multiple_of(PAGE)
            && data.len() == PAGE as usize
            && data.capacity() == PAGE as usize
        {
            // Capacity equal to the length: the boxed slice is the same allocation, and a
            // slice of PAGE bytes converts to a page (the copy below is only a fallback).
            let page: Result<Box<[u8; PAGE as usize]>, _> = data.into_boxed_slice().try_into();
            match page {
                Ok(page) => {
                    if let Some(old) = self.pages.insert(off / PAGE, page) {
                        spare.put((old as Box<[u8]>).into_vec());
                    }
                    self.size = self.size.max(off + PAGE);
                }
                Err(data) => {
                    self.write(off, &data);
                    spare.put(data.into_vec());
                }
            }
            return;
        }
        self.write(off, &data);
        spare.put(data);
    }

    fn write(&mut self, off: u64, data: &[u8]) {
        let mut pos = 0usize;
        while pos < data.len() {
            let abs = off + pos as u64;
            let page = abs / PAGE;
            let in_page = (abs % PAGE) as usize;
            let n = (PAGE as usize - in_page).min(data.len() - pos);
            let p = self.pages.get_or_zeroed(page);
            p[in_page..in_page + n].copy_from_slice(&data[pos..pos + n]);
            pos += n;
        }
        self.size = self.size.max(off + data.len() as u64);
    }

    fn truncate(&mut self, size: u64) {
        if size < self.size {
            // Zero the tail of the last partial page, drop whole pages beyond.
            let keep_pages = size.div_ceil(PAGE);
            self.pages.drop_from(keep_pages);
            if !size.is_multiple_of(PAGE) {
                self.zero_range(size, PAGE - size % PAGE);
            }
        }
        self.size = size;
    }

    /// The bytes of `[off, off+len)` (clipped at the size) where they lie in one page, or
    /// nothing to read; None when they cross pages or a hole (those need a buffer: `read`).
    fn in_one_page(&self, off: u64, len: u64) -> Option<&[u8]> {
        let end = off.saturating_add(len).min(self.size);
        if off >= end {
            return Some(&[]);
        }
        let index = off / PAGE;
        if (end - 1) / PAGE != index {
            return None;
        }
        let (_, page) = self.pages.range(index, index + 1).next()?;
        Some(&page[(off - index * PAGE) as usize..(end - index * PAGE) as usize])
    }

    /// The bytes of `[off, off+len)` (clipped at the size), in a buffer from `spare`.
    fn read(&self, off: u64, len: u64, spare: &mut SpareBufs) -> Vec<u8> {
        let end = off.saturating_add(len).min(self.size);
        if off >= end {
            return Vec::new();
        }
        // Built front to back: the pages' bytes copied once, zeros only for the holes (no
        // zero-filled buffer that the copies then overwrite).
        let mut out = spare.take((end - off) as usize);
        for (page, p) in self.pages.range(off / PAGE, end.div_ceil(PAGE)) {
            let ps = page * PAGE;
            let s = ps.max(off);
            let e = (ps + PAGE).min(end);
            out.resize((s - off) as usize, 0);
            out.extend_from_slice(&p[(s - ps) as usize..(e - ps) as usize]);
        }
        out.resize((end - off) as usize, 0);
        out
    }
}

/// One collection's objects. Invariant: `order` holds exactly the keys of `objects`.
#[derive(Default)]
struct Collection {
    objects: HashMap<ObjectId, Object>,
    /// The names in order, for listing.
    order: BTreeMap<ObjectId, ()>,
}

impl Collection {
    fn get(&self, oid: &ObjectId) -> Option<&Object> {
        self.objects.get(oid)
    }

    fn contains(&self, oid: &ObjectId) -> bool {
        self.objects.contains_key(oid)
    }

    fn len(&self) -> usize {
        self.objects.len()
    }

    /// The object, created empty if it does not exist.
    fn entry(&mut self, oid: ObjectId) -> &mut Object {
        match self.objects.entry(oid) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => {
                self.order.insert(v.key().clone(), ());
                v.insert(Object::default())
            }
        }
    }

    fn remove(&mut self, oid: &ObjectId) -> Option<Object> {
        let o = self.objects.remove(oid)?;
        self.order.remove(oid);
        Some(o)
    }

    fn values(&self) -> impl Iterator<Item = &Object> {
        self.objects.values()
    }
}

/// The in-memory store of one shard.
pub struct MemStore {
    /// Collections by id: a hash map, not a B-tree (every op looks its collection up first;
    /// a B-tree's walk was 5% of a read), sorted only when they are listed.
    colls: HashMap<CollectionId, Collection>,
    /// Data pages held over every object (the invariant `apply` keeps).
    pages: u64,
    next_ticket: u64,
    done: VecDeque<Completion>,
    /// Write data once copied into pages, and read results the caller gave back: handed out
    /// again by `data_buf` and for reads.
    spare: SpareBufs,
    /// Emptied transactions (their op lists' room), for `transaction`.
    spare_txns: Vec<Transaction>,
}

impl Default for MemStore {
    fn default() -> Self {
        MemStore {
            colls: HashMap::default(),
            pages: 0,
            next_ticket: 0,
            done: VecDeque::new(),
            spare: SpareBufs::new(SPARE_BUFS, SPARE_MAX_BYTES),
            spare_txns: Vec::new(),
        }
    }
}

/// Spare data buffers kept, each of at most `SPARE_MAX_BYTES` (enough for a shard's queue of
/// small ops; large ones are allocated each time).
const SPARE_BUFS: usize = 256;
const SPARE_MAX_BYTES: usize = 64 << 10;
/// Emptied transactions kept (a transaction completes at submit: a few are enough).
const SPARE_TXNS: usize = 16;
/// Largest op list kept (a PG's creation or peering may build thousands once).
const SPARE_TXN_OPS: usize = 64;

impl StoreView for MemStore {
    fn collection_exists(&self, cid: CollectionId) -> bool {
        self.colls.contains_key(&cid)
    }
    fn object_exists(&self, cid: CollectionId, oid: &ObjectId) -> bool {
        self.colls.get(&cid).is_some_and(|c| c.contains(oid))
    }
    fn collection_len(&self, cid: CollectionId) -> usize {
        self.colls.get(&cid).map_or(0, |c| c.len())
    }
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of object data held (whole pages).
    pub fn used_bytes(&self) -> u64 {
        self.pages * PAGE
    }

    /// [`MemStore::used_bytes`] counted afresh over every object (what the kept count must
    /// equal; for tests).
    pub fn used_bytes_recounted(&self) -> u64 {
        let pages: usize = self
            .colls
            .values()
            .flat_map(|c| c.values())
            .map(|o| o.pages.len())
            .sum();
        pages as u64 * PAGE
    }

    fn ticket(&mut self) -> Ticket {
        self.next_ticket += 1;
        Ticket(self.next_ticket)
    }

    fn object(&self, cid: CollectionId, oid: &ObjectId) -> Result<&Object, StoreError> {
        object_in(&self.colls, cid, oid)
    }

    /// Apply a validated transaction. No failure paths below this point. Its emptied op list
    /// is kept for `transaction`.
    fn apply(&mut self, mut txn: Transaction) {
        let MemStore {
            colls,
            pages,
            spare,
            ..
        } = self;
        // Page count of an object before and after an op (no allocation: the op's own names).
        let held = |o: &Object| o.pages.len() as u64;
        for op in txn.ops.drain(..) {
            match op {
                Op::CreateCollection { cid } => {
                    colls.insert(cid, Collection::default());
                }
                Op::RemoveCollection { cid } => {
                    if let Some(c) = colls.remove(&cid) {
                        *pages -= c.values().map(held).sum::<u64>();
                    }
                }
                Op::Remove { cid, oid } => {
                    if let Some(o) = colls.entry(cid).or_default().remove(&oid) {
                        *pages -= held(&o);
                    }
                }
                Op::Touch { cid, oid } => {
                    colls.entry(cid).or_default().entry(oid);
                }
                Op::Write {
                    cid,
                    oid,
                    off,
                    data,
                } => {
                    let o = colls.entry(cid).or_default().entry(oid);
                    let before = held(o);
                    o.write_owned(off, data, spare);
                    *pages = *pages - before + held(o);
                }
                Op::Zero { cid, oid, off, len } => {
                    let o = colls.entry(cid).or_default().entry(oid);
                    let before = held(o);
                    o.zero_range(off, len);
                    o.size = o.size.max(off + len);
                    *pages = *pages - before + held(o);
                }
                Op::Truncate { cid, oid, size } => {
                    let o = colls.entry(cid).or_default().entry(oid);
                    let before = held(o);
                    o.truncate(size);
                    *pages = *pages - before + held(o);
                }
                Op::SetAttr {
                    cid,
                    oid,
                    name,
                    value,
                } => {
                    let o = colls.entry(cid).or_default().entry(oid);
                    o.attrs.set(name, value);
                }
                Op::RmAttr { cid, oid, name } => {
                    let o = colls.entry(cid).or_default().entry(oid);
                    o.attrs.remove(&name);
                }
                Op::OmapSet { cid, oid, entries } => {
                    let o = colls.entry(cid).or_default().entry(oid);
                    o.omap.extend(entries);
                }
                Op::OmapRm { cid, oid, keys } => {
                    let o = colls.entry(cid).or_default().entry(oid);
                    for k in keys {
                        o.omap.remove(k.as_slice());
                    }
                }
            }
        }
        if self.spare_txns.len() < SPARE_TXNS && txn.ops.capacity() <= SPARE_TXN_OPS {
            self.spare_txns.push(txn);
        }
    }
}

fn object_in<'a>(
    colls: &'a HashMap<CollectionId, Collection>,
    cid: CollectionId,
    oid: &ObjectId,
) -> Result<&'a Object, StoreError> {
    colls
        .get(&cid)
        .ok_or_else(|| StoreError::NotFound(format!("collection {}", cid.0)))?
        .get(oid)
        .ok_or_else(|| StoreError::NotFound(format!("object {oid:?}")))
}

impl ObjectStore for MemStore {
    fn submit(&mut self, txn: Transaction) -> Ticket {
        let ticket = self.ticket();
        let result = match validate(self, &txn) {
            Ok(()) => {
                self.apply(txn);
                Ok(Done::Committed)
            }
            Err(e) => Err(e),
        };
        self.done.push_back(Completion { ticket, result });
        ticket
    }

    fn read_in_place(
        &self,
        cid: CollectionId,
        oid: &ObjectId,
        off: u64,
        len: u64,
    ) -> Option<Result<&[u8], StoreError>> {
        match object_in(&self.colls, cid, oid) {
            Ok(o) => o.in_one_page(off, len).map(Ok),
            Err(e) => Some(Err(e)),
        }
    }

    fn read(&mut self, cid: CollectionId, oid: &ObjectId, off: u64, len: u64) -> Ticket {
        let ticket = self.ticket();
        let MemStore { colls, spare, .. } = self;
        let result = object_in(colls, cid, oid).map(|o| Done::Data(o.read(off, len, spare)));
        self.done.push_back(Completion { ticket, result });
        ticket
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        let n = self.done.len();
        out.extend(self.done.drain(..));
        n
    }

    fn is_idle(&self) -> bool {
        self.done.is_empty()
    }

    fn stat(&self, cid: CollectionId, oid: &ObjectId) -> Result<ObjectStat, StoreError> {
        self.object(cid, oid).map(|o| ObjectStat { size: o.size })
    }

    fn get_attr(
        &self,
        cid: CollectionId,
        oid: &ObjectId,
        name: &str,
    ) -> Result<Vec<u8>, StoreError> {
        self.object(cid, oid)?
            .attrs
            .get(name)
            .map(|v| v.to_vec())
            .ok_or_else(|| StoreError::NotFound(format!("attribute {name}")))
    }

    fn get_attrs(
        &self,
        cid: CollectionId,
        oid: &ObjectId,
    ) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        Ok(self.object(cid, oid)?.attrs.to_map())
    }

    fn omap_get(
        &self,
        cid: CollectionId,
        oid: &ObjectId,
        keys: &[Vec<u8>],
    ) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StoreError> {
        Ok(self.object(cid, oid)?.omap.get_many(keys))
    }

    fn omap_range(
        &self,
        cid: CollectionId,
        oid: &ObjectId,
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<OmapEntries, StoreError> {
        Ok(self.object(cid, oid)?.omap.range_after(after, max))
    }

    fn list(
        &self,
        cid: CollectionId,
        after: Option<&ObjectId>,
        max: usize,
    ) -> Result<ListPage, StoreError> {
        let c = self
            .colls
            .get(&cid)
            .ok_or_else(|| StoreError::NotFound(format!("collection {}", cid.0)))?;
        Ok(meta::list_page(&c.order, after, max))
    }

    fn collection_len(&self, cid: CollectionId) -> usize {
        StoreView::collection_len(self, cid)
    }

    fn list_collections(&self) -> Vec<CollectionId> {
        let mut ids: Vec<CollectionId> = self.colls.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    fn data_buf(&mut self, len: usize) -> Vec<u8> {
        self.spare.take(len)
    }

    /// Streaming stores: a spare buffer is a page some write replaced, cold, and a whole-page
    /// write's buffer becomes the object's page, not read again soon.
    fn data_buf_from(&mut self, data: &[u8]) -> Vec<u8> {
        let mut v = self.spare.take(data.len());
        carmine_objectstore::extend_streaming(&mut v, data);
        v
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        self.spare.put(buf);
    }

    fn transaction(&mut self) -> Transaction {
        self.spare_txns.pop().unwrap_or_default()
    }
}
