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
//! ## Bounded peers
//! A peer gets a bounded share of the shard, whatever it sends or withholds ([`Bounds`]):
//! - **Slots.** At most `max_unauthenticated` connections may be handshaking at once; a new
//!   connection beyond that evicts the oldest handshaking one (reset), so idle or half-open
//!   connections, however many, never hold the slots of peers that authenticate. A table full
//!   of authenticated sessions refuses new connections.
//! - **Timers.** A connection that has not authenticated within `handshake_timeout` is reset;
//!   a client session with nothing in flight, no bytes in and no reply bytes taken by its
//!   peer for `idle_timeout` is closed (one that stopped reading its replies too). Both
//!   are checked by a sweep every [`SWEEP_EVERY`] (one pass over the table, no timer per
//!   connection); the shard wakes for the sweep through [`Messenger::next_deadline`].
//! - **Revocation.** When the keyring changes (its version, one atomic load per poll), every
//!   session whose key id is gone, or now has another key, is closed at that poll.
//! - **Per-connection backpressure.** Each client op is *charged* when decoded: its reply
//!   bound for a read (requested length, reserved before the store is asked), its data for a
//!   write, a small constant otherwise; the charge comes back with the op's answer (it travels
//!   in the op's [`ConnRef`]). A connection with `max_ops_per_conn` ops in flight, or with
//!   charges plus unsent reply bytes at `max_bytes_per_conn`, is not read (its bytes stay in
//!   the socket: TCP flow control pushes back on the client).
//! - **Shard budget.** Charges and unsent reply bytes of all connections stay within
//!   `shard_bytes`: an op that does not fit is held in its connection (one op, which then reads
//!   nothing more) until answers free room. Nothing fails because of it; the store, in
//!   particular bdevstore's DMA buffers, never sees more reads and write data than this. Large
//!   ops (over 64 KiB) leave the last eighth to small ones, and the connection that has waited
//!   longest for room gets it before any other large op. A connection holding under 256 KiB
//!   gets its small ops through even when the budget is full (connections that never read
//!   their replies can fill it; they must not stall everyone): at most `max_connections` x
//!   256 KiB above the budget.
//!   Replica ops from OSD sessions are not charged: a primary's own clients bound them, and a
//!   replica that stalled them would only fail its primary's writes.
//!
//! ## Invariants
//! - A slot is freed only when its socket is closed and none of its client ops is in flight
//!   (or [`DRAIN_LIMIT`] passed): charges are always given back to the connection that made
//!   them, and a client cannot escape its bounds by closing and reconnecting.
//! - Handshaking connections ≤ `max_unauthenticated`; ops of one connection are decoded in
//!   order (a held op blocks the ones behind it).
//! - Malformed input (decode, checksum, handshake or protocol error) closes that connection
//!   after the farewell frame the wire layer prepared; it is logged at `warn` and counted.
//!   Nothing here panics on input.
//! - Steady state allocates nothing per op: the table, the charges and the timers are fields.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::SocketAddrV4;

use carmine_agent::{Role, SharedKeyring};
use carmine_net::{ConnId, ListenerId, NetError, NetStack};
use carmine_wire::server::Keyring;
use carmine_wire::server::{ConnError, ServerConn, ServerEvent};
use carmine_wire::{AuthKey, Limits, Nonce, OpError, OpReply, RepOp, RepReply, ReplyBody, Version};

use crate::ops::{with_reply, Answer, Job, Target};
use crate::peers::{LinkId, PeerEvent, PeerLinks, SendError};
use crate::perf::ShardCounters;
use crate::pglog::ReqId;

/// Listen backlog per shard.
pub const BACKLOG: usize = 64;
/// How often the deadlines (handshake, idle, drain) are checked.
pub const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// Longest a closed connection's slot waits for its ops' answers before it is freed anyway
/// (an answer that never comes must not leak the slot).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// Most connections taken from the listener in one poll (the rest wait for the next one): the
/// cost of a connection flood per poll stays bounded.
const ACCEPTS_PER_POLL: usize = 64;
/// The charge of an op whose reply is small (written, stat, error): a reply frame's bound.
const SMALL_CHARGE: u32 = 128;
/// The charge of a list (a reply of up to `max_list_entries` names).
const LIST_CHARGE: u32 = 64 << 10;
/// Ops charged up to this are small: they may use the last [`RESERVE_SHARE`] of the shard's
/// budget, which large ones leave free, so a flood of large reads cannot make small ops
/// (a 4 KiB read, a stat, a write) wait for it.
const SMALL_OP: u32 = 64 << 10;
/// The share of the shard's budget (1/n) only small ops may use.
const RESERVE_SHARE: usize = 8;
/// A connection holding less than this always gets its small ops through, whatever the shard
/// budget says: connections that flood (or never read their replies) can fill the budget, and
/// must not stall the light ones. What this may add to the budget is bounded by the table:
/// `max_connections` x 256 KiB (16 MiB with the default 64).
const LIGHT: usize = 256 << 10;
/// Large ops admitted per poll, in bytes charged (beyond the first): a poll that encodes many
/// 4 MiB replies would delay every small op behind them, so large ones take turns over polls
/// (the connections are visited from a rotating start) and the work of one poll stays bounded.
const LARGE_PER_POLL: usize = 4 << 20;

