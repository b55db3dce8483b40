//! Transaction validation shared by every engine: run it before applying, then apply without
//! failure paths. That is what makes a transaction all-or-nothing without an undo log.

use std::collections::HashMap;

use crate::{CollectionId, ObjectId, Op, StoreError, Transaction, MAX_OBJECT_SIZE};

/// What validation needs to know about the current state.
pub trait StoreView {
    fn collection_exists(&self, cid: CollectionId) -> bool;
    fn object_exists(&self, cid: CollectionId, oid: &ObjectId) -> bool;
    fn collection_len(&self, cid: CollectionId) -> usize;
}

fn end_of(off: u64, len: u64) -> Result<u64, StoreError> {
    match off.checked_add(len) {
        Some(e) if e <= MAX_OBJECT_SIZE => Ok(e),
        _ => Err(StoreError::InvalidArgument(format!(
            "range {off}+{len} beyond the maximum object size"
        ))),
    }
}

/// A tiny map for what one transaction touches: a linear scan over a few inline slots while
/// small (a typical transaction names one collection and one or a few objects, and this runs
/// for every transaction on the write path: no hashing and no heap allocation), a `HashMap`
/// once it grows.
struct Memo<K, V> {
    small: [Option<(K, V)>; MEMO_SMALL],
    /// Created on overflow only: even an empty `HashMap::new()` costs a thread-local read for
    /// its random seed, three per transaction here.
    big: Option<HashMap<K, V>>,
}

/// Entries kept inline before switching to the hash map.
const MEMO_SMALL: usize = 4;

impl<K: Eq + std::hash::Hash + Copy, V: Copy> Memo<K, V> {
    fn new() -> Self {
        Memo {
            small: [None; MEMO_SMALL],
            big: None,
        }
    }
    fn get(&self, k: &K) -> Option<V> {
        match &self.big {
            None => self
                .small
                .iter()
                .flatten()
                .find(|(x, _)| x == k)
                .map(|(_, v)| *v),
            Some(big) => big.get(k).copied(),
        }
    }
    fn insert(&mut self, k: K, v: V) {
        if let Some(big) = &mut self.big {
            big.insert(k, v);
        } else if let Some(e) = self.small.iter_mut().flatten().find(|(x, _)| *x == k) {
            e.1 = v;
        } else if let Some(slot) = self.small.iter_mut().find(|e| e.is_none()) {
            *slot = Some((k, v));
        } else {
            let mut big: HashMap<K, V> = self.small.iter_mut().filter_map(Option::take).collect();
            big.insert(k, v);
            self.big = Some(big);
        }
    }
    fn get_or_insert_with(&mut self, k: K, f: impl FnOnce() -> V) -> V {
        match self.get(&k) {
            Some(v) => v,
            None => {
                let v = f();
                self.insert(k, v);
                v
            }
        }
    }
}

