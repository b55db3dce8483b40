//! # carmine-client
//!
//! The Rust client library of Carmine: a [`Client`] follows the cluster map, computes
//! placement itself and talks to each OSD shard directly over `carmine-wire`.
//!
//! ## Layers
//!
//! - [`Connection`] (`conn`): one authenticated, pipelined TCP connection to one OSD shard.
//!   [`Connection::connect`] runs the `carmine-wire` handshake (version negotiation, HMAC
//!   challenge, server proof) before handing out a connection, so an unauthenticated
//!   connection cannot exist. [`Connection::call`] takes a fresh tid, registers a oneshot and
//!   queues the encoded frame (≤ 64 KiB of data) for the connection's writer task, which
//!   sends everything queued in one write: ops issued together (e.g. the workers woken by one
//!   batch of replies) share a syscall and TCP segments. Larger data is written straight from
//!   the caller's buffer. One reader task completes replies by tid in whatever order the OSD
//!   answers. A malformed frame, an unexpected message or EOF closes the connection: the
//!   reason goes to every pending and later call as [`ClientError::Closed`].
//! - [`route`]: pure functions from (map, pool, object or PG) to a [`Target`] (pool, PG,
//!   primary OSD, shard, address): `object_to_pg`, first of `pg_to_osds`, `pg_to_shard`, then
//!   the OSD's `public_addr` IP (a bare IP, or `ip:port` whose port is ignored) with
//!   `shard_ports[shard]`.
//! - `mon`: `MonCluster.GetMap` and `MonCluster.Subscribe` over a comma-separated list of
//!   monitors, following a follower's `carmine-leader` redirect; a background task applies the
//!   subscription's incrementals (a gap resubscribes from the epoch we have). Over TLS verified
//!   against the cluster CA ([`ClientConfig::with_ca`]) or in plain text
//!   ([`ClientConfig::plaintext`]), one of which the caller must choose
//!   (`carmine_proto::tls`). The OSD connections (the data path) are not TLS.
//! - [`Client`] (`cluster`): the map in a `watch` channel, one lazily opened connection per
//!   (OSD, shard), and the retry loop every op runs through.
//! - [`retry`]: that retry loop, written once over the [`retry::OpPath`] trait, so that a
//!   transport that is not tokio's (`carmine-client-shard`: a reactor shard with smoltcp over
//!   a DPDK port) routes and retries with the same code.
//! - [`Credentials`] (`keyfile`): the key file `carmine auth add --keyfile` writes
//!   (`id = "…"`, `key = "<64 hex>"`).
//!
//! ## Retry rules (one op)
//!
//! Every attempt routes with the newest map the client has and sends that map's epoch in the
//! request. Then, by outcome:
//!
//! | outcome | action |
//! |---|---|
//! | reply | done |
//! | `NotFound`, `Invalid`, `Io`, `NoSpace` | [`Error::Op`] to the caller, no retry |
//! | `StaleMap{osd_epoch}` newer than ours | wait up to 500 ms for the subscription to reach it, else `GetMap`; resend |
//! | `StaleMap{osd_epoch}` not newer | the OSD lags: back off, resend |
//! | `Again` | back off, resend |
//! | connection closed / I/O error / bad frame / connect failure | drop that connection, back off, resend on a new one |
//! | key refused by the OSD | back off and resend for the first 4 s of the op (a key just issued reaches the OSDs with their next keyring refresh), then [`Error::Auth`] |
//! | other handshake failure | [`Error::Auth`], no retry |
//! | request over a wire limit | [`Error::Encode`], never sent |
//! | no OSD up+in for the PG | back off (a new map may bring one), resend |
//!
//! Backoff starts at 2 ms and doubles up to 200 ms; a new map ends it early. Everything is
//! bounded by the op deadline (`op_timeout`, [`Error::Timeout`]) and the retry budget
//! ([`Error::RetriesExhausted`]). [`Client::stats`] counts retries, stale-map retries, map
//! fetches, reconnects.
//!
//! ## Invariants
//!
//! - The client's map never goes back in time: a map (subscription or `GetMap`) replaces it
//!   only when its epoch is higher.
//! - At most one connection per (OSD, shard) at a time; concurrent ops share one connect
//!   attempt; a failed connection is replaced, never reused. A connection whose OSD moved to
//!   another address is replaced on the next op.
//! - Resending is safe for write (same bytes, same offset), write_full, read, stat and list.
//!   A remove that executed but whose reply was lost answers `NotFound` when resent.
//! - No panics on input: every map, reply and key file either works or is an error.

mod cluster;
mod conn;
mod error;
pub mod handshake;
pub mod image;
pub mod keyfile;
mod mon;
mod reply;
pub mod retry;
pub mod route;

pub use cluster::{first_tid, Client, ClientConfig, ClientStats, Error, ListPage};
pub use conn::{drain_replies, ConnectOptions, Connection};
pub use error::ClientError;
pub use image::{Image, ImageError, ImageInfo, ImageSpec};
pub use keyfile::{Credentials, KeyFileError};
pub use mon::MonError;
pub use reply::Reply;
pub use route::{PoolRef, RouteError, Target};

pub use carmine_placement::ClusterMap;
pub use carmine_wire::{AuthKey, Epoch, Limits, Op, OpError, OpRequest, PgId, PoolId};
