//! Scrub: what one OSD holds of a PG (its digest), how the primary compares the acting set's
//! digests, and the last result per PG.
//!
//! A **digest** is the sorted list of a PG's objects as one OSD's store holds them: name,
//! version (the `v` attribute the PG log writes), size, and the CRC-32C of the data read back
//! from the store, or why the data could not be read. The OSD computes it on the shard that
//! holds the PG, in the background next to client I/O; the agent asks for it through the
//! [`PgDigests`] the OSD hands it (this crate knows nothing of shards or stores).
//!
//! **Comparison** ([`compare`]) is pure: for every object any member has, the copies are
//! grouped by (present with version, size, CRC) or absent; the group most members are in is
//! authoritative, a tie goes to the group of the member earliest in the acting set (the
//! primary first). A copy that could not be read is never authoritative. Every member outside
//! the authoritative group is named with its [`Problem`]. An object is consistent when every
//! member is in one group.
//!
//! The **book** ([`ScrubBook`]) keeps each PG's last scrub result on its primary; the agent
//! reports the inconsistent ones to the monitor with every heartbeat (bounded: at most
//! [`MAX_REPORTED_PGS`] PGs, [`MAX_REPORTED_NAMES`] object names each), and a later clean scrub
//! of the PG replaces its entry, which clears it at the monitor. The book is soft state: an
//! OSD that restarts has to scrub again to know.
//!
//! Invariants: a digest is sorted by name with one entry per name; [`compare`] names each
//! inconsistent object once, in name order, and lists a member at most once per object.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

use carmine_placement::{pg_to_osds, ClusterMap};
use carmine_proto::v1;
use tokio::sync::oneshot;

/// At most this many inconsistent PGs go into one heartbeat.
pub const MAX_REPORTED_PGS: usize = 64;
/// At most this many object names per reported PG.
pub const MAX_REPORTED_NAMES: usize = 16;

/// A PG: pool id and PG number. Prints as `<pool>.<pg in hex>` (as `carmine pg dump` does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgId {
    pub pool: u32,
    pub pg: u32,
}

impl fmt::Display for PgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:x}", self.pool, self.pg)
    }
}

/// An object's version: the epoch its PG's interval began in, and the PG's sequence number.
/// Prints as `epoch'seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectVersion {
    pub epoch: u64,
    pub seq: u64,
}

impl fmt::Display for ObjectVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}'{}", self.epoch, self.seq)
    }
}

/// Why an object's data could not be read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReadErrorKind {
    /// The store's checksum did not match the data (a flipped bit or byte).
    Checksum,
    /// The device failed the read.
    Io,
    /// The store's own structures are corrupt.
    Corrupt,
    /// Any other store error.
    Other,
}

impl fmt::Display for ReadErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReadErrorKind::Checksum => "checksum mismatch",
            ReadErrorKind::Io => "device I/O error",
            ReadErrorKind::Corrupt => "store corrupt",
            ReadErrorKind::Other => "store error",
        })
    }
}

/// One object as one OSD holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectDigest {
    pub name: Vec<u8>,
    /// The version attribute; `None` when the object has none.
    pub version: Option<ObjectVersion>,
    /// Size from the store's metadata.
    pub size: u64,
    /// CRC-32C of the data, or why it could not be read.
    pub crc32c: Result<u32, ReadErrorKind>,
}

/// Why a shard could not produce a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The shard already has as many scrubs queued as it takes.
    #[error("the shard's scrub queue is full: try again later")]
    Busy,
    /// The shard stopped (or dropped the request) before answering.
    #[error("the shard went away before answering")]
    Gone,
    /// The shard did not answer in time.
    #[error("the shard did not answer within {0:?}")]
    TimedOut(std::time::Duration),
    /// Listing the PG's objects failed.
    #[error("listing the PG's objects failed: {0}")]
    List(ReadErrorKind),
}

/// Where a shard sends its answer (sending never blocks).
pub type DigestReply = oneshot::Sender<Result<Vec<ObjectDigest>, DigestError>>;

/// A request for a PG's digest, for the shard that holds the PG.
#[derive(Debug)]
pub struct DigestRequest {
    pub pg: PgId,
    /// Only these objects (those that do not exist are left out); empty: every object.
    pub objects: Vec<Vec<u8>>,
    pub reply: DigestReply,
}

