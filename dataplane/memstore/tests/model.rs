//! Random transaction sequences against memstore, compared with the reference model after every
//! step.

use carmine_memstore::MemStore;
use carmine_objectstore::testkit::{arb_txn, compare, step, Model};
use carmine_objectstore::{
    drive, CollectionId, ObjectId, ObjectStore, Op, StoreError, Transaction,
};
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
            prop_assert_eq!(store.used_bytes(), store.used_bytes_recounted());
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
    assert_eq!(
        s.used_bytes(),
        4096,
        "the failed transaction's write is not counted"
    );
}

#[test]
fn usage_counts_the_pages_held() {
    let mut s = MemStore::new();
    let c = CollectionId(1);
    let (a, b) = (ObjectId::from("a"), ObjectId::from("b"));
    let mut t = Transaction::new();
    t.create_collection(c)
        .write(c, &a, 0, &[1u8; 8192])
        .write(c, &b, 1 << 20, &[2u8; 10]);
    drive::commit(&mut s, t).unwrap();
    assert_eq!(
        s.used_bytes(),
        3 * 4096,
        "two pages of a, one of b (its hole holds none)"
    );
    let mut t = Transaction::new();
    t.push(Op::Truncate {
        cid: c,
        oid: a.clone(),
        size: 100,
    })
    .push(Op::Zero {
        cid: c,
        oid: b.clone(),
        off: 1 << 20,
        len: 4096,
    });
    drive::commit(&mut s, t).unwrap();
    assert_eq!(
        s.used_bytes(),
        4096,
        "a keeps its first page; b's whole page was zeroed away"
    );
    let mut t = Transaction::new();
    t.remove(c, &a);
    drive::commit(&mut s, t).unwrap();
    assert_eq!(s.used_bytes(), 0);
    let mut t = Transaction::new();
    t.write(c, &b, 0, &[3u8; 4096])
        .remove(c, &b)
        .push(Op::RemoveCollection { cid: c });
    drive::commit(&mut s, t).unwrap();
    assert_eq!(s.used_bytes(), 0);
    assert_eq!(s.used_bytes(), s.used_bytes_recounted());
}

/// Write data and read results cycle through the store's spare buffers: after a write, the
/// next `data_buf` hands out the write's own buffer, emptied; a recycled read result comes back
/// as the next read's buffer; the bytes read are the bytes written.
#[test]
fn write_data_and_read_results_reuse_buffers() {
    let mut s = MemStore::new();
    let c = CollectionId(1);
    let o = ObjectId::from("obj");
    let mut t = Transaction::new();
    t.create_collection(c);
    drive::commit(&mut s, t).unwrap();
    let mut data = s.data_buf(4096);
    data.extend((0..4096u32).map(|i| i as u8));
    let written = data.as_ptr();
    let mut t = Transaction::new();
    t.push(Op::Write {
        cid: c,
        oid: o.clone(),
        off: 0,
        data,
    });
    drive::commit(&mut s, t).unwrap();
    let again = s.data_buf(4096);
    assert!(again.is_empty());
    assert_eq!(
        again.as_ptr(),
        written,
        "the write's buffer is handed out again"
    );
    s.recycle(again);
    let got = drive::read(&mut s, c, &o, 0, 4096).unwrap();
    assert_eq!(
        got.as_ptr(),
        written,
        "the read result fills a spare buffer"
    );
    assert!(got.iter().enumerate().all(|(i, &b)| b == i as u8));
}
