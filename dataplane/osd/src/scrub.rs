//! A shard's scrub worker: the digest of one PG's collection, read from the shard's store in
//! the background, next to client I/O.
//!
//! The agent asks for a PG's digest ([`DigestRequest`], arriving as `ShardMsg::Scrub` on the
//! shard that holds the PG); the [`Scrubber`] lists the PG's data collection page by page,
//! takes each object's size (`stat`) and version (attribute [`VERSION_ATTR`]) from the store's
//! resident metadata, reads its data with ticketed store reads and computes their CRC-32C,
//! then answers with the digest sorted by name. The shard drives it: [`Scrubber::poll`] once
//! per loop iteration, and [`Scrubber::on_completion`] for each store completion whose ticket
//! is not one of the shard's own ops.
//!
//! Throttle (so client I/O keeps going): at most [`MAX_READS`] reads in flight, each at most
//! [`CHUNK`] bytes (one object's chunks are read one after the other, so its CRC is computed
//! in order), and at most [`LIST_PAGE`] names listed per step. One digest at a time per shard;
//! up to [`MAX_QUEUED`] more wait, further requests are refused at once with
//! [`DigestError::Busy`].
//!
//! What a digest says of an object:
//! - a read error (e.g. bdevstore's checksum mismatch on a flipped byte) is that object's
//!   `crc32c: Err(kind)`, not a failure of the digest;
//! - an object removed while the scrub runs (`NotFound` on stat or read) is left out;
//! - an object written while the scrub runs may mix before and after (the agent rechecks
//!   objects it finds inconsistent);
//! - a PG whose collection does not exist has an empty digest.
//!
//! Invariants: every read this worker submitted is reaped by it before its job answers (a
//! job that fails or whose requester went away stops submitting and drains first), so no
//! completion of a scrub ticket ever reaches the shard's op path; the answer is sorted by
//! name with one entry per object.
//!
//! Allocation: names, pages and the digest list are allocated per object (background work,
//! never on the op path); read buffers go back to the store (`recycle`).

use std::collections::VecDeque;
use std::time::Instant;

use carmine_agent::scrub::{
    DigestError, DigestRequest, ObjectDigest, ObjectVersion, PgId, ReadErrorKind,
};
use carmine_objectstore::{
    CollectionId, Completion, Done, ObjectId, ObjectStore, StoreError, Ticket,
};

use crate::pg::PgKey;
use crate::pglog::{version_of_key, VERSION_ATTR};

/// Reads in flight at once.
pub const MAX_READS: usize = 4;
/// Largest read (one object is read in chunks of this size).
pub const CHUNK: u64 = 256 << 10;
/// Names listed per step.
pub const LIST_PAGE: usize = 64;
/// Requests waiting behind the one being served.
pub const MAX_QUEUED: usize = 8;

/// Where the listing of the collection stands.
enum Listing {
    /// Not listed yet.
    Start,
    /// Listed up to and including this name.
    After(ObjectId),
    /// Nothing more to list (or only the request's names are wanted).
    Done,
}

/// One object being read.
struct Reading {
    ticket: Ticket,
    oid: ObjectId,
    version: Option<ObjectVersion>,
    size: u64,
    /// Bytes read so far, and asked for by the read in flight.
    off: u64,
    want: u64,
    crc: u32,
}

/// The digest being made.
struct Job {
    req: DigestRequest,
    cid: CollectionId,
    started: Instant,
    listing: Listing,
    /// Names to digest next.
    todo: VecDeque<ObjectId>,
    reads: Vec<Reading>,
    out: Vec<ObjectDigest>,
    /// Why the job failed; it answers once its reads are drained.
    failed: Option<DigestError>,
}

/// A shard's scrub worker (see the module docs).
#[derive(Default)]
pub struct Scrubber {
    job: Option<Job>,
    queue: VecDeque<DigestRequest>,
}

fn pg_key(pg: PgId) -> PgKey {
    PgKey {
        pool: pg.pool,
        pg: pg.pg,
    }
}

