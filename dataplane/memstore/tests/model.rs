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

/// Write data and read results cycle through the store's buffers: a whole-page write's
/// buffer becomes the page (no copy) and the page it replaces is handed out by the next
/// `data_buf`; a partial write's buffer is copied and handed out again; a recycled read result
/// comes back as the next read's buffer; the bytes read are the bytes written.
#[test]
fn write_data_and_read_results_reuse_buffers() {
    let mut s = MemStore::new();
    let c = CollectionId(1);
    let o = ObjectId::from("obj");
    let mut t = s.transaction();
    t.create_collection(c);
    drive::commit(&mut s, t).unwrap();
    let write = |s: &mut MemStore, off: u64, fill: &dyn Fn(usize) -> u8, len: usize| {
        let mut data = s.data_buf(len);
        data.extend((0..len).map(fill));
        let ptr = data.as_ptr();
        let mut t = s.transaction();
        t.push(Op::Write {
            cid: c,
            oid: o.clone(),
            off,
            data,
        });
        drive::commit(s, t).unwrap();
        ptr
    };
    let first = write(&mut s, 0, &|i| i as u8, 4096);
    // The first page's buffer is the page now; overwriting it hands it back.
    let second = write(&mut s, 0, &|i| (i as u8).wrapping_add(1), 4096);
    assert_ne!(first, second);
    let again = s.data_buf(4096);
    assert!(again.is_empty());
    assert_eq!(
        again.as_ptr(),
        first,
        "the replaced page is handed out again"
    );
    s.recycle(again);
    // data_buf_from copies into that same spare buffer (with streaming stores), and the page
    // it becomes reads back.
    let src: Vec<u8> = (0..4096u32).map(|i| (i * 31 + 5) as u8).collect();
    let filled = s.data_buf_from(&src);
    assert_eq!(filled.as_ptr(), first, "the spare page is the one filled");
    assert_eq!(filled, src);
    let mut t = s.transaction();
    t.push(Op::Write {
        cid: c,
        oid: o.clone(),
        off: 0,
        data: filled,
    });
    drive::commit(&mut s, t).unwrap();
    assert_eq!(drive::read(&mut s, c, &o, 0, 4096).unwrap(), src);
    // Back to the content the checks below expect.
    write(&mut s, 0, &|i| (i as u8).wrapping_add(1), 4096);
    // A partial write is copied; its buffer comes back.
    let partial = write(&mut s, 10, &|_| 0xee, 100);
    let got = drive::read(&mut s, c, &o, 0, 4096).unwrap();
    assert_eq!(
        got.as_ptr(),
        partial,
        "the read result fills a spare buffer"
    );
    for (i, &b) in got.iter().enumerate() {
        let want = if (10..110).contains(&i) {
            0xee
        } else {
            (i as u8).wrapping_add(1)
        };
        assert_eq!(b, want, "byte {i}");
    }
    assert_eq!(s.used_bytes(), s.used_bytes_recounted());
}
