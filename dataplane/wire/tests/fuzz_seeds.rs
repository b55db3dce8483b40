//! The committed seed corpus of the fuzz targets, `fuzz/seeds/<target>/<name>`: a handful of
//! valid frames, streams and handshakes per target, in each target's input format (its first
//! byte picks a mode, see `fuzz/fuzz_targets/*.rs`), so a short fuzzing run in CI starts from
//! inputs that already get past the checksums and the handshake.
//!
//! The seeds are generated here and only here. This test checks that the committed files are
//! exactly what the generator makes (a protocol change that changes an encoding fails it); to
//! write them after such a change:
//!
//! ```text
//! CARMINE_WRITE_FUZZ_SEEDS=1 cargo test -p carmine-wire --test fuzz_seeds
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use carmine_wire::*;

/// target -> (file name -> bytes).
type Seeds = BTreeMap<&'static str, BTreeMap<String, Vec<u8>>>;

/// The `stream` and `server` targets' limits (64 KiB payloads); the seeds stay well inside.
const L: Limits = Limits::DEFAULT;

// The `server` harness's fixed client (see fuzz_targets/server.rs).
const SERVER_CLIENT_ID: &str = "c";
const SERVER_KEY: [u8; 32] = [1; 32];
const SERVER_NONCE: [u8; 32] = [2; 32];
const CLIENT_NONCE: [u8; 32] = [3; 32];

/// The index of each frame type in the `decode` target's TYPES table (payload mode).
fn decode_type_index(ty: FrameType) -> u8 {
    match ty {
        FrameType::Hello => 0,
        FrameType::Challenge => 1,
        FrameType::Auth => 2,
        FrameType::AuthOk => 3,
        FrameType::AuthReject => 4,
        FrameType::OpRequest => 5,
        FrameType::OpReply => 6,
        FrameType::RepOp => 7,
        FrameType::RepReply => 8,
    }
}

/// The `decode` target's TYPES table, in order.
const DECODE_TYPES: [FrameType; 9] = [
    FrameType::Hello,
    FrameType::Challenge,
    FrameType::Auth,
    FrameType::AuthOk,
    FrameType::AuthReject,
    FrameType::OpRequest,
    FrameType::OpReply,
    FrameType::RepOp,
    FrameType::RepReply,
];

