//! `carmine-osd list-objects`: every client object a stopped OSD's bdevstore holds, read whole,
//! with its version and checksums (the model is Ceph's `ceph-objectstore-tool --op list`).
//!
//! It answers "what does this OSD's own store hold?" without the OSD: replication tests compare
//! the copies of a pool across OSDs with it, and an operator can see what a store holds after a
//! failure. In the tools' environment ([`crate::bdev_tool`]) it mounts each requested shard's
//! partition ([`BdevStore::mount`]) and [`walk`]s it:
//!
//! - every PG **data** collection (a PG's meta collection, [`crate::pg::META_BIT`], holds its
//!   log, not client objects, and is skipped), in collection order, objects in name order;
//! - per object: pool and PG (from the collection id, [`PgKey::split_cid`]), name, version (the
//!   [`VERSION_ATTR`] attribute, [`version_of_key`]; `null` when the object has none), size,
//!   CRC-32C and xxh64 (seed 0) of its bytes, read whole through the store's ticketed
//!   [`ObjectStore::read`] in pieces of [`READ_PIECE`] (so a large object costs no more
//!   memory than a piece), each piece polled for until its completion arrives, for at most a
//!   bounded time.
//!
//! An object that cannot be read (a checksum error, a malformed version attribute, a short
//! read) is listed with `error` set and the walk goes on; a store that does not answer a read
//! within the bound, or a collection that cannot be listed, stops the tool: it could not run.
//! `main` maps this to the exit status: 0 every object read, 1 some object in error, 2 the
//! listing could not run.
//!
//! ## The OSD must be stopped
//! Mounting replays the journal, wipes a torn tail record and may write; the OSD's own mount of
//! the same partition would not know of either, and its writes would race the tool's reads.
//! Nothing here can tell a running OSD from a stopped one, so nothing is refused: stopping the
//! OSD is the operator's job. To write as little as the store lets it, the tool mounts with no
//! interval checkpoints and the cleaner only woken by a store without a free segment, and does
//! not shut the store down (a clean shutdown writes a checkpoint): the store is dropped once
//! idle, as it was mounted, and the next mount replays the same journal.

use std::time::{Duration, Instant};

use carmine_bdevstore::{BdevStore, MountOptions};
use carmine_objectstore::{CollectionId, Completion, ObjectId, ObjectStore, StoreError};
use carmine_spdk::{Spdk, SpdkBlockDevice};
use serde::{Serialize, Serializer};

use crate::bdev_tool::{with_bdev, BdevArgs, ToolEnvError, BDEV};
use crate::pg::PgKey;
use crate::pglog::{version_of_key, Version, VERSION_ATTR};

/// Bytes of an object read at once.
pub const READ_PIECE: u64 = 4 << 20;
/// Object ids listed per page of a collection.
const LIST_PAGE: usize = 1024;
/// How long one read may take before the store counts as stuck.
pub const READ_WAIT: Duration = Duration::from_secs(30);

/// Why the listing could not run (objects that cannot be read are in the listing instead).
#[derive(Debug, thiserror::Error)]
pub enum ObjectsToolError {
    #[error(transparent)]
    Env(#[from] ToolEnvError),
    #[error("SPDK: {0}")]
    Spdk(#[from] carmine_spdk::SpdkError),
    #[error("shard {shard}: mount: {source}")]
    Mount { shard: usize, source: StoreError },
    #[error("shard {shard}: listing collection {cid:#x}: {source}")]
    List {
        shard: usize,
        cid: u64,
        source: StoreError,
    },
    #[error(
        "shard {shard}: the read of {len} bytes at {off} of pool {pool} pg {pg} object {name:?} \
         did not complete within {waited:?}: the store is stuck"
    )]
    ReadStuck {
        shard: usize,
        pool: u32,
        pg: u32,
        name: String,
        off: u64,
        len: u64,
        waited: Duration,
    },
    #[error("shard {shard}: the store did not become idle after the listing: {source}")]
    Drain { shard: usize, source: StoreError },
}

