//! Which PGs this OSD serves, and on which shard: a table computed once per map epoch.
//!
//! Placement (`carmine_placement::pg_to_osds`) walks every OSD of the map and allocates, so
//! the op path never calls it. When a map arrives each shard rebuilds this table (off the
//! per-op path, a few microseconds per PG), and an op then costs one hash lookup and one index.
//!
//! The rule for an op addressed with the client's epoch `e` to PG `p` of pool `q`:
//! - the shard has no map yet, or `e` is newer than the shard's map → `Again` (the map is on
//!   its way through the control ring);
//! - `q`/`p` unknown, or this OSD is not `p`'s primary: `StaleMap` if `e` is older than ours
//!   (the client refreshes and recomputes), else `Invalid` (same map, so the client computed
//!   placement wrongly);
//! - otherwise the op belongs to shard `pg_to_shard(p, shards)` of this OSD.
//!
//! The table also holds the PGs where this OSD is a non-primary member of the acting set
//! (their replica ops arrive on the same shard, `pg_to_shard`), and, for the primary's
//! fan-out, where each other OSD's shard for a PG listens (its cluster address and the port
//! of shard `pg_to_shard(p, its shard count)`).

use foldhash::{HashMap, HashMapExt};
use std::net::{Ipv4Addr, SocketAddrV4};

use carmine_placement::{pg_to_osds, pg_to_shard, ClusterMap};
use carmine_wire::{Epoch, OpError};

use crate::ops::Target;

/// This OSD's part in one PG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Member {
    /// The shard that serves the PG.
    shard: u16,
    /// Whether this OSD is the PG's primary (client ops) or a replica (replica ops only).
    primary: bool,
}

/// One pool as this OSD sees it.
#[derive(Debug, Clone)]
struct PoolView {
    /// This OSD's part in each PG; `None`: not in its acting set.
    member: Vec<Option<Member>>,
}

/// Where another OSD's shards listen.
#[derive(Debug, Clone)]
struct PeerView {
    ip: Ipv4Addr,
    shard_count: u32,
    shard_ports: Vec<u16>,
}

/// The routing table of one epoch.
#[derive(Debug, Clone, Default)]
pub struct Routing {
    epoch: u64,
    osd: Option<u32>,
    pools: HashMap<u64, PoolView>,
    /// Other up OSDs with a usable cluster address.
    peers: HashMap<u32, PeerView>,
}

