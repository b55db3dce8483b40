//! A shard's outbound connections to its peers: the links a PG's primary sends replica ops on.
//!
//! One link per (peer OSD, peer shard): every PG this shard leads whose acting set holds that
//! OSD sends its replica ops on it, so the ops of one PG reach the replica in the order they
//! were sent (TCP keeps it) and the replica applies and answers them in that order. A link runs
//! on the shard's own TCP stack (smoltcp on its NIC queue, or kernel sockets) and speaks the
//! wire protocol as a client ([`ClientConn`], sans I/O), authenticated with this OSD's own key
//! (`osd.<id>`, issued by the monitor): a replica accepts replica ops only from that identity.
//!
//! A link is set up on first use ([`PeerLinks::ready`] starts it and answers `None` until it is
//! authenticated: the caller fails that op with `Again` and the client retries). A link that
//! fails, or is not authenticated within [`LINK_SETUP_TIMEOUT`], is closed and reported once
//! ([`PeerEvent::Lost`]): the writes waiting on it fail; the next use connects again, at most
//! every [`RECONNECT_PAUSE`].
//!
//! ## Invariants
//! - Nothing but the handshake is sent before the peer proved it holds our key
//!   ([`ClientConn`] refuses to encode ops before then).
//! - A link to an address a newer map no longer gives its OSD (it restarted elsewhere) is
//!   closed and reported lost ([`PeerLinks::prune`]).
//! - Reply bytes are decoded in place: no allocation per reply. A link's send buffer beyond
//!   [`LINK_HIGH_WATER`] makes `ready` answer `None` (backpressure onto the clients).

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use carmine_agent::SharedKeyring;
use carmine_net::{ConnId, ConnState, NetError, NetStack};
use carmine_wire::{ClientConn, ClientEvent, Limits, Nonce, RepError, RepOp};

/// Least time between two connection attempts to one peer shard.
pub const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// Bytes queued on a link above which it takes no new replica ops until they drain.
pub const LINK_HIGH_WATER: usize = 32 << 20;
/// Bytes of a replica op's frame besides its client id, object name and data (frame header,
/// fixed fields, lengths, checksum and MAC), with room to spare.
const REP_HEAD_BOUND: usize = 256;
/// A drained send buffer larger than this is shrunk back (a burst does not pin its peak).
const LINK_BUF_KEEP: usize = 1 << 20;

/// Longest a link may take from connect to authenticated before it is given up.
pub const LINK_SETUP_TIMEOUT: Duration = Duration::from_secs(5);

/// A link, as [`PeerLinks::ready`] hands it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkId(usize);

/// What the links produced in one [`PeerLinks::read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    /// Peer `osd` answered replica op `tid`.
    Reply {
        osd: u32,
        tid: u64,
        result: Result<(), RepError>,
    },
    /// The link to `osd` failed: nothing sent on it will be answered.
    Lost { osd: u32 },
}

/// Why a replica op was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the link is not open")]
    NotOpen,
    #[error("cannot encode the replica op: {0}")]
    Encode(#[from] carmine_wire::ConnError),
}

struct Link {
    osd: u32,
    addr: SocketAddrV4,
    conn: Option<ConnId>,
    cc: Option<ClientConn>,
    out: Vec<u8>,
    out_off: usize,
    /// When it may connect again after a failure.
    retry_at: Option<Instant>,
    /// When the current connection attempt started.
    started: Instant,
}

impl Link {
    fn open(&self) -> bool {
        self.conn.is_some() && self.cc.as_ref().is_some_and(ClientConn::is_open)
    }

    fn backlog(&self) -> usize {
        self.out.len() - self.out_off
    }
}

/// A shard's links to its peers.
pub struct PeerLinks {
    shard: usize,
    links: Vec<Link>,
    limits: Limits,
    /// Scratch for handshake frames.
    hs_buf: Vec<u8>,
}

impl PeerLinks {
    pub fn new(shard: usize, limits: Limits) -> PeerLinks {
        PeerLinks {
            shard,
            links: Vec::new(),
            limits,
            hs_buf: vec![0u8; 512],
        }
    }

