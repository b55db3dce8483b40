//! Routing: from (pool, object) to the OSD shard that serves it, computed from the cluster map
//! with the same `carmine-placement` functions the OSDs run. No I/O, no state: the client
//! recomputes a route for every attempt of every op, so a new map takes effect at once.
//!
//! object → PG (`object_to_pg`) → primary (first of `pg_to_osds`) → shard
//! (`pg_to_shard(pg, shard_count)`) → address (`public_addr`'s IP + `shard_ports[shard]`).

use std::net::{IpAddr, SocketAddr};

use carmine_placement::{object_to_pg, pg_to_osds, pg_to_shard, ClusterMap, Pool};
use thiserror::Error;

/// A pool named by the caller: by name, or by the id the monitor gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolRef<'a> {
    Name(&'a str),
    Id(u32),
}

impl<'a> From<&'a str> for PoolRef<'a> {
    fn from(s: &'a str) -> Self {
        PoolRef::Name(s)
    }
}

impl<'a> From<&'a String> for PoolRef<'a> {
    fn from(s: &'a String) -> Self {
        PoolRef::Name(s)
    }
}

impl From<u32> for PoolRef<'_> {
    fn from(id: u32) -> Self {
        PoolRef::Id(id)
    }
}

impl std::fmt::Display for PoolRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolRef::Name(n) => write!(f, "{n:?}"),
            PoolRef::Id(id) => write!(f, "id {id}"),
        }
    }
}

impl PoolRef<'_> {
    /// The pool in `map`, if it has it.
    pub fn find<'m>(&self, map: &'m ClusterMap) -> Option<&'m Pool> {
        match *self {
            PoolRef::Name(n) => map.pool_by_name(n),
            PoolRef::Id(id) => map.pools.get(&id),
        }
    }
}

/// Where one op goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub pool: u32,
    pub pg: u32,
    /// The PG's primary OSD.
    pub osd: u32,
    /// The primary's shard that owns the PG.
    pub shard: u32,
    /// That shard's listening address.
    pub addr: SocketAddr,
}

/// Why a map gives no route. Every one of these may be cured by a newer map.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RouteError {
    #[error("pool {pool} has no PGs")]
    NoPgs { pool: u32 },
    #[error("pg {pg} is outside pool {pool}'s {pg_num} PGs")]
    NoSuchPg { pool: u32, pg: u32, pg_num: u32 },
    #[error("pool {pool} pg {pg}: no OSD is up and in to serve it")]
    NoOsd { pool: u32, pg: u32 },
    #[error("osd.{osd} announces no port for shard {shard} ({ports} ports)")]
    NoPort { osd: u32, shard: u32, ports: usize },
    #[error("osd.{osd} announces an unusable address {addr:?} / port {port}")]
    BadAddr { osd: u32, addr: String, port: u32 },
}

