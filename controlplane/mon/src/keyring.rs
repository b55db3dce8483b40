//! The keyring: every principal's secret and role, and who a caller is.
//!
//! A key id maps to 32 random bytes (the secret) and a [`KeyRole`]:
//! - `client.<name>` ([`KeyRole::Client`], `auth add`): data-path ops, and maps from the
//!   monitor (GetMap, Subscribe); nothing else;
//! - `osd.<n>` ([`KeyRole::Osd`]): issued by `osd new` for one uuid (or at a first boot when the
//!   monitor runs `--insecure`); boots, heartbeats, reports failures and records PG intervals
//!   as OSD n only; fetches the OSDs' keyring;
//! - admins ([`KeyRole::Admin`]): [`ADMIN_KEY_ID`] stands for the monitor's `--admin-token`,
//!   others come from `auth add --role admin`; every call.
//!
//! Ids starting with [`OSD_KEY_PREFIX`] are OSD keys only: `auth add`/`auth rm` refuse them, so
//! no client can hold a key that names an OSD. The version grows by one on every change, and
//! is never reused by one store. What the OSDs get ([`Keyring::for_osds`]) holds data-path keys
//! ([`carmine_proto::auth::data_path_key`]) instead of secrets: see `carmine_proto::auth`.
//!
//! This type is plain data; [`crate::state::Monitor`] commits each next keyring to the store
//! before it installs it.

use std::collections::BTreeMap;

use carmine_proto::auth::{data_path_key, same_bytes};
use carmine_proto::v1;

pub use carmine_proto::auth::{ADMIN_KEY_ID, OSD_KEY_PREFIX};

use crate::state::MonError;

/// Length of a secret in bytes.
pub const CLIENT_KEY_LEN: usize = carmine_proto::auth::SECRET_LEN;

/// Longest key id, in bytes (the data-path handshake's limit too).
pub const MAX_CLIENT_ID_LEN: usize = 256;

/// The key id of OSD `id`: `osd.<id>`.
pub fn osd_key_id(id: u32) -> String {
    format!("{OSD_KEY_PREFIX}{id}")
}

/// What a key lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    /// A data-path client (`auth add`).
    Client,
    /// OSD number `.0` (key id `osd.<n>`).
    Osd(u32),
    /// An administrator.
    Admin,
}

impl KeyRole {
    /// The wire form: (role, osd_id).
    pub fn to_proto(self) -> (v1::KeyRole, u32) {
        match self {
            KeyRole::Client => (v1::KeyRole::Client, 0),
            KeyRole::Osd(id) => (v1::KeyRole::Osd, id),
            KeyRole::Admin => (v1::KeyRole::Admin, 0),
        }
    }
}

/// Who made a call, once its credential was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An administrator (the admin token, or an admin key).
    Admin,
    /// OSD n (its key).
    Osd(u32),
    /// A data-path client (its key id).
    Client(String),
    /// No credential, on a monitor run with `--insecure`: what an OSD or client could do
    /// before roles existed (but no admin call, unless no admin token is set either).
    Anonymous,
}

/// One issued key. `Debug` does not print the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub key: [u8; CLIENT_KEY_LEN],
    pub role: KeyRole,
    /// For an OSD key: the uuid it was issued for (empty: any, see the module doc).
    pub osd_uuid: String,
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("role", &self.role)
            .field("osd_uuid", &self.osd_uuid)
            .finish_non_exhaustive()
    }
}

/// 32 bytes from the OS RNG.
pub fn random_key() -> Result<[u8; CLIENT_KEY_LEN], MonError> {
    let mut key = [0u8; CLIENT_KEY_LEN];
    getrandom::fill(&mut key).map_err(|e| MonError::Random(e.to_string()))?;
    Ok(key)
}

/// Checks a key id: 1 to [`MAX_CLIENT_ID_LEN`] bytes of printable ASCII, no spaces.
pub fn validate_client_id(id: &str) -> Result<(), MonError> {
    if id.is_empty() {
        return Err(MonError::Invalid("client id must not be empty".into()));
    }
    if id.len() > MAX_CLIENT_ID_LEN {
        return Err(MonError::Invalid(format!(
            "client id is {} bytes long; at most {MAX_CLIENT_ID_LEN} allowed",
            id.len()
        )));
    }
    if let Some(c) = id.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(MonError::Invalid(format!(
            "client id {id:?} contains {c:?}: only printable ASCII without spaces is allowed"
        )));
    }
    Ok(())
}

