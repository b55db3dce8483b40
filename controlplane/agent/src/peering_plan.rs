//! The peering decision of a replicated PG: given its recorded intervals, the new interval and
//! the listings of the OSDs that answered, either refuse (`Incomplete`) or say what the
//! authoritative state is and what each current member must do to reach it.
//!
//! Pure: no I/O, no async, no proto types. The agent gathers the inputs (monitor history,
//! `PgListing` from every OSD it can reach), calls [`plan`], and carries the [`Plan`] out
//! (`PgPrepare`, `PgPush`, `RecordIntervals`, activation).
//!
//! # Rules
//! * A listing *speaks for* a recorded interval `I` iff it has the PG's info, its OSD is in
//!   `I.acting` and `info_since <= I.since`. A listing is a *source* iff it speaks for some
//!   recorded interval; with an empty history (the PG never recorded an interval) every listing
//!   with info is a source.
//! * Every recorded interval needs a source that speaks for it, else the PG is
//!   [`Decision::Incomplete`] and names the blocked intervals.
//! * The authoritative entry of a name is the greatest `(version, tombstone)` over the sources'
//!   entries (objects and tombstones alike); its holders are the sources whose entry equals it
//!   exactly. Listings that are not sources never contribute.
//! * Per current member: `missing` = every authoritative entry its own entry does not equal
//!   exactly (absent, older, a different kind, or newer: a newer entry can only be on a
//!   non-source and is overwritten); `remove` = its live objects with no authoritative entry at
//!   all (only non-sources have them) and, on a non-source, its live objects that differ from
//!   their authoritative entry (tombstones stay); `set_since` = not a source.
//! * The primary (`current.acting[0]`) pulls its missing entries before it activates, each from
//!   a holder of exactly the authoritative entry, preferring holders in the current acting set,
//!   spreading the names over the holders.
//!
//! # Why this loses no acknowledged write
//! 1. A write or remove is acknowledged only once every member of its interval's acting set
//!    has it durably; a remove leaves a versioned tombstone, kept until the PG is clean.
//! 2. Every interval since the PG was last clean is recorded before its first write, so the
//!    history lists every interval that may hold an acknowledged op not yet everywhere.
//! 3. A member of `I` with info and `info_since <= I.since` was a member for the whole of `I`
//!    and was neither wiped (it would have no info) nor reset by a later plan (that sets
//!    `info_since` past `I.since`): it holds every acknowledged op of `I`, or a newer version.
//!    A member reset by a plan (`set_since`) claims only the intervals from the new one on,
//!    and its prepare removes every live object it holds that is not exactly authoritative: a
//!    recovery that ends part way leaves it without the object, never with an older copy that
//!    it would speak for in a later interval (a delete whose tombstone was trimmed when the PG
//!    was last clean would come back from it). A stale tombstone it keeps says only "deleted",
//!    which the max over the sources overrules with any newer state.
//! 4. So with a source for every recorded interval, the maximum over the sources is at least
//!    the newest acknowledged version of every object, and a delete stays deleted (its
//!    tombstone is newer than the object). Older state, on strays or on reset members, is never
//!    a source and is overwritten or removed. Versions are `(interval since, seq)`, so anything
//!    written in a later interval beats anything from an earlier one.
//!
//! Two sources with the same version but different kinds cannot come from a correct run (a
//! version names one op); the tie goes to the tombstone so the result does not depend on the
//! order of the listings.

use std::collections::BTreeMap;

use thiserror::Error;

/// An object version: the `since` of the interval that wrote it, then a per-PG sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ObjVersion {
    pub epoch: u64,
    pub seq: u64,
}

/// One interval of a PG: the epoch it started at and its acting set (primary first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    pub since: u64,
    pub acting: Vec<u32>,
}

/// One object or tombstone as a member holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: Vec<u8>,
    pub version: ObjVersion,
    pub tombstone: bool,
}

/// What one OSD answered about the PG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub osd: u32,
    /// False: the OSD never held the PG, or was wiped.
    pub has_info: bool,
    /// The first interval from which this copy has every write of the intervals it was a
    /// member of.
    pub info_since: u64,
    /// Sorted by name, at most one entry per name.
    pub objects: Vec<Listed>,
}

/// The authoritative state of one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthEntry {
    pub version: ObjVersion,
    pub tombstone: bool,
    /// The sources holding exactly this entry, ascending.
    pub holders: Vec<u32>,
}

/// What one current acting member must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberPlan {
    pub osd: u32,
    /// Whether its listing is a source.
    pub source: bool,
    /// Authoritative entries it must receive (a tombstone is pushed as a removal), by name.
    pub missing: Vec<Listed>,
    /// Live objects it must remove: no authoritative entry at all. By name.
    pub remove: Vec<Vec<u8>>,
    /// Record the new interval's `since` as its `info_since` (it was not a source).
    pub set_since: bool,
}

/// Names the primary receives from one holder before it activates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pull {
    pub holder: u32,
    /// Sorted.
    pub names: Vec<Vec<u8>>,
}

/// How an active PG reaches its authoritative state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub authoritative: BTreeMap<Vec<u8>, AuthEntry>,
    /// Authoritative entries that are objects, not tombstones.
    pub live_objects: u64,
    /// One per current acting member, in acting order.
    pub members: Vec<MemberPlan>,
    /// The primary's missing entries grouped by the holder chosen for each; by holder.
    pub pulls: Vec<Pull>,
}

