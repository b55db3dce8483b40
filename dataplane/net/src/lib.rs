//! # carmine-net: per-shard TCP byte streams
//!
//! The messenger talks to one [`NetStack`] per shard: `listen` (explicit backlog), `accept`,
//! `connect` (non-blocking, ephemeral local port), `read`/`write` (non-blocking; a short write
//! is the backpressure signal), `close`, and per-connection / per-interface counters. Two
//! backends implement it:
//!
//! - [`SmolStack<D>`]: smoltcp 0.14 (pinned) over any `smoltcp::phy::Device` `D`: one
//!   `Interface` and one socket set per shard, a preallocated pool of TCP sockets (cap per
//!   interface), listeners keeping up to `listen_ahead` sockets in LISTEN within their
//!   `backlog` (every socket in the set costs every poll), reaping of closed and
//!   timed-out connections. ARP and ICMP echo are answered by the interface. Today `D` is
//!   our AF_PACKET device [`afpacket::AfPacket`] (CI topology: [`netns`]); the DPDK mbuf
//!   device plugs in with no change here (see "Device contract" below).
//! - [`KernelStack`]: kernel sockets (non-blocking, mio/epoll), for laptops and unit tests.
//!
//! A stack is driven by its shard, in one of two ways:
//! - poll style: a [`carmine_reactor::Poller`] whose `poll` calls [`NetStack::poll`] and then
//!   runs the application ([`testapp::ServerPoller`] is a complete one);
//! - async style: [`AsyncNet::new`] gives a handle for `!Send` tasks on the shard's executor
//!   (`accept`/`connect`/`read`/`write_all` futures) and a [`NetPoller`] to register.
//!
//! Either way `next_deadline`/`wait_fd` let an adaptive shard sleep until smoltcp's next timer
//! or the device fd.
//!
//! ## Device contract (for the DPDK mbuf device)
//! Implement `smoltcp::phy::Device` plus [`NetDevice`] (`flush`):
//! - `capabilities()`: `Medium::Ethernet`, `max_transmission_unit` = 1514 (the *frame* size
//!   for Ethernet), checksum capabilities as the port offloads (default: smoltcp computes and
//!   verifies all). Leave `max_burst_size` at None: smoltcp 0.14 clamps the receive window it
//!   advertises to `max_burst_size * MSS` (46 KB for a burst of 32), throttling every sender.
//! - `receive()`: pop the next mbuf from a per-shard rx array, refilled with
//!   `rte_eth_rx_burst` when empty; return `(RxToken, TxToken)`. `RxToken::consume` calls `f`
//!   on the mbuf's data slice (zero copy) and frees the mbuf afterwards.
//! - `transmit()` / the paired `TxToken`: return None when the shard's mempool or tx array is
//!   exhausted (smoltcp retries on the next poll). `TxToken::consume(len, f)` allocates an mbuf,
//!   appends `len` bytes, lets `f` write the frame in place, and pushes the mbuf onto the tx
//!   array (flushing it first when full).
//! - `flush()`: `rte_eth_tx_burst` the tx array; free what the NIC refused (count as drops).
//!   [`SmolStack::poll`] calls it after every `Interface::poll`.
//!
//! Then `SmolStack::new(device, SmolConfig { mac, ip, .. }, None)` on the shard thread, and
//! register a poller that calls `poll()` (see below). [`afpacket::AfPacket`] is a working
//! example of exactly this shape (recvmmsg batches in, sendmmsg batches out).
//!
//! ## Invariants
//! - A stack is owned by one shard thread (`!Send` is fine) and never blocks.
//! - smoltcp backend: sockets in the set = listening + live connections; after every close the
//!   socket returns to the pool, so `stats().sockets` returns to its baseline (the listening
//!   sockets).
//!   No allocation after `new` on the poll/read/write/accept/connect/close paths (the pool,
//!   socket-set `Vec`, conn table and listener queues are sized up front; the AF_PACKET
//!   device has preallocated batch slots) — checked by `tests/smoltcp_no_alloc.rs` with a
//!   counting global allocator.
//! - Handles are generation-checked: a stale `ConnId` gets `InvalidHandle`, never another
//!   connection.

pub mod afpacket;
mod api;
mod asyncio;
mod counted;
#[cfg(feature = "dpdk")]
pub mod dpdk;
mod error;
mod kernel;
pub mod netns;
mod smol;
pub mod testapp;

pub use api::{ConnId, ConnState, ConnStats, IfaceStats, ListenerId, NetDevice, NetStack};
pub use asyncio::{AsyncNet, NetPoller};
pub use error::NetError;
pub use kernel::{KernelConfig, KernelStack};
pub use smol::{SmolConfig, SmolStack};
/// Re-exported so callers name the same smoltcp version.
pub use smoltcp;