/// Refuses an id reserved for OSD keys in a client key call (`what`: "add", "remove").
pub fn refuse_osd_id(id: &str, what: &str) -> Result<(), MonError> {
    if !id.starts_with(OSD_KEY_PREFIX) {
        return Ok(());
    }
    let how = if what == "add" {
        "an OSD's key comes from `carmine osd new --uuid <uuid>`"
    } else {
        "an OSD's key is removed with the OSD (`carmine osd rm <id>`)"
    };
    Err(MonError::Invalid(format!(
        "cannot {what} client key {id:?}: ids starting with {OSD_KEY_PREFIX:?} are reserved for \
         OSD keys ({how})"
    )))
}

/// Every key and the version, as stored.
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: BTreeMap<String, KeyEntry>,
    version: u64,
}

impl Default for Keyring {
    fn default() -> Self {
        // An empty keyring that was never stored is version 1; the first change stores 2.
        Keyring {
            keys: BTreeMap::new(),
            version: 1,
        }
    }
}

impl Keyring {
    /// The stored keyring. Returns it and the ids dropped: client keys named like OSD keys
    /// (from before that prefix was reserved; they would pass for an OSD by name).
    pub fn from_stored(k: v1::Keyring) -> Result<(Keyring, Vec<String>), MonError> {
        let mut keys = BTreeMap::new();
        let mut dropped = Vec::new();
        for ck in k.keys {
            let key: [u8; CLIENT_KEY_LEN] = ck.key.as_slice().try_into().map_err(|_| {
                MonError::Invalid(format!(
                    "stored key {:?} is {} bytes, not {CLIENT_KEY_LEN}",
                    ck.id,
                    ck.key.len()
                ))
            })?;
            let role = match ck.role() {
                v1::KeyRole::Osd if ck.id == osd_key_id(ck.osd_id) => KeyRole::Osd(ck.osd_id),
                v1::KeyRole::Osd => {
                    return Err(MonError::Invalid(format!(
                        "stored OSD key {:?} names osd.{}: the keyring is corrupt",
                        ck.id, ck.osd_id
                    )))
                }
                v1::KeyRole::Admin => KeyRole::Admin,
                v1::KeyRole::Client | v1::KeyRole::Unspecified => KeyRole::Client,
            };
            if !matches!(role, KeyRole::Osd(_)) && ck.id.starts_with(OSD_KEY_PREFIX) {
                dropped.push(ck.id);
                continue;
            }
            keys.insert(
                ck.id,
                KeyEntry {
                    key,
                    role,
                    osd_uuid: ck.osd_uuid,
                },
            );
        }
        Ok((
            Keyring {
                keys,
                version: k.version.max(1),
            },
            dropped,
        ))
    }

    /// The version (grows by one on every change).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The keys, by id.
    pub fn keys(&self) -> &BTreeMap<String, KeyEntry> {
        &self.keys
    }

    /// The entry of `id`.
    pub fn get(&self, id: &str) -> Option<&KeyEntry> {
        self.keys.get(id)
    }

    /// `keys` as the next version (to be stored, then installed with [`Keyring::install`]).
    pub fn next(&self, keys: BTreeMap<String, KeyEntry>) -> Keyring {
        Keyring {
            keys,
            version: self.version + 1,
        }
    }

    /// Replaces this keyring with `next` (after it was stored).
    pub fn install(&mut self, next: Keyring) {
        *self = next;
    }

    fn to_proto(&self, key: impl Fn(&KeyEntry) -> [u8; CLIENT_KEY_LEN]) -> v1::Keyring {
        v1::Keyring {
            version: self.version,
            keys: self
                .keys
                .iter()
                .map(|(id, e)| {
                    let (role, osd_id) = e.role.to_proto();
                    v1::ClientKey {
                        id: id.clone(),
                        key: key(e).to_vec(),
                        role: role.into(),
                        osd_id,
                        osd_uuid: e.osd_uuid.clone(),
                    }
                })
                .collect(),
        }
    }

    /// The stored form: secrets.
    pub fn to_stored(&self) -> v1::Keyring {
        self.to_proto(|e| e.key)
    }

    /// What OSDs get: each key's data-path key, never a secret.
    pub fn for_osds(&self) -> v1::Keyring {
        self.to_proto(|e| data_path_key(&e.key))
    }

    /// Who presents `proof` as the secret of `id`; `None` if that is not its secret.
    pub fn authenticate(&self, id: &str, proof: &[u8; CLIENT_KEY_LEN]) -> Option<Principal> {
        let e = self.keys.get(id)?;
        if !same_bytes(&e.key, proof) {
            return None;
        }
        Some(match e.role {
            KeyRole::Admin => Principal::Admin,
            KeyRole::Osd(n) => Principal::Osd(n),
            KeyRole::Client => Principal::Client(id.to_string()),
        })
    }