impl Routing {
    /// The table for `map`, for the OSD with `uuid` and `shards` shards.
    pub fn build(map: &ClusterMap, uuid: &str, shards: usize) -> Routing {
        let osd = map.osd_by_uuid(uuid).map(|o| o.id);
        let mut pools = HashMap::with_capacity(map.pools.len());
        for pool in map.pools.values() {
            let member = (0..pool.pg_num)
                .map(|pg| {
                    let me = osd?;
                    let acting = pg_to_osds(map, pool, pg);
                    let at = acting.iter().position(|&o| o == me)?;
                    Some(Member {
                        shard: pg_to_shard(pg, shards as u32) as u16,
                        primary: at == 0,
                    })
                })
                .collect();
            pools.insert(u64::from(pool.id), PoolView { member });
        }
        let peers = map
            .osds
            .values()
            .filter(|o| o.up && Some(o.id) != osd)
            .filter_map(|o| {
                let ip = match o.cluster_addr.parse::<Ipv4Addr>() {
                    Ok(ip) => ip,
                    Err(_) => {
                        tracing::warn!(
                            osd = o.id,
                            addr = %o.cluster_addr,
                            "peer's cluster address is not IPv4: no replica ops to it"
                        );
                        return None;
                    }
                };
                let shard_ports = o
                    .shard_ports
                    .iter()
                    .map(|&p| u16::try_from(p).unwrap_or(0))
                    .collect();
                Some((
                    o.id,
                    PeerView {
                        ip,
                        shard_count: o.shard_count,
                        shard_ports,
                    },
                ))
            })
            .collect();
        Routing {
            epoch: map.epoch,
            osd,
            pools,
            peers,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// This OSD's id in the map, once it is there.
    pub fn osd(&self) -> Option<u32> {
        self.osd
    }

    /// PGs this OSD is primary for (all shards).
    pub fn owned_pgs(&self) -> usize {
        self.pools
            .values()
            .map(|p| p.member.iter().flatten().filter(|m| m.primary).count())
            .sum()
    }

    /// PGs where this OSD is a non-primary member of the acting set (all shards).
    pub fn replica_pgs(&self) -> usize {
        self.pools
            .values()
            .map(|p| p.member.iter().flatten().filter(|m| !m.primary).count())
            .sum()
    }

    /// The shard that owns `t`, or the error to answer with.
    pub fn route(&self, t: &Target) -> Result<usize, OpError> {
        if self.epoch == 0 || t.epoch > self.epoch {
            return Err(OpError::Again);
        }
        let not_here = || {
            if t.epoch < self.epoch {
                OpError::StaleMap {
                    osd_epoch: Epoch(self.epoch),
                }
            } else {
                OpError::Invalid
            }
        };
        let pool = self.pools.get(&t.pool).ok_or_else(not_here)?;
        match pool.member.get(t.pg as usize) {
            Some(Some(m)) if m.primary => Ok(usize::from(m.shard)),
            _ => Err(not_here()),
        }
    }

    /// The shard of this OSD that serves PG `pg` of pool `pool`, as its primary or as a
    /// replica (None: this OSD is not in the PG's acting set).
    pub fn owner(&self, pool: u32, pg: u32) -> Option<usize> {
        self.pools
            .get(&u64::from(pool))?
            .member
            .get(pg as usize)
            .copied()
            .flatten()
            .map(|m| usize::from(m.shard))
    }

    /// Whether `addr` is one of up OSD `osd`'s shard addresses in this map.
    pub fn is_peer_addr(&self, osd: u32, addr: SocketAddrV4) -> bool {
        self.peers
            .get(&osd)
            .is_some_and(|p| p.ip == *addr.ip() && p.shard_ports.contains(&addr.port()))
    }

    /// Where OSD `osd`'s shard for PG `pg` listens (None: down, unknown, or without a usable
    /// address or port in this map).
    pub fn peer_addr(&self, osd: u32, pg: u32) -> Option<SocketAddrV4> {
        let p = self.peers.get(&osd)?;
        let shard = pg_to_shard(pg, p.shard_count) as usize;
        let port = *p.shard_ports.get(shard)?;
        (port != 0).then_some(SocketAddrV4::new(p.ip, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carmine_placement::{Osd, Pool};

    fn map(epoch: u64, osds: &[(u32, &str)]) -> ClusterMap {
        let mut m = ClusterMap {
            epoch,
            ..Default::default()
        };
        for &(id, uuid) in osds {
            m.osds.insert(
                id,
                Osd {
                    id,
                    uuid: uuid.into(),
                    host: format!("h{id}"),
                    public_addr: "127.0.0.1".into(),
                    cluster_addr: "127.0.0.1".into(),
                    shard_count: 2,
                    shard_ports: vec![1, 2],
                    up: true,
                    in_: true,
                    weight: 1.0,
                    up_from: 0,
                },
            );
        }
        m.pools.insert(
            1,
            Pool {
                id: 1,
                name: "p".into(),
                size: 1,
                min_size: 1,
                pg_num: 64,
            },
        );
        m
    }

    /// Pinned: the PGs of pool 1 (64 PGs, size 1) whose primary is osd.0 in `map(_, [0, 1])`,
    /// each with the shard (of 2) that owns it. Literals computed once from the placement code:
    /// the OSD must agree with what clients compute, so a change here is a protocol change.
    #[rustfmt::skip]
    const OSD0_PGS_AND_SHARDS: [(u32, usize); 43] = [
        (0, 0), (1, 1), (2, 0), (4, 0), (6, 0), (7, 1), (8, 0), (9, 1), (10, 0), (13, 1),
        (14, 0), (16, 0), (17, 1), (18, 0), (22, 0), (24, 0), (27, 1), (28, 0), (29, 1),
        (33, 1), (34, 0), (37, 1), (38, 0), (39, 1), (40, 0), (41, 1), (43, 1), (44, 0),
        (46, 0), (47, 1), (48, 0), (49, 1), (52, 0), (53, 1), (54, 0), (56, 0), (57, 1),
        (58, 0), (59, 1), (60, 0), (61, 1), (62, 0), (63, 1),
    ];

    #[test]
    fn routes_own_pgs_to_their_shard_and_others_to_errors() {
        let m = map(5, &[(0, "a"), (1, "b")]);
        let r = Routing::build(&m, "a", 2);
        assert_eq!(r.osd(), Some(0));
        let mine: std::collections::BTreeMap<u32, usize> =
            OSD0_PGS_AND_SHARDS.into_iter().collect();
        for pg in 0..64 {
            let t = |epoch| Target { pool: 1, pg, epoch };
            if let Some(&shard) = mine.get(&pg) {
                assert_eq!(r.route(&t(5)), Ok(shard), "pg {pg}");
                // An older client epoch still routes when the PG is ours.
                assert_eq!(r.route(&t(4)), Ok(shard), "pg {pg}");
            } else {
                assert_eq!(r.route(&t(5)), Err(OpError::Invalid), "pg {pg}");
                assert_eq!(
                    r.route(&t(4)),
                    Err(OpError::StaleMap {
                        osd_epoch: Epoch(5)
                    }),
                    "pg {pg}"
                );
            }
            assert_eq!(r.route(&t(6)), Err(OpError::Again));
        }
        // osd.1 owns exactly the others, on the same shards (pg mod 2).
        let r1 = Routing::build(&m, "b", 2);
        for pg in 0..64u32 {
            let t = Target {
                pool: 1,
                pg,
                epoch: 5,
            };
            if mine.contains_key(&pg) {
                assert_eq!(r1.route(&t), Err(OpError::Invalid), "pg {pg}");
            } else {
                assert_eq!(r1.route(&t), Ok((pg % 2) as usize), "pg {pg}");
            }
        }
        assert_eq!(r1.owned_pgs(), 64 - 43);
        assert_eq!(r.owned_pgs(), 43);
        let unknown = Target {
            pool: 9,
            pg: 0,
            epoch: 4,
        };
        assert!(matches!(r.route(&unknown), Err(OpError::StaleMap { .. })));
        assert_eq!(Routing::default().route(&unknown), Err(OpError::Again));
    }

    #[test]
    fn an_osd_missing_from_the_map_owns_nothing() {
        let m = map(3, &[(0, "a")]);
        let r = Routing::build(&m, "zzz", 1);
        assert_eq!(r.osd(), None);
        assert_eq!(r.owned_pgs(), 0);
    }
}
