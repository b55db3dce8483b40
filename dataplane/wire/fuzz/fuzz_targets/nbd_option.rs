//! The NBD handshake (`carmine-nbd-proto::Handshake`, the sans-IO state machine the server
//! runs) on a client byte stream delivered in pieces whose size comes from the input. Must
//! never panic or loop; consumes only what it was given; everything it sends is a sequence
//! of well-formed option replies (after the greeting), except the EXPORT_NAME reply that
//! ends a handshake; after the handshake ends it accepts nothing more.
//!
//! TLS: the server's mode comes from the input. When the handshake asks for the TLS
//! handshake (`Step::StartTls`), it must have sent exactly the STARTTLS ACK, must refuse any
//! byte until `tls_started`, and the rest of the stream is then taken as what arrived over
//! TLS; ERR_TLS_REQD appears only in FORCEDTLS mode before TLS.
//!
//! Input: 1 byte (low 6 bits: piece size, at least 1; top 2 bits: TLS mode, 0 none,
//! 1 optional, 2 and 3 required), then the stream the client sends (client flags, options).
#![no_main]

use carmine_nbd_proto::{
    ExportInfo, Handshake, Step, TlsMode, FLAG_HAS_FLAGS, GREETING_LEN,
    OPTION_REPLY_HEADER_LEN, OPT_REPLY_MAGIC, OPT_STARTTLS, REP_ACK, REP_ERR_TLS_REQD,
};
use libfuzzer_sys::fuzz_target;

/// The (option, reply type) of the whole option replies in `out`; `None` if it is not
/// whole option replies.
fn option_replies(mut out: &[u8]) -> Option<Vec<(u32, u32)>> {
    let mut v = Vec::new();
    while !out.is_empty() {
        if out.len() < OPTION_REPLY_HEADER_LEN || out[..8] != OPT_REPLY_MAGIC.to_be_bytes() {
            return None;
        }
        let be = |i: usize| u32::from_be_bytes([out[i], out[i + 1], out[i + 2], out[i + 3]]);
        v.push((be(8), be(12)));
        out = out.get(OPTION_REPLY_HEADER_LEN + be(16) as usize..)?;
    }
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let mode = match step >> 6 {
        0 => TlsMode::NoTls,
        1 => TlsMode::Optional,
        _ => TlsMode::Required,
    };
    let step = usize::from(step & 0x3f).max(1);
    let exports = vec![
        ExportInfo {
            name: "rbd/a".into(),
            description: "first".into(),
            size: 1 << 30,
            flags: FLAG_HAS_FLAGS,
        },
        ExportInfo {
            name: "rbd/b".into(),
            description: String::new(),
            size: 0,
            flags: FLAG_HAS_FLAGS,
        },
    ];
    let mut h = Handshake::with_tls(exports, mode);
    assert_eq!(h.take_output().len(), GREETING_LEN);
    // What arrived and was not consumed yet, as the server buffers it.
    let (mut start, mut end) = (0, 0);
    while end < stream.len() {
        end = (end + step).min(stream.len());
        let tls_before = h.is_tls();
        match h.advance(&stream[start..end]) {
            Ok((used, s)) => {
                assert!(used <= end - start);
                start += used;
                let out = h.take_output();
                if s != Step::StartTls && !matches!(s, Step::Transmission(_)) {
                    let replies = option_replies(&out).expect("whole option replies");
                    let forced = mode == TlsMode::Required && !tls_before;
                    assert!(replies.iter().all(|r| forced || r.1 != REP_ERR_TLS_REQD));
                }
                match s {
                    Step::NeedMore | Step::Aborted => {}
                    Step::StartTls => {
                        assert!(mode != TlsMode::NoTls && !tls_before);
                        let replies = option_replies(&out).expect("whole option replies");
                        assert_eq!(replies.last(), Some(&(OPT_STARTTLS, REP_ACK)));
                        assert!(h.advance(&[0]).is_err());
                        assert_eq!(h.advance(&[]).ok(), Some((0, Step::StartTls)));
                        h.tls_started();
                        assert!(h.is_tls());
                        // The rest of the stream arrives over TLS.
                        end = start;
                        continue;
                    }
                    Step::Transmission(n) => {
                        assert!(n.export < 2);
                        assert!(h.advance(&[0]).is_err());
                        return;
                    }
                }
                if s == Step::Aborted {
                    return;
                }
            }
            Err(_) => return,
        }
    }
});
