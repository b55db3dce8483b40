//! One authenticated, pipelined connection to one OSD shard, on a reactor shard.
//!
//! The connection is a TCP connection of the shard's [`NetStack`] (smoltcp over a DPDK port,
//! or kernel sockets in tests) driven by one task (`drive`) on the shard's executor:
//! - callers encode their request straight into the connection's outbox, register the tid in
//!   `pending` and wake the driver; they then wait on their own entry;
//! - the driver writes the outbox as far as the send buffer takes it, reads whatever arrived,
//!   decodes every whole reply frame in place and completes its caller's entry, then parks
//!   until the stack's next turn that moved packets ([`AsyncNet::wake_on_work`]).
//!
//! Frames of ops issued in the same turn leave in one write, like the tokio connection's
//! outbox. Nothing here is `Send`: the connection, its callers and its driver share one
//! thread, so the state is a `RefCell`, borrowed only between awaits.
//!
//! Deadlines are not timers per call (a reactor timer lives in the heap until it fires): each
//! call records its deadline, and [`ShardConn::expire`], run by the client's sweeper a few
//! times a second, fails the calls past theirs.
//!
//! Invariants: a failed connection stays failed (every pending and later call gets
//! [`ClientError::Closed`] with the first reason); the driver exits and gives the socket back
//! once the connection failed or was dropped.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::net::{SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Instant;

use carmine_client::handshake::{self, HandshakeIo};
use carmine_client::{retry, ClientError, ConnectOptions, Reply};
use carmine_net::{AsyncNet, ConnId, NetError, NetStack};
use carmine_wire::{FrameDecoder, Message, OpKind, OpRequest};
use tracing::debug;

/// A call waiting for its reply.
struct Call {
    kind: OpKind,
    deadline: Instant,
    result: Option<Result<Reply, ClientError>>,
    waker: Option<Waker>,
}

struct State {
    /// Encoded frames not yet taken by the stack: `outbox[sent..]`.
    outbox: Vec<u8>,
    sent: usize,
    pending: HashMap<u64, Call>,
    closed: Option<Arc<str>>,
    driver: Option<Waker>,
    /// The owner dropped the connection: the driver closes the socket and exits.
    dropped: bool,
}

impl State {
    /// Fails every pending call and all later ones with `reason`. The first reason wins.
    fn close(&mut self, reason: Arc<str>) {
        let reason = self.closed.get_or_insert(reason).clone();
        for call in self.pending.values_mut() {
            if call.result.is_none() {
                call.result = Some(Err(ClientError::Closed(reason.clone())));
                if let Some(w) = call.waker.take() {
                    w.wake();
                }
            }
        }
    }

    fn wake_driver(&mut self) {
        if let Some(w) = &self.driver {
            w.wake_by_ref();
        }
    }
}

/// Pending calls the connection starts with room for (it grows past, once).
const PENDING_CAPACITY: usize = 256;

/// An authenticated connection to one OSD shard (see the module docs).
pub struct ShardConn<S: NetStack + 'static> {
    peer: SocketAddr,
    encoder: carmine_wire::Encoder,
    state: Rc<RefCell<State>>,
    _net: std::marker::PhantomData<S>,
}

impl<S: NetStack + 'static> Drop for ShardConn<S> {
    fn drop(&mut self) {
        let mut st = self.state.borrow_mut();
        st.dropped = true;
        st.wake_driver();
    }
}

/// The handshake's byte stream: one connection of an [`AsyncNet`].
struct NetStream<'a, S: NetStack> {
    net: &'a AsyncNet<S>,
    id: ConnId,
}

fn net_error(e: NetError) -> ClientError {
    match e {
        NetError::Eof | NetError::Closed | NetError::InvalidHandle => {
            ClientError::Closed(e.to_string().into())
        }
        e => ClientError::Io(Arc::new(std::io::Error::other(e))),
    }
}

impl<S: NetStack> HandshakeIo for NetStream<'_, S> {
    async fn write_all(&mut self, buf: &[u8]) -> Result<(), ClientError> {
        self.net.write_all(self.id, buf).await.map_err(net_error)
    }

    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ClientError> {
        self.net.read(self.id, buf).await.map_err(net_error)
    }
}

