//! An object's attributes: name → value, sorted by name in a vector whose first entry sits
//! inline in the object.
//!
//! Why not a `BTreeMap<String, _>`: the OSD sets one attribute on every write (the object's
//! version), so a map put a node of its own and a heap copy of the name behind every object:
//! two cache misses per write on a working set larger than the cache, and two allocations per
//! new object. Here a name stays as the op gave it ([`AttrName`]: the OSD's are `'static`,
//! never copied) and the first attribute is inline. Objects have a handful of attributes, so
//! the binary search and the moves of an insert stay short.
//!
//! Invariant: entries are sorted by name, with no name twice.

use std::collections::BTreeMap;

use carmine_objectstore::{AttrName, AttrValue};
use smallvec::SmallVec;

#[derive(Default)]
pub(crate) struct Attrs(SmallVec<[(AttrName, AttrValue); 1]>);

impl Attrs {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| (**n).cmp(name))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&AttrValue> {
        let at = self.find(name).ok()?;
        Some(&self.0[at].1)
    }

    /// Sets `name` to `value`; replacing a value keeps the stored name.
    pub(crate) fn set(&mut self, name: AttrName, value: AttrValue) {
        match self.find(&name) {
            Ok(at) => self.0[at].1 = value,
            Err(at) => self.0.insert(at, (name, value)),
        }
    }

    pub(crate) fn remove(&mut self, name: &str) {
        if let Ok(at) = self.find(name) {
            self.0.remove(at);
        }
    }

    /// Every attribute, owned (the store contract's shape).
    pub(crate) fn to_map(&self) -> BTreeMap<String, Vec<u8>> {
        self.0
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The attribute list behaves as the ordered map it replaced, step for step.
        #[test]
        fn attrs_match_an_ordered_map(
            steps in prop::collection::vec((0u8..3, 0usize..5, any::<u8>()), 0..48)
        ) {
            const NAMES: [&str; 5] = ["_v", "a", "b", "snap", "zz"];
            let mut attrs = Attrs::default();
            let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            for (kind, n, v) in steps {
                let name = NAMES[n];
                match kind {
                    0 => {
                        // Borrowed and owned names alike.
                        let cow: AttrName = if v % 2 == 0 { name.into() } else { name.to_string().into() };
                        attrs.set(cow, AttrValue::from_slice(&[v]));
                        model.insert(name.to_string(), vec![v]);
                    }
                    1 => {
                        attrs.remove(name);
                        model.remove(name);
                    }
                    _ => {
                        prop_assert_eq!(attrs.get(name).map(|x| x.to_vec()), model.get(name).cloned());
                    }
                }
            }
            prop_assert_eq!(attrs.to_map(), model);
        }
    }
}
