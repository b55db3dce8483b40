//! The tokio side: accepting connections, the handshake's I/O, and the transmission phase.
//!
//! ## One connection
//!
//! 1. Handshake: [`carmine_nbd_proto::Handshake`] decides everything; this loop only moves
//!    bytes (and gives up after [`HANDSHAKE_TIMEOUT`], TLS handshake included). It reads the
//!    socket itself, unbuffered, so nothing past what the handshake was fed is read. Bytes
//!    the client sent after its final option are kept for the transmission phase.
//! 2. TLS ([`NbdTls`], NBD_OPT_STARTTLS): when the handshake acknowledges STARTTLS, the ACK
//!    is sent in plain text, the TLS server handshake runs on the socket, and option
//!    haggling goes on over TLS; the rest of the connection (transmission included) is
//!    TLS. A client that sent anything after STARTTLS before the ACK broke the protocol
//!    (those bytes would be taken for TLS records): the connection is closed. With
//!    [`TlsMode::Required`] a client that does not upgrade gets ERR_TLS_REQD for every option
//!    (and is closed on EXPORT_NAME); no export data or list is ever sent in plain text.
//! 3. Transmission: the connection's task is the *reader*. It decodes a request header,
//!    takes the request's budget (one of [`ServerConfig::max_requests`] slots, and for READ
//!    and WRITE its length from the connection's [`ServerConfig::max_payload_bytes`], then
//!    from the server-wide [`ServerConfig::max_total_bytes`]), reads a WRITE payload,
//!    and spawns the request. Waiting for budget is the backpressure: while it waits it reads
//!    nothing more from the socket.
//! 4. Each request task runs its backend call and sends its encoded reply to the *writer*
//!    task over an mpsc channel. The writer writes replies in completion order (replies carry
//!    the client's cookie: out of order is the protocol's normal case) and flushes when no
//!    other reply is queued, so replies completing together share a syscall. A reply's budget
//!    is released once the writer has written it, so the budget bounds request payloads,
//!    read data and queued replies alike.
//!
//! ## Ends of a connection
//!
//! - NBD_CMD_DISC, EOF, server shutdown: the reader stops; in-flight requests finish and are
//!   answered (every task holds a sender; the writer ends when the last one is dropped),
//!   then the socket is shut down.
//! - Protocol violation (bad magic, unknown command, a WRITE payload over the maximum block
//!   size, a broken handshake): logged, the reader stops at once, in-flight requests still
//!   complete (their writes may already be on their way to the cluster), then close. Other
//!   connections are not affected.
//! - Write error (client gone): the writer cancels the reader; in-flight backend calls finish
//!   and their replies are dropped.
//!
//! ## Replies
//!
//! Invalid but well-formed requests (out of range, zero length, flags not valid for the
//! command) are answered with EINVAL; a WRITE's payload is read first so the stream stays in
//! step. Backend errors are EIO, or ENOSPC when the cluster is full. With structured replies,
//! a READ is one OFFSET_DATA chunk (or one OFFSET_HOLE chunk when all it read is zeros) with
//! DONE, so DF is always honoured; other successes are a NONE chunk; errors are ERROR chunks
//! with a message. Without, simple replies.
//!
//! ## Flags
//!
//! HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM, SEND_WRITE_ZEROES, CAN_MULTI_CONN, and SEND_DF
//! when structured replies are negotiated. FLUSH and FUA need no work of their own: the
//! backend contract ([`crate::export`]) is that every acknowledged write is already durable
//! (for Carmine images: on every replica), which is also why several connections to one
//! export see one consistent device (CAN_MULTI_CONN).

use std::io;
use std::sync::Arc;
use std::time::Duration;

pub use carmine_nbd_proto::TlsMode;
use carmine_nbd_proto::{
    self as proto, reply, Command, ExportInfo, ExportLimits, Handshake, ProtoError, Request,
    RequestHeader, Step,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::export::BlockExport;

/// A client must finish option haggling within this long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Transmission flags of every export (SEND_DF is added by the handshake when structured
/// replies are negotiated).
pub const EXPORT_FLAGS: u16 = proto::FLAG_HAS_FLAGS
    | proto::FLAG_SEND_FLUSH
    | proto::FLAG_SEND_FUA
    | proto::FLAG_SEND_TRIM
    | proto::FLAG_SEND_WRITE_ZEROES
    | proto::FLAG_CAN_MULTI_CONN;

/// Limits of the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Requests in flight per connection.
    pub max_requests: usize,
    /// READ and WRITE bytes in flight per connection (at least the maximum block size, so
    /// one request of any valid size fits).
    pub max_payload_bytes: usize,
    /// READ and WRITE bytes in flight over all connections together (at least the maximum
    /// block size): what bounds the gateway's memory, since the per-connection budget times
    /// the connections is far more.
    pub max_total_bytes: usize,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// How long a shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// NBD_OPT_STARTTLS: offered (or required) with this certificate; `None`: no TLS
    /// (STARTTLS gets ERR_UNSUP).
    pub tls: Option<NbdTls>,
}

