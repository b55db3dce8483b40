//! bdevstore on real SPDK bdevs: random transaction sequences on a malloc bdev compared with the
//! reference model after every step, after a crash-style remount (store dropped without
//! shutdown, device reopened) and after a clean shutdown + remount, fsck clean throughout; and
//! the null bdev (keeps no data) refused for durable use. Needs root and hugepages. One test
//! per file (EAL and SPDK start once per process), so proptest runs from a `TestRunner` here.

mod common;
#[path = "common/spdk.rs"]
mod spdk;

use carmine_bdevstore::{format, fsck, BdevStore, MountOptions};
use carmine_objectstore::device::BlockDevice;
use carmine_objectstore::testkit::{arb_txn, compare, step, Model};
use carmine_objectstore::StoreError;
use carmine_spdk::{BdevKind, SpdkBlockDevice};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const MALLOC: &str = "ModelMalloc0";
const NULL: &str = "ModelNull0";

#[test]
fn bdevstore_on_spdk_malloc_matches_model_and_null_is_refused() {
    let spdk = spdk::start(256);
    spdk.create_bdev(
        MALLOC,
        &BdevKind::Malloc {
            blocks: common::DEV_BLOCKS_4K,
            block_size: 4096,
        },
    )
    .unwrap();
    spdk.create_bdev(
        NULL,
        &BdevKind::Null {
            blocks: common::DEV_BLOCKS_4K,
            block_size: 4096,
        },
    )
    .unwrap();
    let thread = spdk.thread();
    let open = |name: &str| SpdkBlockDevice::open(thread, name).unwrap();

    // The null bdev: formatting "works" (writes vanish), a durable mount must refuse it.
    {
        let mut d = open(NULL);
        assert!(!d.keeps_data());
        let _ = format(&mut d, &common::small_format());
        match BdevStore::mount(d, MountOptions::default()) {
            Err(StoreError::NotDurable) => {}
            Err(e) => panic!("wrong refusal of the null bdev: {e}"),
            Ok(_) => panic!("a durable mount accepted the null bdev"),
        }
    }

    let mut runner = TestRunner::new(Config {
        cases: 16,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        prop::collection::vec(arb_txn(), 1..60),
        0usize..2,
        any::<bool>(),
    );
    let (cases, steps) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0usize));
    let result = runner.run(&strategy, |(txns, shard, always_clean)| {
        cases.set(cases.get() + 1);
        steps.set(steps.get() + txns.len());
        let mut d = open(MALLOC);
        prop_assert!(d.keeps_data());
        format(&mut d, &common::small_format()).unwrap();
        let opts = if always_clean {
            common::always_cleaning(shard)
        } else {
            common::busy_opts(shard)
        };
        let mut store = BdevStore::mount(d, opts).unwrap();
        let mut model = Model::default();
        for t in &txns {
            step(&mut store, &mut model, t).map_err(TestCaseError::fail)?;
            compare(&mut store, &model).map_err(TestCaseError::fail)?;
        }
        // Crash-style: drop the store and its device, reopen the bdev, replay on mount.
        drop(store);
        let mut d = open(MALLOC);
        let rep = fsck(&mut d, shard).unwrap();
        prop_assert!(rep.is_clean(), "fsck after crash: {:?}", rep.errors);
        let mut store = BdevStore::mount(d, common::busy_opts(shard)).unwrap();
        compare(&mut store, &model).map_err(TestCaseError::fail)?;
        // Clean shutdown + remount.
        let d = store.shutdown().unwrap();
        let mut store = BdevStore::mount(d, common::busy_opts(shard)).unwrap();
        compare(&mut store, &model).map_err(TestCaseError::fail)?;
        let mut d = store.shutdown().unwrap();
        let rep = fsck(&mut d, shard).unwrap();
        prop_assert!(rep.is_clean(), "fsck after shutdown: {:?}", rep.errors);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    println!("{} cases, {} transactions", cases.get(), steps.get());
    assert!(cases.get() >= 16);
    spdk.shutdown().unwrap();
}
