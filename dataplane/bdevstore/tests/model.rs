//! Random transaction sequences against bdevstore on a file-backed device, compared with the
//! reference model after every step, after a crash-style remount (store dropped without
//! shutdown) and after a clean shutdown + remount; fsck must be clean throughout.

mod common;

use carmine_bdevstore::{fsck, BdevStore};
use carmine_objectstore::testkit::{arb_txn, compare, step, Model};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn bdevstore_matches_model(
        txns in prop::collection::vec(arb_txn(), 1..60),
        shard in 0usize..2,
        always_clean in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev");
        let mut store = common::fresh(&path, shard);
        if always_clean {
            drop(store);
            store = BdevStore::mount(common::open_dev(&path), common::always_cleaning(shard)).unwrap();
        }
        let mut model = Model::default();
        for t in &txns {
            step(&mut store, &mut model, t).map_err(TestCaseError::fail)?;
            compare(&mut store, &model).map_err(TestCaseError::fail)?;
        }
        // Crash-style: drop the store (nothing in flight after compare), replay on mount.
        drop(store);
        let mut dev = common::open_dev(&path);
        let rep = fsck(&mut dev, shard).unwrap();
        prop_assert!(rep.is_clean(), "fsck after crash: {:?}", rep.errors);
        let mut store = BdevStore::mount(dev, common::busy_opts(shard)).unwrap();
        compare(&mut store, &model).map_err(TestCaseError::fail)?;
        // Clean shutdown + remount.
        let dev = store.shutdown().unwrap();
        let mut store = BdevStore::mount(dev, common::busy_opts(shard)).unwrap();
        compare(&mut store, &model).map_err(TestCaseError::fail)?;
        let mut dev = store.shutdown().unwrap();
        let rep = fsck(&mut dev, shard).unwrap();
        prop_assert!(rep.is_clean(), "fsck after shutdown: {:?}", rep.errors);
    }
}
