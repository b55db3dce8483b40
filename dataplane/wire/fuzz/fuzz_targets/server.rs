//! `ServerConn` (the OSD side of a connection) on an arbitrary byte stream. The stream starts
//! with a valid Hello and Auth for a known client when the first input byte is odd, so the
//! fuzzer also reaches the op dispatch of an open connection (client ops and replica ops). Must
//! never panic, and must never return an op or a replica op before authentication.
#![no_main]

use std::collections::HashMap;

use carmine_wire::{
    AuthKey, ClientHandshake, Limits, Message, Nonce, ServerConn, ServerEvent, VERSION_MIN,
};
use libfuzzer_sys::fuzz_target;

#[path = "common/mod.rs"]
mod common;
use common::{frame, seal_all};

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
    let keys = HashMap::from([("c".to_owned(), key.clone())]);
    let server_nonce = Nonce([2; 32]);
    let mut stream = Vec::new();
    if mode & 1 == 1 {
        // A client that knows the key and the server's (fixed, in this harness) nonce.
        let client = ClientHandshake::new("c", key, Nonce([3; 32]), &limits).expect("id");
        stream.extend(frame(VERSION_MIN, &Message::Hello(client.hello())));
        let challenge = carmine_wire::Challenge {
            version: carmine_wire::VERSION_MAX,
            server_nonce,
        };
        let verdict = client
            .sent_hello()
            .on_message(&Message::Challenge(challenge))
            .expect("challenge");
        stream.extend(frame(verdict.version(), &Message::Auth(verdict.auth())));
    }
    let prefix = stream.len();
    stream.extend_from_slice(rest);
    if mode & 2 == 2 {
        seal_all(&mut stream[prefix..]);
    }
    let mut conn = ServerConn::new(server_nonce, limits);
    let mut out = [0u8; 128];
    let mut authenticated = false;
    let mut pos = 0;
    let step = usize::from(mode >> 2).max(1);
    while pos < stream.len() {
        let end = (pos + step).min(stream.len());
        pos += conn.decoder().feed(&stream[pos..end]);
        loop {
            match conn.poll(&keys, &mut out) {
                Ok(Some(ServerEvent::Authenticated(_))) => authenticated = true,
                Ok(Some(ServerEvent::Op { .. })) => assert!(authenticated, "op before auth"),
                Ok(Some(ServerEvent::RepOp { op, .. })) => {
                    assert!(authenticated, "replica op before auth");
                    assert!(op.interval_since <= op.epoch && op.version.epoch <= op.epoch);
                    assert!(conn.peer_id().is_some());
                }
                Ok(Some(ServerEvent::Send(_))) => {}
                Ok(None) => break,
                Err(_) => {
                    assert!(conn.is_closed());
                    return;
                }
            }
        }
    }
});
