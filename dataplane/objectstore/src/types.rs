use std::fmt;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::StoreError;

/// Largest object size any engine accepts (1 TiB); bounds offset arithmetic.
pub const MAX_OBJECT_SIZE: u64 = 1 << 40;

/// A collection: one per placement group. The OSD encodes (pool, pg) into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CollectionId(pub u64);

/// Bytes of an object name kept inline in an [`ObjectId`]; a longer name goes to the heap.
pub const OBJECT_NAME_INLINE: usize = 48;

/// An object name; objects sort by their bytes.
///
/// The bytes live inline up to [`OBJECT_NAME_INLINE`] (RBD's `rbd_data.<id>.<16 hex>` and
/// our own names fit): a write names its object several times in its transaction (the data,
/// its version attribute, the PG log), and each copy was an allocation; a hash map keyed by
/// it compares the bytes in its bucket, not behind a pointer. It serialises as a sequence of
/// bytes, exactly as the `Vec<u8>` it replaced.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectId(pub SmallVec<[u8; OBJECT_NAME_INLINE]>);

impl ObjectId {
    pub fn from_slice(name: &[u8]) -> Self {
        ObjectId(SmallVec::from_slice(name))
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for ObjectId {
    fn from(v: Vec<u8>) -> Self {
        ObjectId(SmallVec::from_vec(v))
    }
}

impl From<&[u8]> for ObjectId {
    fn from(v: &[u8]) -> Self {
        ObjectId::from_slice(v)
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({:?})", String::from_utf8_lossy(&self.0))
    }
}

impl From<&str> for ObjectId {
    fn from(s: &str) -> Self {
        ObjectId::from_slice(s.as_bytes())
    }
}

/// An omap key in a transaction and in memstore: inline up to 24 bytes (the OSD's PG log
/// keys are 16), serialised as a byte sequence like the `Vec<u8>` it replaced.
pub type OmapKey = SmallVec<[u8; 24]>;
/// An omap value: inline up to 64 bytes (a PG log entry: op, client id, tid, object name).
pub type OmapValue = SmallVec<[u8; 64]>;
/// An attribute value: inline up to 24 bytes (the OSD's version attribute is 16).
pub type AttrValue = SmallVec<[u8; 24]>;
/// The entries of one `OmapSet`: one inline (the OSD sets one log entry per write).
pub type OmapSetEntries = SmallVec<[(OmapKey, OmapValue); 1]>;

/// An attribute's name in a transaction: usually a constant of the caller's (the OSD sets
/// its version attribute on every write), borrowed for free; owned when built at run time.
pub type AttrName = std::borrow::Cow<'static, str>;

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Fails with `AlreadyExists` if present.
    CreateCollection { cid: CollectionId },
    /// Fails with `NotFound` if missing, `NotEmpty` if it holds objects.
    RemoveCollection { cid: CollectionId },
    /// Creates the object if missing.
    Touch { cid: CollectionId, oid: ObjectId },
    /// Creates the object if missing; extends the size if needed.
    Write {
        cid: CollectionId,
        oid: ObjectId,
        off: u64,
        data: Vec<u8>,
    },
    /// Makes `[off, off+len)` read as zeros; creates/extends like a write.
    Zero {
        cid: CollectionId,
        oid: ObjectId,
        off: u64,
        len: u64,
    },
    /// Sets the size (shrinking drops data, growing reads as zeros); creates if missing.
    Truncate {
        cid: CollectionId,
        oid: ObjectId,
        size: u64,
    },
    /// Fails with `NotFound` if missing.
    Remove { cid: CollectionId, oid: ObjectId },
    /// Creates the object if missing.
    SetAttr {
        cid: CollectionId,
        oid: ObjectId,
        name: AttrName,
        value: AttrValue,
    },
    /// The object must exist; a missing attribute is not an error.
    RmAttr {
        cid: CollectionId,
        oid: ObjectId,
        name: AttrName,
    },
    /// Creates the object if missing.
    OmapSet {
        cid: CollectionId,
        oid: ObjectId,
        entries: OmapSetEntries,
    },
    /// The object must exist; missing keys are not an error.
    OmapRm {
        cid: CollectionId,
        oid: ObjectId,
        keys: Vec<OmapKey>,
    },
}

impl Op {
    /// The collection the op addresses.
    pub fn cid(&self) -> CollectionId {
        match self {
            Op::CreateCollection { cid } | Op::RemoveCollection { cid } => *cid,
            Op::Touch { cid, .. }
            | Op::Write { cid, .. }
            | Op::Zero { cid, .. }
            | Op::Truncate { cid, .. }
            | Op::Remove { cid, .. }
            | Op::SetAttr { cid, .. }
            | Op::RmAttr { cid, .. }
            | Op::OmapSet { cid, .. }
            | Op::OmapRm { cid, .. } => *cid,
        }
    }
}

/// An ordered list of operations applied atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    pub ops: Vec<Op>,
}