/// The OSD's side of digests: hands a request to the shard that holds the PG (the OSD
/// implements it by pushing into that shard's control ring). Called on the agent thread.
pub trait PgDigests: Send + Sync + 'static {
    /// Queues `req` without blocking; gives it back when it cannot be queued now (ring full).
    fn submit(&self, req: DigestRequest) -> Result<(), DigestRequest>;
}

/// How one member's copy of an object differs from the authoritative copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The member lacks the object.
    Missing,
    /// The member has the object; the authoritative copies do not exist.
    Extra,
    /// The member could not read its copy.
    ReadError(ReadErrorKind),
    /// Present on both sides, with these fields different: (member's, authoritative).
    Mismatch {
        version: Option<(Option<ObjectVersion>, Option<ObjectVersion>)>,
        size: Option<(u64, u64)>,
        crc32c: Option<(u32, u32)>,
    },
}

fn opt_version(v: Option<ObjectVersion>) -> String {
    v.map_or_else(|| "none".to_string(), |v| v.to_string())
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing => f.write_str("missing"),
            Problem::Extra => f.write_str("extra copy: the authoritative members do not have it"),
            Problem::ReadError(k) => write!(f, "read error: {k}"),
            Problem::Mismatch {
                version,
                size,
                crc32c,
            } => {
                let mut parts = Vec::new();
                if let Some((m, a)) = version {
                    parts.push(format!(
                        "version {} (authoritative {})",
                        opt_version(*m),
                        opt_version(*a)
                    ));
                }
                if let Some((m, a)) = size {
                    parts.push(format!("size {m} (authoritative {a})"));
                }
                if let Some((m, a)) = crc32c {
                    parts.push(format!("data crc32c {m:#010x} (authoritative {a:#010x})"));
                }
                f.write_str(&parts.join(", "))
            }
        }
    }
}

impl Problem {
    fn to_proto(&self) -> v1::ScrubProblem {
        match self {
            Problem::Missing => v1::ScrubProblem::Missing,
            Problem::Extra => v1::ScrubProblem::Extra,
            Problem::ReadError(_) => v1::ScrubProblem::ReadError,
            Problem::Mismatch { .. } => v1::ScrubProblem::Mismatch,
        }
    }
}

/// An object whose copies differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inconsistency {
    pub name: Vec<u8>,
    /// Members whose copy is authoritative (acting order); empty when none could be read.
    pub auth: Vec<u32>,
    /// Every other member and what is wrong with its copy (acting order).
    pub problems: Vec<(u32, Problem)>,
}

impl Inconsistency {
    /// The name for people (lossy UTF-8).
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    pub fn to_proto(&self) -> v1::InconsistentObject {
        v1::InconsistentObject {
            name: self.name_lossy(),
            auth_osds: self.auth.clone(),
            problems: self
                .problems
                .iter()
                .map(|(osd, p)| v1::ScrubObjectProblem {
                    osd: *osd,
                    problem: p.to_proto().into(),
                    detail: p.to_string(),
                })
                .collect(),
        }
    }
}

/// One member's digest, for [`compare`].
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    pub osd: u32,
    /// Sorted by name, one entry per name.
    pub objects: &'a [ObjectDigest],
}

/// A copy as the vote sees it: readable copies and absences vote, unreadable ones do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vote {
    Absent,
    Present {
        version: Option<ObjectVersion>,
        size: u64,
        crc32c: u32,
    },
}

