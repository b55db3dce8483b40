//! The client key file: who the client is and the 32-byte key the monitor issued for it.
//!
//! Written by `carmine auth add <id> --keyfile F`, read here. TOML, exactly two keys:
//!
//! ```toml
//! id = "client.bench"
//! key = "<64 lowercase hex chars>"
//! ```
//!
//! Unknown keys are refused (a typo must not silently drop the key), and the key must be
//! exactly 64 hex digits.

use std::path::{Path, PathBuf};

use carmine_wire::{AuthKey, KeyError};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A client identity: id plus key.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub id: String,
    pub key: AuthKey,
}

/// Why a key file could not be used.
#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error("key file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path}: not valid TOML with `id` and `key`: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("key file {path}: `id` is empty")]
    EmptyId { path: PathBuf },
    #[error("cannot encode a key file: {0}")]
    Encode(String),
    #[error("key file {path}: `key`: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: KeyError,
    },
}

#[derive(Serialize)]
struct RawOut<'a> {
    id: &'a str,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    id: String,
    key: String,
}

impl Credentials {
    /// The key this client authenticates with on the data path (derived from its secret, see
    /// `carmine_proto::auth`): what the OSDs hold for it.
    pub fn data_path_key(&self) -> AuthKey {
        AuthKey::new(carmine_proto::auth::data_path_key(self.key.as_bytes()))
    }

    /// Parses the text of a key file; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, KeyFileError> {
        let raw: Raw = toml::from_str(text).map_err(|e| KeyFileError::Parse {
            path: path.to_owned(),
            reason: e.message().to_owned(),
        })?;
        let id = raw.id.trim().to_owned();
        if id.is_empty() {
            return Err(KeyFileError::EmptyId {
                path: path.to_owned(),
            });
        }
        let key = AuthKey::from_hex(&raw.key).map_err(|source| KeyFileError::Key {
            path: path.to_owned(),
            source,
        })?;
        Ok(Credentials { id, key })
    }

    /// Reads and parses the key file at `path`.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// The key file text for these credentials (what `carmine auth add --keyfile` writes).
    pub fn to_toml(&self) -> Result<String, KeyFileError> {
        // toml quotes and escapes the id, whatever characters it holds.
        toml::to_string(&RawOut {
            id: &self.id,
            key: self.key.to_hex(),
        })
        .map_err(|e| KeyFileError::Encode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn p() -> &'static Path {
        Path::new("k.toml")
    }

    #[test]
    fn parses_a_valid_file_and_roundtrips() {
        let c =
            Credentials::parse(&format!("id = \"client.bench\"\nkey = \"{HEX}\"\n"), p()).unwrap();
        assert_eq!(c.id, "client.bench");
        assert_eq!(c.key.to_hex(), HEX);
        let again = Credentials::parse(&c.to_toml().unwrap(), p()).unwrap();
        assert_eq!(again.id, c.id);
        assert_eq!(again.key.to_hex(), HEX);
        // An id with characters TOML must escape survives the round trip.
        let odd = Credentials {
            id: "client.\"q\\é".into(),
            key: c.key.clone(),
        };
        assert_eq!(
            Credentials::parse(&odd.to_toml().unwrap(), p()).unwrap().id,
            odd.id
        );
    }

    #[test]
    fn refuses_bad_files() {
        let short = format!("id = \"c\"\nkey = \"{}\"", &HEX[..62]);
        assert!(matches!(
            Credentials::parse(&short, p()),
            Err(KeyFileError::Key {
                source: KeyError::Length(62),
                ..
            })
        ));
        let nonhex = format!("id = \"c\"\nkey = \"{}zz\"", &HEX[..62]);
        assert!(matches!(
            Credentials::parse(&nonhex, p()),
            Err(KeyFileError::Key { .. })
        ));
        assert!(matches!(
            Credentials::parse(&format!("id = \"  \"\nkey = \"{HEX}\""), p()),
            Err(KeyFileError::EmptyId { .. })
        ));
        assert!(matches!(
            Credentials::parse(&format!("key = \"{HEX}\""), p()),
            Err(KeyFileError::Parse { .. })
        ));
        assert!(matches!(
            Credentials::parse(&format!("id = \"c\"\nkey = \"{HEX}\"\nsecret = 1"), p()),
            Err(KeyFileError::Parse { .. })
        ));
        assert!(matches!(
            Credentials::parse("id = [", p()),
            Err(KeyFileError::Parse { .. })
        ));
        assert!(matches!(
            Credentials::load(Path::new("/nonexistent/carmine/key.toml")),
            Err(KeyFileError::Read { .. })
        ));
    }

    #[test]
    fn loads_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        std::fs::write(&path, format!("id = \"client.x\"\nkey = \"{HEX}\"\n")).unwrap();
        let c = Credentials::load(&path).unwrap();
        assert_eq!(c.id, "client.x");
    }
}