/// The bounds one shard keeps on its peers (`[net]` in the config). Why these defaults:
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Connections still handshaking, at most. 16: a handshake takes two round trips, so even
    /// a burst of reconnecting clients fits, while a flood of silent connections holds at most
    /// a quarter of the default 64 slots (and is evicted oldest first).
    pub max_unauthenticated: usize,
    /// 3 s from accept to authenticated. The client library allows 5 s for connect plus
    /// handshake; a real client needs two round trips, a silent one holds a slot 3 s at most.
    pub handshake_timeout: Duration,
    /// 600 s without traffic or ops in flight closes a client session (None: never). The
    /// client library sends no keep-alives and keeps one connection per shard open for as long
    /// as it lives; it reconnects and retries on its next op, so closing a long-quiet session
    /// only costs a reconnect, while the slot of a vanished client comes back. OSD sessions
    /// (replica links) are exempt: a PG may stay idle for any time.
    pub idle_timeout: Option<Duration>,
    /// 128 ops in flight per connection: 4x the bench's 32 per client, far above what a
    /// pipelined client needs to fill a shard, small enough that one connection's parked ops
    /// and their `Inbound` records stay bounded.
    pub max_ops_per_conn: u32,
    /// 16 MiB per connection: four largest (4 MiB) reads or writes at once, which keeps a
    /// streaming client at full speed, while 4 connections may use at most the shard budget.
    pub max_bytes_per_conn: usize,
    /// 64 MiB per shard for read replies reserved, write data in flight and unsent replies.
    /// bdevstore takes a DMA buffer for every read piece in flight (`start_read`) and for each
    /// record it writes; a record whose buffer cannot be had fails the store until restart
    /// (`build_record`, "record buffer"). Reads and write data reach the store only within
    /// this budget, which stays below what bdevstore can take in DMA buffers (spdk.mem_mib,
    /// 512 MiB by default, shared by every shard, the malloc bdev, the mbufs and bdevstore's
    /// own 32 MiB buffer pool); and well above one connection's 16 MiB, so a flooding
    /// connection leaves room for the others.
    pub shard_bytes: usize,
}

impl Bounds {
    pub const DEFAULT: Bounds = Bounds {
        max_unauthenticated: 16,
        handshake_timeout: Duration::from_secs(3),
        idle_timeout: Some(Duration::from_secs(600)),
        max_ops_per_conn: 128,
        max_bytes_per_conn: 16 << 20,
        shard_bytes: 64 << 20,
    };
}

impl Default for Bounds {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Identifies one connection of one shard (slot + generation: a reused slot is another conn),
/// and carries what the op it travels with was charged (given back with its answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRef {
    pub shard: u16,
    slot: u32,
    gen: u32,
    /// Bytes this op holds of its connection's and its shard's budget (0: not charged).
    charge: u32,
}

