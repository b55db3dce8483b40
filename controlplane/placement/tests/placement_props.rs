//! Property tests of the placement function: distinct hosts, minimal movement, weights.

use std::collections::{BTreeMap, BTreeSet};

use carmine_placement::{object_to_pg, pg_to_osds, ClusterMap, Osd, Pool};
use proptest::prelude::*;

fn osd(id: u32, host: u32, weight: f64) -> Osd {
    Osd {
        id,
        uuid: format!("uuid-{id}"),
        host: format!("host{host}"),
        public_addr: String::new(),
        cluster_addr: String::new(),
        shard_count: 1,
        shard_ports: vec![0],
        up: true,
        in_: true,
        weight,
        up_from: 0,
    }
}

/// A map with `osds_per_host[h]` OSDs on host h, weight 1.
fn cluster(osds_per_host: &[u32]) -> ClusterMap {
    let mut m = ClusterMap::default();
    let mut id = 0;
    for (h, &n) in osds_per_host.iter().enumerate() {
        for _ in 0..n {
            m.osds.insert(id, osd(id, h as u32, 1.0));
            id += 1;
        }
    }
    m.next_osd_id = id;
    m
}

fn pool(id: u32, size: u32, pg_num: u32) -> Pool {
    Pool {
        id,
        name: format!("p{id}"),
        size,
        min_size: 1,
        pg_num,
    }
}

/// Number of (PG, OSD) memberships that differ between two maps: the replicas that move.
fn moved(a: &ClusterMap, b: &ClusterMap, p: &Pool) -> usize {
    (0..p.pg_num)
        .map(|pg| {
            let x: BTreeSet<u32> = pg_to_osds(a, p, pg).into_iter().collect();
            let y: BTreeSet<u32> = pg_to_osds(b, p, pg).into_iter().collect();
            x.difference(&y).count()
        })
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every PG gets min(size, #OSDs) distinct OSDs, on distinct hosts when there are enough
    /// hosts; down or out OSDs are never chosen.
    #[test]
    fn distinct_osds_on_distinct_hosts(
        per_host in prop::collection::vec(1u32..5, 1..8),
        size in 1u32..5,
        pool_id in 0u32..1000,
        down in prop::collection::vec(any::<prop::sample::Index>(), 0..3),
    ) {
        let mut m = cluster(&per_host);
        let n = m.osds.len();
        for d in &down {
            let id = d.index(n) as u32;
            m.osds.get_mut(&id).unwrap().up = false;
        }
        let candidates: Vec<&Osd> = m.osds.values().filter(|o| o.up).collect();
        let hosts: BTreeSet<&str> = candidates.iter().map(|o| o.host.as_str()).collect();
        let p = pool(pool_id, size, 32);
        for pg in 0..p.pg_num {
            let set = pg_to_osds(&m, &p, pg);
            prop_assert_eq!(set.len(), (size as usize).min(candidates.len()));
            let distinct: BTreeSet<u32> = set.iter().copied().collect();
            prop_assert_eq!(distinct.len(), set.len());
            for id in &set {
                prop_assert!(m.osds[id].up);
            }
            let set_hosts: BTreeSet<&str> = set.iter().map(|id| m.osds[id].host.as_str()).collect();
            prop_assert_eq!(set_hosts.len(), set.len().min(hosts.len()));
            // Deterministic.
            prop_assert_eq!(&set, &pg_to_osds(&m, &p, pg));
        }
    }

    /// Object names always land in range and always in the same PG.
    #[test]
    fn object_to_pg_in_range(name in prop::collection::vec(any::<u8>(), 0..64), pg_num in 1u32..4096) {
        let pg = object_to_pg(&name, pg_num).unwrap();
        prop_assert!(pg < pg_num);
        prop_assert_eq!(pg, object_to_pg(&name, pg_num).unwrap());
    }
}

/// Removing or adding one OSD of N moves close to 1/N of the replicas.
#[test]
fn one_osd_change_moves_about_one_nth() {
    let base = cluster(&[4; 10]); // 40 OSDs on 10 hosts
    let n = base.osds.len() as f64;
    let p = pool(1, 3, 4096);
    let total = (p.pg_num * p.size) as f64;
    let ideal = total / n;

    let mut removed = base.clone();
    removed.osds.remove(&17);
    let rm = moved(&base, &removed, &p) as f64;

    let mut added = base.clone();
    added.osds.insert(40, osd(40, 3, 1.0));
    let add = moved(&base, &added, &p) as f64;

    let mut new_host = base.clone();
    new_host.osds.insert(40, osd(40, 10, 1.0));
    let add_host = moved(&base, &new_host, &p) as f64;

    println!(
        "replicas moved of {total}: remove one OSD {rm} ({:.2}x ideal {ideal:.0}), add one OSD to a host {add} ({:.2}x), add one OSD on a new host {add_host} ({:.2}x)",
        rm / ideal,
        add / ideal,
        add_host / ideal
    );
    // Removing must at least move the removed OSD's replicas (~1/N). Changing one OSD also
    // changes its host's weight, and the host ranking does not know which OSD of the host a PG
    // used, so some PGs of the host's other OSDs move too (straw2 in Ceph's CRUSH has the same
    // two-level effect). Measured here: ~1.6x the ideal for one OSD of a 4-OSD host, ~1.1x for
    // a new host; the bound keeps it well under twice the ideal.
    assert!(rm >= 0.8 * ideal, "removal moved too little: {rm}");
    assert!(rm <= 2.0 * ideal, "removal moved {rm}, ideal {ideal}");
    assert!(add <= 2.0 * ideal, "adding moved {add}, ideal {ideal}");
    assert!(add >= 0.5 * ideal, "adding moved too little: {add}");
    assert!(
        add_host <= 1.5 * ideal,
        "adding on a new host moved {add_host}, ideal {ideal}"
    );
}

/// An OSD's share of primaries follows its weight, within 10%.
#[test]
fn weights_are_honoured() {
    let mut m = ClusterMap::default();
    // One OSD per host so host and OSD weights coincide; weights 1..=4.
    for id in 0..8u32 {
        m.osds.insert(id, osd(id, id, f64::from(id % 4 + 1)));
    }
    let total_w: f64 = m.osds.values().map(|o| o.weight).sum();
    let p = pool(7, 1, 40_000);
    let mut count: BTreeMap<u32, u32> = BTreeMap::new();
    for pg in 0..p.pg_num {
        *count.entry(pg_to_osds(&m, &p, pg)[0]).or_default() += 1;
    }
    for o in m.osds.values() {
        let expect = f64::from(p.pg_num) * o.weight / total_w;
        let got = f64::from(count.get(&o.id).copied().unwrap_or(0));
        println!(
            "osd.{} weight {} got {got} expected {expect:.0}",
            o.id, o.weight
        );
        assert!(
            (got - expect).abs() / expect < 0.10,
            "osd.{} got {got}, expected {expect}",
            o.id
        );
    }
    // Weight 0 or out: never chosen.
    m.osds.get_mut(&3).unwrap().weight = 0.0;
    m.osds.get_mut(&5).unwrap().in_ = false;
    for pg in 0..256 {
        let set = pg_to_osds(&m, &pool(7, 3, 256), pg);
        assert!(!set.contains(&3) && !set.contains(&5));
    }
}
