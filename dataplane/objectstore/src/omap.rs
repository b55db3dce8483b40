//! An object's omap: key → value, in key order.
//!
//! The OSD's busiest omap is a PG's log (`carmine-osd`'s `pglog`): every write appends a key
//! after the last one, and every 32 writes the oldest 32 keys go. In a `BTreeMap` each append
//! was a descent through the nodes and, every few writes, a node split (an allocation); each
//! trimmed key shifted its leaf and merged nodes: about 9% of a memstore write's OSD CPU. Here a
//! small omap is a sorted `VecDeque`:
//! - inserting after the last key is a `push_back`, removing the first key a `pop_front`: O(1),
//!   and no allocation once the deque has reached the log's length;
//! - a lookup, or an insert or remove elsewhere, binary-searches, and a middle insert or remove
//!   moves the entries on its shorter side (at most `SMALL_MAX / 2`).
//!
//! An omap that grows past [`SMALL_MAX`] entries (a PG's tombstones only grow, and their keys
//! are client object names in no order) becomes a `BTreeMap` for good, where a middle insert
//! moves nothing.
//!
//! Both engines keep their omaps in it (memstore in memory, bdevstore in its index). Its
//! serde form is a map in key order, exactly as a `BTreeMap<OmapKey, OmapValue>`'s, so a
//! store that kept the tree before reads and writes the same bytes.
//!
//! Invariant: in either form, entries are sorted by key with no key twice.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{OmapEntries, OmapKey, OmapValue};

/// Entries an omap holds as a sorted deque; one more and it becomes a B-tree. A PG log (256
/// entries plus a trim batch of 32) stays well below; a middle insert at this size moves at
/// most 512 entries of about 100 bytes.
pub const SMALL_MAX: usize = 1024;

/// An object's omap (see the module docs). Its form is private, so the sorting invariant is
/// this module's alone.
#[derive(Clone, Debug)]
pub struct Omap(Form);

#[derive(Clone, Debug)]
enum Form {
    Small(VecDeque<(OmapKey, OmapValue)>),
    Large(BTreeMap<OmapKey, OmapValue>),
}

impl Default for Omap {
    fn default() -> Self {
        Omap(Form::Small(VecDeque::new()))
    }
}

fn find(d: &VecDeque<(OmapKey, OmapValue)>, key: &[u8]) -> Result<usize, usize> {
    d.binary_search_by(|(k, _)| k.as_slice().cmp(key))
}

impl Omap {
    pub fn insert(&mut self, key: OmapKey, value: OmapValue) {
        match &mut self.0 {
            Form::Small(d) => {
                // The log's case: after the last key.
                if d.back()
                    .is_none_or(|(last, _)| last.as_slice() < key.as_slice())
                {
                    d.push_back((key, value));
                } else {
                    match find(d, &key) {
                        Ok(at) => d[at].1 = value,
                        Err(at) => d.insert(at, (key, value)),
                    }
                }
                if d.len() > SMALL_MAX {
                    let sorted = std::mem::take(d);
                    self.0 = Form::Large(sorted.into_iter().collect());
                }
            }
            Form::Large(m) => {
                m.insert(key, value);
            }
        }
    }

    pub fn extend(&mut self, entries: impl IntoIterator<Item = (OmapKey, OmapValue)>) {
        for (k, v) in entries {
            self.insert(k, v);
        }
    }

    pub fn remove(&mut self, key: &[u8]) {
        match &mut self.0 {
            Form::Small(d) => {
                // The log's trim: the first key.
                if d.front().is_some_and(|(first, _)| first.as_slice() == key) {
                    d.pop_front();
                } else if let Ok(at) = find(d, key) {
                    d.remove(at);
                }
            }
            Form::Large(m) => {
                m.remove(key);
            }
        }
    }

    pub fn get(&self, key: &[u8]) -> Option<&OmapValue> {
        match &self.0 {
            Form::Small(d) => find(d, key).ok().map(|at| &d[at].1),
            Form::Large(m) => m.get(key),
        }
    }

    /// The values of those of `keys` that are present, owned (the store contract's shape).
    pub fn get_many(&self, keys: &[Vec<u8>]) -> BTreeMap<Vec<u8>, Vec<u8>> {
        keys.iter()
            .filter_map(|k| self.get(k).map(|v| (k.clone(), v.to_vec())))
            .collect()
    }

