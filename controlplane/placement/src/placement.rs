//! The placement function: object → PG → ordered OSD list.
//!
//! * Object → PG: `h = xxh64(name, PLACEMENT_SEED)`, then jump consistent hashing of `h` into
//!   `pg_num` buckets, so growing `pg_num` from n to n+1 moves only ~1/(n+1) of the objects.
//! * (pool, PG) → OSDs: straw2-style weighted rendezvous hashing. For a PG key `k` every
//!   candidate item `i` of weight `w` draws `ln(u(k, i)) / w` with `u` uniform in (0, 1]
//!   derived from a hash; the highest draws win. This is the exponential-race form of weighted
//!   sampling without replacement: an item wins first place with probability `w / Σw`, and
//!   adding or removing one item only changes the PGs that item wins or loses.
//!   The hierarchy has two levels: hosts (weight = sum of their candidate OSDs) are ranked
//!   first, and each host contributes its best OSD, so replicas land on distinct hosts. When the
//!   pool size exceeds the number of hosts, further replicas come from the same hosts, in host
//!   order, each time that host's next-best OSD, so the OSDs are still distinct.
//!
//! Candidates are OSDs that are up, in, and of positive weight. The result's first entry is the
//! primary. `ln` comes from the `libm` crate (pure Rust) so the draw is bit-identical on every
//! platform.

use std::collections::BTreeMap;

use xxhash_rust::xxh64::xxh64;

use crate::map::{ClusterMap, Pool};

/// Seed of every placement hash ("carmine" + version 1). Part of the wire protocol.
pub const PLACEMENT_SEED: u64 = 0x6361_726d_696e_6501;

/// Placement errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlacementError {
    /// A pool with zero PGs cannot place anything.
    #[error("pool has pg_num 0")]
    NoPgs,
}

/// The PG (0..pg_num) that holds the object called `name`.
pub fn object_to_pg(name: &[u8], pg_num: u32) -> Result<u32, PlacementError> {
    if pg_num == 0 {
        return Err(PlacementError::NoPgs);
    }
    Ok(jump_hash(xxh64(name, PLACEMENT_SEED), pg_num))
}

/// Jump consistent hash (Lamping & Veach, 2014): maps `key` to a bucket in `0..buckets`.
/// Only IEEE-exact float operations (one division, one multiplication), so it is portable.
fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    // b is in 0..buckets here because buckets >= 1.
    b as u32
}

/// The key of PG `pg` of pool `pool`: every draw for this PG hashes it with the item.
fn pg_key(pool: u32, pg: u32) -> u64 {
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&pool.to_le_bytes());
    buf[4..].copy_from_slice(&pg.to_le_bytes());
    xxh64(&buf, PLACEMENT_SEED)
}

/// A host's item id: the hash of its name.
fn host_item(host: &str) -> u64 {
    xxh64(host.as_bytes(), PLACEMENT_SEED ^ 0x686f_7374) // "host"
}

/// An OSD's item id, in a different domain from hosts.
fn osd_item(id: u32) -> u64 {
    xxh64(&id.to_le_bytes(), PLACEMENT_SEED ^ 0x006f_7364) // "osd"
}

/// straw2 draw of `item` with `weight` for PG key `key`: `ln(u) / weight`, u in (0, 1].
fn draw(key: u64, item: u64, weight: f64) -> f64 {
    let mut buf = [0u8; 16];
    buf[..8].copy_from_slice(&key.to_le_bytes());
    buf[8..].copy_from_slice(&item.to_le_bytes());
    let h = xxh64(&buf, PLACEMENT_SEED) >> 11; // 53 bits: exact in an f64
    let u = (h + 1) as f64 / (1u64 << 53) as f64;
    libm::log(u) / weight
}

/// The shard (polling core) of an OSD with `shard_count` shards that owns PG `pg`. Clients
/// use it to send each op straight to the owning shard's port (`Osd::shard_ports`), so the data
/// path makes no cross-shard hop; the OSD uses it to route ops that arrive elsewhere.
/// A `shard_count` of 0 (an OSD that has not said) means one shard.
pub fn pg_to_shard(pg: u32, shard_count: u32) -> u32 {
    pg % shard_count.max(1)
}

