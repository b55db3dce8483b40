//! What a PG keeps beside its objects for peering: tombstones and its info.
//!
//! Both live in the PG's meta collection ([`crate::pg::PgKey::meta_cid`]), next to the log:
//! - **Tombstones** ([`TOMB_OBJECT`]'s omap): object name → the [`version_key`] of the remove
//!   that deleted it. A client remove writes one in the same transaction as the removal, on
//!   every member, so peering can tell "removed at v" from "never had it" and a stale copy
//!   never comes back. An object written again after its removal has a newer version than
//!   its tombstone; the newer of the two is what the member holds ([`held_version`]).
//! - **Info** ([`INFO_OBJECT`]'s omap, key [`SINCE_KEY`]): the first interval (epoch) this
//!   copy has every write of. Peering sets it on a member that was outside the PG's history
//!   (new, wiped, or stale) before the interval's first write; a copy without info never
//!   speaks for an interval.
//!
//! Invariant: a listing ([`list_copy`]) holds one entry per name, sorted by name: the live
//! object at its version attribute, or the tombstone, whichever is newer.

use carmine_agent::peering::{ListedObject, ObjectVersion, PgCopy};
use carmine_objectstore::{ObjectId, ObjectStore, Op, StoreError};
use smallvec::smallvec;

use crate::pg::PgKey;
use crate::pglog::{version_key, version_of_key, Version, VERSION_ATTR};

/// The meta object whose omap holds the PG's tombstones.
pub const TOMB_OBJECT: &[u8] = b"tomb";
/// The meta object whose omap holds the PG's info.
pub const INFO_OBJECT: &[u8] = b"info";
/// The info key of the first interval this copy has every write of (u64, big-endian).
pub const SINCE_KEY: &[u8] = b"since";

pub fn tomb_object() -> ObjectId {
    ObjectId::from_slice(TOMB_OBJECT)
}

pub fn info_object() -> ObjectId {
    ObjectId::from_slice(INFO_OBJECT)
}

/// The op that records a tombstone for `name` at `version`.
pub fn set_tombstone(key: PgKey, name: &[u8], version: Version) -> Op {
    Op::OmapSet {
        cid: key.meta_cid(),
        oid: tomb_object(),
        entries: smallvec![(name.into(), version_key(version).as_slice().into())],
    }
}

/// The op that records `since` in the PG's info.
pub fn set_since(key: PgKey, since: u64) -> Op {
    Op::OmapSet {
        cid: key.meta_cid(),
        oid: info_object(),
        entries: smallvec![(SINCE_KEY.into(), since.to_be_bytes().as_slice().into())],
    }
}

fn version(v: Version) -> ObjectVersion {
    ObjectVersion {
        epoch: v.epoch.0,
        seq: v.seq,
    }
}

/// The version attribute of a live object (`None`: absent, or written before versions).
pub fn object_version(store: &dyn ObjectStore, key: PgKey, name: &[u8]) -> Option<Version> {
    let oid = ObjectId::from_slice(name);
    store
        .get_attr(key.cid(), &oid, VERSION_ATTR)
        .ok()
        .and_then(|b| version_of_key(&b))
}

/// Whether the live object exists.
pub fn object_exists(store: &dyn ObjectStore, key: PgKey, name: &[u8]) -> bool {
    store.stat(key.cid(), &ObjectId::from_slice(name)).is_ok()
}

/// The tombstone of `name`, if the PG keeps one.
pub fn tombstone(store: &dyn ObjectStore, key: PgKey, name: &[u8]) -> Option<Version> {
    store
        .omap_get(key.meta_cid(), &tomb_object(), &[name.to_vec()])
        .ok()
        .and_then(|m| m.into_values().next())
        .and_then(|b| version_of_key(&b))
}

/// What this copy holds of `name`: the newer of the live object's version and its tombstone
/// (`true`: removed). A live object without a version counts as the oldest version.
pub fn held_version(store: &dyn ObjectStore, key: PgKey, name: &[u8]) -> Option<(Version, bool)> {
    let live = object_exists(store, key, name).then(|| {
        object_version(store, key, name).unwrap_or(Version {
            epoch: carmine_wire::Epoch(0),
            seq: 0,
        })
    });
    let tomb = tombstone(store, key, name);
    match (live, tomb) {
        (Some(l), Some(t)) if t > l => Some((t, true)),
        (Some(l), _) => Some((l, false)),
        (None, Some(t)) => Some((t, true)),
        (None, None) => None,
    }
}