/// The peering outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// These recorded intervals have no answering source: the PG must not go active.
    Incomplete {
        blocked: Vec<Interval>,
    },
    Active(Plan),
}

/// Inputs [`plan`] cannot decide on. Only `Unanswered` is expected in a healthy cluster: the
/// caller retries once those members answer (or the map changes).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlanError {
    #[error("current acting member(s) {osds:?} did not answer the listing")]
    Unanswered { osds: Vec<u32> },
    #[error("the current interval has an empty acting set")]
    EmptyActing,
    #[error("osd.{osd} is in the current acting set twice")]
    DuplicateMember { osd: u32 },
    #[error("two listings from osd.{osd}")]
    DuplicateListing { osd: u32 },
    #[error("the listing of osd.{osd} is not strictly sorted by name")]
    UnsortedListing { osd: u32 },
}

/// Whether `l` holds every acknowledged op of interval `i`.
pub fn speaks_for(l: &Listing, i: &Interval) -> bool {
    l.has_info && l.info_since <= i.since && i.acting.contains(&l.osd)
}

/// Whether `l` is a source given the recorded `history`.
pub fn is_source(history: &[Interval], l: &Listing) -> bool {
    l.has_info && (history.is_empty() || history.iter().any(|i| speaks_for(l, i)))
}

/// Decides the peering of one PG: see the module doc for the rules.
pub fn plan(
    history: &[Interval],
    current: &Interval,
    listings: &[Listing],
) -> Result<Decision, PlanError> {
    validate(current, listings)?;
    let by_osd: BTreeMap<u32, &Listing> = listings.iter().map(|l| (l.osd, l)).collect();
    let unanswered: Vec<u32> = current
        .acting
        .iter()
        .copied()
        .filter(|o| !by_osd.contains_key(o))
        .collect();
    if !unanswered.is_empty() {
        return Err(PlanError::Unanswered { osds: unanswered });
    }

    let blocked: Vec<Interval> = history
        .iter()
        .filter(|i| !listings.iter().any(|l| speaks_for(l, i)))
        .cloned()
        .collect();
    if !blocked.is_empty() {
        return Ok(Decision::Incomplete { blocked });
    }

    let sources: Vec<&Listing> = listings.iter().filter(|l| is_source(history, l)).collect();
    let authoritative = authoritative(&sources);
    let live_objects = authoritative.values().filter(|e| !e.tombstone).count() as u64;

    let mut members = Vec::with_capacity(current.acting.len());
    for osd in &current.acting {
        // Present: `unanswered` was empty.
        let Some(l) = by_osd.get(osd) else {
            return Err(PlanError::Unanswered { osds: vec![*osd] });
        };
        members.push(member_plan(history, l, &authoritative));
    }
    let pulls = match members.first() {
        Some(primary) => pulls(&primary.missing, &authoritative, &current.acting),
        None => return Err(PlanError::EmptyActing),
    };
    Ok(Decision::Active(Plan {
        authoritative,
        live_objects,
        members,
        pulls,
    }))
}

fn validate(current: &Interval, listings: &[Listing]) -> Result<(), PlanError> {
    if current.acting.is_empty() {
        return Err(PlanError::EmptyActing);
    }
    for (k, osd) in current.acting.iter().enumerate() {
        if current.acting[..k].contains(osd) {
            return Err(PlanError::DuplicateMember { osd: *osd });
        }
    }
    for (k, l) in listings.iter().enumerate() {
        if listings[..k].iter().any(|o| o.osd == l.osd) {
            return Err(PlanError::DuplicateListing { osd: l.osd });
        }
        if l.objects.windows(2).any(|w| w[0].name >= w[1].name) {
            return Err(PlanError::UnsortedListing { osd: l.osd });
        }
    }
    Ok(())
}

fn authoritative(sources: &[&Listing]) -> BTreeMap<Vec<u8>, AuthEntry> {
    let mut auth: BTreeMap<Vec<u8>, AuthEntry> = BTreeMap::new();
    for l in sources {
        for o in &l.objects {
            match auth.get_mut(&o.name) {
                None => {
                    auth.insert(
                        o.name.clone(),
                        AuthEntry {
                            version: o.version,
                            tombstone: o.tombstone,
                            holders: vec![l.osd],
                        },
                    );
                }
                Some(e) => match (o.version, o.tombstone).cmp(&(e.version, e.tombstone)) {
                    std::cmp::Ordering::Greater => {
                        *e = AuthEntry {
                            version: o.version,
                            tombstone: o.tombstone,
                            holders: vec![l.osd],
                        }
                    }
                    std::cmp::Ordering::Equal => e.holders.push(l.osd),
                    std::cmp::Ordering::Less => {}
                },
            }
        }
    }
    for e in auth.values_mut() {
        e.holders.sort_unstable();
    }
    auth
}

fn entry<'a>(l: &'a Listing, name: &[u8]) -> Option<&'a Listed> {
    l.objects
        .binary_search_by(|o| o.name.as_slice().cmp(name))
        .ok()
        .map(|k| &l.objects[k])
}

