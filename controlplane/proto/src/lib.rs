//! Carmine's control-plane protocol.
//!
//! The protocol lives in `proto/carmine/v1/carmine.proto` (its compatibility rules are at the
//! top of that file). The build script compiles it with protox (pure Rust, no `protoc`) and
//! tonic-prost-build; the generated messages, clients and servers are in [`v1`].
//!
//! This crate also converts between the wire messages and the in-memory map types of
//! `carmine-placement` ([`ClusterMap`], [`Incremental`]), and defines the one metadata key
//! used for credentials ([`AUTH_HEADER`], [`bearer`]), and the leader redirect a follower
//! monitor answers with ([`LEADER_HEADER`], [`not_leader`], [`leader_redirect`]).
//!
//! [`tls`] is the one place where a process's gRPC endpoints and servers get their transport
//! security (TLS with the cluster CA, or plain text when asked for explicitly).

pub mod tls;

/// Generated code for package `carmine.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("carmine.v1");
}

pub mod auth;

use carmine_placement::{ClusterMap, Incremental, Osd, Pool};

/// gRPC metadata key that carries `Bearer <token>`.
pub const AUTH_HEADER: &str = "authorization";

/// PG state bits ([`v1::PgStateBit`]) and their names, shared by the monitor, the CLI and the
/// tests so that every one prints and parses the same strings.
pub mod pg_state {
    use super::v1::PgStateBit;

    /// The state bits in the order their names are joined (Ceph's names and order).
    pub const NAMES: [(PgStateBit, &str); 10] = [
        (PgStateBit::PgStateActive, "active"),
        (PgStateBit::PgStateClean, "clean"),
        (PgStateBit::PgStatePeering, "peering"),
        (PgStateBit::PgStateDegraded, "degraded"),
        (PgStateBit::PgStateRecovering, "recovering"),
        (PgStateBit::PgStateBackfilling, "backfilling"),
        (PgStateBit::PgStateIncomplete, "incomplete"),
        (PgStateBit::PgStateDown, "down"),
        (PgStateBit::PgStateStale, "stale"),
        (PgStateBit::PgStateUndersized, "undersized"),
    ];

    /// "active+clean"; 0 is "unknown"; bits without a name are left out.
    pub fn name(state: u32) -> String {
        let names: Vec<&str> = NAMES
            .iter()
            .filter(|(b, _)| state & *b as u32 != 0)
            .map(|(_, n)| *n)
            .collect();
        if names.is_empty() {
            "unknown".into()
        } else {
            names.join("+")
        }
    }

    /// The bits named in "active+clean" (`None` for an unknown name); "unknown" is 0.
    pub fn parse(s: &str) -> Option<u32> {
        s.split('+').try_fold(0u32, |acc, n| {
            if n == "unknown" {
                return Some(acc);
            }
            NAMES
                .iter()
                .find(|(_, name)| *name == n)
                .map(|(b, _)| acc | *b as u32)
        })
    }
}

/// The metadata value for `token`.
pub fn bearer(
    token: &str,
) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, ProtoError> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| ProtoError::BadToken)
}

/// gRPC metadata key naming the leader monitor (`host:port`) in a follower's redirect.
pub const LEADER_HEADER: &str = "carmine-leader";

/// The status a follower monitor answers every call with: code `Unavailable` (the call was not
/// executed, so repeating it elsewhere is safe) and the [`LEADER_HEADER`] metadata entry, holding
/// the leader's address, or empty while no leader is known.
pub fn not_leader(leader: Option<&str>) -> tonic::Status {
    let value = leader.and_then(|l| {
        l.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>()
            .ok()
    });
    let message = match (leader, &value) {
        (Some(l), Some(_)) => format!("this monitor is not the leader; the leader is {l}"),
        _ => "this monitor is not the leader; no leader is elected yet".to_string(),
    };
    let mut md = tonic::metadata::MetadataMap::new();
    md.insert(
        LEADER_HEADER,
        value.unwrap_or_else(|| tonic::metadata::MetadataValue::from_static("")),
    );
    tonic::Status::with_metadata(tonic::Code::Unavailable, message, md)
}

/// True if `status` comes from a follower monitor ([`not_leader`]), leader known or not.
pub fn is_not_leader(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable && status.metadata().get(LEADER_HEADER).is_some()
}

/// The leader address carried by a follower's redirect ([`not_leader`]), if `status` is one
/// and the follower knew the leader.
pub fn leader_redirect(status: &tonic::Status) -> Option<String> {
    if !is_not_leader(status) {
        return None;
    }
    let v = status.metadata().get(LEADER_HEADER)?.to_str().ok()?.trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// Conversion errors.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The token has characters that cannot go in a header.
    #[error("token contains characters not allowed in gRPC metadata")]
    BadToken,
}

impl From<&Osd> for v1::OsdInfo {
    fn from(o: &Osd) -> Self {
        v1::OsdInfo {
            id: o.id,
            uuid: o.uuid.clone(),
            host: o.host.clone(),
            public_addr: o.public_addr.clone(),
            cluster_addr: o.cluster_addr.clone(),
            shard_count: o.shard_count,
            shard_ports: o.shard_ports.clone(),
            up: o.up,
            r#in: o.in_,
            weight: o.weight,
            up_from: o.up_from,
        }
    }
}