/// `fut`, or `Err(Timeout)` once `deadline` passes (one reactor timer: for connects, which
/// are rare; calls use their recorded deadline instead).
async fn before<T>(
    deadline: Instant,
    limit: std::time::Duration,
    fut: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    let mut fut = std::pin::pin!(fut);
    let mut timer = std::pin::pin!(carmine_reactor::sleep_until(deadline));
    poll_fn(|cx| {
        if let Poll::Ready(r) = fut.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(ClientError::Timeout(limit))),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

impl<S: NetStack + 'static> ShardConn<S> {
    /// Connects to `addr` over `net`, authenticates as `opts.client_id` and starts the
    /// connection's driver task on the current shard. Gives up at `deadline`.
    pub async fn connect(
        net: &AsyncNet<S>,
        addr: SocketAddrV4,
        opts: &ConnectOptions,
        deadline: Instant,
    ) -> Result<Self, ClientError> {
        let id = before(deadline, opts.connect_timeout, async {
            net.connect(addr).await.map_err(|e| ClientError::Connect {
                addr: addr.to_string(),
                source: Arc::new(std::io::Error::other(e)),
            })
        })
        .await?;
        let mut dec = FrameDecoder::new(opts.limits);
        let mut stream = NetStream { net, id };
        let session = match before(
            deadline,
            opts.connect_timeout,
            handshake::run(&mut stream, &mut dec, opts),
        )
        .await
        {
            Ok(s) => s,
            Err(e) => {
                let _ = net.with(|s| s.abort(id));
                return Err(e);
            }
        };
        dec.set_negotiated_version(session.version);
        debug!(%addr, version = session.version, "carmine connection authenticated (shard)");
        let state = Rc::new(RefCell::new(State {
            outbox: Vec::with_capacity(64 << 10),
            sent: 0,
            pending: HashMap::with_capacity(PENDING_CAPACITY),
            closed: None,
            driver: None,
            dropped: false,
        }));
        if let Err(e) = carmine_reactor::spawn_local(drive(net.clone(), id, dec, state.clone())) {
            let _ = net.with(|s| s.abort(id));
            return Err(ClientError::Closed(
                format!("cannot start the connection's task: {e}").into(),
            ));
        }
        Ok(ShardConn {
            peer: SocketAddr::V4(addr),
            encoder: carmine_wire::Encoder::new(session.version, opts.limits),
            state,
            _net: std::marker::PhantomData,
        })
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Why the connection closed, once it has.
    pub fn closed_reason(&self) -> Option<Arc<str>> {
        self.state.borrow().closed.clone()
    }

    pub fn is_closed(&self) -> bool {
        self.state.borrow().closed.is_some()
    }

    /// Sends `req` as `tid` and waits for its reply until `deadline` (enforced by
    /// [`ShardConn::expire`]). `tid` must not be in flight on this connection.
    pub async fn call(
        &self,
        tid: u64,
        req: &OpRequest<'_>,
        deadline: Instant,
    ) -> Result<Reply, ClientError> {
        {
            let mut st = self.state.borrow_mut();
            if let Some(reason) = &st.closed {
                return Err(ClientError::Closed(reason.clone()));
            }
            let msg = Message::OpRequest(*req);
            let len = self.encoder.frame_len(&msg);
            let start = st.outbox.len();
            st.outbox.resize(start + len, 0);
            match self.encoder.encode(tid, &msg, &mut st.outbox[start..]) {
                Ok(n) => st.outbox.truncate(start + n),
                Err(e) => {
                    // Refused before any byte was queued: the connection is intact.
                    st.outbox.truncate(start);
                    return Err(e.into());
                }
            }
            st.pending.insert(
                tid,
                Call {
                    kind: req.op.kind(),
                    deadline,
                    result: None,
                    waker: None,
                },
            );
            st.wake_driver();
        }
        poll_fn(|cx| {
            let mut st = self.state.borrow_mut();
            let Some(call) = st.pending.get_mut(&tid) else {
                return Poll::Ready(Err(ClientError::Closed("call forgotten".into())));
            };
            match call.result.take() {
                Some(r) => {
                    st.pending.remove(&tid);
                    Poll::Ready(r)
                }
                None => {
                    if !call.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        call.waker = Some(cx.waker().clone());
                    }
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Fails the calls whose deadline passed with [`ClientError::Timeout`] (`limit` is the
    /// figure the error names). A reply that arrives later is dropped.
    pub fn expire(&self, now: Instant, limit: std::time::Duration) {
        let mut st = self.state.borrow_mut();
        for call in st.pending.values_mut() {
            if call.result.is_none() && call.deadline <= now {
                call.result = Some(Err(ClientError::Timeout(limit)));
                if let Some(w) = call.waker.take() {
                    w.wake();
                }
            }
        }
    }
}

/// The connection's task: see the module docs. Returns once the connection failed or its
/// owner dropped it, with the socket given back to the stack.
async fn drive<S: NetStack>(
    net: AsyncNet<S>,
    id: ConnId,
    mut dec: FrameDecoder,
    state: Rc<RefCell<State>>,
) {
    poll_fn(|cx| {
        let mut st = state.borrow_mut();
        if st.dropped {
            st.close("connection dropped".into());
            let _ = net.with(|s| s.close(id));
            return Poll::Ready(());
        }
        // Send what the callers queued, as far as the send buffer takes it.
        while st.sent < st.outbox.len() {
            let from = st.sent;
            match net.with(|s| s.write(id, &st.outbox[from..])) {
                Ok(0) => break,
                Ok(n) => st.sent += n,
                Err(e) => return fail(&net, id, &mut st, format!("write failed: {e}")),
            }
        }
        if st.sent == st.outbox.len() {
            st.outbox.clear();
            st.sent = 0;
        }
        // Complete every whole reply, read more, until the stack has nothing buffered.
        loop {
            let drained = carmine_client::drain_replies(&mut dec, |tid, reply| {
                if let Some(call) = st.pending.get_mut(&tid) {
                    if call.result.is_none() {
                        call.result = Some(retry::reply_result(tid, call.kind, reply));
                        if let Some(w) = call.waker.take() {
                            w.wake();
                        }
                    }
                } else {
                    debug!(tid, "reply for a tid nobody waits for, dropped");
                }
            });
            if let Err(why) = drained {
                return fail(&net, id, &mut st, why.to_string());
            }
            // Never empty here: every whole frame was drained, and a maximum frame fits.
            match net.with(|s| s.read(id, dec.read_buf())) {
                Ok(0) => break,
                Ok(n) => dec.advance(n),
                Err(NetError::Eof) => {
                    return fail(&net, id, &mut st, "server closed the connection".into())
                }
                Err(e) => return fail(&net, id, &mut st, format!("read error: {e}")),
            }
        }
        if !st.driver.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            st.driver = Some(cx.waker().clone());
        }
        net.wake_on_work(cx);
        Poll::Pending
    })
    .await
}

fn fail<S: NetStack>(net: &AsyncNet<S>, id: ConnId, st: &mut State, why: String) -> Poll<()> {
    debug!(reason = %why, "shard connection closed");
    st.close(why.into());
    let _ = net.with(|s| s.abort(id));
    Poll::Ready(())
}
