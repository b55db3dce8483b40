//! Crash-safe persistence of the map history in redb.
//!
//! One table, `maps`: epoch → the full `ClusterMap` in its protobuf encoding (the same
//! encoding as on the wire, so the proto compatibility rules protect stored maps too). Every
//! new epoch is written and committed (redb commits are durable and atomic) before anybody is
//! told about it, so a crash never loses an epoch that was announced. Epochs older than the
//! history window are deleted in the same transaction. Incrementals are not stored: the
//! monitor rebuilds them from consecutive full maps at start.
//!
//! A second table, `aux`, holds state that is not part of the map, one protobuf blob per key:
//! `keyring` is the client keyring (`v1::Keyring`, keys and version), rewritten whole and
//! committed before an `auth` change is acknowledged.
//!
//! A third table, `pg_history`: (pool, pg) → the PG's recorded intervals (`v1::PgHistory`,
//! oldest first; see [`crate::history`]). A PG without intervals has no row. A batch of
//! changes (one `RecordIntervals` call) is one transaction, committed before the reply.

use std::path::Path;

use carmine_placement::ClusterMap;
use carmine_proto::v1;
use prost::Message;
use redb::{Database, ReadableTable, TableDefinition};

const MAPS: TableDefinition<u64, &[u8]> = TableDefinition::new("maps");
const AUX: TableDefinition<&str, &[u8]> = TableDefinition::new("aux");
const KEYRING: &str = "keyring";
const PG_HISTORY: TableDefinition<(u32, u32), &[u8]> = TableDefinition::new("pg_history");

/// A PG's key in the history tables: (pool id, PG number).
pub type PgKey = (u32, u32);

/// One PG's new recorded history; an empty list removes the PG's record.
pub type PgHistoryChange = (PgKey, Vec<v1::PgInterval>);

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("map store: {0}")]
    Db(Box<redb::Error>),
    /// The etcd backend failed.
    #[error("map store (etcd): {0}")]
    Etcd(String),
    /// The etcd commit was refused: this monitor no longer leads (or the epoch moved on).
    #[error(
        "map store (etcd): commit of epoch {0} fenced off: this monitor is no longer the leader"
    )]
    Fenced(u64),
    /// The etcd keyring commit was refused: this monitor no longer leads.
    #[error("map store (etcd): keyring commit fenced off: this monitor is no longer the leader")]
    FencedKeyring,
    /// The stored keyring does not decode.
    #[error("map store: the stored keyring is corrupt: {0}")]
    KeyringDecode(prost::DecodeError),
    /// A stored PG history does not decode.
    #[error("map store: the stored history of pg {}.{:x} is corrupt: {source}", pg.0, pg.1)]
    HistoryDecode {
        /// The PG.
        pg: PgKey,
        /// Why.
        source: prost::DecodeError,
    },
    /// The etcd history commit was refused: this monitor no longer leads.
    #[error(
        "map store (etcd): pg history commit fenced off: this monitor is no longer the leader"
    )]
    FencedHistory,
    /// A stored map does not decode.
    #[error("map store: epoch {epoch} is corrupt: {source}")]
    Decode {
        /// The epoch.
        epoch: u64,
        /// Why.
        source: prost::DecodeError,
    },
}

fn dberr<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(Box::new(e.into()))
}

/// The map history on disk.
pub struct MapStore {
    db: Database,
}

impl MapStore {
    /// Opens (or creates) the store in `dir/mon.redb`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| dberr(redb::StorageError::Io(e)))?;
        let db = Database::create(dir.join("mon.redb")).map_err(dberr)?;
        // Create the table so that readers never see "table does not exist".
        let tx = db.begin_write().map_err(dberr)?;
        tx.open_table(MAPS).map_err(dberr)?;
        tx.open_table(AUX).map_err(dberr)?;
        tx.open_table(PG_HISTORY).map_err(dberr)?;
        tx.commit().map_err(dberr)?;
        Ok(MapStore { db })
    }

    /// Every stored map, oldest first.
    pub fn load(&self) -> Result<Vec<ClusterMap>, StoreError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(MAPS).map_err(dberr)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(dberr)? {
            let (k, v) = row.map_err(dberr)?;
            let epoch = k.value();
            let m = v1::ClusterMap::decode(v.value())
                .map_err(|source| StoreError::Decode { epoch, source })?;
            out.push(m.into());
        }
        Ok(out)
    }

    /// Durably stores `map` and forgets epochs older than `map.epoch - keep + 1`.
    pub fn commit(&self, map: &ClusterMap, keep: u64) -> Result<(), StoreError> {
        let bytes = v1::ClusterMap::from(map).encode_to_vec();
        let tx = self.db.begin_write().map_err(dberr)?;
        {
            let mut t = tx.open_table(MAPS).map_err(dberr)?;
            t.insert(map.epoch, bytes.as_slice()).map_err(dberr)?;
            let oldest_kept = map.epoch.saturating_sub(keep.max(1) - 1);
            let stale: Vec<u64> = t
                .range(..oldest_kept)
                .map_err(dberr)?
                .map(|r| r.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()
                .map_err(dberr)?;
            for e in stale {
                t.remove(e).map_err(dberr)?;
            }
        }
        tx.commit().map_err(dberr)?;
        Ok(())
    }

    /// The stored client keyring, if one was ever committed.
    pub fn load_keyring(&self) -> Result<Option<v1::Keyring>, StoreError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(AUX).map_err(dberr)?;
        let Some(v) = t.get(KEYRING).map_err(dberr)? else {
            return Ok(None);
        };
        v1::Keyring::decode(v.value())
            .map(Some)
            .map_err(StoreError::KeyringDecode)
    }

    /// Durably replaces the client keyring.
    pub fn commit_keyring(&self, keyring: &v1::Keyring) -> Result<(), StoreError> {
        let bytes = keyring.encode_to_vec();
        let tx = self.db.begin_write().map_err(dberr)?;
        tx.open_table(AUX)
            .map_err(dberr)?
            .insert(KEYRING, bytes.as_slice())
            .map_err(dberr)?;
        tx.commit().map_err(dberr)?;
        Ok(())
    }
}