/// TLS for NBD clients: the server's rustls configuration and whether TLS is required.
#[derive(Debug, Clone)]
pub struct NbdTls {
    pub config: Arc<rustls::ServerConfig>,
    /// [`TlsMode::Required`] (FORCEDTLS) or [`TlsMode::Optional`]; [`TlsMode::NoTls`] turns
    /// TLS off like `tls: None`.
    pub mode: TlsMode,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_requests: 64,
            max_payload_bytes: 64 << 20,
            max_total_bytes: 512 << 20,
            max_connections: 64,
            drain_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// One export: its NBD name and description, and the device.
pub struct Export<E> {
    pub name: String,
    pub description: String,
    pub backend: Arc<E>,
}

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("protocol violation: {0}")]
    Proto(#[from] ProtoError),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("the client closed the connection during the handshake")]
    ClosedInHandshake,
    #[error("handshake not finished within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("TLS handshake: {0}")]
    Tls(#[source] io::Error),
}

/// How the option haggling on one stream ended.
enum Haggled {
    /// The client aborted, or the server is shutting down.
    Closed,
    /// Enter transmission; the bytes received after the final option.
    Transmission(proto::Negotiated, Vec<u8>),
    /// STARTTLS was acknowledged: run the TLS handshake.
    StartTls,
}

/// The NBD server: a set of exports and limits. The first export is the default one.
pub struct Server<E> {
    exports: Vec<Export<E>>,
    cfg: ServerConfig,
    /// The server-wide byte budget ([`ServerConfig::max_total_bytes`]).
    total_bytes: Arc<Semaphore>,
}

/// An encoded reply on its way to the writer, with the budget it holds until written.
struct Outgoing {
    head: Vec<u8>,
    data: Vec<u8>,
    _slot: OwnedSemaphorePermit,
    _bytes: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

impl<E: BlockExport> Server<E> {
    pub fn new(exports: Vec<Export<E>>, mut cfg: ServerConfig) -> Self {
        cfg.max_requests = cfg.max_requests.max(1);
        cfg.max_payload_bytes = cfg.max_payload_bytes.max(proto::MAX_BLOCK_SIZE as usize);
        cfg.max_total_bytes = cfg.max_total_bytes.max(proto::MAX_BLOCK_SIZE as usize);
        let total_bytes = Arc::new(Semaphore::new(cfg.max_total_bytes));
        Server {
            exports,
            cfg,
            total_bytes,
        }
    }

    pub fn exports(&self) -> &[Export<E>] {
        &self.exports
    }

    /// Accepts connections until `shutdown`, then waits (at most
    /// [`ServerConfig::drain_timeout`]) for the connections to finish their in-flight
    /// requests. Returns whether they all did.
    pub async fn run(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) -> bool {
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(self.cfg.max_connections.max(1)));
        loop {
            let slot = tokio::select! {
                _ = shutdown.cancelled() => break,
                s = slots.clone().acquire_owned() => match s {
                    Ok(s) => s,
                    Err(_) => break,
                },
            };
            let (sock, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of fds and the like: transient; do not spin.
                        warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            if let Err(e) = sock.set_nodelay(true) {
                debug!(%peer, "set_nodelay: {e}");
            }
            let server = self.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(
                async move {
                    let _slot = slot;
                    debug!("connected");
                    match server.serve_connection(sock, shutdown).await {
                        Ok(()) => debug!("closed"),
                        Err(e) => warn!("closed: {e}"),
                    }
                }
                .instrument(tracing::info_span!("conn", %peer)),
            );
        }
        drop(listener);
        tracker.close();
        let n = tracker.len();
        if n > 0 {
            info!("shutting down: waiting for {n} connection(s) to finish in-flight requests");
        }
        match tokio::time::timeout(self.cfg.drain_timeout, tracker.wait()).await {
            Ok(()) => true,
            Err(_) => {
                warn!(
                    "{} connection(s) still busy after {:?}; giving up on them",
                    tracker.len(),
                    self.cfg.drain_timeout
                );
                false
            }
        }
    }

    /// Serves one client on `stream` (handshake, then transmission) until it disconnects,
    /// breaks the protocol, or `shutdown` (then in-flight requests are still answered).
    pub async fn serve_connection<S>(
        &self,
        mut stream: S,
        shutdown: CancellationToken,
    ) -> Result<(), ConnError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let tls = self.cfg.tls.as_ref().filter(|t| t.mode != TlsMode::NoTls);
        let mut hs =
            Handshake::with_tls(self.export_infos(), tls.map_or(TlsMode::NoTls, |t| t.mode));
        match self
            .haggle(&mut hs, &mut stream, deadline, &shutdown)
            .await?
        {
            Haggled::Closed => Ok(()),
            Haggled::Transmission(neg, leftover) => {
                self.enter_transmission(stream, neg, leftover, shutdown)
                    .await
            }
            Haggled::StartTls => {
                // The handshake offers STARTTLS only when TLS is configured.
                let Some(tls) = tls else {
                    return Err(ConnError::Tls(io::Error::other("TLS is not configured")));
                };
                let accept = TlsAcceptor::from(tls.config.clone()).accept(stream);
                let mut stream = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    r = tokio::time::timeout_at(deadline, accept) => match r {
                        Ok(r) => r.map_err(ConnError::Tls)?,
                        Err(_) => return Err(ConnError::HandshakeTimeout(HANDSHAKE_TIMEOUT)),
                    },
                };
                hs.tls_started();
                debug!("TLS established");
                match self
                    .haggle(&mut hs, &mut stream, deadline, &shutdown)
                    .await?
                {
                    Haggled::Closed => Ok(()),
                    Haggled::Transmission(neg, leftover) => {
                        self.enter_transmission(stream, neg, leftover, shutdown)
                            .await
                    }
                    // The handshake acknowledges STARTTLS once.
                    Haggled::StartTls => Err(ConnError::Tls(io::Error::other(
                        "STARTTLS acknowledged twice",
                    ))),
                }
            }
        }
    }

    fn export_infos(&self) -> Vec<ExportInfo> {
        self.exports
            .iter()
            .map(|e| ExportInfo {
                name: e.name.clone(),
                description: e.description.clone(),
                size: e.backend.size(),
                flags: EXPORT_FLAGS,
            })
            .collect()
    }

    async fn enter_transmission<S>(
        &self,
        stream: S,
        neg: proto::Negotiated,
        leftover: Vec<u8>,
        shutdown: CancellationToken,
    ) -> Result<(), ConnError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let export = &self.exports[neg.export];
        debug!(
            export = %export.name,
            structured = neg.structured,
            "transmission"
        );
        let (rd, wr) = tokio::io::split(stream);
        // Bytes read past the handshake are the first requests.
        let rd = io::Cursor::new(leftover).chain(BufReader::with_capacity(64 << 10, rd));
        self.transmission(rd, wr, export.backend.clone(), neg.structured, shutdown)
            .await
    }

    /// Option haggling on `stream` until transmission, abort, STARTTLS, `shutdown` (then
    /// [`Haggled::Closed`]) or `deadline`.
    async fn haggle<S>(
        &self,
        hs: &mut Handshake,
        stream: &mut S,
        deadline: Instant,
        shutdown: &CancellationToken,
    ) -> Result<Haggled, ConnError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        tokio::select! {
            _ = shutdown.cancelled() => Ok(Haggled::Closed),
            r = tokio::time::timeout_at(deadline, haggle(hs, stream)) => match r {
                Ok(r) => r,
                Err(_) => Err(ConnError::HandshakeTimeout(HANDSHAKE_TIMEOUT)),
            },
        }
    }

    async fn transmission<R, W>(
        &self,
        mut rd: R,
        wr: W,
        backend: Arc<E>,
        structured: bool,
        shutdown: CancellationToken,
    ) -> Result<(), ConnError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Send + 'static,
    {
        let lim = ExportLimits {
            size: backend.size(),
            max_block: proto::MAX_BLOCK_SIZE,
            structured,
        };
        // Never full: every queued reply holds one of max_requests slots.
        let (tx, rx) = mpsc::channel::<Outgoing>(self.cfg.max_requests);
        let writer_failed = CancellationToken::new();
        let writer = tokio::spawn(write_replies(wr, rx, writer_failed.clone()).in_current_span());
        let slots = Arc::new(Semaphore::new(self.cfg.max_requests));
        let bytes = Arc::new(Semaphore::new(self.cfg.max_payload_bytes));

        let mut result = Ok(());
        loop {
            let mut hdr = [0u8; proto::REQUEST_HEADER_LEN];
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    debug!("server shutting down: no more requests");
                    break;
                }
                _ = writer_failed.cancelled() => break,
                r = rd.read_exact(&mut hdr) => {
                    if let Err(e) = r {
                        if e.kind() != io::ErrorKind::UnexpectedEof {
                            result = Err(e.into());
                        } else {
                            debug!("client closed the connection");
                        }
                        break;
                    }
                }
            }
            let req = match RequestHeader::decode(&hdr) {
                Ok(r) => r,
                Err(e) => {
                    warn!("closing: {e}");
                    result = Err(e.into());
                    break;
                }
            };
            let payload_len = match req.payload_len(lim.max_block) {
                Ok(n) => n,
                Err(e) => {
                    warn!(cookie = req.cookie, "closing: {e}");
                    result = Err(e.into());
                    break;
                }
            };
            if req.command == Command::Disc {
                debug!("NBD_CMD_DISC: finishing in-flight requests");
                break;
            }
            // The budget: taken before anything more is read (backpressure). Reads are
            // charged their length, capped (an over-long read is refused, not performed).
            let cost = match req.command {
                Command::Write => payload_len,
                Command::Read => (req.length).min(lim.max_block) as usize,
                _ => 0,
            };
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let held = if cost > 0 {
                // cost ≤ max_block ≤ both budgets: always satisfiable. Never closed. The
                // connection's share first, so one connection waits on the server-wide
                // budget with at most one request's worth.
                let Ok(mine) = bytes.clone().acquire_many_owned(cost as u32).await else {
                    break;
                };
                let Ok(all) = self
                    .total_bytes
                    .clone()
                    .acquire_many_owned(cost as u32)
                    .await
                else {
                    break;
                };
                Some((mine, all))
            } else {
                None
            };
            let mut payload = vec![0u8; payload_len];
            if payload_len > 0 {
                if let Err(e) = rd.read_exact(&mut payload).await {
                    debug!(
                        cookie = req.cookie,
                        "connection lost in a write payload: {e}"
                    );
                    result = Err(e.into());
                    break;
                }
            }
            let tx = tx.clone();
            let backend = backend.clone();
            tokio::spawn(
                async move {
                    let (head, data) = execute(&*backend, &req, &lim, payload).await;
                    let out = Outgoing {
                        head,
                        data,
                        _slot: slot,
                        _bytes: held,
                    };
                    // Fails only when the writer is gone (client disconnected).
                    let _ = tx.send(out).await;
                }
                .in_current_span(),
            );
        }
        drop(tx);
        match writer.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!("writing replies: {e}");
                if result.is_ok() {
                    result = Err(e.into());
                }
            }
            Err(e) => warn!("reply writer task: {e}"),
        }
        result
    }
}

