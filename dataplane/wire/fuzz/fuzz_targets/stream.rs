//! A byte stream fed to the incremental `FrameDecoder` in pieces whose sizes come from the
//! input itself, as a socket would deliver it. Must never panic or loop. Frames in the stream
//! are re-sealed (crcs recomputed) front to back, so the fuzzer builds multi-frame streams that
//! get past the checksums and exercise reassembly, not just the first crc check.
#![no_main]

use carmine_wire::{FrameDecoder, Limits};
use libfuzzer_sys::fuzz_target;

#[path = "common/mod.rs"]
mod common;
use common::seal_all;

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let mut stream = stream.to_vec();
    seal_all(&mut stream);
    let step = usize::from(step).max(1);
    let limits = Limits {
        max_payload: 64 << 10,
        max_io_size: 60 << 10,
        ..Limits::DEFAULT
    };
    let mut dec = FrameDecoder::new(limits);
    let mut pos = 0;
    while pos < stream.len() {
        let end = (pos + step).min(stream.len());
        pos += dec.feed(&stream[pos..end]);
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    let _ = frame.message(&limits);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
