//! Replica ops and replies: every kind and code round-trips with the documented byte layout,
//! and every malformed input is refused with the exact error.

use carmine_wire::*;

const L: Limits = Limits::DEFAULT;

fn rep_op<'a>(op: RepMutation<'a>) -> RepOp<'a> {
    RepOp {
        pool: PoolId(3),
        pg: PgId(17),
        epoch: Epoch(40),
        interval_since: Epoch(38),
        version: Version {
            epoch: Epoch(39),
            seq: 1234,
        },
        reqid: ReqId {
            client: "client.7",
            tid: 99,
        },
        op,
    }
}

fn encode(msg: &Message<'_>, tid: u64) -> Vec<u8> {
    let enc = Encoder::new(VERSION_MIN, L);
    let mut buf = vec![0u8; enc.frame_len(msg)];
    let n = enc.encode(tid, msg, &mut buf).unwrap();
    assert_eq!(n, buf.len(), "frame_len is exact");
    buf
}

fn decode(buf: &[u8]) -> (u64, FrameType, Message<'_>) {
    let Decoded::Frame { frame, len } = decode_frame(buf, &L).unwrap() else {
        panic!("incomplete")
    };
    assert_eq!(len, buf.len());
    (
        frame.header.tid,
        frame.header.frame_type,
        frame.message(&L).unwrap(),
    )
}

/// A frame with correct crcs around an arbitrary payload.
fn raw_frame(ty: FrameType, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; HEADER_LEN];
    f[0..4].copy_from_slice(&MAGIC);
    f[4] = VERSION_MIN;
    f[5] = ty as u8;
    f[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    f[20..24].copy_from_slice(&carmine_checksum::crc32c(payload).to_le_bytes());
    let crc = carmine_checksum::crc32c(&f[..28]);
    f[28..32].copy_from_slice(&crc.to_le_bytes());
    f.extend_from_slice(payload);
    f
}

fn msg_err(ty: FrameType, payload: &[u8]) -> MessageError {
    let f = raw_frame(ty, payload);
    let Decoded::Frame { frame, .. } = decode_frame(&f, &L).unwrap() else {
        panic!("incomplete")
    };
    match frame.message(&L).unwrap_err() {
        DecodeError::Message(e) => e,
        other => panic!("expected a message error, got {other:?}"),
    }
}

fn str16(p: &mut Vec<u8>, s: &[u8]) {
    p.extend_from_slice(&(s.len() as u16).to_le_bytes());
    p.extend_from_slice(s);
}

/// The RepOp payload up to (excluding) the op kind, written by hand from PROTOCOL.md.
fn prefix(epoch: u64, interval: u64, version: (u64, u64), client: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&3u64.to_le_bytes());
    p.extend_from_slice(&17u32.to_le_bytes());
    p.extend_from_slice(&epoch.to_le_bytes());
    p.extend_from_slice(&interval.to_le_bytes());
    p.extend_from_slice(&version.0.to_le_bytes());
    p.extend_from_slice(&version.1.to_le_bytes());
    str16(&mut p, client);
    p.extend_from_slice(&99u64.to_le_bytes());
    p
}

fn good_prefix() -> Vec<u8> {
    prefix(40, 38, (39, 1234), b"client.7")
}

// ------------------------------------------------------------------ round trips

