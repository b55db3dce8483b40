//! An object's data pages: page index → 4 KiB page, sorted by index in a vector whose first
//! entry sits inline in the object.
//!
//! Why not a `BTreeMap`: most objects are one page (a 4 KiB block of an image, a small
//! object), and a B-tree puts even one page behind a node of its own, which is one more cache
//! miss on every read and write of an object picked at random from a working set larger than
//! the cache. Inline, the page's pointer sits beside the object's size in its hash-table slot.
//! Larger objects keep their pages sorted: a lookup is a binary search, and an insert in the
//! middle moves the entries after it (16 bytes each: at most 16 KiB for a 4 MiB object).
//!
//! Invariant: entries are sorted by index, with no index twice.

use smallvec::SmallVec;

/// Bytes in a page.
pub(crate) const PAGE: u64 = 4096;

/// One page of object data.
pub(crate) type Page = Box<[u8; PAGE as usize]>;

#[derive(Default)]
pub(crate) struct Pages(SmallVec<[(u64, Page); 1]>);

impl Pages {
    fn find(&self, index: u64) -> Result<usize, usize> {
        self.0.binary_search_by_key(&index, |(i, _)| *i)
    }

    /// Pages held.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn get_mut(&mut self, index: u64) -> Option<&mut Page> {
        let at = self.find(index).ok()?;
        Some(&mut self.0[at].1)
    }

    /// Puts `page` at `index`; the page it replaces.
    pub(crate) fn insert(&mut self, index: u64, page: Page) -> Option<Page> {
        match self.find(index) {
            Ok(at) => Some(std::mem::replace(&mut self.0[at].1, page)),
            Err(at) => {
                self.0.insert(at, (index, page));
                None
            }
        }
    }

    pub(crate) fn remove(&mut self, index: u64) -> Option<Page> {
        let at = self.find(index).ok()?;
        Some(self.0.remove(at).1)
    }

    /// The page at `index`, a zeroed one added first if there is none.
    pub(crate) fn get_or_zeroed(&mut self, index: u64) -> &mut Page {
        let at = match self.find(index) {
            Ok(at) => at,
            Err(at) => {
                self.0.insert(at, (index, Box::new([0; PAGE as usize])));
                at
            }
        };
        &mut self.0[at].1
    }

    /// Drops every page at `index` or after it.
    pub(crate) fn drop_from(&mut self, index: u64) {
        let at = self.find(index).unwrap_or_else(|at| at);
        self.0.truncate(at);
    }

    /// The pages with an index in `[from, to)`, in order.
    pub(crate) fn range(&self, from: u64, to: u64) -> impl Iterator<Item = (u64, &Page)> {
        let start = self.find(from).unwrap_or_else(|at| at);
        self.0[start..]
            .iter()
            .take_while(move |(i, _)| *i < to)
            .map(|(i, p)| (*i, p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn page(fill: u8) -> Page {
        Box::new([fill; PAGE as usize])
    }

    #[derive(Debug, Clone)]
    enum Step {
        Insert(u64, u8),
        Remove(u64),
        Zeroed(u64),
        DropFrom(u64),
        Write(u64, u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        let idx = 0u64..12;
        prop_oneof![
            (idx.clone(), any::<u8>()).prop_map(|(i, f)| Step::Insert(i, f)),
            idx.clone().prop_map(Step::Remove),
            idx.clone().prop_map(Step::Zeroed),
            idx.clone().prop_map(Step::DropFrom),
            (idx, any::<u8>()).prop_map(|(i, f)| Step::Write(i, f)),
        ]
    }

    proptest! {
        /// The page list behaves as the ordered map it replaced, step for step.
        #[test]
        fn pages_match_an_ordered_map(steps in prop::collection::vec(step(), 0..64),
                                      from in 0u64..14, to in 0u64..14) {
            let mut pages = Pages::default();
            let mut model: BTreeMap<u64, u8> = BTreeMap::new();
            for s in steps {
                match s {
                    Step::Insert(i, f) => {
                        let old = pages.insert(i, page(f)).map(|p| p[0]);
                        prop_assert_eq!(old, model.insert(i, f));
                    }
                    Step::Remove(i) => {
                        prop_assert_eq!(pages.remove(i).map(|p| p[0]), model.remove(&i));
                    }
                    Step::Zeroed(i) => {
                        let got = pages.get_or_zeroed(i)[0];
                        prop_assert_eq!(got, *model.entry(i).or_insert(0));
                    }
                    Step::DropFrom(i) => {
                        pages.drop_from(i);
                        model.split_off(&i);
                    }
                    Step::Write(i, f) => {
                        if let Some(p) = pages.get_mut(i) {
                            p[0] = f;
                        }
                        if let Some(m) = model.get_mut(&i) {
                            *m = f;
                        }
                    }
                }
                prop_assert_eq!(pages.len(), model.len());
            }
            let got: Vec<(u64, u8)> = pages.range(from, to).map(|(i, p)| (i, p[0])).collect();
            let want: Vec<(u64, u8)> = if from < to {
                model.range(from..to).map(|(&i, &f)| (i, f)).collect()
            } else {
                Vec::new()
            };
            prop_assert_eq!(got, want);
        }
    }
}