impl ConnRef {
    #[cfg(test)]
    pub fn test(slot: u32) -> ConnRef {
        ConnRef {
            shard: 0,
            slot,
            gen: 1,
            charge: 0,
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
    /// Whether it authenticated, and the key it did so with (a keyring change that drops or
    /// replaces the key ends the session; `None` if it was gone already).
    authed: bool,
    key: Option<AuthKey>,
    /// The last client id seen in a replica op's request id: replica ops of one client share
    /// it instead of allocating one each.
    last_req_client: Arc<str>,
    out: Vec<u8>,
    out_off: usize,
    /// Close once `out` is written (a farewell frame, or the peer went away).
    closing: bool,
    /// Accepted at (the handshake deadline; the eviction order).
    since: Instant,
    /// Last bytes in or answer out (the idle timeout).
    active: Instant,
    /// Client ops decoded and not answered yet, and what they are charged.
    inflight: u32,
    charged: usize,
    /// A decoded op that did not fit the connection's or the shard's budget: it goes first
    /// when there is room, and nothing more is decoded before it.
    held: Option<Inbound>,
    /// Not read at the last poll because of its bounds (counted once per episode).
    stalled: bool,
    /// The socket was closed at (the slot waits for the answers of its ops in flight).
    closed_at: Option<Instant>,
}

impl Conn {
    fn backlog(&self) -> usize {
        self.out.len() - self.out_off
    }

    /// Bytes it holds of the shard's budget.
    fn held_bytes(&self) -> usize {
        self.charged + self.backlog()
    }

    fn authenticated(&self) -> bool {
        self.authed
    }

    fn holding(&self) -> Holding {
        Holding {
            ops: self.inflight,
            bytes: self.held_bytes(),
        }
    }
}

/// What a connection holds when one more of its ops asks to go on.
#[derive(Debug, Clone, Copy)]
struct Holding {
    ops: u32,
    bytes: usize,
}

/// Why a connection is not read at a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stall {
    /// Its own bounds (ops in flight, bytes).
    Conn,
    /// The shard's budget.
    Shard,
    /// This poll's share of large ops is taken: next poll.
    Turn,
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
    bounds: Bounds,
    /// Connections still handshaking (not closing).
    unauthenticated: usize,
    /// Bytes all connections hold (charges plus unsent replies), recounted at every read.
    used: usize,
    last_sweep: Instant,
    /// The keyring version the sessions were last checked against.
    keyring_version: u64,
    /// The connection (slot, generation) that has waited longest for the shard's budget: it
    /// gets the next room before any other connection takes more.
    waiter: Option<(u32, u32)>,
    /// The slot `read` starts from (rotates, so no connection is always first).
    start: usize,
    /// Reply bytes `deliver` wrote straight into the stack since the last `write`: `write`
    /// counts them with its own, so the shard pushes them out at once like any other.
    direct_written: usize,
}

impl Messenger {
    /// Listens on `port` (0: any) and returns the messenger and the port it listens on.
    pub fn listen(
        shard: usize,
        mut net: Box<dyn NetStack>,
        port: u16,
        max_connections: usize,
        bounds: Bounds,
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
        let keyring_version = keyring.version();
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
            bounds: Bounds {
                max_unauthenticated: bounds.max_unauthenticated.clamp(1, max_connections),
                ..bounds
            },
            unauthenticated: 0,
            used: 0,
            last_sweep: Instant::now(),
            keyring_version,
            waiter: None,
            start: 0,
            direct_written: 0,
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

    /// The next instant the messenger needs a poll when nothing else is pending: the stack's
    /// own timers, and the next sweep while any connection is open (its deadlines).
    pub fn net_deadline(&self) -> Option<Instant> {
        let net = self.net.next_deadline();
        if self.conns.iter().all(Option::is_none) {
            return net;
        }
        let sweep = self.last_sweep + SWEEP_EVERY;
        Some(net.map_or(sweep, |d| d.min(sweep)))
    }

    /// The fd an adaptive-idle shard may sleep on.
    pub fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        self.net.wait_fd()
    }

    /// Frames are waiting that the fd does not announce (steered from another shard).
    pub fn has_pending(&self) -> bool {
        self.net.has_pending()
    }

