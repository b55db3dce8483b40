//! A shard's messenger: its listener and connections, from bytes to owned ops and from
//! answers back to bytes; and its outbound links to peer OSDs ([`PeerLinks`]), on the same
//! TCP stack. It knows nothing of PGs or stores.
//!
//! An inbound connection carries client ops, and replica ops when its peer authenticated with
//! an OSD's key (`osd.<n>`, [`Role::Osd`]): the role is looked up once, at authentication, and
//! a replica op from any other identity closes the connection (counted as an auth failure), so
//! a client key can never write as a replica.
//!
//! Each connection sits in a slot of a fixed table (sized by `max_connections` at start: no
//! allocation per accept). A [`ConnRef`] names a connection as (shard, slot, generation): a slot
//! that is reused gets a new generation, so an answer for a connection that has gone is dropped
//! instead of reaching its successor.
//!
//! Per poll, the shard calls, in order: [`Messenger::accept`], [`Messenger::read`] (handshake,
//! frame checks, auth; decoded ops come out as [`Inbound`] jobs), then [`Messenger::deliver`]
//! for each answer and [`Messenger::write`] to push reply bytes out.
//!
//! ## Invariants
//! - Backpressure: a connection with more than [`OUT_HIGH_WATER`] reply bytes queued is not
//!   read until they drain, so a client that does not read its replies cannot grow the shard's
//!   memory without bound.
//! - Malformed input (decode, checksum, handshake or protocol error) closes that connection
//!   after the farewell frame the wire layer prepared; it is logged at `warn` and counted.
//!   Nothing here panics on input.

use std::sync::Arc;
use std::time::Instant;

use std::net::SocketAddrV4;

use carmine_agent::{Role, SharedKeyring};
use carmine_net::{ConnId, ListenerId, NetError, NetStack};
use carmine_wire::server::{ConnError, ServerConn, ServerEvent};
use carmine_wire::{Limits, Nonce, OpError, RepOp, RepReply, Version};

use crate::ops::{with_reply, Answer, Job, Target};
use crate::peers::{LinkId, PeerEvent, PeerLinks, SendError};
use crate::perf::ShardCounters;
use crate::pglog::ReqId;

/// Reply bytes queued on one connection above which it is not read until they drain.
pub const OUT_HIGH_WATER: usize = 16 << 20;
/// Listen backlog per shard.
pub const BACKLOG: usize = 64;

/// Identifies one connection of one shard (slot + generation: a reused slot is another conn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRef {
    pub shard: u16,
    slot: u32,
    gen: u32,
}

impl ConnRef {
    #[cfg(test)]
    pub fn test(slot: u32) -> ConnRef {
        ConnRef {
            shard: 0,
            slot,
            gen: 1,
        }
    }
}

/// A replica op from a peer OSD, owned, with where its answer goes.
#[derive(Debug)]
pub struct RepInbound {
    pub conn: ConnRef,
    /// The OSD that sent it (its key's role: the connection authenticated as `osd.<from>`).
    pub from: u32,
    pub tid: u64,
    pub pool: u64,
    pub pg: u32,
    /// The primary's map epoch and the PG's interval as the primary sees it.
    pub epoch: u64,
    pub interval_since: u64,
    /// The version the primary assigned.
    pub version: Version,
    /// The client request it applies.
    pub req: ReqId,
    /// The mutation (write, write_full or remove).
    pub job: Job,
    /// Recovery (a push: `job` is the whole object or its removal, at `version`), not a
    /// client's mutation.
    pub push: bool,
}

/// An op decoded from a connection, owned, with where its answer goes.
#[derive(Debug)]
pub struct Inbound {
    pub conn: ConnRef,
    /// The client's authenticated id: with `tid`, the request's identity (clients keep an
    /// op's tid over its retries, so the PG log can recognise one already applied).
    pub client: Arc<str>,
    pub tid: u64,
    pub target: Target,
    pub job: Job,
    pub started: Instant,
}

