//! The kernel-socket backend: non-blocking std sockets with mio (epoll) readiness.
//!
//! Same contract as the smoltcp backend, for laptops and unit tests. The epoll fd is the
//! shard's wait fd; `poll` drains readiness events (accepting on listeners) without blocking.
//! Reads and writes go straight to the socket (`WouldBlock` becomes `Ok(0)`).

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::api::{ConnId, ConnState, ConnStats, IfaceStats, ListenerId, NetStack};
use crate::NetError;

/// Kernel backend configuration.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    /// Address listeners bind to.
    pub bind: Ipv4Addr,
    /// Cap on sockets (listeners + connections).
    pub max_sockets: usize,
    /// SO_RCVBUF / SO_SNDBUF for accepted sockets (None: kernel default, autotuned).
    pub rx_buffer: Option<usize>,
    pub tx_buffer: Option<usize>,
    pub keep_alive: Option<Duration>,
    pub nodelay: bool,
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            bind: Ipv4Addr::LOCALHOST,
            max_sockets: 128,
            rx_buffer: None,
            tx_buffer: None,
            keep_alive: Some(Duration::from_secs(5)),
            nodelay: true,
        }
    }
}

/// Listener tokens live above this; connection tokens are slot numbers.
const LISTENER_TOKEN: usize = 1 << 30;

struct KListener {
    sock: TcpListener,
    port: u16,
    backlog: usize,
    ready: std::collections::VecDeque<ConnId>,
}

struct KConn {
    sock: TcpStream,
    gen: u32,
    stats: ConnStats,
    eof: bool,
    dead: bool,
}

/// A kernel TCP "stack" with the [`NetStack`] interface.
pub struct KernelStack {
    poll: Poll,
    events: Events,
    listeners: Vec<KListener>,
    conns: Vec<Option<KConn>>,
    conn_free: Vec<u32>,
    next_gen: u32,
    cfg: KernelConfig,
    stats: IfaceStats,
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::TimedOut
            | ErrorKind::NotConnected
    )
}

impl KernelStack {
    pub fn new(cfg: KernelConfig) -> Result<Self, NetError> {
        if cfg.max_sockets == 0 {
            return Err(NetError::Config("max_sockets must be > 0"));
        }
        let mut conns = Vec::with_capacity(cfg.max_sockets);
        conns.resize_with(cfg.max_sockets, || None);
        Ok(Self {
            poll: Poll::new()?,
            events: Events::with_capacity(256),
            listeners: Vec::new(),
            conn_free: (0..cfg.max_sockets as u32).rev().collect(),
            conns,
            next_gen: 1,
            cfg,
            stats: IfaceStats::default(),
        })
    }

    fn in_use(&self) -> usize {
        self.listeners.len() + self.cfg.max_sockets - self.conn_free.len()
    }

    fn conn_mut(&mut self, c: ConnId) -> Result<&mut KConn, NetError> {
        match self.conns.get_mut(c.slot as usize) {
            Some(Some(k)) if k.gen == c.gen => Ok(k),
            _ => Err(NetError::InvalidHandle),
        }
    }

    fn conn(&self, c: ConnId) -> Result<&KConn, NetError> {
        match self.conns.get(c.slot as usize) {
            Some(Some(k)) if k.gen == c.gen => Ok(k),
            _ => Err(NetError::InvalidHandle),
        }
    }

    /// Accepts from the kernel queue into ours, up to the backlog.
    fn accept_pending(&mut self, li: usize) -> usize {
        let mut n = 0;
        while self.listeners[li].ready.len() < self.listeners[li].backlog {
            if self.conn_free.is_empty() || self.in_use() >= self.cfg.max_sockets {
                self.stats.socket_cap_hits += 1;
                break;
            }
            let (mut sock, _) = match self.listeners[li].sock.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    break;
                }
            };
            let _ = sock.set_nodelay(self.cfg.nodelay);
            let s2 = socket2::SockRef::from(&sock);
            if let Some(b) = self.cfg.rx_buffer {
                let _ = s2.set_recv_buffer_size(b);
            }
            if let Some(b) = self.cfg.tx_buffer {
                let _ = s2.set_send_buffer_size(b);
            }
            if let Some(k) = self.cfg.keep_alive {
                let ka = socket2::TcpKeepalive::new().with_time(k).with_interval(k);
                let _ = s2.set_tcp_keepalive(&ka);
            }
            let Some(slot) = self.conn_free.pop() else {
                break;
            };
            if let Err(e) = self.poll.registry().register(
                &mut sock,
                Token(slot as usize),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                tracing::warn!(error = %e, "epoll register failed");
                self.conn_free.push(slot);
                continue;
            }
            let gen = self.next_gen;
            self.next_gen = self.next_gen.wrapping_add(1).max(1);
            self.conns[slot as usize] = Some(KConn {
                sock,
                gen,
                stats: ConnStats::default(),
                eof: false,
                dead: false,
            });
            self.listeners[li].ready.push_back(ConnId { slot, gen });
            n += 1;
        }
        n
    }
}