fn member_plan(
    history: &[Interval],
    l: &Listing,
    auth: &BTreeMap<Vec<u8>, AuthEntry>,
) -> MemberPlan {
    let source = is_source(history, l);
    let missing = auth
        .iter()
        .filter(|(name, a)| {
            !entry(l, name).is_some_and(|o| o.version == a.version && o.tombstone == a.tombstone)
        })
        .map(|(name, a)| Listed {
            name: name.clone(),
            version: a.version,
            tombstone: a.tombstone,
        })
        .collect();
    // A source's live objects all have an authoritative entry (its entries made them). A
    // non-source is reset to the new interval, after which it speaks for that interval with
    // everything it holds: so it keeps only live objects that are exactly authoritative, or a
    // recovery that ends part way would leave it a stale copy to speak for later.
    let remove = l
        .objects
        .iter()
        .filter(|o| {
            !o.tombstone
                && match auth.get(&o.name) {
                    None => true,
                    Some(a) => !source && (a.version, a.tombstone) != (o.version, o.tombstone),
                }
        })
        .map(|o| o.name.clone())
        .collect();
    MemberPlan {
        osd: l.osd,
        source,
        missing,
        remove,
        set_since: !source,
    }
}

/// Assigns each of the primary's missing entries to one exact holder: among the holders in
/// the current acting set if there are any (they are reachable and stay in the PG), else among
/// all holders; the holder with the fewest names so far, then the lowest id.
fn pulls(missing: &[Listed], auth: &BTreeMap<Vec<u8>, AuthEntry>, acting: &[u32]) -> Vec<Pull> {
    let mut load: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
    for m in missing {
        let Some(a) = auth.get(&m.name) else {
            continue; // `missing` is built from `auth`: every name is there.
        };
        let in_acting: Vec<u32> = a
            .holders
            .iter()
            .copied()
            .filter(|h| acting.contains(h))
            .collect();
        let candidates = if in_acting.is_empty() {
            &a.holders[..]
        } else {
            &in_acting[..]
        };
        let Some(holder) = candidates
            .iter()
            .copied()
            .min_by_key(|h| (load.get(h).map_or(0, Vec::len), *h))
        else {
            continue; // An authoritative entry always has a holder: the source it came from.
        };
        load.entry(holder).or_default().push(m.name.clone());
    }
    load.into_iter()
        .map(|(holder, names)| Pull { holder, names })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(epoch: u64, seq: u64) -> ObjVersion {
        ObjVersion { epoch, seq }
    }

    fn iv(since: u64, acting: &[u32]) -> Interval {
        Interval {
            since,
            acting: acting.to_vec(),
        }
    }

    fn obj(name: &str, version: ObjVersion) -> Listed {
        Listed {
            name: name.as_bytes().to_vec(),
            version,
            tombstone: false,
        }
    }

    fn tomb(name: &str, version: ObjVersion) -> Listed {
        Listed {
            tombstone: true,
            ..obj(name, version)
        }
    }

    fn listing(osd: u32, info_since: u64, mut objects: Vec<Listed>) -> Listing {
        objects.sort_by(|a, b| a.name.cmp(&b.name));
        Listing {
            osd,
            has_info: true,
            info_since,
            objects,
        }
    }

    fn blank(osd: u32) -> Listing {
        Listing {
            osd,
            has_info: false,
            info_since: 0,
            objects: vec![],
        }
    }

    fn active(d: Result<Decision, PlanError>) -> Plan {
        match d {
            Ok(Decision::Active(p)) => p,
            other => panic!("expected Active, got {other:?}"),
        }
    }

    fn auth<'a>(p: &'a Plan, name: &str) -> &'a AuthEntry {
        &p.authoritative[name.as_bytes()]
    }

    fn names(ns: &[&str]) -> Vec<Vec<u8>> {
        ns.iter().map(|n| n.as_bytes().to_vec()).collect()
    }

    const A: u32 = 1;
    const B: u32 = 2;
    const C: u32 = 3;
    const D: u32 = 4;
    const E: u32 = 5;

    #[test]
    fn empty_history_every_listing_with_info_is_a_source() {
        let ls = [
            listing(A, 7, vec![obj("a", v(1, 1))]),
            blank(B),
            // Not in the acting set, but with no recorded interval anything with info counts.
            listing(C, 9, vec![obj("b", v(2, 1))]),
        ];
        let p = active(plan(&[], &iv(3, &[A, B]), &ls));
        assert_eq!(p.authoritative.len(), 2);
        assert_eq!(auth(&p, "a").holders, vec![A]);
        assert_eq!(auth(&p, "b").holders, vec![C]);
        assert_eq!(p.live_objects, 2);
        assert!(p.members[0].source && !p.members[0].set_since);
        assert!(!p.members[1].source && p.members[1].set_since);
        assert_eq!(p.members[1].missing.len(), 2);
        // The primary lacks only b, held by C alone.
        assert_eq!(
            p.pulls,
            vec![Pull {
                holder: C,
                names: names(&["b"])
            }]
        );
    }

    #[test]
    fn split_brain_the_stale_replica_alone_is_incomplete() {
        // I1 {A,B} wrote a@(1,1); A died; I2 {B} wrote a@(2,1); B died; A came back alone.
        let history = [iv(1, &[A, B]), iv(2, &[B])];
        let a = listing(A, 1, vec![obj("a", v(1, 1))]);
        let d = plan(&history, &iv(3, &[A]), std::slice::from_ref(&a));
        assert_eq!(
            d,
            Ok(Decision::Incomplete {
                blocked: vec![iv(2, &[B])]
            })
        );
        // With B answering, its newer write wins and A pulls it.
        let b = listing(B, 1, vec![obj("a", v(2, 1))]);
        let p = active(plan(&history, &iv(3, &[A]), &[a, b]));
        assert_eq!(auth(&p, "a").version, v(2, 1));
        assert_eq!(auth(&p, "a").holders, vec![B]);
        assert_eq!(
            p.pulls,
            vec![Pull {
                holder: B,
                names: names(&["a"])
            }]
        );
    }

    #[test]
    fn a_wiped_osd_cannot_speak_for_its_interval() {
        let history = [iv(1, &[A, B])];
        // A is unreachable, B came back empty.
        let d = plan(&history, &iv(2, &[B, C]), &[blank(B), blank(C)]);
        assert_eq!(
            d,
            Ok(Decision::Incomplete {
                blocked: vec![iv(1, &[A, B])]
            })
        );
    }

    #[test]
    fn a_reset_member_speaks_only_from_its_new_interval() {
        // C was reset when it joined I2 (info_since 2): it speaks for I2, not for I1.
        let history = [iv(1, &[A, C]), iv(2, &[B, C])];
        let c = listing(C, 2, vec![obj("a", v(2, 1))]);
        let d = plan(&history, &iv(3, &[C]), &[c]);
        assert_eq!(
            d,
            Ok(Decision::Incomplete {
                blocked: vec![iv(1, &[A, C])]
            })
        );
    }

    #[test]
    fn a_tombstone_beats_an_older_object() {
        let history = [iv(1, &[A, B])];
        // B holds the remove at (1,2); A (still a source) missed... nothing acked, but holds
        // the older object: the tombstone wins and A gets the removal pushed.
        let ls = [
            listing(A, 1, vec![obj("a", v(1, 1))]),
            listing(B, 1, vec![tomb("a", v(1, 2))]),
        ];
        let p = active(plan(&history, &iv(2, &[A, B]), &ls));
        let e = auth(&p, "a");
        assert_eq!(
            (e.version, e.tombstone, &e.holders[..]),
            (v(1, 2), true, &[B][..])
        );
        assert_eq!(p.live_objects, 0);
        assert_eq!(p.members[0].missing, vec![tomb("a", v(1, 2))]);
        assert!(
            p.members[0].remove.is_empty(),
            "a tombstone is pushed, not removed"
        );
        assert!(p.members[1].missing.is_empty());
    }

    #[test]
    fn the_newer_of_object_and_tombstone_wins_either_way() {
        let history = [iv(1, &[A, B]), iv(2, &[B, C])];
        let ls = [
            listing(A, 1, vec![tomb("x", v(1, 3)), obj("y", v(1, 1))]),
            listing(B, 1, vec![obj("x", v(2, 1)), tomb("y", v(2, 2))]),
            listing(C, 2, vec![obj("x", v(2, 1)), tomb("y", v(2, 2))]),
        ];
        let p = active(plan(&history, &iv(3, &[A, B, C]), &ls));
        let (x, y) = (auth(&p, "x"), auth(&p, "y"));
        assert_eq!(
            (x.version, x.tombstone, &x.holders[..]),
            (v(2, 1), false, &[B, C][..])
        );
        assert_eq!(
            (y.version, y.tombstone, &y.holders[..]),
            (v(2, 2), true, &[B, C][..])
        );
        assert_eq!(p.live_objects, 1);
        assert_eq!(
            p.members[0].missing,
            vec![obj("x", v(2, 1)), tomb("y", v(2, 2))]
        );
        // Equal version, different kind (not from a correct run): decided by the tombstone,
        // whatever the listing order.
        for order in [[0, 1], [1, 0]] {
            let pair = [
                listing(A, 1, vec![obj("z", v(1, 5))]),
                listing(B, 1, vec![tomb("z", v(1, 5))]),
            ];
            let ls = [pair[order[0]].clone(), pair[order[1]].clone()];
            let p = active(plan(&[iv(1, &[A, B])], &iv(2, &[A, B]), &ls));
            assert!(auth(&p, "z").tombstone);
            assert_eq!(auth(&p, "z").holders, vec![B]);
        }
    }

    #[test]
    fn a_non_source_never_contributes_and_its_stale_extras_are_removed() {
        let history = [iv(1, &[A])];
        let ls = [
            listing(A, 1, vec![obj("a", v(1, 1)), tomb("w", v(1, 2))]),
            // D was never in a recorded interval: its state is stale, even the "newer" a.
            listing(
                D,
                0,
                vec![
                    obj("a", v(9, 9)),
                    obj("z", v(0, 1)),
                    tomb("t", v(0, 2)),
                    tomb("w", v(1, 2)),
                ],
            ),
        ];
        let p = active(plan(&history, &iv(2, &[A, D]), &ls));
        assert_eq!(p.authoritative.len(), 2);
        assert_eq!(auth(&p, "a").version, v(1, 1));
        assert!(!p.authoritative.contains_key(b"z".as_slice()));
        assert!(!p.authoritative.contains_key(b"t".as_slice()));
        let d = &p.members[1];
        assert!(!d.source && d.set_since);
        // Its newer a goes and is then recovered; w matches exactly; z goes; its stray
        // tombstone t stays.
        assert_eq!(d.missing, vec![obj("a", v(1, 1))]);
        assert_eq!(d.remove, names(&["a", "z"]));
        assert!(p.members[0].source && p.members[0].remove.is_empty());
        assert!(p.members[0].missing.is_empty());
    }

    #[test]
    fn pulls_come_only_from_exact_holders_preferring_acting_then_spreading() {
        let history = [iv(1, &[A, B, C])];
        let ls = [
            listing(
                A,
                1,
                vec![
                    obj("o1", v(1, 1)),
                    obj("o2", v(1, 2)),
                    obj("o3", v(1, 3)),
                    obj("o4", v(1, 4)),
                ],
            ),
            listing(
                B,
                1,
                vec![obj("o1", v(1, 1)), obj("o2", v(1, 1)), tomb("o3", v(1, 0))],
            ),
            listing(
                C,
                1,
                vec![obj("o1", v(1, 1)), obj("o2", v(1, 2)), obj("o4", v(1, 4))],
            ),
            blank(D),
            blank(E),
        ];
        // D is the new primary; B is the only old member still acting.
        let p = active(plan(&history, &iv(2, &[D, B, E]), &ls));
        assert_eq!(auth(&p, "o2").holders, vec![A, C]);
        assert_eq!(auth(&p, "o3").holders, vec![A]);
        assert_eq!(
            p.pulls,
            vec![
                // o2: no holder acting, A and C tie, lowest id; o3: only A.
                Pull {
                    holder: A,
                    names: names(&["o2", "o3"])
                },
                // o1: B holds it and stays in the PG.
                Pull {
                    holder: B,
                    names: names(&["o1"])
                },
                // o4: A already has two, C none.
                Pull {
                    holder: C,
                    names: names(&["o4"])
                },
            ]
        );
        for pull in &p.pulls {
            let l = ls
                .iter()
                .find(|l| l.osd == pull.holder)
                .expect("holder listed");
            for n in &pull.names {
                let a = &p.authoritative[n];
                let held = entry(l, n).expect("holder has the name");
                assert_eq!((held.version, held.tombstone), (a.version, a.tombstone));
            }
        }
        // B: o2 older, o3 an older tombstone, o4 absent; o1 exact.
        let b_missing: Vec<&[u8]> = p.members[1].missing.iter().map(|m| &m.name[..]).collect();
        assert_eq!(b_missing, [&b"o2"[..], b"o3", b"o4"]);
    }

    #[test]
    fn a_silent_acting_member_is_an_error() {
        let ls = [listing(A, 1, vec![])];
        assert_eq!(
            plan(&[iv(1, &[A])], &iv(2, &[A, B, C]), &ls),
            Err(PlanError::Unanswered { osds: vec![B, C] })
        );
    }

    #[test]
    fn malformed_inputs_are_errors() {
        assert_eq!(plan(&[], &iv(1, &[]), &[]), Err(PlanError::EmptyActing));
        assert_eq!(
            plan(&[], &iv(1, &[A, A]), &[blank(A)]),
            Err(PlanError::DuplicateMember { osd: A })
        );
        assert_eq!(
            plan(&[], &iv(1, &[A]), &[blank(A), blank(A)]),
            Err(PlanError::DuplicateListing { osd: A })
        );
        let mut l = listing(A, 1, vec![obj("a", v(1, 1))]);
        l.objects.push(obj("a", v(1, 2)));
        assert_eq!(
            plan(&[], &iv(1, &[A]), &[l]),
            Err(PlanError::UnsortedListing { osd: A })
        );
    }

    #[test]
    fn a_source_outside_the_new_acting_set_feeds_the_primary() {
        let history = [iv(1, &[A, B])];
        let ls = [listing(A, 1, vec![obj("a", v(1, 1))]), blank(C)];
        let p = active(plan(&history, &iv(2, &[C]), &ls));
        assert_eq!(p.members.len(), 1);
        assert_eq!(p.members[0].missing, vec![obj("a", v(1, 1))]);
        assert_eq!(
            p.pulls,
            vec![Pull {
                holder: A,
                names: names(&["a"])
            }]
        );
    }
}

