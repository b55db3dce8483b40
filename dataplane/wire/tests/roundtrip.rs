//! Property tests: every message type (replica ops and replies included) survives encode → decode unchanged, through both the
//! stateless decoder and a `FrameDecoder` fed in arbitrary pieces; arbitrary bytes never panic;
//! every single-bit corruption of a frame is detected.

use carmine_wire::*;
use proptest::prelude::*;

/// Small limits so the generators reach the edges cheaply.
const L: Limits = Limits {
    max_payload: 16 << 10,
    max_io_size: 8 << 10,
    max_object_size: 1 << 20,
    max_name_len: 64,
    max_client_id_len: 32,
    max_cursor_len: 48,
    max_list_entries: 16,
};

/// Owned inputs for a message; `msg()` borrows them the way a real caller would.
#[derive(Debug, Clone)]
enum Owned {
    Hello(u8, u8, [u8; 32], String),
    Challenge(u8, [u8; 32]),
    Auth([u8; 32]),
    AuthOk([u8; 32]),
    AuthReject(RejectReason, u8, u8),
    Request(u64, u32, u64, OwnedOp),
    Reply(OwnedReply),
    RepOp(OwnedRepOp),
    RepReply(RepReply),
}

/// A replica op's fields: pool, pg, epoch, interval since (≤ epoch), version (epoch ≤ epoch,
/// seq), reqid (client, tid), mutation.
#[derive(Debug, Clone)]
struct OwnedRepOp {
    pool: u64,
    pg: u32,
    epoch: u64,
    interval_since: u64,
    version: (u64, u64),
    reqid: (String, u64),
    op: OwnedMutation,
}

#[derive(Debug, Clone)]
enum OwnedMutation {
    Write(String, u64, Vec<u8>),
    WriteFull(String, Vec<u8>),
    Remove(String),
}

#[derive(Debug, Clone)]
enum OwnedOp {
    Write(String, u64, Vec<u8>),
    WriteFull(String, Vec<u8>),
    Read(String, u64, u32),
    Stat(String),
    Remove(String),
    List(Vec<u8>, u32),
}

#[derive(Debug, Clone)]
enum OwnedReply {
    Written,
    WrittenFull,
    Read(Vec<u8>),
    Stat(u64),
    Removed,
    List(Vec<String>, Option<Vec<u8>>),
    Err(OpError),
}

struct Holder<'a> {
    names: Vec<&'a str>,
}

impl Owned {
    fn holder(&self) -> Holder<'_> {
        let names = match self {
            Owned::Reply(OwnedReply::List(n, _)) => n.iter().map(String::as_str).collect(),
            _ => Vec::new(),
        };
        Holder { names }
    }

    fn msg<'a>(&'a self, h: &'a Holder<'a>) -> Message<'a> {
        match self {
            Owned::Hello(min, max, n, id) => Message::Hello(Hello {
                versions: VersionRange::new(*min, *max).unwrap(),
                client_nonce: Nonce(*n),
                client_id: id,
            }),
            Owned::Challenge(v, n) => Message::Challenge(Challenge {
                version: *v,
                server_nonce: Nonce(*n),
            }),
            Owned::Auth(m) => Message::Auth(Auth { mac: *m }),
            Owned::AuthOk(p) => Message::AuthOk(AuthOk { server_proof: *p }),
            Owned::AuthReject(r, min, max) => Message::AuthReject(AuthReject {
                reason: *r,
                server_versions: VersionRange::new(*min, *max).unwrap(),
            }),
            Owned::Request(pool, pg, epoch, op) => Message::OpRequest(OpRequest {
                pool: PoolId(*pool),
                pg: PgId(*pg),
                epoch: Epoch(*epoch),
                op: match op {
                    OwnedOp::Write(o, off, d) => Op::Write {
                        object: o,
                        offset: *off,
                        data: d,
                    },
                    OwnedOp::WriteFull(o, d) => Op::WriteFull { object: o, data: d },
                    OwnedOp::Read(o, off, len) => Op::Read {
                        object: o,
                        offset: *off,
                        len: *len,
                    },
                    OwnedOp::Stat(o) => Op::Stat { object: o },
                    OwnedOp::Remove(o) => Op::Remove { object: o },
                    OwnedOp::List(c, m) => Op::List {
                        cursor: c,
                        max_entries: *m,
                    },
                },
            }),
            Owned::Reply(r) => Message::OpReply(match r {
                OwnedReply::Written => OpReply::ok(ReplyBody::Written),
                OwnedReply::WrittenFull => OpReply::ok(ReplyBody::WrittenFull),
                OwnedReply::Read(d) => OpReply::ok(ReplyBody::Read { data: d }),
                OwnedReply::Stat(size) => OpReply::ok(ReplyBody::Stat { size: *size }),
                OwnedReply::Removed => OpReply::ok(ReplyBody::Removed),
                OwnedReply::List(_, cursor) => OpReply::ok(ReplyBody::List(ListPage {
                    names: NameList::from_slice(&h.names),
                    next_cursor: cursor.as_deref(),
                })),
                OwnedReply::Err(e) => OpReply::err(*e),
            }),
            Owned::RepOp(r) => Message::RepOp(RepOp {
                pool: PoolId(r.pool),
                pg: PgId(r.pg),
                epoch: Epoch(r.epoch),
                interval_since: Epoch(r.interval_since),
                version: Version {
                    epoch: Epoch(r.version.0),
                    seq: r.version.1,
                },
                reqid: ReqId {
                    client: &r.reqid.0,
                    tid: r.reqid.1,
                },
                op: match &r.op {
                    OwnedMutation::Write(o, off, d) => RepMutation::Write {
                        object: o,
                        offset: *off,
                        data: d,
                    },
                    OwnedMutation::WriteFull(o, d) => RepMutation::WriteFull { object: o, data: d },
                    OwnedMutation::Remove(o) => RepMutation::Remove { object: o },
                },
            }),
            Owned::RepReply(r) => Message::RepReply(*r),
        }
    }
}