/// Compares the members' digests (acting order, primary first). Returns how many distinct
/// objects the members hold together, and the inconsistent ones in name order.
pub fn compare(members: &[Member<'_>]) -> (u64, Vec<Inconsistency>) {
    let n = members.len();
    let mut by_name: BTreeMap<&[u8], Vec<Option<&ObjectDigest>>> = BTreeMap::new();
    for (i, m) in members.iter().enumerate() {
        for d in m.objects {
            by_name
                .entry(d.name.as_slice())
                .or_insert_with(|| vec![None; n])[i] = Some(d);
        }
    }
    let objects = by_name.len() as u64;
    let mut out = Vec::new();
    for (name, copies) in by_name {
        // The vote: (value, count, first member index), in order of first appearance.
        let votes: Vec<Option<Vote>> = copies
            .iter()
            .map(|c| match c {
                None => Some(Vote::Absent),
                Some(d) => d.crc32c.ok().map(|crc32c| Vote::Present {
                    version: d.version,
                    size: d.size,
                    crc32c,
                }),
            })
            .collect();
        let mut tally: Vec<(Vote, usize)> = Vec::new();
        for v in votes.iter().flatten() {
            match tally.iter_mut().find(|(c, _)| c == v) {
                Some((_, k)) => *k += 1,
                None => tally.push((*v, 1)),
            }
        }
        // Most votes wins; among equals the first to appear (the earliest member) does.
        let auth = tally
            .iter()
            .fold(None::<(Vote, usize)>, |best, &(c, k)| match best {
                Some((_, bk)) if bk >= k => best,
                _ => Some((c, k)),
            })
            .map(|(c, _)| c);
        if tally.len() == 1 && votes.iter().all(Option::is_some) {
            continue; // every member holds the same copy (or none)
        }
        let mut inc = Inconsistency {
            name: name.to_vec(),
            auth: Vec::new(),
            problems: Vec::new(),
        };
        for (i, (vote, copy)) in votes.iter().zip(&copies).enumerate() {
            let osd = members[i].osd;
            let problem = match (vote, auth) {
                (Some(v), Some(a)) if *v == a => {
                    inc.auth.push(osd);
                    continue;
                }
                (None, _) => match copy.map(|d| d.crc32c) {
                    Some(Err(k)) => Problem::ReadError(k),
                    // A vote is missing only for an unreadable copy.
                    _ => Problem::ReadError(ReadErrorKind::Other),
                },
                (Some(_), None) => continue, // unreachable: a vote makes an authority
                (Some(Vote::Absent), Some(Vote::Present { .. })) => Problem::Missing,
                (Some(Vote::Present { .. }), Some(Vote::Absent)) => Problem::Extra,
                (
                    Some(Vote::Present {
                        version,
                        size,
                        crc32c,
                    }),
                    Some(Vote::Present {
                        version: av,
                        size: asz,
                        crc32c: acrc,
                    }),
                ) => Problem::Mismatch {
                    version: (*version != av).then_some((*version, av)),
                    size: (*size != asz).then_some((*size, asz)),
                    crc32c: (*crc32c != acrc).then_some((*crc32c, acrc)),
                },
                (Some(Vote::Absent), Some(Vote::Absent)) => continue, // equal: handled above
            };
            inc.problems.push((osd, problem));
        }
        out.push(inc);
    }
    (objects, out)
}

impl ObjectDigest {
    pub fn to_proto(&self) -> v1::ObjectDigest {
        let (has_error, crc32c, read_error) = match self.crc32c {
            Ok(c) => (false, c, v1::ObjectReadError::Unspecified),
            Err(k) => (
                true,
                0,
                match k {
                    ReadErrorKind::Checksum => v1::ObjectReadError::Checksum,
                    ReadErrorKind::Io => v1::ObjectReadError::Io,
                    ReadErrorKind::Corrupt => v1::ObjectReadError::Corrupt,
                    ReadErrorKind::Other => v1::ObjectReadError::Other,
                },
            ),
        };
        v1::ObjectDigest {
            name: self.name.clone(),
            has_version: self.version.is_some(),
            version_epoch: self.version.map_or(0, |v| v.epoch),
            version_seq: self.version.map_or(0, |v| v.seq),
            size: self.size,
            has_error,
            crc32c,
            read_error: read_error.into(),
        }
    }

    pub fn from_proto(d: v1::ObjectDigest) -> ObjectDigest {
        let crc32c = if d.has_error {
            Err(match d.read_error() {
                v1::ObjectReadError::Checksum => ReadErrorKind::Checksum,
                v1::ObjectReadError::Io => ReadErrorKind::Io,
                v1::ObjectReadError::Corrupt => ReadErrorKind::Corrupt,
                v1::ObjectReadError::Other | v1::ObjectReadError::Unspecified => {
                    ReadErrorKind::Other
                }
            })
        } else {
            Ok(d.crc32c)
        };
        ObjectDigest {
            version: d.has_version.then_some(ObjectVersion {
                epoch: d.version_epoch,
                seq: d.version_seq,
            }),
            size: d.size,
            crc32c,
            name: d.name,
        }
    }
}

/// Sorts a digest by name and keeps the first entry of each name (the invariant [`compare`]
/// relies on, for digests that come from elsewhere).
pub fn normalise(objects: &mut Vec<ObjectDigest>) {
    objects.sort_by(|a, b| a.name.cmp(&b.name));
    objects.dedup_by(|b, a| a.name == b.name);
}

/// The result of one scrub of a PG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrubRecord {
    /// The map epoch it ran in.
    pub epoch: u64,
    /// The acting set compared, primary first.
    pub acting: Vec<u32>,
    /// Distinct objects over all members.
    pub objects: u64,
    /// Inconsistent objects, in name order (empty: clean).
    pub inconsistent: Vec<Inconsistency>,
}