/// A model of one PG on a small cluster, run through random intervals, writes, kills, wipes
/// and partitions, with [`plan`] deciding every peering and the model carrying the plan out the
/// way the agent does. Checked: no acknowledged op is ever older than the authoritative state
/// (so 0 lost, deletes stay deleted), the authoritative state holds only versions that were
/// written, and the PG is incomplete exactly when some recorded interval has no answering
/// member that was in it and not wiped since (an oracle that does not look at `info_since`).
#[cfg(test)]
mod model {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    /// splitmix64: a deterministic, dependency-free generator for the model's choices.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn chance(&mut self, num: u64, den: u64) -> bool {
            self.next() % den < num
        }
        fn shuffle<T>(&mut self, v: &mut [T]) {
            for k in (1..v.len()).rev() {
                v.swap(k, self.below(k + 1));
            }
        }
    }

    #[derive(Clone, Default)]
    struct Osd {
        up: bool,
        has_info: bool,
        info_since: u64,
        objects: BTreeMap<Vec<u8>, (ObjVersion, bool)>,
        /// `since` of the last interval created before this OSD was last wiped.
        wiped_at: Option<u64>,
    }

    impl Osd {
        /// The oracle: was a member of `i` for all of it and not wiped since.
        fn witnessed(&self, id: u32, i: &Interval) -> bool {
            i.acting.contains(&id) && self.wiped_at.is_none_or(|w| w < i.since)
        }
    }

    /// The oldest state a name may be in: its last acknowledged op, or (after a clean
    /// activation) the authoritative entry every member then held. Once its tombstone is
    /// trimmed, a deleted name may be absent or under any tombstone, but never live again
    /// unless written after the delete.
    #[derive(Clone, Copy, Debug)]
    struct Floor {
        version: ObjVersion,
        tombstone: bool,
        trimmed: bool,
    }

    #[derive(Debug, Default, Clone, Copy)]
    pub(super) struct Counts {
        pub active: u64,
        pub incomplete: u64,
        /// Incomplete although a member of a blocked interval answered (wiped or reset since).
        pub split_brain: u64,
        pub unanswered: u64,
        pub full: u64,
        pub partial: u64,
        pub pulls: u64,
        pub removes: u64,
        pub acked: u64,
        pub unacked: u64,
        pub unacked_surfaced: u64,
    }

    impl Counts {
        fn add(&mut self, o: &Counts) {
            self.active += o.active;
            self.incomplete += o.incomplete;
            self.split_brain += o.split_brain;
            self.unanswered += o.unanswered;
            self.full += o.full;
            self.partial += o.partial;
            self.pulls += o.pulls;
            self.removes += o.removes;
            self.acked += o.acked;
            self.unacked += o.unacked;
            self.unacked_surfaced += o.unacked_surfaced;
        }
    }

    struct Sim {
        rng: Rng,
        osds: Vec<Osd>,
        names: Vec<Vec<u8>>,
        epoch: u64,
        history: Vec<Interval>,
        floors: BTreeMap<Vec<u8>, Floor>,
        written: BTreeSet<(Vec<u8>, ObjVersion, bool)>,
        acked: BTreeSet<(Vec<u8>, ObjVersion, bool)>,
        counts: Counts,
        trace: Vec<String>,
    }

    pub(super) fn run(seed: u64) -> Result<Counts, String> {
        let mut rng = Rng(seed);
        let n_osds = 3 + rng.below(3);
        let n_names = 3 + rng.below(4);
        let steps = 20 + rng.below(30);
        let mut sim = Sim {
            rng,
            osds: vec![
                Osd {
                    up: true,
                    ..Osd::default()
                };
                n_osds
            ],
            names: (0..n_names)
                .map(|k| format!("obj{k}").into_bytes())
                .collect(),
            epoch: 0,
            history: vec![],
            floors: BTreeMap::new(),
            written: BTreeSet::new(),
            acked: BTreeSet::new(),
            counts: Counts::default(),
            trace: vec![],
        };
        for _ in 0..steps {
            if let Err(e) = sim.step() {
                return Err(format!("{e}\ntrace:\n  {}", sim.trace.join("\n  ")));
            }
        }
        Ok(sim.counts)
    }

    impl Sim {
        fn pick(&mut self, pred: impl Fn(&Osd) -> bool) -> Option<u32> {
            let c: Vec<u32> = (0..self.osds.len() as u32)
                .filter(|&o| pred(&self.osds[o as usize]))
                .collect();
            (!c.is_empty()).then(|| c[self.rng.below(c.len())])
        }

        fn step(&mut self) -> Result<(), String> {
            match self.rng.below(10) {
                0 => {
                    let ups = self.osds.iter().filter(|o| o.up).count();
                    if let Some(o) = self.pick(|o| o.up).filter(|_| ups > 1) {
                        self.osds[o as usize].up = false;
                        self.trace.push(format!("kill osd{o}"));
                    }
                    Ok(())
                }
                1 => {
                    if let Some(o) = self.pick(|o| !o.up) {
                        self.osds[o as usize].up = true;
                        self.trace.push(format!("revive osd{o}"));
                    }
                    Ok(())
                }
                2 => {
                    if let Some(o) = self.pick(|_| true) {
                        self.osds[o as usize] = Osd {
                            up: true,
                            wiped_at: Some(self.epoch),
                            ..Osd::default()
                        };
                        self.trace.push(format!("wipe osd{o}"));
                    }
                    Ok(())
                }
                _ => self.interval(),
            }
        }

        fn listing(&self, osd: u32) -> Listing {
            let o = &self.osds[osd as usize];
            Listing {
                osd,
                has_info: o.has_info,
                info_since: o.info_since,
                objects: o
                    .objects
                    .iter()
                    .map(|(name, &(version, tombstone))| Listed {
                        name: name.clone(),
                        version,
                        tombstone,
                    })
                    .collect(),
            }
        }

        fn interval(&mut self) -> Result<(), String> {
            self.epoch += 1;
            let since = self.epoch;
            let mut ups: Vec<u32> = (0..self.osds.len() as u32)
                .filter(|&o| self.osds[o as usize].up)
                .collect();
            self.rng.shuffle(&mut ups);
            let size = 1 + self.rng.below(ups.len().min(3));
            let current = Interval {
                since,
                acting: ups[..size].to_vec(),
            };
            let mut reachable: BTreeSet<u32> = current.acting.iter().copied().collect();
            for &o in &ups[size..] {
                if self.rng.chance(1, 2) {
                    reachable.insert(o);
                }
            }
            let silent = self
                .rng
                .chance(1, 12)
                .then(|| current.acting[self.rng.below(size)]);
            if let Some(s) = silent {
                reachable.remove(&s);
            }
            let listings: Vec<Listing> = reachable.iter().map(|&o| self.listing(o)).collect();
            let decision = plan(&self.history, &current, &listings);
            self.trace.push(format!(
                "interval {current:?} reachable {reachable:?} history {:?} -> {}",
                self.history,
                match &decision {
                    Ok(Decision::Active(_)) => "active".to_string(),
                    other => format!("{other:?}"),
                }
            ));

            if let Some(s) = silent {
                self.counts.unanswered += 1;
                return match decision {
                    Err(PlanError::Unanswered { osds }) if osds == [s] => Ok(()),
                    other => Err(format!("osd{s} was silent, got {other:?}")),
                };
            }
            let expected: Vec<Interval> = self
                .history
                .iter()
                .filter(|i| {
                    !reachable
                        .iter()
                        .any(|&o| self.osds[o as usize].witnessed(o, i))
                })
                .cloned()
                .collect();
            if !expected.is_empty() {
                self.counts.incomplete += 1;
                if expected
                    .iter()
                    .any(|i| i.acting.iter().any(|o| reachable.contains(o)))
                {
                    self.counts.split_brain += 1;
                }
                return match decision {
                    Ok(Decision::Incomplete { blocked }) if blocked == expected => Ok(()),
                    other => Err(format!("expected incomplete {expected:?}, got {other:?}")),
                };
            }
            let p = match decision {
                Ok(Decision::Active(p)) => p,
                other => return Err(format!("expected active, got {other:?}")),
            };
            self.counts.active += 1;
            self.check(&p, &current, &listings)?;
            self.apply(&p, &current)?;
            self.writes(&current);
            Ok(())
        }

        fn check(&mut self, p: &Plan, current: &Interval, ls: &[Listing]) -> Result<(), String> {
            for (name, f) in &self.floors {
                let ok = match p.authoritative.get(name) {
                    None => f.trimmed,
                    // Deleted, its tombstone trimmed: still deleted (an older stray tombstone
                    // a reset member kept says the same), or written again since.
                    Some(e) if f.trimmed => e.tombstone || e.version > f.version,
                    Some(e) => {
                        e.version > f.version
                            || (e.version == f.version && e.tombstone == f.tombstone)
                    }
                };
                if !ok {
                    return Err(format!(
                        "{}: floor {f:?}, authoritative {:?}",
                        String::from_utf8_lossy(name),
                        p.authoritative.get(name)
                    ));
                }
            }
            for (name, e) in &p.authoritative {
                let key = (name.clone(), e.version, e.tombstone);
                if !self.written.contains(&key) {
                    return Err(format!("never written: {key:?}"));
                }
                if !self.acked.contains(&key) {
                    self.counts.unacked_surfaced += 1;
                }
                for h in &e.holders {
                    let l = ls.iter().find(|l| l.osd == *h).ok_or("holder not listed")?;
                    let speaks = if self.history.is_empty() {
                        l.has_info
                    } else {
                        self.history
                            .iter()
                            .any(|i| self.osds[*h as usize].witnessed(*h, i))
                    };
                    let exact = entry(l, name)
                        .is_some_and(|o| (o.version, o.tombstone) == (e.version, e.tombstone));
                    if !speaks || !exact {
                        return Err(format!("bad holder osd{h} of {key:?}"));
                    }
                }
            }
            let live = p.authoritative.values().filter(|e| !e.tombstone).count() as u64;
            let order: Vec<u32> = p.members.iter().map(|m| m.osd).collect();
            if live != p.live_objects || order != current.acting {
                return Err(format!("live {} / members {order:?}", p.live_objects));
            }
            let mut pulled: Vec<&Vec<u8>> = p.pulls.iter().flat_map(|q| &q.names).collect();
            pulled.sort();
            let missing: Vec<&Vec<u8>> = p.members[0].missing.iter().map(|m| &m.name).collect();
            if pulled != missing {
                return Err(format!("pulls {pulled:?} != primary missing {missing:?}"));
            }
            Ok(())
        }

        fn apply(&mut self, p: &Plan, current: &Interval) -> Result<(), String> {
            // PgPrepare on every member.
            for m in &p.members {
                let o = &mut self.osds[m.osd as usize];
                for name in &m.remove {
                    match o.objects.remove(name) {
                        Some((_, false)) => {}
                        other => return Err(format!("remove of {name:?}: held {other:?}")),
                    }
                }
                if m.set_since {
                    o.has_info = true;
                    o.info_since = current.since;
                }
                self.counts.removes += m.remove.len() as u64;
            }
            // PgPush from holders to the primary, before it activates.
            let primary = current.acting[0] as usize;
            for q in &p.pulls {
                self.counts.pulls += q.names.len() as u64;
                for name in &q.names {
                    let held = self.osds[q.holder as usize].objects.get(name).copied();
                    let a = &p.authoritative[name];
                    if held != Some((a.version, a.tombstone)) {
                        return Err(format!("osd{} holds {held:?} of {name:?}", q.holder));
                    }
                    self.osds[primary]
                        .objects
                        .insert(name.clone(), (a.version, a.tombstone));
                }
            }
            // Recovery from the active primary: all of it, or the interval ends part way.
            let full = self.rng.chance(3, 4);
            for m in &p.members[1..] {
                for e in &m.missing {
                    if full || self.rng.chance(1, 2) {
                        self.osds[m.osd as usize]
                            .objects
                            .insert(e.name.clone(), (e.version, e.tombstone));
                    }
                }
            }
            if !full {
                self.counts.partial += 1;
                self.history.push(current.clone());
                return Ok(());
            }
            // Clean: every member holds the authoritative state; trim tombstones and history.
            self.counts.full += 1;
            for &m in &current.acting {
                let o = &mut self.osds[m as usize];
                o.objects.retain(|_, (_, tomb)| !*tomb);
                let want: BTreeMap<&Vec<u8>, ObjVersion> = p
                    .authoritative
                    .iter()
                    .filter(|(_, e)| !e.tombstone)
                    .map(|(n, e)| (n, e.version))
                    .collect();
                let has: BTreeMap<&Vec<u8>, ObjVersion> =
                    o.objects.iter().map(|(n, (v, _))| (n, *v)).collect();
                if want != has {
                    return Err(format!("osd{m} after recovery: {has:?} != {want:?}"));
                }
            }
            for (name, e) in &p.authoritative {
                self.floors.insert(
                    name.clone(),
                    Floor {
                        version: e.version,
                        tombstone: e.tombstone,
                        trimmed: e.tombstone,
                    },
                );
            }
            self.history = vec![current.clone()];
            Ok(())
        }

        fn writes(&mut self, current: &Interval) {
            for seq in 1..=self.rng.below(7) as u64 {
                let name = self.names[self.rng.below(self.names.len())].clone();
                let kind = self.rng.below(20);
                let tombstone = matches!(kind, 8..=11 | 17..=19);
                let acked = kind < 12;
                let version = ObjVersion {
                    epoch: current.since,
                    seq,
                };
                let mut to: Vec<u32> = current.acting.clone();
                if !acked {
                    to.retain(|_| self.rng.chance(1, 2));
                    if to.is_empty() {
                        to.push(current.acting[self.rng.below(current.acting.len())]);
                    }
                }
                for o in &to {
                    self.osds[*o as usize]
                        .objects
                        .insert(name.clone(), (version, tombstone));
                }
                self.written.insert((name.clone(), version, tombstone));
                if acked {
                    self.counts.acked += 1;
                    self.acked.insert((name.clone(), version, tombstone));
                    self.floors.insert(
                        name.clone(),
                        Floor {
                            version,
                            tombstone,
                            trimmed: false,
                        },
                    );
                } else {
                    self.counts.unacked += 1;
                }
                self.trace.push(format!(
                    "  {} {} {version:?} -> {to:?}",
                    if acked { "ack" } else { "unacked" },
                    String::from_utf8_lossy(&name)
                ));
            }
        }
    }

    /// Fixed seeds: the generator reaches every outcome the properties are about, so the
    /// property test below is not vacuous.
    #[test]
    fn model_covers_every_outcome() {
        let mut total = Counts::default();
        for seed in 0..400 {
            match run(seed) {
                Ok(c) => total.add(&c),
                Err(e) => panic!("seed {seed}: {e}"),
            }
        }
        let c = total;
        // Seeds 0..400 give about 5500 activations, 3100 incomplete (1400 with a wiped or
        // reset member answering), 780 silent members, 1400 partial recoveries.
        assert!(c.active > 2000, "{c:?}");
        assert!(c.incomplete > 500 && c.split_brain > 200, "{c:?}");
        assert!(
            c.unanswered > 200 && c.full > 1000 && c.partial > 300,
            "{c:?}"
        );
        assert!(c.pulls > 1000 && c.removes > 50, "{c:?}");
        assert!(
            c.acked > 3000 && c.unacked > 1000 && c.unacked_surfaced > 500,
            "{c:?}"
        );
    }

    /// Seeds the property test found, replayed on every run. 14291859048419514716 (CI,
    /// 2026-12-07): a member reset into an interval kept its stale copy of an object whose
    /// authoritative entry differed, the interval's recovery ended part way, and in the next
    /// interval it spoke for that interval with the stale copy, bringing back an object whose
    /// delete's tombstone was trimmed when the PG was last clean.
    /// 7422534535648375423: the same, found in a hunt of 30,000 cases before the fix.
    #[test]
    fn model_seeds_found_by_the_property_test() {
        for seed in [14291859048419514716, 7422534535648375423] {
            if let Err(e) = run(seed) {
                panic!("seed {seed}: {e}");
            }
        }
    }

    proptest! {
        #[test]
        fn model_never_loses_an_acknowledged_op(seed in any::<u64>()) {
            if let Err(e) = run(seed) {
                prop_assert!(false, "seed {}: {}", seed, e);
            }
        }
    }
}
