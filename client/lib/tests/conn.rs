//! The connection layer against a scripted protocol peer on 127.0.0.1. The peer is test
//! scaffolding, not an OSD: it runs `carmine_wire::ServerConn` (the server side of the protocol
//! the OSD messenger uses, real handshake included) and answers ops by a per-test script, so each test can make the server reorder, refuse, stall
//! or send garbage. Every test is bounded by a timeout; peers are aborted by a Drop guard.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use carmine_client::*;
use carmine_wire::{
    Encoder, FrameDecoder, HandshakeError, ListPage, Message, NameList, Nonce, OpKind, OpReply,
    RejectReason, ReplyBody, ServerConn, ServerEvent, ServerHandshake, VersionRange, VERSION_MIN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const KEY: [u8; 32] = [0x42; 32];
const ID: &str = "client.test";
const L: Limits = Limits::DEFAULT;
const TEST_LIMIT: Duration = Duration::from_secs(20);

/// What the peer does after the handshake, given each request (owned copy) in arrival order.
#[derive(Clone, Copy)]
enum Script {
    /// Collect `n` requests, then answer them in reverse order.
    Reverse(usize),
    /// Answer every request with this error.
    Fail(OpError),
    /// Read requests, never answer.
    Silent,
    /// Answer the first request with bytes that are not a frame.
    Garbage,
    /// Close right after the handshake.
    Hangup,
    /// Answer a request with a reply of the wrong kind.
    WrongKind,
    /// Answer the first request (a stat) only after this delay, later ones at once.
    SlowFirst(Duration),
}

struct Peer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a peer that accepts one connection and knows one client: `ID` with `KEY`.
async fn peer(script: Script) -> Peer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        serve(&mut s, script).await;
    });
    Peer { addr, task }
}