/// `crc` extended over a read's bytes, and how many there were: lent bytes are checksummed in
/// place and the loan ended, copied ones recycled. `None`: the read brought no bytes.
fn crc_of_read(store: &mut dyn ObjectStore, crc: u32, done: Done) -> Option<(u32, u64)> {
    match done {
        Done::Data(data) => {
            let got = (
                carmine_checksum::crc32c_append(crc, &data),
                data.len() as u64,
            );
            store.recycle(data);
            Some(got)
        }
        Done::Lent(loan) => {
            let got = store
                .lent(&loan)
                .map(|b| (carmine_checksum::crc32c_append(crc, b), b.len() as u64));
            store.give_back(loan);
            got
        }
        Done::Committed => None,
    }
}

fn error_kind(e: &StoreError) -> ReadErrorKind {
    match e {
        StoreError::Checksum { .. } => ReadErrorKind::Checksum,
        StoreError::Io(_) => ReadErrorKind::Io,
        StoreError::Corrupt(_) => ReadErrorKind::Corrupt,
        _ => ReadErrorKind::Other,
    }
}

impl Job {
    fn new(req: DigestRequest) -> Job {
        let cid = pg_key(req.pg).cid();
        let (listing, todo) = if req.objects.is_empty() {
            (Listing::Start, VecDeque::new())
        } else {
            let mut names = req.objects.clone();
            names.sort();
            names.dedup();
            (
                Listing::Done,
                names.into_iter().map(ObjectId::from).collect(),
            )
        };
        Job {
            req,
            cid,
            started: Instant::now(),
            listing,
            todo,
            reads: Vec::with_capacity(MAX_READS),
            out: Vec::new(),
            failed: None,
        }
    }

    /// Lists the next page of names into `todo`.
    fn list(&mut self, store: &dyn ObjectStore) {
        let after = match &self.listing {
            Listing::Done => return,
            Listing::Start => None,
            Listing::After(a) => Some(a),
        };
        match store.list(self.cid, after, LIST_PAGE) {
            Ok(page) => {
                self.todo.extend(page.objects);
                self.listing = page.next.map_or(Listing::Done, Listing::After);
            }
            // The PG has never been written here: nothing to digest.
            Err(StoreError::NotFound(_)) => self.listing = Listing::Done,
            Err(e) => {
                tracing::error!(pg = %self.req.pg, error = %e, "scrub: listing failed");
                self.listing = Listing::Done;
                self.failed = Some(DigestError::List(error_kind(&e)));
            }
        }
    }

    /// Starts the digest of `oid`: metadata now, data by a read (an empty object needs none).
    fn start(&mut self, store: &mut dyn ObjectStore, oid: ObjectId) {
        let size = match store.stat(self.cid, &oid) {
            Ok(s) => s.size,
            Err(StoreError::NotFound(_)) => return, // removed since it was listed
            Err(e) => {
                tracing::warn!(pg = %self.req.pg, object = ?oid, error = %e, "scrub: stat failed");
                self.out.push(ObjectDigest {
                    name: oid.0.into_vec(),
                    version: None,
                    size: 0,
                    crc32c: Err(error_kind(&e)),
                });
                return;
            }
        };
        let version = store
            .get_attr(self.cid, &oid, VERSION_ATTR)
            .ok()
            .and_then(|v| version_of_key(&v))
            .map(|v| ObjectVersion {
                epoch: v.epoch.0,
                seq: v.seq,
            });
        if size == 0 {
            self.out.push(ObjectDigest {
                name: oid.0.into_vec(),
                version,
                size,
                crc32c: Ok(0),
            });
            return;
        }
        let want = size.min(CHUNK);
        let ticket = store.read_lent(self.cid, &oid, 0, want);
        self.reads.push(Reading {
            ticket,
            oid,
            version,
            size,
            off: 0,
            want,
            crc: 0,
        });
    }

    /// Whether no more reads should be started: the job failed, or nobody waits for it.
    fn stopping(&self) -> bool {
        self.failed.is_some() || self.req.reply.is_closed()
    }

    fn finished(&self) -> bool {
        self.reads.is_empty()
            && (self.stopping() || (self.todo.is_empty() && matches!(self.listing, Listing::Done)))
    }

    fn answer(mut self) {
        let pg = self.req.pg;
        let result = match self.failed {
            Some(e) => Err(e),
            None => {
                self.out.sort_by(|a, b| a.name.cmp(&b.name));
                let errors = self.out.iter().filter(|d| d.crc32c.is_err()).count();
                tracing::info!(
                    %pg,
                    objects = self.out.len(),
                    read_errors = errors,
                    ms = self.started.elapsed().as_millis() as u64,
                    "scrub: digest done"
                );
                Ok(self.out)
            }
        };
        // The requester may have given up: nothing to do then.
        let _ = self.req.reply.send(result);
    }
}

