//! Every decode error kind, each produced from a concrete malformed input, and the encoder's
//! refusals. Each test asserts the exact error, so a check that stops firing (or fires for the
//! wrong reason) fails here.

use carmine_wire::*;

const L: Limits = Limits::DEFAULT;

/// A frame with correct crcs around an arbitrary payload and frame type byte.
fn raw_frame(ty: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; HEADER_LEN];
    f[0..4].copy_from_slice(&MAGIC);
    f[4] = VERSION_MIN;
    f[5] = ty;
    f[8..16].copy_from_slice(&77u64.to_le_bytes());
    f[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    f[20..24].copy_from_slice(&carmine_checksum::crc32c(payload).to_le_bytes());
    reseal(&mut f);
    f.extend_from_slice(payload);
    f
}

/// Recomputes the header crc after a test tampered with the header.
fn reseal(f: &mut [u8]) {
    let crc = carmine_checksum::crc32c(&f[..28]);
    f[28..32].copy_from_slice(&crc.to_le_bytes());
}

fn encode(msg: &Message<'_>) -> Vec<u8> {
    let enc = Encoder::new(VERSION_MIN, L);
    let mut buf = vec![0u8; enc.frame_len(msg)];
    let n = enc.encode(5, msg, &mut buf).unwrap();
    assert_eq!(n, buf.len());
    buf
}

fn frame_err(bytes: &[u8]) -> FrameError {
    decode_frame(bytes, &L).unwrap_err()
}

fn msg_err(ty: FrameType, payload: &[u8]) -> MessageError {
    let f = raw_frame(ty as u8, payload);
    match decode_frame(&f, &L).unwrap() {
        Decoded::Frame { frame, .. } => match frame.message(&L).unwrap_err() {
            DecodeError::Message(e) => e,
            other => panic!("expected a message error, got {other:?}"),
        },
        Decoded::NeedMore { .. } => panic!("complete frame reported incomplete"),
    }
}

fn stat(object: &str) -> Message<'_> {
    Message::OpRequest(OpRequest {
        pool: PoolId(1),
        pg: PgId(2),
        epoch: Epoch(3),
        op: Op::Stat { object },
    })
}

/// An OpRequest payload with a valid fixed prefix and the given kind.
fn req_prefix(kind: u8) -> Vec<u8> {
    let mut p = vec![kind];
    p.extend_from_slice(&1u64.to_le_bytes());
    p.extend_from_slice(&2u32.to_le_bytes());
    p.extend_from_slice(&3u64.to_le_bytes());
    p
}

fn str16(p: &mut Vec<u8>, s: &[u8]) {
    p.extend_from_slice(&(s.len() as u16).to_le_bytes());
    p.extend_from_slice(s);
}

// ------------------------------------------------------------------ frame errors

#[test]
fn bad_magic_full_header() {
    let mut f = encode(&stat("a"));
    f[0] = b'X';
    assert!(matches!(frame_err(&f), FrameError::BadMagic { found } if found == *b"XRMN"));
}

#[test]
fn bad_magic_detected_before_a_whole_header() {
    assert_eq!(frame_err(b"GET "), FrameError::BadMagic { found: *b"GET " });
    assert_eq!(
        frame_err(b"CX"),
        FrameError::BadMagic {
            found: [b'C', b'X', 0, 0]
        }
    );
    // A correct prefix just needs more bytes.
    assert_eq!(
        decode_frame(b"CRM", &L).unwrap(),
        Decoded::NeedMore { needed: HEADER_LEN }
    );
    assert_eq!(
        decode_frame(b"", &L).unwrap(),
        Decoded::NeedMore { needed: HEADER_LEN }
    );
}

#[test]
fn header_crc_mismatch() {
    let mut f = encode(&stat("a"));
    f[10] ^= 1; // tid bit: only the header crc can notice
    assert!(matches!(frame_err(&f), FrameError::HeaderCrc { .. }));
}

#[test]
fn payload_crc_mismatch() {
    let mut f = encode(&stat("abc"));
    let last = f.len() - 1;
    f[last] ^= 0x80;
    assert!(matches!(frame_err(&f), FrameError::PayloadCrc { .. }));
}

