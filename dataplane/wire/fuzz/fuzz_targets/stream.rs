//! A byte stream fed to the incremental `FrameDecoder` in pieces whose sizes come from the
//! input itself, as a socket would deliver it. Must never panic or loop.
#![no_main]

use carmine_wire::{FrameDecoder, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
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