struct Conn {
    id: ConnId,
    gen: u32,
    sc: ServerConn,
    /// The authenticated client id (shared by every op of the connection: no copy per op).
    peer: Arc<str>,
    /// The peer's role, looked up once at authentication.
    role: Option<Role>,
    /// The last client id seen in a replica op's request id: replica ops of one client share
    /// it instead of allocating one each.
    last_req_client: Arc<str>,
    out: Vec<u8>,
    out_off: usize,
    /// Close once `out` is written (a farewell frame, or the peer went away).
    closing: bool,
}

impl Conn {
    fn backlog(&self) -> usize {
        self.out.len() - self.out_off
    }
}

/// Why the messenger could not start.
#[derive(Debug, thiserror::Error)]
#[error("shard {shard}: cannot listen on port {port}: {source}")]
pub struct ListenError {
    shard: usize,
    port: u16,
    source: NetError,
}

/// One shard's connections on its own TCP stack.
pub struct Messenger {
    shard: usize,
    net: Box<dyn NetStack>,
    listener: ListenerId,
    conns: Vec<Option<Conn>>,
    next_gen: u32,
    keyring: Arc<SharedKeyring>,
    limits: Limits,
    /// Scratch for handshake frames and farewells.
    hs_buf: Vec<u8>,
    /// The peer id of a connection before it authenticates (it sends no ops then).
    anonymous: Arc<str>,
    /// Outbound links to peer OSDs.
    peers: PeerLinks,
}

impl Messenger {
    /// Listens on `port` (0: any) and returns the messenger and the port it listens on.
    pub fn listen(
        shard: usize,
        mut net: Box<dyn NetStack>,
        port: u16,
        max_connections: usize,
        keyring: Arc<SharedKeyring>,
    ) -> Result<(Messenger, u16), ListenError> {
        let err = |source| ListenError {
            shard,
            port,
            source,
        };
        let listener = net.listen(port, BACKLOG).map_err(err)?;
        let bound = net.local_port(listener).map_err(err)?;
        let mut conns = Vec::with_capacity(max_connections);
        conns.resize_with(max_connections, || None);
        let m = Messenger {
            shard,
            net,
            listener,
            conns,
            next_gen: 1,
            keyring,
            limits: Limits::DEFAULT,
            hs_buf: vec![0u8; 256],
            anonymous: Arc::from(""),
            peers: PeerLinks::new(shard, Limits::DEFAULT),
        };
        Ok((m, bound))
    }

    /// The wire limits this messenger enforces (the op path clamps list pages to them).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Polls the TCP stack (frames in and out).
    pub fn poll_net(&mut self) -> usize {
        self.net.poll()
    }

    /// The stack's own next deadline (its timers), when nothing else is pending.
    pub fn net_deadline(&self) -> Option<Instant> {
        self.net.next_deadline()
    }

