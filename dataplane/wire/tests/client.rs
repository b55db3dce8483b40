//! `ClientConn` (an OSD's outbound replica connection) against `ServerConn` (the replica's
//! messenger), both sans I/O, wired together in memory: the handshake, replica ops and their
//! replies through both ends, refusals, and no allocation per frame once open.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;

use carmine_wire::*;

/// Counts this thread's allocations, to check the steady state allocates nothing.
struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: delegates to the system allocator; the counter is a const-initialised thread-local
// `Cell` whose access never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

const L: Limits = Limits::DEFAULT;
const OSD: &str = "osd.1";
const KEY: [u8; 32] = [0x11; 32];

fn keyring() -> HashMap<String, AuthKey> {
    HashMap::from([(OSD.to_owned(), AuthKey::new(KEY))])
}

fn client(key: [u8; 32]) -> ClientConn {
    ClientConn::new(OSD, AuthKey::new(key), Nonce([0xc1; 32]), L).unwrap()
}

fn server() -> ServerConn {
    ServerConn::new(Nonce([0x5e; 32]), L)
}

/// Copies all of `bytes` into a decoder (the tests' frames always fit).
fn deliver(dec: &mut FrameDecoder, bytes: &[u8]) {
    assert_eq!(dec.feed(bytes), bytes.len());
}

fn rep_op<'a>(object: &'a str, data: &'a [u8], seq: u64) -> RepOp<'a> {
    RepOp {
        pool: PoolId(2),
        pg: PgId(5),
        epoch: Epoch(12),
        interval_since: Epoch(10),
        version: Version {
            epoch: Epoch(12),
            seq,
        },
        reqid: ReqId {
            client: "client.admin",
            tid: 1000 + seq,
        },
        op: RepMutation::WriteFull { object, data },
    }
}

/// Runs the handshake between the two ends, byte-exact through both decoders; returns the
/// server's final result and the client's.
fn handshake(
    c: &mut ClientConn,
    s: &mut ServerConn,
    keys: &HashMap<String, AuthKey>,
) -> (Result<(), ServerError>, Result<(), ConnError>) {
    let mut cout = [0u8; 512];
    let mut sout = [0u8; 128];
    // Hello.
    let Ok(Some(ClientEvent::Send(n))) = c.poll(&mut cout) else {
        panic!("the first poll writes the Hello")
    };
    assert!(matches!(c.poll(&mut cout), Ok(None)), "then waits");
    assert!(matches!(
        c.encode_rep_op(1, &rep_op("o", b"x", 1), &mut cout),
        Err(ConnError::NotAuthenticated)
    ));
    deliver(s.decoder(), &cout[..n]);
    // Challenge.
    let Ok(Some(ServerEvent::Send(n))) = s.poll(keys, &mut sout) else {
        panic!("challenge")
    };
    deliver(c.decoder(), &sout[..n]);
    // Auth.
    let Ok(Some(ClientEvent::Send(n))) = c.poll(&mut cout) else {
        panic!("auth")
    };
    assert!(!c.is_open());
    deliver(s.decoder(), &cout[..n]);
    // AuthOk or AuthReject.
    let (farewell, server) = match s.poll(keys, &mut sout) {
        Ok(Some(ServerEvent::Authenticated(n))) => (n, Ok(())),
        Ok(other) => panic!("{other:?}"),
        Err(e) => (e.farewell, Err(e)),
    };
    deliver(c.decoder(), &sout[..farewell]);
    let client = match c.poll(&mut cout) {
        Ok(Some(ClientEvent::Authenticated)) => Ok(()),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e),
    };
    (server, client)
}