impl Transaction {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn push(&mut self, op: Op) -> &mut Self {
        self.ops.push(op);
        self
    }
    pub fn create_collection(&mut self, cid: CollectionId) -> &mut Self {
        self.push(Op::CreateCollection { cid })
    }
    pub fn write(&mut self, cid: CollectionId, oid: &ObjectId, off: u64, data: &[u8]) -> &mut Self {
        self.push(Op::Write {
            cid,
            oid: oid.clone(),
            off,
            data: data.to_vec(),
        })
    }
    pub fn set_attr(
        &mut self,
        cid: CollectionId,
        oid: &ObjectId,
        name: &str,
        v: &[u8],
    ) -> &mut Self {
        self.push(Op::SetAttr {
            cid,
            oid: oid.clone(),
            name: name.to_owned().into(),
            value: v.into(),
        })
    }
    pub fn remove(&mut self, cid: CollectionId, oid: &ObjectId) -> &mut Self {
        self.push(Op::Remove {
            cid,
            oid: oid.clone(),
        })
    }
    /// Bytes of object data the transaction carries (for accounting and benchmarks).
    pub fn data_bytes(&self) -> u64 {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Write { data, .. } => data.len() as u64,
                _ => 0,
            })
            .sum()
    }
}

/// Names one submitted operation; unique per store instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// What a successful operation produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Done {
    /// A transaction is applied and durable.
    Committed,
    /// The bytes of a read.
    Data(Vec<u8>),
    /// The bytes of a read, left in the store's own buffer: only for
    /// [`crate::ObjectStore::read_lent`].
    Lent(Lent),
}

/// Read bytes a store lends out of the buffer the read landed in (a device buffer) instead of
/// copying them into a `Vec`: borrow them with [`crate::ObjectStore::lent`], end the loan with
/// [`crate::ObjectStore::give_back`]. Neither `Clone` nor `Copy`, so a loan ends once. A loan
/// never given back keeps its buffer out of the store's pool until the store is dropped (a
/// leak, not a fault: the store allocates another).
///
/// Made only by the store that lends: `lender` names that store (an engine gives each of its
/// instances a distinct one, so a loan handed to another store is refused, not misread),
/// `slot` names the buffer in it, and the bytes are `len` bytes at `off` in that buffer.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a lent buffer goes back to its store with `ObjectStore::give_back`"]
pub struct Lent {
    lender: u32,
    slot: u32,
    off: u32,
    len: u32,
}

impl Lent {
    /// For an engine instance `lender` lending `len` bytes at `off` of its buffer `slot`.
    pub fn new(lender: u32, slot: u32, off: u32, len: u32) -> Lent {
        Lent {
            lender,
            slot,
            off,
            len,
        }
    }

    /// The lending store instance.
    pub fn lender(&self) -> u32 {
        self.lender
    }

    /// The lending store's name for the buffer.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// Where the bytes start in the buffer.
    pub fn off(&self) -> usize {
        self.off as usize
    }

    /// How many bytes were read.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True for a read of no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The outcome of one ticketed operation, delivered on the submitting shard.
#[derive(Debug, PartialEq, Eq)]
pub struct Completion {
    pub ticket: Ticket,
    pub result: Result<Done, StoreError>,
}

/// Result of `stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectStat {
    pub size: u64,
}

/// One page of a collection listing. `next` is the cursor to pass as `after` for the next page
/// (`None` when the listing is complete).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListPage {
    pub objects: Vec<ObjectId>,
    pub next: Option<ObjectId>,
}