impl Scrubber {
    pub fn new() -> Scrubber {
        Scrubber::default()
    }

    /// Whether a digest is being made or waits (the shard must keep polling).
    pub fn busy(&self) -> bool {
        self.job.is_some() || !self.queue.is_empty()
    }

    /// A new request: queued behind the current one, or refused when the queue is full.
    pub fn request(&mut self, req: DigestRequest) {
        if self.queue.len() >= MAX_QUEUED {
            tracing::warn!(pg = %req.pg, "scrub: queue full, request refused");
            let _ = req.reply.send(Err(DigestError::Busy));
            return;
        }
        self.queue.push_back(req);
    }

    /// Advances the current digest (starting the next queued one when there is none): lists
    /// and starts objects while fewer than [`MAX_READS`] reads are in flight, and answers
    /// when done. Returns the work done (0: nothing to do).
    pub fn poll(&mut self, store: &mut dyn ObjectStore) -> usize {
        if self.job.is_none() {
            match self.queue.pop_front() {
                Some(req) => self.job = Some(Job::new(req)),
                None => return 0,
            }
        }
        let Some(job) = self.job.as_mut() else {
            return 0;
        };
        let mut work = 0;
        while job.reads.len() < MAX_READS && !job.stopping() {
            match job.todo.pop_front() {
                Some(oid) => job.start(store, oid),
                None if matches!(job.listing, Listing::Done) => break,
                None => job.list(store),
            }
            work += 1;
        }
        if job.finished() {
            if let Some(job) = self.job.take() {
                job.answer();
            }
            work += 1;
        }
        work
    }