impl ScrubRecord {
    pub fn to_proto(&self, pg: PgId) -> v1::ScrubPgReply {
        v1::ScrubPgReply {
            pool: pg.pool,
            pg: pg.pg,
            epoch: self.epoch,
            acting: self.acting.clone(),
            objects: self.objects,
            inconsistent: self.inconsistent.iter().map(|i| i.to_proto()).collect(),
        }
    }
}

/// The last scrub of each PG this OSD scrubbed (as primary).
#[derive(Debug, Default)]
pub struct ScrubBook {
    last: Mutex<BTreeMap<PgId, (ScrubRecord, Instant)>>,
}

impl ScrubBook {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `rec` as `pg`'s last scrub (a clean one clears an earlier inconsistency).
    pub fn record(&self, pg: PgId, rec: ScrubRecord) {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pg, (rec, Instant::now()));
    }

    /// `pg`'s last scrub and when it finished.
    pub fn get(&self, pg: PgId) -> Option<(ScrubRecord, Instant)> {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pg)
            .cloned()
    }

    /// What the heartbeat reports: the PGs that `me` is primary for in `map` whose last scrub
    /// found inconsistent objects (records of PGs that moved away or vanished are dropped),
    /// bounded by [`MAX_REPORTED_PGS`] and [`MAX_REPORTED_NAMES`].
    pub fn report(&self, map: &ClusterMap, me: u32) -> Vec<v1::InconsistentPg> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.retain(|pg, _| {
            map.pools.get(&pg.pool).is_some_and(|pool| {
                pg.pg < pool.pg_num && pg_to_osds(map, pool, pg.pg).first() == Some(&me)
            })
        });
        last.iter()
            .filter(|(_, (r, _))| !r.inconsistent.is_empty())
            .take(MAX_REPORTED_PGS)
            .map(|(pg, (r, _))| v1::InconsistentPg {
                pool: pg.pool,
                pg: pg.pg,
                objects: r
                    .inconsistent
                    .iter()
                    .take(MAX_REPORTED_NAMES)
                    .map(Inconsistency::name_lossy)
                    .collect(),
                num_objects: u32::try_from(r.inconsistent.len()).unwrap_or(u32::MAX),
                osd: me,
                epoch: r.epoch,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carmine_placement::{Osd, Pool};

    const V1: ObjectVersion = ObjectVersion { epoch: 5, seq: 1 };
    const V2: ObjectVersion = ObjectVersion { epoch: 5, seq: 2 };

    fn d(name: &str, version: Option<ObjectVersion>, size: u64, crc: u32) -> ObjectDigest {
        ObjectDigest {
            name: name.as_bytes().to_vec(),
            version,
            size,
            crc32c: Ok(crc),
        }
    }

    fn bad(name: &str, kind: ReadErrorKind) -> ObjectDigest {
        ObjectDigest {
            name: name.as_bytes().to_vec(),
            version: Some(V1),
            size: 4,
            crc32c: Err(kind),
        }
    }

    fn mismatch(
        version: Option<(Option<ObjectVersion>, Option<ObjectVersion>)>,
        size: Option<(u64, u64)>,
        crc32c: Option<(u32, u32)>,
    ) -> Problem {
        Problem::Mismatch {
            version,
            size,
            crc32c,
        }
    }

    /// Each case: the digests of osd.0 (primary), osd.1 and osd.2 for one object "o", and the
    /// expected (authoritative members, problems); `None`: consistent.
    type Case = (
        &'static str,
        [Option<ObjectDigest>; 3],
        Option<(Vec<u32>, Vec<(u32, Problem)>)>,
    );

    #[test]
    fn compare_names_the_members_that_differ_from_the_majority() {
        use ReadErrorKind::*;
        let ok = || Some(d("o", Some(V1), 4, 0xaa));
        let cases: Vec<Case> = vec![
            ("all equal", [ok(), ok(), ok()], None),
            (
                "a flipped byte on a replica",
                [ok(), ok(), Some(d("o", Some(V1), 4, 0xbb))],
                Some((
                    vec![0, 1],
                    vec![(2, mismatch(None, None, Some((0xbb, 0xaa))))],
                )),
            ),
            (
                "a checksum error on a replica",
                [ok(), Some(bad("o", Checksum)), ok()],
                Some((vec![0, 2], vec![(1, Problem::ReadError(Checksum))])),
            ),
            (
                "the primary is the odd one out",
                [Some(d("o", Some(V2), 8, 0xcc)), ok(), ok()],
                Some((
                    vec![1, 2],
                    vec![(
                        0,
                        mismatch(Some((Some(V2), Some(V1))), Some((8, 4)), Some((0xcc, 0xaa))),
                    )],
                )),
            ),
            (
                "missing on one replica",
                [ok(), None, ok()],
                Some((vec![0, 2], vec![(1, Problem::Missing)])),
            ),
            (
                "an extra copy on one replica",
                [None, None, ok()],
                Some((vec![0, 1], vec![(2, Problem::Extra)])),
            ),
            (
                "version attribute lost on one replica",
                [ok(), ok(), Some(d("o", None, 4, 0xaa))],
                Some((
                    vec![0, 1],
                    vec![(2, mismatch(Some((None, Some(V1))), None, None))],
                )),
            ),
            (
                "three different copies: the primary's wins the tie",
                [
                    ok(),
                    Some(d("o", Some(V1), 4, 0xbb)),
                    Some(d("o", Some(V1), 4, 0xcc)),
                ],
                Some((
                    vec![0],
                    vec![
                        (1, mismatch(None, None, Some((0xbb, 0xaa)))),
                        (2, mismatch(None, None, Some((0xcc, 0xaa)))),
                    ],
                )),
            ),
            (
                "the primary cannot read: the replicas agree",
                [Some(bad("o", Io)), ok(), ok()],
                Some((vec![1, 2], vec![(0, Problem::ReadError(Io))])),
            ),
            (
                "one readable copy, the others unreadable",
                [Some(bad("o", Checksum)), Some(bad("o", Corrupt)), ok()],
                Some((
                    vec![2],
                    vec![
                        (0, Problem::ReadError(Checksum)),
                        (1, Problem::ReadError(Corrupt)),
                    ],
                )),
            ),
            (
                "nobody can read it",
                [Some(bad("o", Checksum)), Some(bad("o", Io)), None],
                // The only vote is the absence on osd.2.
                Some((
                    vec![2],
                    vec![
                        (0, Problem::ReadError(Checksum)),
                        (1, Problem::ReadError(Io)),
                    ],
                )),
            ),
        ];
        for (what, copies, want) in cases {
            let lists: Vec<Vec<ObjectDigest>> =
                copies.iter().map(|c| c.iter().cloned().collect()).collect();
            let members: Vec<Member<'_>> = lists
                .iter()
                .enumerate()
                .map(|(i, l)| Member {
                    osd: i as u32,
                    objects: l,
                })
                .collect();
            let (objects, got) = compare(&members);
            assert_eq!(objects, 1, "{what}");
            match want {
                None => assert!(got.is_empty(), "{what}: {got:?}"),
                Some((auth, problems)) => {
                    assert_eq!(got.len(), 1, "{what}: {got:?}");
                    assert_eq!(got[0].name, b"o", "{what}");
                    assert_eq!(got[0].auth, auth, "{what}");
                    assert_eq!(got[0].problems, problems, "{what}");
                }
            }
        }
    }

    #[test]
    fn compare_walks_every_object_of_every_member_in_name_order() {
        let a = vec![d("a", Some(V1), 1, 1), d("c", Some(V1), 3, 3)];
        let b = vec![
            d("a", Some(V1), 1, 1),
            d("b", Some(V1), 2, 2),
            d("c", Some(V1), 3, 9),
        ];
        let members = [
            Member {
                osd: 7,
                objects: &a,
            },
            Member {
                osd: 3,
                objects: &b,
            },
        ];
        let (objects, got) = compare(&members);
        assert_eq!(objects, 3);
        let names: Vec<String> = got.iter().map(Inconsistency::name_lossy).collect();
        assert_eq!(names, ["b", "c"]);
        // Two members that disagree: the one listed first (the primary) is authoritative.
        // b: osd.7 lacks it, osd.3 has it, one vote each.
        assert_eq!(got[0].auth, [7]);
        assert_eq!(got[0].problems, [(3, Problem::Extra)].to_vec());
        assert_eq!(got[1].auth, [7]);
        assert_eq!(
            got[1].problems,
            [(3, mismatch(None, None, Some((9, 3))))].to_vec()
        );
        // A single member alone is consistent with itself unless it cannot read.
        let (_, alone) = compare(&members[..1]);
        assert!(alone.is_empty());
        let broken = vec![bad("x", ReadErrorKind::Checksum)];
        let (_, alone) = compare(&[Member {
            osd: 1,
            objects: &broken,
        }]);
        assert_eq!(alone.len(), 1);
        assert_eq!(
            alone[0].problems,
            [(1, Problem::ReadError(ReadErrorKind::Checksum))].to_vec()
        );
    }

    #[test]
    fn digests_and_problems_cross_the_wire_unchanged() {
        for o in [
            d("x", Some(V2), 7, 0xdead_beef),
            d("y", None, 0, 0),
            bad("z", ReadErrorKind::Checksum),
            bad("w", ReadErrorKind::Io),
            bad("v", ReadErrorKind::Corrupt),
            bad("u", ReadErrorKind::Other),
        ] {
            assert_eq!(ObjectDigest::from_proto(o.to_proto()), o);
        }
        let p = mismatch(Some((None, Some(V1))), Some((1, 2)), Some((3, 4)));
        assert_eq!(
            p.to_string(),
            "version none (authoritative 5'1), size 1 (authoritative 2), \
             data crc32c 0x00000003 (authoritative 0x00000004)"
        );
        let mut l = vec![d("b", None, 1, 1), d("a", None, 1, 1), d("b", None, 2, 2)];
        normalise(&mut l);
        assert_eq!(l, [d("a", None, 1, 1), d("b", None, 1, 1)]);
    }

    fn map_with(osds: u32, pg_num: u32) -> ClusterMap {
        let mut m = ClusterMap {
            epoch: 3,
            ..Default::default()
        };
        for id in 0..osds {
            m.osds.insert(
                id,
                Osd {
                    id,
                    uuid: format!("u{id}"),
                    host: format!("h{id}"),
                    public_addr: String::new(),
                    cluster_addr: String::new(),
                    shard_count: 1,
                    shard_ports: vec![1],
                    up: true,
                    in_: true,
                    weight: 1.0,
                    up_from: 0,
                },
            );
        }
        m.pools.insert(
            1,
            Pool {
                id: 1,
                name: "p".into(),
                size: 1,
                min_size: 1,
                pg_num,
            },
        );
        m
    }

    #[test]
    fn the_book_reports_inconsistent_primary_pgs_within_bounds() {
        let map = map_with(2, 256);
        let mine: Vec<u32> = (0..256)
            .filter(|&pg| pg_to_osds(&map, &map.pools[&1], pg).first() == Some(&0))
            .collect();
        assert!(mine.len() > MAX_REPORTED_PGS, "{}", mine.len());
        let not_mine = (0..256).find(|pg| !mine.contains(pg)).unwrap();
        let book = ScrubBook::new();
        let bad_record = |n: usize| ScrubRecord {
            epoch: 3,
            acting: vec![0],
            objects: 100,
            inconsistent: (0..n)
                .map(|i| Inconsistency {
                    name: format!("obj{i:03}").into_bytes(),
                    auth: vec![],
                    problems: vec![(0, Problem::ReadError(ReadErrorKind::Checksum))],
                })
                .collect(),
        };
        let pg = |pg| PgId { pool: 1, pg };
        for &p in &mine {
            book.record(pg(p), bad_record(40));
        }
        book.record(pg(not_mine), bad_record(1));
        let r = book.report(&map, 0);
        assert_eq!(r.len(), MAX_REPORTED_PGS);
        assert!(r.iter().all(|p| p.osd == 0 && p.epoch == 3));
        assert!(
            r.iter().all(|p| mine.contains(&p.pg)),
            "not primary: dropped"
        );
        assert!(r
            .iter()
            .all(|p| p.objects.len() == MAX_REPORTED_NAMES && p.num_objects == 40));
        assert_eq!(r[0].objects[0], "obj000");
        // A clean scrub clears a PG; records of PGs that are not ours are gone.
        for &p in &mine {
            book.record(
                pg(p),
                ScrubRecord {
                    inconsistent: vec![],
                    ..bad_record(0)
                },
            );
        }
        assert!(book.report(&map, 0).is_empty());
        assert!(book.get(pg(not_mine)).is_none());
        assert!(book.get(pg(mine[0])).is_some());
        assert_eq!(PgId { pool: 1, pg: 26 }.to_string(), "1.1a");
    }
}
