//! `ServerConn`, the sans-I/O server side, driven by the client handshake through real bytes.

use std::collections::HashMap;

use carmine_wire::*;

const L: Limits = Limits::DEFAULT;
const ID: &str = "client.osdtest";

fn keyring() -> HashMap<String, AuthKey> {
    HashMap::from([(ID.to_owned(), AuthKey::new([9; 32]))])
}

fn frame(version: u8, tid: u64, msg: &Message<'_>) -> Vec<u8> {
    let enc = Encoder::new(version, L);
    let mut buf = vec![0u8; enc.frame_len(msg)];
    enc.encode(tid, msg, &mut buf).unwrap();
    buf
}

/// Parses one whole frame the server wrote, as the client would.
fn parse(bytes: &[u8], f: impl FnOnce(&Message<'_>)) {
    let Decoded::Frame { frame, len } = decode_frame(bytes, &L).unwrap() else {
        panic!("server wrote a partial frame")
    };
    assert_eq!(len, bytes.len());
    f(&frame.message(&L).unwrap());
}

/// Runs the handshake with `key`; returns the server (open or closed) and the last result.
fn handshake(key: AuthKey) -> (ServerConn, Result<u8, ServerError>, Vec<u8>) {
    let keys = keyring();
    let mut srv = ServerConn::new(Nonce([5; 32]), L);
    let mut out = [0u8; 128];
    let client = ClientHandshake::new(ID, key, Nonce([6; 32]), &L).unwrap();
    srv.decoder()
        .feed(&frame(VERSION_MIN, 0, &Message::Hello(client.hello())));
    let client = client.sent_hello();
    let Some(ServerEvent::Send(n)) = srv.poll(&keys, &mut out).unwrap() else {
        panic!("expected a challenge to send")
    };
    let mut verdict = None;
    parse(&out[..n], |m| verdict = Some(client.on_message(m).unwrap()));
    let verdict = verdict.unwrap();
    let v = verdict.version();
    assert!(
        srv.poll(&keys, &mut out).unwrap().is_none(),
        "nothing more buffered"
    );
    srv.decoder()
        .feed(&frame(v, 0, &Message::Auth(verdict.auth())));
    match srv.poll(&keys, &mut out) {
        Ok(Some(ServerEvent::Authenticated(n))) => {
            let mut session = None;
            parse(&out[..n], |m| {
                session = Some(verdict.on_message(m).unwrap())
            });
            assert_eq!(session.unwrap().client_id, ID);
            (srv, Ok(v), out[..n].to_vec())
        }
        Ok(other) => panic!("unexpected {other:?}"),
        Err(e) => {
            let farewell = out[..e.farewell].to_vec();
            (srv, Err(e), farewell)
        }
    }
}

#[test]
fn handshake_then_ops_borrowed_from_the_buffer() {
    let (mut srv, v, _) = handshake(AuthKey::new([9; 32]));
    let v = v.unwrap();
    assert_eq!(srv.session().unwrap().client_id, ID);
    let keys = keyring();
    let mut out = [0u8; 256];
    let data = [0xabu8; 100];
    let write = Message::OpRequest(OpRequest {
        pool: PoolId(1),
        pg: PgId(2),
        epoch: Epoch(3),
        op: Op::Write {
            object: "o",
            offset: 0,
            data: &data,
        },
    });
    let stat = Message::OpRequest(OpRequest {
        pool: PoolId(1),
        pg: PgId(2),
        epoch: Epoch(3),
        op: Op::Stat { object: "o" },
    });
    // Two frames in one receive: two events, in order.
    let mut bytes = frame(v, 10, &write);
    bytes.extend(frame(v, 11, &stat));
    srv.decoder().feed(&bytes);
    match srv.poll(&keys, &mut out).unwrap() {
        Some(ServerEvent::Op { tid: 10, request }) => {
            assert_eq!(Message::OpRequest(request), write)
        }
        other => panic!("{other:?}"),
    }
    match srv.poll(&keys, &mut out).unwrap() {
        Some(ServerEvent::Op { tid: 11, request }) => {
            assert_eq!(Message::OpRequest(request), stat)
        }
        other => panic!("{other:?}"),
    }
    assert!(srv.poll(&keys, &mut out).unwrap().is_none());
    // Replies go out with the negotiated version and the request's tid.
    let n = srv
        .encode_reply(11, &OpReply::ok(ReplyBody::Stat { size: 100 }), &mut out)
        .unwrap();
    let Decoded::Frame { frame, .. } = decode_frame(&out[..n], &L).unwrap() else {
        panic!()
    };
    assert_eq!(frame.header.tid, 11);
    assert_eq!(frame.header.version, v);
    let (head, tail) = srv
        .encode_reply_head(12, &OpReply::ok(ReplyBody::Read { data: &data }), &mut out)
        .unwrap();
    assert_eq!(tail, &data[..]);
    let mut joined = out[..head].to_vec();
    joined.extend_from_slice(tail);
    assert!(matches!(
        decode_frame(&joined, &L).unwrap(),
        Decoded::Frame { .. }
    ));
}

#[test]
fn wrong_key_gets_a_reject_frame_and_closes() {
    let (mut srv, r, farewell) = handshake(AuthKey::new([8; 32]));
    let e = r.unwrap_err();
    assert_eq!(
        e.error,
        ConnError::Handshake(HandshakeError::BadCredentials)
    );
    parse(&farewell, |m| {
        assert!(matches!(
            m,
            Message::AuthReject(AuthReject {
                reason: RejectReason::BadCredentials,
                ..
            })
        ))
    });
    assert!(srv.is_closed());
    assert!(srv.session().is_none());
    let e = srv.poll(&keyring(), &mut [0u8; 128]).unwrap_err();
    assert_eq!(e.error, ConnError::Closed);
}

#[test]
fn op_before_authentication_is_refused() {
    let mut srv = ServerConn::new(Nonce([5; 32]), L);
    let op = Message::OpRequest(OpRequest {
        pool: PoolId(0),
        pg: PgId(0),
        epoch: Epoch(0),
        op: Op::Remove { object: "x" },
    });
    srv.decoder().feed(&frame(VERSION_MIN, 1, &op));
    let mut out = [0u8; 128];
    let e = srv.poll(&keyring(), &mut out).unwrap_err();
    assert!(matches!(
        e.error,
        ConnError::Handshake(HandshakeError::Unexpected {
            got: FrameType::OpRequest,
            ..
        })
    ));
    parse(&out[..e.farewell], |m| {
        assert!(matches!(
            m,
            Message::AuthReject(AuthReject {
                reason: RejectReason::Protocol,
                ..
            })
        ))
    });
}

#[test]
fn garbage_closes_with_a_decode_error() {
    let mut srv = ServerConn::new(Nonce([5; 32]), L);
    srv.decoder().feed(b"GET / HTTP/1.1\r\n\r\n");
    let e = srv.poll(&keyring(), &mut [0u8; 128]).unwrap_err();
    assert!(matches!(
        e.error,
        ConnError::Decode(DecodeError::Frame(FrameError::BadMagic { .. }))
    ));
    assert_eq!(e.farewell, 0);
    assert!(e.to_string().contains("bad magic"), "{e}");
    assert!(srv.is_closed());
}

#[test]
fn handshake_frames_after_open_are_refused() {
    let (mut srv, v, _) = handshake(AuthKey::new([9; 32]));
    let v = v.unwrap();
    let hello = Message::Hello(Hello {
        versions: VersionRange::SUPPORTED,
        client_nonce: Nonce([0; 32]),
        client_id: ID,
    });
    srv.decoder().feed(&frame(v, 0, &hello));
    let e = srv.poll(&keyring(), &mut [0u8; 128]).unwrap_err();
    assert_eq!(e.error, ConnError::Unexpected(FrameType::Hello));
}

#[test]
fn partial_frames_wait_for_more() {
    let mut srv = ServerConn::new(Nonce([5; 32]), L);
    let client = ClientHandshake::new(ID, AuthKey::new([9; 32]), Nonce([6; 32]), &L).unwrap();
    let hello = frame(VERSION_MIN, 0, &Message::Hello(client.hello()));
    let keys = keyring();
    let mut out = [0u8; 128];
    for b in &hello[..hello.len() - 1] {
        srv.decoder().feed(std::slice::from_ref(b));
        assert!(srv.poll(&keys, &mut out).unwrap().is_none());
    }
    srv.decoder().feed(&hello[hello.len() - 1..]);
    assert!(matches!(
        srv.poll(&keys, &mut out).unwrap(),
        Some(ServerEvent::Send(_))
    ));
}
