//! Control-plane credentials: what a gRPC caller presents, and what each party may hold.
//!
//! Every principal has a 32-byte secret in the monitor's keyring, under a key id with a role
//! (`client.<name>`, `osd.<n>`, admins). Two things are made from a secret:
//! - the secret itself authenticates at the **monitor**: `authorization: Bearer <id>:<hex>`;
//! - its **data-path key**, [`data_path_key`] (HMAC-SHA256 of the secret with a fixed label),
//!   authenticates on the data path (the handshake of `carmine-wire`) and at the **OSD admin
//!   services**, with the same bearer form.
//!
//! The monitor hands the OSDs only data-path keys (`GetKeyring`), never secrets. So an OSD can
//! check every caller of the data path and of its admin service, and a compromised OSD can
//! pose as others there (as in Ceph, where OSDs share the rotating service secrets), but it
//! cannot pose as anyone but itself at the monitor: it cannot boot or heartbeat as another
//! OSD, fetch keys, or change the map. HMAC cannot be inverted, so no data-path key yields
//! its secret.
//!
//! The monitor's bootstrap admin credential, `--admin-token`, is the principal
//! [`ADMIN_KEY_ID`] whose secret is [`admin_token_secret`] of the token: `Bearer <token>`
//! works at the monitor, and the CLI derives the data-path key for OSD admin calls from it.
//!
//! Bearer secrets travel in the clear without TLS: the control plane runs TLS by default.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};

use crate::AUTH_HEADER;

/// Length of a secret and of a data-path key, in bytes.
pub const SECRET_LEN: usize = 32;

/// The key id of the administrator the monitor's `--admin-token` stands for.
pub const ADMIN_KEY_ID: &str = "client.admin";

/// Key ids starting with this are OSD keys (`osd.<n>`).
pub const OSD_KEY_PREFIX: &str = "osd.";

/// The label that separates data-path keys from every other use of a secret.
const DATA_PATH_LABEL: &[u8] = b"carmine data-path key v1";
/// The label of the admin token's secret.
const ADMIN_TOKEN_LABEL: &[u8] = b"carmine admin token v1:";

/// The data-path key of `secret`: HMAC-SHA256(secret, label).
pub fn data_path_key(secret: &[u8; SECRET_LEN]) -> [u8; SECRET_LEN] {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(DATA_PATH_LABEL);
    mac.finalize().into_bytes().into()
}

/// The secret of the admin principal for `token` (the monitor's `--admin-token`).
pub fn admin_token_secret(token: &str) -> [u8; SECRET_LEN] {
    let mut h = Sha256::new();
    h.update(ADMIN_TOKEN_LABEL);
    h.update(token.as_bytes());
    h.finalize().into()
}

/// Compares in a time that does not depend on where `a` and `b` first differ.
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a caller presented in `authorization`.
#[derive(Clone, PartialEq, Eq)]
pub enum Presented {
    /// `Bearer <token>`: the admin token (or anything that is not a key).
    Token(String),
    /// `Bearer <id>:<64 hex digits>`: a key id and 32 bytes (a secret at the monitor, a
    /// data-path key at an OSD).
    Key { id: String, proof: [u8; SECRET_LEN] },
}

impl std::fmt::Debug for Presented {
    // Never prints a token or a key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Presented::Token(_) => f.write_str("Token(..)"),
            Presented::Key { id, .. } => write!(f, "Key({id})"),
        }
    }
}

fn parse_hex(s: &str) -> Option<[u8; SECRET_LEN]> {
    if s.len() != 2 * SECRET_LEN {
        return None;
    }
    let mut out = [0u8; SECRET_LEN];
    for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
        let d = |c: u8| (c as char).to_digit(16);
        out[i] = (d(pair[0])? * 16 + d(pair[1])?) as u8;
    }
    Some(out)
}

