//! # carmine-nbd-proto
//!
//! The NBD protocol (NetworkBlockDevice/nbd `doc/proto.md`) as the server side of
//! `carmine-nbd` needs it, without I/O: no sockets, no async runtime, no allocation beyond the
//! output buffers. The server in `carmine-nbd` moves bytes; everything that decides what the
//! bytes mean lives here, where it is unit-tested, property-tested and fuzzed
//! (`dataplane/wire/fuzz`, targets `nbd_request` and `nbd_option`).
//!
//! ## Pieces
//!
//! - [`consts`]: magics, option codes, reply types, info types, command types and flags,
//!   transmission flags, error values, and our limits ([`MAX_BLOCK_SIZE`],
//!   [`MAX_OPTION_LEN`]).
//! - [`handshake`]: fixed newstyle only. [`Handshake`] is a state machine fed with whatever
//!   the socket delivered; it consumes whole messages and queues its replies. Options handled:
//!   EXPORT_NAME, GO, INFO (EXPORT, NAME, DESCRIPTION, BLOCK_SIZE), LIST, STRUCTURED_REPLY,
//!   ABORT, and STARTTLS when TLS is offered ([`TlsMode`]: the I/O layer runs the TLS
//!   handshake when told to by [`Step::StartTls`]); everything else answers ERR_UNSUP.
//! - [`request`]: [`RequestHeader::decode`] turns 28 bytes into a typed [`Request`];
//!   [`Request::validate`] checks it against the export.
//! - [`reply`]: encoders for option replies, info replies, simple replies and structured
//!   reply chunks (NONE, OFFSET_DATA, OFFSET_HOLE, ERROR).
//!
//! ## The two kinds of failure
//!
//! A [`ProtoError`] means the peer broke the protocol in a way after which the byte stream
//! cannot be trusted (wrong magic, unknown command, an option or payload longer than we will
//! buffer, a client that is not fixed newstyle): the only answer is to close that connection.
//! A well-formed request we refuse is not an error of this kind: [`Request::validate`] returns
//! an [`Invalid`] carrying the NBD errno to reply with, and the connection carries on.
//!
//! ## Invariants
//!
//! - Decoders never panic and never read past their input; lengths from the wire are checked
//!   against limits before anything is buffered for them.
//! - Every encoder's output is decoded back to the same value by the matching decoder (the
//!   property tests check this for the messages both sides have).

pub mod consts;
pub mod handshake;
pub mod reply;
pub mod request;

pub use consts::*;
pub use handshake::{
    BadOption, ClientOption, ExportInfo, Handshake, InfoRequest, Negotiated, OptionHeader, Step,
    TlsMode, MAX_OPTIONS,
};
pub use request::{Command, ExportLimits, Invalid, Request, RequestHeader};

/// The peer broke the protocol: close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("need {need} bytes, have {have}")]
    Short { need: usize, have: usize },
    #[error("bad request magic {0:#010x}")]
    BadRequestMagic(u32),
    #[error("unknown command {0}")]
    UnknownCommand(u16),
    #[error("write payload of {length} bytes exceeds the maximum block size {max}")]
    PayloadTooLong { length: u32, max: u32 },
    #[error("bad option magic {0:#018x}")]
    BadOptionMagic(u64),
    #[error("option {option} with {length} bytes of data exceeds the limit of {max}")]
    OptionTooLong { option: u32, length: u32, max: u32 },
    #[error("client flags {0:#x}: not fixed newstyle, or unknown flags")]
    ClientFlags(u32),
    #[error("NBD_OPT_EXPORT_NAME for an export we do not serve: {0:?}")]
    UnknownExport(String),
    #[error("NBD_OPT_EXPORT_NAME with a bad name: {0}")]
    BadExportName(&'static str),
    #[error("more than {0} options")]
    TooManyOptions(u32),
    #[error("input after the handshake finished")]
    HandshakeFinished,
    #[error("TLS is required, and NBD_OPT_EXPORT_NAME came before NBD_OPT_STARTTLS")]
    TlsRequired,
    #[error("data after NBD_OPT_STARTTLS before its reply (the TLS handshake must come first)")]
    DataBeforeTls,
}

#[cfg(test)]
mod tests;