#[test]
fn unsupported_version() {
    for v in [0u8, VERSION_MAX + 1, 0xff] {
        let mut f = encode(&stat("a"));
        f[4] = v;
        reseal(&mut f);
        assert_eq!(
            frame_err(&f),
            FrameError::UnsupportedVersion {
                version: v,
                min: VERSION_MIN,
                max: VERSION_MAX
            }
        );
    }
}

#[test]
fn unknown_frame_type() {
    let f = raw_frame(0x7e, &[]);
    assert_eq!(frame_err(&f), FrameError::UnknownFrameType(0x7e));
}

#[test]
fn unknown_flags() {
    let mut f = encode(&stat("a"));
    f[6] = 0x01;
    reseal(&mut f);
    assert_eq!(frame_err(&f), FrameError::UnknownFlags(1));
}

#[test]
fn reserved_nonzero() {
    let mut f = encode(&stat("a"));
    f[24] = 0x10;
    reseal(&mut f);
    assert_eq!(frame_err(&f), FrameError::ReservedNonZero(0x10));
}

#[test]
fn oversize_frame_refused_from_the_header_alone() {
    let mut head = raw_frame(FrameType::OpRequest as u8, &[]);
    head[16..20].copy_from_slice(&(L.max_payload + 1).to_le_bytes());
    reseal(&mut head);
    // Only the 32 header bytes are present: refused without waiting for 4 MiB.
    assert_eq!(
        frame_err(&head),
        FrameError::FrameTooLarge {
            len: L.max_payload + 1,
            max: L.max_payload
        }
    );
}

#[test]
fn truncated_frame_needs_more_and_never_errors() {
    let f = encode(&stat("object"));
    for cut in 0..f.len() {
        let expect = if cut < HEADER_LEN {
            HEADER_LEN
        } else {
            f.len()
        };
        assert_eq!(
            decode_frame(&f[..cut], &L).unwrap(),
            Decoded::NeedMore { needed: expect },
            "cut at {cut}"
        );
    }
}

#[test]
fn version_mismatch_after_negotiation() {
    let mut f = encode(&stat("a"));
    f[4] = VERSION_MIN;
    reseal(&mut f);
    let mut dec = FrameDecoder::new(L);
    dec.set_negotiated_version(VERSION_MIN + 1);
    dec.feed(&f);
    let err = dec.next_frame().unwrap_err();
    assert_eq!(
        err,
        FrameError::VersionMismatch {
            version: VERSION_MIN,
            negotiated: VERSION_MIN + 1
        }
    );
    // Poisoned: the stream lost sync, the same error comes back.
    assert_eq!(dec.next_frame().unwrap_err(), err);
}

// ------------------------------------------------------------------ message errors

#[test]
fn truncated_payloads_name_the_missing_field() {
    let data = [1u8; 10];
    let msgs = [
        stat("obj"),
        Message::OpRequest(OpRequest {
            pool: PoolId(1),
            pg: PgId(2),
            epoch: Epoch(3),
            op: Op::Write {
                object: "o",
                offset: 4,
                data: &data,
            },
        }),
        Message::OpReply(OpReply::ok(ReplyBody::Read { data: &data })),
        Message::Challenge(Challenge {
            version: 1,
            server_nonce: Nonce([3; 32]),
        }),
    ];
    for msg in msgs {
        let f = encode(&msg);
        let payload = &f[HEADER_LEN..];
        for cut in 0..payload.len() {
            let e = msg_err(msg.frame_type(), &payload[..cut]);
            assert!(
                matches!(e, MessageError::Truncated { .. }),
                "{msg:?} cut at {cut}: {e}"
            );
        }
    }
    let e = msg_err(FrameType::OpRequest, &req_prefix(4)[..5]);
    assert_eq!(
        e,
        MessageError::Truncated {
            field: "pool id",
            needed: 8,
            available: 4
        }
    );
}