#[test]
fn rep_ops_and_replies_through_both_ends() {
    let keys = keyring();
    let (mut c, mut s) = (client(KEY), server());
    assert_eq!(s.peer_id(), None);
    let (srv, cli) = handshake(&mut c, &mut s, &keys);
    srv.unwrap();
    cli.unwrap();
    assert!(c.is_open());
    assert_eq!(c.session().unwrap().client_id, OSD);
    // The replica's messenger checks the role of this id; the wire crate only reports it.
    assert_eq!(s.peer_id(), Some(OSD));

    // Three replica ops pipelined in one send, one zero-copy (head, then the data slice).
    let data = vec![0x5au8; 4096];
    let ops = [
        rep_op("a", &data, 1),
        RepOp {
            op: RepMutation::Write {
                object: "b",
                offset: 8192,
                data: &data[..100],
            },
            ..rep_op("b", &[], 2)
        },
        RepOp {
            op: RepMutation::Remove { object: "a" },
            ..rep_op("a", &[], 3)
        },
    ];
    let mut wire = vec![0u8; 16 << 10];
    let mut len = 0;
    len += c.encode_rep_op(101, &ops[0], &mut wire[len..]).unwrap();
    let (head, tail) = c
        .encode_rep_op_head(102, &ops[1], &mut wire[len..])
        .unwrap();
    assert_eq!(tail, &data[..100]);
    len += head;
    wire[len..len + tail.len()].copy_from_slice(tail);
    len += tail.len();
    len += c.encode_rep_op(103, &ops[2], &mut wire[len..]).unwrap();
    deliver(s.decoder(), &wire[..len]);

    let replies = [
        RepReply::OK,
        RepReply::err(RepError::StaleInterval {
            replica_epoch: Epoch(13),
            interval_since: Epoch(13),
        }),
        RepReply::err(RepError::NotMember),
    ];
    let mut back = Vec::new();
    let mut sout = [0u8; 128];
    for (i, tid) in (101..=103).enumerate() {
        match s.poll(&keys, &mut sout).unwrap() {
            Some(ServerEvent::RepOp { tid: t, op }) => {
                assert_eq!(t, tid);
                assert_eq!(op, ops[i]);
            }
            other => panic!("{other:?}"),
        }
        let n = s.encode_rep_reply(tid, &replies[i], &mut sout).unwrap();
        back.extend_from_slice(&sout[..n]);
    }
    assert!(s.poll(&keys, &mut sout).unwrap().is_none());

    // A client op on the same connection, answered by the replica.
    let n = c
        .encode_op(
            104,
            &OpRequest {
                pool: PoolId(2),
                pg: PgId(5),
                epoch: Epoch(12),
                op: Op::Stat { object: "a" },
            },
            &mut wire,
        )
        .unwrap();
    deliver(s.decoder(), &wire[..n]);
    assert!(matches!(
        s.poll(&keys, &mut sout).unwrap(),
        Some(ServerEvent::Op { tid: 104, .. })
    ));
    let n = s
        .encode_reply(104, &OpReply::err(OpError::NotFound), &mut sout)
        .unwrap();
    back.extend_from_slice(&sout[..n]);

    // The primary sees each answer with its tid, fed one byte at a time.
    let mut cout = [0u8; 512];
    let mut got = Vec::new();
    for b in &back {
        deliver(c.decoder(), std::slice::from_ref(b));
        while let Some(ev) = c.poll(&mut cout).unwrap() {
            got.push(match ev {
                ClientEvent::RepReply { tid, reply } => (tid, Some(reply), None),
                ClientEvent::OpReply { tid, reply } => (tid, None, Some(reply.result.err())),
                other => panic!("{other:?}"),
            });
        }
    }
    assert_eq!(
        got,
        [
            (101, Some(replies[0]), None),
            (102, Some(replies[1]), None),
            (103, Some(replies[2]), None),
            (104, None, Some(Some(OpError::NotFound))),
        ]
    );
}

#[test]
fn steady_state_allocates_nothing() {
    let keys = keyring();
    let (mut c, mut s) = (client(KEY), server());
    let (srv, cli) = handshake(&mut c, &mut s, &keys);
    srv.unwrap();
    cli.unwrap();
    let data = vec![7u8; 4096];
    let mut wire = vec![0u8; 8192];
    let mut sout = [0u8; 128];
    let mut cout = [0u8; 512];
    let before = allocs();
    for seq in 1..=200u64 {
        let op = rep_op("obj", &data, seq);
        let n = c.encode_rep_op(seq, &op, &mut wire).unwrap();
        assert_eq!(s.decoder().feed(&wire[..n]), n);
        let Some(ServerEvent::RepOp { tid, op: got }) = s.poll(&keys, &mut sout).unwrap() else {
            panic!("rep op")
        };
        assert_eq!((tid, got.version.seq), (seq, seq));
        let n = s.encode_rep_reply(tid, &RepReply::OK, &mut sout).unwrap();
        assert_eq!(c.decoder().feed(&sout[..n]), n);
        let Some(ClientEvent::RepReply { tid, reply }) = c.poll(&mut cout).unwrap() else {
            panic!("rep reply")
        };
        assert_eq!((tid, reply), (seq, RepReply::OK));
    }
    assert_eq!(
        allocs() - before,
        0,
        "allocations in 200 replica round trips"
    );
}

