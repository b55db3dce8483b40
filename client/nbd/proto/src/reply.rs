//! Encoders for what the server sends: option replies, info replies, simple replies and
//! structured reply chunks. They append to a `Vec<u8>` so a caller can batch several
//! messages into one write. Data payloads (READ) are not copied by the chunk encoders: the
//! caller writes the header from here, then its data buffer.

use crate::consts::*;

/// Option reply header (+ payload) for option `opt`.
pub fn option_reply(out: &mut Vec<u8>, opt: u32, reply_type: u32, payload: &[u8]) {
    out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&opt.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// An error reply with a human-readable message (proto.md: the payload of an error reply is
/// an optional UTF-8 message for the client's log).
pub fn option_error(out: &mut Vec<u8>, opt: u32, err: u32, msg: &str) {
    option_reply(out, opt, err, msg.as_bytes());
}

/// NBD_REP_SERVER (LIST): u32 name length, name, and the description as the rest.
pub fn rep_server(out: &mut Vec<u8>, name: &str, description: &str) {
    let mut p = Vec::with_capacity(4 + name.len() + description.len());
    p.extend_from_slice(&(name.len() as u32).to_be_bytes());
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(description.as_bytes());
    option_reply(out, OPT_LIST, REP_SERVER, &p);
}

/// NBD_REP_INFO with NBD_INFO_EXPORT: size and transmission flags.
pub fn info_export(out: &mut Vec<u8>, opt: u32, size: u64, flags: u16) {
    let mut p = [0u8; 12];
    p[0..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
    p[2..10].copy_from_slice(&size.to_be_bytes());
    p[10..12].copy_from_slice(&flags.to_be_bytes());
    option_reply(out, opt, REP_INFO, &p);
}

/// NBD_REP_INFO with NBD_INFO_NAME or NBD_INFO_DESCRIPTION.
pub fn info_string(out: &mut Vec<u8>, opt: u32, info: u16, text: &str) {
    let mut p = Vec::with_capacity(2 + text.len());
    p.extend_from_slice(&info.to_be_bytes());
    p.extend_from_slice(text.as_bytes());
    option_reply(out, opt, REP_INFO, &p);
}

/// NBD_REP_INFO with NBD_INFO_BLOCK_SIZE.
pub fn info_block_size(out: &mut Vec<u8>, opt: u32, min: u32, preferred: u32, max: u32) {
    let mut p = [0u8; 14];
    p[0..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    p[2..6].copy_from_slice(&min.to_be_bytes());
    p[6..10].copy_from_slice(&preferred.to_be_bytes());
    p[10..14].copy_from_slice(&max.to_be_bytes());
    option_reply(out, opt, REP_INFO, &p);
}

/// The reply to NBD_OPT_EXPORT_NAME: size, flags, and 124 zero bytes unless the client set
/// NBD_FLAG_C_NO_ZEROES.
pub fn export_name_reply(out: &mut Vec<u8>, size: u64, flags: u16, no_zeroes: bool) {
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
}

/// A simple reply header; for a successful READ the data follows it.
pub fn simple_reply(cookie: u64, error: u32) -> [u8; SIMPLE_REPLY_LEN] {
    let mut b = [0u8; SIMPLE_REPLY_LEN];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// A structured reply chunk header. `payload_len` is what follows it.
pub fn chunk_header(
    cookie: u64,
    flags: u16,
    chunk_type: u16,
    payload_len: u32,
) -> [u8; STRUCTURED_CHUNK_HEADER_LEN] {
    let mut b = [0u8; STRUCTURED_CHUNK_HEADER_LEN];
    b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&chunk_type.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..20].copy_from_slice(&payload_len.to_be_bytes());
    b
}

/// NBD_REPLY_TYPE_NONE with DONE: the success of a command without data.
pub fn chunk_none(out: &mut Vec<u8>, cookie: u64) {
    out.extend_from_slice(&chunk_header(cookie, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0));
}

/// The header and offset of an OFFSET_DATA chunk carrying `data_len` bytes at `offset`; the
/// caller sends the data right after. `None` when the data does not fit a chunk (over 4 GiB).
pub fn chunk_offset_data_header(
    out: &mut Vec<u8>,
    cookie: u64,
    done: bool,
    offset: u64,
    data_len: usize,
) -> Option<()> {
    let len = u32::try_from(data_len.checked_add(8)?).ok()?;
    let flags = if done { REPLY_FLAG_DONE } else { 0 };
    out.extend_from_slice(&chunk_header(cookie, flags, REPLY_TYPE_OFFSET_DATA, len));
    out.extend_from_slice(&offset.to_be_bytes());
    Some(())
}

/// An OFFSET_HOLE chunk: `len` bytes at `offset` read as zeros.
pub fn chunk_offset_hole(out: &mut Vec<u8>, cookie: u64, done: bool, offset: u64, len: u32) {
    let flags = if done { REPLY_FLAG_DONE } else { 0 };
    out.extend_from_slice(&chunk_header(cookie, flags, REPLY_TYPE_OFFSET_HOLE, 12));
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

/// An ERROR chunk (always the last: DONE), with a message for the client's log (cut to fit
/// the 16-bit length, at a character boundary).
pub fn chunk_error(out: &mut Vec<u8>, cookie: u64, error: u32, msg: &str) {
    // proto.md: an error chunk's message MUST NOT exceed 4096 bytes.
    let mut end = msg.len().min(4096);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    let msg = &msg[..end];
    out.extend_from_slice(&chunk_header(
        cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        6 + msg.len() as u32,
    ));
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg.as_bytes());
}