async fn read_msg<R>(
    s: &mut TcpStream,
    dec: &mut FrameDecoder,
    f: impl FnOnce(u64, &Message<'_>) -> R,
) -> Option<R> {
    loop {
        if let Some(frame) = dec.next_frame().unwrap() {
            let msg = frame.message(&L).unwrap();
            return Some(f(frame.header.tid, &msg));
        }
        let n = s.read(dec.read_buf()).await.unwrap();
        if n == 0 {
            return None;
        }
        dec.advance(n);
    }
}

async fn send(s: &mut TcpStream, version: u8, tid: u64, msg: &Message<'_>) {
    let enc = Encoder::new(version, L);
    let mut buf = vec![0u8; enc.frame_len(msg)];
    enc.encode(tid, msg, &mut buf).unwrap();
    s.write_all(&buf).await.unwrap();
}

/// Owned copy of a request, for the scripts.
struct Req {
    tid: u64,
    kind: OpKind,
    object: String,
}

/// The peer: `ServerConn` (the sans-I/O server side the OSD messenger uses) over a socket.
async fn serve(s: &mut TcpStream, script: Script) {
    let keys: HashMap<String, AuthKey> = HashMap::from([(ID.to_owned(), AuthKey::new(KEY))]);
    let mut conn = ServerConn::new(Nonce::random().unwrap(), L);
    let mut out = vec![0u8; 256];
    let mut held = Vec::new();
    loop {
        loop {
            let req = match conn.poll(&keys, &mut out) {
                Ok(None) => break,
                Ok(Some(ServerEvent::Send(n))) => {
                    s.write_all(&out[..n]).await.unwrap();
                    continue;
                }
                Ok(Some(ServerEvent::Authenticated(n))) => {
                    s.write_all(&out[..n]).await.unwrap();
                    if let Script::Hangup = script {
                        return;
                    }
                    continue;
                }
                Ok(Some(ServerEvent::Op { tid, request })) => Req {
                    tid,
                    kind: request.op.kind(),
                    object: request.op.object().unwrap_or("").to_owned(),
                },
                // The client library sends no replica ops.
                Ok(Some(ServerEvent::RepOp { .. })) => {
                    panic!("a client sent a replica op")
                }
                Err(e) => {
                    let _ = s.write_all(&out[..e.farewell]).await;
                    return;
                }
            };
            act(s, &conn, script, req, &mut held).await;
        }
        let n = s.read(conn.decoder().read_buf()).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        conn.decoder().advance(n);
    }
}

async fn reply(s: &mut TcpStream, conn: &ServerConn, tid: u64, r: &OpReply<'_>) {
    let mut buf = vec![0u8; 64 << 10];
    let n = conn.encode_reply(tid, r, &mut buf).unwrap();
    s.write_all(&buf[..n]).await.unwrap();
}

/// What the script does with one request.
async fn act(s: &mut TcpStream, conn: &ServerConn, script: Script, req: Req, held: &mut Vec<Req>) {
    match script {
        Script::Reverse(n) => {
            held.push(req);
            if held.len() < n {
                return;
            }
            for r in held.drain(..).rev() {
                // A read answers with the object name, a stat with its length, so the test
                // can tell which reply went to which call.
                let names = ["a", "b"];
                let answer = match r.kind {
                    OpKind::Read => OpReply::ok(ReplyBody::Read {
                        data: r.object.as_bytes(),
                    }),
                    OpKind::Stat => OpReply::ok(ReplyBody::Stat {
                        size: r.object.len() as u64,
                    }),
                    OpKind::List => OpReply::ok(ReplyBody::List(ListPage {
                        names: NameList::from_slice(&names),
                        next_cursor: Some(b"b"),
                    })),
                    OpKind::Write => OpReply::ok(ReplyBody::Written),
                    OpKind::WriteFull => OpReply::ok(ReplyBody::WrittenFull),
                    OpKind::Remove => OpReply::ok(ReplyBody::Removed),
                };
                reply(s, conn, r.tid, &answer).await;
            }
        }
        Script::Fail(e) => reply(s, conn, req.tid, &OpReply::err(e)).await,
        Script::Silent | Script::Hangup => {}
        Script::Garbage => {
            s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                .await
                .unwrap();
        }
        Script::SlowFirst(delay) => {
            // The first call stats "first" (tids start at a random value).
            if req.object == "first" {
                tokio::time::sleep(delay).await;
            }
            let size = req.object.len() as u64;
            reply(s, conn, req.tid, &OpReply::ok(ReplyBody::Stat { size })).await;
        }
        Script::WrongKind => {
            reply(s, conn, req.tid, &OpReply::ok(ReplyBody::Stat { size: 1 })).await;
        }
    }
}

fn opts() -> ConnectOptions {
    let mut o = ConnectOptions::new(ID, AuthKey::new(KEY));
    o.op_timeout = Duration::from_secs(5);
    o
}

fn req(op: Op<'_>) -> OpRequest<'_> {
    OpRequest {
        pool: PoolId(1),
        pg: PgId(7),
        epoch: Epoch(3),
        op,
    }
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("test took too long")
}

#[tokio::test]
async fn authenticates_and_pipelines_out_of_order_replies() {
    bounded(async {
        let p = peer(Script::Reverse(16)).await;
        let conn = Connection::connect(p.addr, &opts()).await.unwrap();
        assert_eq!(conn.session().client_id, ID);
        let names: Vec<String> = (0..16)
            .map(|i| format!("obj-{i:03}-{}", "x".repeat(i)))
            .collect();
        // 16 calls in flight at once; the peer answers only when it has all 16, last first.
        let calls = names.iter().enumerate().map(|(i, n)| {
            let conn = &conn;
            async move {
                if i % 2 == 0 {
                    let r = conn
                        .call(&req(Op::Read {
                            object: n,
                            offset: 0,
                            len: 4096,
                        }))
                        .await;
                    assert_eq!(r.unwrap(), Reply::Read(n.as_bytes().to_vec()));
                } else {
                    let r = conn.call(&req(Op::Stat { object: n })).await;
                    assert_eq!(
                        r.unwrap(),
                        Reply::Stat {
                            size: n.len() as u64
                        }
                    );
                }
            }
        });
        futures_join_all(calls).await;
        assert!(!conn.is_closed());
    })
    .await;
}

#[tokio::test]
async fn list_reply_is_owned() {
    bounded(async {
        let p = peer(Script::Reverse(1)).await;
        let conn = Connection::connect(p.addr, &opts()).await.unwrap();
        let r = conn
            .call(&req(Op::List {
                cursor: b"",
                max_entries: 10,
            }))
            .await
            .unwrap();
        assert_eq!(
            r,
            Reply::List {
                names: vec!["a".into(), "b".into()],
                next_cursor: Some(b"b".to_vec())
            }
        );
    })
    .await;
}

#[tokio::test]
async fn wrong_key_is_refused() {
    bounded(async {
        let p = peer(Script::Hangup).await;
        let mut o = opts();
        o.key = AuthKey::new([0x43; 32]);
        let err = Connection::connect(p.addr, &o).await.unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Handshake(HandshakeError::Rejected {
                    reason: RejectReason::BadCredentials,
                    ..
                })
            ),
            "{err}"
        );
    })
    .await;
}