/// The IP of a `public_addr`: a bare IP (what OSDs announce) or `ip:port` / `[v6]:port`
/// (older announcements carried shard 0's port; the port is ignored, `shard_ports` decides).
pub fn public_ip(addr: &str) -> Option<IpAddr> {
    let a = addr.trim();
    a.parse::<IpAddr>()
        .ok()
        .or_else(|| a.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// The PG of `object` in `pool`.
pub fn object_pg(pool: &Pool, object: &str) -> Result<u32, RouteError> {
    object_to_pg(object.as_bytes(), pool.pg_num).map_err(|_| RouteError::NoPgs { pool: pool.id })
}

/// Where PG `pg` of `pool` is served in `map`.
pub fn route_pg(map: &ClusterMap, pool: &Pool, pg: u32) -> Result<Target, RouteError> {
    if pg >= pool.pg_num {
        return Err(RouteError::NoSuchPg {
            pool: pool.id,
            pg,
            pg_num: pool.pg_num,
        });
    }
    let no_osd = RouteError::NoOsd { pool: pool.id, pg };
    let primary = *pg_to_osds(map, pool, pg).first().ok_or(no_osd.clone())?;
    let osd = map.osds.get(&primary).ok_or(no_osd)?;
    let shard = pg_to_shard(pg, osd.shard_count);
    let port = *osd
        .shard_ports
        .get(shard as usize)
        .ok_or(RouteError::NoPort {
            osd: osd.id,
            shard,
            ports: osd.shard_ports.len(),
        })?;
    let bad = || RouteError::BadAddr {
        osd: osd.id,
        addr: osd.public_addr.clone(),
        port,
    };
    let port16 = u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(bad)?;
    let ip = public_ip(&osd.public_addr).ok_or_else(bad)?;
    Ok(Target {
        pool: pool.id,
        pg,
        osd: osd.id,
        shard,
        addr: SocketAddr::new(ip, port16),
    })
}

/// Where `object` of `pool` is served in `map`.
pub fn route_object(map: &ClusterMap, pool: &Pool, object: &str) -> Result<Target, RouteError> {
    route_pg(map, pool, object_pg(pool, object)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use carmine_placement::Osd;

    fn osd(id: u32, host: &str, addr: &str, ports: Vec<u32>) -> Osd {
        Osd {
            id,
            uuid: format!("u{id}"),
            host: host.into(),
            public_addr: addr.into(),
            cluster_addr: String::new(),
            shard_count: ports.len() as u32,
            shard_ports: ports,
            up: true,
            in_: true,
            weight: 1.0,
            up_from: 0,
        }
    }

    fn map() -> ClusterMap {
        let mut m = ClusterMap {
            epoch: 3,
            ..Default::default()
        };
        m.osds
            .insert(0, osd(0, "a", "127.0.0.1", vec![7000, 7001, 7002]));
        m.osds.insert(1, osd(1, "b", "127.0.0.2:6800", vec![7100]));
        m.osds.insert(2, osd(2, "c", "::1", vec![7200, 7201]));
        m.pools.insert(
            5,
            Pool {
                id: 5,
                name: "data".into(),
                size: 1,
                min_size: 1,
                pg_num: 32,
            },
        );
        m
    }

    #[test]
    fn public_ip_accepts_ip_and_ip_port() {
        assert_eq!(public_ip("10.0.0.1"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(
            public_ip(" 10.0.0.1:6800 "),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(public_ip("[::1]:6800"), Some("::1".parse().unwrap()));
        assert_eq!(public_ip("::1"), Some("::1".parse().unwrap()));
        assert_eq!(public_ip(""), None);
        assert_eq!(public_ip("host.example:1"), None);
    }

    /// Pinned: (primary OSD, shard) of each of pool 5's 32 PGs in `map()`. Literals computed
    /// once from the placement code: the client must send where the OSD expects the op, so a
    /// change here is a protocol change.
    #[rustfmt::skip]
    const PG_ROUTES: [(u32, u32); 32] = [
        (2, 0), (1, 0), (0, 2), (2, 1), (2, 0), (0, 2), (0, 0), (2, 1),
        (1, 0), (1, 0), (1, 0), (0, 2), (0, 0), (2, 1), (0, 2), (2, 1),
        (2, 0), (0, 2), (0, 0), (0, 1), (2, 0), (0, 0), (0, 1), (1, 0),
        (2, 0), (0, 1), (2, 0), (0, 0), (0, 1), (0, 2), (0, 0), (0, 1),
    ];

    /// Pinned: the PG (of 32) of objects `obj0`..`obj11`.
    const OBJECT_PGS: [u32; 12] = [1, 21, 11, 18, 10, 1, 14, 14, 11, 4, 5, 28];

    /// The address of (osd, shard) in `map()`, written out.
    fn shard_addr(osd: u32, shard: u32) -> SocketAddr {
        let s = match (osd, shard) {
            (0, 0) => "127.0.0.1:7000",
            (0, 1) => "127.0.0.1:7001",
            (0, 2) => "127.0.0.1:7002",
            (1, 0) => "127.0.0.2:7100",
            (2, 0) => "[::1]:7200",
            (2, 1) => "[::1]:7201",
            _ => panic!("no shard {shard} on osd.{osd}"),
        };
        s.parse().unwrap()
    }

    /// Every PG's and object's route is the pinned one, and every OSD and every shard of the
    /// multi-shard OSDs gets some PGs.
    #[test]
    fn routes_follow_placement_to_the_owning_shard() {
        let m = map();
        let pool = PoolRef::Name("data").find(&m).unwrap().clone();
        assert_eq!(PoolRef::Id(5).find(&m), Some(&pool));
        assert_eq!(PoolRef::Id(6).find(&m), None);
        for (pg, &(osd, shard)) in PG_ROUTES.iter().enumerate() {
            let pg = pg as u32;
            assert_eq!(
                route_pg(&m, &pool, pg),
                Ok(Target {
                    pool: 5,
                    pg,
                    osd,
                    shard,
                    addr: shard_addr(osd, shard),
                }),
                "pg {pg}"
            );
        }
        for (i, &pg) in OBJECT_PGS.iter().enumerate() {
            let name = format!("obj{i}");
            assert_eq!(object_pg(&pool, &name), Ok(pg), "{name}");
            let (osd, shard) = PG_ROUTES[pg as usize];
            let t = route_object(&m, &pool, &name).unwrap();
            assert_eq!((t.pg, t.osd, t.shard), (pg, osd, shard), "{name}");
        }
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..500 {
            let t = route_object(&m, &pool, &format!("obj{i}")).unwrap();
            assert_eq!(t.addr, shard_addr(t.osd, t.shard));
            seen.insert((t.osd, t.shard));
        }
        let want: std::collections::BTreeSet<_> =
            [(0, 0), (0, 1), (0, 2), (1, 0), (2, 0), (2, 1)].into();
        assert_eq!(seen, want);
    }

    #[test]
    fn an_out_osd_is_never_a_target_and_the_route_moves() {
        let mut m = map();
        let pool = m.pools[&5].clone();
        let on_1: Vec<u32> = (0..32)
            .filter(|&pg| route_pg(&m, &pool, pg).unwrap().osd == 1)
            .collect();
        assert_eq!(on_1, [1, 8, 9, 10, 23]);
        m.osds.get_mut(&1).unwrap().in_ = false;
        // osd.1's PGs move (pinned: to 0, 0, 2, 2, 0); no other PG moves.
        let after: Vec<u32> = (0..32)
            .map(|pg| route_pg(&m, &pool, pg).unwrap().osd)
            .collect();
        for (pg, &(before, _)) in PG_ROUTES.iter().enumerate() {
            let want = match pg {
                1 | 8 | 23 => 0,
                9 | 10 => 2,
                _ => before,
            };
            assert_eq!(after[pg], want, "pg {pg}");
        }
        m.osds.get_mut(&0).unwrap().up = false;
        m.osds.get_mut(&2).unwrap().weight = 0.0;
        assert_eq!(
            route_pg(&m, &pool, 0),
            Err(RouteError::NoOsd { pool: 5, pg: 0 })
        );
    }

    #[test]
    fn bad_maps_give_errors_not_panics() {
        let mut m = map();
        let pool = m.pools[&5].clone();
        assert!(matches!(
            route_pg(&m, &pool, 32),
            Err(RouteError::NoSuchPg { pg: 32, .. })
        ));
        let empty = Pool {
            pg_num: 0,
            ..pool.clone()
        };
        assert_eq!(
            route_object(&m, &empty, "x"),
            Err(RouteError::NoPgs { pool: 5 })
        );
        // Only osd.1 left, with each kind of bad announcement.
        m.osds.remove(&0);
        m.osds.remove(&2);
        let o = m.osds.get_mut(&1).unwrap();
        o.shard_ports.clear();
        assert!(matches!(
            route_pg(&m, &pool, 0),
            Err(RouteError::NoPort { osd: 1, .. })
        ));
        let o = m.osds.get_mut(&1).unwrap();
        o.shard_ports = vec![70000];
        assert!(matches!(
            route_pg(&m, &pool, 0),
            Err(RouteError::BadAddr { .. })
        ));
        let o = m.osds.get_mut(&1).unwrap();
        o.shard_ports = vec![0];
        assert!(matches!(
            route_pg(&m, &pool, 0),
            Err(RouteError::BadAddr { .. })
        ));
        let o = m.osds.get_mut(&1).unwrap();
        o.shard_ports = vec![7100];
        o.public_addr = "not-an-ip".into();
        assert!(matches!(
            route_pg(&m, &pool, 0),
            Err(RouteError::BadAddr { .. })
        ));
        // shard_count 0 (an OSD that has not said) means one shard.
        let o = m.osds.get_mut(&1).unwrap();
        o.public_addr = "127.0.0.9".into();
        o.shard_count = 0;
        assert_eq!(route_pg(&m, &pool, 7).unwrap().shard, 0);
    }
}