fn frame(tid: u64, msg: &Message<'_>) -> Vec<u8> {
    let enc = Encoder::new(VERSION_MIN, L);
    let mut buf = vec![0u8; enc.frame_len(msg)];
    let n = enc.encode(tid, msg, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn payload(msg: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; msg.payload_len()];
    let n = msg.write_payload(&mut buf, &L).unwrap();
    buf.truncate(n);
    buf
}

fn req(op: Op<'_>) -> Message<'_> {
    Message::OpRequest(OpRequest {
        pool: PoolId(1),
        pg: PgId(7),
        epoch: Epoch(3),
        op,
    })
}

/// Data with some structure (not all one byte), so mutations have something to work on.
fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

fn requests(data: &[u8]) -> Vec<(&'static str, Message<'_>)> {
    vec![
        (
            "write",
            req(Op::Write {
                object: "obj-a",
                offset: 4096,
                data,
            }),
        ),
        (
            "write-full",
            req(Op::WriteFull {
                object: "obj-b",
                data,
            }),
        ),
        (
            "read",
            req(Op::Read {
                object: "obj-a",
                offset: 0,
                len: 8192,
            }),
        ),
        ("stat", req(Op::Stat { object: "obj-a" })),
        ("remove", req(Op::Remove { object: "obj-b" })),
        (
            "list",
            req(Op::List {
                cursor: b"\x00\x01cursor",
                max_entries: 16,
            }),
        ),
    ]
}

const NAMES: [&str; 3] = ["obj-a", "obj-b", "a/longer/object-name"];

fn replies(data: &[u8]) -> Vec<(&'static str, Message<'_>)> {
    let reply = |r| Message::OpReply(r);
    vec![
        ("reply-written", reply(OpReply::ok(ReplyBody::Written))),
        ("reply-read", reply(OpReply::ok(ReplyBody::Read { data }))),
        (
            "reply-stat",
            reply(OpReply::ok(ReplyBody::Stat { size: 12345 })),
        ),
        (
            "reply-list",
            reply(OpReply::ok(ReplyBody::List(ListPage {
                names: NameList::from_slice(&NAMES),
                next_cursor: Some(b"obj-b"),
            }))),
        ),
        (
            "reply-stale-map",
            reply(OpReply::err(OpError::StaleMap {
                osd_epoch: Epoch(9),
            })),
        ),
        ("reply-not-found", reply(OpReply::err(OpError::NotFound))),
    ]
}

fn rep_op(op: RepMutation<'_>, seq: u64) -> Message<'_> {
    Message::RepOp(RepOp {
        pool: PoolId(1),
        pg: PgId(7),
        epoch: Epoch(5),
        interval_since: Epoch(4),
        version: Version {
            epoch: Epoch(5),
            seq,
        },
        reqid: ReqId {
            client: "client.1",
            tid: 40 + seq,
        },
        op,
    })
}

fn rep_ops(data: &[u8]) -> Vec<(&'static str, Message<'_>)> {
    vec![
        (
            "rep-write",
            rep_op(
                RepMutation::Write {
                    object: "obj-a",
                    offset: 4096,
                    data,
                },
                1,
            ),
        ),
        (
            "rep-write-full",
            rep_op(
                RepMutation::WriteFull {
                    object: "obj-b",
                    data,
                },
                2,
            ),
        ),
        (
            "rep-remove",
            rep_op(RepMutation::Remove { object: "obj-b" }, 3),
        ),
    ]
}

fn rep_replies() -> Vec<(&'static str, Message<'static>)> {
    let reply = |r| Message::RepReply(r);
    vec![
        ("rep-reply-ok", reply(RepReply::OK)),
        (
            "rep-reply-stale-interval",
            reply(RepReply::err(RepError::StaleInterval {
                replica_epoch: Epoch(9),
                interval_since: Epoch(8),
            })),
        ),
        (
            "rep-reply-not-member",
            reply(RepReply::err(RepError::NotMember)),
        ),
        ("rep-reply-io", reply(RepReply::err(RepError::Io))),
        (
            "rep-reply-no-space",
            reply(RepReply::err(RepError::NoSpace)),
        ),
        ("rep-reply-invalid", reply(RepReply::err(RepError::Invalid))),
    ]
}

/// Challenge and AuthOk of the `client` harness's server, answering its fixed client (same
/// id, key and nonces as the `server` harness, roles swapped).
fn client_handshake() -> Vec<u8> {
    let key = AuthKey::new(SERVER_KEY);
    let client =
        ClientHandshake::new(SERVER_CLIENT_ID, key.clone(), Nonce(CLIENT_NONCE), &L).unwrap();
    let awaiting = ServerHandshake::new(Nonce(SERVER_NONCE), L)
        .on_message(&Message::Hello(client.hello()))
        .unwrap();
    let challenge = awaiting.challenge();
    let verdict = client
        .sent_hello()
        .on_message(&Message::Challenge(challenge))
        .unwrap();
    let (_, ok) = awaiting
        .on_message(&Message::Auth(verdict.auth()), Some(&key))
        .unwrap();
    let mut out = frame(0, &Message::Challenge(challenge));
    out.extend(frame(0, &Message::AuthOk(ok)));
    out
}

/// Hello and Auth of the `server` harness's client, as it would send them.
fn server_handshake() -> Vec<u8> {
    let key = AuthKey::new(SERVER_KEY);
    let client = ClientHandshake::new(SERVER_CLIENT_ID, key, Nonce(CLIENT_NONCE), &L).unwrap();
    let mut out = frame(0, &Message::Hello(client.hello()));
    let verdict = client
        .sent_hello()
        .on_message(&Message::Challenge(Challenge {
            version: VERSION_MAX,
            server_nonce: Nonce(SERVER_NONCE),
        }))
        .unwrap();
    out.extend(frame(0, &Message::Auth(verdict.auth())));
    out
}

fn generate() -> Seeds {
    let mut seeds = Seeds::new();
    let bulk = data(300);
    let hello_client =
        ClientHandshake::new("client.1", AuthKey::new([7; 32]), Nonce([4; 32]), &L).unwrap();
    let handshake: Vec<(&str, Message<'_>)> = vec![
        ("hello", Message::Hello(hello_client.hello())),
        (
            "challenge",
            Message::Challenge(Challenge {
                version: 1,
                server_nonce: Nonce([5; 32]),
            }),
        ),
        ("auth", Message::Auth(Auth { mac: [6; 32] })),
        (
            "auth-ok",
            Message::AuthOk(AuthOk {
                server_proof: [8; 32],
            }),
        ),
        (
            "auth-reject",
            Message::AuthReject(AuthReject {
                reason: RejectReason::BadCredentials,
                server_versions: VersionRange::SUPPORTED,
            }),
        ),
    ];
    let reqs = requests(&bulk);
    let reps = replies(&bulk);
    let rops = rep_ops(&bulk);
    let rreps = rep_replies();

    // decode: mode 0 (raw frame) for every message; mode 2 (type index + bare payload) for a
    // few with nested fields. Mode 1 (re-sealed) starts from the same frames after mutation.
    let decode = seeds.entry("decode").or_default();
    let all = handshake
        .iter()
        .chain(&reqs)
        .chain(&reps)
        .chain(&rops)
        .chain(&rreps);
    for (tid, (name, msg)) in all.enumerate() {
        let mut seed = vec![0u8];
        seed.extend(frame(tid as u64, msg));
        decode.insert(format!("frame-{name}"), seed);
    }
    for (name, msg) in reqs.iter().chain(&reps).chain(&rops).chain(&rreps) {
        let nested = [
            "write",
            "list",
            "reply-list",
            "reply-stale-map",
            "rep-write",
            "rep-reply-stale-interval",
        ];
        if nested.contains(name) {
            let mut seed = vec![2u8, decode_type_index(msg.frame_type())];
            seed.extend(payload(msg));
            decode.insert(format!("payload-{name}"), seed);
        }
    }

    // stream: a step size, then several frames back to back.
    let stream = seeds.entry("stream").or_default();
    let mut client_side = vec![7u8];
    client_side.extend(frame(0, &handshake[0].1));
    for (tid, (_, msg)) in reqs.iter().enumerate() {
        client_side.extend(frame(tid as u64 + 1, msg));
    }
    stream.insert("client-stream-step7".to_owned(), client_side);
    let mut server_side = vec![1u8];
    for (tid, (_, msg)) in reps.iter().enumerate() {
        server_side.extend(frame(tid as u64, msg));
    }
    stream.insert("server-stream-step1".to_owned(), server_side);
    let mut big_steps = vec![200u8];
    big_steps.extend(frame(1, &reqs[0].1));
    big_steps.extend(frame(2, &reps[1].1));
    stream.insert("write-read-step200".to_owned(), big_steps);
    let mut replication = vec![13u8];
    for (tid, (_, msg)) in rops.iter().chain(&rreps).enumerate() {
        replication.extend(frame(tid as u64, msg));
    }
    stream.insert("replication-step13".to_owned(), replication);

    // server: mode bit 0 = the harness prepends a valid handshake, bit 1 = re-seal the rest,
    // bits 2.. = feed step.
    let server = seeds.entry("server").or_default();
    let ops: Vec<u8> = reqs
        .iter()
        .enumerate()
        .flat_map(|(tid, (_, msg))| frame(tid as u64 + 1, msg))
        .collect();
    let mut authed = vec![1u8 | (1 << 2)];
    authed.extend(&ops);
    server.insert("authed-ops-step1".to_owned(), authed);
    let mut sealed = vec![1u8 | 2 | (16 << 2)];
    sealed.extend(&ops);
    server.insert("authed-ops-sealed-step16".to_owned(), sealed);
    let mut own_handshake = vec![32u8 << 2];
    own_handshake.extend(server_handshake());
    own_handshake.extend(frame(9, &reqs[2].1));
    server.insert("handshake-then-read".to_owned(), own_handshake);
    let mut unknown = vec![3u8 << 2];
    unknown.extend(frame(0, &handshake[0].1));
    unknown.extend(frame(0, &handshake[2].1));
    server.insert("unknown-client".to_owned(), unknown);
    let mut early = vec![0u8];
    early.extend(frame(1, &reqs[0].1));
    server.insert("op-before-auth".to_owned(), early);
    let rep: Vec<u8> = rops
        .iter()
        .enumerate()
        .flat_map(|(tid, (_, msg))| frame(tid as u64 + 1, msg))
        .collect();
    let mut authed_rep = vec![1u8 | (5 << 2)];
    authed_rep.extend(&rep);
    server.insert("authed-rep-ops-step5".to_owned(), authed_rep);
    let mut early_rep = vec![0u8];
    early_rep.extend(frame(1, &rops[0].1));
    server.insert("rep-op-before-auth".to_owned(), early_rep);

    // client: the same mode bits as `server`; the harness's handshake is the server's
    // Challenge and AuthOk, then replies follow.
    let client = seeds.entry("client").or_default();
    let answers: Vec<u8> = rreps
        .iter()
        .chain(&reps)
        .enumerate()
        .flat_map(|(tid, (_, msg))| frame(tid as u64 + 1, msg))
        .collect();
    let mut authed = vec![1u8 | (1 << 2)];
    authed.extend(&answers);
    client.insert("authed-replies-step1".to_owned(), authed);
    let mut sealed = vec![1u8 | 2 | (16 << 2)];
    sealed.extend(&answers);
    client.insert("authed-replies-sealed-step16".to_owned(), sealed);
    let mut own_handshake = vec![32u8 << 2];
    own_handshake.extend(client_handshake());
    own_handshake.extend(frame(9, &rreps[1].1));
    client.insert("handshake-then-stale-interval".to_owned(), own_handshake);
    let mut rejected = vec![3u8 << 2];
    rejected.extend(frame(0, &handshake[1].1));
    rejected.extend(frame(0, &handshake[4].1));
    client.insert("rejected".to_owned(), rejected);
    let mut early = vec![0u8];
    early.extend(frame(1, &rreps[0].1));
    client.insert("reply-before-auth".to_owned(), early);
    seeds
}

fn seeds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds")
}

#[test]
fn committed_fuzz_seeds_are_the_generated_ones() {
    let seeds = generate();
    let root = seeds_dir();
    if std::env::var_os("CARMINE_WRITE_FUZZ_SEEDS").is_some() {
        for (target, files) in &seeds {
            let dir = root.join(target);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).unwrap();
            }
            std::fs::create_dir_all(&dir).unwrap();
            for (name, bytes) in files {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }
    let how = "regenerate: CARMINE_WRITE_FUZZ_SEEDS=1 cargo test -p carmine-wire --test fuzz_seeds";
    for (target, files) in &seeds {
        let dir = root.join(target);
        let mut on_disk: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}; {how}", dir.display()))
        {
            let e = e.unwrap();
            on_disk.insert(
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            );
        }
        assert_eq!(
            on_disk.keys().collect::<Vec<_>>(),
            files.keys().collect::<Vec<_>>(),
            "seed files of {target}; {how}"
        );
        for (name, bytes) in files {
            assert!(
                on_disk[name] == *bytes,
                "{target}/{name} differs from the generator; {how}"
            );
        }
    }
}

/// The seeds are what they claim: every frame in them decodes, and the `server` seeds with
/// the harness's handshake authenticate and deliver their ops.
#[test]
fn fuzz_seeds_are_valid_inputs() {
    let seeds = generate();
    for (name, seed) in &seeds["decode"] {
        match seed[0] {
            0 => {
                let Ok(Decoded::Frame { frame, len }) = decode_frame(&seed[1..], &L) else {
                    panic!("decode/{name}: not a whole frame")
                };
                assert_eq!(len, seed.len() - 1, "decode/{name}");
                frame.message(&L).unwrap();
            }
            2 => {
                let ty = DECODE_TYPES[usize::from(seed[1])];
                assert_eq!(decode_type_index(ty), seed[1]);
                Message::parse(ty, &seed[2..], &L).unwrap();
            }
            m => panic!("decode/{name}: mode {m}"),
        }
    }
    for (name, seed) in &seeds["stream"] {
        let mut dec = FrameDecoder::new(L);
        assert_eq!(dec.feed(&seed[1..]), seed.len() - 1, "stream/{name}");
        let mut frames = 0;
        while let Some(f) = dec.next_frame().unwrap() {
            f.message(&L).unwrap();
            frames += 1;
        }
        assert!(frames >= 2, "stream/{name}: {frames} frames");
        assert_eq!(dec.buffered(), 0, "stream/{name}");
    }
    let keys =
        std::collections::HashMap::from([(SERVER_CLIENT_ID.to_owned(), AuthKey::new(SERVER_KEY))]);
    for (name, seed) in &seeds["server"] {
        let mut stream = Vec::new();
        if seed[0] & 1 == 1 {
            stream.extend(server_handshake());
        }
        stream.extend(&seed[1..]);
        let mut conn = ServerConn::new(Nonce(SERVER_NONCE), L);
        conn.decoder().feed(&stream);
        let mut out = [0u8; 128];
        let (mut authenticated, mut ops) = (false, 0);
        let closed = loop {
            match conn.poll(&keys, &mut out) {
                Ok(Some(ServerEvent::Authenticated(_))) => authenticated = true,
                Ok(Some(ServerEvent::Op { .. } | ServerEvent::RepOp { .. })) => ops += 1,
                Ok(Some(ServerEvent::Send(_))) => {}
                Ok(None) => break false,
                Err(_) => break true,
            }
        };
        match name.as_str() {
            "unknown-client" | "op-before-auth" | "rep-op-before-auth" => {
                assert!(closed, "server/{name}")
            }
            _ => assert!(authenticated && ops >= 1 && !closed, "server/{name}"),
        }
    }
    for (name, seed) in &seeds["client"] {
        let mut stream = Vec::new();
        if seed[0] & 1 == 1 {
            stream.extend(client_handshake());
        }
        stream.extend(&seed[1..]);
        let mut conn = ClientConn::new(
            SERVER_CLIENT_ID,
            AuthKey::new(SERVER_KEY),
            Nonce(CLIENT_NONCE),
            L,
        )
        .unwrap();
        conn.decoder().feed(&stream);
        let mut out = [0u8; 512];
        let (mut authenticated, mut replies) = (false, 0);
        let closed = loop {
            match conn.poll(&mut out) {
                Ok(Some(ClientEvent::Authenticated)) => authenticated = true,
                Ok(Some(ClientEvent::RepReply { .. } | ClientEvent::OpReply { .. })) => {
                    replies += 1
                }
                Ok(Some(ClientEvent::Send(_))) => {}
                Ok(None) => break false,
                Err(_) => break true,
            }
        };
        match name.as_str() {
            "rejected" | "reply-before-auth" => assert!(closed, "client/{name}"),
            _ => assert!(authenticated && replies >= 1 && !closed, "client/{name}"),
        }
    }
}
