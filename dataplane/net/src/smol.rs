//! The smoltcp backend: one `Interface` + `SocketSet` per shard over any `phy::Device`.
//!
//! Socket pool: `max_sockets` TCP sockets (with their rx/tx buffers, pre-faulted) are built in
//! `new` and kept in a free list *outside* the socket set. Listening adds `backlog` of them to
//! the set in LISTEN state; when one completes its handshake it becomes a connection and the
//! listener takes another from the pool (explicit backlog: listening + established-unaccepted
//! never exceeds it). Closing puts the socket back in the pool. The socket set thus holds only
//! live sockets (smoltcp scans it per packet) and steady state never allocates: `SocketSet`'s
//! `Vec` keeps its capacity when slots are removed and re-added.
//!
//! Reaping: a connection the application closed is returned to the pool once smoltcp reaches
//! CLOSED or TIME-WAIT (TIME-WAIT is held for at most `time_wait`, default 0), or after
//! `close_linger` at the latest. A peer that vanishes without FIN/RST is detected by the
//! keep-alive/timeout settings (`keep_alive`, `timeout`), which move the socket to CLOSED;
//! the application then sees `Err(Closed)` and closes it.
//!
//! Time: smoltcp's clock here is the shard's turn clock ([`carmine_reactor::clock`]) as
//! microseconds since the stack was built, not the wall clock smoltcp's own `Instant::now`
//! reads: on a shard, a poll reads no clock of its own.