#[test]
fn wrong_key_is_rejected_on_both_ends() {
    let keys = keyring();
    let (mut c, mut s) = (client([0x22; 32]), server());
    let (srv, cli) = handshake(&mut c, &mut s, &keys);
    assert_eq!(
        srv.unwrap_err().error,
        ConnError::Handshake(HandshakeError::BadCredentials)
    );
    assert_eq!(
        cli.unwrap_err(),
        ConnError::Handshake(HandshakeError::Rejected {
            reason: RejectReason::BadCredentials,
            server_versions: VersionRange::SUPPORTED,
        })
    );
    assert!(c.is_closed() && s.is_closed());
    assert_eq!(s.peer_id(), None);
    assert_eq!(c.poll(&mut [0u8; 512]).unwrap_err(), ConnError::Closed);
    assert_eq!(
        c.encode_rep_op(1, &rep_op("o", b"", 1), &mut [0u8; 512])
            .unwrap_err(),
        ConnError::Closed
    );
}

#[test]
fn unknown_peer_is_rejected_like_a_wrong_key() {
    let (mut c, mut s) = (client(KEY), server());
    let (srv, cli) = handshake(&mut c, &mut s, &HashMap::new());
    assert_eq!(
        srv.unwrap_err().error,
        ConnError::Handshake(HandshakeError::BadCredentials)
    );
    assert!(matches!(
        cli.unwrap_err(),
        ConnError::Handshake(HandshakeError::Rejected {
            reason: RejectReason::BadCredentials,
            ..
        })
    ));
}

fn frame(version: u8, tid: u64, msg: &Message<'_>) -> Vec<u8> {
    let enc = Encoder::new(version, L);
    let mut buf = vec![0u8; enc.frame_len(msg)];
    enc.encode(tid, msg, &mut buf).unwrap();
    buf
}

/// A client that sent its Hello and got a Challenge (answered with Auth): awaiting the verdict.
fn awaiting_verdict() -> ClientConn {
    let mut c = client(KEY);
    let mut out = [0u8; 512];
    assert!(matches!(c.poll(&mut out), Ok(Some(ClientEvent::Send(_)))));
    let challenge = Message::Challenge(Challenge {
        version: VERSION_MAX,
        server_nonce: Nonce([1; 32]),
    });
    deliver(c.decoder(), &frame(VERSION_MAX, 0, &challenge));
    assert!(matches!(c.poll(&mut out), Ok(Some(ClientEvent::Send(_)))));
    c
}

#[test]
fn a_server_without_the_key_is_refused() {
    let mut c = awaiting_verdict();
    let forged = Message::AuthOk(AuthOk {
        server_proof: [0; 32],
    });
    deliver(c.decoder(), &frame(VERSION_MAX, 0, &forged));
    assert_eq!(
        c.poll(&mut [0u8; 512]).unwrap_err(),
        ConnError::Handshake(HandshakeError::BadServerProof)
    );
    assert!(c.is_closed());
}

#[test]
fn replies_before_authentication_are_refused() {
    let mut c = awaiting_verdict();
    deliver(
        c.decoder(),
        &frame(VERSION_MAX, 1, &Message::RepReply(RepReply::OK)),
    );
    assert_eq!(
        c.poll(&mut [0u8; 512]).unwrap_err(),
        ConnError::Handshake(HandshakeError::Unexpected {
            expected: "AuthOk",
            got: FrameType::RepReply
        })
    );
}

