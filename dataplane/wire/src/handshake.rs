//! Connection handshake: protocol version negotiation and client authentication.
//!
//! ```text
//! client                                             server (OSD)
//!   Hello { versions, client nonce, client id }  ──►
//!                                                ◄──  Challenge { version, server nonce }
//!   Auth { mac }                                 ──►     (or AuthReject{NoCommonVersion})
//!                                                ◄──  AuthOk { server proof } | AuthReject
//! ```
//!
//! `Hello` is sent with frame version [`VERSION_MIN`](crate::VERSION_MIN) so every server can
//! read it; from `Challenge` on, frames carry the negotiated version (the highest both speak).
//!
//! The key is a 32-byte secret the monitor issues per client id. With `v` the negotiated
//! version, `Nc`/`Ns` the nonces and `id` the client id (u16 length + UTF-8):
//!
//! ```text
//! mac   = HMAC-SHA256(key, "carmine client auth v1" || v || Ns || Nc || id)
//! proof = HMAC-SHA256(key, "carmine server auth v1" || v || Nc || Ns || id)
//! ```
//!
//! The server's fresh nonce makes a recorded `Auth` useless on another connection; the distinct
//! labels keep one side's answer from being reflected as the other's; the proof tells the client
//! that the server holds the key too. Both MACs are checked with `hmac`'s constant-time
//! `verify_slice`. An unknown client id and a wrong key are refused identically
//! ([`RejectReason::BadCredentials`]) so the reply does not reveal which ids exist.
//!
//! Each side is a chain of types (`Client*` / `Server*`); each step consumes the previous
//! state, so a connection cannot send ops before it is authenticated or answer a challenge
//! twice. The messenger keeps whichever state it is in (e.g. in its own enum) and feeds it the
//! next decoded [`Message`].

use std::fmt;

use hmac::digest::{Key, KeyInit};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

use crate::codec::{Reader, Writer};
use crate::error::{EncodeError, MessageError};
use crate::frame::{FrameType, VERSION_MAX, VERSION_MIN};
use crate::limits::Limits;
use crate::message::Message;

type HmacSha256 = Hmac<Sha256>;

/// Length of nonces, keys and MACs.
pub const SECRET_LEN: usize = 32;

const CLIENT_LABEL: &[u8] = b"carmine client auth v1";
const SERVER_LABEL: &[u8] = b"carmine server auth v1";

/// A client's secret key, issued by the monitor. `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthKey([u8; SECRET_LEN]);

impl AuthKey {
    pub fn new(bytes: [u8; SECRET_LEN]) -> Self {
        AuthKey(bytes)
    }

    /// Parses the 64-hex-digit form used in config files and by the monitor's CLI.
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        let s = s.trim();
        if s.len() != 2 * SECRET_LEN {
            return Err(KeyError::Length(s.len()));
        }
        let mut out = [0u8; SECRET_LEN];
        for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16).ok_or(KeyError::NotHex);
            // Each digit is < 16, so the byte cannot overflow.
            out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Ok(AuthKey(out))
    }

    /// The key's bytes (to derive from it or present it; never log them).
    pub fn as_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    /// The 64-hex-digit form.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A fresh random key (for the monitor to issue).
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut k = [0u8; SECRET_LEN];
        getrandom::fill(&mut k)?;
        Ok(AuthKey(k))
    }

    fn mac(
        &self,
        label: &[u8],
        version: u8,
        first: &Nonce,
        second: &Nonce,
        id: &str,
    ) -> HmacSha256 {
        // HMAC zero-pads a short key to the hash's block size, so padding it here ourselves
        // gives the same MAC through the infallible block-sized constructor.
        let mut block = Key::<HmacSha256>::default();
        block[..SECRET_LEN].copy_from_slice(&self.0);
        let mut m = <HmacSha256 as KeyInit>::new(&block);
        m.update(label);
        m.update(&[version]);
        m.update(&first.0);
        m.update(&second.0);
        // The id is length-prefixed as on the wire; its length is bounded by Limits (< 64 KiB).
        m.update(&(id.len() as u16).to_le_bytes());
        m.update(id.as_bytes());
        m
    }
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthKey(..)")
    }
}