#[test]
fn every_rep_op_kind_round_trips_with_the_documented_layout() {
    let data: Vec<u8> = (0..=255).collect();
    let cases = [
        (
            rep_op(RepMutation::Write {
                object: "obj",
                offset: 4096,
                data: &data,
            }),
            {
                let mut p = good_prefix();
                p.push(1);
                str16(&mut p, b"obj");
                p.extend_from_slice(&4096u64.to_le_bytes());
                p.extend_from_slice(&256u32.to_le_bytes());
                p.extend_from_slice(&data);
                p
            },
        ),
        (
            rep_op(RepMutation::WriteFull {
                object: "obj",
                data: &data,
            }),
            {
                let mut p = good_prefix();
                p.push(2);
                str16(&mut p, b"obj");
                p.extend_from_slice(&256u32.to_le_bytes());
                p.extend_from_slice(&data);
                p
            },
        ),
        (rep_op(RepMutation::Remove { object: "obj" }), {
            let mut p = good_prefix();
            p.push(5);
            str16(&mut p, b"obj");
            p
        }),
        // Recovery pushes: a whole object, or a tombstone.
        (
            rep_op(RepMutation::Push {
                object: "obj",
                data: b"xyz",
            }),
            {
                let mut p = good_prefix();
                p.push(0x21);
                str16(&mut p, b"obj");
                p.extend_from_slice(&3u32.to_le_bytes());
                p.extend_from_slice(b"xyz");
                p
            },
        ),
        (rep_op(RepMutation::PushTombstone { object: "obj" }), {
            let mut p = good_prefix();
            p.push(0x22);
            str16(&mut p, b"obj");
            p
        }),
        // Empty data is a valid write (creates the object / truncates it to 0).
        (
            rep_op(RepMutation::WriteFull {
                object: "empty",
                data: &[],
            }),
            {
                let mut p = good_prefix();
                p.push(2);
                str16(&mut p, b"empty");
                p.extend_from_slice(&0u32.to_le_bytes());
                p
            },
        ),
    ];
    for (op, payload) in cases {
        let msg = Message::RepOp(op);
        let buf = encode(&msg, 0xfeed);
        assert_eq!(&buf[HEADER_LEN..], &payload[..], "{op:?}");
        assert_eq!(buf[5], 0x20, "RepOp frame type code");
        let (tid, ty, back) = decode(&buf);
        assert_eq!((tid, ty, back), (0xfeed, FrameType::RepOp, msg));
        // The data is borrowed from the frame, not copied.
        if let (Message::RepOp(b), Some(d)) = (back, op.op.data()) {
            let got = b.op.data().unwrap();
            assert_eq!(got, d);
            assert!(d.is_empty() || buf.as_ptr_range().contains(&got.as_ptr()));
        }
        // Zero-copy: head + data is the same frame.
        let enc = Encoder::new(VERSION_MIN, L);
        let mut head = [0u8; 256];
        let (n, tail) = enc.encode_head(0xfeed, &msg, &mut head).unwrap();
        assert_eq!(tail, op.op.data().unwrap_or(&[]));
        assert_eq!([&head[..n], tail].concat(), buf);
    }
}

#[test]
fn every_rep_reply_code_round_trips_with_the_documented_layout() {
    let cases: [(RepReply, &[u8]); 6] = [
        (RepReply::OK, &[0]),
        (
            RepReply::err(RepError::StaleInterval {
                replica_epoch: Epoch(0x0102),
                interval_since: Epoch(0x0101),
            }),
            &[1, 2, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0],
        ),
        (RepReply::err(RepError::NotMember), &[2]),
        (RepReply::err(RepError::Io), &[3]),
        (RepReply::err(RepError::NoSpace), &[4]),
        (RepReply::err(RepError::Invalid), &[5]),
    ];
    for (reply, payload) in cases {
        let msg = Message::RepReply(reply);
        let buf = encode(&msg, 7);
        assert_eq!(&buf[HEADER_LEN..], payload, "{reply:?}");
        assert_eq!(buf[5], 0x21, "RepReply frame type code");
        assert_eq!(decode(&buf), (7, FrameType::RepReply, msg));
        if let Err(e) = reply.result {
            assert_eq!(e.code() as u8, payload[0]);
            assert!(!e.to_string().is_empty());
        }
    }
}

#[test]
fn versions_order_by_epoch_then_seq() {
    let v = |e, s| Version {
        epoch: Epoch(e),
        seq: s,
    };
    assert!(v(1, 100) < v(2, 1));
    assert!(v(2, 1) < v(2, 2));
    assert_eq!(v(3, 3), v(3, 3));
    let mut vs = [v(2, 5), v(1, 9), v(2, 1), v(1, 10)];
    vs.sort();
    assert_eq!(vs, [v(1, 9), v(1, 10), v(2, 1), v(2, 5)]);
}

#[test]
fn largest_rep_op_fits_the_default_frame() {
    // Longest client id and name, maximum data: still within max_payload.
    let client = "c".repeat(usize::from(L.max_client_id_len));
    let object = "o".repeat(usize::from(L.max_name_len));
    let data = vec![0u8; L.max_io_size as usize];
    let mut op = rep_op(RepMutation::Write {
        object: &object,
        offset: L.max_object_size - u64::from(L.max_io_size),
        data: &data,
    });
    op.reqid.client = &client;
    let buf = encode(&Message::RepOp(op), 1);
    assert!(buf.len() - HEADER_LEN <= L.max_payload as usize);
    assert_eq!(decode(&buf).2, Message::RepOp(op));
}

