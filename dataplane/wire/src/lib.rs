//! # carmine-wire: the Carmine data-path protocol
//!
//! One crate shared by the OSD messenger (a run-to-completion shard loop on a polling core) and
//! `carmine-client` (tokio). It knows nothing about sockets, tokio, DPDK or SPDK: it turns bytes
//! into typed messages and back. The exact byte layout is in `PROTOCOL.md` next to this crate's
//! `Cargo.toml`, and in the docs of [`frame`], [`handshake`] and [`op`].
//!
//! ## Layers
//!
//! - [`frame`]: a fixed 32-byte header (magic, version, type, flags, tid, payload length,
//!   payload CRC-32C, header CRC-32C) followed by the payload. [`decode_frame`] is a stateless
//!   decoder over a byte slice (`Frame` or `NeedMore`); [`FrameDecoder`] adds one preallocated
//!   receive buffer per connection; [`Encoder`] writes a frame into a caller buffer.
//! - [`message`]: [`Message`], one variant per frame type, parsed from a verified payload.
//! - [`handshake`]: version negotiation and HMAC-SHA256 challenge/response authentication, as
//!   typestate machines ([`ClientHandshake`] …, [`ServerHandshake`] …).
//! - [`op`]: object operations ([`OpRequest`], [`Op`]) and replies ([`OpReply`],
//!   [`ReplyBody`], [`OpError`]).
//! - [`rep`]: replica operations, primary OSD → replica OSD ([`RepOp`] with its [`Version`]
//!   and client [`ReqId`], [`RepMutation`]) and their answers ([`RepReply`], [`RepError`]).
//! - [`server`]: [`ServerConn`], the server side of one connection without I/O (decoder +
//!   handshake + op and replica-op dispatch) for the OSD messenger: bytes in, events and
//!   frames out.
//! - [`client`]: [`ClientConn`], its mirror for an OSD's outbound (replica) connections from
//!   a polling shard: handshake out, replies in, requests encoded only once authenticated.
//!
//! ## Invariants
//!
//! - **No panics on input.** Every byte string either decodes or yields a [`DecodeError`]
//!   whose `Display` is the reason to log before closing the connection. The fuzz target in
//!   `fuzz/` and the tests exercise this.
//! - **Bounded before buffered.** The header is checked (magic, CRC, version, type, length ≤
//!   [`Limits::max_payload`]) before the payload is waited for; every length inside a payload
//!   is checked against the bytes present and against [`Limits`] before use; list counts are
//!   bounded before they are iterated.
//! - **No allocation per frame.** Decoding borrows names and data from the receive buffer
//!   ([`Message`] has a lifetime); encoding writes into the caller's buffer. Only the handshake
//!   (once per connection) allocates, to keep the client id.
//! - **Canonical encoding.** Trailing bytes, unknown flags, non-zero reserved fields and
//!   unknown codes are errors, so a message has exactly one encoding, and the [`Encoder`]
//!   refuses to produce a frame the peer's decoder (with the same [`Limits`]) would refuse.
//! - **A decode error is fatal to the connection**: the stream has lost frame sync.
//!   [`FrameDecoder`] keeps returning the error.
//!
//! ## Use, server side (sketch)
//!
//! ```
//! use carmine_wire::*;
//! let limits = Limits::DEFAULT;
//! let mut dec = FrameDecoder::new(limits);
//! # let key = AuthKey::new([7; 32]);
//! # let client = ClientHandshake::new("client.1", key.clone(), Nonce([1; 32]), &limits).unwrap();
//! # let mut wire = vec![0u8; 256];
//! # let n = Encoder::new(VERSION_MIN, limits)
//! #     .encode(0, &Message::Hello(client.hello()), &mut wire).unwrap();
//! # let received = &wire[..n];
//! let mut hs = Some(ServerHandshake::new(Nonce([9; 32]), limits));
//! dec.feed(received); // or: recv into dec.read_buf(), then dec.advance(n)
//! while let Some(frame) = dec.next_frame().expect("a real messenger logs and closes") {
//!     let msg = frame.message(&limits).expect("a real messenger logs and closes");
//!     if let Some(h) = hs.take() {
//!         let awaiting = h.on_message(&msg).unwrap();
//!         let challenge = Message::Challenge(awaiting.challenge());
//!         // encode `challenge` with Encoder::new(awaiting.version(), limits) and send it …
//!         # let _ = challenge;
//!     }
//! }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_debug_implementations)]

pub mod client;
mod codec;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod limits;
pub mod message;
pub mod op;
pub mod rep;
pub mod server;

pub use client::{ClientConn, ClientEvent};
pub use error::{DecodeError, EncodeError, FrameError, MessageError};
pub use frame::{
    decode_frame, Decoded, Encoder, Frame, FrameDecoder, FrameHeader, FrameType, HEADER_LEN, MAGIC,
    VERSION_MAX, VERSION_MIN,
};
pub use handshake::{
    Auth, AuthKey, AuthOk, AuthReject, Challenge, ClientAwaitingChallenge, ClientAwaitingVerdict,
    ClientHandshake, HandshakeError, Hello, KeyError, Nonce, RejectReason, ServerAwaitingAuth,
    ServerHandshake, Session, VersionRange, SECRET_LEN,
};
pub use limits::Limits;
pub use message::Message;
pub use op::{
    Epoch, ListPage, NameIter, NameList, Op, OpError, OpKind, OpReply, OpRequest, PgId, PoolId,
    ReplyBody, ResultCode,
};
pub use rep::{RepError, RepMutation, RepOp, RepReply, RepResultCode, ReqId, Version};
pub use server::{ConnError, Keyring, ServerConn, ServerError, ServerEvent};