/// A key in text form that is not 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("key must be 64 hex digits, got {0} characters")]
    Length(usize),
    #[error("key contains a character that is not a hex digit")]
    NotHex,
}

/// A handshake nonce. Use [`Nonce::random`] outside tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nonce(pub [u8; SECRET_LEN]);

impl Nonce {
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut n = [0u8; SECRET_LEN];
        getrandom::fill(&mut n)?;
        Ok(Nonce(n))
    }
}

/// A non-empty range of protocol versions, `min..=max`, both at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRange {
    min: u8,
    max: u8,
}

impl VersionRange {
    /// The versions this build speaks.
    pub const SUPPORTED: VersionRange = VersionRange {
        min: VERSION_MIN,
        max: VERSION_MAX,
    };

    pub fn new(min: u8, max: u8) -> Result<Self, MessageError> {
        if min == 0 || min > max {
            return Err(MessageError::BadVersionRange { min, max });
        }
        Ok(VersionRange { min, max })
    }

    pub fn min(&self) -> u8 {
        self.min
    }

    pub fn max(&self) -> u8 {
        self.max
    }

    pub fn contains(&self, v: u8) -> bool {
        (self.min..=self.max).contains(&v)
    }

    /// The highest version in both ranges.
    pub fn highest_common(&self, other: &VersionRange) -> Option<u8> {
        let hi = self.max.min(other.max);
        (hi >= self.min.max(other.min)).then_some(hi)
    }
}

/// Client → server: first frame of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello<'a> {
    pub versions: VersionRange,
    pub client_nonce: Nonce,
    pub client_id: &'a str,
}

/// Server → client: the chosen version and the nonce to authenticate over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    pub version: u8,
    pub server_nonce: Nonce,
}

/// Client → server: the answer to the challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Auth {
    pub mac: [u8; SECRET_LEN],
}

/// Server → client: authenticated; the server's proof that it holds the key too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthOk {
    pub server_proof: [u8; SECRET_LEN],
}

/// Server → client: refused; the server closes the connection after sending it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthReject {
    pub reason: RejectReason,
    /// What the server speaks, so a client can tell a version problem from a key problem.
    pub server_versions: VersionRange,
}

/// Why the server refused a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RejectReason {
    NoCommonVersion = 1,
    /// Unknown client id or wrong key (deliberately not distinguished).
    BadCredentials = 2,
    /// The client broke the handshake sequence.
    Protocol = 3,
}

impl RejectReason {
    fn from_u8(v: u8) -> Result<Self, MessageError> {
        Ok(match v {
            1 => Self::NoCommonVersion,
            2 => Self::BadCredentials,
            3 => Self::Protocol,
            other => return Err(MessageError::UnknownRejectReason(other)),
        })
    }
}

fn check_client_id(id: &str, limits: &Limits) -> Result<(), MessageError> {
    let field = "client id";
    if id.is_empty() {
        return Err(MessageError::Empty { field });
    }
    let max = usize::from(limits.max_client_id_len);
    if id.len() > max {
        return Err(MessageError::TooLong {
            field,
            len: id.len(),
            max,
        });
    }
    Ok(())
}

// Wire layouts (payloads, little-endian):
//   Hello:      u8 min version | u8 max version | [32] client nonce | str16 client id
//   Challenge:  u8 version | [32] server nonce
//   Auth:       [32] mac
//   AuthOk:     [32] server proof
//   AuthReject: u8 reason | u8 server min version | u8 server max version
impl<'a> Hello<'a> {
    pub(crate) fn payload_len(&self) -> usize {
        2 + SECRET_LEN + 2 + self.client_id.len()
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>, limits: &Limits) -> Result<(), EncodeError> {
        check_client_id(self.client_id, limits)?;
        w.u8(self.versions.min)?;
        w.u8(self.versions.max)?;
        w.bytes(&self.client_nonce.0)?;
        w.bytes16(self.client_id.as_bytes(), "client id")
    }

