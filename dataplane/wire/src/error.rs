//! The error types of each layer: frame, message, encode. Handshake errors live in
//! [`crate::handshake`], op result errors in [`crate::op`].
//!
//! Decode errors are fatal to the connection: after one, the byte stream can no longer be
//! trusted to be aligned on frame boundaries, so the messenger logs the error (its `Display` is
//! the reason) and closes. They are `Clone + PartialEq` so tests can assert the exact kind.

use thiserror::Error;

/// A frame header or payload checksum that is not acceptable. Detected before the payload is
/// buffered whenever the header alone shows the problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("bad magic {found:02x?}: not a Carmine frame (or the stream lost sync)")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported protocol version {version} (this build speaks {min}..={max})")]
    UnsupportedVersion { version: u8, min: u8, max: u8 },
    #[error("frame version {version} differs from the negotiated version {negotiated}")]
    VersionMismatch { version: u8, negotiated: u8 },
    #[error("header crc32c mismatch: header says {stored:#010x}, computed {computed:#010x}")]
    HeaderCrc { stored: u32, computed: u32 },
    #[error("payload crc32c mismatch: header says {stored:#010x}, computed {computed:#010x}")]
    PayloadCrc { stored: u32, computed: u32 },
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: u32, max: u32 },
    #[error("unknown frame type {0:#04x}")]
    UnknownFrameType(u8),
    #[error("unknown frame flags {0:#06x}")]
    UnknownFlags(u16),
    #[error("reserved header field is {0:#010x}, must be zero")]
    ReservedNonZero(u32),
}

/// A frame whose checksums are right but whose payload is not a valid message of its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum MessageError {
    #[error("truncated {field}: needs {needed} bytes, {available} left in the payload")]
    Truncated {
        field: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("{count} trailing bytes after the message")]
    TrailingBytes { count: usize },
    #[error("{field} is not valid UTF-8 (valid up to byte {valid_up_to})")]
    BadUtf8 {
        field: &'static str,
        valid_up_to: usize,
    },
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field} is {len} bytes long, the limit is {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("object range ends at byte {end}, beyond the object size limit of {max}")]
    ObjectTooLarge { end: u64, max: u64 },
    #[error("{field} is {value}, the limit is {max}")]
    TooMany {
        field: &'static str,
        value: u64,
        max: u64,
    },
    #[error("unknown op code {0:#04x}")]
    UnknownOpCode(u8),
    #[error("unknown result code {0:#04x}")]
    UnknownResultCode(u8),
    #[error("unknown handshake reject reason {0:#04x}")]
    UnknownRejectReason(u8),
    #[error("{field} has the invalid value {value:#04x}")]
    InvalidValue { field: &'static str, value: u8 },
    /// An epoch field that names a map newer than the one the message was sent with.
    #[error("{field} is epoch {value}, newer than the map epoch {epoch}")]
    NewerThanMap {
        field: &'static str,
        value: u64,
        epoch: u64,
    },
    #[error("version range {min}..={max} is empty or starts at zero")]
    BadVersionRange { min: u8, max: u8 },
}

/// Anything that can go wrong turning bytes into a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("bad message: {0}")]
    Message(#[from] MessageError),
}

/// A message that cannot be encoded. Nothing was sent; the caller's buffer content is
/// unspecified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error("output buffer too small: need {needed} bytes, have {available}")]
    BufferTooSmall { needed: usize, available: usize },
    #[error("{field} is {len} bytes, the wire format allows at most {max}")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: u32 },
    /// The message breaks a limit the peer would enforce: it would be refused on arrival, so it
    /// is refused here, before anything is sent.
    #[error("message would be rejected by the peer: {0}")]
    Invalid(#[from] MessageError),
}