#[test]
fn trailing_bytes() {
    let f = encode(&stat("a"));
    let mut payload = f[HEADER_LEN..].to_vec();
    payload.extend_from_slice(&[0, 0]);
    assert_eq!(
        msg_err(FrameType::OpRequest, &payload),
        MessageError::TrailingBytes { count: 2 }
    );
}

#[test]
fn bad_utf8_object_name() {
    let mut p = req_prefix(OpKind::Stat as u8);
    str16(&mut p, b"ok\xff\xfe");
    assert_eq!(
        msg_err(FrameType::OpRequest, &p),
        MessageError::BadUtf8 {
            field: "object name",
            valid_up_to: 2
        }
    );
}

#[test]
fn bad_utf8_client_id() {
    let mut p = vec![1, 1];
    p.extend_from_slice(&[0u8; 32]);
    str16(&mut p, b"\xc3");
    assert!(matches!(
        msg_err(FrameType::Hello, &p),
        MessageError::BadUtf8 {
            field: "client id",
            ..
        }
    ));
}

#[test]
fn empty_and_overlong_names() {
    let mut p = req_prefix(OpKind::Remove as u8);
    str16(&mut p, b"");
    assert_eq!(
        msg_err(FrameType::OpRequest, &p),
        MessageError::Empty {
            field: "object name"
        }
    );
    let long = vec![b'n'; usize::from(L.max_name_len) + 1];
    let mut p = req_prefix(OpKind::Remove as u8);
    str16(&mut p, &long);
    assert_eq!(
        msg_err(FrameType::OpRequest, &p),
        MessageError::TooLong {
            field: "object name",
            len: long.len(),
            max: usize::from(L.max_name_len)
        }
    );
}

#[test]
fn write_beyond_object_size_limit() {
    let mut p = req_prefix(OpKind::Write as u8);
    str16(&mut p, b"o");
    p.extend_from_slice(&(L.max_object_size - 1).to_le_bytes());
    p.extend_from_slice(&2u32.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    assert_eq!(
        msg_err(FrameType::OpRequest, &p),
        MessageError::ObjectTooLarge {
            end: L.max_object_size + 1,
            max: L.max_object_size
        }
    );
    // offset + len overflowing u64 saturates instead of wrapping past the check.
    let mut p = req_prefix(OpKind::Read as u8);
    str16(&mut p, b"o");
    p.extend_from_slice(&u64::MAX.to_le_bytes());
    p.extend_from_slice(&1u32.to_le_bytes());
    assert_eq!(
        msg_err(FrameType::OpRequest, &p),
        MessageError::ObjectTooLarge {
            end: u64::MAX,
            max: L.max_object_size
        }
    );
}

#[test]
fn read_longer_than_io_limit() {
    let mut p = req_prefix(OpKind::Read as u8);
    str16(&mut p, b"o");
    p.extend_from_slice(&0u64.to_le_bytes());
    p.extend_from_slice(&(L.max_io_size + 1).to_le_bytes());
    assert!(matches!(
        msg_err(FrameType::OpRequest, &p),
        MessageError::TooLong {
            field: "op data",
            ..
        }
    ));
}

#[test]
fn hostile_data_length_is_truncation_not_allocation() {
    let mut p = req_prefix(OpKind::WriteFull as u8);
    str16(&mut p, b"o");
    p.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        msg_err(FrameType::OpRequest, &p),
        MessageError::Truncated {
            field: "op data",
            ..
        }
    ));
}

