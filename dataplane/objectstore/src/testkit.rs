//! Test helpers shared by the engines' suites: a plain reference model with the contract's
//! semantics, proptest strategies for random transactions, and a full-state comparison.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::{
    drive, validate, CollectionId, ObjectId, ObjectStore, Op, StoreError, StoreView, Transaction,
};

/// One object of the model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelObject {
    pub data: Vec<u8>,
    pub attrs: BTreeMap<String, Vec<u8>>,
    pub omap: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// The reference model: nested ordered maps, data as a flat byte vector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    pub colls: BTreeMap<CollectionId, BTreeMap<ObjectId, ModelObject>>,
}

impl StoreView for Model {
    fn collection_exists(&self, cid: CollectionId) -> bool {
        self.colls.contains_key(&cid)
    }
    fn object_exists(&self, cid: CollectionId, oid: &ObjectId) -> bool {
        self.colls.get(&cid).is_some_and(|c| c.contains_key(oid))
    }
    fn collection_len(&self, cid: CollectionId) -> usize {
        self.colls.get(&cid).map_or(0, |c| c.len())
    }
}

fn resize(v: &mut Vec<u8>, n: u64) {
    v.resize(n as usize, 0);
}

impl Model {
    /// Validate then apply, like an engine does.
    pub fn apply(&mut self, txn: &Transaction) -> Result<(), StoreError> {
        validate(self, txn)?;
        for op in &txn.ops {
            match op {
                Op::CreateCollection { cid } => {
                    self.colls.insert(*cid, BTreeMap::new());
                }
                Op::RemoveCollection { cid } => {
                    self.colls.remove(cid);
                }
                Op::Remove { cid, oid } => {
                    self.colls.entry(*cid).or_default().remove(oid);
                }
                Op::Touch { cid, oid }
                | Op::Write { cid, oid, .. }
                | Op::Zero { cid, oid, .. }
                | Op::Truncate { cid, oid, .. }
                | Op::SetAttr { cid, oid, .. }
                | Op::RmAttr { cid, oid, .. }
                | Op::OmapSet { cid, oid, .. }
                | Op::OmapRm { cid, oid, .. } => {
                    let o = self
                        .colls
                        .entry(*cid)
                        .or_default()
                        .entry(oid.clone())
                        .or_default();
                    match op {
                        Op::Write { off, data, .. } => {
                            let end = off + data.len() as u64;
                            if end > o.data.len() as u64 {
                                resize(&mut o.data, end);
                            }
                            o.data[*off as usize..end as usize].copy_from_slice(data);
                        }
                        Op::Zero { off, len, .. } => {
                            let end = off + len;
                            if end > o.data.len() as u64 {
                                resize(&mut o.data, end);
                            }
                            o.data[*off as usize..end as usize].fill(0);
                        }
                        Op::Truncate { size, .. } => resize(&mut o.data, *size),
                        Op::SetAttr { name, value, .. } => {
                            o.attrs.insert(name.to_string(), value.to_vec());
                        }
                        Op::RmAttr { name, .. } => {
                            o.attrs.remove(&**name);
                        }
                        Op::OmapSet { entries, .. } => {
                            for (k, v) in entries {
                                o.omap.insert(k.to_vec(), v.to_vec());
                            }
                        }
                        Op::OmapRm { keys, .. } => {
                            for k in keys {
                                o.omap.remove(k.as_slice());
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }
}

/// Same error kind (messages may differ between engines and the model).
pub fn same_kind(a: &StoreError, b: &StoreError) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// Compare every observable of `store` with `model`; `Err` names the first difference.
pub fn compare<S: ObjectStore + ?Sized>(store: &mut S, model: &Model) -> Result<(), String> {
    let colls = store.list_collections();
    let want: Vec<_> = model.colls.keys().copied().collect();
    if colls != want {
        return Err(format!("collections {colls:?} != {want:?}"));
    }
    for (cid, objs) in &model.colls {
        // Paginated listing with a small page size exercises the cursor.
        let mut listed = Vec::new();
        let mut after: Option<ObjectId> = None;
        loop {
            let page = store
                .list(*cid, after.as_ref(), 2)
                .map_err(|e| format!("list: {e}"))?;
            listed.extend(page.objects);
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let want: Vec<_> = objs.keys().cloned().collect();
        if listed != want {
            return Err(format!("listing of {cid:?}: {listed:?} != {want:?}"));
        }
        let absent = ObjectId::from("zz-not-an-object-of-the-model");
        if !objs.contains_key(&absent) {
            if let Some(Ok(_)) = store.read_in_place(*cid, &absent, 0, 4096) {
                return Err(format!("read_in_place found {absent:?}, absent in {cid:?}"));
            }
        }
        for (oid, o) in objs {
            let st = store
                .stat(*cid, oid)
                .map_err(|e| format!("stat {oid:?}: {e}"))?;
            if st.size != o.data.len() as u64 {
                return Err(format!("size of {oid:?}: {} != {}", st.size, o.data.len()));
            }
            let d = drive::read(store, *cid, oid, 0, u64::MAX >> 8)
                .map_err(|e| format!("read {oid:?}: {e}"))?;
            if d != o.data {
                return Err(format!(
                    "data of {oid:?} differs (len {} vs {})",
                    d.len(),
                    o.data.len()
                ));
            }
            let mid = o.data.len() as u64 / 3;
            let d = drive::read(store, *cid, oid, mid, 5000).map_err(|e| format!("read: {e}"))?;
            let end = (mid as usize + 5000).min(o.data.len());
            if d[..] != o.data[mid as usize..end] {
                return Err(format!("sub-range read of {oid:?} at {mid} differs"));
            }
            // A read served in place, where the store can, is the same bytes.
            let size = o.data.len() as u64;
            for (off, len) in [
                (0, 4096),
                (0, size),
                (mid, 100),
                (4096, 4096),
                (size, 10),
                (1, 4095),
            ] {
                let (s, e) = (
                    off.min(size) as usize,
                    off.saturating_add(len).min(size) as usize,
                );
                // A read whose bytes the store may lend: the same bytes.
                let lent = drive::read_lent(store, *cid, oid, off, len)
                    .map_err(|e| format!("read_lent {oid:?} at {off}: {e}"))?;
                if lent != o.data[s..e.max(s)] {
                    return Err(format!("read_lent of {oid:?} at {off}+{len} differs"));
                }
                if let Some(got) = store.read_in_place(*cid, oid, off, len) {
                    let got = got.map_err(|e| format!("read_in_place {oid:?} at {off}: {e}"))?;
                    if got != &o.data[s..e.max(s)] {
                        return Err(format!("read_in_place of {oid:?} at {off}+{len} differs"));
                    }
                }
            }
            let attrs = store
                .get_attrs(*cid, oid)
                .map_err(|e| format!("attrs: {e}"))?;
            if attrs != o.attrs {
                return Err(format!("attrs of {oid:?}: {attrs:?} != {:?}", o.attrs));
            }
            for (k, v) in &o.attrs {
                if store.get_attr(*cid, oid, k).as_ref() != Ok(v) {
                    return Err(format!("get_attr {k} of {oid:?}"));
                }
            }
            let mut omap = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = store
                    .omap_range(*cid, oid, after.as_deref(), 2)
                    .map_err(|e| format!("omap_range: {e}"))?;
                if page.is_empty() {
                    break;
                }
                after = page.last().map(|(k, _)| k.clone());
                omap.extend(page);
            }
            let want: Vec<_> = o.omap.clone().into_iter().collect();
            if omap != want {
                return Err(format!("omap of {oid:?}: {omap:?} != {want:?}"));
            }
            let keys: Vec<Vec<u8>> = o
                .omap
                .keys()
                .take(2)
                .cloned()
                .chain([b"zz-missing".to_vec()])
                .collect();
            let got = store
                .omap_get(*cid, oid, &keys)
                .map_err(|e| format!("omap_get: {e}"))?;
            let want: BTreeMap<_, _> = o
                .omap
                .iter()
                .take(2)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if got != want {
                return Err(format!("omap_get of {oid:?}"));
            }
        }
    }
    Ok(())
}

/// Submit `txn` to the store, apply it to the model, and check both agree on the outcome.
pub fn step<S: ObjectStore + ?Sized>(
    store: &mut S,
    model: &mut Model,
    txn: &Transaction,
) -> Result<(), String> {
    let got = drive::commit(store, txn.clone());
    let want = model.apply(txn);
    match (&got, &want) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(a), Err(b)) if same_kind(a, b) => Ok(()),
        _ => Err(format!("txn {txn:?}: store {got:?}, model {want:?}")),
    }
}

fn arb_cid() -> impl Strategy<Value = CollectionId> {
    (1u64..=3).prop_map(CollectionId)
}

fn arb_oid() -> impl Strategy<Value = ObjectId> {
    prop::sample::select(vec!["a", "b", "c", "d", "e"]).prop_map(ObjectId::from)
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    (any::<u8>(), 0..=max)
        .prop_map(|(seed, n)| (0..n).map(|i| seed.wrapping_add((i % 251) as u8)).collect())
}

fn arb_key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec!["k1", "k2", "k3", "k4", "k5", "k6"])
        .prop_map(|s| s.as_bytes().to_vec())
}

/// One random operation over a small universe (so ops collide often).
pub fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => arb_cid().prop_map(|cid| Op::CreateCollection { cid }),
        1 => arb_cid().prop_map(|cid| Op::RemoveCollection { cid }),
        1 => (arb_cid(), arb_oid()).prop_map(|(cid, oid)| Op::Touch { cid, oid }),
        6 => (arb_cid(), arb_oid(), 0u64..20_000, arb_bytes(9000))
            .prop_map(|(cid, oid, off, data)| Op::Write { cid, oid, off, data }),
        1 => (arb_cid(), arb_oid(), 0u64..20_000, 0u64..9000)
            .prop_map(|(cid, oid, off, len)| Op::Zero { cid, oid, off, len }),
        1 => (arb_cid(), arb_oid(), 0u64..25_000)
            .prop_map(|(cid, oid, size)| Op::Truncate { cid, oid, size }),
        1 => (arb_cid(), arb_oid()).prop_map(|(cid, oid)| Op::Remove { cid, oid }),
        2 => (arb_cid(), arb_oid(), prop::sample::select(vec!["x", "y", "z"]), arb_bytes(40))
            .prop_map(|(cid, oid, n, value)| Op::SetAttr { cid, oid, name: n.into(), value: value.into() }),
        1 => (arb_cid(), arb_oid(), prop::sample::select(vec!["x", "y"]))
            .prop_map(|(cid, oid, n)| Op::RmAttr { cid, oid, name: n.into() }),
        2 => (arb_cid(), arb_oid(), prop::collection::vec((arb_key(), arb_bytes(30)), 1..4))
            .prop_map(|(cid, oid, entries)| Op::OmapSet {
                cid,
                oid,
                entries: entries.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            }),
        1 => (arb_cid(), arb_oid(), prop::collection::vec(arb_key(), 1..3))
            .prop_map(|(cid, oid, keys)| Op::OmapRm {
                cid,
                oid,
                keys: keys.into_iter().map(Into::into).collect(),
            }),
    ]
}

/// A random transaction of 1..=4 operations.
pub fn arb_txn() -> impl Strategy<Value = Transaction> {
    prop::collection::vec(arb_op(), 1..=4).prop_map(|ops| Transaction { ops })
}