    /// The OSD key issued for `uuid`, if any: (osd id, entry).
    pub fn osd_key_for_uuid(&self, uuid: &str) -> Option<(u32, &KeyEntry)> {
        self.keys.values().find_map(|e| match e.role {
            KeyRole::Osd(n) if e.osd_uuid == uuid => Some((n, e)),
            _ => None,
        })
    }

    /// Whether OSD id `n` has a key bound to a uuid other than `uuid`.
    pub fn osd_id_taken(&self, n: u32, uuid: &str) -> bool {
        self.keys
            .get(&osd_key_id(n))
            .is_some_and(|e| !e.osd_uuid.is_empty() && e.osd_uuid != uuid)
    }

    /// One more than the highest OSD id that has a key (0 if none).
    pub fn next_osd_id(&self) -> u32 {
        self.keys
            .values()
            .filter_map(|e| match e.role {
                KeyRole::Osd(n) => Some(n.saturating_add(1)),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(entries: &[(&str, KeyRole, u8, &str)]) -> Keyring {
        let mut k = Keyring::default();
        let keys = entries
            .iter()
            .map(|(id, role, b, uuid)| {
                (
                    id.to_string(),
                    KeyEntry {
                        key: [*b; CLIENT_KEY_LEN],
                        role: *role,
                        osd_uuid: uuid.to_string(),
                    },
                )
            })
            .collect();
        let next = k.next(keys);
        k.install(next);
        k
    }

    #[test]
    fn a_secret_names_its_principal_and_nothing_else_does() {
        let k = ring(&[
            ("client.a", KeyRole::Client, 1, ""),
            ("osd.3", KeyRole::Osd(3), 2, "u3"),
            ("client.admin", KeyRole::Admin, 3, ""),
        ]);
        assert_eq!(
            k.authenticate("client.a", &[1; 32]),
            Some(Principal::Client("client.a".into()))
        );
        assert_eq!(k.authenticate("osd.3", &[2; 32]), Some(Principal::Osd(3)));
        assert_eq!(
            k.authenticate("client.admin", &[3; 32]),
            Some(Principal::Admin)
        );
        // Another principal's secret, an unknown id, a data-path key: refused.
        assert_eq!(k.authenticate("osd.3", &[1; 32]), None);
        assert_eq!(k.authenticate("osd.4", &[2; 32]), None);
        assert_eq!(k.authenticate("osd.3", &data_path_key(&[2; 32])), None);
    }

    #[test]
    fn osds_get_derived_keys_only() {
        let k = ring(&[
            ("client.a", KeyRole::Client, 1, ""),
            ("osd.0", KeyRole::Osd(0), 2, "u"),
        ]);
        let sent = k.for_osds();
        for ck in &sent.keys {
            let secret = k.get(&ck.id).unwrap().key;
            assert_ne!(ck.key, secret.to_vec(), "{} sent as its secret", ck.id);
            assert_eq!(ck.key, data_path_key(&secret).to_vec());
        }
        assert_eq!(k.to_stored().keys[0].key, vec![1; 32]);
    }

    #[test]
    fn osd_ids_follow_their_keys() {
        let k = ring(&[
            ("osd.0", KeyRole::Osd(0), 2, "u0"),
            ("osd.7", KeyRole::Osd(7), 2, ""),
        ]);
        assert_eq!(k.next_osd_id(), 8);
        assert_eq!(k.osd_key_for_uuid("u0").map(|(n, _)| n), Some(0));
        assert!(k.osd_id_taken(0, "other"));
        assert!(!k.osd_id_taken(0, "u0"));
        // A key without a uuid (issued at boot) binds no uuid.
        assert!(!k.osd_id_taken(7, "any"));
    }

    #[test]
    fn stored_client_keys_named_like_osds_are_dropped() {
        let stored = v1::Keyring {
            version: 4,
            keys: vec![
                v1::ClientKey {
                    id: "osd.1".into(),
                    key: vec![1; 32],
                    role: v1::KeyRole::Client.into(),
                    osd_id: 0,
                    osd_uuid: String::new(),
                },
                v1::ClientKey {
                    id: "client.admin".into(),
                    key: vec![2; 32],
                    role: v1::KeyRole::Admin.into(),
                    osd_id: 0,
                    osd_uuid: String::new(),
                },
            ],
        };
        let (k, dropped) = Keyring::from_stored(stored).unwrap();
        assert_eq!(dropped, vec!["osd.1".to_string()]);
        assert_eq!(k.get("client.admin").unwrap().role, KeyRole::Admin);
        assert_eq!(k.version(), 4);
    }
}
