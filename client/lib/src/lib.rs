//! # carmine-client
//!
//! The Rust client library of Carmine. This first part is the **connection layer**: one
//! authenticated, pipelined TCP connection to one OSD shard, speaking `carmine-wire`. Map
//! fetching, placement, per-shard connection pools, retries and the high-level object API
//! build on top of it (issue 6, item 3) and are not here yet.
//!
//! ## Design
//!
//! - [`Connection::connect`] opens a kernel TCP socket (`TCP_NODELAY`), runs the handshake
//!   state machines of `carmine-wire` (version negotiation, HMAC challenge, server proof) and
//!   only then hands out a connection: an unauthenticated connection cannot exist.
//! - Requests are **pipelined**: [`Connection::call`] takes a fresh tid, registers a oneshot
//!   for it, writes the frame and waits. One reader task decodes replies with a
//!   [`FrameDecoder`](carmine_wire::FrameDecoder) (one preallocated buffer) and completes the
//!   oneshot with the matching tid, in whatever order the OSD answers.
//! - Every call has a timeout; a timed-out tid is forgotten, and a late reply to it is dropped.
//! - A malformed frame, an unexpected message, or EOF closes the connection: the reason is
//!   logged once and handed to every pending and later call as [`ClientError::Closed`]. The
//!   caller (the future connection pool) reconnects.
//! - Op failures reported by the OSD come back as [`ClientError::Op`] with the wire's
//!   [`OpError`]; `StaleMap` carries the OSD's epoch for the map refresh.
//!
//! Dropping the [`Connection`] stops its reader task and closes the socket.

mod conn;
mod error;
mod reply;

pub use conn::{ConnectOptions, Connection};
pub use error::ClientError;
pub use reply::Reply;

pub use carmine_wire::{AuthKey, Epoch, Limits, Op, OpError, OpRequest, PgId, PoolId};
