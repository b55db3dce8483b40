//! Helpers the fuzz targets share (included by path from each target; not a target itself).
#![allow(dead_code)] // each target uses what it needs

use carmine_wire::{Encoder, Limits, Message, HEADER_LEN};

/// `msg` as one frame with tid 0.
pub fn frame(version: u8, msg: &Message<'_>) -> Vec<u8> {
    let enc = Encoder::new(version, Limits::DEFAULT);
    let mut buf = vec![0u8; enc.frame_len(msg)];
    let n = enc.encode(0, msg, &mut buf).expect("encode");
    buf.truncate(n);
    buf
}

/// Recomputes the crcs of the frames in `stream` front to back, so that the fuzzer's
/// multi-frame streams get past the checksums and exercise what comes after them.
pub fn seal_all(stream: &mut [u8]) {
    let mut pos = 0;
    while stream.len() - pos >= HEADER_LEN {
        let f = &mut stream[pos..];
        let len = u32::from_le_bytes([f[16], f[17], f[18], f[19]]) as usize;
        let end = HEADER_LEN.saturating_add(len).min(f.len());
        let pcrc = crc32c::crc32c(&f[HEADER_LEN..end]);
        f[20..24].copy_from_slice(&pcrc.to_le_bytes());
        let hcrc = crc32c::crc32c(&f[..28]);
        f[28..32].copy_from_slice(&hcrc.to_le_bytes());
        pos += end;
    }
}