/// Moves the handshake's bytes. Reads the stream unbuffered: after STARTTLS nothing beyond
/// what the handshake was fed may have been taken from the socket (it belongs to TLS).
async fn haggle<S>(hs: &mut Handshake, stream: &mut S) -> Result<Haggled, ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let (used, step) = match hs.advance(&buf) {
            Ok(r) => r,
            Err(e) => {
                // What the handshake queued before the violation (e.g. earlier replies)
                // is still sent, so the client's log can make sense of it.
                let _ = stream.write_all(&hs.take_output()).await;
                let _ = stream.flush().await;
                return Err(e.into());
            }
        };
        buf.drain(..used);
        if step == Step::StartTls && !buf.is_empty() {
            // Sent before our ACK: it would be taken for TLS records. No ACK, close.
            return Err(ProtoError::DataBeforeTls.into());
        }
        let out = hs.take_output();
        if !out.is_empty() {
            stream.write_all(&out).await?;
            stream.flush().await?;
        }
        match step {
            Step::NeedMore => {}
            Step::Aborted => {
                let _ = stream.shutdown().await;
                return Ok(Haggled::Closed);
            }
            Step::Transmission(n) => return Ok(Haggled::Transmission(n, buf)),
            Step::StartTls => return Ok(Haggled::StartTls),
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ConnError::ClosedInHandshake);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Writes replies as they come; flushes whenever the queue is empty. Ends when every sender
/// is gone (all in-flight requests answered), then shuts the socket down.
async fn write_replies<W: AsyncWrite>(
    wr: W,
    mut rx: mpsc::Receiver<Outgoing>,
    failed: CancellationToken,
) -> io::Result<()> {
    let mut w = Box::pin(BufWriter::with_capacity(64 << 10, wr));
    let r: io::Result<()> = async {
        while let Some(mut m) = rx.recv().await {
            // Replies of requests completing together (one batch of OSD replies wakes
            // several) share one flush when the other ready tasks run first.
            tokio::task::yield_now().await;
            loop {
                w.write_all(&m.head).await?;
                if !m.data.is_empty() {
                    w.write_all(&m.data).await?;
                }
                drop(m);
                match rx.try_recv() {
                    Ok(next) => m = next,
                    Err(_) => break,
                }
            }
            w.flush().await?;
        }
        w.shutdown().await
    }
    .await;
    if r.is_err() {
        failed.cancel();
    }
    r
}