    /// Whether any connection or link has bytes the stack has not taken yet.
    pub fn has_backlog(&self) -> bool {
        self.conns
            .iter()
            .flatten()
            .any(|c| c.backlog() > 0 && c.closed_at.is_none())
            || self.peers.has_backlog()
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

    /// Accepts what the listener holds (at most [`ACCEPTS_PER_POLL`]): into a free slot, or
    /// into the slot of the oldest handshaking connection when `max_unauthenticated` are
    /// handshaking (or no slot is free). With neither, it is refused.
    pub fn accept(&mut self, counters: &ShardCounters) -> usize {
        let mut work = 0;
        while work < ACCEPTS_PER_POLL {
            let Ok(Some(id)) = self.net.accept(self.listener) else {
                break;
            };
            work += 1;
            let free = self.conns.iter().position(Option::is_none);
            let slot = match free {
                Some(slot) if self.unauthenticated < self.bounds.max_unauthenticated => slot,
                _ => match self.oldest_unauthenticated() {
                    Some(victim) => {
                        ShardCounters::add(&counters.unauth_evicted, 1);
                        tracing::debug!(
                            shard = self.shard,
                            "evicting the oldest handshaking connection"
                        );
                        self.drop_conn(victim, counters);
                        victim
                    }
                    None => {
                        ShardCounters::add(&counters.conns_refused, 1);
                        tracing::warn!(
                            shard = self.shard,
                            "connection limit reached: refusing one"
                        );
                        let _ = self.net.abort(id);
                        continue;
                    }
                },
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
            let now = carmine_reactor::clock::now();
            self.unauthenticated += 1;
            self.conns[slot] = Some(Conn {
                id,
                gen,
                sc: ServerConn::new(nonce, self.limits),
                peer: self.anonymous.clone(),
                role: None,
                authed: false,
                key: None,
                last_req_client: self.anonymous.clone(),
                out: Vec::with_capacity(64 << 10),
                out_off: 0,
                closing: false,
                since: now,
                active: now,
                inflight: 0,
                charged: 0,
                held: None,
                stalled: false,
                closed_at: None,
            });
        }
        work
    }

    /// The slot of the connection that has been handshaking longest (none closing).
    fn oldest_unauthenticated(&self) -> Option<usize> {
        self.conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
            .filter(|(_, c)| !c.authenticated() && !c.closing)
            .min_by_key(|(_, c)| c.since)
            .map(|(i, _)| i)
    }

    /// Resets connection `slot` and frees its slot now (a handshaking one: no ops in flight).
    fn drop_conn(&mut self, slot: usize, counters: &ShardCounters) {
        if let Some(c) = self.conns[slot].take() {
            if !c.authenticated() && !c.closing {
                self.unauthenticated -= 1;
            }
            if c.closed_at.is_none() {
                let _ = self.net.abort(c.id);
            }
            ShardCounters::add(&counters.conns_closed, 1);
        }
    }

    /// Marks connection `slot` closing (its queued bytes still go out, then it closes).
    fn start_closing(c: &mut Conn, unauthenticated: &mut usize) {
        if !c.closing && !c.authenticated() {
            *unauthenticated -= 1;
        }
        c.closing = true;
    }

    /// Deadlines and revocations, every [`SWEEP_EVERY`] (revocations at once when the keyring
    /// changed).
    fn sweep(&mut self, now: Instant, counters: &ShardCounters) {
        let version = self.keyring.version();
        let revoke = version != self.keyring_version;
        if !revoke && now.saturating_duration_since(self.last_sweep) < SWEEP_EVERY {
            return;
        }
        self.keyring_version = version;
        self.last_sweep = now;
        // The stack's own refusals (smoltcp: half-open handshakes taken back).
        ShardCounters::set(&counters.syn_recycled, self.net.stats().syn_recycled);
        let b = self.bounds;
        for slot in 0..self.conns.len() {
            let Some(c) = self.conns[slot].as_mut() else {
                continue;
            };
            if let Some(at) = c.closed_at {
                if now.saturating_duration_since(at) >= DRAIN_LIMIT {
                    tracing::warn!(
                        shard = self.shard,
                        ops = c.inflight,
                        "closed connection's ops not answered: freeing its slot"
                    );
                    self.conns[slot] = None;
                }
                continue;
            }
            if c.closing {
                continue;
            }
            if !c.authenticated() {
                if now.saturating_duration_since(c.since) >= b.handshake_timeout {
                    ShardCounters::add(&counters.handshake_timeouts, 1);
                    tracing::debug!(shard = self.shard, "handshake deadline passed: closing");
                    self.drop_conn(slot, counters);
                }
                continue;
            }
            if revoke && self.keyring.key(&c.peer) != c.key {
                ShardCounters::add(&counters.revoked_closed, 1);
                tracing::warn!(
                    shard = self.shard,
                    peer = %c.peer,
                    "key revoked or replaced: closing its session"
                );
                Self::start_closing(c, &mut self.unauthenticated);
                continue;
            }
            // Quiet: no op in flight, and neither bytes in nor replies taken out since
            // `active` (a client that stopped reading its replies is idle too).
            let quiet = c.inflight == 0 && c.held.is_none();
            let osd = matches!(c.role, Some(Role::Osd(_)));
            if let (Some(idle), true, false) = (b.idle_timeout, quiet, osd) {
                if now.saturating_duration_since(c.active) >= idle {
                    ShardCounters::add(&counters.idle_timeouts, 1);
                    tracing::debug!(shard = self.shard, peer = %c.peer, "idle session: closing");
                    Self::start_closing(c, &mut self.unauthenticated);
                }
            }
        }
    }

    /// Reads every connection and decodes its frames; ops are pushed onto `jobs` and replica
    /// ops onto `reps`, their write data copied into buffers by `data_buf` (the store's
    /// recycled buffers, [`carmine_objectstore::ObjectStore::data_buf_from`]). Connections at their bounds are not read (see the module docs).
    pub fn read(
        &mut self,
        counters: &ShardCounters,
        data_buf: &mut dyn FnMut(&[u8]) -> Vec<u8>,
        jobs: &mut Vec<Inbound>,
        reps: &mut Vec<RepInbound>,
    ) -> usize {
        let now = carmine_reactor::clock::now();
        self.sweep(now, counters);
        // Recounted from the connections (no drift between the two accounts).
        self.used = self.conns.iter().flatten().map(Conn::held_bytes).sum();
        if let Some((slot, gen)) = self.waiter {
            let waiting = match &self.conns[slot as usize] {
                Some(c) => c.gen == gen && c.held.is_some() && !c.closing,
                None => false,
            };
            if !waiting {
                self.waiter = None;
            }
        }
        let b = self.bounds;
        let mut work = 0;
        let n = self.conns.len();
        self.start = (self.start + 1) % n.max(1);
        let mut large = 0usize;
        for i in 0..n {
            let slot = (self.start + i) % n;
            let Some(c) = self.conns[slot].as_mut() else {
                continue;
            };
            if c.closing {
                continue;
            }
            let conn = ConnRef {
                shard: self.shard as u16,
                slot: slot as u32,
                gen: c.gen,
                charge: 0,
            };
            // The op held back at an earlier poll goes first (ops stay in order).
            if let Some(op) = c.held.take() {
                match admit(
                    c.holding(),
                    op.conn.charge,
                    &b,
                    self.used,
                    self.waiter,
                    conn,
                    &mut large,
                ) {
                    Ok(()) => {
                        c.inflight += 1;
                        c.charged += op.conn.charge as usize;
                        self.used += op.conn.charge as usize;
                        if self.waiter.is_some_and(|w| w == (conn.slot, conn.gen)) {
                            self.waiter = None;
                        }
                        jobs.push(op);
                        work += 1;
                    }
                    Err(stall) => {
                        c.held = Some(op);
                        stalled(c, stall, counters);
                        if stall == Stall::Shard && self.waiter.is_none() {
                            self.waiter = Some((conn.slot, conn.gen));
                        }
                        continue;
                    }
                }
            }
            if at_bounds(c, &b) {
                // Its bytes stay in the socket until answers drain.
                stalled(c, Stall::Conn, counters);
                continue;
            }
            c.stalled = false;
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
                        c.active = now;
                        ShardCounters::add(&counters.bytes_in, n as u64);
                        work += 1;
                    }
                    Err(e) => {
                        if !matches!(e, NetError::Eof) {
                            tracing::debug!(shard = self.shard, error = %e, "connection read");
                        }
                        Self::start_closing(c, &mut self.unauthenticated);
                        break;
                    }
                }
            }
            // Frames out of them, while the connection is within its bounds (the rest wait in
            // the decoder, then in the socket).
            while !at_bounds(c, &b) {
                match c.sc.poll(&*self.keyring, &mut self.hs_buf) {
                    Ok(None) => break,
                    Ok(Some(ServerEvent::Send(n))) => c.out.extend_from_slice(&self.hs_buf[..n]),
                    Ok(Some(ServerEvent::Authenticated(n))) => {
                        c.out.extend_from_slice(&self.hs_buf[..n]);
                        if let Some(s) = c.sc.session() {
                            c.peer = Arc::from(s.client_id.as_str());
                            // The key that just verified (a change since is caught by the
                            // next keyring check).
                            let (key, role) = self.keyring.key_and_role(&c.peer).unzip();
                            c.role = role;
                            c.key = key;
                            if !c.closing {
                                self.unauthenticated -= 1;
                            }
                            c.authed = true;
                        }
                    }
                    Ok(Some(ServerEvent::Op { tid, request })) => {
                        let (target, job) = Job::from_request(&request, data_buf);
                        let charge = charge_of(&job, &self.limits);
                        let op = Inbound {
                            conn: ConnRef { charge, ..conn },
                            client: c.peer.clone(),
                            tid,
                            target,
                            job,
                            // When the turn that read it began: the wait behind the
                            // turn's earlier work counts in its latency.
                            started: carmine_reactor::clock::now(),
                        };
                        work += 1;
                        match admit(
                            c.holding(),
                            charge,
                            &b,
                            self.used,
                            self.waiter,
                            conn,
                            &mut large,
                        ) {
                            Ok(()) => {
                                c.inflight += 1;
                                c.charged += charge as usize;
                                self.used += charge as usize;
                                jobs.push(op);
                            }
                            Err(stall) => {
                                c.held = Some(op);
                                stalled(c, stall, counters);
                                if stall == Stall::Shard && self.waiter.is_none() {
                                    self.waiter = Some((conn.slot, conn.gen));
                                }
                                break;
                            }
                        }
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
                            Self::start_closing(c, &mut self.unauthenticated);
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
                        Self::start_closing(c, &mut self.unauthenticated);
                        break;
                    }
                }
            }
        }
        ShardCounters::set(&counters.budget_used, self.used as u64);
        work
    }