    pub(crate) fn parse(payload: &'a [u8], limits: &Limits) -> Result<Self, MessageError> {
        let mut r = Reader::new(payload);
        let min = r.u8("min version")?;
        let max = r.u8("max version")?;
        let client_nonce = Nonce(r.array("client nonce")?);
        let client_id = r.str16("client id")?;
        r.finish()?;
        check_client_id(client_id, limits)?;
        Ok(Hello {
            versions: VersionRange::new(min, max)?,
            client_nonce,
            client_id,
        })
    }
}

impl Challenge {
    pub(crate) const LEN: usize = 1 + SECRET_LEN;

    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        if self.version == 0 {
            return Err(MessageError::InvalidValue {
                field: "chosen version",
                value: 0,
            }
            .into());
        }
        w.u8(self.version)?;
        w.bytes(&self.server_nonce.0)
    }

    pub(crate) fn parse(payload: &[u8]) -> Result<Self, MessageError> {
        let mut r = Reader::new(payload);
        let version = r.u8("chosen version")?;
        let server_nonce = Nonce(r.array("server nonce")?);
        r.finish()?;
        if version == 0 {
            return Err(MessageError::InvalidValue {
                field: "chosen version",
                value: 0,
            });
        }
        Ok(Challenge {
            version,
            server_nonce,
        })
    }
}

fn parse_secret(payload: &[u8], field: &'static str) -> Result<[u8; SECRET_LEN], MessageError> {
    let mut r = Reader::new(payload);
    let out = r.array(field)?;
    r.finish()?;
    Ok(out)
}

impl Auth {
    pub(crate) fn parse(payload: &[u8]) -> Result<Self, MessageError> {
        Ok(Auth {
            mac: parse_secret(payload, "auth mac")?,
        })
    }
}

impl AuthOk {
    pub(crate) fn parse(payload: &[u8]) -> Result<Self, MessageError> {
        Ok(AuthOk {
            server_proof: parse_secret(payload, "server proof")?,
        })
    }
}

impl AuthReject {
    pub(crate) const LEN: usize = 3;

    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u8(self.reason as u8)?;
        w.u8(self.server_versions.min)?;
        w.u8(self.server_versions.max)
    }

    pub(crate) fn parse(payload: &[u8]) -> Result<Self, MessageError> {
        let mut r = Reader::new(payload);
        let reason = RejectReason::from_u8(r.u8("reject reason")?)?;
        let min = r.u8("server min version")?;
        let max = r.u8("server max version")?;
        r.finish()?;
        Ok(AuthReject {
            reason,
            server_versions: VersionRange::new(min, max)?,
        })
    }
}

/// Why a handshake failed. On the server, [`HandshakeError::reject`] gives the frame to send
/// before closing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    #[error("no common protocol version: we speak {ours:?}, the peer {theirs:?}")]
    NoCommonVersion {
        ours: VersionRange,
        theirs: VersionRange,
    },
    #[error("authentication failed: unknown client id or wrong key")]
    BadCredentials,
    #[error("the server's proof does not match our key: it does not hold the key")]
    BadServerProof,
    #[error("the server refused the handshake: {reason:?} (it speaks {server_versions:?})")]
    Rejected {
        reason: RejectReason,
        server_versions: VersionRange,
    },
    #[error("server chose version {chosen}, outside our range {ours:?}")]
    BadChosenVersion { chosen: u8, ours: VersionRange },
    #[error("expected a {expected} message, got {got:?}")]
    Unexpected {
        expected: &'static str,
        got: FrameType,
    },
    #[error("invalid client id: {0}")]
    InvalidClientId(MessageError),
}

impl HandshakeError {
    /// What a server sends before closing the connection, if anything.
    pub fn reject(&self) -> Option<AuthReject> {
        let reason = match self {
            HandshakeError::NoCommonVersion { .. } => RejectReason::NoCommonVersion,
            HandshakeError::BadCredentials => RejectReason::BadCredentials,
            HandshakeError::Unexpected { .. } | HandshakeError::InvalidClientId(_) => {
                RejectReason::Protocol
            }
            // Client-side conditions: nothing to send.
            HandshakeError::BadServerProof
            | HandshakeError::Rejected { .. }
            | HandshakeError::BadChosenVersion { .. } => return None,
        };
        Some(AuthReject {
            reason,
            server_versions: VersionRange::SUPPORTED,
        })
    }
}