    /// A store completion the shard's op path does not know: taken when it is one of this
    /// worker's reads, given back otherwise.
    pub fn on_completion(
        &mut self,
        c: Completion,
        store: &mut dyn ObjectStore,
    ) -> Result<(), Completion> {
        let Some(job) = self.job.as_mut() else {
            return Err(c);
        };
        let Some(i) = job.reads.iter().position(|r| r.ticket == c.ticket) else {
            return Err(c);
        };
        let r = &mut job.reads[i];
        let done = match c.result.map(|d| crc_of_read(store, r.crc, d)) {
            Ok(Some((crc, got))) => {
                r.crc = crc;
                r.off += got;
                if got < r.want
                    || r.off >= r.size
                    || job.failed.is_some()
                    || job.req.reply.is_closed()
                {
                    // The end of the object (a short read: it shrank meanwhile).
                    Some(Ok(r.crc))
                } else {
                    r.want = (r.size - r.off).min(CHUNK);
                    r.ticket = store.read_lent(job.cid, &r.oid, r.off, r.want);
                    None
                }
            }
            Ok(None) => Some(Err(ReadErrorKind::Other)),
            Err(StoreError::NotFound(_)) => {
                // Removed while being read: as if never listed.
                job.reads.swap_remove(i);
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(pg = %job.req.pg, object = ?r.oid, error = %e, "scrub: read failed");
                Some(Err(error_kind(&e)))
            }
        };
        if let Some(crc32c) = done {
            let r = job.reads.swap_remove(i);
            job.out.push(ObjectDigest {
                name: r.oid.0.into_vec(),
                version: r.version,
                size: r.size,
                crc32c,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carmine_memstore::MemStore;
    use carmine_objectstore::{ObjectStat, Op, Transaction};
    use std::collections::BTreeMap;
    use tokio::sync::oneshot;

    use crate::pglog::version_key;
    use carmine_wire::{Epoch, Version};

    const PG: PgId = PgId { pool: 2, pg: 5 };

    fn cid() -> CollectionId {
        pg_key(PG).cid()
    }

    /// A store whose reads of objects named in `bad` fail with a checksum error, and which
    /// counts reads in flight (the most at once).
    struct Faulty<S> {
        inner: S,
        bad: Vec<Vec<u8>>,
        failing: Vec<Ticket>,
        next: u64,
        inflight: BTreeMap<Ticket, Ticket>,
        max_inflight: usize,
        max_len: u64,
        reads: usize,
    }

    impl<S: ObjectStore> Faulty<S> {
        fn new(inner: S) -> Self {
            Faulty {
                inner,
                bad: Vec::new(),
                failing: Vec::new(),
                next: 1 << 40,
                inflight: BTreeMap::new(),
                max_inflight: 0,
                max_len: 0,
                reads: 0,
            }
        }
    }

    impl<S: ObjectStore> ObjectStore for Faulty<S> {
        fn submit(&mut self, txn: Transaction) -> Ticket {
            self.inner.submit(txn)
        }
        fn read(&mut self, cid: CollectionId, oid: &ObjectId, off: u64, len: u64) -> Ticket {
            self.max_len = self.max_len.max(len);
            self.reads += 1;
            let t = if self.bad.iter().any(|b| b[..] == oid.0[..]) {
                self.next += 1;
                let t = Ticket(self.next);
                self.failing.push(t);
                t
            } else {
                self.inner.read(cid, oid, off, len)
            };
            self.inflight.insert(t, t);
            self.max_inflight = self.max_inflight.max(self.inflight.len());
            t
        }
        fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
            let before = out.len();
            self.inner.poll(out);
            for t in self.failing.drain(..) {
                out.push(Completion {
                    ticket: t,
                    result: Err(StoreError::Checksum {
                        block: 7,
                        stored: 1,
                        computed: 2,
                    }),
                });
            }
            for c in &out[before..] {
                self.inflight.remove(&c.ticket);
            }
            out.len() - before
        }
        fn is_idle(&self) -> bool {
            self.failing.is_empty() && self.inner.is_idle()
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
        ) -> Result<carmine_objectstore::OmapEntries, StoreError> {
            self.inner.omap_range(cid, oid, after, max)
        }
        fn list(
            &self,
            cid: CollectionId,
            after: Option<&ObjectId>,
            max: usize,
        ) -> Result<carmine_objectstore::ListPage, StoreError> {
            self.inner.list(cid, after, max)
        }
        fn collection_len(&self, cid: CollectionId) -> usize {
            self.inner.collection_len(cid)
        }
        fn list_collections(&self) -> Vec<CollectionId> {
            self.inner.list_collections()
        }
    }

    fn commit(store: &mut dyn ObjectStore, txn: Transaction) {
        let t = store.submit(txn);
        let mut out = Vec::new();
        for _ in 0..10_000 {
            store.poll(&mut out);
            if let Some(c) = out.iter().find(|c| c.ticket == t) {
                assert_eq!(c.result, Ok(Done::Committed));
                return;
            }
        }
        panic!("no commit");
    }

    /// Writes `objects` (name, data, version seq: 0 = no version attribute) into the PG,
    /// creating its collection.
    fn fill(store: &mut dyn ObjectStore, objects: &[(&str, Vec<u8>, u64)]) {
        let mut txn = Transaction {
            ops: vec![Op::CreateCollection { cid: cid() }],
        };
        for (name, data, seq) in objects {
            let oid = ObjectId::from(*name);
            txn.ops.push(Op::Touch {
                cid: cid(),
                oid: oid.clone(),
            });
            if !data.is_empty() {
                txn.ops.push(Op::Write {
                    cid: cid(),
                    oid: oid.clone(),
                    off: 0,
                    data: data.clone(),
                });
            }
            if *seq > 0 {
                let v = Version {
                    epoch: Epoch(3),
                    seq: *seq,
                };
                txn.ops.push(Op::SetAttr {
                    cid: cid(),
                    oid,
                    name: VERSION_ATTR.into(),
                    value: version_key(v).as_slice().into(),
                });
            }
        }
        commit(store, txn);
    }

    /// Drives the scrubber and the store as the shard does until `rx` has an answer; counts
    /// the poll iterations.
    fn run(
        s: &mut Scrubber,
        store: &mut dyn ObjectStore,
        mut rx: oneshot::Receiver<Result<Vec<ObjectDigest>, DigestError>>,
    ) -> Result<Vec<ObjectDigest>, DigestError> {
        let mut out = Vec::new();
        for _ in 0..100_000 {
            s.poll(store);
            store.poll(&mut out);
            for c in out.drain(..) {
                if let Err(c) = s.on_completion(c, store) {
                    panic!("a completion the scrubber did not take: {c:?}");
                }
            }
            if let Ok(r) = rx.try_recv() {
                return r;
            }
        }
        panic!("no answer");
    }

    fn ask(
        s: &mut Scrubber,
        pg: PgId,
        objects: &[&str],
    ) -> oneshot::Receiver<Result<Vec<ObjectDigest>, DigestError>> {
        let (tx, rx) = oneshot::channel();
        s.request(DigestRequest {
            pg,
            objects: objects.iter().map(|o| o.as_bytes().to_vec()).collect(),
            reply: tx,
        });
        rx
    }

    /// Asks for a digest and drives the scrubber until it answers.
    fn digest(
        s: &mut Scrubber,
        store: &mut dyn ObjectStore,
        pg: PgId,
        objects: &[&str],
    ) -> Result<Vec<ObjectDigest>, DigestError> {
        let rx = ask(s, pg, objects);
        run(s, store, rx)
    }

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn a_digest_lists_every_object_with_version_size_and_crc() {
        let mut st = Faulty::new(MemStore::new());
        // 150 objects: more than two list pages; sizes from empty to several chunks.
        let mut objects: Vec<(String, Vec<u8>, u64)> = (0..150)
            .map(|i| (format!("obj{i:04}"), data(i * 37, i as u8), i as u64 + 1))
            .collect();
        objects.push(("big".into(), data(CHUNK as usize * 3 + 17, 9), 0));
        objects.push(("empty".into(), Vec::new(), 500));
        let refs: Vec<(&str, Vec<u8>, u64)> = objects
            .iter()
            .map(|(n, d, v)| (n.as_str(), d.clone(), *v))
            .collect();
        fill(&mut st, &refs);
        // An object of another PG is not part of it.
        let other = PgKey { pool: 2, pg: 6 }.cid();
        commit(
            &mut st,
            Transaction {
                ops: vec![
                    Op::CreateCollection { cid: other },
                    Op::Touch {
                        cid: other,
                        oid: ObjectId::from("elsewhere"),
                    },
                ],
            },
        );
        let mut s = Scrubber::new();
        let rx = ask(&mut s, PG, &[]);
        let got = run(&mut s, &mut st, rx).unwrap();
        assert!(!s.busy());
        objects.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got.len(), objects.len());
        for ((name, d, seq), g) in objects.iter().zip(&got) {
            assert_eq!(g.name, name.as_bytes());
            assert_eq!(g.size, d.len() as u64, "{name}");
            assert_eq!(g.crc32c, Ok(carmine_checksum::crc32c(d)), "{name}");
            let want = (*seq > 0).then_some(ObjectVersion {
                epoch: 3,
                seq: *seq,
            });
            assert_eq!(g.version, want, "{name}");
        }
        // Throttled: never more than MAX_READS reads at once, none larger than CHUNK.
        assert!(st.max_inflight <= MAX_READS, "{}", st.max_inflight);
        assert!(st.max_inflight > 1, "reads overlap");
        assert_eq!(st.max_len, CHUNK);
    }

    #[test]
    fn read_errors_are_per_object_and_missing_pgs_are_empty() {
        let mut st = Faulty::new(MemStore::new());
        fill(
            &mut st,
            &[
                ("a", data(100, 1), 1),
                ("b", data(CHUNK as usize + 1, 2), 2),
                ("c", data(10, 3), 3),
            ],
        );
        st.bad.push(b"b".to_vec());
        let mut s = Scrubber::new();
        let got = digest(&mut s, &mut st, PG, &[]).unwrap();
        let names: Vec<&[u8]> = got.iter().map(|d| d.name.as_slice()).collect();
        assert_eq!(names, [b"a".as_slice(), b"b", b"c"]);
        assert_eq!(got[1].crc32c, Err(ReadErrorKind::Checksum));
        assert_eq!(got[1].size, CHUNK + 1);
        assert_eq!(got[1].version, Some(ObjectVersion { epoch: 3, seq: 2 }));
        assert_eq!(got[2].crc32c, Ok(carmine_checksum::crc32c(&data(10, 3))));
        // Only some objects: those that exist, in order.
        let got = digest(&mut s, &mut st, PG, &["c", "zz", "a", "c"]).unwrap();
        let names: Vec<&[u8]> = got.iter().map(|d| d.name.as_slice()).collect();
        assert_eq!(names, [b"a".as_slice(), b"c"]);
        // A PG that was never written here.
        let none = PgId { pool: 9, pg: 1 };
        assert_eq!(digest(&mut s, &mut st, none, &[]), Ok(Vec::new()));
    }

    #[test]
    fn requests_queue_one_at_a_time_and_a_full_queue_refuses() {
        let mut st = Faulty::new(MemStore::new());
        fill(&mut st, &[("a", data(5000, 1), 1)]);
        let mut s = Scrubber::new();
        let mut rxs = vec![ask(&mut s, PG, &[])];
        // The first job starts; MAX_QUEUED more wait their turn, one more is refused.
        s.poll(&mut st);
        assert!(s.job.is_some() && s.queue.is_empty());
        rxs.extend((0..MAX_QUEUED).map(|_| ask(&mut s, PG, &[])));
        let mut refused = ask(&mut s, PG, &[]);
        assert_eq!(refused.try_recv(), Ok(Err(DigestError::Busy)));
        assert_eq!(s.queue.len(), MAX_QUEUED);
        let first = run(&mut s, &mut st, rxs.remove(0)).unwrap();
        assert_eq!(first.len(), 1);
        for rx in rxs {
            assert_eq!(run(&mut s, &mut st, rx).unwrap(), first);
        }
        assert!(!s.busy());
        // A requester that went away: its job reads nothing, and the next one runs.
        let reads = st.reads;
        drop(ask(&mut s, PG, &[]));
        s.poll(&mut st);
        assert!(!s.busy());
        assert_eq!(st.reads, reads);
        let rx = ask(&mut s, PG, &["a"]);
        assert_eq!(run(&mut s, &mut st, rx).unwrap(), first);
        // Completions of other tickets are given back.
        let foreign = || Completion {
            ticket: Ticket(u64::MAX),
            result: Ok(Done::Committed),
        };
        assert_eq!(s.on_completion(foreign(), &mut st), Err(foreign()));
    }

    /// The store's own checksum catches a byte flipped on the device: bdevstore on a file,
    /// one byte of an object's data changed in the file while the store is unmounted.
    #[test]
    fn a_byte_flipped_in_a_bdevstore_file_is_a_checksum_error() {
        use carmine_bdevstore::{format, BdevStore, FormatOptions, MountOptions};
        use carmine_objectstore::device::FileDevice;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev");
        let blocks = 64 * 256; // 64 MiB, sparse
        let mut d = FileDevice::open(&path, 4096, blocks).unwrap();
        d.set_sync(false);
        format(&mut d, &FormatOptions::default()).unwrap();
        let mut st = BdevStore::mount(d, MountOptions::default()).unwrap();
        let pattern: Vec<u8> = b"scrub-me-pattern-0123456789abcdef"
            .iter()
            .copied()
            .cycle()
            .take(3 * 4096 + 100)
            .collect();
        fill(
            &mut st,
            &[("good", data(9000, 4), 1), ("victim", pattern.clone(), 2)],
        );
        let mut s = Scrubber::new();
        let before = digest(&mut s, &mut st, PG, &[]).unwrap();
        assert!(before.iter().all(|d| d.crc32c.is_ok()), "{before:?}");
        assert_eq!(st.loans_out(), 0, "every lent read was given back");
        let d = st.shutdown().unwrap();
        drop(d);
        // Flip one byte of the pattern where it sits in the file.
        let mut img = std::fs::read(&path).unwrap();
        let at = img
            .windows(pattern.len().min(64))
            .position(|w| w == &pattern[..w.len()])
            .expect("the pattern is in the file");
        img[at + 4096 + 5] ^= 0x20;
        std::fs::write(&path, &img).unwrap();
        let mut d = FileDevice::open(&path, 4096, blocks).unwrap();
        d.set_sync(false);
        let mut st = BdevStore::mount(d, MountOptions::default()).unwrap();
        let after = digest(&mut s, &mut st, PG, &[]).unwrap();
        assert_eq!(st.loans_out(), 0, "every lent read was given back");
        assert_eq!(after.len(), 2);
        assert_eq!(after[0], before[0], "the other object is untouched");
        assert_eq!(after[1].name, b"victim");
        assert_eq!(after[1].crc32c, Err(ReadErrorKind::Checksum));
        assert_eq!(
            (after[1].size, after[1].version),
            (before[1].size, before[1].version),
            "metadata is intact"
        );
    }
}