#[tokio::test]
async fn unknown_client_is_refused() {
    bounded(async {
        let p = peer(Script::Hangup).await;
        let mut o = opts();
        o.client_id = "client.nobody".into();
        let err = Connection::connect(p.addr, &o).await.unwrap_err();
        assert!(matches!(
            err,
            ClientError::Handshake(HandshakeError::Rejected {
                reason: RejectReason::BadCredentials,
                ..
            })
        ));
    })
    .await;
}

#[tokio::test]
async fn stale_map_carries_the_osd_epoch() {
    bounded(async {
        let p = peer(Script::Fail(OpError::StaleMap {
            osd_epoch: Epoch(99),
        }))
        .await;
        let conn = Connection::connect(p.addr, &opts()).await.unwrap();
        let err = conn
            .call(&req(Op::Remove { object: "o" }))
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            ClientError::Op(OpError::StaleMap {
                osd_epoch: Epoch(99)
            })
        ));
        // An op error leaves the connection usable.
        assert!(!conn.is_closed());
        let err = conn.call(&req(Op::Stat { object: "o" })).await.unwrap_err();
        assert!(matches!(err, ClientError::Op(OpError::StaleMap { .. })));
    })
    .await;
}

#[tokio::test]
async fn op_timeout_leaves_the_connection_open() {
    bounded(async {
        let p = peer(Script::Silent).await;
        let mut o = opts();
        o.op_timeout = Duration::from_millis(200);
        let conn = Connection::connect(p.addr, &o).await.unwrap();
        let err = conn.call(&req(Op::Stat { object: "o" })).await.unwrap_err();
        assert!(matches!(err, ClientError::Timeout(_)), "{err}");
        assert!(!conn.is_closed(), "a slow reply is not a broken stream");
    })
    .await;
}

#[tokio::test]
async fn late_reply_after_a_timeout_is_dropped_and_the_next_call_matches() {
    bounded(async {
        // Margins of 0.5 s either way: call 1 times out at 1 s, its reply comes at 1.5 s,
        // call 2 (sent at ~1 s) is answered right after, well inside its own 1 s.
        let p = peer(Script::SlowFirst(Duration::from_millis(1500))).await;
        let mut o = opts();
        o.op_timeout = Duration::from_secs(1);
        let conn = Connection::connect(p.addr, &o).await.unwrap();
        let err = conn
            .call(&req(Op::Stat { object: "first" }))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Timeout(_)), "{err}");
        let r = conn
            .call(&req(Op::Stat { object: "second!" }))
            .await
            .unwrap();
        assert_eq!(
            r,
            Reply::Stat { size: 7 },
            "the late reply to call 1 must not be taken"
        );
    })
    .await;
}