/// Why one object could not be read whole (listed in its entry; the walk goes on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    #[error("stat: {0}")]
    Stat(StoreError),
    #[error("version attribute: {0}")]
    Attr(StoreError),
    #[error("version attribute of {0} bytes (16 expected)")]
    BadVersion(usize),
    #[error("read at {off}: {source}")]
    Read { off: u64, source: StoreError },
    #[error("read at {off}: {got} bytes, {want} expected")]
    ShortRead { off: u64, want: u64, got: u64 },
    #[error("read at {off}: the store completed it without data")]
    NoData { off: u64 },
}

/// An object's version as listed: the primary's map epoch when it wrote it and its
/// sequence in the PG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ListedVersion {
    pub epoch: u64,
    pub seq: u64,
}

impl From<Version> for ListedVersion {
    fn from(v: Version) -> Self {
        ListedVersion {
            epoch: v.epoch.0,
            seq: v.seq,
        }
    }
}

/// One object of the listing. Fields an error left unknown are `None` (`null` in JSON): the
/// hashes are set only when every byte was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectEntry {
    /// The store partition (OSD shard) holding it.
    pub shard: usize,
    pub pool: u32,
    pub pg: u32,
    /// The name (lossy UTF-8; `name_hex` holds the bytes of a name that is not UTF-8).
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name_hex: Option<String>,
    pub version: Option<ListedVersion>,
    pub size: Option<u64>,
    /// CRC-32C of the bytes.
    pub crc32c: Option<u32>,
    /// xxh64 (seed 0) of the bytes, as 16 hex digits (a JSON number would lose bits).
    #[serde(serialize_with = "hex64")]
    pub xxh64: Option<u64>,
    #[serde(serialize_with = "display")]
    pub error: Option<ObjectError>,
}

fn hex64<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(h) => s.serialize_str(&format!("{h:016x}")),
        None => s.serialize_none(),
    }
}

fn display<S: Serializer>(e: &Option<ObjectError>, s: S) -> Result<S::Ok, S::Error> {
    match e {
        Some(e) => s.collect_str(e),
        None => s.serialize_none(),
    }
}

impl ObjectEntry {
    /// The entry as one line of text.
    pub fn line(&self) -> String {
        let v = self
            .version
            .map_or_else(|| "-".to_string(), |v| format!("{}'{}", v.epoch, v.seq));
        let mut s = format!(
            "shard {} pool {} pg {} {:?} version {v}",
            self.shard, self.pool, self.pg, self.name
        );
        if let (Some(size), Some(crc), Some(h)) = (self.size, self.crc32c, self.xxh64) {
            s.push_str(&format!(" size {size} crc32c {crc:08x} xxh64 {h:016x}"));
        }
        if let Some(e) = &self.error {
            s.push_str(&format!(" ERROR {e}"));
        }
        s
    }
}

/// Lists and reads the client objects of the shards of the store on the bdev `args` names.
pub fn run(args: &BdevArgs) -> Result<Vec<ObjectEntry>, ObjectsToolError> {
    with_bdev("carmine-list-objects", args, |spdk| {
        let mut out = Vec::new();
        for &shard in &args.shards {
            list_shard(spdk, shard, &mut out)?;
        }
        Ok(out)
    })
}

fn list_shard(
    spdk: &Spdk,
    shard: usize,
    out: &mut Vec<ObjectEntry>,
) -> Result<(), ObjectsToolError> {
    let dev = SpdkBlockDevice::open(spdk.thread(), BDEV)?;
    let opts = MountOptions {
        shard,
        // No checkpoint for the journal the mount replayed, and the cleaner only for a store
        // without a free segment: a listing writes as little as the store allows.
        ckpt_interval_blocks: u64::MAX,
        clean_low_water: 1,
        ..MountOptions::default()
    };
    let mut store =
        BdevStore::mount(dev, opts).map_err(|source| ObjectsToolError::Mount { shard, source })?;
    let listed = walk(&mut store, shard, READ_WAIT, out);
    // Whatever the walk did, nothing may be in flight when the device closes.
    let drained = carmine_objectstore::drive::drain(&mut store, &mut Vec::new());
    tracing::info!(shard, stats = ?store.stats(), "listed");
    drop(store);
    listed?;
    drained.map_err(|source| ObjectsToolError::Drain { shard, source })
}