/// The PG's info: the first interval this copy has every write of.
pub fn info_since(store: &dyn ObjectStore, key: PgKey) -> Option<u64> {
    let m = store
        .omap_get(key.meta_cid(), &info_object(), &[SINCE_KEY.to_vec()])
        .ok()?;
    let b: [u8; 8] = m.into_values().next()?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// This copy of the PG for peering: info, and every live object and tombstone (see the
/// module invariant). A PG whose collections do not exist is an empty copy without info.
pub fn list_copy(store: &dyn ObjectStore, key: PgKey) -> Result<PgCopy, StoreError> {
    let mut objects: Vec<ListedObject> = Vec::new();
    let mut after: Option<ObjectId> = None;
    loop {
        let page = match store.list(key.cid(), after.as_ref(), 1024) {
            Ok(p) => p,
            Err(StoreError::NotFound(_)) => break,
            Err(e) => return Err(e),
        };
        for oid in page.objects {
            let v = store
                .get_attr(key.cid(), &oid, VERSION_ATTR)
                .ok()
                .and_then(|b| version_of_key(&b))
                .map(version)
                .unwrap_or(ObjectVersion { epoch: 0, seq: 0 });
            objects.push(ListedObject {
                name: oid.0.into_vec(),
                version: v,
                tombstone: false,
            });
        }
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    // Tombstones, merged in: the newer entry per name wins.
    let mut tombs: Vec<ListedObject> = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = match store.omap_range(key.meta_cid(), &tomb_object(), after.as_deref(), 4096) {
            Ok(p) => p,
            Err(StoreError::NotFound(_)) => break,
            Err(e) => return Err(e),
        };
        let Some(last) = page.last().map(|(k, _)| k.clone()) else {
            break;
        };
        for (name, v) in page {
            if let Some(v) = version_of_key(&v) {
                tombs.push(ListedObject {
                    name,
                    version: version(v),
                    tombstone: true,
                });
            }
        }
        after = Some(last);
    }
    let mut merged = Vec::with_capacity(objects.len() + tombs.len());
    let (mut a, mut b) = (objects.into_iter().peekable(), tombs.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (Some(x), Some(y)) => match x.name.cmp(&y.name) {
                std::cmp::Ordering::Less => a.next(),
                std::cmp::Ordering::Greater => b.next(),
                std::cmp::Ordering::Equal => {
                    let (x, y) = (a.next(), b.next());
                    match (x, y) {
                        (Some(x), Some(y)) => Some(if y.version > x.version { y } else { x }),
                        (x, y) => x.or(y),
                    }
                }
            },
        };
        if let Some(o) = next {
            merged.push(o);
        }
    }
    let since = info_since(store, key);
    Ok(PgCopy {
        has_info: since.is_some(),
        info_since: since.unwrap_or(0),
        objects: merged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use carmine_memstore::MemStore;
    use carmine_objectstore::{Completion, Transaction};
    use carmine_wire::Epoch;

    fn v(e: u64, s: u64) -> Version {
        Version {
            epoch: Epoch(e),
            seq: s,
        }
    }

    fn commit(st: &mut MemStore, ops: Vec<Op>) {
        st.submit(Transaction { ops });
        let mut out: Vec<Completion> = Vec::new();
        while out.is_empty() {
            st.poll(&mut out);
        }
        assert!(out[0].result.is_ok(), "{:?}", out[0].result);
    }

    fn obj(st: &mut MemStore, k: PgKey, name: &str, ver: Version) {
        let oid = ObjectId::from_slice(name.as_bytes());
        commit(
            st,
            vec![
                Op::Write {
                    cid: k.cid(),
                    oid: oid.clone(),
                    off: 0,
                    data: b"d".to_vec(),
                },
                Op::SetAttr {
                    cid: k.cid(),
                    oid,
                    name: VERSION_ATTR.into(),
                    value: version_key(ver).as_slice().into(),
                },
            ],
        );
    }

    #[test]
    fn a_listing_merges_objects_and_tombstones_newest_first() {
        let mut st = MemStore::new();
        let k = PgKey { pool: 1, pg: 3 };
        assert_eq!(list_copy(&st, k).unwrap(), PgCopy::default());
        commit(
            &mut st,
            vec![
                Op::CreateCollection { cid: k.cid() },
                Op::CreateCollection { cid: k.meta_cid() },
            ],
        );
        obj(&mut st, k, "a", v(3, 1));
        obj(&mut st, k, "c", v(3, 2));
        // "b" removed; "c" removed at 3'1 but written again at 3'2; "d" removed after write.
        commit(
            &mut st,
            vec![
                set_tombstone(k, b"b", v(2, 9)),
                set_tombstone(k, b"c", v(3, 1)),
                set_tombstone(k, b"d", v(4, 1)),
                set_since(k, 7),
            ],
        );
        obj(&mut st, k, "d", v(3, 5));
        let copy = list_copy(&st, k).unwrap();
        assert!(copy.has_info);
        assert_eq!(copy.info_since, 7);
        let got: Vec<(&[u8], u64, u64, bool)> = copy
            .objects
            .iter()
            .map(|o| (&o.name[..], o.version.epoch, o.version.seq, o.tombstone))
            .collect();
        assert_eq!(
            got,
            vec![
                (&b"a"[..], 3, 1, false),
                (&b"b"[..], 2, 9, true),
                (&b"c"[..], 3, 2, false),
                (&b"d"[..], 4, 1, true),
            ]
        );
        assert_eq!(held_version(&st, k, b"d"), Some((v(4, 1), true)));
        assert_eq!(held_version(&st, k, b"c"), Some((v(3, 2), false)));
        assert_eq!(held_version(&st, k, b"zz"), None);
    }
}