/// What both sides know once the handshake succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Use it for every later frame ([`Encoder::new`](crate::Encoder::new),
    /// [`FrameDecoder::set_negotiated_version`](crate::FrameDecoder::set_negotiated_version)).
    pub version: u8,
    pub client_id: String,
}

// ---------------------------------------------------------------- client side

/// The client before it has sent anything.
#[derive(Debug)]
pub struct ClientHandshake {
    versions: VersionRange,
    client_id: String,
    key: AuthKey,
    nonce: Nonce,
}

impl ClientHandshake {
    /// Checks the client id against `limits`; pass [`Nonce::random`] as the nonce.
    pub fn new(
        client_id: impl Into<String>,
        key: AuthKey,
        nonce: Nonce,
        limits: &Limits,
    ) -> Result<Self, HandshakeError> {
        let client_id = client_id.into();
        check_client_id(&client_id, limits).map_err(HandshakeError::InvalidClientId)?;
        Ok(ClientHandshake {
            versions: VersionRange::SUPPORTED,
            client_id,
            key,
            nonce,
        })
    }

    /// Offers a different version range (tests, or a client pinned to older servers).
    pub fn with_versions(mut self, versions: VersionRange) -> Self {
        self.versions = versions;
        self
    }

    /// The `Hello` to send, encoded with frame version [`VERSION_MIN`].
    pub fn hello(&self) -> Hello<'_> {
        Hello {
            versions: self.versions,
            client_nonce: self.nonce,
            client_id: &self.client_id,
        }
    }

    /// Call once the `Hello` is sent.
    pub fn sent_hello(self) -> ClientAwaitingChallenge {
        ClientAwaitingChallenge { hs: self }
    }
}

/// The client waiting for the server's `Challenge`.
#[derive(Debug)]
pub struct ClientAwaitingChallenge {
    hs: ClientHandshake,
}

impl ClientAwaitingChallenge {
    /// Answers a `Challenge`; an `AuthReject` here (no common version) becomes the error.
    pub fn on_message(self, msg: &Message<'_>) -> Result<ClientAwaitingVerdict, HandshakeError> {
        let challenge = match msg {
            Message::Challenge(c) => c,
            Message::AuthReject(r) => return Err(rejected(r)),
            other => {
                return Err(HandshakeError::Unexpected {
                    expected: "Challenge",
                    got: other.frame_type(),
                })
            }
        };
        let hs = self.hs;
        if !hs.versions.contains(challenge.version) {
            return Err(HandshakeError::BadChosenVersion {
                chosen: challenge.version,
                ours: hs.versions,
            });
        }
        let mac = hs
            .key
            .mac(
                CLIENT_LABEL,
                challenge.version,
                &challenge.server_nonce,
                &hs.nonce,
                &hs.client_id,
            )
            .finalize()
            .into_bytes()
            .into();
        Ok(ClientAwaitingVerdict {
            version: challenge.version,
            server_nonce: challenge.server_nonce,
            auth: Auth { mac },
            hs,
        })
    }
}

fn rejected(r: &AuthReject) -> HandshakeError {
    HandshakeError::Rejected {
        reason: r.reason,
        server_versions: r.server_versions,
    }
}

/// The client that answered the challenge, waiting for `AuthOk` or `AuthReject`.
#[derive(Debug)]
pub struct ClientAwaitingVerdict {
    version: u8,
    server_nonce: Nonce,
    auth: Auth,
    hs: ClientHandshake,
}

impl ClientAwaitingVerdict {
    /// The negotiated version: encode [`auth`](Self::auth) and everything after with it.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The `Auth` message to send.
    pub fn auth(&self) -> Auth {
        self.auth
    }

