//! # The Carmine object-store contract
//!
//! This crate names what a per-shard object store is, with no engine dependency (in the spirit
//! of TiKV's `engine_traits`). Two engines implement it: `carmine-memstore` (memory) and
//! `carmine-bdevstore` (a log-structured store on a poll-mode block device). It also names the
//! block-device contract the native store runs on ([`device::BlockDevice`]) with a real
//! file-backed implementation ([`device::FileDevice`]); the SPDK bdev implementation lives in
//! `carmine-spdk` behind the same trait.
//!
//! ## Data model
//! - A store holds **collections** ([`CollectionId`], one per placement group).
//! - A collection holds **objects** ([`ObjectId`], ordered by their bytes), each with a byte
//!   array (sparse: holes read as zeros), named **attributes** and an ordered key/value **omap**.
//! - A [`Transaction`] is an ordered list of [`Op`]s. It applies atomically (all or nothing) and
//!   is durable when its completion fires. Validation rules are in [`validate`].
//!
//! ## API shape: submit + poll (why)
//! Every store is shard-local (`!Send` is fine) and driven by the shard's run-to-completion poll
//! loop. Work that may touch the device is *submitted* and returns a [`Ticket`] at once; the shard
//! loop calls [`ObjectStore::poll`], which reaps device completions, advances internal state
//! machines (group commit, cleaner, checkpoints) and hands back [`Completion`]s on the same
//! shard. We chose this over `async fn`s because:
//! - the poll loop already exists and owns the CPU: a poll hook costs one call per iteration and
//!   needs no waker plumbing, no executor and no `Rc<RefCell<_>>` inside the store;
//! - group commit falls out naturally: everything submitted between two polls goes into one
//!   journal record;
//! - the OSD layer keeps its own per-op state machines keyed by ticket, like a message id.
//!   An async facade can be layered on top later (a ticket -> waker table) without touching
//!   engines.
//!
//! The native store's device contract is [`device::BlockDevice`]: submit aligned reads, writes
//! and flushes with a completion token, reap completions with `poll()`, never block. A flush
//! covers the writes completed before it. [`device::FileDevice`] implements it over a file
//! (pread/pwrite/fdatasync, run inside `poll`), [`device::NullDevice`] discards data.
//!
//! Data buffers can cycle instead of being allocated per op: [`ObjectStore::data_buf`] hands
//! out an empty buffer for the next write's data and [`ObjectStore::recycle`] takes back read
//! results the caller is done with (both have allocating/dropping defaults).
//! Transactions cycle too ([`ObjectStore::transaction`] hands out an emptied one), and carry
//! their small byte strings inline (object names, attribute values, omap keys and values,
//! [`ObjectId`], [`AttrValue`], [`OmapKey`], [`OmapValue`]), so a write such as the OSD's (data,
//! version attribute, PG log entry) need not allocate at all; larger ones spill to the heap.
//!
//! Read data need not be copied either. A store that holds a read's bytes contiguous in memory
//! serves it at once and borrowed ([`ObjectStore::read_in_place`], memstore's pages); one whose
//! bytes land in a device buffer may lend that buffer ([`ObjectStore::read_lent`] completes with
//! [`Done::Lent`], bdevstore's reads of one chunk) until the caller ends the loan with
//! [`ObjectStore::give_back`]. The OSD encodes its reply straight from either, so a read's
//! bytes are copied once, into the connection, not first into a `Vec`.
//!
//! Metadata reads ([`ObjectStore::stat`], attributes, omap, listing) are synchronous: both
//! engines keep all metadata resident in memory (bdevstore rebuilds it on mount), so they never
//! wait on the device. Only object *data* reads are ticketed.
//!
//! Visibility: a transaction's effects are visible to reads no later than its completion;
//! between submit and completion a read may or may not see them (the OSD orders per object).
//!
//! ## Invariants every engine keeps
//! - Completions of transactions are delivered in submission order among successful ones; a
//!   transaction that fails validation has no effect at all.
//! - A data read never returns wrong bytes: a checksum mismatch is [`StoreError::Checksum`].
//! - [`StoreError::NoSpace`] leaves the store consistent and usable (removes still work).

pub mod device;
pub mod drive;
mod error;
pub mod meta;
pub mod omap;
mod spare;
mod stream_copy;
#[cfg(feature = "testkit")]
pub mod testkit;
mod types;
mod validate;

pub use error::StoreError;
pub use spare::SpareBufs;
pub use stream_copy::extend_streaming;
pub use types::{
    AttrName, AttrValue, CollectionId, Completion, Done, Lent, ListPage, ObjectId, ObjectStat,
    OmapKey, OmapSetEntries, OmapValue, Op, Ticket, Transaction, MAX_OBJECT_SIZE,
    OBJECT_NAME_INLINE,
};
pub use validate::{validate, StoreView};

use std::collections::BTreeMap;

/// Omap entries in key order.
pub type OmapEntries = Vec<(Vec<u8>, Vec<u8>)>;

/// One shard's object store. See the crate docs for the submit + poll contract.
pub trait ObjectStore {
    /// Queue a transaction. Its outcome (`Done::Committed` once durable, or the error that
    /// rejected it as a whole) arrives through [`ObjectStore::poll`].
    fn submit(&mut self, txn: Transaction) -> Ticket;

    /// Queue a read of `len` bytes at `off` (clipped to the object size; holes are zeros).
    /// The outcome is `Done::Data(bytes)` or an error, through [`ObjectStore::poll`].
    fn read(&mut self, cid: CollectionId, oid: &ObjectId, off: u64, len: u64) -> Ticket;

