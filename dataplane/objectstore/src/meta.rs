//! Metadata reads shared by the stores that keep attributes, omaps and collection listings in
//! ordered in-memory maps (memstore, and bdevstore's index): one implementation of the paging
//! rules of the contract.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::ops::Bound;

use crate::{ListPage, ObjectId, OmapEntries, StoreError};

/// Attribute `name`, or `NotFound`.
pub fn attr<V: AsRef<[u8]>>(
    attrs: &BTreeMap<String, V>,
    name: &str,
) -> Result<Vec<u8>, StoreError> {
    attrs
        .get(name)
        .map(|v| v.as_ref().to_vec())
        .ok_or_else(|| StoreError::NotFound(format!("attribute {name}")))
}

/// All attributes, owned.
pub fn attrs<V: AsRef<[u8]>>(attrs: &BTreeMap<String, V>) -> BTreeMap<String, Vec<u8>> {
    attrs
        .iter()
        .map(|(k, v)| (k.clone(), v.as_ref().to_vec()))
        .collect()
}

/// The present ones of `keys`.
pub fn omap_get<K, V>(omap: &BTreeMap<K, V>, keys: &[Vec<u8>]) -> BTreeMap<Vec<u8>, Vec<u8>>
where
    K: Borrow<[u8]> + Ord,
    V: AsRef<[u8]>,
{
    keys.iter()
        .filter_map(|k| {
            omap.get(k.as_slice())
                .map(|v| (k.clone(), v.as_ref().to_vec()))
        })
        .collect()
}

/// Up to `max` entries with keys strictly after `after`, in key order.
pub fn omap_range<K, V>(omap: &BTreeMap<K, V>, after: Option<&[u8]>, max: usize) -> OmapEntries
where
    K: Borrow<[u8]> + Ord,
    V: AsRef<[u8]>,
{
    let lo = after.map_or(Bound::Unbounded, Bound::Excluded);
    omap.range::<[u8], _>((lo, Bound::Unbounded))
        .take(max)
        .map(|(k, v)| (k.borrow().to_vec(), v.as_ref().to_vec()))
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