use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant as StdInstant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::socket::Socket;
use smoltcp::time::{Duration as SmolDuration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

use crate::api::{ConnId, ConnState, ConnStats, IfaceStats, ListenerId, NetDevice, NetStack};
use crate::counted::{Counted, FrameCounters};
use crate::NetError;

/// Configuration of one smoltcp interface.
#[derive(Debug, Clone)]
pub struct SmolConfig {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    /// Receive/send buffer per TCP socket, bytes.
    pub rx_buffer: usize,
    pub tx_buffer: usize,
    /// Cap on TCP sockets (listening + connected) on this interface.
    pub max_sockets: usize,
    /// Keep-alive probe interval on connections (None: off).
    pub keep_alive: Option<Duration>,
    /// A connection whose sent data stays unacknowledged this long is closed (None: never).
    pub timeout: Option<Duration>,
    /// Longest a closed-by-us connection may take to finish its FIN handshake.
    pub close_linger: Duration,
    /// Longest TIME-WAIT is held before the socket is reused.
    pub time_wait: Duration,
    /// Longest a listen socket may sit in SYN-RECEIVED (the peer never completes the
    /// handshake) before it listens again.
    pub syn_timeout: Duration,
    /// A handshake younger than this is taken to be in progress (the peer's ACK is a round
    /// trip away): it is never taken back early to make room, only after `syn_timeout`.
    pub syn_min_age: Duration,
    /// Most sockets a listener keeps in LISTEN at once; each poll refills up to it, within
    /// the backlog. Every socket in the set costs every poll a visit in smoltcp's ingress and
    /// egress walks (a backlog of 64 pre-created LISTEN sockets was a fifth of a 4 KiB read's
    /// CPU), so a listener with a large backlog keeps only this many waiting for SYNs. More
    /// SYNs than this between two polls are answered with a reset (the client retries); the
    /// backlog still bounds the handshakes and connections waiting for `accept`.
    pub listen_ahead: usize,
    /// Disable Nagle (request/response traffic wants this).
    pub nodelay: bool,
    /// Send TCP timestamps (RFC 7323): lets the peer's kernel measure RTT and grow its
    /// receive window.
    pub timestamps: bool,
    pub random_seed: u64,
}

impl Default for SmolConfig {
    fn default() -> Self {
        Self {
            mac: [0x02, 0x00, 0x00, 0x00, 0x00, 0x01],
            ip: Ipv4Addr::new(10, 0, 0, 2),
            prefix_len: 24,
            gateway: None,
            rx_buffer: 256 * 1024,
            tx_buffer: 256 * 1024,
            max_sockets: 128,
            keep_alive: Some(Duration::from_secs(5)),
            timeout: Some(Duration::from_secs(15)),
            close_linger: Duration::from_secs(5),
            // A LAN handshake takes one round trip (well under a millisecond); 2 s leaves room
            // for a lost SYN-ACK's retransmission (1 s RTO) and frees a backlog place filled
            // by a SYN that never completes 7x faster than the connection timeout would.
            syn_timeout: Duration::from_secs(2),
            // Well above a LAN or metro round trip: a burst of real clients filling the
            // backlog keeps its handshakes (and is refused beyond it, as it should be).
            syn_min_age: Duration::from_millis(200),
            time_wait: Duration::ZERO,
            listen_ahead: 16,
            nodelay: true,
            timestamps: true,
            random_seed: 0x5eed,
        }
    }
}

struct Listener {
    port: u16,
    backlog: usize,
    /// Sockets in LISTEN / SYN-RECEIVED for this port, each with when it was first seen in
    /// SYN-RECEIVED (None: listening).
    pending: Vec<(SocketHandle, Option<Instant>)>,
    /// Established connections not yet accepted.
    ready: std::collections::VecDeque<ConnId>,
}

struct Conn {
    handle: SocketHandle,
    gen: u32,
    stats: ConnStats,
    /// When the application closed it (None: still the application's).
    closed_at: Option<Instant>,
    /// Entered TIME-WAIT at.
    time_wait_at: Option<Instant>,
    counted_reset: bool,
}

/// A smoltcp TCP/IP stack over device `D` (AF_PACKET now, a DPDK mbuf device later).
/// Frames `D` holds back are flushed at the end of every [`NetStack::poll`].
pub struct SmolStack<D: NetDevice> {
    device: Counted<D>,
    iface: Interface,
    sockets: SocketSet<'static>,
    free: Vec<tcp::Socket<'static>>,
    listeners: Vec<Listener>,
    conns: Vec<Option<Conn>>,
    conn_free: Vec<u32>,
    /// The occupied slots of `conns`, in no order: `reap` visits these, not every slot (a
    /// pass over `max_sockets` slots per poll was a sixth of the bench client's core).
    conn_live: Vec<u32>,
    next_gen: u32,
    cfg: SmolConfig,
    stats: IfaceStats,
    wait_fd: Option<RawFd>,
    deadline: Option<StdInstant>,
    /// smoltcp's time zero (see the module docs).
    epoch: StdInstant,
    /// Next ephemeral port to try for `connect`.
    next_port: u16,
}

/// Most frames one [`NetStack::poll`] takes from the device: a flood (SYNs, or anything else)
/// costs the shard a bounded slice per poll, and the connections get their turn in between.
/// Well above a DPDK rx burst (32), so normal traffic never notices.
pub const RX_PER_POLL: usize = 256;

/// Ephemeral port range for outgoing connections (IANA dynamic ports).
const EPHEMERAL: std::ops::RangeInclusive<u16> = 49152..=65535;

/// A zero-filled buffer whose pages are touched now, not on the data path.
fn prefaulted(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    for i in (0..len).step_by(4096) {
        // black_box keeps the write from being elided: the point is the page fault.
        v[i] = std::hint::black_box(0);
    }
    v
}

/// TCP timestamp clock: milliseconds since the first call in this process.
fn tsval() -> u32 {
    static START: std::sync::OnceLock<StdInstant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(StdInstant::now);
    carmine_reactor::clock::now()
        .saturating_duration_since(start)
        .as_millis() as u32
}

/// Spreads the first ephemeral port by the seed so shards/restarts do not collide at once.
fn cfg_seed_port(cfg: &SmolConfig) -> u16 {
    (cfg.random_seed % 16384) as u16
}

fn smol_dur(d: Duration) -> SmolDuration {
    SmolDuration::from_micros(d.as_micros().min(u64::MAX as u128) as u64)
}

impl<D: NetDevice> SmolStack<D> {
    /// Builds the interface and the socket pool. `wait_fd`: an fd readable when the device
    /// has frames (the AF_PACKET socket), or None (DPDK: the shard just polls).
    pub fn new(mut device: D, cfg: SmolConfig, wait_fd: Option<RawFd>) -> Result<Self, NetError> {
        if cfg.max_sockets == 0 || cfg.rx_buffer == 0 || cfg.tx_buffer == 0 {
            return Err(NetError::Config("max_sockets and buffer sizes must be > 0"));
        }
        let mac = EthernetAddress(cfg.mac);
        if !mac.is_unicast() {
            return Err(NetError::Config("MAC address must be unicast"));
        }
        let mut icfg = Config::new(HardwareAddress::Ethernet(mac));
        icfg.random_seed = cfg.random_seed;
        let epoch = carmine_reactor::clock::now();
        let mut iface = Interface::new(icfg, &mut device, Instant::ZERO);
        let ip = cfg.ip;
        let mut addr_err = false;
        iface.update_ip_addrs(|addrs| {
            addr_err = addrs.push(IpCidr::new(ip.into(), cfg.prefix_len)).is_err();
        });
        if addr_err {
            return Err(NetError::Config("too many interface addresses"));
        }
        if let Some(gw) = cfg.gateway {
            iface
                .routes_mut()
                .add_default_ipv4_route(gw)
                .map_err(|_| NetError::Config("route table full"))?;
        }
        let free = (0..cfg.max_sockets)
            .map(|_| {
                let rx = tcp::SocketBuffer::new(prefaulted(cfg.rx_buffer));
                let tx = tcp::SocketBuffer::new(prefaulted(cfg.tx_buffer));
                let mut s = tcp::Socket::new(rx, tx);
                s.set_nagle_enabled(!cfg.nodelay);
                s.set_keep_alive(cfg.keep_alive.map(smol_dur));
                s.set_timeout(cfg.timeout.map(smol_dur));
                if cfg.timestamps {
                    s.set_tsval_generator(Some(tsval));
                }
                s
            })
            .collect();
        let mut conns = Vec::with_capacity(cfg.max_sockets);
        conns.resize_with(cfg.max_sockets, || None);
        let next_port = *EPHEMERAL.start() + cfg_seed_port(&cfg);
        Ok(Self {
            device: Counted {
                inner: device,
                counters: FrameCounters::default(),
                rx_left: RX_PER_POLL,
            },
            iface,
            sockets: SocketSet::new(Vec::with_capacity(cfg.max_sockets)),
            free,
            listeners: Vec::new(),
            conn_free: (0..cfg.max_sockets as u32).rev().collect(),
            conn_live: Vec::with_capacity(cfg.max_sockets),
            conns,
            next_gen: 1,
            cfg,
            stats: IfaceStats::default(),
            wait_fd,
            deadline: None,
            epoch,
            next_port,
        })
    }

    /// smoltcp's time: the turn clock since `epoch`.
    fn now(&self) -> Instant {
        let since = carmine_reactor::clock::now().saturating_duration_since(self.epoch);
        Instant::from_micros(since.as_micros().min(i64::MAX as u128) as i64)
    }

    /// The underlying device (e.g. to read its own counters).
    pub fn device(&self) -> &D {
        &self.device.inner
    }

    fn conn(&self, c: ConnId) -> Result<&Conn, NetError> {
        match self.conns.get(c.slot as usize) {
            Some(Some(k)) if k.gen == c.gen && k.closed_at.is_none() => Ok(k),
            _ => Err(NetError::InvalidHandle),
        }
    }

    fn conn_mut(&mut self, c: ConnId) -> Result<&mut Conn, NetError> {
        match self.conns.get_mut(c.slot as usize) {
            Some(Some(k)) if k.gen == c.gen && k.closed_at.is_none() => Ok(k),
            _ => Err(NetError::InvalidHandle),
        }
    }

    /// Takes a socket from the pool and makes it listen on `port`.
    fn listening_socket(&mut self, port: u16) -> Option<SocketHandle> {
        let mut s = self.free.pop()?;
        if s.listen(port).is_err() {
            // Only fails for port 0 or an open socket; pool sockets are closed.
            self.free.push(s);
            return None;
        }
        Some(self.sockets.add(s))
    }

    /// Removes a socket from the set and returns it to the pool.
    fn release(&mut self, h: SocketHandle) {
        #[allow(irrefutable_let_patterns)]
        if let Socket::Tcp(mut s) = self.sockets.remove(h) {
            s.abort();
            self.free.push(s);
        }
    }

    fn new_conn(&mut self, handle: SocketHandle) -> Option<ConnId> {
        let slot = self.conn_free.pop()?;
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        self.conns[slot as usize] = Some(Conn {
            handle,
            gen,
            stats: ConnStats::default(),
            closed_at: None,
            time_wait_at: None,
            counted_reset: false,
        });
        self.conn_live.push(slot);
        Some(ConnId { slot, gen })
    }

    /// Makes listen socket `h` listen on `port` again (dropping a half-open handshake); its
    /// new handle. The socket leaves the set and comes back: smoltcp keeps per-handle egress
    /// state, and a handle whose SYN-ACK waited for a neighbor that never answered (a spoofed
    /// source) stays silenced for a second, which would delay the next, real, peer's SYN-ACK.
    /// (The set's storage keeps its slots: no allocation.)
    fn relisten(&mut self, h: SocketHandle, port: u16) -> SocketHandle {
        // Irrefutable with this crate's smoltcp features: TCP is the only socket type.
        let Socket::Tcp(mut s) = self.sockets.remove(h);
        s.abort();
        // Only fails for port 0 (refused by `listen`) or an open socket (aborted above).
        let _ = s.listen(port);
        self.sockets.add(s)
    }

    /// Promotes handshaken sockets to connections, takes back listen sockets stuck in
    /// SYN-RECEIVED, and tops listeners up to their backlog.
    ///
    /// SYN flood: a SYN that never completes holds a listen socket in SYN-RECEIVED; with the
    /// whole backlog held, every new client would be refused. So a socket is taken back after
    /// `syn_timeout`, and when fewer than an eighth of the backlog listen, the oldest half-open
    /// ones older than `syn_min_age` are taken back at once: a real client's handshake, one
    /// round trip, completes long before the flood can push it out, and a burst of real
    /// clients still meets the backlog as it is. Cost: a pass over the backlog per poll, plus
    /// one per socket taken back (at most backlog/8).
    fn maintain_listeners(&mut self, now: Instant) -> usize {
        let mut work = 0;
        let syn_timeout = smol_dur(self.cfg.syn_timeout);
        let syn_min_age = smol_dur(self.cfg.syn_min_age);
        for li in 0..self.listeners.len() {
            let port = self.listeners[li].port;
            let mut i = 0;
            let mut listening = 0;
            while i < self.listeners[li].pending.len() {
                let (h, syn_at) = self.listeners[li].pending[i];
                let state = self.sockets.get::<tcp::Socket>(h).state();
                match state {
                    tcp::State::Listen => {
                        self.listeners[li].pending[i].1 = None;
                        listening += 1;
                        i += 1;
                    }
                    tcp::State::SynReceived => {
                        let since = syn_at.unwrap_or(now);
                        if now - since >= syn_timeout {
                            let h = self.relisten(h, port);
                            self.stats.syn_recycled += 1;
                            self.listeners[li].pending[i] = (h, None);
                            listening += 1;
                            work += 1;
                        } else {
                            self.listeners[li].pending[i].1 = Some(since);
                        }
                        i += 1;
                    }
                    tcp::State::Closed => {
                        // Reset or timed out during the handshake: listen again.
                        let h = self.relisten(h, port);
                        self.listeners[li].pending[i] = (h, None);
                        listening += 1;
                        i += 1;
                    }
                    _ => {
                        self.listeners[li].pending.swap_remove(i);
                        match self.new_conn(h) {
                            Some(c) => self.listeners[li].ready.push_back(c),
                            None => self.release(h),
                        }
                        work += 1;
                    }
                }
            }
            let l = &self.listeners[li];
            let room = l.pending.len() + l.ready.len() < l.backlog && !self.free.is_empty();
            // Fewer than an eighth of the backlog listening, and no socket to add: the oldest
            // half-open ones past `syn_min_age` listen again (a real SYN then finds one; a real
            // handshake completes within its round trip, long before it is that old).
            let min_listening = (l.backlog / 8).max(1);
            if !room && listening < min_listening {
                let old_enough = now - syn_min_age;
                let wanted = min_listening - listening;
                for _ in 0..wanted {
                    let l = &self.listeners[li];
                    let Some(i) = (0..l.pending.len())
                        .filter(|&i| l.pending[i].1.is_some_and(|t| t <= old_enough))
                        .min_by_key(|&i| l.pending[i].1)
                    else {
                        break;
                    };
                    let h = self.relisten(l.pending[i].0, port);
                    self.listeners[li].pending[i] = (h, None);
                    self.stats.syn_recycled += 1;
                    listening += 1;
                    work += 1;
                }
            }
            loop {
                let l = &self.listeners[li];
                if l.pending.len() + l.ready.len() >= l.backlog
                    || listening >= self.cfg.listen_ahead
                {
                    break;
                }
                let port = l.port;
                match self.listening_socket(port) {
                    Some(h) => {
                        self.listeners[li].pending.push((h, None));
                        listening += 1;
                    }
                    None => {
                        self.stats.socket_cap_hits += 1;
                        break;
                    }
                }
            }
        }
        work
    }

    /// Returns the sockets of closed connections to the pool.
    fn reap(&mut self, now: Instant) -> usize {
        let mut work = 0;
        let mut i = 0;
        while i < self.conn_live.len() {
            let slot = self.conn_live[i] as usize;
            let Some(k) = self.conns[slot].as_mut() else {
                // Unreachable: a slot leaves `conn_live` when it is emptied (below).
                self.conn_live.swap_remove(i);
                continue;
            };
            let state = self.sockets.get::<tcp::Socket>(k.handle).state();
            if state == tcp::State::Closed && !k.counted_reset && k.closed_at.is_none() {
                k.counted_reset = true;
                self.stats.resets += 1;
            }
            if state == tcp::State::TimeWait && k.time_wait_at.is_none() {
                k.time_wait_at = Some(now);
            }
            let Some(closed_at) = k.closed_at else {
                i += 1;
                continue;
            };
            let done = match state {
                tcp::State::Closed => true,
                tcp::State::TimeWait => k
                    .time_wait_at
                    .is_some_and(|t| now - t >= smol_dur(self.cfg.time_wait)),
                _ => now - closed_at >= smol_dur(self.cfg.close_linger),
            };
            if done {
                let h = k.handle;
                self.conns[slot] = None;
                self.conn_live.swap_remove(i);
                self.conn_free.push(slot as u32);
                self.release(h);
                self.stats.reaped += 1;
                work += 1;
            } else {
                i += 1;
            }
        }
        work
    }
}

impl<D: NetDevice> NetStack for SmolStack<D> {
    fn listen(&mut self, port: u16, backlog: usize) -> Result<ListenerId, NetError> {
        if port == 0 || backlog == 0 {
            return Err(NetError::Config("port and backlog must be > 0"));
        }
        if self.listeners.iter().any(|l| l.port == port) {
            return Err(NetError::AddrInUse(port));
        }
        if self.free.len() < backlog {
            return Err(NetError::SocketCap(self.cfg.max_sockets));
        }
        self.listeners.push(Listener {
            port,
            backlog,
            pending: Vec::with_capacity(backlog),
            ready: std::collections::VecDeque::with_capacity(backlog),
        });
        self.maintain_listeners(self.now());
        Ok(ListenerId(self.listeners.len() as u32 - 1))
    }

    fn local_port(&self, l: ListenerId) -> Result<u16, NetError> {
        self.listeners
            .get(l.0 as usize)
            .map(|l| l.port)
            .ok_or(NetError::InvalidHandle)
    }

    fn connect(&mut self, remote: std::net::SocketAddrV4) -> Result<ConnId, NetError> {
        if self.conn_free.is_empty() || self.free.is_empty() {
            self.stats.socket_cap_hits += 1;
            return Err(NetError::SocketCap(self.cfg.max_sockets));
        }
        // A local port the device receives (a shard sharing its NIC port gets only its own)
        // that no live socket uses (listeners included).
        let span = (*EPHEMERAL.end() - *EPHEMERAL.start()) as u32 + 1;
        let mut port = None;
        for _ in 0..span {
            let p = self.next_port;
            self.next_port = if p == *EPHEMERAL.end() {
                *EPHEMERAL.start()
            } else {
                p + 1
            };
            if !self.device.owns_local_port(p) {
                continue;
            }
            let used = self.sockets.iter().any(|(_, s)| {
                #[allow(irrefutable_let_patterns)]
                let Socket::Tcp(t) = s
                else {
                    return false;
                };
                t.listen_endpoint().port == p || t.local_endpoint().is_some_and(|e| e.port == p)
            });
            if !used {
                port = Some(p);
                break;
            }
        }
        let port = port.ok_or(NetError::Config("no free ephemeral port"))?;
        let mut sock = self
            .free
            .pop()
            .ok_or(NetError::SocketCap(self.cfg.max_sockets))?;
        let ip = smoltcp::wire::IpAddress::Ipv4(*remote.ip());
        if let Err(e) = sock.connect(self.iface.context(), (ip, remote.port()), port) {
            tracing::debug!(error = %e, "smoltcp connect refused");
            self.free.push(sock);
            return Err(NetError::Config("cannot connect to that address"));
        }
        let h = self.sockets.add(sock);
        match self.new_conn(h) {
            Some(c) => Ok(c),
            None => {
                self.release(h);
                Err(NetError::SocketCap(self.cfg.max_sockets))
            }
        }
    }

    fn accept(&mut self, l: ListenerId) -> Result<Option<ConnId>, NetError> {
        let lst = self
            .listeners
            .get_mut(l.0 as usize)
            .ok_or(NetError::InvalidHandle)?;
        let c = lst.ready.pop_front();
        if c.is_some() {
            self.stats.accepted += 1;
            // The freed backlog place is refilled on the next poll.
        }
        Ok(c)
    }

    fn read(&mut self, c: ConnId, buf: &mut [u8]) -> Result<usize, NetError> {
        let h = self.conn(c)?.handle;
        let s = self.sockets.get_mut::<tcp::Socket>(h);
        if s.can_recv() {
            let n = s.recv_slice(buf).map_err(|_| NetError::Closed)?;
            let k = self.conn_mut(c)?;
            k.stats.bytes_in += n as u64;
            k.stats.reads += 1;
            return Ok(n);
        }
        if s.may_recv() || s.state() == tcp::State::SynSent {
            return Ok(0);
        }
        match s.state() {
            tcp::State::Closed => Err(NetError::Closed),
            _ => Err(NetError::Eof),
        }
    }

    fn write(&mut self, c: ConnId, buf: &[u8]) -> Result<usize, NetError> {
        let h = self.conn(c)?.handle;
        let s = self.sockets.get_mut::<tcp::Socket>(h);
        if s.state() == tcp::State::SynSent {
            return Ok(0);
        }
        if !s.may_send() {
            return Err(NetError::Closed);
        }
        let n = if s.can_send() {
            s.send_slice(buf).map_err(|_| NetError::Closed)?
        } else {
            0
        };
        let k = self.conn_mut(c)?;
        k.stats.bytes_out += n as u64;
        k.stats.writes += 1;
        if n < buf.len() {
            k.stats.write_blocked += 1;
        }
        Ok(n)
    }

    fn send_space(&self, c: ConnId) -> Result<usize, NetError> {
        let s = self.sockets.get::<tcp::Socket>(self.conn(c)?.handle);
        Ok(s.send_capacity() - s.send_queue())
    }

    fn close(&mut self, c: ConnId) -> Result<(), NetError> {
        let now = self.now();
        let k = self.conn_mut(c)?;
        k.closed_at = Some(now);
        let h = k.handle;
        self.sockets.get_mut::<tcp::Socket>(h).close();
        self.reap(now);
        Ok(())
    }

    fn abort(&mut self, c: ConnId) -> Result<(), NetError> {
        let now = self.now();
        let k = self.conn_mut(c)?;
        k.closed_at = Some(now);
        let h = k.handle;
        // CLOSED at once: the next poll sends the reset and `reap` gives the socket back (no
        // `close_linger` for a peer that was evicted).
        self.sockets.get_mut::<tcp::Socket>(h).abort();
        Ok(())
    }

    fn conn_state(&self, c: ConnId) -> Result<ConnState, NetError> {
        let s = self.sockets.get::<tcp::Socket>(self.conn(c)?.handle);
        Ok(match s.state() {
            tcp::State::Closed => ConnState::Closed,
            tcp::State::SynSent => ConnState::Connecting,
            _ if !s.may_recv() && !s.can_recv() => ConnState::PeerClosed,
            _ => ConnState::Open,
        })
    }

    fn conn_stats(&self, c: ConnId) -> Result<ConnStats, NetError> {
        Ok(self.conn(c)?.stats)
    }

    fn stats(&self) -> IfaceStats {
        let c = &self.device.counters;
        IfaceStats {
            rx_frames: c.rx_frames.get(),
            tx_frames: c.tx_frames.get(),
            rx_bytes: c.rx_bytes.get(),
            tx_bytes: c.tx_bytes.get(),
            sockets: self.sockets.iter().count() as u64,
            connections: self.conn_live.len() as u64,
            ..self.stats
        }
    }

    fn poll(&mut self) -> usize {
        let now = self.now();
        let before = self.device.counters.rx_frames.get() + self.device.counters.tx_frames.get();
        self.device.rx_left = RX_PER_POLL;
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        self.device.flush();
        let frames =
            self.device.counters.rx_frames.get() + self.device.counters.tx_frames.get() - before;
        let mut work = frames as usize;
        work += self.maintain_listeners(now);
        work += self.reap(now);
        self.deadline = self.iface.poll_delay(now, &self.sockets).map(|d| {
            self.epoch + Duration::from_micros(now.total_micros() as u64 + d.total_micros())
        });
        work
    }

    fn next_deadline(&self) -> Option<StdInstant> {
        self.deadline
    }

    fn wait_fd(&self) -> Option<RawFd> {
        self.wait_fd
    }

    fn has_pending(&self) -> bool {
        self.device.has_pending()
    }

    fn writes_are_copies(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::{self, DeviceCapabilities, Loopback, Medium};

    /// A loopback device that, like a shard's queue under software steering, receives only
    /// the local ports of one shard of two: the odd ones.
    struct OddPorts(Loopback);

    impl phy::Device for OddPorts {
        type RxToken<'a> = <Loopback as phy::Device>::RxToken<'a>;
        type TxToken<'a> = <Loopback as phy::Device>::TxToken<'a>;

        fn receive(&mut self, ts: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
            self.0.receive(ts)
        }

        fn transmit(&mut self, ts: Instant) -> Option<Self::TxToken<'_>> {
            self.0.transmit(ts)
        }

        fn capabilities(&self) -> DeviceCapabilities {
            self.0.capabilities()
        }
    }

    impl NetDevice for OddPorts {
        fn owns_local_port(&self, port: u16) -> bool {
            port % 2 == 1
        }
    }

    /// Outgoing connections take their local port among those the device receives: from any
    /// starting point (the seed), every connection, and whatever ports earlier ones took.
    #[test]
    fn outgoing_connections_use_local_ports_the_device_receives() {
        for seed in [0u64, 1, 2, 16_383, 16_384, 0x5eed] {
            let cfg = SmolConfig {
                random_seed: seed,
                max_sockets: 8,
                rx_buffer: 4096,
                tx_buffer: 4096,
                ..SmolConfig::default()
            };
            let dev = OddPorts(Loopback::new(Medium::Ethernet));
            let mut stack = SmolStack::new(dev, cfg, None).unwrap();
            let remote = std::net::SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 9), 6800);
            for _ in 0..8 {
                let c = stack.connect(remote).unwrap();
                let h = stack.conn(c).unwrap().handle;
                let port = stack
                    .sockets
                    .get::<tcp::Socket>(h)
                    .local_endpoint()
                    .unwrap()
                    .port;
                assert!(
                    port % 2 == 1 && EPHEMERAL.contains(&port),
                    "seed {seed}: local port {port}"
                );
            }
        }
    }
    /// A device the test feeds frames into and reads sent frames from.
    #[derive(Default)]
    struct Wire {
        rx: std::collections::VecDeque<Vec<u8>>,
        tx: Vec<Vec<u8>>,
    }

    struct WireRx(Vec<u8>);
    struct WireTx<'a>(&'a mut Vec<Vec<u8>>);

    impl phy::RxToken for WireRx {
        fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
            f(&self.0)
        }
    }

    impl phy::TxToken for WireTx<'_> {
        fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
            let mut b = vec![0u8; len];
            let r = f(&mut b);
            self.0.push(b);
            r
        }
    }

    impl phy::Device for Wire {
        type RxToken<'a> = WireRx;
        type TxToken<'a> = WireTx<'a>;

        fn receive(&mut self, _ts: Instant) -> Option<(WireRx, WireTx<'_>)> {
            let f = self.rx.pop_front()?;
            Some((WireRx(f), WireTx(&mut self.tx)))
        }

        fn transmit(&mut self, _ts: Instant) -> Option<WireTx<'_>> {
            Some(WireTx(&mut self.tx))
        }

        fn capabilities(&self) -> DeviceCapabilities {
            let mut c = DeviceCapabilities::default();
            c.medium = Medium::Ethernet;
            c.max_transmission_unit = 1514;
            c
        }
    }

    impl NetDevice for Wire {}

    use smoltcp::wire::{
        ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
        EthernetRepr, IpAddress, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, TcpControl,
        TcpPacket, TcpRepr, TcpSeqNumber,
    };

    const STACK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 9];

    /// An Ethernet frame with a TCP segment from `src` to the stack (10.0.0.2:6800).
    fn tcp_frame(
        src: Ipv4Addr,
        sport: u16,
        control: TcpControl,
        seq: u32,
        ack: Option<u32>,
    ) -> Vec<u8> {
        let dst = Ipv4Addr::new(10, 0, 0, 2);
        let tcp = TcpRepr {
            src_port: sport,
            dst_port: 6800,
            control,
            seq_number: TcpSeqNumber(seq as i32),
            ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
            window_len: 65535,
            window_scale: None,
            max_seg_size: (control == TcpControl::Syn).then_some(1460),
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress(PEER_MAC),
            dst_addr: EthernetAddress(STACK_MAC),
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut buf = vec![0u8; 14 + 20 + tcp.buffer_len()];
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.emit(&mut f);
        let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
        let caps = smoltcp::phy::ChecksumCapabilities::default();
        ip.emit(&mut p, &caps);
        let mut t = TcpPacket::new_unchecked(p.payload_mut());
        tcp.emit(&mut t, &IpAddress::Ipv4(src), &IpAddress::Ipv4(dst), &caps);
        buf
    }

    /// An ARP request from `src` for the stack's address (it learns `src`'s MAC from it).
    fn arp_request(src: Ipv4Addr) -> Vec<u8> {
        let arp = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress(PEER_MAC),
            source_protocol_addr: src,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: Ipv4Address::new(10, 0, 0, 2),
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress(PEER_MAC),
            dst_addr: EthernetAddress::BROADCAST,
            ethertype: EthernetProtocol::Arp,
        };
        let mut buf = vec![0u8; 14 + 28];
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.emit(&mut f);
        arp.emit(&mut ArpPacket::new_unchecked(f.payload_mut()));
        buf
    }

    /// The SYN-ACK the stack sent to `dst`:`dport`, if any: its sequence number.
    fn syn_ack_to(tx: &[Vec<u8>], dst: Ipv4Addr, dport: u16) -> Option<u32> {
        tx.iter().find_map(|b| {
            let f = EthernetFrame::new_checked(&b[..]).ok()?;
            if f.ethertype() != EthernetProtocol::Ipv4 {
                return None;
            }
            let p = Ipv4Packet::new_checked(f.payload()).ok()?;
            if p.dst_addr() != dst || p.next_header() != IpProtocol::Tcp {
                return None;
            }
            let t = TcpPacket::new_checked(p.payload()).ok()?;
            (t.dst_port() == dport && t.syn() && t.ack()).then(|| t.seq_number().0 as u32)
        })
    }

    fn spoofed(i: u32) -> (Ipv4Addr, u16) {
        // On-link addresses that never answer ARP: their SYN-ACKs never leave.
        (
            Ipv4Addr::new(10, 0, 0, 10 + (i % 200) as u8),
            1024 + (i % 60_000) as u16,
        )
    }

    /// A SYN flood from spoofed addresses holds every listen socket in SYN-RECEIVED; the oldest
    /// is taken back at each poll, so a real client's handshake still completes and is
    /// accepted; the rest time out after `syn_timeout`; one poll takes at most `RX_PER_POLL`
    /// frames however many are queued.
    /// A listener keeps at most `listen_ahead` sockets in LISTEN (each poll refills up to it),
    /// and the backlog still bounds the handshakes: the socket set stays small however large
    /// the backlog, and a burst of SYNs beyond `listen_ahead` within one poll starts only that
    /// many handshakes.
    #[test]
    fn a_listener_keeps_listen_ahead_sockets_listening_within_its_backlog() {
        let cfg = SmolConfig {
            mac: STACK_MAC,
            max_sockets: 64,
            rx_buffer: 4096,
            tx_buffer: 4096,
            listen_ahead: 4,
            ..SmolConfig::default()
        };
        let mut stack = SmolStack::new(Wire::default(), cfg, None).unwrap();
        stack.listen(6800, 10).unwrap();
        assert_eq!(stack.stats().sockets, 4, "only listen_ahead sockets listen");
        let state_count = |stack: &SmolStack<Wire>, want: tcp::State| {
            stack.listeners[0]
                .pending
                .iter()
                .filter(|(h, _)| stack.sockets.get::<tcp::Socket>(*h).state() == want)
                .count()
        };
        let mut n = 0u32;
        let mut syns = |stack: &mut SmolStack<Wire>, k: u32| {
            for _ in 0..k {
                let (ip, port) = spoofed(n);
                n += 1;
                stack
                    .device
                    .inner
                    .rx
                    .push_back(tcp_frame(ip, port, TcpControl::Syn, 1000, None));
            }
        };
        // Seven SYNs in one poll: four handshakes start; the poll then refills four listeners.
        syns(&mut stack, 7);
        stack.poll();
        assert_eq!(state_count(&stack, tcp::State::SynReceived), 4);
        assert_eq!(state_count(&stack, tcp::State::Listen), 4);
        // Again: the backlog (10) leaves room for two more listeners only.
        syns(&mut stack, 7);
        stack.poll();
        assert_eq!(state_count(&stack, tcp::State::SynReceived), 8);
        assert_eq!(state_count(&stack, tcp::State::Listen), 2);
        assert_eq!(stack.listeners[0].pending.len(), 10);
    }

    #[test]
    fn a_syn_flood_neither_starves_a_real_client_nor_the_poll() {
        const BACKLOG: usize = 8;
        let cfg = SmolConfig {
            mac: STACK_MAC,
            max_sockets: 16,
            rx_buffer: 4096,
            tx_buffer: 4096,
            syn_timeout: Duration::from_millis(300),
            syn_min_age: Duration::from_millis(40),
            ..SmolConfig::default()
        };
        let mut stack = SmolStack::new(Wire::default(), cfg, None).unwrap();
        let l = stack.listen(6800, BACKLOG).unwrap();
        // The flood: more SYNs than the backlog, from addresses that never answer.
        let mut n = 0u32;
        let mut flood = |stack: &mut SmolStack<Wire>, k: u32| {
            for _ in 0..k {
                let (ip, port) = spoofed(n);
                n += 1;
                stack
                    .device
                    .inner
                    .rx
                    .push_back(tcp_frame(ip, port, TcpControl::Syn, 1000, None));
            }
        };
        let half_open = |stack: &SmolStack<Wire>| {
            stack.listeners[0]
                .pending
                .iter()
                .filter(|(h, _)| {
                    stack.sockets.get::<tcp::Socket>(*h).state() == tcp::State::SynReceived
                })
                .count()
        };
        flood(&mut stack, BACKLOG as u32 * 2);
        stack.poll();
        // Young handshakes are left alone: the backlog is full (real clients in a burst would
        // be refused beyond it, as they should).
        assert_eq!(stack.listeners[0].pending.len(), BACKLOG);
        assert_eq!(half_open(&stack), BACKLOG);
        assert_eq!(stack.stats().syn_recycled, 0);
        // Past `syn_min_age`, the oldest one listens again at each poll.
        std::thread::sleep(Duration::from_millis(50));
        for _ in 0..4 {
            flood(&mut stack, BACKLOG as u32 * 2);
            stack.poll();
        }
        // All but the one just taken back are held by the flood.
        assert_eq!(half_open(&stack), BACKLOG - 1);
        assert!(stack.stats().syn_recycled >= 4, "{:?}", stack.stats());

        // Bounded work per poll: 1,000 queued frames take four polls at least.
        flood(&mut stack, 1000);
        stack.poll();
        assert_eq!(stack.device.inner.rx.len(), 1000 - RX_PER_POLL);
        while !stack.device.inner.rx.is_empty() {
            stack.poll();
        }

        // A real client (it answers ARP) sends its SYN, with the flood still coming; by then
        // the flood's handshakes are past `syn_min_age`, so one socket listens.
        std::thread::sleep(Duration::from_millis(50));
        stack.poll();
        let me = Ipv4Addr::new(10, 0, 0, 250);
        stack.device.inner.tx.clear();
        stack.device.inner.rx.push_back(arp_request(me));
        stack.poll();
        stack.device.inner.tx.clear();
        stack
            .device
            .inner
            .rx
            .push_back(tcp_frame(me, 40_000, TcpControl::Syn, 5000, None));
        flood(&mut stack, BACKLOG as u32);
        stack.poll();
        let server_isn = syn_ack_to(&stack.device.inner.tx, me, 40_000)
            .expect("the real client's SYN got a SYN-ACK");
        flood(&mut stack, BACKLOG as u32);
        stack.poll();
        // Its ACK completes the handshake, and the connection is accepted.
        stack.device.inner.rx.push_back(tcp_frame(
            me,
            40_000,
            TcpControl::None,
            5001,
            Some(server_isn.wrapping_add(1)),
        ));
        flood(&mut stack, BACKLOG as u32);
        stack.poll();
        let c = stack
            .accept(l)
            .unwrap()
            .expect("the real client was accepted");
        assert_eq!(stack.conn_state(c).unwrap(), ConnState::Open);

        // The flood stops: its half-open sockets are taken back within `syn_timeout`.
        std::thread::sleep(Duration::from_millis(350));
        stack.poll();
        assert_eq!(half_open(&stack), 0);
        assert_eq!(stack.conn_state(c).unwrap(), ConnState::Open);
    }
}
