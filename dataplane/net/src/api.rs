//! The backend-independent byte-stream API the messenger uses.

use std::os::fd::RawFd;
use std::time::Instant;

use crate::NetError;

/// A listening port on one stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId(pub(crate) u32);

/// One connection on one stack. A handle is invalid after `close` (slot + generation, so a
/// stale handle can never reach a newer connection that reused the slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub(crate) slot: u32,
    pub(crate) gen: u32,
}

/// Per-connection counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub reads: u64,
    pub writes: u64,
    /// `write` calls that could not take the whole buffer (backpressure).
    pub write_blocked: u64,
}

/// Per-interface (per-stack) counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IfaceStats {
    /// Frames/bytes through the device (smoltcp backend; 0 for the kernel backend).
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Connections handed to `accept` callers.
    pub accepted: u64,
    /// Connections whose socket went back to the pool.
    pub reaped: u64,
    /// Connections that ended by reset or timeout rather than an orderly close.
    pub resets: u64,
    /// Times a listener could not get a socket because the cap was reached.
    pub socket_cap_hits: u64,
    /// Listen sockets taken back from a half-open handshake (SYN-RECEIVED too long, or the
    /// oldest one when no socket was left listening): what a SYN flood costs (smoltcp only).
    pub syn_recycled: u64,
    /// Sockets in use now: listening + connected (the smoltcp socket-set size).
    pub sockets: u64,
    /// Open connections now (accepted, not yet reaped).
    pub connections: u64,
}

/// The connection's state as the application sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// An outgoing connection still handshaking: reads and writes return `Ok(0)`.
    Connecting,
    /// Data can flow both ways.
    Open,
    /// The peer sent FIN: reads drain what is buffered then return `Eof`; writes still work.
    PeerClosed,
    /// Reset or timed out: only `close` is left to do.
    Closed,
}

/// A TCP stack driven by one shard. Every call is non-blocking.
///
/// Contract: `read` returns `Ok(0)` when no data is buffered (for a non-empty buffer),
/// `Err(Eof)` after the peer's FIN once all data was read, `Err(Closed)` after a reset or
/// timeout. `write` may take fewer bytes than offered, `Ok(0)` when the send buffer is full:
/// that is the backpressure signal; retry after `poll`. The application must `close` every
/// accepted connection (also after `Eof`/`Closed`) to give its socket back.
pub trait NetStack {
    /// Listens on `port` with at most `backlog` connections pending (handshaking or
    /// established but not yet accepted).
    fn listen(&mut self, port: u16, backlog: usize) -> Result<ListenerId, NetError>;
    /// The port a listener is bound to (useful after `listen(0, ..)` on the kernel backend).
    fn local_port(&self, l: ListenerId) -> Result<u16, NetError>;
    /// Starts an outgoing connection (non-blocking: the handle is `Connecting` until the
    /// handshake completes, `Closed` if it is refused or times out).
    fn connect(&mut self, remote: std::net::SocketAddrV4) -> Result<ConnId, NetError>;
    /// Takes one established connection from the listener's queue.
    fn accept(&mut self, l: ListenerId) -> Result<Option<ConnId>, NetError>;
    /// Copies buffered received bytes into `buf`.
    fn read(&mut self, c: ConnId, buf: &mut [u8]) -> Result<usize, NetError>;
    /// Queues bytes for sending; returns how many were taken.
    fn write(&mut self, c: ConnId, buf: &[u8]) -> Result<usize, NetError>;
    /// Bytes `write` would take right now (an estimate for the kernel backend).
    fn send_space(&self, c: ConnId) -> Result<usize, NetError>;
    /// Starts an orderly close; the handle is invalid afterwards.
    fn close(&mut self, c: ConnId) -> Result<(), NetError>;
    /// Drops the connection at once (a reset where the stack can send one, no lingering in
    /// the FIN handshake): for peers the application evicts. The handle is invalid afterwards.
    fn abort(&mut self, c: ConnId) -> Result<(), NetError> {
        self.close(c)
    }
    fn conn_state(&self, c: ConnId) -> Result<ConnState, NetError>;
    fn conn_stats(&self, c: ConnId) -> Result<ConnStats, NetError>;
    fn stats(&self) -> IfaceStats;
    /// Moves packets/events, accepts, reaps. Returns the work done (0 = idle).
    fn poll(&mut self) -> usize;
    /// When `poll` must run again at the latest (retransmit/keep-alive timers).
    fn next_deadline(&self) -> Option<Instant>;
    /// An fd that is readable when `poll` has work (for the adaptive shard's sleep).
    fn wait_fd(&self) -> Option<RawFd>;
    /// Whether `write` is a copy into the stack's own send buffer (smoltcp), not a system call
    /// (kernel sockets). A caller may then write each piece where it lies instead of gathering
    /// pieces into one buffer first, which on kernel sockets saves the system calls.
    fn writes_are_copies(&self) -> bool {
        false
    }
    /// Work is waiting that neither `wait_fd` nor `next_deadline` announces (the reactor's
    /// `Poller::has_pending`).
    fn has_pending(&self) -> bool {
        false
    }
}

/// A `smoltcp::phy::Device` that may hold transmitted frames back to send them in bursts.
///
/// The DPDK device implements `flush` as `rte_eth_tx_burst` of the mbufs its `TxToken`s
/// filled; [`crate::SmolStack::poll`] calls it after every `Interface::poll`.
pub trait NetDevice: smoltcp::phy::Device {
    /// Sends every frame still held; returns how many were handed to the hardware/kernel.
    fn flush(&mut self) -> usize {
        0
    }

    /// Whether segments addressed to local TCP port `port` are delivered to this device. A
    /// device that shares its NIC port with other shards (software steering) receives only the
    /// ports its shard owns: [`crate::SmolStack`]'s outgoing connections take their local port
    /// among those, or the peer's answers would go to another shard. Default: every port.
    fn owns_local_port(&self, _port: u16) -> bool {
        true
    }

    /// Frames are waiting that the device's wait fd does not announce (frames other shards
    /// passed to it): a sleeping shard checks this before it blocks.
    fn has_pending(&self) -> bool {
        false
    }
}

/// smoltcp's in-memory loopback sends at once: nothing to flush.
impl NetDevice for smoltcp::phy::Loopback {}