    /// The link to `osd` at `addr`, if it is open and not backed up; otherwise starts it (when
    /// it is not already connecting and its reconnect pause is over) and answers `None`.
    pub fn ready(
        &mut self,
        net: &mut dyn NetStack,
        keyring: &SharedKeyring,
        osd: u32,
        addr: SocketAddrV4,
    ) -> Option<LinkId> {
        let i = match self
            .links
            .iter()
            .position(|l| l.osd == osd && l.addr == addr)
        {
            Some(i) => i,
            None => {
                self.links.push(Link {
                    osd,
                    addr,
                    conn: None,
                    cc: None,
                    out: Vec::with_capacity(64 << 10),
                    out_off: 0,
                    retry_at: None,
                    started: Instant::now(),
                });
                self.links.len() - 1
            }
        };
        let l = &mut self.links[i];
        if l.open() {
            return (l.backlog() <= LINK_HIGH_WATER).then_some(LinkId(i));
        }
        if l.conn.is_some() || l.retry_at.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        l.retry_at = Some(Instant::now() + RECONNECT_PAUSE);
        let Some((id, key)) = keyring.identity() else {
            tracing::warn!(
                shard = self.shard,
                "no OSD identity yet: cannot reach peers"
            );
            return None;
        };
        let nonce = match Nonce::random() {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "no randomness for a handshake nonce");
                return None;
            }
        };
        let cc = match ClientConn::new(id, key, nonce, self.limits) {
            Ok(cc) => cc,
            Err(e) => {
                tracing::error!(error = %e, "cannot start a peer handshake");
                return None;
            }
        };
        match net.connect(addr) {
            Ok(c) => {
                tracing::debug!(shard = self.shard, osd, %addr, "connecting to peer");
                l.conn = Some(c);
                l.cc = Some(cc);
                l.started = Instant::now();
                l.out.clear();
                l.out_off = 0;
            }
            Err(e) => tracing::warn!(shard = self.shard, osd, %addr, error = %e, "cannot connect"),
        }
        None
    }

    /// Encodes replica op `tid` onto link `l`.
    pub fn send(&mut self, l: LinkId, tid: u64, op: &RepOp<'_>) -> Result<(), SendError> {
        let link = self.links.get_mut(l.0).ok_or(SendError::NotOpen)?;
        let cc = link.cc.as_ref().ok_or(SendError::NotOpen)?;
        // The frame up to its data, then the data appended as it is: the data is copied once
        // and nothing is zero-filled first.
        let old = link.out.len();
        let head_bound = REP_HEAD_BOUND + op.reqid.client.len() + op.op.object().len();
        link.out.resize(old + head_bound, 0);
        match cc.encode_rep_op_head(tid, op, &mut link.out[old..]) {
            Ok((n, data)) => {
                link.out.truncate(old + n);
                link.out.extend_from_slice(data);
                Ok(())
            }
            Err(e) => {
                link.out.truncate(old);
                Err(e.into())
            }
        }
    }

    /// Whether any link has bytes to send.
    pub fn has_backlog(&self) -> bool {
        self.links.iter().any(|l| l.backlog() > 0)
    }

    /// Drives every link: connection progress, handshake, and replies; pushes what happened.
    pub fn read(&mut self, net: &mut dyn NetStack, events: &mut Vec<PeerEvent>) -> usize {
        let mut work = 0;
        for i in 0..self.links.len() {
            match self.read_link(net, i, events) {
                Ok(n) => work += n,
                Err(why) => {
                    let l = &self.links[i];
                    tracing::warn!(
                        shard = self.shard,
                        osd = l.osd,
                        addr = %l.addr,
                        reason = %why,
                        "peer link lost"
                    );
                    events.push(PeerEvent::Lost { osd: l.osd });
                    self.close_link(net, i);
                    work += 1;
                }
            }
        }
        work
    }

    fn read_link(
        &mut self,
        net: &mut dyn NetStack,
        i: usize,
        events: &mut Vec<PeerEvent>,
    ) -> Result<usize, LinkFailure> {
        let l = &mut self.links[i];
        let (Some(conn), Some(cc)) = (l.conn, l.cc.as_mut()) else {
            return Ok(0);
        };
        let mut work = 0;
        if !cc.is_open() && l.started.elapsed() > LINK_SETUP_TIMEOUT {
            return Err(LinkFailure::SetupTimeout);
        }
        match net.conn_state(conn)? {
            ConnState::Connecting => return Ok(0),
            ConnState::Closed => return Err(LinkFailure::Closed),
            ConnState::Open | ConnState::PeerClosed => {}
        }
        loop {
            let buf = cc.decoder().read_buf();
            if buf.is_empty() {
                break;
            }
            match net.read(conn, buf)? {
                0 => break,
                n => {
                    cc.decoder().advance(n);
                    work += 1;
                }
            }
        }
        loop {
            match cc.poll(&mut self.hs_buf)? {
                None => break,
                Some(ClientEvent::Send(n)) => l.out.extend_from_slice(&self.hs_buf[..n]),
                Some(ClientEvent::Authenticated) => {
                    tracing::info!(shard = self.shard, osd = l.osd, addr = %l.addr, "peer link up");
                }
                Some(ClientEvent::RepReply { tid, reply }) => {
                    events.push(PeerEvent::Reply {
                        osd: l.osd,
                        tid,
                        result: reply.result,
                    });
                    work += 1;
                }
                Some(ClientEvent::OpReply { .. }) => return Err(LinkFailure::Unexpected),
            }
        }
        Ok(work)
    }

    /// Writes what the links hold; a link whose write fails is reported lost.
    pub fn write(&mut self, net: &mut dyn NetStack, events: &mut Vec<PeerEvent>) -> usize {
        let mut written = 0;
        for i in 0..self.links.len() {
            let l = &mut self.links[i];
            let Some(conn) = l.conn else { continue };
            let mut failed = false;
            while l.out_off < l.out.len() {
                match net.write(conn, &l.out[l.out_off..]) {
                    Ok(0) => break,
                    Ok(n) => {
                        l.out_off += n;
                        written += n;
                    }
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if l.out_off == l.out.len() {
                l.out.clear();
                l.out_off = 0;
                if l.out.capacity() > LINK_BUF_KEEP {
                    l.out.shrink_to(64 << 10);
                }
            }
            if failed {
                events.push(PeerEvent::Lost { osd: l.osd });
                self.close_link(net, i);
            }
        }
        written
    }

    fn close_link(&mut self, net: &mut dyn NetStack, i: usize) {
        let l = &mut self.links[i];
        if let Some(c) = l.conn.take() {
            let _ = net.close(c);
        }
        l.cc = None;
        l.out.clear();
        l.out_off = 0;
    }

    /// Closes the links to addresses `current(osd, addr)` no longer gives (a newer map moved
    /// or removed the peer); those that were connected are reported lost.
    pub fn prune(
        &mut self,
        net: &mut dyn NetStack,
        current: impl Fn(u32, SocketAddrV4) -> bool,
        events: &mut Vec<PeerEvent>,
    ) {
        let mut i = 0;
        while i < self.links.len() {
            let l = &self.links[i];
            if current(l.osd, l.addr) {
                i += 1;
                continue;
            }
            if l.conn.is_some() {
                events.push(PeerEvent::Lost { osd: l.osd });
            }
            tracing::debug!(shard = self.shard, osd = l.osd, addr = %l.addr, "peer link dropped");
            self.close_link(net, i);
            self.links.swap_remove(i);
        }
    }

    /// Whether a link is still connecting or authenticating (the shard keeps polling: a
    /// handshake has no fd to wake it on every backend).
    pub fn setting_up(&self) -> bool {
        self.links
            .iter()
            .any(|l| l.conn.is_some() && !l.cc.as_ref().is_some_and(ClientConn::is_open))
    }
}

/// Why a link failed (logged; the writes on it fail with `Again`).
#[derive(Debug, thiserror::Error)]
enum LinkFailure {
    #[error("connection closed or refused")]
    Closed,
    #[error("{0}")]
    Net(#[from] NetError),
    #[error("{0}")]
    Conn(#[from] carmine_wire::ConnError),
    #[error("the peer sent an op reply on a replica link")]
    Unexpected,
    #[error("not authenticated within {LINK_SETUP_TIMEOUT:?}")]
    SetupTimeout,
}