fn name() -> impl Strategy<Value = String> {
    // Any Unicode, 1..=64 bytes of UTF-8.
    "\\PC{1,16}".prop_filter("fits max_name_len", |s| s.len() <= 64)
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max)
}

fn version_range() -> impl Strategy<Value = (u8, u8)> {
    (1u8..=255).prop_flat_map(|min| (Just(min), min..=255))
}

fn op() -> impl Strategy<Value = OwnedOp> {
    let io = L.max_io_size as usize;
    prop_oneof![
        (name(), 0u64..(1 << 19), bytes(io)).prop_map(|(n, o, d)| OwnedOp::Write(n, o, d)),
        (name(), bytes(io)).prop_map(|(n, d)| OwnedOp::WriteFull(n, d)),
        (name(), 0u64..(1 << 19), 0u32..=L.max_io_size)
            .prop_map(|(n, o, l)| OwnedOp::Read(n, o, l)),
        name().prop_map(OwnedOp::Stat),
        name().prop_map(OwnedOp::Remove),
        (bytes(48), 1u32..=16).prop_map(|(c, m)| OwnedOp::List(c, m)),
    ]
}

fn op_error() -> impl Strategy<Value = OpError> {
    prop_oneof![
        Just(OpError::NotFound),
        Just(OpError::Invalid),
        any::<u64>().prop_map(|e| OpError::StaleMap {
            osd_epoch: Epoch(e)
        }),
        Just(OpError::Again),
        Just(OpError::Io),
        Just(OpError::NoSpace),
    ]
}

fn reply() -> impl Strategy<Value = OwnedReply> {
    prop_oneof![
        Just(OwnedReply::Written),
        Just(OwnedReply::WrittenFull),
        bytes(L.max_io_size as usize).prop_map(OwnedReply::Read),
        any::<u64>().prop_map(OwnedReply::Stat),
        Just(OwnedReply::Removed),
        (
            prop::collection::vec(name(), 0..=16),
            prop::option::of(bytes(48))
        )
            .prop_map(|(n, c)| OwnedReply::List(n, c)),
        op_error().prop_map(OwnedReply::Err),
    ]
}

fn mutation() -> impl Strategy<Value = OwnedMutation> {
    let io = L.max_io_size as usize;
    prop_oneof![
        (name(), 0u64..(1 << 19), bytes(io)).prop_map(|(n, o, d)| OwnedMutation::Write(n, o, d)),
        (name(), bytes(io)).prop_map(|(n, d)| OwnedMutation::WriteFull(n, d)),
        name().prop_map(OwnedMutation::Remove),
    ]
}

/// Any valid replica op: the interval and the version's epoch are never after the map epoch.
fn rep_op() -> impl Strategy<Value = OwnedRepOp> {
    (
        (any::<u64>(), any::<u32>(), any::<u64>()),
        (any::<u64>(), any::<u64>(), any::<u64>()),
        ("\\PC{1,8}", any::<u64>()),
        mutation(),
    )
        .prop_map(|((pool, pg, epoch), (a, b, seq), reqid, op)| OwnedRepOp {
            pool,
            pg,
            epoch,
            interval_since: a % epoch.saturating_add(1),
            version: (b % epoch.saturating_add(1), seq),
            reqid,
            op,
        })
}

fn rep_reply() -> impl Strategy<Value = RepReply> {
    prop_oneof![
        Just(RepReply::OK),
        (any::<u64>(), any::<u64>()).prop_map(|(e, i)| RepReply::err(RepError::StaleInterval {
            replica_epoch: Epoch(e),
            interval_since: Epoch(i % e.saturating_add(1)),
        })),
        Just(RepReply::err(RepError::NotMember)),
        Just(RepReply::err(RepError::Io)),
        Just(RepReply::err(RepError::NoSpace)),
        Just(RepReply::err(RepError::Invalid)),
    ]
}