// ------------------------------------------------------------------ errors

#[test]
fn truncated_rep_ops_and_replies_name_the_missing_field() {
    let data = [9u8; 10];
    let msgs = [
        Message::RepOp(rep_op(RepMutation::Write {
            object: "o",
            offset: 1,
            data: &data,
        })),
        Message::RepOp(rep_op(RepMutation::WriteFull {
            object: "o",
            data: &data,
        })),
        Message::RepOp(rep_op(RepMutation::Remove { object: "o" })),
        Message::RepReply(RepReply::err(RepError::StaleInterval {
            replica_epoch: Epoch(5),
            interval_since: Epoch(4),
        })),
    ];
    for msg in msgs {
        let f = encode(&msg, 1);
        let payload = &f[HEADER_LEN..];
        for cut in 0..payload.len() {
            let e = msg_err(msg.frame_type(), &payload[..cut]);
            assert!(
                matches!(e, MessageError::Truncated { .. }),
                "{msg:?} cut at {cut}: {e}"
            );
        }
    }
    assert_eq!(
        msg_err(FrameType::RepOp, &good_prefix()[..30]),
        MessageError::Truncated {
            field: "version epoch",
            needed: 8,
            available: 2
        }
    );
    assert_eq!(
        msg_err(FrameType::RepReply, &[1, 0, 0, 0, 0, 0, 0, 0, 0]),
        MessageError::Truncated {
            field: "replica interval since",
            needed: 8,
            available: 0
        }
    );
}

#[test]
fn trailing_bytes_are_refused() {
    for msg in [
        Message::RepOp(rep_op(RepMutation::Remove { object: "o" })),
        Message::RepReply(RepReply::OK),
        Message::RepReply(RepReply::err(RepError::NotMember)),
    ] {
        let f = encode(&msg, 1);
        let mut payload = f[HEADER_LEN..].to_vec();
        payload.push(0);
        assert_eq!(
            msg_err(msg.frame_type(), &payload),
            MessageError::TrailingBytes { count: 1 },
            "{msg:?}"
        );
    }
}

#[test]
fn unknown_and_non_replicable_op_kinds_are_refused() {
    // Read, stat and list are not mutations; 0 and 0x42 are nothing at all.
    for kind in [0u8, 3, 4, 6, 0x42] {
        let mut p = good_prefix();
        p.push(kind);
        str16(&mut p, b"o");
        assert_eq!(
            msg_err(FrameType::RepOp, &p),
            MessageError::UnknownOpCode(kind)
        );
    }
}

#[test]
fn unknown_rep_result_codes_are_refused() {
    for code in [6u8, 0x10, 0xff] {
        assert_eq!(
            msg_err(FrameType::RepReply, &[code]),
            MessageError::UnknownResultCode(code)
        );
    }
}