    /// Encodes the answer to `tid` onto `conn`, if that connection is still there (an answer
    /// for a connection that has gone, or was replaced in its slot, is dropped). Its charge
    /// goes back either way.
    pub fn deliver(&mut self, conn: ConnRef, tid: u64, result: &Result<Answer, OpError>) {
        if let Ok(Answer::Read(data)) = result {
            return self.deliver_read(conn, tid, data);
        }
        let shard = self.shard;
        let Some(c) = settle(&mut self.conns, conn) else {
            return;
        };
        let (sc, out) = (&c.sc, &mut c.out);
        let bound = result.as_ref().map_or(128, Answer::encoded_bound);
        let old = out.len();
        out.resize(old + bound, 0);
        let encoded = match with_reply(result, |r| sc.encode_reply(tid, r, &mut out[old..])) {
            Ok(n) => {
                out.truncate(old + n);
                Ok(())
            }
            Err(e) => {
                out.truncate(old);
                Err(e)
            }
        };
        if let Err(e) = encoded {
            tracing::error!(shard, error = %e, "cannot encode a reply: closing");
            c.closing = true;
        }
    }

    /// [`Messenger::deliver`] of a successful read's `data`, borrowed from wherever it lies
    /// (a store buffer, or the store's own memory: `ObjectStore::read_in_place`).
    pub fn deliver_read(&mut self, conn: ConnRef, tid: u64, data: &[u8]) {
        let shard = self.shard;
        let Some(c) = settle(&mut self.conns, conn) else {
            return;
        };
        let (sc, out, id) = (&c.sc, &mut c.out, c.id);
        let direct_written = &mut self.direct_written;
        // The head, then the data from where it lies: no zero-filled room for it first
        // (4 MiB of memset per large read).
        let head = &mut self.hs_buf;
        let net = &mut *self.net;
        let reply = OpReply::ok(ReplyBody::Read { data });
        let encoded = sc.encode_reply_head(tid, &reply, head).map(|(n, data)| {
            // Nothing queued before it, a stack whose writes are copies (not system calls:
            // on kernel sockets the replies of a poll leave in one write) and room for all of
            // it: straight into the stack's send buffer, one copy of the data fewer than
            // through `out`. What the stack does not take is queued as usual.
            if out.is_empty()
                && net.writes_are_copies()
                && net.send_space(id).is_ok_and(|room| room >= n + data.len())
            {
                let took = net.write(id, &head[..n]).unwrap_or(0);
                *direct_written += took;
                if took < n {
                    out.extend_from_slice(&head[took..n]);
                    out.extend_from_slice(data);
                } else {
                    let took = net.write(id, data).unwrap_or(0);
                    *direct_written += took;
                    out.extend_from_slice(&data[took..]);
                }
                return;
            }
            out.reserve(n + data.len());
            out.extend_from_slice(&head[..n]);
            out.extend_from_slice(data);
        });
        if let Err(e) = encoded {
            tracing::error!(shard, error = %e, "cannot encode a reply: closing");
            c.closing = true;
        }
    }

