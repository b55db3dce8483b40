//! The NBD handshake (`carmine-nbd-proto::Handshake`, the sans-IO state machine the server
//! runs) on a client byte stream delivered in pieces whose size comes from the input. Must
//! never panic or loop; consumes only what it was given; everything it sends is a sequence
//! of well-formed option replies (after the greeting), except the EXPORT_NAME reply that
//! ends a handshake; after the handshake ends it accepts nothing more.
//!
//! Input: 1 byte piece size, then the stream the client sends (client flags, options).
#![no_main]

use carmine_nbd_proto::{
    ExportInfo, Handshake, Step, FLAG_HAS_FLAGS, GREETING_LEN, OPTION_REPLY_HEADER_LEN,
    OPT_REPLY_MAGIC,
};
use libfuzzer_sys::fuzz_target;

/// Checks `out` is whole option replies; returns false if not.
fn option_replies(mut out: &[u8]) -> bool {
    while !out.is_empty() {
        if out.len() < OPTION_REPLY_HEADER_LEN || out[..8] != OPT_REPLY_MAGIC.to_be_bytes() {
            return false;
        }
        let len = u32::from_be_bytes([out[16], out[17], out[18], out[19]]) as usize;
        let Some(next) = out.get(OPTION_REPLY_HEADER_LEN + len..) else {
            return false;
        };
        out = next;
    }
    true
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
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
    let mut h = Handshake::new(exports);
    assert_eq!(h.take_output().len(), GREETING_LEN);
    // What arrived and was not consumed yet, as the server buffers it.
    let (mut start, mut end) = (0, 0);
    while end < stream.len() {
        end = (end + step).min(stream.len());
        match h.advance(&stream[start..end]) {
            Ok((used, s)) => {
                assert!(used <= end - start);
                start += used;
                let out = h.take_output();
                match s {
                    Step::NeedMore | Step::Aborted => assert!(option_replies(&out)),
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