impl NetStack for KernelStack {
    fn listen(&mut self, port: u16, backlog: usize) -> Result<ListenerId, NetError> {
        if backlog == 0 {
            return Err(NetError::Config("backlog must be > 0"));
        }
        if self.in_use() >= self.cfg.max_sockets {
            return Err(NetError::SocketCap(self.cfg.max_sockets));
        }
        let addr = SocketAddr::V4(SocketAddrV4::new(self.cfg.bind, port));
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into()).map_err(|e| {
            if e.kind() == ErrorKind::AddrInUse {
                NetError::AddrInUse(port)
            } else {
                NetError::Io(e)
            }
        })?;
        s.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
        let mut sock = TcpListener::from_std(s.into());
        let port = sock.local_addr()?.port();
        let id = self.listeners.len();
        self.poll
            .registry()
            .register(&mut sock, Token(LISTENER_TOKEN + id), Interest::READABLE)?;
        self.listeners.push(KListener {
            sock,
            port,
            backlog,
            ready: std::collections::VecDeque::with_capacity(backlog),
        });
        Ok(ListenerId(id as u32))
    }

    fn local_port(&self, l: ListenerId) -> Result<u16, NetError> {
        self.listeners
            .get(l.0 as usize)
            .map(|l| l.port)
            .ok_or(NetError::InvalidHandle)
    }

    fn connect(&mut self, remote: std::net::SocketAddrV4) -> Result<ConnId, NetError> {
        if self.in_use() >= self.cfg.max_sockets {
            self.stats.socket_cap_hits += 1;
            return Err(NetError::SocketCap(self.cfg.max_sockets));
        }
        let Some(slot) = self.conn_free.pop() else {
            return Err(NetError::SocketCap(self.cfg.max_sockets));
        };
        let mut sock = match TcpStream::connect(SocketAddr::V4(remote)) {
            Ok(s) => s,
            Err(e) => {
                self.conn_free.push(slot);
                return Err(NetError::Io(e));
            }
        };
        let _ = sock.set_nodelay(self.cfg.nodelay);
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            Token(slot as usize),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.conn_free.push(slot);
            return Err(NetError::Io(e));
        }
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        self.conns[slot as usize] = Some(KConn {
            sock,
            gen,
            stats: ConnStats::default(),
            eof: false,
            dead: false,
        });
        Ok(ConnId { slot, gen })
    }

    fn accept(&mut self, l: ListenerId) -> Result<Option<ConnId>, NetError> {
        let li = l.0 as usize;
        if li >= self.listeners.len() {
            return Err(NetError::InvalidHandle);
        }
        if self.listeners[li].ready.is_empty() {
            self.accept_pending(li);
        }
        let c = self.listeners[li].ready.pop_front();
        if c.is_some() {
            self.stats.accepted += 1;
        }
        Ok(c)
    }

    fn read(&mut self, c: ConnId, buf: &mut [u8]) -> Result<usize, NetError> {
        let k = self.conn_mut(c)?;
        if k.dead {
            return Err(NetError::Closed);
        }
        if k.eof {
            return Err(NetError::Eof);
        }
        match k.sock.read(buf) {
            Ok(0) if !buf.is_empty() => {
                k.eof = true;
                Err(NetError::Eof)
            }
            Ok(n) => {
                k.stats.bytes_in += n as u64;
                k.stats.reads += 1;
                Ok(n)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(0),
            Err(e) if is_reset(&e) => {
                k.dead = true;
                self.stats.resets += 1;
                Err(NetError::Closed)
            }
            Err(e) => Err(NetError::Io(e)),
        }
    }

    fn write(&mut self, c: ConnId, buf: &[u8]) -> Result<usize, NetError> {
        let k = self.conn_mut(c)?;
        if k.dead {
            return Err(NetError::Closed);
        }
        let r = match k.sock.write(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(0),
            Err(e) if is_reset(&e) => {
                k.dead = true;
                self.stats.resets += 1;
                Err(NetError::Closed)
            }
            Err(e) => Err(NetError::Io(e)),
        };
        if let Ok(n) = r {
            let k = self.conn_mut(c)?;
            k.stats.bytes_out += n as u64;
            k.stats.writes += 1;
            if n < buf.len() {
                k.stats.write_blocked += 1;
            }
        }
        r
    }

    fn send_space(&self, c: ConnId) -> Result<usize, NetError> {
        let k = self.conn(c)?;
        let sr = socket2::SockRef::from(&k.sock);
        let cap = sr.send_buffer_size()?;
        let queued = sys::unsent_and_unacked(k.sock.as_raw_fd()).map_err(NetError::Io)?;
        Ok(cap.saturating_sub(queued))
    }

    fn close(&mut self, c: ConnId) -> Result<(), NetError> {
        self.conn(c)?;
        if let Some(mut k) = self.conns[c.slot as usize].take() {
            let _ = self.poll.registry().deregister(&mut k.sock);
            self.stats.rx_bytes += k.stats.bytes_in;
            self.stats.tx_bytes += k.stats.bytes_out;
            self.conn_free.push(c.slot);
            self.stats.reaped += 1;
            // Dropping the socket closes it (the kernel does the FIN handshake / TIME-WAIT).
        }
        Ok(())
    }

    fn conn_state(&self, c: ConnId) -> Result<ConnState, NetError> {
        let k = self.conn(c)?;
        if k.dead {
            return Ok(ConnState::Closed);
        }
        if k.eof {
            return Ok(ConnState::PeerClosed);
        }
        if let Ok(Some(_)) | Err(_) = k.sock.take_error() {
            return Ok(ConnState::Closed);
        }
        Ok(match k.sock.peer_addr() {
            Ok(_) => ConnState::Open,
            Err(e) if e.kind() == ErrorKind::NotConnected => ConnState::Connecting,
            Err(_) => ConnState::Closed,
        })
    }

    fn conn_stats(&self, c: ConnId) -> Result<ConnStats, NetError> {
        Ok(self.conn(c)?.stats)
    }

    fn stats(&self) -> IfaceStats {
        let (mut rx, mut tx) = (0, 0);
        for k in self.conns.iter().flatten() {
            rx += k.stats.bytes_in;
            tx += k.stats.bytes_out;
        }
        let live = (self.cfg.max_sockets - self.conn_free.len()) as u64;
        IfaceStats {
            rx_bytes: self.stats.rx_bytes + rx,
            tx_bytes: self.stats.tx_bytes + tx,
            sockets: live + self.listeners.len() as u64,
            connections: live,
            ..self.stats
        }
    }

    fn poll(&mut self) -> usize {
        if let Err(e) = self.poll.poll(&mut self.events, Some(Duration::ZERO)) {
            if e.kind() != ErrorKind::Interrupted {
                tracing::warn!(error = %e, "epoll_wait failed");
            }
            return 0;
        }
        let mut work = 0;
        let mut accept_from = 0u64;
        for ev in self.events.iter() {
            work += 1;
            let t = ev.token().0;
            if t >= LISTENER_TOKEN {
                accept_from |= 1 << ((t - LISTENER_TOKEN) % 64);
            }
        }
        for li in 0..self.listeners.len().min(64) {
            if accept_from & (1 << li) != 0 {
                work += self.accept_pending(li);
            }
        }
        work
    }

    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    fn wait_fd(&self) -> Option<RawFd> {
        Some(self.poll.as_raw_fd())
    }
}

mod sys {
    use std::os::fd::RawFd;

    /// Bytes in the socket's send queue (not yet sent or not yet acknowledged): SIOCOUTQ.
    pub(super) fn unsent_and_unacked(fd: RawFd) -> std::io::Result<usize> {
        let mut queued: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes one c_int to the pointer we pass, which is live.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(queued.max(0) as usize)
    }
}