    /// The same read, for a caller that can take its bytes borrowed: the store may complete it
    /// with `Done::Lent`, leaving the bytes in the buffer the device read them into, where
    /// [`ObjectStore::read`] would copy them out into a `Vec` (`Done::Data`, which may still
    /// come). The caller reads them with [`ObjectStore::lent`] and must end the loan with
    /// [`ObjectStore::give_back`] (a reply encoded from them, say). Default: `read`.
    fn read_lent(&mut self, cid: CollectionId, oid: &ObjectId, off: u64, len: u64) -> Ticket {
        self.read(cid, oid, off, len)
    }

    /// The bytes of a loan from this store; `None` for a loan that is not this store's (or
    /// has ended). Default: `None` (a store that never lends).
    fn lent(&self, _loan: &Lent) -> Option<&[u8]> {
        None
    }

    /// Ends a loan: its buffer goes back to the store. Default: nothing to give back.
    fn give_back(&mut self, _loan: Lent) {}

    /// A read's bytes as a `Vec`, however they came: lent bytes are copied out (into a
    /// [`ObjectStore::data_buf`]) and the loan ended. `None` for `Done::Committed`, or a loan
    /// that is not this store's.
    fn take_data(&mut self, done: Done) -> Option<Vec<u8>> {
        match done {
            Done::Data(d) => Some(d),
            Done::Committed => None,
            Done::Lent(loan) => {
                let bytes = self.lent(&loan).map(<[u8]>::len);
                let data = bytes.map(|n| {
                    let mut v = self.data_buf(n);
                    v.extend_from_slice(self.lent(&loan).unwrap_or_default());
                    v
                });
                self.give_back(loan);
                data
            }
        }
    }

    /// The same read, served now and borrowed, where the store holds its bytes contiguous in
    /// memory: `Some(Ok(bytes))` (clipped to the object size, as [`ObjectStore::read`]),
    /// `Some(Err(_))` for the error `read` would give, `None` when it cannot (the bytes are on
    /// a device, cross a page or a hole): then use `read`. A caller that answers from the
    /// borrow skips the copy into a buffer and the round trip through `poll`. The default is
    /// `None`.
    fn read_in_place(
        &self,
        _cid: CollectionId,
        _oid: &ObjectId,
        _off: u64,
        _len: u64,
    ) -> Option<Result<&[u8], StoreError>> {
        None
    }

    /// Advance the store: reap device completions, run background work in bounded steps, and
    /// append finished operations to `out`. Returns how many were appended. Never blocks.
    fn poll(&mut self, out: &mut Vec<Completion>) -> usize;

    /// True when nothing is queued or in flight (a caller may stop polling).
    fn is_idle(&self) -> bool;

    /// Size of an object.
    fn stat(&self, cid: CollectionId, oid: &ObjectId) -> Result<ObjectStat, StoreError>;

    /// One attribute (`NotFound` if the object or the attribute is missing).
    fn get_attr(
        &self,
        cid: CollectionId,
        oid: &ObjectId,
        name: &str,
    ) -> Result<Vec<u8>, StoreError>;

    /// All attributes of an object.
    fn get_attrs(
        &self,
        cid: CollectionId,
        oid: &ObjectId,
    ) -> Result<BTreeMap<String, Vec<u8>>, StoreError>;

    /// The values of the given omap keys that exist.
    fn omap_get(
        &self,
        cid: CollectionId,
        oid: &ObjectId,
        keys: &[Vec<u8>],
    ) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StoreError>;

    /// Up to `max` omap entries in key order, strictly after `after` (from the start if `None`).
    fn omap_range(
        &self,
        cid: CollectionId,
        oid: &ObjectId,
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<OmapEntries, StoreError>;

    /// Up to `max` object ids of a collection in order, strictly after `after`.
    fn list(
        &self,
        cid: CollectionId,
        after: Option<&ObjectId>,
        max: usize,
    ) -> Result<ListPage, StoreError>;

    /// All collections, in order.
    fn list_collections(&self) -> Vec<CollectionId>;

    /// How many objects collection `cid` holds (0 when it does not exist). Cheap (an index
    /// lookup, no listing): the OSD reports its PGs' object counts from it.
    fn collection_len(&self, cid: CollectionId) -> usize;

    /// An empty buffer with room for at least `len` bytes, to fill with the data of the
    /// caller's next write (`Op::Write::data`). An engine that consumes write data (copies it
    /// into its own I/O buffers) hands such buffers out again here, and read results come from
    /// the same pool, so a steady stream of 4 KiB writes and reads need not allocate (a 4 KiB
    /// heap allocation and free cost more than a 4 KiB copy). Default: allocates.
    fn data_buf(&mut self, len: usize) -> Vec<u8> {
        Vec::with_capacity(len)
    }

    /// A buffer from [`ObjectStore::data_buf`] holding a copy of `data`: the caller's next
    /// write data, copied the way that suits the engine. Default: an ordinary copy. An engine
    /// whose spare buffers come back cold and that does not read write data again soon (its
    /// buffer becomes the object's page, as in memstore) copies with streaming stores
    /// ([`extend_streaming`]); one that packs write data into its own I/O buffers right away
    /// wants it in the cache, as the default leaves it.
    fn data_buf_from(&mut self, data: &[u8]) -> Vec<u8> {
        let mut v = self.data_buf(data.len());
        v.extend_from_slice(data);
        v
    }

    /// Gives back a buffer the caller no longer needs (read data once sent, say), for the
    /// engine to reuse. Default: dropped.
    fn recycle(&mut self, buf: Vec<u8>) {
        drop(buf);
    }

    /// An empty transaction to fill for the caller's next `submit`. An engine that consumes
    /// the transactions it applies hands their emptied op lists out again here, so a steady
    /// stream of writes need not allocate one per transaction. Default: a new one.
    fn transaction(&mut self) -> Transaction {
        Transaction::new()
    }
}