/// Ordered OSD list (primary first) of PG `pg` of `pool`. Shorter than `pool.size` only when
/// there are fewer candidate OSDs than that.
pub fn pg_to_osds(map: &ClusterMap, pool: &Pool, pg: u32) -> Vec<u32> {
    let key = pg_key(pool.id, pg);
    // host -> candidate OSDs. BTreeMap for a deterministic iteration order (ties are then
    // broken the same way everywhere).
    let mut hosts: BTreeMap<&str, Vec<(u32, f64)>> = BTreeMap::new();
    for o in map.osds.values() {
        if o.up && o.in_ && o.weight > 0.0 && o.weight.is_finite() {
            hosts
                .entry(o.host.as_str())
                .or_default()
                .push((o.id, o.weight));
        }
    }
    // Rank hosts by their draw, best first.
    let mut ranked: Vec<(f64, Vec<u32>)> = hosts
        .into_iter()
        .map(|(host, osds)| {
            let w: f64 = osds.iter().map(|(_, w)| w).sum();
            let mut in_host: Vec<(f64, u32)> = osds
                .iter()
                .map(|&(id, w)| (draw(key, osd_item(id), w), id))
                .collect();
            in_host.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            (
                draw(key, host_item(host), w),
                in_host.into_iter().map(|(_, id)| id).collect(),
            )
        })
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let size = pool.size as usize;
    let mut out = Vec::with_capacity(size);
    // Round r takes the r-th best OSD of every host, hosts in rank order: round 0 gives one
    // OSD per distinct host, later rounds only run when hosts are fewer than `size`.
    let mut round = 0;
    while out.len() < size {
        let mut took = false;
        for (_, osds) in &ranked {
            if out.len() == size {
                break;
            }
            if let Some(&id) = osds.get(round) {
                out.push(id);
                took = true;
            }
        }
        if !took {
            break;
        }
        round += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::map::Osd;

    #[test]
    fn object_to_pg_is_in_range() {
        assert_eq!(object_to_pg(b"x", 0), Err(PlacementError::NoPgs));
        for n in 1..50u32 {
            assert!(object_to_pg(b"obj", n).unwrap() < n);
        }
    }

    /// Pinned values: object → PG is part of the wire protocol (clients and OSDs must agree,
    /// across versions). The literals were computed once from this code; if this test fails,
    /// placement changed and existing data would move: never "fix" it by updating the numbers.
    #[test]
    fn object_to_pg_pinned_values() {
        const PG_NUMS: [u32; 6] = [1, 7, 64, 128, 1000, 65536];
        let pinned: [(&[u8], [u32; 6]); 6] = [
            (b"", [0, 4, 26, 26, 713, 35392]),
            (b"a", [0, 6, 6, 6, 196, 23644]),
            (b"rbd_data.1", [0, 2, 56, 103, 779, 6779]),
            (b"obj0", [0, 1, 47, 79, 79, 17490]),
            (
                b"object-with-a-long-name-0123456789",
                [0, 4, 9, 9, 988, 42115],
            ),
            (b"\x00\xff", [0, 5, 35, 35, 179, 59981]),
        ];
        for (name, want) in pinned {
            let got = PG_NUMS.map(|n| object_to_pg(name, n).unwrap());
            assert_eq!(got, want, "object {name:?} over pg_num {PG_NUMS:?}");
        }
    }

    /// A fixed map for the pinned PG → OSDs values: 5 hosts, mixed weights, one OSD down, one
    /// out, one of weight 0 (those three are never chosen). Candidates: 0, 1, 2, 3, 5, 8.
    fn pinned_map() -> ClusterMap {
        let mut m = ClusterMap {
            epoch: 42,
            ..Default::default()
        };
        // (id, host, weight, up, in)
        let spec: [(u32, &str, f64, bool, bool); 9] = [
            (0, "hostA", 1.0, true, true),
            (1, "hostA", 2.0, true, true),
            (2, "hostB", 1.0, true, true),
            (3, "hostB", 0.5, true, true),
            (4, "hostC", 1.0, false, true),
            (5, "hostC", 1.0, true, true),
            (6, "hostD", 1.0, true, false),
            (7, "hostD", 0.0, true, true),
            (8, "hostE", 1.5, true, true),
        ];
        for (id, host, weight, up, in_) in spec {
            m.osds.insert(
                id,
                Osd {
                    id,
                    uuid: format!("uuid-{id}"),
                    host: host.into(),
                    public_addr: String::new(),
                    cluster_addr: String::new(),
                    shard_count: 1,
                    shard_ports: vec![1],
                    up,
                    in_,
                    weight,
                    up_from: 0,
                },
            );
        }
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

    /// Pinned values: (pool, PG) → ordered OSD list is part of the wire protocol (the first
    /// entry is the primary every client sends to). Computed once from this code; a failure
    /// means placement changed.
    #[test]
    fn pg_to_osds_pinned_values() {
        let m = pinned_map();
        let got = |p: &Pool, pgs: u32| -> Vec<Vec<u32>> {
            (0..pgs).map(|pg| pg_to_osds(&m, p, pg)).collect()
        };
        // Size 1: the primary alone.
        assert_eq!(
            got(&pool(0, 1, 8), 8),
            [[8], [1], [1], [1], [5], [5], [1], [5]]
        );
        // Size 3: three distinct hosts.
        assert_eq!(
            got(&pool(3, 3, 32), 12),
            [
                [2, 1, 8],
                [1, 2, 5],
                [2, 0, 8],
                [8, 2, 0],
                [0, 5, 8],
                [0, 5, 2],
                [5, 1, 2],
                [8, 1, 2],
                [5, 1, 8],
                [8, 1, 2],
                [1, 8, 2],
                [1, 2, 8]
            ]
        );
        // Size 6 over 4 candidate hosts: every candidate OSD, second round in host order.
        assert_eq!(
            got(&pool(7, 6, 100), 12),
            [
                [5, 2, 1, 8, 3, 0],
                [1, 8, 5, 2, 0, 3],
                [2, 1, 5, 8, 3, 0],
                [1, 5, 2, 8, 0, 3],
                [1, 2, 5, 8, 0, 3],
                [8, 2, 1, 5, 3, 0],
                [3, 5, 1, 8, 2, 0],
                [8, 5, 2, 1, 3, 0],
                [1, 2, 5, 8, 0, 3],
                [5, 2, 1, 8, 3, 0],
                [5, 0, 2, 8, 1, 3],
                [3, 0, 8, 5, 2, 1]
            ]
        );
        // Larger than the candidates: all six, never the down, out or weight-0 ones.
        assert_eq!(pg_to_osds(&m, &pool(7, 8, 100), 0), [5, 2, 1, 8, 3, 0]);
    }

    #[test]
    fn jump_hash_moves_few_keys_when_buckets_grow() {
        let moved = (0..10_000u64)
            .filter(|k| {
                let k = xxh64(&k.to_le_bytes(), 1);
                jump_hash(k, 10) != jump_hash(k, 11)
            })
            .count();
        // Ideal is 1/11 of 10000 = 909; every moved key must go to the new bucket.
        assert!(moved > 700 && moved < 1100, "moved {moved}");
    }
}

#[cfg(test)]
mod shard_tests {
    use super::pg_to_shard;

    #[test]
    fn pg_to_shard_spreads_and_handles_zero() {
        assert_eq!(pg_to_shard(7, 0), 0);
        assert_eq!(pg_to_shard(7, 1), 0);
        let mut per = [0u32; 3];
        for pg in 0..300 {
            per[pg_to_shard(pg, 3) as usize] += 1;
        }
        assert_eq!(per, [100, 100, 100]);
    }
}