#[tokio::test]
async fn garbage_from_the_server_closes_with_a_reason() {
    bounded(async {
        let p = peer(Script::Garbage).await;
        let conn = Connection::connect(p.addr, &opts()).await.unwrap();
        let err = conn.call(&req(Op::Stat { object: "o" })).await.unwrap_err();
        let ClientError::Closed(reason) = err else {
            panic!("expected Closed, got {err}")
        };
        assert!(reason.contains("bad magic"), "{reason}");
        // Later calls fail fast with the same reason.
        let again = conn.call(&req(Op::Stat { object: "o" })).await.unwrap_err();
        assert!(matches!(again, ClientError::Closed(r) if r == reason));
    })
    .await;
}

#[tokio::test]
async fn server_hangup_fails_pending_and_later_calls() {
    bounded(async {
        let p = peer(Script::Hangup).await;
        let conn = Connection::connect(p.addr, &opts()).await.unwrap();
        let err = conn.call(&req(Op::Stat { object: "o" })).await.unwrap_err();
        assert!(
            matches!(err, ClientError::Closed(_) | ClientError::Io(_)),
            "{err}"
        );
        // The reader noticed EOF by now (the call above waited for it or failed writing).
        let err = conn.call(&req(Op::Stat { object: "o" })).await.unwrap_err();
        assert!(matches!(err, ClientError::Closed(_)), "{err}");
    })
    .await;
}

#[tokio::test]
async fn reply_of_the_wrong_kind_is_a_protocol_error() {
    bounded(async {
        let p = peer(Script::WrongKind).await;
        let conn = Connection::connect(p.addr, &opts()).await.unwrap();
        let err = conn
            .call(&req(Op::Read {
                object: "o",
                offset: 0,
                len: 1,
            }))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err}");
    })
    .await;
}

#[tokio::test]
async fn oversize_request_is_refused_locally() {
    bounded(async {
        let p = peer(Script::Reverse(1)).await;
        let conn = Connection::connect(p.addr, &opts()).await.unwrap();
        let big = vec![0u8; L.max_io_size as usize + 1];
        let err = conn
            .call(&req(Op::WriteFull {
                object: "o",
                data: &big,
            }))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Encode(_)), "{err}");
        assert!(!conn.is_closed(), "nothing was sent, the stream is intact");
        let data = vec![1u8; 4096];
        let r = conn
            .call(&req(Op::Write {
                object: "o",
                offset: 0,
                data: &data,
            }))
            .await
            .unwrap();
        assert_eq!(r, Reply::Written);
        // Large enough to go out head + data, uncopied; the peer's crc check must pass.
        let data = vec![2u8; 1 << 20];
        let r = conn
            .call(&req(Op::WriteFull {
                object: "big",
                data: &data,
            }))
            .await
            .unwrap();
        assert_eq!(r, Reply::WrittenFull);
    })
    .await;
}

#[tokio::test]
async fn no_common_version_is_reported() {
    bounded(async {
        // A peer that only speaks a future version.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut dec = FrameDecoder::new(L);
            let hs = ServerHandshake::new(Nonce([0; 32]), L)
                .with_versions(VersionRange::new(200, 201).unwrap());
            let r = read_msg(&mut s, &mut dec, |_, m| hs.on_message(m))
                .await
                .unwrap();
            let reject = r.unwrap_err().reject().unwrap();
            send(&mut s, VERSION_MIN, 0, &Message::AuthReject(reject)).await;
        });
        let _guard = Peer { addr, task };
        let err = Connection::connect(addr, &opts()).await.unwrap_err();
        assert!(matches!(
            err,
            ClientError::Handshake(HandshakeError::Rejected {
                reason: RejectReason::NoCommonVersion,
                ..
            })
        ));
    })
    .await;
}

#[tokio::test]
async fn connect_to_a_closed_port_fails() {
    bounded(async {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let err = Connection::connect(addr, &opts()).await.unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    })
    .await;
}

/// Runs futures concurrently on the current task (no extra dependency for `join_all`).
async fn futures_join_all<F: std::future::Future<Output = ()>>(futs: impl Iterator<Item = F>) {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}