/// Reads `authorization` from `md`: `Ok(None)` when absent; an error when it is not a
/// `Bearer` credential at all.
pub fn presented(md: &MetadataMap) -> Result<Option<Presented>, tonic::Status> {
    let Some(v) = md.get(AUTH_HEADER) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| tonic::Status::unauthenticated("malformed credential (want Bearer ...)"))?;
    if let Some((id, hex)) = v.rsplit_once(':') {
        if let (false, Some(proof)) = (id.is_empty(), parse_hex(hex)) {
            return Ok(Some(Presented::Key {
                id: id.to_string(),
                proof,
            }));
        }
    }
    Ok(Some(Presented::Token(v.to_string())))
}

/// The metadata value `Bearer <id>:<hex of proof>`.
pub fn key_bearer(
    id: &str,
    proof: &[u8; SECRET_LEN],
) -> Result<MetadataValue<Ascii>, crate::ProtoError> {
    let hex: String = proof.iter().map(|b| format!("{b:02x}")).collect();
    crate::bearer(&format!("{id}:{hex}"))
}

/// What an admin presents to an OSD's admin service for the admin token `token`.
pub fn admin_token_osd_bearer(token: &str) -> Result<MetadataValue<Ascii>, crate::ProtoError> {
    key_bearer(ADMIN_KEY_ID, &data_path_key(&admin_token_secret(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md_with(v: &str) -> MetadataMap {
        let mut md = MetadataMap::new();
        md.insert(AUTH_HEADER, v.parse().unwrap());
        md
    }

    #[test]
    fn a_key_bearer_reads_back_as_the_same_key() {
        let proof = [0xabu8; SECRET_LEN];
        let v = key_bearer("client.x", &proof).unwrap();
        let mut md = MetadataMap::new();
        md.insert(AUTH_HEADER, v);
        assert_eq!(
            presented(&md).unwrap(),
            Some(Presented::Key {
                id: "client.x".into(),
                proof
            })
        );
    }

    #[test]
    fn tokens_and_malformed_values_are_told_apart() {
        assert_eq!(
            presented(&md_with("Bearer plain-token")).unwrap(),
            Some(Presented::Token("plain-token".into()))
        );
        // A colon with no 64-digit key after it is a token, not a key.
        assert_eq!(
            presented(&md_with("Bearer a:b")).unwrap(),
            Some(Presented::Token("a:b".into()))
        );
        assert!(presented(&md_with("Basic abc")).is_err());
        assert_eq!(presented(&MetadataMap::new()).unwrap(), None);
    }

    #[test]
    fn derived_keys_differ_from_their_secret_and_from_each_other() {
        let a = [1u8; SECRET_LEN];
        let b = [2u8; SECRET_LEN];
        assert_ne!(data_path_key(&a), a);
        assert_ne!(data_path_key(&a), data_path_key(&b));
        assert_eq!(data_path_key(&a), data_path_key(&a));
        assert_ne!(admin_token_secret("t1"), admin_token_secret("t2"));
    }

    proptest::proptest! {
        /// Whatever a caller sends in `authorization`, reading it never panics, and every key
        /// bearer reads back as the key it was made from.
        #[test]
        fn any_header_reads_without_panic(v in "[ -~]{0,200}") {
            if let Ok(value) = v.parse::<MetadataValue<Ascii>>() {
                let mut md = MetadataMap::new();
                md.insert(AUTH_HEADER, value);
                let _ = presented(&md);
            }
        }

        #[test]
        fn key_bearers_round_trip(id in "[!-9;-~]{1,64}", proof in proptest::array::uniform32(0u8..)) {
            let mut md = MetadataMap::new();
            md.insert(AUTH_HEADER, key_bearer(&id, &proof).unwrap());
            proptest::prop_assert_eq!(presented(&md).unwrap(), Some(Presented::Key { id, proof }));
        }
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let p = Presented::Key {
            id: "osd.1".into(),
            proof: [0x5a; SECRET_LEN],
        };
        assert_eq!(format!("{p:?}"), "Key(osd.1)");
        assert_eq!(
            format!("{:?}", Presented::Token("s3cret".into())),
            "Token(..)"
        );
    }
}
