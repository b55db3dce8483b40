//! A shard's messenger: its listener and client connections, from bytes to owned ops and from
//! answers back to bytes. It knows nothing of PGs or stores.
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

use carmine_agent::SharedKeyring;
use carmine_net::{ConnId, ListenerId, NetError, NetStack};
use carmine_wire::server::{ConnError, ServerConn, ServerEvent};
use carmine_wire::{Limits, Nonce, OpError};

use crate::ops::{with_reply, Answer, Job, Target};
use crate::perf::ShardCounters;

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

    /// Whether any connection has reply bytes the stack has not taken yet.
    pub fn has_backlog(&self) -> bool {
        self.conns.iter().flatten().any(|c| c.backlog() > 0)
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
                out: Vec::with_capacity(64 << 10),
                out_off: 0,
                closing: false,
            });
        }
        work
    }

    /// Reads every connection and decodes its frames; ops are pushed onto `jobs`, their write
    /// data copied into buffers from `data_buf` (the store's recycled buffers).
    pub fn read(
        &mut self,
        counters: &ShardCounters,
        data_buf: &mut dyn FnMut(usize) -> Vec<u8>,
        jobs: &mut Vec<Inbound>,
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
                    Ok(Some(ServerEvent::RepOp { .. })) => {
                        // No replica ops are served yet (replication is being built, issue
                        // 11): the connection is closed and counted, as it was before the
                        // frame type existed.
                        ShardCounters::add(&counters.protocol_errors, 1);
                        tracing::warn!(
                            shard = self.shard,
                            peer = %c.peer,
                            "replica op on a data connection: closing"
                        );
                        c.closing = true;
                        break;
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

    /// Writes queued reply bytes; closes connections that are done. Returns bytes written.
    pub fn write(&mut self, counters: &ShardCounters) -> usize {
        let mut written = 0;
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