#[test]
fn requests_and_handshake_frames_at_an_open_client_are_refused() {
    let keys = keyring();
    let data = [1u8; 8];
    let op = rep_op("o", &data, 1);
    for msg in [
        Message::RepOp(op),
        Message::OpRequest(OpRequest {
            pool: PoolId(0),
            pg: PgId(0),
            epoch: Epoch(0),
            op: Op::Remove { object: "o" },
        }),
        Message::Challenge(Challenge {
            version: 1,
            server_nonce: Nonce([0; 32]),
        }),
    ] {
        let (mut c, mut s) = (client(KEY), server());
        let (srv, cli) = handshake(&mut c, &mut s, &keys);
        srv.unwrap();
        cli.unwrap();
        deliver(c.decoder(), &frame(VERSION_MAX, 1, &msg));
        assert_eq!(
            c.poll(&mut [0u8; 512]).unwrap_err(),
            ConnError::Unexpected(msg.frame_type())
        );
        assert!(c.is_closed());
    }
}

#[test]
fn rep_op_before_authentication_is_refused_by_the_server() {
    let keys = keyring();
    let data = [1u8; 8];
    let op = Message::RepOp(rep_op("o", &data, 1));
    let mut s = server();
    deliver(s.decoder(), &frame(VERSION_MIN, 1, &op));
    let mut out = [0u8; 128];
    let e = s.poll(&keys, &mut out).unwrap_err();
    assert_eq!(
        e.error,
        ConnError::Handshake(HandshakeError::Unexpected {
            expected: "Hello",
            got: FrameType::RepOp
        })
    );
    let Decoded::Frame { frame: f, .. } = decode_frame(&out[..e.farewell], &L).unwrap() else {
        panic!("farewell")
    };
    assert!(matches!(
        f.message(&L).unwrap(),
        Message::AuthReject(AuthReject {
            reason: RejectReason::Protocol,
            ..
        })
    ));
    // Also after the Hello, in place of the Auth.
    let (mut c, mut s) = (client(KEY), server());
    let mut cout = [0u8; 512];
    let Ok(Some(ClientEvent::Send(n))) = c.poll(&mut cout) else {
        panic!()
    };
    deliver(s.decoder(), &cout[..n]);
    assert!(matches!(
        s.poll(&keys, &mut out),
        Ok(Some(ServerEvent::Send(_)))
    ));
    deliver(s.decoder(), &frame(VERSION_MAX, 1, &op));
    assert!(matches!(
        s.poll(&keys, &mut out).unwrap_err().error,
        ConnError::Handshake(HandshakeError::Unexpected {
            got: FrameType::RepOp,
            ..
        })
    ));
    assert_eq!(s.peer_id(), None);
}

#[test]
fn replies_arriving_at_a_server_are_protocol_errors() {
    let keys = keyring();
    for msg in [
        Message::RepReply(RepReply::OK),
        Message::OpReply(OpReply::ok(ReplyBody::Written)),
    ] {
        let (mut c, mut s) = (client(KEY), server());
        let (srv, cli) = handshake(&mut c, &mut s, &keys);
        srv.unwrap();
        cli.unwrap();
        deliver(s.decoder(), &frame(VERSION_MAX, 1, &msg));
        let e = s.poll(&keys, &mut [0u8; 128]).unwrap_err();
        assert_eq!(e.error, ConnError::Unexpected(msg.frame_type()));
        assert_eq!(e.farewell, 0);
        assert!(s.is_closed());
    }
}

#[test]
fn garbage_from_the_server_closes_the_client() {
    let mut c = client(KEY);
    let mut out = [0u8; 512];
    assert!(matches!(c.poll(&mut out), Ok(Some(ClientEvent::Send(_)))));
    deliver(c.decoder(), b"HTTP/1.1 400 Bad Request\r\n");
    let e = c.poll(&mut out).unwrap_err();
    assert!(matches!(
        e,
        ConnError::Decode(DecodeError::Frame(FrameError::BadMagic { .. }))
    ));
    assert!(e.to_string().contains("bad magic"), "{e}");
    assert!(c.is_closed());
}

#[test]
fn an_invalid_id_is_refused_at_construction() {
    assert!(matches!(
        ClientConn::new("", AuthKey::new(KEY), Nonce([0; 32]), L),
        Err(HandshakeError::InvalidClientId(MessageError::Empty { .. }))
    ));
}
