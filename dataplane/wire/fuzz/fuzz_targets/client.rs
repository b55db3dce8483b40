//! `ClientConn` (an OSD's outbound replica connection) on an arbitrary byte stream from the
//! server. The stream starts with a valid Challenge and AuthOk for the harness's client when
//! the first input byte is odd, so the fuzzer also reaches the reply dispatch of an open
//! connection. Must never panic, must never return a reply before authentication, and must
//! refuse to encode a replica op until it has returned `Authenticated`.
#![no_main]

use carmine_wire::{
    AuthKey, ClientConn, ClientEvent, ClientHandshake, ConnError, Epoch, Limits, Message, Nonce,
    PgId, PoolId, RepMutation, RepOp, ReqId, ServerHandshake, Version,
};
use libfuzzer_sys::fuzz_target;

#[path = "common/mod.rs"]
mod common;
use common::{frame, seal_all};

const PROBE: RepOp<'static> = RepOp {
    pool: PoolId(1),
    pg: PgId(2),
    epoch: Epoch(3),
    interval_since: Epoch(3),
    version: Version {
        epoch: Epoch(3),
        seq: 1,
    },
    reqid: ReqId {
        client: "client.1",
        tid: 1,
    },
    op: RepMutation::Remove { object: "o" },
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_payload: 64 << 10,
        max_io_size: 60 << 10,
        ..Limits::DEFAULT
    };
    let key = AuthKey::new([1; 32]);
    let client_nonce = Nonce([3; 32]);
    let mut stream = Vec::new();
    if mode & 1 == 1 {
        // A server that knows the key, answering the harness's (fixed) client.
        let hs = ClientHandshake::new("c", key.clone(), client_nonce, &limits).expect("id");
        let awaiting = ServerHandshake::new(Nonce([2; 32]), limits)
            .on_message(&Message::Hello(hs.hello()))
            .expect("hello");
        let challenge = awaiting.challenge();
        let verdict = hs
            .sent_hello()
            .on_message(&Message::Challenge(challenge))
            .expect("challenge");
        let (_, ok) = awaiting
            .on_message(&Message::Auth(verdict.auth()), Some(&key))
            .expect("auth");
        stream.extend(frame(challenge.version, &Message::Challenge(challenge)));
        stream.extend(frame(challenge.version, &Message::AuthOk(ok)));
    }
    let prefix = stream.len();
    stream.extend_from_slice(rest);
    if mode & 2 == 2 {
        seal_all(&mut stream[prefix..]);
    }
    let mut conn = ClientConn::new("c", key, client_nonce, limits).expect("id");
    let mut out = [0u8; 512];
    let mut authenticated = false;
    let mut sends = 0;
    let mut pos = 0;
    let step = usize::from(mode >> 2).max(1);
    // The Hello goes out before anything is received.
    match conn.poll(&mut out) {
        Ok(Some(ClientEvent::Send(_))) => sends += 1,
        other => panic!("first poll: {other:?}"),
    }
    while pos < stream.len() {
        let end = (pos + step).min(stream.len());
        pos += conn.decoder().feed(&stream[pos..end]);
        loop {
            match conn.poll(&mut out) {
                Ok(Some(ClientEvent::Authenticated)) => {
                    assert!(!authenticated, "authenticated twice");
                    authenticated = true;
                }
                Ok(Some(ClientEvent::RepReply { .. } | ClientEvent::OpReply { .. })) => {
                    assert!(authenticated, "reply before auth")
                }
                Ok(Some(ClientEvent::Send(_))) => {
                    sends += 1;
                    assert!(sends <= 2 && !authenticated, "handshake frames only");
                }
                Ok(None) => break,
                Err(_) => {
                    assert!(conn.is_closed());
                    return;
                }
            }
            let probe = conn.encode_rep_op(1, &PROBE, &mut out);
            if authenticated {
                assert!(probe.is_ok(), "{probe:?}");
            } else {
                assert_eq!(probe, Err(ConnError::NotAuthenticated));
            }
        }
    }
});