    /// Checks the server's proof (constant time). Success means both sides hold the key.
    pub fn on_message(self, msg: &Message<'_>) -> Result<Session, HandshakeError> {
        let ok = match msg {
            Message::AuthOk(ok) => ok,
            Message::AuthReject(r) => return Err(rejected(r)),
            other => {
                return Err(HandshakeError::Unexpected {
                    expected: "AuthOk",
                    got: other.frame_type(),
                })
            }
        };
        let hs = self.hs;
        hs.key
            .mac(
                SERVER_LABEL,
                self.version,
                &hs.nonce,
                &self.server_nonce,
                &hs.client_id,
            )
            .verify_slice(&ok.server_proof)
            .map_err(|_| HandshakeError::BadServerProof)?;
        Ok(Session {
            version: self.version,
            client_id: hs.client_id,
        })
    }
}

// ---------------------------------------------------------------- server side

/// The server waiting for the client's `Hello`.
#[derive(Debug)]
pub struct ServerHandshake {
    versions: VersionRange,
    nonce: Nonce,
    limits: Limits,
}

impl ServerHandshake {
    /// Pass [`Nonce::random`]: a repeated nonce would let a recorded `Auth` be replayed.
    pub fn new(nonce: Nonce, limits: Limits) -> Self {
        ServerHandshake {
            versions: VersionRange::SUPPORTED,
            nonce,
            limits,
        }
    }

    pub fn with_versions(mut self, versions: VersionRange) -> Self {
        self.versions = versions;
        self
    }

    /// Picks the version. On error, send [`HandshakeError::reject`] and close.
    pub fn on_message(self, msg: &Message<'_>) -> Result<ServerAwaitingAuth, HandshakeError> {
        let hello = match msg {
            Message::Hello(h) => h,
            other => {
                return Err(HandshakeError::Unexpected {
                    expected: "Hello",
                    got: other.frame_type(),
                })
            }
        };
        check_client_id(hello.client_id, &self.limits).map_err(HandshakeError::InvalidClientId)?;
        let version = self.versions.highest_common(&hello.versions).ok_or(
            HandshakeError::NoCommonVersion {
                ours: self.versions,
                theirs: hello.versions,
            },
        )?;
        Ok(ServerAwaitingAuth {
            version,
            client_id: hello.client_id.to_owned(),
            client_nonce: hello.client_nonce,
            server_nonce: self.nonce,
        })
    }
}

/// The server that sent its `Challenge`, waiting for `Auth`.
#[derive(Debug)]
pub struct ServerAwaitingAuth {
    version: u8,
    client_id: String,
    client_nonce: Nonce,
    server_nonce: Nonce,
}

impl ServerAwaitingAuth {
    /// The negotiated version: encode the challenge and everything after with it.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Whose key to look up (in the keyring the monitor distributed) before
    /// [`on_message`](Self::on_message).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The `Challenge` to send.
    pub fn challenge(&self) -> Challenge {
        Challenge {
            version: self.version,
            server_nonce: self.server_nonce,
        }
    }

    /// Verifies the client's MAC in constant time with `key` (`None`: unknown client, refused
    /// like a wrong key). On success returns the session and the `AuthOk` to send.
    pub fn on_message(
        self,
        msg: &Message<'_>,
        key: Option<&AuthKey>,
    ) -> Result<(Session, AuthOk), HandshakeError> {
        let auth = match msg {
            Message::Auth(a) => a,
            other => {
                return Err(HandshakeError::Unexpected {
                    expected: "Auth",
                    got: other.frame_type(),
                })
            }
        };
        let key = key.ok_or(HandshakeError::BadCredentials)?;
        key.mac(
            CLIENT_LABEL,
            self.version,
            &self.server_nonce,
            &self.client_nonce,
            &self.client_id,
        )
        .verify_slice(&auth.mac)
        .map_err(|_| HandshakeError::BadCredentials)?;
        let server_proof = key
            .mac(
                SERVER_LABEL,
                self.version,
                &self.client_nonce,
                &self.server_nonce,
                &self.client_id,
            )
            .finalize()
            .into_bytes()
            .into();
        Ok((
            Session {
                version: self.version,
                client_id: self.client_id,
            },
            AuthOk { server_proof },
        ))
    }
}
