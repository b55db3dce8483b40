//! The cluster map at one epoch, and incrementals between epochs.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One OSD as the map knows it. `Default` is a blank, down, out entry of id 0 (for literals
/// that name only what matters to them).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Osd {
    /// Id assigned by the monitor at first boot.
    pub id: u32,
    /// The OSD's own persistent identity.
    pub uuid: String,
    /// Host name: the placement failure domain.
    pub host: String,
    /// Client-facing address.
    pub public_addr: String,
    /// Replication address.
    pub cluster_addr: String,
    /// Number of shards (polling cores).
    pub shard_count: u32,
    /// Per-shard client ports, index = shard.
    pub shard_ports: Vec<u32>,
    /// Alive as far as the monitor knows.
    pub up: bool,
    /// Takes part in placement.
    #[serde(rename = "in")]
    pub in_: bool,
    /// Placement weight; 0 keeps the OSD out of placement.
    pub weight: f64,
    /// The epoch of its latest boot: a restart makes it a new member of its PGs.
    #[serde(default)]
    pub up_from: u64,
}

/// A replicated pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    /// Pool id, never reused.
    pub id: u32,
    /// Unique name.
    pub name: String,
    /// Replicas per object.
    pub size: u32,
    /// Minimum replicas up for I/O.
    pub min_size: u32,
    /// Number of placement groups.
    pub pg_num: u32,
}

/// The whole cluster map at one epoch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterMap {
    /// Version; every change makes a new one.
    pub epoch: u64,
    /// OSDs by id.
    pub osds: BTreeMap<u32, Osd>,
    /// Pools by id.
    pub pools: BTreeMap<u32, Pool>,
    /// Cluster-wide flags.
    pub flags: BTreeSet<String>,
    /// Next pool id to hand out.
    pub next_pool_id: u32,
    /// Next OSD id to hand out.
    pub next_osd_id: u32,
    /// The cluster's identity (a uuid the monitor made with its store; never changes once
    /// set). Empty only in maps of a monitor from before fsids.
    pub fsid: String,
}

/// The change from epoch `epoch - 1` to `epoch`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Incremental {
    /// The epoch this produces.
    pub epoch: u64,
    /// OSDs added or changed.
    pub upsert_osds: Vec<Osd>,
    /// OSDs removed.
    pub removed_osds: Vec<u32>,
    /// Pools added or changed.
    pub upsert_pools: Vec<Pool>,
    /// Pools removed.
    pub removed_pools: Vec<u32>,
    /// The complete new flag set.
    pub flags: BTreeSet<String>,
    /// New next pool id.
    pub next_pool_id: u32,
    /// New next OSD id.
    pub next_osd_id: u32,
    /// The map's fsid; empty = unchanged (a map's fsid is set once and never cleared).
    pub fsid: String,
}

/// Map errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    /// An incremental was applied to the wrong base epoch.
    #[error("incremental for epoch {inc} does not apply to a map at epoch {have}")]
    EpochGap {
        /// Epoch of the map.
        have: u64,
        /// Epoch the incremental produces.
        inc: u64,
    },
}

impl ClusterMap {
    /// The incremental that turns `old` into `new` (`new.epoch` is its epoch).
    pub fn diff(old: &ClusterMap, new: &ClusterMap) -> Incremental {
        let upsert_osds = new
            .osds
            .values()
            .filter(|o| old.osds.get(&o.id) != Some(o))
            .cloned()
            .collect();
        let removed_osds = old
            .osds
            .keys()
            .filter(|id| !new.osds.contains_key(id))
            .copied()
            .collect();
        let upsert_pools = new
            .pools
            .values()
            .filter(|p| old.pools.get(&p.id) != Some(p))
            .cloned()
            .collect();
        let removed_pools = old
            .pools
            .keys()
            .filter(|id| !new.pools.contains_key(id))
            .copied()
            .collect();
        Incremental {
            epoch: new.epoch,
            upsert_osds,
            removed_osds,
            upsert_pools,
            removed_pools,
            flags: new.flags.clone(),
            next_pool_id: new.next_pool_id,
            next_osd_id: new.next_osd_id,
            fsid: new.fsid.clone(),
        }
    }

    /// Applies `inc`, which must produce exactly `self.epoch + 1`.
    pub fn apply(&mut self, inc: &Incremental) -> Result<(), MapError> {
        if inc.epoch != self.epoch + 1 {
            return Err(MapError::EpochGap {
                have: self.epoch,
                inc: inc.epoch,
            });
        }
        for id in &inc.removed_osds {
            self.osds.remove(id);
        }
        for o in &inc.upsert_osds {
            self.osds.insert(o.id, o.clone());
        }
        for id in &inc.removed_pools {
            self.pools.remove(id);
        }
        for p in &inc.upsert_pools {
            self.pools.insert(p.id, p.clone());
        }
        self.flags = inc.flags.clone();
        self.next_pool_id = inc.next_pool_id;
        self.next_osd_id = inc.next_osd_id;
        if !inc.fsid.is_empty() {
            self.fsid = inc.fsid.clone();
        }
        self.epoch = inc.epoch;
        Ok(())
    }

    /// The pool called `name`.
    pub fn pool_by_name(&self, name: &str) -> Option<&Pool> {
        self.pools.values().find(|p| p.name == name)
    }

    /// The OSD with this uuid.
    pub fn osd_by_uuid(&self, uuid: &str) -> Option<&Osd> {
        self.osds.values().find(|o| o.uuid == uuid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn osd(id: u32, host: &str) -> Osd {
        Osd {
            id,
            uuid: format!("u{id}"),
            host: host.into(),
            public_addr: String::new(),
            cluster_addr: String::new(),
            shard_count: 1,
            shard_ports: vec![1],
            up: true,
            in_: true,
            weight: 1.0,
            up_from: 0,
        }
    }

    #[test]
    fn diff_then_apply_reproduces_the_new_map() {
        let mut a = ClusterMap {
            epoch: 4,
            ..Default::default()
        };
        a.osds.insert(0, osd(0, "h0"));
        a.osds.insert(1, osd(1, "h1"));
        let mut b = a.clone();
        b.epoch = 5;
        b.osds.remove(&0);
        b.osds.get_mut(&1).unwrap().up = false;
        b.osds.insert(2, osd(2, "h2"));
        b.pools.insert(
            0,
            Pool {
                id: 0,
                name: "p".into(),
                size: 3,
                min_size: 2,
                pg_num: 8,
            },
        );
        b.flags.insert("noout".into());
        b.next_pool_id = 1;
        b.fsid = "7c0ffee0-0000-4000-8000-000000000001".into();
        let inc = ClusterMap::diff(&a, &b);
        assert_eq!(inc.removed_osds, vec![0]);
        assert_eq!(inc.upsert_osds.len(), 2);
        let mut c = a.clone();
        c.apply(&inc).unwrap();
        assert_eq!(c, b);
        // Applying twice is refused: the epoch no longer matches.
        assert_eq!(c.apply(&inc), Err(MapError::EpochGap { have: 5, inc: 5 }));
        // An incremental without an fsid (from a monitor before fsids) keeps the map's.
        let mut d = b.clone();
        d.epoch = 6;
        let mut inc = ClusterMap::diff(&b, &d);
        inc.fsid.clear();
        c.apply(&inc).unwrap();
        assert_eq!(c.fsid, b.fsid);
    }
}