/// Appends every client object of `store` (the partition of `shard`) to `out`: its PG data
/// collections in order, objects in name order, each read whole. A read that does not
/// complete within `read_wait` stops the walk with [`ObjectsToolError::ReadStuck`].
pub fn walk(
    store: &mut dyn ObjectStore,
    shard: usize,
    read_wait: Duration,
    out: &mut Vec<ObjectEntry>,
) -> Result<(), ObjectsToolError> {
    let mut reader = Reader {
        shard,
        wait: read_wait,
        completions: Vec::new(),
    };
    for cid in store.list_collections() {
        let (key, meta) = PgKey::split_cid(cid);
        if meta {
            continue;
        }
        let mut after: Option<ObjectId> = None;
        loop {
            let page = store
                .list(cid, after.as_ref(), LIST_PAGE)
                .map_err(|source| ObjectsToolError::List {
                    shard,
                    cid: cid.0,
                    source,
                })?;
            for oid in &page.objects {
                out.push(reader.object(store, key, cid, oid)?);
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    Ok(())
}

/// Reads objects one piece at a time, polling the store for each piece's completion.
struct Reader {
    shard: usize,
    wait: Duration,
    completions: Vec<Completion>,
}

impl Reader {
    /// The entry of one object: its metadata, then its bytes.
    fn object(
        &mut self,
        store: &mut dyn ObjectStore,
        key: PgKey,
        cid: CollectionId,
        oid: &ObjectId,
    ) -> Result<ObjectEntry, ObjectsToolError> {
        let (name, name_hex) = match std::str::from_utf8(&oid.0) {
            Ok(s) => (s.to_owned(), None),
            Err(_) => (
                String::from_utf8_lossy(&oid.0).into_owned(),
                Some(oid.0.iter().map(|b| format!("{b:02x}")).collect()),
            ),
        };
        let mut e = ObjectEntry {
            shard: self.shard,
            pool: key.pool,
            pg: key.pg,
            name,
            name_hex,
            version: None,
            size: None,
            crc32c: None,
            xxh64: None,
            error: None,
        };
        match store.get_attr(cid, oid, VERSION_ATTR) {
            Ok(v) => match version_of_key(&v) {
                Some(v) => e.version = Some(v.into()),
                None => e.error = Some(ObjectError::BadVersion(v.len())),
            },
            Err(StoreError::NotFound(_)) => {}
            Err(err) => e.error = Some(ObjectError::Attr(err)),
        }
        let size = match store.stat(cid, oid) {
            Ok(st) => st.size,
            Err(err) => {
                e.error = Some(ObjectError::Stat(err));
                return Ok(e);
            }
        };
        e.size = Some(size);
        let mut crc = 0u32;
        let mut xxh = xxhash_rust::xxh64::Xxh64::new(0);
        let mut off = 0;
        while off < size {
            let want = (size - off).min(READ_PIECE);
            match self.read(store, &e, cid, oid, off, want)? {
                Ok(bytes) if bytes.len() as u64 == want => {
                    crc = carmine_checksum::crc32c_append(crc, &bytes);
                    xxh.update(&bytes);
                    store.recycle(bytes);
                }
                Ok(bytes) => {
                    e.error = Some(ObjectError::ShortRead {
                        off,
                        want,
                        got: bytes.len() as u64,
                    });
                    return Ok(e);
                }
                Err(err) => {
                    e.error = Some(err);
                    return Ok(e);
                }
            }
            off += want;
        }
        // Every byte was read: the hashes stand, even next to a bad version attribute.
        e.crc32c = Some(crc);
        e.xxh64 = Some(xxh.digest());
        Ok(e)
    }

    /// One ticketed read of `len` bytes at `off`, polled for until it completes (at most
    /// `self.wait`). The outer error: the store is stuck; the inner one: this read failed.
    fn read(
        &mut self,
        store: &mut dyn ObjectStore,
        e: &ObjectEntry,
        cid: CollectionId,
        oid: &ObjectId,
        off: u64,
        len: u64,
    ) -> Result<Result<Vec<u8>, ObjectError>, ObjectsToolError> {
        let ticket = store.read(cid, oid, off, len);
        let started = Instant::now();
        for polls in 0u64.. {
            self.completions.clear();
            store.poll(&mut self.completions);
            // Only this read is in flight: any other completion is stale, and dropped.
            if let Some(i) = self.completions.iter().position(|c| c.ticket == ticket) {
                let c = self.completions.swap_remove(i);
                return Ok(match c.result.map(|d| store.take_data(d)) {
                    Ok(Some(bytes)) => Ok(bytes),
                    Ok(None) => Err(ObjectError::NoData { off }),
                    Err(source) => Err(ObjectError::Read { off, source }),
                });
            }
            if polls % 256 == 255 && started.elapsed() > self.wait {
                break;
            }
        }
        Err(ObjectsToolError::ReadStuck {
            shard: self.shard,
            pool: e.pool,
            pg: e.pg,
            name: e.name.clone(),
            off,
            len,
            waited: started.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use carmine_memstore::MemStore;
    use carmine_objectstore::{drive, ListPage, ObjectStat, OmapEntries, Ticket, Transaction};

    use super::*;
    use crate::pglog::version_key;
    use carmine_wire::Epoch;

    fn bytes(n: usize, salt: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ salt).collect()
    }

    fn v(epoch: u64, seq: u64) -> Version {
        Version {
            epoch: Epoch(epoch),
            seq,
        }
    }

    /// Writes `data` as object `name` of PG `key` (creating its collection if `create`), with
    /// a version attribute when `version` is given.
    fn put(
        s: &mut MemStore,
        key: PgKey,
        create: bool,
        name: &[u8],
        data: &[u8],
        version: Option<Version>,
    ) {
        let oid = ObjectId::from_slice(name);
        let mut t = Transaction::new();
        if create {
            t.create_collection(key.cid());
        }
        t.write(key.cid(), &oid, 0, data);
        if let Some(ver) = version {
            t.set_attr(key.cid(), &oid, VERSION_ATTR, &version_key(ver));
        }
        drive::commit(s, t).unwrap();
    }

    #[test]
    fn lists_data_collections_only_with_versions_sizes_and_hashes() {
        let mut s = MemStore::new();
        let a = PgKey { pool: 1, pg: 3 };
        let b = PgKey { pool: 2, pg: 0 };
        let big = bytes(READ_PIECE as usize * 2 + 123, 7);
        put(&mut s, a, true, b"x", b"hello", Some(v(4, 1)));
        put(&mut s, a, false, b"big", &big, Some(v(4, 2)));
        put(&mut s, b, true, b"empty", b"", None);
        put(&mut s, b, false, &[0xff, 0x00], b"?", Some(v(9, 1 << 40)));
        // The PG's meta collection (the log) holds no client objects: skipped.
        let mut t = Transaction::new();
        t.create_collection(a.meta_cid());
        t.write(
            a.meta_cid(),
            &ObjectId::from("log"),
            0,
            b"not a client object",
        );
        drive::commit(&mut s, t).unwrap();

        let mut out = Vec::new();
        walk(&mut s, 5, Duration::from_secs(5), &mut out).unwrap();
        let names: Vec<(u32, u32, &str)> = out
            .iter()
            .map(|e| (e.pool, e.pg, e.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (1, 3, "big"),
                (1, 3, "x"),
                (2, 0, "empty"),
                (2, 0, "\u{fffd}\0")
            ]
        );
        assert!(out.iter().all(|e| e.shard == 5 && e.error.is_none()));
        let x = &out[1];
        assert_eq!(x.version, Some(ListedVersion { epoch: 4, seq: 1 }));
        assert_eq!(x.size, Some(5));
        assert_eq!(x.crc32c, Some(carmine_checksum::crc32c(b"hello")));
        assert_eq!(x.xxh64, Some(xxhash_rust::xxh64::xxh64(b"hello", 0)));
        // Read in pieces, hashed as one.
        assert_eq!(out[0].size, Some(big.len() as u64));
        assert_eq!(out[0].crc32c, Some(carmine_checksum::crc32c(&big)));
        assert_eq!(out[0].xxh64, Some(xxhash_rust::xxh64::xxh64(&big, 0)));
        // No version attribute: null; an empty object has the hashes of no bytes.
        assert_eq!(out[2].version, None);
        assert_eq!(out[2].crc32c, Some(0));
        assert_eq!(out[2].xxh64, Some(xxhash_rust::xxh64::xxh64(b"", 0)));
        // A name that is not UTF-8 keeps its bytes in name_hex.
        assert_eq!(out[3].name_hex.as_deref(), Some("ff00"));
        assert_eq!(
            out[3].version,
            Some(ListedVersion {
                epoch: 9,
                seq: 1 << 40
            })
        );

        let j = serde_json::to_value(&out).unwrap();
        assert_eq!(j[1]["version"], serde_json::json!({"epoch": 4, "seq": 1}));
        assert_eq!(
            j[1]["xxh64"],
            format!("{:016x}", xxhash_rust::xxh64::xxh64(b"hello", 0))
        );
        assert_eq!(j[1]["error"], serde_json::Value::Null);
        assert_eq!(j[2]["version"], serde_json::Value::Null);
        assert!(
            j[1].get("name_hex").is_none(),
            "only for names that are not UTF-8"
        );
        assert!(x.line().contains("version 4'1 size 5"), "{}", x.line());
    }

    #[test]
    fn many_objects_are_listed_across_pages() {
        let mut s = MemStore::new();
        let k = PgKey { pool: 1, pg: 0 };
        let n = LIST_PAGE * 2 + 5;
        for i in 0..n {
            put(
                &mut s,
                k,
                i == 0,
                format!("o{i:05}").as_bytes(),
                &[i as u8],
                Some(v(1, i as u64 + 1)),
            );
        }
        let mut out = Vec::new();
        walk(&mut s, 0, Duration::from_secs(5), &mut out).unwrap();
        assert_eq!(out.len(), n);
        for (i, e) in out.iter().enumerate() {
            assert_eq!(e.name, format!("o{i:05}"));
            assert_eq!(e.version.map(|v| v.seq), Some(i as u64 + 1));
            assert_eq!(e.crc32c, Some(carmine_checksum::crc32c(&[i as u8])));
        }
    }

    /// A memstore whose reads of one object fail, or never complete.
    struct Faulty {
        inner: MemStore,
        bad: ObjectId,
        fail: Option<StoreError>,
        swallowed: Vec<Ticket>,
    }

    impl ObjectStore for Faulty {
        fn submit(&mut self, txn: Transaction) -> Ticket {
            self.inner.submit(txn)
        }
        fn read(&mut self, cid: CollectionId, oid: &ObjectId, off: u64, len: u64) -> Ticket {
            let t = self.inner.read(cid, oid, off, len);
            if *oid == self.bad {
                self.swallowed.push(t);
            }
            t
        }
        fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
            let (n0, mut mine) = (out.len(), Vec::new());
            self.inner.poll(&mut mine);
            for mut c in mine {
                if self.swallowed.contains(&c.ticket) {
                    match &self.fail {
                        Some(e) => c.result = Err(e.clone()),
                        None => continue,
                    }
                }
                out.push(c);
            }
            out.len() - n0
        }
        fn is_idle(&self) -> bool {
            self.inner.is_idle()
        }
        fn stat(&self, cid: CollectionId, oid: &ObjectId) -> Result<ObjectStat, StoreError> {
            self.inner.stat(cid, oid)
        }
        fn get_attr(
            &self,
            cid: CollectionId,
            oid: &ObjectId,
            name: &str,
        ) -> Result<Vec<u8>, StoreError> {
            self.inner.get_attr(cid, oid, name)
        }
        fn get_attrs(
            &self,
            cid: CollectionId,
            oid: &ObjectId,
        ) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
            self.inner.get_attrs(cid, oid)
        }
        fn omap_get(
            &self,
            cid: CollectionId,
            oid: &ObjectId,
            keys: &[Vec<u8>],
        ) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StoreError> {
            self.inner.omap_get(cid, oid, keys)
        }
        fn omap_range(
            &self,
            cid: CollectionId,
            oid: &ObjectId,
            after: Option<&[u8]>,
            max: usize,
        ) -> Result<OmapEntries, StoreError> {
            self.inner.omap_range(cid, oid, after, max)
        }
        fn list(
            &self,
            cid: CollectionId,
            after: Option<&ObjectId>,
            max: usize,
        ) -> Result<ListPage, StoreError> {
            self.inner.list(cid, after, max)
        }
        fn collection_len(&self, cid: CollectionId) -> usize {
            self.inner.collection_len(cid)
        }
        fn list_collections(&self) -> Vec<CollectionId> {
            self.inner.list_collections()
        }
    }

    fn faulty(fail: Option<StoreError>) -> Faulty {
        let mut inner = MemStore::new();
        let k = PgKey { pool: 1, pg: 1 };
        put(&mut inner, k, true, b"a", b"aaa", Some(v(2, 1)));
        put(&mut inner, k, false, b"b", b"bbb", Some(v(2, 2)));
        put(&mut inner, k, false, b"c", b"ccc", Some(v(2, 3)));
        // A version attribute that is no version.
        let mut t = Transaction::new();
        t.set_attr(k.cid(), &ObjectId::from("c"), VERSION_ATTR, b"short");
        drive::commit(&mut inner, t).unwrap();
        Faulty {
            inner,
            bad: ObjectId::from("b"),
            fail,
            swallowed: Vec::new(),
        }
    }

    #[test]
    fn an_object_that_cannot_be_read_is_listed_with_its_error_and_the_walk_goes_on() {
        let bad = StoreError::Checksum {
            block: 7,
            stored: 1,
            computed: 2,
        };
        let mut s = faulty(Some(bad.clone()));
        let mut out = Vec::new();
        walk(&mut s, 0, Duration::from_secs(5), &mut out).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].error, None);
        assert_eq!(out[0].crc32c, Some(carmine_checksum::crc32c(b"aaa")));
        assert_eq!(
            out[1].error,
            Some(ObjectError::Read {
                off: 0,
                source: bad
            })
        );
        assert_eq!(
            (out[1].size, out[1].crc32c, out[1].xxh64),
            (Some(3), None, None)
        );
        assert_eq!(out[1].version, Some(ListedVersion { epoch: 2, seq: 2 }));
        assert_eq!(out[2].error, Some(ObjectError::BadVersion(5)));
        assert_eq!(out[2].version, None);
        assert_eq!(
            out[2].crc32c,
            Some(carmine_checksum::crc32c(b"ccc")),
            "its bytes were read"
        );
        let j = serde_json::to_value(&out).unwrap();
        let msg = j[1]["error"].as_str().unwrap();
        assert!(msg.contains("checksum mismatch at block 7"), "{msg}");
    }

    #[test]
    fn a_read_that_never_completes_stops_the_walk_within_the_bound() {
        let mut s = faulty(None);
        let mut out = Vec::new();
        let t0 = Instant::now();
        let e = walk(&mut s, 3, Duration::from_millis(100), &mut out).unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        match &e {
            ObjectsToolError::ReadStuck {
                shard,
                name,
                waited,
                ..
            } => {
                assert_eq!((*shard, name.as_str()), (3, "b"));
                assert!(*waited >= Duration::from_millis(100));
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("did not complete within"), "{e}");
        assert_eq!(out.len(), 1, "the objects before it are listed");
    }
}