#[test]
fn list_limits() {
    let mut p = req_prefix(OpKind::List as u8);
    str16(&mut p, b"");
    p.extend_from_slice(&(L.max_list_entries + 1).to_le_bytes());
    assert!(matches!(
        msg_err(FrameType::OpRequest, &p),
        MessageError::TooMany { .. }
    ));
    let mut p = req_prefix(OpKind::List as u8);
    str16(&mut p, b"");
    p.extend_from_slice(&0u32.to_le_bytes());
    assert!(matches!(
        msg_err(FrameType::OpRequest, &p),
        MessageError::Empty { .. }
    ));
    // A reply claiming 4 billion names is refused before any is read.
    let p = [0u8, OpKind::List as u8, 0, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(
        msg_err(FrameType::OpReply, &p),
        MessageError::TooMany {
            field: "list entries",
            value: u64::from(u32::MAX),
            max: u64::from(L.max_list_entries)
        }
    );
}

#[test]
fn unknown_codes() {
    assert_eq!(
        msg_err(FrameType::OpRequest, &req_prefix(0x42)),
        MessageError::UnknownOpCode(0x42)
    );
    assert_eq!(
        msg_err(FrameType::OpReply, &[0x09]),
        MessageError::UnknownResultCode(9)
    );
    assert_eq!(
        msg_err(FrameType::OpReply, &[0, 0]),
        MessageError::UnknownOpCode(0)
    );
    assert_eq!(
        msg_err(FrameType::AuthReject, &[7, 1, 1]),
        MessageError::UnknownRejectReason(7)
    );
}

#[test]
fn invalid_has_next_flag() {
    let p = [0u8, OpKind::List as u8, 2];
    assert_eq!(
        msg_err(FrameType::OpReply, &p),
        MessageError::InvalidValue {
            field: "list has_next",
            value: 2
        }
    );
}

#[test]
fn bad_version_range_in_hello() {
    let mut p = vec![3, 2];
    p.extend_from_slice(&[0u8; 32]);
    str16(&mut p, b"client.1");
    assert_eq!(
        msg_err(FrameType::Hello, &p),
        MessageError::BadVersionRange { min: 3, max: 2 }
    );
    let mut p = vec![0, 1];
    p.extend_from_slice(&[0u8; 32]);
    str16(&mut p, b"client.1");
    assert_eq!(
        msg_err(FrameType::Hello, &p),
        MessageError::BadVersionRange { min: 0, max: 1 }
    );
}

#[test]
fn challenge_with_version_zero() {
    let mut p = vec![0u8];
    p.extend_from_slice(&[0u8; 32]);
    assert_eq!(
        msg_err(FrameType::Challenge, &p),
        MessageError::InvalidValue {
            field: "chosen version",
            value: 0
        }
    );
}

#[test]
fn decode_errors_display_a_reason() {
    let e = DecodeError::from(FrameError::BadMagic { found: *b"GET " });
    assert!(e.to_string().contains("bad magic"), "{e}");
    let e = DecodeError::from(MessageError::BadUtf8 {
        field: "object name",
        valid_up_to: 2,
    });
    assert!(
        e.to_string().contains("object name is not valid UTF-8"),
        "{e}"
    );
}

// ------------------------------------------------------------------ encoder refusals

#[test]
fn encoder_buffer_too_small() {
    let enc = Encoder::new(VERSION_MIN, L);
    let msg = stat("abc");
    let mut buf = vec![0u8; enc.frame_len(&msg) - 1];
    assert_eq!(
        enc.encode(1, &msg, &mut buf).unwrap_err(),
        EncodeError::BufferTooSmall {
            needed: buf.len() + 1,
            available: buf.len()
        }
    );
}

#[test]
fn encoder_refuses_what_the_peer_would_refuse() {
    let enc = Encoder::new(VERSION_MIN, L);
    let mut buf = vec![0u8; 1 << 16];
    assert_eq!(
        enc.encode(1, &stat(""), &mut buf).unwrap_err(),
        EncodeError::Invalid(MessageError::Empty {
            field: "object name"
        })
    );
    let small = Limits {
        max_payload: 64,
        ..L
    };
    let enc = Encoder::new(VERSION_MIN, small);
    let name = "x".repeat(100);
    assert!(matches!(
        enc.encode(1, &stat(&name), &mut buf).unwrap_err(),
        EncodeError::FrameTooLarge { max: 64, .. }
    ));
}

#[test]
fn frame_decoder_poisoned_after_garbage() {
    let mut dec = FrameDecoder::new(L);
    dec.feed(b"\x16\x03\x01 not a carmine frame at all, a TLS hello perhaps");
    let e = dec.next_frame().unwrap_err();
    assert!(matches!(e, FrameError::BadMagic { .. }));
    assert_eq!(dec.next_frame().unwrap_err(), e);
}
