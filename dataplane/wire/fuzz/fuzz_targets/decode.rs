//! The frame decoder and the message parsers on arbitrary input. Must never panic; whatever
//! decodes must re-encode to the same bytes (the encoding is canonical).
//!
//! The first input byte picks a mode, so one target covers three depths:
//! - raw: the bytes as they would arrive from a socket;
//! - sealed: both crc32c fields are recomputed first, so mutations reach the header fields and
//!   the payload parser behind the checksums instead of dying at the crc check;
//! - payload: the rest goes straight into one message type's parser.
#![no_main]

use carmine_wire::{decode_frame, Decoded, Encoder, FrameType, Limits, Message, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

const TYPES: [FrameType; 9] = [
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

fn check_frame(data: &[u8], limits: &Limits) {
    if let Ok(Decoded::Frame { frame, len }) = decode_frame(data, limits) {
        if let Ok(msg) = frame.message(limits) {
            let enc = Encoder::new(frame.header.version, *limits);
            let mut out = vec![0u8; enc.frame_len(&msg)];
            let n = enc
                .encode(frame.header.tid, &msg, &mut out)
                .expect("a decoded message re-encodes");
            assert_eq!(&out[..n], &data[..len], "non-canonical frame accepted");
        }
    }
}

/// Recomputes the payload crc (over what the length field covers, if present) and the header
/// crc, as an honest sender would.
fn seal(frame: &mut [u8]) {
    if frame.len() < HEADER_LEN {
        return;
    }
    let len = u32::from_le_bytes([frame[16], frame[17], frame[18], frame[19]]) as usize;
    let end = HEADER_LEN.saturating_add(len).min(frame.len());
    let pcrc = crc32c::crc32c(&frame[HEADER_LEN..end]);
    frame[20..24].copy_from_slice(&pcrc.to_le_bytes());
    let hcrc = crc32c::crc32c(&frame[..28]);
    frame[28..32].copy_from_slice(&hcrc.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::DEFAULT;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => check_frame(rest, &limits),
        1 => {
            let mut frame = rest.to_vec();
            seal(&mut frame);
            check_frame(&frame, &limits);
        }
        _ => {
            let Some((&ty, payload)) = rest.split_first() else {
                return;
            };
            let ty = TYPES[usize::from(ty) % TYPES.len()];
            if let Ok(msg) = Message::parse(ty, payload, &limits) {
                let mut out = vec![0u8; msg.payload_len()];
                let n = msg
                    .write_payload(&mut out, &limits)
                    .expect("a parsed message re-encodes");
                assert_eq!(&out[..n], payload, "non-canonical payload accepted");
            }
        }
    }
});
