//! The handshake state machines, driven through real encoded frames.

use carmine_wire::*;

const L: Limits = Limits::DEFAULT;

/// Encodes `msg` as a frame of `version`, decodes it back with a `FrameDecoder`, and hands the
/// parsed message to `f` — what a messenger does between two sockets.
fn over_the_wire<R>(version: u8, msg: &Message<'_>, f: impl FnOnce(&Message<'_>) -> R) -> R {
    let enc = Encoder::new(version, L);
    let mut buf = vec![0u8; enc.frame_len(msg)];
    let n = enc.encode(9, msg, &mut buf).unwrap();
    let mut dec = FrameDecoder::new(L);
    assert_eq!(dec.feed(&buf[..n]), n);
    let frame = dec.next_frame().unwrap().unwrap();
    assert_eq!(frame.header.version, version);
    assert_eq!(frame.header.tid, 9);
    let m = frame.message(&L).unwrap();
    assert_eq!(&m, msg);
    f(&m)
}

struct Run {
    client: Result<Session, HandshakeError>,
    server: Result<Session, HandshakeError>,
}

/// A full handshake between a client holding `client_key` and a server that finds
/// `server_key` for the client's id.
fn run(client_key: AuthKey, server_key: Option<AuthKey>) -> Run {
    let client = ClientHandshake::new("client.admin", client_key, Nonce([1; 32]), &L).unwrap();
    let server = ServerHandshake::new(Nonce([2; 32]), L);
    let hello = Message::Hello(client.hello());
    let server = over_the_wire(VERSION_MIN, &hello, |m| server.on_message(m)).unwrap();
    let client = client.sent_hello();
    assert_eq!(server.client_id(), "client.admin");
    let v = server.version();
    let challenge = Message::Challenge(server.challenge());
    let client = over_the_wire(v, &challenge, |m| client.on_message(m)).unwrap();
    assert_eq!(client.version(), v);
    let auth = Message::Auth(client.auth());
    let verdict = over_the_wire(v, &auth, |m| server.on_message(m, server_key.as_ref()));
    match verdict {
        Ok((session, ok)) => {
            let client = over_the_wire(v, &Message::AuthOk(ok), |m| client.on_message(m));
            Run {
                client,
                server: Ok(session),
            }
        }
        Err(e) => {
            let reject = e.reject().expect("server errors have a reject frame");
            let client = over_the_wire(v, &Message::AuthReject(reject), |m| client.on_message(m));
            Run {
                client,
                server: Err(e),
            }
        }
    }
}

#[test]
fn right_key_authenticates_both_ways() {
    let key = AuthKey::new([0x5a; 32]);
    let r = run(key.clone(), Some(key));
    let s = r.server.unwrap();
    let c = r.client.unwrap();
    assert_eq!(s, c);
    assert_eq!(s.version, VERSION_MAX);
    assert_eq!(s.client_id, "client.admin");
}

#[test]
fn wrong_key_is_refused_with_a_typed_error() {
    let r = run(AuthKey::new([1; 32]), Some(AuthKey::new([2; 32])));
    assert_eq!(r.server.unwrap_err(), HandshakeError::BadCredentials);
    assert_eq!(
        r.client.unwrap_err(),
        HandshakeError::Rejected {
            reason: RejectReason::BadCredentials,
            server_versions: VersionRange::SUPPORTED
        }
    );
}

#[test]
fn unknown_client_is_refused_like_a_wrong_key() {
    let r = run(AuthKey::new([1; 32]), None);
    assert_eq!(r.server.unwrap_err(), HandshakeError::BadCredentials);
    assert!(matches!(
        r.client.unwrap_err(),
        HandshakeError::Rejected {
            reason: RejectReason::BadCredentials,
            ..
        }
    ));
}

#[test]
fn key_differing_in_one_bit_is_refused() {
    let mut other = [0x33; 32];
    other[31] ^= 1;
    let r = run(AuthKey::new([0x33; 32]), Some(AuthKey::new(other)));
    assert_eq!(r.server.unwrap_err(), HandshakeError::BadCredentials);
}

