//! PG history on the redb store (the etcd store runs the same scenario in `etcd_ha`): recorded,
//! trimmed, still there after the monitor is dropped and reopened, dropped with its pool.

mod common;

use carmine_mon::state::Monitor;
use carmine_mon::store::MapStore;

#[test]
fn pg_history_on_the_redb_store_survives_a_reopen_and_goes_with_its_pool() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Monitor::open(MapStore::open(dir.path()).unwrap(), common::test_policy()).unwrap();
    let s = common::pg_history_scenario(&mut m);
    drop(m);
    let mut m = Monitor::open(MapStore::open(dir.path()).unwrap(), common::test_policy()).unwrap();
    common::pg_history_kept_after_reopen(&mut m, s);
    drop(m);
    let left = MapStore::open(dir.path())
        .unwrap()
        .load_pg_history()
        .unwrap();
    assert!(left.is_empty(), "pool rm left rows: {left:?}");
}
