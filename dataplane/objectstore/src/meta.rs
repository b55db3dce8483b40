//! Metadata reads shared by the stores that keep attributes, omaps and collection listings in
//! ordered in-memory maps (memstore, and bdevstore's index): one implementation of the paging
//! rules of the contract.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::{ListPage, ObjectId, OmapEntries, StoreError};

/// Attribute `name`, or `NotFound`.
pub fn attr(attrs: &BTreeMap<String, Vec<u8>>, name: &str) -> Result<Vec<u8>, StoreError> {
    attrs
        .get(name)
        .cloned()
        .ok_or_else(|| StoreError::NotFound(format!("attribute {name}")))
}

/// The present ones of `keys`.
pub fn omap_get(omap: &BTreeMap<Vec<u8>, Vec<u8>>, keys: &[Vec<u8>]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    keys.iter()
        .filter_map(|k| omap.get(k).map(|v| (k.clone(), v.clone())))
        .collect()
}

/// Up to `max` entries with keys strictly after `after`, in key order.
pub fn omap_range(
    omap: &BTreeMap<Vec<u8>, Vec<u8>>,
    after: Option<&[u8]>,
    max: usize,
) -> OmapEntries {
    let lo = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_vec()));
    omap.range((lo, Bound::Unbounded))
        .take(max)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// One page of a collection's objects strictly after `after`; `next` is set only when more
/// objects follow.
pub fn list_page<V>(
    objects: &BTreeMap<ObjectId, V>,
    after: Option<&ObjectId>,
    max: usize,
) -> ListPage {
    let lo = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.clone()));
    let mut it = objects
        .range((lo, Bound::Unbounded))
        .map(|(k, _)| k.clone());
    let page: Vec<ObjectId> = it.by_ref().take(max).collect();
    let next = if it.next().is_some() {
        page.last().cloned()
    } else {
        None
    };
    ListPage {
        objects: page,
        next,
    }
}