impl From<v1::OsdInfo> for Osd {
    fn from(o: v1::OsdInfo) -> Self {
        Osd {
            id: o.id,
            uuid: o.uuid,
            host: o.host,
            public_addr: o.public_addr,
            cluster_addr: o.cluster_addr,
            shard_count: o.shard_count,
            shard_ports: o.shard_ports,
            up: o.up,
            in_: o.r#in,
            weight: o.weight,
            up_from: o.up_from,
        }
    }
}

impl From<&Pool> for v1::PoolInfo {
    fn from(p: &Pool) -> Self {
        v1::PoolInfo {
            id: p.id,
            name: p.name.clone(),
            size: p.size,
            min_size: p.min_size,
            pg_num: p.pg_num,
        }
    }
}

impl From<v1::PoolInfo> for Pool {
    fn from(p: v1::PoolInfo) -> Self {
        Pool {
            id: p.id,
            name: p.name,
            size: p.size,
            min_size: p.min_size,
            pg_num: p.pg_num,
        }
    }
}

impl From<&ClusterMap> for v1::ClusterMap {
    fn from(m: &ClusterMap) -> Self {
        v1::ClusterMap {
            epoch: m.epoch,
            osds: m.osds.values().map(Into::into).collect(),
            pools: m.pools.values().map(Into::into).collect(),
            flags: m.flags.iter().cloned().collect(),
            next_pool_id: m.next_pool_id,
            next_osd_id: m.next_osd_id,
            fsid: m.fsid.clone(),
        }
    }
}

impl From<v1::ClusterMap> for ClusterMap {
    fn from(m: v1::ClusterMap) -> Self {
        ClusterMap {
            epoch: m.epoch,
            osds: m.osds.into_iter().map(|o| (o.id, o.into())).collect(),
            pools: m.pools.into_iter().map(|p| (p.id, p.into())).collect(),
            flags: m.flags.into_iter().collect(),
            next_pool_id: m.next_pool_id,
            next_osd_id: m.next_osd_id,
            fsid: m.fsid,
        }
    }
}

impl From<&Incremental> for v1::MapIncremental {
    fn from(i: &Incremental) -> Self {
        v1::MapIncremental {
            epoch: i.epoch,
            upsert_osds: i.upsert_osds.iter().map(Into::into).collect(),
            removed_osds: i.removed_osds.clone(),
            upsert_pools: i.upsert_pools.iter().map(Into::into).collect(),
            removed_pools: i.removed_pools.clone(),
            flags: i.flags.iter().cloned().collect(),
            next_pool_id: i.next_pool_id,
            next_osd_id: i.next_osd_id,
            fsid: i.fsid.clone(),
        }
    }
}

impl From<v1::MapIncremental> for Incremental {
    fn from(i: v1::MapIncremental) -> Self {
        Incremental {
            epoch: i.epoch,
            upsert_osds: i.upsert_osds.into_iter().map(Into::into).collect(),
            removed_osds: i.removed_osds,
            upsert_pools: i.upsert_pools.into_iter().map(Into::into).collect(),
            removed_pools: i.removed_pools,
            flags: i.flags.into_iter().collect(),
            next_pool_id: i.next_pool_id,
            next_osd_id: i.next_osd_id,
            fsid: i.fsid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn leader_redirect_roundtrips_and_only_names_a_leader_when_known() {
        let s = not_leader(Some("127.0.0.1:6791"));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(leader_redirect(&s).as_deref(), Some("127.0.0.1:6791"));
        assert!(is_not_leader(&s));
        let none = not_leader(None);
        assert_eq!(none.code(), tonic::Code::Unavailable);
        assert!(is_not_leader(&none));
        assert_eq!(leader_redirect(&none), None);
        assert!(!is_not_leader(&tonic::Status::unavailable(
            "connection refused"
        )));
        // Another code with the header is not a redirect.
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert(LEADER_HEADER, "127.0.0.1:1".parse().unwrap());
        let other = tonic::Status::with_metadata(tonic::Code::Internal, "x", md);
        assert_eq!(leader_redirect(&other), None);
    }

    #[test]
    fn map_roundtrips_through_the_wire_encoding() {
        let mut m = ClusterMap {
            epoch: 7,
            next_pool_id: 1,
            next_osd_id: 1,
            fsid: "4d3c2b1a-0000-4000-8000-00000000beef".into(),
            ..Default::default()
        };
        m.osds.insert(
            0,
            Osd {
                id: 0,
                uuid: "a".into(),
                host: "h".into(),
                public_addr: "127.0.0.1:1".into(),
                cluster_addr: "127.0.0.1:2".into(),
                shard_count: 2,
                shard_ports: vec![10, 11],
                up: true,
                in_: false,
                weight: 1.5,
                up_from: 0,
            },
        );
        m.pools.insert(
            0,
            Pool {
                id: 0,
                name: "rbd".into(),
                size: 3,
                min_size: 2,
                pg_num: 64,
            },
        );
        m.flags.insert("noout".into());
        let bytes = v1::ClusterMap::from(&m).encode_to_vec();
        let back: ClusterMap = v1::ClusterMap::decode(bytes.as_slice()).unwrap().into();
        assert_eq!(back, m);
        assert_eq!(bearer("s3cret").unwrap().to_str().unwrap(), "Bearer s3cret");
        assert!(bearer("bad\ntoken").is_err());
    }
}
