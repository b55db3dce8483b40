//! # carmine-client-shard: the client library on a reactor shard
//!
//! The tokio [`carmine_client::Client`] runs its connections on kernel sockets. This crate runs
//! the same ops on one `carmine-reactor` shard instead, over any `carmine-net` stack: smoltcp on
//! a DPDK port for a client with no kernel on its data path (the memif link of
//! `scripts/bench-osd`, [`memif`]), or kernel sockets in tests.
//!
//! - [`ShardClient`] (`client`): the [`carmine_client::retry::OpPath`] of a shard. Routing and
//!   retries are `carmine_client::retry::run_op`, one piece of code for both transports; the
//!   map comes from a tokio `Client` on the control-plane runtime.
//! - [`ShardConn`] (`conn`): one authenticated, pipelined connection, driven by a task on the
//!   shard's executor through `carmine_net::AsyncNet`; the handshake is
//!   `carmine_client::handshake`'s.
//! - [`memif`]: the EAL, the `net_memif` port (the slave end of the OSD's) and the smoltcp stack
//!   on it.
//!
//! ## Threading
//!
//! Everything but the map source is `!Send` and lives on the shard thread: create the client
//! in the shard's init (or a task) and share it between tasks with an `Rc`. The only
//! cross-thread traffic is the map (`watch` borrow) and the rare `GetMap`, spawned on the
//! control-plane runtime.

mod client;
mod conn;
pub mod memif;

pub use client::{ShardClient, SWEEP};
pub use conn::ShardConn;

use std::path::PathBuf;
use std::time::Duration;

/// Errors of setting up the shard transport.
#[derive(Debug, thiserror::Error)]
pub enum ShardClientError {
    #[error("DPDK: {0}")]
    Dpdk(carmine_dpdk::DpdkError),
    #[error("user-space stack: {0}")]
    Net(carmine_net::NetError),
    #[error("reactor: {0}")]
    Reactor(#[from] carmine_reactor::ReactorError),
    #[error("the memif link to {socket} did not come up within {waited:?} (is the OSD's memif port, the master, listening there?)")]
    LinkDown { socket: PathBuf, waited: Duration },
    #[error("{0}")]
    Config(String),
}