impl MapStore {
    /// Every stored PG history (PGs with at least one interval), sorted by PG.
    pub fn load_pg_history(&self) -> Result<Vec<PgHistoryChange>, StoreError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(PG_HISTORY).map_err(dberr)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(dberr)? {
            let (k, v) = row.map_err(dberr)?;
            let pg = k.value();
            let h = v1::PgHistory::decode(v.value())
                .map_err(|source| StoreError::HistoryDecode { pg, source })?;
            out.push((pg, h.intervals));
        }
        Ok(out)
    }

    /// Durably applies `changes` in one transaction (an empty list deletes the PG's row).
    pub fn commit_pg_history(&self, changes: &[PgHistoryChange]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(dberr)?;
        {
            let mut t = tx.open_table(PG_HISTORY).map_err(dberr)?;
            for (pg, intervals) in changes {
                if intervals.is_empty() {
                    t.remove(*pg).map_err(dberr)?;
                } else {
                    let bytes = v1::PgHistory {
                        intervals: intervals.clone(),
                    }
                    .encode_to_vec();
                    t.insert(*pg, bytes.as_slice()).map_err(dberr)?;
                }
            }
        }
        tx.commit().map_err(dberr)?;
        Ok(())
    }
}

/// Where the map history lives: the local redb file, or etcd (high availability).
pub enum Backend {
    /// Single monitor, embedded store.
    Redb(MapStore),
    /// One of several monitors; this one leads (see [`crate::ha`]).
    Etcd(Box<crate::ha::EtcdStore>),
}

impl From<MapStore> for Backend {
    fn from(s: MapStore) -> Self {
        Backend::Redb(s)
    }
}

impl Backend {
    /// Every stored map, oldest first.
    pub fn load(&self) -> Result<Vec<ClusterMap>, StoreError> {
        match self {
            Backend::Redb(s) => s.load(),
            Backend::Etcd(s) => s.load(),
        }
    }

    /// Durably stores `map`, keeping `keep` epochs.
    pub fn commit(&self, map: &ClusterMap, keep: u64) -> Result<(), StoreError> {
        match self {
            Backend::Redb(s) => s.commit(map, keep),
            Backend::Etcd(s) => s.commit(map, keep),
        }
    }

    /// The stored client keyring, if any.
    pub fn load_keyring(&self) -> Result<Option<v1::Keyring>, StoreError> {
        match self {
            Backend::Redb(s) => s.load_keyring(),
            Backend::Etcd(s) => s.load_keyring(),
        }
    }

    /// Durably replaces the client keyring.
    pub fn commit_keyring(&self, keyring: &v1::Keyring) -> Result<(), StoreError> {
        match self {
            Backend::Redb(s) => s.commit_keyring(keyring),
            Backend::Etcd(s) => s.commit_keyring(keyring),
        }
    }

    /// Every stored PG history, sorted by PG.
    pub fn load_pg_history(&self) -> Result<Vec<PgHistoryChange>, StoreError> {
        match self {
            Backend::Redb(s) => s.load_pg_history(),
            Backend::Etcd(s) => s.load_pg_history(),
        }
    }

    /// Durably applies PG history changes (an empty list deletes the PG's record).
    pub fn commit_pg_history(&self, changes: &[PgHistoryChange]) -> Result<(), StoreError> {
        match self {
            Backend::Redb(s) => s.commit_pg_history(changes),
            Backend::Etcd(s) => s.commit_pg_history(changes),
        }
    }
}