#[test]
fn recorded_auth_does_not_replay_on_another_connection() {
    let key = AuthKey::new([7; 32]);
    let client = ClientHandshake::new("c", key.clone(), Nonce([1; 32]), &L).unwrap();
    let hello = Hello {
        versions: VersionRange::SUPPORTED,
        client_nonce: Nonce([1; 32]),
        client_id: "c",
    };
    assert_eq!(client.hello(), hello);
    let hello = Message::Hello(hello);
    // First connection: record the client's Auth.
    let s1 = ServerHandshake::new(Nonce([10; 32]), L)
        .on_message(&hello)
        .unwrap();
    let verdict = client
        .sent_hello()
        .on_message(&Message::Challenge(s1.challenge()))
        .unwrap();
    let recorded = Message::Auth(verdict.auth());
    // Second connection, same Hello replayed, fresh server nonce: the recording fails.
    let s2 = ServerHandshake::new(Nonce([11; 32]), L)
        .on_message(&hello)
        .unwrap();
    assert_eq!(
        s2.on_message(&recorded, Some(&key)).unwrap_err(),
        HandshakeError::BadCredentials
    );
}

#[test]
fn forged_server_proof_is_detected() {
    let key = AuthKey::new([4; 32]);
    let client = ClientHandshake::new("c", key, Nonce([1; 32]), &L).unwrap();
    let challenge = Message::Challenge(Challenge {
        version: VERSION_MIN,
        server_nonce: Nonce([2; 32]),
    });
    let verdict = client.sent_hello().on_message(&challenge).unwrap();
    // An impostor without the key can only guess, or reflect the client's own MAC.
    let reflected = AuthOk {
        server_proof: verdict.auth().mac,
    };
    assert_eq!(
        verdict.on_message(&Message::AuthOk(reflected)).unwrap_err(),
        HandshakeError::BadServerProof
    );
}

#[test]
fn no_common_version() {
    let client = ClientHandshake::new("c", AuthKey::new([0; 32]), Nonce([0; 32]), &L)
        .unwrap()
        .with_versions(VersionRange::new(VERSION_MAX + 1, VERSION_MAX + 3).unwrap());
    let hello = Message::Hello(client.hello());
    let err = over_the_wire(VERSION_MIN, &hello, |m| {
        ServerHandshake::new(Nonce([0; 32]), L).on_message(m)
    })
    .unwrap_err();
    assert!(matches!(err, HandshakeError::NoCommonVersion { .. }));
    let reject = err.reject().unwrap();
    assert_eq!(reject.reason, RejectReason::NoCommonVersion);
    let client_err = client
        .sent_hello()
        .on_message(&Message::AuthReject(reject))
        .unwrap_err();
    assert!(matches!(
        client_err,
        HandshakeError::Rejected {
            reason: RejectReason::NoCommonVersion,
            ..
        }
    ));
}

#[test]
fn version_negotiation_picks_the_highest_common() {
    let a = VersionRange::new(1, 5).unwrap();
    let b = VersionRange::new(3, 9).unwrap();
    assert_eq!(a.highest_common(&b), Some(5));
    assert_eq!(b.highest_common(&a), Some(5));
    let c = VersionRange::new(6, 9).unwrap();
    assert_eq!(a.highest_common(&c), None);
    let server = ServerHandshake::new(Nonce([0; 32]), L).with_versions(a);
    let hello = Hello {
        versions: b,
        client_nonce: Nonce([0; 32]),
        client_id: "c",
    };
    assert_eq!(
        server.on_message(&Message::Hello(hello)).unwrap().version(),
        5
    );
}

#[test]
fn client_refuses_a_version_it_did_not_offer() {
    let client = ClientHandshake::new("c", AuthKey::new([0; 32]), Nonce([0; 32]), &L).unwrap();
    let challenge = Message::Challenge(Challenge {
        version: VERSION_MAX + 1,
        server_nonce: Nonce([0; 32]),
    });
    assert!(matches!(
        client.sent_hello().on_message(&challenge).unwrap_err(),
        HandshakeError::BadChosenVersion { .. }
    ));
}