/// Check that `txn` applies cleanly to `view`, simulating the existence effects of earlier ops
/// of the same transaction (create-then-write, remove-then-recreate, ...).
pub fn validate(view: &dyn StoreView, txn: &Transaction) -> Result<(), StoreError> {
    let mut colls: Memo<CollectionId, bool> = Memo::new();
    let mut objs: Memo<(CollectionId, &ObjectId), bool> = Memo::new();
    let mut delta: Memo<CollectionId, isize> = Memo::new();
    for op in &txn.ops {
        let cid = op.cid();
        let coll_exists = colls.get_or_insert_with(cid, || view.collection_exists(cid));
        match op {
            Op::CreateCollection { .. } => {
                if coll_exists {
                    return Err(StoreError::AlreadyExists(format!("collection {}", cid.0)));
                }
                // A collection can only be recreated after being emptied and removed earlier in
                // this transaction, so the simulated object entries and count stay correct.
                colls.insert(cid, true);
            }
            Op::RemoveCollection { .. } => {
                if !coll_exists {
                    return Err(StoreError::NotFound(format!("collection {}", cid.0)));
                }
                let base = if view.collection_exists(cid) {
                    view.collection_len(cid) as isize
                } else {
                    0
                };
                if base + delta.get(&cid).unwrap_or(0) > 0 {
                    return Err(StoreError::NotEmpty(format!("collection {}", cid.0)));
                }
                colls.insert(cid, false);
            }
            _ => {
                if !coll_exists {
                    return Err(StoreError::NotFound(format!("collection {}", cid.0)));
                }
                let oid = match op {
                    Op::Touch { oid, .. }
                    | Op::Write { oid, .. }
                    | Op::Zero { oid, .. }
                    | Op::Truncate { oid, .. }
                    | Op::Remove { oid, .. }
                    | Op::SetAttr { oid, .. }
                    | Op::RmAttr { oid, .. }
                    | Op::OmapSet { oid, .. }
                    | Op::OmapRm { oid, .. } => oid,
                    Op::CreateCollection { .. } | Op::RemoveCollection { .. } => continue,
                };
                let exists = objs.get_or_insert_with((cid, oid), || view.object_exists(cid, oid));
                match op {
                    Op::Write { off, data, .. } => {
                        end_of(*off, data.len() as u64)?;
                    }
                    Op::Zero { off, len, .. } => {
                        end_of(*off, *len)?;
                    }
                    Op::Truncate { size, .. } => {
                        end_of(*size, 0)?;
                    }
                    _ => {}
                }
                match op {
                    Op::Remove { .. } | Op::RmAttr { .. } | Op::OmapRm { .. } if !exists => {
                        return Err(StoreError::NotFound(format!("object {oid:?}")));
                    }
                    Op::Remove { .. } => {
                        objs.insert((cid, oid), false);
                        delta.insert(cid, delta.get(&cid).unwrap_or(0) - 1);
                    }
                    Op::RmAttr { .. } | Op::OmapRm { .. } => {}
                    _ => {
                        if !exists {
                            objs.insert((cid, oid), true);
                            delta.insert(cid, delta.get(&cid).unwrap_or(0) + 1);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// A hand-built view: collections with object names.
    struct View(BTreeMap<u64, BTreeSet<&'static str>>);
    impl StoreView for View {
        fn collection_exists(&self, cid: CollectionId) -> bool {
            self.0.contains_key(&cid.0)
        }
        fn object_exists(&self, cid: CollectionId, oid: &ObjectId) -> bool {
            self.0
                .get(&cid.0)
                .is_some_and(|c| c.iter().any(|o| o.as_bytes() == oid.as_bytes()))
        }
        fn collection_len(&self, cid: CollectionId) -> usize {
            self.0.get(&cid.0).map_or(0, |c| c.len())
        }
    }

    fn view() -> View {
        View(BTreeMap::from([
            (1, BTreeSet::from(["a", "b"])),
            (2, BTreeSet::new()),
        ]))
    }
    fn oid(s: &str) -> ObjectId {
        ObjectId::from(s)
    }
    fn txn(ops: Vec<Op>) -> Transaction {
        Transaction { ops }
    }
    const C1: CollectionId = CollectionId(1);
    const C2: CollectionId = CollectionId(2);
    const C3: CollectionId = CollectionId(3);

    #[test]
    fn collection_rules() {
        let v = view();
        assert!(matches!(
            validate(&v, &txn(vec![Op::CreateCollection { cid: C1 }])),
            Err(StoreError::AlreadyExists(_))
        ));
        assert!(matches!(
            validate(&v, &txn(vec![Op::RemoveCollection { cid: C3 }])),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            validate(&v, &txn(vec![Op::RemoveCollection { cid: C1 }])),
            Err(StoreError::NotEmpty(_))
        ));
        assert_eq!(
            validate(&v, &txn(vec![Op::RemoveCollection { cid: C2 }])),
            Ok(())
        );
        // Emptying then removing in one transaction is fine; then recreating too.
        let t = txn(vec![
            Op::Remove {
                cid: C1,
                oid: oid("a"),
            },
            Op::Remove {
                cid: C1,
                oid: oid("b"),
            },
            Op::RemoveCollection { cid: C1 },
            Op::CreateCollection { cid: C1 },
            Op::Touch {
                cid: C1,
                oid: oid("c"),
            },
        ]);
        assert_eq!(validate(&v, &t), Ok(()));
        // After recreation the old objects are gone.
        let t = txn(vec![
            Op::Remove {
                cid: C1,
                oid: oid("a"),
            },
            Op::Remove {
                cid: C1,
                oid: oid("b"),
            },
            Op::RemoveCollection { cid: C1 },
            Op::CreateCollection { cid: C1 },
            Op::Remove {
                cid: C1,
                oid: oid("a"),
            },
        ]);
        assert!(matches!(validate(&v, &t), Err(StoreError::NotFound(_))));
    }

    #[test]
    fn object_rules() {
        let v = view();
        assert!(matches!(
            validate(
                &v,
                &txn(vec![Op::Touch {
                    cid: C3,
                    oid: oid("a")
                }])
            ),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            validate(
                &v,
                &txn(vec![Op::Remove {
                    cid: C2,
                    oid: oid("a")
                }])
            ),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            validate(
                &v,
                &txn(vec![Op::RmAttr {
                    cid: C2,
                    oid: oid("x"),
                    name: "n".into()
                }])
            ),
            Err(StoreError::NotFound(_))
        ));
        // Create by write, then remove, then a second remove fails.
        let w = Op::Write {
            cid: C2,
            oid: oid("x"),
            off: 0,
            data: vec![1],
        };
        assert_eq!(
            validate(
                &v,
                &txn(vec![
                    w.clone(),
                    Op::Remove {
                        cid: C2,
                        oid: oid("x")
                    }
                ])
            ),
            Ok(())
        );
        let t = txn(vec![
            w,
            Op::Remove {
                cid: C2,
                oid: oid("x"),
            },
            Op::Remove {
                cid: C2,
                oid: oid("x"),
            },
        ]);
        assert!(matches!(validate(&v, &t), Err(StoreError::NotFound(_))));
        // A collection that gained an object in this transaction is not empty.
        let t = txn(vec![
            Op::Touch {
                cid: C2,
                oid: oid("y"),
            },
            Op::RemoveCollection { cid: C2 },
        ]);
        assert!(matches!(validate(&v, &t), Err(StoreError::NotEmpty(_))));
    }

    #[test]
    fn ranges_are_bounded() {
        let v = view();
        let t = txn(vec![Op::Zero {
            cid: C1,
            oid: oid("a"),
            off: u64::MAX - 1,
            len: 5,
        }]);
        assert!(matches!(
            validate(&v, &t),
            Err(StoreError::InvalidArgument(_))
        ));
        let t = txn(vec![Op::Truncate {
            cid: C1,
            oid: oid("a"),
            size: MAX_OBJECT_SIZE + 1,
        }]);
        assert!(matches!(
            validate(&v, &t),
            Err(StoreError::InvalidArgument(_))
        ));
    }

    /// More objects than the linear memo holds: the switch to the hash map keeps what was
    /// simulated (created objects count, removed ones are gone).
    #[test]
    fn many_objects_in_one_transaction() {
        let v = view();
        let names: Vec<String> = (0..3 * MEMO_SMALL).map(|i| format!("o{i}")).collect();
        let mut ops: Vec<Op> = names
            .iter()
            .map(|n| Op::Touch {
                cid: C2,
                oid: oid(n),
            })
            .collect();
        // Remove every one of them again, then C2 is empty and may go.
        ops.extend(names.iter().map(|n| Op::Remove {
            cid: C2,
            oid: oid(n),
        }));
        ops.push(Op::RemoveCollection { cid: C2 });
        assert_eq!(validate(&v, &txn(ops.clone())), Ok(()));
        // Leave the last one: not empty.
        let keep = ops.len() - 2;
        ops.remove(keep);
        assert!(matches!(
            validate(&v, &txn(ops)),
            Err(StoreError::NotEmpty(_))
        ));
        // A removed object cannot lose an attribute after the memo switched.
        let mut ops: Vec<Op> = names
            .iter()
            .map(|n| Op::Touch {
                cid: C2,
                oid: oid(n),
            })
            .collect();
        ops.push(Op::Remove {
            cid: C2,
            oid: oid("o3"),
        });
        ops.push(Op::RmAttr {
            cid: C2,
            oid: oid("o3"),
            name: "x".into(),
        });
        assert!(matches!(
            validate(&v, &txn(ops)),
            Err(StoreError::NotFound(_))
        ));
    }
}
