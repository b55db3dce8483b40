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

/// Check that `txn` applies cleanly to `view`, simulating the existence effects of earlier ops
/// of the same transaction (create-then-write, remove-then-recreate, ...).
pub fn validate(view: &dyn StoreView, txn: &Transaction) -> Result<(), StoreError> {
    let mut colls: HashMap<CollectionId, bool> = HashMap::new();
    let mut objs: HashMap<(CollectionId, &ObjectId), bool> = HashMap::new();
    let mut delta: HashMap<CollectionId, isize> = HashMap::new();
    for op in &txn.ops {
        let cid = op.cid();
        let coll_exists = *colls
            .entry(cid)
            .or_insert_with(|| view.collection_exists(cid));
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
                if base + delta.get(&cid).copied().unwrap_or(0) > 0 {
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
                let exists = *objs
                    .entry((cid, oid))
                    .or_insert_with(|| view.object_exists(cid, oid));
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
                        *delta.entry(cid).or_insert(0) -= 1;
                    }
                    Op::RmAttr { .. } | Op::OmapRm { .. } => {}
                    _ => {
                        if !exists {
                            objs.insert((cid, oid), true);
                            *delta.entry(cid).or_insert(0) += 1;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
