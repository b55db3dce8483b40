use super::*;
use proptest::prelude::*;

fn export(name: &str, size: u64) -> ExportInfo {
    ExportInfo {
        name: name.into(),
        description: format!("image {name}"),
        size,
        flags: FLAG_HAS_FLAGS | FLAG_SEND_FLUSH,
    }
}

fn option(opt: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = OptionHeader {
        option: opt,
        length: payload.len() as u32,
    }
    .encode()
    .to_vec();
    v.extend_from_slice(payload);
    v
}

/// Option replies in `out`: (option, type, payload).
fn parse_replies(mut out: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
    let mut v = Vec::new();
    while !out.is_empty() {
        assert_eq!(
            u64::from_be_bytes(out[0..8].try_into().unwrap()),
            OPT_REPLY_MAGIC
        );
        let opt = u32::from_be_bytes(out[8..12].try_into().unwrap());
        let ty = u32::from_be_bytes(out[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(out[16..20].try_into().unwrap()) as usize;
        v.push((opt, ty, out[20..20 + len].to_vec()));
        out = &out[20 + len..];
    }
    v
}

fn started(exports: Vec<ExportInfo>, client_flags: u32) -> Handshake {
    started_tls(exports, client_flags, TlsMode::NoTls)
}

fn started_tls(exports: Vec<ExportInfo>, client_flags: u32, mode: TlsMode) -> Handshake {
    let mut h = Handshake::with_tls(exports, mode);
    let greet = h.take_output();
    assert_eq!(greet.len(), GREETING_LEN);
    assert_eq!(&greet[0..8], &NBDMAGIC.to_be_bytes());
    assert_eq!(&greet[8..16], &IHAVEOPT.to_be_bytes());
    assert_eq!(
        (n(h.advance(&client_flags.to_be_bytes())), 4),
        (Step::NeedMore, 4)
    );
    h
}

fn n(r: Result<(usize, Step), ProtoError>) -> Step {
    r.unwrap().1
}

#[test]
fn refuses_clients_without_fixed_newstyle_or_with_unknown_flags() {
    for flags in [0u32, FLAG_C_NO_ZEROES, FLAG_C_FIXED_NEWSTYLE | 4] {
        let mut h = Handshake::new(vec![export("a", 10)]);
        assert_eq!(
            h.advance(&flags.to_be_bytes()),
            Err(ProtoError::ClientFlags(flags))
        );
    }
}

#[test]
fn go_sends_export_info_block_size_and_ack() {
    let mut h = started(vec![export("p/a", 1 << 20), export("p/b", 4096)], 3);
    let sr = option(OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(h.advance(&sr).unwrap(), (sr.len(), Step::NeedMore));
    let r = parse_replies(&h.take_output());
    assert_eq!(r, vec![(OPT_STRUCTURED_REPLY, REP_ACK, vec![])]);

    let go = option(
        OPT_GO,
        &InfoRequest {
            name: "p/b",
            infos: vec![INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE],
        }
        .encode(),
    );
    let mut input = go.clone();
    input.extend_from_slice(b"trailing transmission bytes");
    let (used, step) = h.advance(&input).unwrap();
    assert_eq!(used, go.len(), "transmission bytes are left to the caller");
    let flags = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_DF;
    assert_eq!(
        step,
        Step::Transmission(Negotiated {
            export: 1,
            structured: true,
            flags
        })
    );
    let r = parse_replies(&h.take_output());
    let mut exp = INFO_EXPORT.to_be_bytes().to_vec();
    exp.extend_from_slice(&4096u64.to_be_bytes());
    exp.extend_from_slice(&flags.to_be_bytes());
    assert_eq!(r[0], (OPT_GO, REP_INFO, exp));
    assert_eq!(r[1].2[2..], *b"p/b");
    assert_eq!(r[2].2[2..], *b"image p/b");
    let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    for v in [1u32, 4096, 32 << 20] {
        bs.extend_from_slice(&v.to_be_bytes());
    }
    assert_eq!(r[3], (OPT_GO, REP_INFO, bs));
    assert_eq!(r[4], (OPT_GO, REP_ACK, vec![]));
    assert_eq!(r.len(), 5);
    assert_eq!(h.advance(b"x"), Err(ProtoError::HandshakeFinished));
}

#[test]
fn go_unknown_export_is_an_error_reply_then_haggling_continues() {
    let mut h = started(vec![export("p/a", 1)], 1);
    let go = option(
        OPT_GO,
        &InfoRequest {
            name: "nope",
            infos: vec![],
        }
        .encode(),
    );
    assert_eq!(n(h.advance(&go)), Step::NeedMore);
    let r = parse_replies(&h.take_output());
    assert_eq!((r[0].0, r[0].1, r.len()), (OPT_GO, REP_ERR_UNKNOWN, 1));
    // The empty name is the default export (the first).
    let info = option(
        OPT_INFO,
        &InfoRequest {
            name: "",
            infos: vec![],
        }
        .encode(),
    );
    assert_eq!(n(h.advance(&info)), Step::NeedMore);
    let r = parse_replies(&h.take_output());
    assert_eq!(r.last().unwrap().1, REP_ACK);
    let go = option(
        OPT_GO,
        &InfoRequest {
            name: "",
            infos: vec![],
        }
        .encode(),
    );
    assert!(matches!(
        n(h.advance(&go)),
        Step::Transmission(Negotiated {
            export: 0,
            structured: false,
            ..
        })
    ));
}

#[test]
fn export_name_with_and_without_zeroes() {
    for (cflags, len) in [(1u32, 8 + 2 + 124), (3, 10)] {
        let mut h = started(vec![export("p/a", 77)], cflags);
        let step = n(h.advance(&option(OPT_EXPORT_NAME, b"p/a")));
        assert!(matches!(
            step,
            Step::Transmission(Negotiated { export: 0, .. })
        ));
        let out = h.take_output();
        assert_eq!(out.len(), len);
        assert_eq!(&out[0..8], &77u64.to_be_bytes());
    }
    let mut h = started(vec![export("p/a", 77)], 1);
    assert_eq!(
        h.advance(&option(OPT_EXPORT_NAME, b"p/zz")),
        Err(ProtoError::UnknownExport("p/zz".into()))
    );
}

#[test]
fn list_abort_unsupported_and_invalid() {
    let mut h = started(vec![export("p/a", 1), export("p/b", 2)], 1);
    let mut input = option(OPT_LIST, &[]);
    input.extend(option(OPT_LIST, b"junk"));
    input.extend(option(OPT_STARTTLS, &[]));
    input.extend(option(OPT_SET_META_CONTEXT, &[0; 8]));
    input.extend(option(OPT_GO, &[0, 0, 0, 9, b'a']));
    input.extend(option(OPT_GO, &[0, 0, 0, 0, 0, 2, 0, 1]));
    let (used, step) = h.advance(&input).unwrap();
    assert_eq!((used, step), (input.len(), Step::NeedMore));
    let r: Vec<_> = parse_replies(&h.take_output())
        .into_iter()
        .map(|(o, t, _)| (o, t))
        .collect();
    assert_eq!(
        r,
        vec![
            (OPT_LIST, REP_SERVER),
            (OPT_LIST, REP_SERVER),
            (OPT_LIST, REP_ACK),
            (OPT_LIST, REP_ERR_INVALID),
            (OPT_STARTTLS, REP_ERR_UNSUP),
            (OPT_SET_META_CONTEXT, REP_ERR_UNSUP),
            (OPT_GO, REP_ERR_INVALID),
            (OPT_GO, REP_ERR_INVALID),
        ]
    );
    assert_eq!(n(h.advance(&option(OPT_ABORT, &[]))), Step::Aborted);
    assert_eq!(
        parse_replies(&h.take_output()),
        vec![(OPT_ABORT, REP_ACK, vec![])]
    );
}

/// Replies in `out` as (option, type).
fn reply_types(out: &[u8]) -> Vec<(u32, u32)> {
    parse_replies(out)
        .into_iter()
        .map(|(o, t, _)| (o, t))
        .collect()
}

fn go(name: &str) -> Vec<u8> {
    option(
        OPT_GO,
        &InfoRequest {
            name,
            infos: vec![],
        }
        .encode(),
    )
}

#[test]
fn forced_tls_refuses_everything_but_starttls_and_abort_before_tls() {
    let mut h = started_tls(vec![export("p/a", 1)], 1, TlsMode::Required);
    let mut input = option(OPT_LIST, &[]);
    input.extend(option(OPT_STRUCTURED_REPLY, &[]));
    input.extend(option(OPT_INFO, &[0, 0, 0, 0, 0, 0]));
    input.extend(go("p/a"));
    input.extend(option(OPT_SET_META_CONTEXT, &[0; 8]));
    input.extend(option(OPT_GO, b"malformed"));
    input.extend(option(OPT_STARTTLS, b"data")); // STARTTLS takes no data
    let (used, step) = h.advance(&input).unwrap();
    assert_eq!((used, step), (input.len(), Step::NeedMore));
    assert_eq!(
        reply_types(&h.take_output()),
        vec![
            (OPT_LIST, REP_ERR_TLS_REQD),
            (OPT_STRUCTURED_REPLY, REP_ERR_TLS_REQD),
            (OPT_INFO, REP_ERR_TLS_REQD),
            (OPT_GO, REP_ERR_TLS_REQD),
            (OPT_SET_META_CONTEXT, REP_ERR_TLS_REQD),
            (OPT_GO, REP_ERR_TLS_REQD),
            (OPT_STARTTLS, REP_ERR_INVALID),
        ]
    );
    assert!(!h.is_tls());
    // EXPORT_NAME cannot be refused with an error: close.
    let mut e = h.clone();
    assert_eq!(
        e.advance(&option(OPT_EXPORT_NAME, b"p/a")),
        Err(ProtoError::TlsRequired)
    );
    // ABORT is honoured without TLS.
    assert_eq!(n(h.advance(&option(OPT_ABORT, &[]))), Step::Aborted);
    assert_eq!(reply_types(&h.take_output()), vec![(OPT_ABORT, REP_ACK)]);
}

#[test]
fn starttls_acks_then_haggling_restarts_over_tls_without_old_state() {
    for mode in [TlsMode::Required, TlsMode::Optional] {
        let mut h = started_tls(vec![export("p/a", 1)], 1, mode);
        if mode == TlsMode::Optional {
            // Stateful option before TLS: accepted, and forgotten after STARTTLS.
            let sr = option(OPT_STRUCTURED_REPLY, &[]);
            assert_eq!(h.advance(&sr).unwrap(), (sr.len(), Step::NeedMore));
            assert_eq!(
                reply_types(&h.take_output()),
                vec![(OPT_STRUCTURED_REPLY, REP_ACK)]
            );
        }
        let st = option(OPT_STARTTLS, &[]);
        let mut input = st.clone();
        input.extend(go("p/a")); // sent in plain text after STARTTLS: a violation
        assert_eq!(h.advance(&input).unwrap(), (st.len(), Step::StartTls));
        assert_eq!(reply_types(&h.take_output()), vec![(OPT_STARTTLS, REP_ACK)]);
        // Until TLS is up, nothing is accepted; asking again repeats the step.
        assert_eq!(
            h.clone().advance(&input[st.len()..]),
            Err(ProtoError::DataBeforeTls)
        );
        assert_eq!(h.advance(&[]).unwrap(), (0, Step::StartTls));
        assert!(h.take_output().is_empty());
        h.tls_started();
        assert!(h.is_tls());
        // Over TLS: a second STARTTLS is invalid, options are served, ERR_TLS_REQD never.
        let mut input = option(OPT_STARTTLS, &[]);
        input.extend(option(OPT_LIST, &[]));
        input.extend(go("p/a"));
        let (used, step) = h.advance(&input).unwrap();
        assert_eq!(used, input.len());
        assert_eq!(
            step,
            Step::Transmission(Negotiated {
                export: 0,
                structured: false,
                flags: FLAG_HAS_FLAGS | FLAG_SEND_FLUSH,
            })
        );
        let r = reply_types(&h.take_output());
        assert_eq!(r[0], (OPT_STARTTLS, REP_ERR_INVALID));
        assert_eq!(r[1], (OPT_LIST, REP_SERVER));
        assert_eq!(r.last(), Some(&(OPT_GO, REP_ACK)));
        assert!(r.iter().all(|(_, t)| *t != REP_ERR_TLS_REQD));
    }
}

#[test]
fn optional_tls_serves_plain_clients_and_tls_after_starttls() {
    let mut h = started_tls(vec![export("p/a", 1)], 1, TlsMode::Optional);
    let mut input = option(OPT_STRUCTURED_REPLY, &[]);
    input.extend(go(""));
    let (used, step) = h.advance(&input).unwrap();
    assert_eq!(used, input.len());
    assert!(matches!(
        step,
        Step::Transmission(Negotiated {
            structured: true,
            ..
        })
    ));
    assert!(!h.is_tls());
    // tls_started outside TlsPending changes nothing.
    h.tls_started();
    assert!(!h.is_tls());
}

#[test]
fn option_limits_close() {
    let mut h = started(vec![export("a", 1)], 1);
    let mut big = OptionHeader {
        option: OPT_GO,
        length: MAX_OPTION_LEN + 1,
    }
    .encode()
    .to_vec();
    // Refused from the header alone, before the payload arrives.
    assert!(matches!(
        h.advance(&big),
        Err(ProtoError::OptionTooLong { .. })
    ));
    big[0] ^= 1;
    let mut h = started(vec![export("a", 1)], 1);
    assert!(matches!(
        h.advance(&big),
        Err(ProtoError::BadOptionMagic(_))
    ));
    let mut h = started(vec![export("a", 1)], 1);
    let many: Vec<u8> = (0..=MAX_OPTIONS).flat_map(|_| option(99, &[])).collect();
    assert_eq!(
        h.advance(&many),
        Err(ProtoError::TooManyOptions(MAX_OPTIONS))
    );
}

#[test]
fn partial_input_consumes_nothing_until_a_message_is_whole() {
    let mut h = started(vec![export("a", 1)], 1);
    let go = option(
        OPT_GO,
        &InfoRequest {
            name: "a",
            infos: vec![],
        }
        .encode(),
    );
    for cut in 0..go.len() {
        assert_eq!(h.advance(&go[..cut]).unwrap(), (0, Step::NeedMore));
    }
    assert!(matches!(n(h.advance(&go)), Step::Transmission(_)));
}

fn req(command: Command, flags: u16, offset: u64, length: u32) -> Request {
    Request {
        cookie: 0xfeed,
        command,
        flags,
        offset,
        length,
    }
}

#[test]
fn request_decode_rejects_bad_magic_and_unknown_commands() {
    let mut b = RequestHeader::encode(&req(Command::Read, 0, 0, 1));
    assert_eq!(RequestHeader::decode(&b).unwrap().command, Command::Read);
    assert!(matches!(
        RequestHeader::decode(&b[..27]),
        Err(ProtoError::Short { need: 28, have: 27 })
    ));
    b[7] = 7; // BLOCK_STATUS: not offered
    assert_eq!(
        RequestHeader::decode(&b),
        Err(ProtoError::UnknownCommand(7))
    );
    b[0] = 0;
    assert!(matches!(
        RequestHeader::decode(&b),
        Err(ProtoError::BadRequestMagic(_))
    ));
}

#[test]
fn validation() {
    let lim = ExportLimits {
        size: 1 << 20,
        max_block: MAX_BLOCK_SIZE,
        structured: false,
    };
    let ok = |r: Request| r.validate(&lim).is_ok();
    let errno = |r: Request| r.validate(&lim).unwrap_err().errno;
    assert!(ok(req(Command::Read, 0, 0, 1 << 20)));
    assert!(ok(req(Command::Write, CMD_FLAG_FUA, (1 << 20) - 1, 1)));
    assert_eq!(errno(req(Command::Write, 0, 1 << 20, 1)), EINVAL);
    assert_eq!(errno(req(Command::Read, 0, u64::MAX, 2)), EINVAL);
    assert_eq!(errno(req(Command::Read, 0, 0, 0)), EINVAL);
    assert_eq!(errno(req(Command::Read, CMD_FLAG_DF, 0, 1)), EINVAL);
    assert_eq!(errno(req(Command::Trim, CMD_FLAG_NO_HOLE, 0, 1)), EINVAL);
    assert!(ok(req(
        Command::WriteZeroes,
        CMD_FLAG_NO_HOLE | CMD_FLAG_FUA,
        0,
        1
    )));
    assert!(ok(req(Command::Flush, 0, 5, 5)));
    let big = ExportLimits {
        size: u64::MAX,
        ..lim
    };
    let r = req(Command::Read, 0, 0, MAX_BLOCK_SIZE + 1);
    assert_eq!(r.validate(&big).unwrap_err().errno, EINVAL);
    // Trim and write-zeroes carry no payload: not limited by the block size.
    assert!(req(Command::Trim, 0, 0, u32::MAX).validate(&big).is_ok());
    assert!(req(Command::Read, CMD_FLAG_DF, 0, 1)
        .validate(&ExportLimits {
            structured: true,
            ..lim
        })
        .is_ok());
    assert_eq!(
        req(Command::Write, 0, 0, MAX_BLOCK_SIZE + 1).payload_len(MAX_BLOCK_SIZE),
        Err(ProtoError::PayloadTooLong {
            length: MAX_BLOCK_SIZE + 1,
            max: MAX_BLOCK_SIZE
        })
    );
    assert_eq!(
        req(Command::Read, 0, 0, 99).payload_len(MAX_BLOCK_SIZE),
        Ok(0)
    );
}

#[test]
fn chunks() {
    let mut v = Vec::new();
    reply::chunk_offset_data_header(&mut v, 9, true, 4096, 100).unwrap();
    assert_eq!(v.len(), 28);
    assert_eq!(&v[0..4], &STRUCTURED_REPLY_MAGIC.to_be_bytes());
    assert_eq!(&v[4..8], &[0, 1, 0, 1]);
    assert_eq!(&v[16..20], &108u32.to_be_bytes());
    let mut e = Vec::new();
    let long = "é".repeat(40_000);
    reply::chunk_error(&mut e, 9, EIO, &long);
    let len = u32::from_be_bytes(e[16..20].try_into().unwrap()) as usize;
    assert_eq!(e.len(), 20 + len);
    let mlen = u16::from_be_bytes(e[24..26].try_into().unwrap()) as usize;
    assert_eq!(mlen + 6, len);
    assert!(std::str::from_utf8(&e[26..]).is_ok());
    let s = reply::simple_reply(7, EINVAL);
    assert_eq!(&s[4..8], &22u32.to_be_bytes());
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        Just(Command::Read),
        Just(Command::Write),
        Just(Command::Disc),
        Just(Command::Flush),
        Just(Command::Trim),
        Just(Command::WriteZeroes),
    ]
}

proptest! {
    #[test]
    fn request_round_trip(cookie: u64, c in command(), flags: u16, offset: u64, length: u32) {
        let r = Request { cookie, command: c, flags, offset, length };
        prop_assert_eq!(RequestHeader::decode(&RequestHeader::encode(&r)), Ok(r));
    }

    #[test]
    fn request_decode_and_validate_never_panic(b in proptest::collection::vec(any::<u8>(), 0..40),
                                               size: u64, structured: bool) {
        if let Ok(r) = RequestHeader::decode(&b) {
            let lim = ExportLimits { size, max_block: MAX_BLOCK_SIZE, structured };
            if r.validate(&lim).is_ok() && r.command != Command::Disc && r.command != Command::Flush {
                prop_assert!(r.length > 0);
                prop_assert!(r.offset.checked_add(u64::from(r.length)).is_some_and(|e| e <= size));
            }
        }
    }

    #[test]
    fn info_request_round_trip(name in "[a-z/]{0,64}", infos in proptest::collection::vec(any::<u16>(), 0..8)) {
        let r = InfoRequest { name: &name, infos };
        let p = r.encode();
        prop_assert_eq!(ClientOption::decode(OPT_GO, &p), Ok(ClientOption::Go(r)));
    }

    #[test]
    fn handshake_never_panics_and_consumes_in_bounds(
        b in proptest::collection::vec(any::<u8>(), 0..512), cut in 0usize..512) {
        let mut h = Handshake::new(vec![export("a", 1)]);
        let cut = cut.min(b.len());
        // As a socket would deliver it: a first piece, then the rest appended to what was
        // not consumed.
        let mut used = 0;
        for end in [cut, b.len()] {
            match h.advance(&b[used..end]) {
                Ok((n, Step::NeedMore)) => {
                    prop_assert!(n <= end - used);
                    used += n;
                }
                Ok((n, _)) => {
                    prop_assert!(n <= end - used);
                    break;
                }
                Err(_) => break,
            }
        }
        prop_assert!(used <= b.len());
    }

    /// Any client stream against any TLS mode: never panics, consumes in bounds, sends
    /// ERR_TLS_REQD only in FORCEDTLS mode before TLS and never after, and no reply other
    /// than ERR_TLS_REQD/ACK (ABORT, STARTTLS) or ERR_INVALID (STARTTLS with data) before
    /// TLS in FORCEDTLS mode. After StartTls the rest is taken as the TLS stream.
    #[test]
    fn tls_states_hold_their_rules(
        mode in prop_oneof![Just(TlsMode::NoTls), Just(TlsMode::Optional), Just(TlsMode::Required)],
        opts in proptest::collection::vec(
            (prop_oneof![Just(OPT_STARTTLS), Just(OPT_LIST), Just(OPT_STRUCTURED_REPLY),
                         Just(OPT_INFO), Just(OPT_GO), Just(OPT_ABORT), Just(OPT_EXPORT_NAME),
                         Just(99u32)],
             proptest::collection::vec(any::<u8>(), 0..3)),
            0..12)) {
        let mut h = started_tls(vec![export("a", 1)], 1, mode);
        let mut input = Vec::new();
        for (o, p) in &opts {
            let p: &[u8] = if *o == OPT_STARTTLS && p.len() == 1 { &[] } else { p };
            input.extend(option(*o, p));
        }
        let mut at = 0;
        let mut starttls_acks = 0;
        loop {
            let tls_before = h.is_tls();
            let r = h.advance(&input[at..]);
            let out = h.take_output();
            // EXPORT_NAME's reply is not an option reply; the others were checked already
            // in the runs that end elsewhere.
            let out = if matches!(r, Ok((_, Step::Transmission(_)))) { Vec::new() } else { out };
            for (o, t) in reply_types(&out) {
                if t == REP_ERR_TLS_REQD {
                    prop_assert!(mode == TlsMode::Required && !tls_before);
                } else if mode == TlsMode::Required && !tls_before {
                    prop_assert!((o == OPT_STARTTLS && (t == REP_ACK || t == REP_ERR_INVALID))
                                 || (o == OPT_ABORT && t == REP_ACK), "{o} {t:#x}");
                }
                if o == OPT_STARTTLS && t == REP_ACK {
                    starttls_acks += 1;
                    prop_assert!(mode != TlsMode::NoTls && !tls_before);
                }
            }
            match r {
                Ok((used, Step::StartTls)) => {
                    at += used;
                    h.tls_started();
                    prop_assert!(h.is_tls());
                }
                Ok((used, _)) => { prop_assert!(at + used <= input.len()); break; }
                Err(e) => {
                    prop_assert!(e != ProtoError::TlsRequired || mode == TlsMode::Required);
                    break;
                }
            }
        }
        prop_assert!(starttls_acks <= 1);
    }

    #[test]
    fn handshake_with_valid_options(names in proptest::collection::vec("[a-c]{0,2}", 1..6), split: usize) {
        let mut input = FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        for n in &names {
            input.extend(option(OPT_INFO, &InfoRequest { name: n, infos: vec![INFO_NAME] }.encode()));
        }
        input.extend(option(OPT_GO, &InfoRequest { name: "a", infos: vec![] }.encode()));
        let mut h = Handshake::new(vec![export("a", 1), export("b", 2)]);
        // Fed in two arbitrary pieces, the outcome is the same as all at once.
        let split = split % input.len();
        let (u1, s1) = h.advance(&input[..split]).unwrap();
        prop_assert_eq!(s1, Step::NeedMore);
        let (u2, s2) = h.advance(&input[u1..]).unwrap();
        prop_assert_eq!(u1 + u2, input.len());
        prop_assert!(matches!(s2, Step::Transmission(Negotiated { export: 0, .. })), "{:?}", s2);
    }
}
