//! OSD keys on the redb store (the etcd store runs the same scenario in `etcd_ha`): issued at
//! first boot, kept across reboots and a monitor restart, another key per OSD, reserved ids,
//! roles in the keyring, removed by `osd rm`.

mod common;

use carmine_mon::state::Monitor;
use carmine_mon::store::MapStore;

#[test]
fn osd_keys_on_the_redb_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Monitor::open(MapStore::open(dir.path()).unwrap(), common::test_policy()).unwrap();
    let (id, key) = common::osd_keys_scenario(&mut m);
    drop(m);
    let mut m = Monitor::open(MapStore::open(dir.path()).unwrap(), common::test_policy()).unwrap();
    common::osd_key_kept_after_reopen(&mut m, id, key);
}