    /// Up to `max` entries with keys strictly after `after`, in key order, owned.
    pub fn range_after(&self, after: Option<&[u8]>, max: usize) -> OmapEntries {
        let own = |(k, v): (&OmapKey, &OmapValue)| (k.to_vec(), v.to_vec());
        match &self.0 {
            Form::Small(d) => {
                let start = after.map_or(0, |a| match find(d, a) {
                    Ok(at) => at + 1,
                    Err(at) => at,
                });
                d.range(start..)
                    .take(max)
                    .map(|(k, v)| own((k, v)))
                    .collect()
            }
            Form::Large(m) => {
                let lo = after.map_or(Bound::Unbounded, Bound::Excluded);
                m.range::<[u8], _>((lo, Bound::Unbounded))
                    .take(max)
                    .map(own)
                    .collect()
            }
        }
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        match &self.0 {
            Form::Small(d) => d.len(),
            Form::Large(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&OmapKey, &OmapValue)> + '_ {
        let (small, large) = match &self.0 {
            Form::Small(d) => (Some(d.iter().map(|(k, v)| (k, v))), None),
            Form::Large(m) => (None, Some(m.iter())),
        };
        Entries { small, large }
    }

    #[cfg(test)]
    fn is_small(&self) -> bool {
        matches!(self.0, Form::Small(_))
    }
}

/// [`Omap::iter`]: one of the two forms' iterators.
struct Entries<S, L> {
    small: Option<S>,
    large: Option<L>,
}

impl<'a, S, L> Iterator for Entries<S, L>
where
    S: Iterator<Item = (&'a OmapKey, &'a OmapValue)>,
    L: Iterator<Item = (&'a OmapKey, &'a OmapValue)>,
{
    type Item = (&'a OmapKey, &'a OmapValue);

    fn next(&mut self) -> Option<Self::Item> {
        match (&mut self.small, &mut self.large) {
            (Some(s), _) => s.next(),
            (None, Some(l)) => l.next(),
            (None, None) => None,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match (&self.small, &self.large) {
            (Some(s), _) => s.size_hint(),
            (None, Some(l)) => l.size_hint(),
            (None, None) => (0, Some(0)),
        }
    }
}

impl<'a, S, L> ExactSizeIterator for Entries<S, L>
where
    S: ExactSizeIterator<Item = (&'a OmapKey, &'a OmapValue)>,
    L: ExactSizeIterator<Item = (&'a OmapKey, &'a OmapValue)>,
{
}

/// Equal entries are equal omaps, whichever form holds them.
impl PartialEq for Omap {
    fn eq(&self, other: &Omap) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Omap {}

impl Serialize for Omap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // As `BTreeMap`'s: the length, then the entries in key order.
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Omap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Omap, D::Error> {
        struct OmapVisitor;
        impl<'de> Visitor<'de> for OmapVisitor {
            type Value = Omap;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an omap (a map of byte strings)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Omap, A::Error> {
                // Written in key order, so each entry is an append; any order still sorts.
                let mut omap = Omap::default();
                while let Some((k, v)) = access.next_entry::<OmapKey, OmapValue>()? {
                    omap.insert(k, v);
                }
                Ok(omap)
            }
        }
        deserializer.deserialize_map(OmapVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(k: u16) -> OmapKey {
        // Big-endian, so byte order is numeric order, as with the PG log's version keys.
        OmapKey::from_slice(&k.to_be_bytes())
    }

    #[derive(Debug, Clone)]
    enum Step {
        Insert(u16, u8),
        Remove(u16),
        /// The PG log's pattern: a key after every key so far, then a trim of the oldest.
        Append(u8),
        TrimFront(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            2 => (0..400u16, any::<u8>()).prop_map(|(k, v)| Step::Insert(k, v)),
            2 => (0..400u16).prop_map(Step::Remove),
            4 => any::<u8>().prop_map(Step::Append),
            1 => (1..40u8).prop_map(Step::TrimFront),
        ]
    }

    fn check(omap: &Omap, model: &BTreeMap<OmapKey, OmapValue>) -> Result<(), TestCaseError> {
        let all = omap.range_after(None, usize::MAX);
        let want: OmapEntries = model
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        prop_assert_eq!(&all, &want);
        // Pages and lookups at a probe every 97 keys, present and absent ones.
        for probe in (0..3100u16).step_by(97) {
            let after = key(probe);
            let got = omap.range_after(Some(&after), 5);
            let want: OmapEntries = model
                .range::<[u8], _>((Bound::Excluded(after.as_slice()), Bound::Unbounded))
                .take(5)
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(omap.get(&after), model.get(after.as_slice()));
        }
        Ok(())
    }

    proptest! {
        /// Against a `BTreeMap`, in both forms: half the runs first fill the omap past
        /// `SMALL_MAX` with keys above the steps' range, so it is a tree throughout.
        #[test]
        fn behaves_as_btreemap(large in any::<bool>(), steps in proptest::collection::vec(step(), 0..800)) {
            let mut omap = Omap::default();
            let mut model = BTreeMap::new();
            if large {
                for k in 0..=SMALL_MAX as u16 {
                    omap.insert(key(u16::MAX - k), OmapValue::new());
                    model.insert(key(u16::MAX - k), OmapValue::new());
                }
                prop_assert!(!omap.is_small());
            }
            let mut next = 3000u16; // appends stay below the prefill (keys from 64,511 up)
            for s in steps {
                match s {
                    Step::Insert(k, v) => {
                        omap.insert(key(k), OmapValue::from_slice(&[v]));
                        model.insert(key(k), OmapValue::from_slice(&[v]));
                    }
                    Step::Remove(k) => {
                        omap.remove(&key(k));
                        model.remove(key(k).as_slice());
                    }
                    Step::Append(v) => {
                        omap.extend([(key(next), OmapValue::from_slice(&[v; 3]))]);
                        model.insert(key(next), OmapValue::from_slice(&[v; 3]));
                        next = next.saturating_add(1);
                    }
                    Step::TrimFront(n) => {
                        let front: Vec<OmapKey> = model.keys().take(n as usize).cloned().collect();
                        for k in front {
                            omap.remove(&k);
                            model.remove(k.as_slice());
                        }
                    }
                }
            }
            check(&omap, &model)?;
        }
    }

    #[test]
    fn a_log_stays_small_and_a_large_omap_becomes_a_tree() {
        let mut log = Omap::default();
        for i in 0..20_000u16 {
            log.insert(key(i), OmapValue::from_slice(b"entry"));
            if i % 32 == 31 && i >= 287 {
                for old in i - 287..i - 255 {
                    log.remove(&key(old));
                }
            }
        }
        assert!(log.is_small());
        assert_eq!(log.range_after(None, usize::MAX).len(), 256);

        let mut tombs = Omap::default();
        for i in 0..=SMALL_MAX as u16 {
            // Names in no order: every insert lands in the middle.
            tombs.insert(key(i.wrapping_mul(7919)), OmapValue::new());
        }
        assert!(!tombs.is_small());
        let keys: Vec<Vec<u8>> = tombs
            .range_after(None, usize::MAX)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys.len(), SMALL_MAX + 1);
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }
}