    /// The fd an adaptive-idle shard may sleep on.
    pub fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        self.net.wait_fd()
    }

    /// Whether any connection or link has bytes the stack has not taken yet.
    pub fn has_backlog(&self) -> bool {
        self.conns.iter().flatten().any(|c| c.backlog() > 0) || self.peers.has_backlog()
    }

    /// The link to peer `osd` listening at `addr`, when it is open (otherwise it is being set
    /// up: see [`PeerLinks::ready`]).
    pub fn peer_link(&mut self, osd: u32, addr: SocketAddrV4) -> Option<LinkId> {
        self.peers.ready(&mut *self.net, &self.keyring, osd, addr)
    }

    /// Sends replica op `tid` on link `l`.
    pub fn send_rep(&mut self, l: LinkId, tid: u64, op: &RepOp<'_>) -> Result<(), SendError> {
        self.peers.send(l, tid, op)
    }

    /// Drops the links to addresses `current(osd, addr)` no longer gives (after a new map).
    pub fn prune_peer_links(
        &mut self,
        current: impl Fn(u32, SocketAddrV4) -> bool,
        events: &mut Vec<PeerEvent>,
    ) {
        self.peers.prune(&mut *self.net, current, events);
    }

    /// Whether a peer link is still being set up.
    pub fn peers_setting_up(&self) -> bool {
        self.peers.setting_up()
    }

    /// Drives the peer links: replies and lost links come out in `events`.
    pub fn read_peers(&mut self, events: &mut Vec<PeerEvent>) -> usize {
        self.peers.read(&mut *self.net, events)
    }

    /// Accepts what the listener holds, into free slots (the rest are refused).
    pub fn accept(&mut self, counters: &ShardCounters) -> usize {
        let mut work = 0;
        while let Ok(Some(id)) = self.net.accept(self.listener) {
            work += 1;
            let Some(slot) = self.conns.iter().position(Option::is_none) else {
                tracing::warn!(shard = self.shard, "connection limit reached: refusing one");
                let _ = self.net.close(id);
                continue;
            };
            let nonce = match Nonce::random() {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "no randomness for a handshake nonce: refusing");
                    let _ = self.net.close(id);
                    continue;
                }
            };
            ShardCounters::add(&counters.conns_accepted, 1);
            let gen = self.next_gen;
            self.next_gen = self.next_gen.wrapping_add(1).max(1);
            self.conns[slot] = Some(Conn {
                id,
                gen,
                sc: ServerConn::new(nonce, self.limits),
                peer: self.anonymous.clone(),
                role: None,
                last_req_client: self.anonymous.clone(),
                out: Vec::with_capacity(64 << 10),
                out_off: 0,
                closing: false,
            });
        }
        work
    }

    /// Reads every connection and decodes its frames; ops are pushed onto `jobs` and replica
    /// ops onto `reps`, their write data copied into buffers from `data_buf` (the store's
    /// recycled buffers).
    pub fn read(
        &mut self,
        counters: &ShardCounters,
        data_buf: &mut dyn FnMut(usize) -> Vec<u8>,
        jobs: &mut Vec<Inbound>,
        reps: &mut Vec<RepInbound>,
    ) -> usize {
        let mut work = 0;
        for slot in 0..self.conns.len() {
            let Some(c) = self.conns[slot].as_mut() else {
                continue;
            };
            if c.closing || c.backlog() > OUT_HIGH_WATER {
                continue;
            }
            // Bytes in.
            loop {
                let buf = c.sc.decoder().read_buf();
                if buf.is_empty() {
                    break;
                }
                match self.net.read(c.id, buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        c.sc.decoder().advance(n);
                        ShardCounters::add(&counters.bytes_in, n as u64);
                        work += 1;
                    }
                    Err(e) => {
                        if !matches!(e, NetError::Eof) {
                            tracing::debug!(shard = self.shard, error = %e, "connection read");
                        }
                        c.closing = true;
                        break;
                    }
                }
            }
            // Frames out of them.
            let conn = ConnRef {
                shard: self.shard as u16,
                slot: slot as u32,
                gen: c.gen,
            };
            loop {
                match c.sc.poll(&*self.keyring, &mut self.hs_buf) {
                    Ok(None) => break,
                    Ok(Some(ServerEvent::Send(n))) => c.out.extend_from_slice(&self.hs_buf[..n]),
                    Ok(Some(ServerEvent::Authenticated(n))) => {
                        c.out.extend_from_slice(&self.hs_buf[..n]);
                        if let Some(s) = c.sc.session() {
                            c.peer = Arc::from(s.client_id.as_str());
                            c.role = self.keyring.role(&c.peer);
                        }
                    }
                    Ok(Some(ServerEvent::Op { tid, request })) => {
                        let (target, job) = Job::from_request(&request, data_buf);
                        jobs.push(Inbound {
                            conn,
                            client: c.peer.clone(),
                            tid,
                            target,
                            job,
                            started: Instant::now(),
                        });
                        work += 1;
                    }
                    Ok(Some(ServerEvent::RepOp { tid, op })) => {
                        let Some(Role::Osd(from)) = c.role else {
                            // Only an OSD's key may write as a replica.
                            ShardCounters::add(&counters.auth_failures, 1);
                            tracing::warn!(
                                shard = self.shard,
                                peer = %c.peer,
                                "replica op from a peer without an OSD key: closing"
                            );
                            c.closing = true;
                            break;
                        };
                        if *c.last_req_client != *op.reqid.client {
                            c.last_req_client = Arc::from(op.reqid.client);
                        }
                        reps.push(RepInbound {
                            conn,
                            from,
                            tid,
                            pool: op.pool.0,
                            pg: op.pg.0,
                            epoch: op.epoch.0,
                            interval_since: op.interval_since.0,
                            version: op.version,
                            req: ReqId {
                                client: c.last_req_client.clone(),
                                tid: op.reqid.tid,
                            },
                            job: Job::from_rep(&op.op, data_buf),
                            push: op.op.is_push(),
                        });
                        work += 1;
                    }
                    Err(e) => {
                        let handshake = matches!(e.error, ConnError::Handshake(_));
                        ShardCounters::add(
                            if handshake {
                                &counters.auth_failures
                            } else {
                                &counters.protocol_errors
                            },
                            1,
                        );
                        tracing::warn!(shard = self.shard, reason = %e.error, "closing connection");
                        c.out.extend_from_slice(&self.hs_buf[..e.farewell]);
                        c.closing = true;
                        break;
                    }
                }
            }
        }
        work
    }

    /// Encodes the answer to `tid` onto `conn`, if that connection is still there (an answer
    /// for a connection that has gone, or was replaced in its slot, is dropped).
    pub fn deliver(&mut self, conn: ConnRef, tid: u64, result: &Result<Answer, OpError>) {
        let Some(Some(c)) = self.conns.get_mut(conn.slot as usize) else {
            return;
        };
        if c.gen != conn.gen || c.closing {
            return;
        }
        let bound = result.as_ref().map_or(128, Answer::encoded_bound);
        let old = c.out.len();
        c.out.resize(old + bound, 0);
        let sc = &c.sc;
        let out = &mut c.out[old..];
        match with_reply(result, |r| sc.encode_reply(tid, r, out)) {
            Ok(n) => c.out.truncate(old + n),
            Err(e) => {
                c.out.truncate(old);
                tracing::error!(shard = self.shard, error = %e, "cannot encode a reply: closing");
                c.closing = true;
            }
        }
    }

    /// Encodes the answer to replica op `tid` onto `conn`, if that connection is still there.
    pub fn deliver_rep(&mut self, conn: ConnRef, tid: u64, reply: &RepReply) {
        let Some(Some(c)) = self.conns.get_mut(conn.slot as usize) else {
            return;
        };
        if c.gen != conn.gen || c.closing {
            return;
        }
        let old = c.out.len();
        c.out.resize(old + 64, 0);
        match c.sc.encode_rep_reply(tid, reply, &mut c.out[old..]) {
            Ok(n) => c.out.truncate(old + n),
            Err(e) => {
                c.out.truncate(old);
                tracing::error!(shard = self.shard, error = %e, "cannot encode a replica reply: closing");
                c.closing = true;
            }
        }
    }

    /// Writes queued bytes (replies, and replica ops on the peer links); closes connections
    /// that are done; lost links come out in `events`. Returns bytes written.
    pub fn write(&mut self, counters: &ShardCounters, events: &mut Vec<PeerEvent>) -> usize {
        let mut written = self.peers.write(&mut *self.net, events);
        for slot in 0..self.conns.len() {
            let Some(c) = self.conns[slot].as_mut() else {
                continue;
            };
            let mut failed = false;
            while c.out_off < c.out.len() {
                match self.net.write(c.id, &c.out[c.out_off..]) {
                    Ok(0) => break,
                    Ok(n) => {
                        c.out_off += n;
                        written += n;
                    }
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if c.out_off == c.out.len() {
                c.out.clear();
                c.out_off = 0;
            }
            if failed || (c.closing && c.out.is_empty()) {
                let _ = self.net.close(c.id);
                self.conns[slot] = None;
                ShardCounters::add(&counters.conns_closed, 1);
            }
        }
        written
    }
}