#[test]
fn names_client_ids_and_data_are_bounded() {
    let long_name = vec![b'n'; usize::from(L.max_name_len) + 1];
    let mut p = good_prefix();
    p.push(5);
    str16(&mut p, &long_name);
    assert_eq!(
        msg_err(FrameType::RepOp, &p),
        MessageError::TooLong {
            field: "object name",
            len: long_name.len(),
            max: usize::from(L.max_name_len)
        }
    );
    let mut p = good_prefix();
    p.push(5);
    str16(&mut p, b"");
    assert_eq!(
        msg_err(FrameType::RepOp, &p),
        MessageError::Empty {
            field: "object name"
        }
    );
    let long_client = vec![b'c'; usize::from(L.max_client_id_len) + 1];
    let mut p = prefix(40, 38, (39, 1), &long_client);
    p.push(5);
    str16(&mut p, b"o");
    assert_eq!(
        msg_err(FrameType::RepOp, &p),
        MessageError::TooLong {
            field: "reqid client id",
            len: long_client.len(),
            max: usize::from(L.max_client_id_len)
        }
    );
    let mut p = prefix(40, 38, (39, 1), b"");
    p.push(5);
    str16(&mut p, b"o");
    assert_eq!(
        msg_err(FrameType::RepOp, &p),
        MessageError::Empty {
            field: "reqid client id"
        }
    );
    let mut p = prefix(40, 38, (39, 1), b"\xff");
    p.push(5);
    str16(&mut p, b"o");
    assert_eq!(
        msg_err(FrameType::RepOp, &p),
        MessageError::BadUtf8 {
            field: "reqid client id",
            valid_up_to: 0
        }
    );
    // Data over max_io_size: a small-limits decoder refuses what the default one accepts.
    let small = Limits {
        max_io_size: 16,
        ..L
    };
    let data = [0u8; 17];
    let msg = Message::RepOp(rep_op(RepMutation::WriteFull {
        object: "o",
        data: &data,
    }));
    let f = encode(&msg, 1);
    let Decoded::Frame { frame, .. } = decode_frame(&f, &small).unwrap() else {
        panic!()
    };
    assert_eq!(
        frame.message(&small).unwrap_err(),
        DecodeError::Message(MessageError::TooLong {
            field: "op data",
            len: 17,
            max: 16
        })
    );
    // A write past the object size limit.
    let mut p = good_prefix();
    p.push(1);
    str16(&mut p, b"o");
    p.extend_from_slice(&L.max_object_size.to_le_bytes());
    p.extend_from_slice(&1u32.to_le_bytes());
    p.push(0);
    assert_eq!(
        msg_err(FrameType::RepOp, &p),
        MessageError::ObjectTooLarge {
            end: L.max_object_size + 1,
            max: L.max_object_size
        }
    );
    // A hostile data length is a truncation, never an allocation.
    let mut p = good_prefix();
    p.push(2);
    str16(&mut p, b"o");
    p.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        msg_err(FrameType::RepOp, &p),
        MessageError::Truncated {
            field: "op data",
            ..
        }
    ));
}

#[test]
fn epochs_from_the_future_are_refused() {
    let mut p = prefix(40, 41, (39, 1), b"c");
    p.push(5);
    str16(&mut p, b"o");
    assert_eq!(
        msg_err(FrameType::RepOp, &p),
        MessageError::NewerThanMap {
            field: "interval since",
            value: 41,
            epoch: 40
        }
    );
    let mut p = prefix(40, 38, (41, 1), b"c");
    p.push(5);
    str16(&mut p, b"o");
    assert_eq!(
        msg_err(FrameType::RepOp, &p),
        MessageError::NewerThanMap {
            field: "version epoch",
            value: 41,
            epoch: 40
        }
    );
    let mut p = vec![1u8];
    p.extend_from_slice(&5u64.to_le_bytes());
    p.extend_from_slice(&6u64.to_le_bytes());
    assert_eq!(
        msg_err(FrameType::RepReply, &p),
        MessageError::NewerThanMap {
            field: "replica interval since",
            value: 6,
            epoch: 5
        }
    );
    // Equal epochs are fine (the interval starts with this very map).
    let mut p = prefix(40, 40, (40, 1), b"c");
    p.push(5);
    str16(&mut p, b"o");
    let f = raw_frame(FrameType::RepOp, &p);
    assert!(matches!(decode(&f).2, Message::RepOp(_)));
}

#[test]
fn the_encoder_refuses_what_a_replica_would_refuse() {
    let enc = Encoder::new(VERSION_MIN, L);
    let mut buf = vec![0u8; 4096];
    let mut op = rep_op(RepMutation::Remove { object: "o" });
    op.interval_since = Epoch(41);
    assert_eq!(
        enc.encode(1, &Message::RepOp(op), &mut buf).unwrap_err(),
        EncodeError::Invalid(MessageError::NewerThanMap {
            field: "interval since",
            value: 41,
            epoch: 40
        })
    );
    let mut op = rep_op(RepMutation::Remove { object: "" });
    assert_eq!(
        enc.encode(1, &Message::RepOp(op), &mut buf).unwrap_err(),
        EncodeError::Invalid(MessageError::Empty {
            field: "object name"
        })
    );
    op.op = RepMutation::Remove { object: "o" };
    op.reqid.client = "";
    assert_eq!(
        enc.encode(1, &Message::RepOp(op), &mut buf).unwrap_err(),
        EncodeError::Invalid(MessageError::Empty {
            field: "reqid client id"
        })
    );
    let reply = RepReply::err(RepError::StaleInterval {
        replica_epoch: Epoch(1),
        interval_since: Epoch(2),
    });
    assert!(matches!(
        enc.encode(1, &Message::RepReply(reply), &mut buf),
        Err(EncodeError::Invalid(MessageError::NewerThanMap { .. }))
    ));
}
