//! Metadata reads shared by the stores that keep attributes and collection listings in ordered
//! in-memory maps (memstore, and bdevstore's index): one implementation of the paging rules of
//! the contract. Omaps have their own type with these reads ([`crate::omap::Omap`]).

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::{ListPage, ObjectId, StoreError};

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
