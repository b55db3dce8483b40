//! Random transaction sequences against memstore, compared with the reference model after every
//! step.

use carmine_memstore::MemStore;
use carmine_objectstore::testkit::{arb_txn, compare, step, Model};
use carmine_objectstore::{drive, CollectionId, ObjectId, ObjectStore, StoreError, Transaction};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn memstore_matches_model(txns in prop::collection::vec(arb_txn(), 1..40)) {
        let mut store = MemStore::new();
        let mut model = Model::default();
        for t in &txns {
            step(&mut store, &mut model, t).map_err(TestCaseError::fail)?;
            compare(&mut store, &model).map_err(TestCaseError::fail)?;
        }
    }
}

#[test]
fn failed_transaction_has_no_effect() {
    let mut s = MemStore::new();
    let c = CollectionId(7);
    let o = ObjectId::from("obj");
    let mut t = Transaction::new();
    t.create_collection(c).write(c, &o, 0, b"hello");
    drive::commit(&mut s, t).unwrap();
    // Second op fails (removing a missing object): the first must not be applied.
    let mut t = Transaction::new();
    t.write(c, &o, 0, b"HELLO")
        .remove(c, &ObjectId::from("missing"));
    assert!(matches!(
        drive::commit(&mut s, t),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(drive::read(&mut s, c, &o, 0, 100).unwrap(), b"hello");
    assert!(s.is_idle());
}