    /// Encodes the answer to replica op `tid` onto `conn`, if that connection is still there.
    pub fn deliver_rep(&mut self, conn: ConnRef, tid: u64, reply: &RepReply) {
        let shard = self.shard;
        let Some(c) = settle(&mut self.conns, conn) else {
            return;
        };
        let old = c.out.len();
        c.out.resize(old + 64, 0);
        match c.sc.encode_rep_reply(tid, reply, &mut c.out[old..]) {
            Ok(n) => c.out.truncate(old + n),
            Err(e) => {
                c.out.truncate(old);
                tracing::error!(shard, error = %e, "cannot encode a replica reply: closing");
                c.closing = true;
            }
        }
    }

    /// Writes queued bytes (replies, and replica ops on the peer links); closes connections
    /// that are done, and frees their slots once their ops are answered; lost links come out
    /// in `events`. Returns bytes written, counting those `deliver` wrote straight into the
    /// stack since the last call.
    pub fn write(&mut self, counters: &ShardCounters, events: &mut Vec<PeerEvent>) -> usize {
        let mut written = self.peers.write(&mut *self.net, events) + self.direct_written;
        self.direct_written = 0;
        let now = carmine_reactor::clock::now();
        for slot in 0..self.conns.len() {
            let Some(c) = self.conns[slot].as_mut() else {
                continue;
            };
            if c.closed_at.is_some() {
                if c.inflight == 0 {
                    self.conns[slot] = None;
                }
                continue;
            }
            let mut failed = false;
            while c.out_off < c.out.len() {
                match self.net.write(c.id, &c.out[c.out_off..]) {
                    Ok(0) => break,
                    Ok(n) => {
                        c.out_off += n;
                        c.active = now;
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
                Self::start_closing(c, &mut self.unauthenticated);
                let _ = self.net.close(c.id);
                ShardCounters::add(&counters.conns_closed, 1);
                c.out.clear();
                c.out_off = 0;
                c.held = None;
                if c.inflight == 0 {
                    self.conns[slot] = None;
                } else {
                    // The slot waits for its ops' answers (their charges come back to it).
                    c.closed_at = Some(now);
                }
            }
        }
        written
    }
}

/// An answer came for an op of `conn`: its charge goes back to its connection. The connection,
/// if it is still there to take the reply.
fn settle(conns: &mut [Option<Conn>], conn: ConnRef) -> Option<&mut Conn> {
    let c = conns.get_mut(conn.slot as usize)?.as_mut()?;
    if c.gen != conn.gen {
        return None;
    }
    if conn.charge > 0 {
        c.inflight = c.inflight.saturating_sub(1);
        c.charged = c.charged.saturating_sub(conn.charge as usize);
    }
    (!c.closing).then_some(c)
}

/// What a client op is charged: its reply's bound for a read (reserved before the store reads
/// it), its data for a write, a small constant otherwise.
fn charge_of(job: &Job, limits: &Limits) -> u32 {
    match job {
        Job::Read { len, .. } => (*len).min(limits.max_io_size) + SMALL_CHARGE,
        Job::Write { data, .. } | Job::WriteFull { data, .. } => {
            u32::try_from(data.len()).map_or(u32::MAX, |n| n.saturating_add(SMALL_CHARGE))
        }
        Job::List { .. } => LIST_CHARGE,
        Job::Stat { .. } | Job::Remove { .. } => SMALL_CHARGE,
    }
}

/// Whether connection `c` is at its own bounds (ops in flight, bytes held): it is not read.
fn at_bounds(c: &Conn, b: &Bounds) -> bool {
    c.held.is_some() || c.inflight >= b.max_ops_per_conn || c.held_bytes() >= b.max_bytes_per_conn
}

/// Whether an op of `c` charged `charge` may go on now: within the connection's bounds (one op
/// always fits an empty connection) and the shard's budget: a large op leaves the reserve for
/// small ones, lets the longest waiter (`waiter`) go first and fits this poll's share
/// (`large`: bytes of large ops admitted so far); an idle shard takes any op.
fn admit(
    c: Holding,
    charge: u32,
    b: &Bounds,
    used: usize,
    waiter: Option<(u32, u32)>,
    me: ConnRef,
    large: &mut usize,
) -> Result<(), Stall> {
    let small = charge <= SMALL_OP;
    let charge = charge as usize;
    if c.ops >= b.max_ops_per_conn || (c.bytes > 0 && c.bytes + charge > b.max_bytes_per_conn) {
        return Err(Stall::Conn);
    }
    if small && c.bytes + charge <= LIGHT {
        return Ok(());
    }
    if !small && *large > 0 && *large + charge > LARGE_PER_POLL {
        return Err(Stall::Turn);
    }
    if used == 0 {
        if !small {
            *large += charge;
        }
        return Ok(());
    }
    let limit = if small {
        b.shard_bytes
    } else {
        b.shard_bytes - b.shard_bytes / RESERVE_SHARE
    };
    let other_waits = waiter.is_some_and(|w| w != (me.slot, me.gen));
    if used + charge > limit || (!small && other_waits) {
        return Err(Stall::Shard);
    }
    if !small {
        *large += charge;
    }
    Ok(())
}

/// Counts the start of a stall of `c` (once per episode; waiting for its turn is not one).
fn stalled(c: &mut Conn, why: Stall, counters: &ShardCounters) {
    let counter = match why {
        Stall::Conn => &counters.backpressure_stalls,
        Stall::Shard => &counters.budget_waits,
        Stall::Turn => return,
    };
    if !c.stalled {
        c.stalled = true;
        ShardCounters::add(counter, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: Holding = Holding { ops: 0, bytes: 0 };

    const B: Bounds = Bounds {
        max_unauthenticated: 4,
        handshake_timeout: Duration::from_secs(3),
        idle_timeout: None,
        max_ops_per_conn: 4,
        max_bytes_per_conn: 8 << 20,
        shard_bytes: 16 << 20,
    };
    const ME: ConnRef = ConnRef {
        shard: 0,
        slot: 1,
        gen: 1,
        charge: 0,
    };
    const BIG: u32 = (4 << 20) + SMALL_CHARGE;

    #[test]
    fn charges_follow_the_reply_or_the_data() {
        let l = Limits::DEFAULT;
        let read = |len| Job::Read {
            name: crate::ops::Name::from_slice(b"o"),
            off: 0,
            len,
        };
        assert_eq!(charge_of(&read(4096), &l), 4096 + SMALL_CHARGE);
        // A length beyond the largest reply is charged as the largest reply.
        assert_eq!(charge_of(&read(u32::MAX), &l), l.max_io_size + SMALL_CHARGE);
        let oid = carmine_objectstore::ObjectId::from_slice(b"o");
        let w = Job::WriteFull {
            oid,
            data: vec![0; 1000],
        };
        assert_eq!(charge_of(&w, &l), 1000 + SMALL_CHARGE);
    }

    #[test]
    fn a_connection_is_held_at_its_own_bounds() {
        let mut large = 0;
        // An empty connection takes any one op.
        assert_eq!(admit(EMPTY, BIG, &B, 0, None, ME, &mut large), Ok(()));
        let mut c = Holding {
            ops: 1,
            bytes: BIG as usize,
        };
        large = 0;
        let used = BIG as usize;
        assert_eq!(
            admit(c, BIG, &B, used, None, ME, &mut large),
            Err(Stall::Conn)
        );
        // Small ops still fit its bytes, until its op count is reached.
        assert_eq!(admit(c, 4096, &B, used, None, ME, &mut large), Ok(()));
        c.ops = B.max_ops_per_conn;
        assert_eq!(
            admit(c, 128, &B, used, None, ME, &mut large),
            Err(Stall::Conn)
        );
    }

    #[test]
    fn the_shard_budget_keeps_a_reserve_for_small_ops_and_serves_the_longest_waiter() {
        let c = EMPTY;
        let mut large = 0;
        // 13 MiB used: a large op would pass the 14 MiB left to large ops (7/8 of 16).
        let used = 13 << 20;
        assert_eq!(
            admit(c, BIG, &B, used, None, ME, &mut large),
            Err(Stall::Shard)
        );
        assert_eq!(admit(c, 4096, &B, used, None, ME, &mut large), Ok(()));
        // Another connection waits for room: a large op of this one does not jump it.
        let other = Some((7, 1));
        assert_eq!(
            admit(c, BIG, &B, 1 << 20, other, ME, &mut large),
            Err(Stall::Shard)
        );
        assert_eq!(
            admit(c, BIG, &B, 1 << 20, Some((1, 1)), ME, &mut large),
            Ok(())
        );
        // One poll's share of large ops is taken: the next waits for the next poll.
        assert_eq!(
            admit(c, BIG, &B, 1 << 20, None, ME, &mut large),
            Err(Stall::Turn)
        );
        // A light connection's small op goes through a full budget; a heavy one's waits.
        let full = 16 << 20;
        assert_eq!(admit(c, 4096, &B, full, None, ME, &mut large), Ok(()));
        let heavy = Holding {
            ops: 1,
            bytes: 1 << 20,
        };
        assert_eq!(
            admit(heavy, 4096, &B, full, None, ME, &mut large),
            Err(Stall::Shard)
        );
        // An idle shard takes any op.
        let mut fresh = 0;
        assert_eq!(admit(c, u32::MAX, &B, 0, other, ME, &mut fresh), Ok(()));
    }
}