/// Runs one request; returns the encoded reply (header bytes, then data bytes).
async fn execute<E: BlockExport>(
    backend: &E,
    req: &Request,
    lim: &ExportLimits,
    payload: Vec<u8>,
) -> (Vec<u8>, Vec<u8>) {
    let fail = |errno: u32, msg: &str| -> (Vec<u8>, Vec<u8>) {
        let mut head = Vec::new();
        if lim.structured {
            reply::chunk_error(&mut head, req.cookie, errno, msg);
        } else {
            head.extend_from_slice(&reply::simple_reply(req.cookie, errno));
        }
        (head, Vec::new())
    };
    if let Err(inv) = req.validate(lim) {
        debug!(cookie = req.cookie, command = ?req.command, offset = req.offset,
               length = req.length, "refused: {}", inv.reason);
        return fail(inv.errno, inv.reason);
    }
    let (off, len) = (req.offset, req.length);
    let done = match req.command {
        Command::Read => match backend.read(off, len as usize).await {
            Ok(data) if data.len() == len as usize => {
                let mut head = Vec::with_capacity(32);
                if !lim.structured {
                    head.extend_from_slice(&reply::simple_reply(req.cookie, 0));
                    return (head, data);
                }
                // One chunk either way, so DF is always satisfied.
                if data.iter().all(|b| *b == 0) {
                    reply::chunk_offset_hole(&mut head, req.cookie, true, off, len);
                    return (head, Vec::new());
                }
                // len ≤ max block size: always fits a chunk.
                if reply::chunk_offset_data_header(&mut head, req.cookie, true, off, data.len())
                    .is_none()
                {
                    return fail(proto::EIO, "read too large for a chunk");
                }
                return (head, data);
            }
            Ok(data) => {
                warn!(
                    cookie = req.cookie,
                    offset = off,
                    length = len,
                    got = data.len(),
                    "backend returned a short read"
                );
                return fail(proto::EIO, "short read from the backend");
            }
            Err(e) => Err(e),
        },
        Command::Write => backend.write(off, &payload).await,
        // NO_HOLE: the range must stay provisioned (zeros written); without it the server
        // may deallocate, which is what discard does (whole objects removed).
        Command::WriteZeroes if req.flags & proto::CMD_FLAG_NO_HOLE != 0 => {
            backend.write_zeroes(off, u64::from(len)).await
        }
        Command::WriteZeroes => backend.discard(off, u64::from(len)).await,
        Command::Trim => backend.discard(off, u64::from(len)).await,
        Command::Flush => backend.flush().await,
        // Never spawned (the reader ends the connection); answered harmlessly if it were.
        Command::Disc => Ok(()),
    };
    match done {
        Ok(()) => {
            let mut head = Vec::with_capacity(20);
            if lim.structured {
                reply::chunk_none(&mut head, req.cookie);
            } else {
                head.extend_from_slice(&reply::simple_reply(req.cookie, 0));
            }
            (head, Vec::new())
        }
        Err(e) => {
            warn!(cookie = req.cookie, command = ?req.command, offset = off, length = len,
                  "backend: {e}");
            fail(e.errno(), &e.to_string())
        }
    }
}