#[test]
fn out_of_order_messages_are_refused() {
    let key = AuthKey::new([1; 32]);
    let auth = Message::Auth(Auth { mac: [0; 32] });
    let err = ServerHandshake::new(Nonce([0; 32]), L)
        .on_message(&auth)
        .unwrap_err();
    assert_eq!(
        err,
        HandshakeError::Unexpected {
            expected: "Hello",
            got: FrameType::Auth
        }
    );
    assert_eq!(err.reject().unwrap().reason, RejectReason::Protocol);
    // An op before authentication.
    let op = Message::OpRequest(OpRequest {
        pool: PoolId(0),
        pg: PgId(0),
        epoch: Epoch(0),
        op: Op::Stat { object: "x" },
    });
    let hello = Hello {
        versions: VersionRange::SUPPORTED,
        client_nonce: Nonce([0; 32]),
        client_id: "c",
    };
    let awaiting = ServerHandshake::new(Nonce([0; 32]), L)
        .on_message(&Message::Hello(hello))
        .unwrap();
    assert!(matches!(
        awaiting.on_message(&op, Some(&key)).unwrap_err(),
        HandshakeError::Unexpected {
            got: FrameType::OpRequest,
            ..
        }
    ));
}

#[test]
fn client_id_is_checked() {
    assert!(matches!(
        ClientHandshake::new("", AuthKey::new([0; 32]), Nonce([0; 32]), &L).unwrap_err(),
        HandshakeError::InvalidClientId(MessageError::Empty { .. })
    ));
    let long = "c".repeat(usize::from(L.max_client_id_len) + 1);
    assert!(matches!(
        ClientHandshake::new(long, AuthKey::new([0; 32]), Nonce([0; 32]), &L).unwrap_err(),
        HandshakeError::InvalidClientId(MessageError::TooLong { .. })
    ));
}

#[test]
fn auth_key_text_form() {
    let key = AuthKey::new(std::array::from_fn(|i| i as u8 * 7));
    let hex = key.to_hex();
    assert_eq!(hex.len(), 64);
    assert_eq!(AuthKey::from_hex(&hex).unwrap(), key);
    assert_eq!(AuthKey::from_hex(&hex.to_uppercase()).unwrap(), key);
    assert_eq!(AuthKey::from_hex("abcd"), Err(KeyError::Length(4)));
    let bad = format!("zz{}", &hex[2..]);
    assert_eq!(AuthKey::from_hex(&bad), Err(KeyError::NotHex));
    // Non-ASCII of the right byte length must not panic in the pair split.
    let multibyte = format!("é{}", &hex[2..]);
    assert_eq!(AuthKey::from_hex(&multibyte), Err(KeyError::NotHex));
    assert_eq!(format!("{key:?}"), "AuthKey(..)");
}

#[test]
fn random_nonces_and_keys_differ() {
    assert_ne!(Nonce::random().unwrap(), Nonce::random().unwrap());
    assert_ne!(AuthKey::generate().unwrap(), AuthKey::generate().unwrap());
}

#[test]
fn mac_matches_an_independent_hmac_computation() {
    // Pins the MAC construction documented in PROTOCOL.md, computed here with the hmac crate
    // directly, so the OSD and any other client implementation can follow the document.
    use hmac::{Hmac, Mac};
    let key = [0x11u8; 32];
    let (nc, ns) = ([0x22u8; 32], [0x33u8; 32]);
    let client = ClientHandshake::new("client.7", AuthKey::new(key), Nonce(nc), &L).unwrap();
    let verdict = client
        .sent_hello()
        .on_message(&Message::Challenge(Challenge {
            version: 1,
            server_nonce: Nonce(ns),
        }))
        .unwrap();
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    m.update(b"carmine client auth v1");
    m.update(&[1]);
    m.update(&ns);
    m.update(&nc);
    m.update(&8u16.to_le_bytes());
    m.update(b"client.7");
    let expected: [u8; 32] = m.finalize().into_bytes().into();
    assert_eq!(verdict.auth().mac, expected);
}