fn reason() -> impl Strategy<Value = RejectReason> {
    prop_oneof![
        Just(RejectReason::NoCommonVersion),
        Just(RejectReason::BadCredentials),
        Just(RejectReason::Protocol),
    ]
}

fn message() -> impl Strategy<Value = Owned> {
    prop_oneof![
        (version_range(), any::<[u8; 32]>(), "[a-z0-9.]{1,32}")
            .prop_map(|((a, b), n, id)| Owned::Hello(a, b, n, id)),
        (1u8..=255, any::<[u8; 32]>()).prop_map(|(v, n)| Owned::Challenge(v, n)),
        any::<[u8; 32]>().prop_map(Owned::Auth),
        any::<[u8; 32]>().prop_map(Owned::AuthOk),
        (reason(), version_range()).prop_map(|(r, (a, b))| Owned::AuthReject(r, a, b)),
        (any::<u64>(), any::<u32>(), any::<u64>(), op())
            .prop_map(|(p, g, e, o)| Owned::Request(p, g, e, o)),
        reply().prop_map(Owned::Reply),
        rep_op().prop_map(Owned::RepOp),
        rep_reply().prop_map(Owned::RepReply),
    ]
}

fn encode(msg: &Message<'_>, tid: u64) -> Vec<u8> {
    let enc = Encoder::new(VERSION_MAX, L);
    let mut buf = vec![0u8; enc.frame_len(msg)];
    let n = enc
        .encode(tid, msg, &mut buf)
        .expect("generated messages are within limits");
    assert_eq!(n, buf.len(), "frame_len must be exact");
    buf
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_message_round_trips(owned in message(), tid in any::<u64>()) {
        let h = owned.holder();
        let msg = owned.msg(&h);
        let buf = encode(&msg, tid);
        match decode_frame(&buf, &L).unwrap() {
            Decoded::Frame { frame, len } => {
                prop_assert_eq!(len, buf.len());
                prop_assert_eq!(frame.header.tid, tid);
                prop_assert_eq!(frame.header.frame_type, msg.frame_type());
                let back = frame.message(&L).unwrap();
                prop_assert_eq!(back, msg);
                // Re-encoding the decoded message gives the same bytes: one encoding per message.
                prop_assert_eq!(encode(&back, tid), buf);
            }
            Decoded::NeedMore { .. } => prop_assert!(false, "whole frame reported incomplete"),
        }
    }

    /// Replica ops and replies alone, with more cases than the mixed test above: decoded
    /// through a `FrameDecoder` as a replica's `ServerConn` / a primary's `ClientConn` would.
    #[test]
    fn every_rep_op_and_rep_reply_round_trips(
        op in rep_op(),
        reply in rep_reply(),
        tid in any::<u64>(),
    ) {
        let op = Owned::RepOp(op);
        let h = op.holder();
        let mut dec = FrameDecoder::new(L);
        for msg in [op.msg(&h), Message::RepReply(reply)] {
            let buf = encode(&msg, tid);
            prop_assert_eq!(dec.feed(&buf), buf.len());
            let frame = dec.next_frame().unwrap().expect("a whole frame");
            prop_assert_eq!(frame.header.tid, tid);
            let back = frame.message(&L).unwrap();
            prop_assert_eq!(back, msg);
            prop_assert_eq!(encode(&back, tid), buf);
        }
    }

    #[test]
    fn encode_head_plus_bulk_equals_encode(owned in message(), tid in any::<u64>()) {
        let h = owned.holder();
        let msg = owned.msg(&h);
        let full = encode(&msg, tid);
        let enc = Encoder::new(VERSION_MAX, L);
        // A buffer sized for the head only must be enough.
        let head_len = full.len() - msg.bulk().map_or(0, <[u8]>::len);
        let mut out = vec![0u8; head_len];
        let (n, tail) = enc.encode_head(tid, &msg, &mut out).unwrap();
        prop_assert_eq!(n, head_len);
        let mut joined = out[..n].to_vec();
        joined.extend_from_slice(tail);
        prop_assert_eq!(joined, full);
    }

    #[test]
    fn frame_decoder_reassembles_any_split(
        owned in prop::collection::vec(message(), 1..6),
        chunks in prop::collection::vec(1usize..700, 1..40),
    ) {
        let holders: Vec<_> = owned.iter().map(Owned::holder).collect();
        let msgs: Vec<_> = owned.iter().zip(&holders).map(|(o, h)| o.msg(h)).collect();
        let mut stream = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            stream.extend(encode(m, i as u64));
        }
        let mut dec = FrameDecoder::new(L);
        let mut got = 0usize;
        let mut pos = 0usize;
        let mut sizes = chunks.iter().cycle();
        while pos < stream.len() {
            let want = (*sizes.next().unwrap()).min(stream.len() - pos);
            let taken = dec.feed(&stream[pos..pos + want]);
            pos += taken;
            while let Some(frame) = dec.next_frame().unwrap() {
                prop_assert_eq!(frame.header.tid, got as u64);
                prop_assert_eq!(frame.message(&L).unwrap(), msgs[got]);
                got += 1;
            }
        }
        prop_assert_eq!(got, msgs.len());
        prop_assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn every_single_bit_flip_is_detected(owned in message(), bit in any::<prop::sample::Index>()) {
        let h = owned.holder();
        let mut buf = encode(&owned.msg(&h), 1);
        let i = bit.index(buf.len() * 8);
        buf[i / 8] ^= 1 << (i % 8);
        // Either refused outright, or (a length field grew) waiting for bytes that never come:
        // never a successfully decoded, silently different frame.
        match decode_frame(&buf, &L) {
            Err(_) | Ok(Decoded::NeedMore { .. }) => {}
            Ok(Decoded::Frame { .. }) => prop_assert!(false, "flip of bit {} went unnoticed", i),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in bytes(2048)) {
        let _ = decode_frame(&data, &L).map(|d| match d {
            Decoded::Frame { frame, .. } => frame.message(&L).map(|_| ()).map_err(|e| e.to_string()),
            Decoded::NeedMore { .. } => Ok(()),
        });
        let mut dec = FrameDecoder::new(L);
        dec.feed(&data);
        while let Ok(Some(frame)) = dec.next_frame() {
            let _ = frame.message(&L);
        }
    }

    #[test]
    fn arbitrary_payloads_of_each_type_never_panic(ty in 0usize..9, payload in bytes(512)) {
        let types = [
            FrameType::Hello, FrameType::Challenge, FrameType::Auth, FrameType::AuthOk,
            FrameType::AuthReject, FrameType::OpRequest, FrameType::OpReply, FrameType::RepOp,
            FrameType::RepReply,
        ];
        if let Ok(m) = Message::parse(types[ty], &payload, &L) {
            // Whatever parses must re-encode to exactly the same payload.
            let mut out = vec![0u8; m.payload_len()];
            let n = m.write_payload(&mut out, &L).unwrap();
            prop_assert_eq!(&out[..n], &payload[..]);
        }
    }
}

#[test]
fn list_reply_names_iterate_in_order() {
    let names = ["a", "bb", "ccc"];
    let msg = Message::OpReply(OpReply::ok(ReplyBody::List(ListPage {
        names: NameList::from_slice(&names),
        next_cursor: Some(b"ccc"),
    })));
    let buf = encode(&msg, 3);
    let Decoded::Frame { frame, .. } = decode_frame(&buf, &L).unwrap() else {
        panic!("incomplete")
    };
    let Message::OpReply(OpReply {
        result: Ok(ReplyBody::List(page)),
    }) = frame.message(&L).unwrap()
    else {
        panic!("not a list reply")
    };
    assert_eq!(page.names.len(), 3);
    assert_eq!(page.names.iter().collect::<Vec<_>>(), names);
    assert_eq!(page.next_cursor, Some(&b"ccc"[..]));
}

#[test]
fn decoder_accepts_a_maximum_size_frame_and_read_buf_api() {
    // A read reply's payload is 6 bytes + data: this one is exactly max_payload long.
    let lim = Limits {
        max_io_size: L.max_payload - 6,
        ..L
    };
    let data = vec![7u8; lim.max_io_size as usize];
    let msg = Message::OpReply(OpReply::ok(ReplyBody::Read { data: &data }));
    let enc = Encoder::new(VERSION_MAX, lim);
    let mut buf = vec![0u8; enc.frame_len(&msg)];
    enc.encode(1, &msg, &mut buf).unwrap();
    assert_eq!(buf.len(), HEADER_LEN + lim.max_payload as usize);
    let mut dec = FrameDecoder::new(lim);
    let mut pos = 0;
    while pos < buf.len() {
        let space = dec.read_buf();
        assert!(!space.is_empty());
        let n = space.len().min(1000).min(buf.len() - pos);
        space[..n].copy_from_slice(&buf[pos..pos + n]);
        dec.advance(n);
        pos += n;
    }
    assert!(
        dec.read_buf().is_empty(),
        "buffer holds exactly one maximum frame"
    );
    let frame = dec.next_frame().unwrap().unwrap();
    assert_eq!(frame.message(&lim).unwrap(), msg);
    assert!(dec.next_frame().unwrap().is_none());
    assert_eq!(
        dec.read_buf().len(),
        buf.len(),
        "space reclaimed after the frame"
    );
}
