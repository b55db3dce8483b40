//! Transmission requests: the 28-byte header and its validation against an export.
//!
//! Two outcomes are kept apart on purpose:
//! - [`RequestHeader::decode`] fails ([`ProtoError`]) when the stream cannot be trusted any
//!   more: a wrong magic or a command we do not know (we cannot tell whether a payload follows,
//!   so we cannot find the next header). The connection must be closed.
//! - [`Request::validate`] fails with an NBD errno ([`Invalid`]) when the request is well
//!   formed but not acceptable (out of range, too long, a flag not valid for the command): the
//!   server answers the request with that error and carries on. For a WRITE the payload is
//!   still on the wire and must be consumed first, which [`Request::payload_len`] says how
//!   to do, unless it is longer than [`MAX_BLOCK_SIZE`]: then the payload is not buffered and
//!   the connection is closed ([`Request::payload_len`] returns the error).

use crate::consts::*;
use crate::ProtoError;

/// The command of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    WriteZeroes,
}

impl Command {
    pub fn from_u16(v: u16) -> Option<Command> {
        Some(match v {
            CMD_READ => Command::Read,
            CMD_WRITE => Command::Write,
            CMD_DISC => Command::Disc,
            CMD_FLUSH => Command::Flush,
            CMD_TRIM => Command::Trim,
            CMD_WRITE_ZEROES => Command::WriteZeroes,
            _ => return None,
        })
    }

    pub fn as_u16(self) -> u16 {
        match self {
            Command::Read => CMD_READ,
            Command::Write => CMD_WRITE,
            Command::Disc => CMD_DISC,
            Command::Flush => CMD_FLUSH,
            Command::Trim => CMD_TRIM,
            Command::WriteZeroes => CMD_WRITE_ZEROES,
        }
    }

    /// Command flags this server accepts with the command. FUA is valid on every command
    /// (proto.md: servers ignore it where it means nothing); DF needs structured replies,
    /// checked in [`Request::validate`].
    pub fn allowed_flags(self) -> u16 {
        match self {
            Command::Read => CMD_FLAG_FUA | CMD_FLAG_DF,
            Command::WriteZeroes => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
            Command::Write | Command::Disc | Command::Flush | Command::Trim => CMD_FLAG_FUA,
        }
    }
}

/// A decoded request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Opaque to the server; echoed in every reply to this request.
    pub cookie: u64,
    pub command: Command,
    pub flags: u16,
    pub offset: u64,
    pub length: u32,
}

/// The wire form of a request header.
pub struct RequestHeader;

impl RequestHeader {
    /// Decodes one header from the first [`REQUEST_HEADER_LEN`] bytes of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Request, ProtoError> {
        let b: &[u8; REQUEST_HEADER_LEN] = buf
            .get(..REQUEST_HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(ProtoError::Short {
                need: REQUEST_HEADER_LEN,
                have: buf.len(),
            })?;
        let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        if magic != REQUEST_MAGIC {
            return Err(ProtoError::BadRequestMagic(magic));
        }
        let flags = u16::from_be_bytes([b[4], b[5]]);
        let ty = u16::from_be_bytes([b[6], b[7]]);
        let command = Command::from_u16(ty).ok_or(ProtoError::UnknownCommand(ty))?;
        Ok(Request {
            cookie: be_u64(&b[8..16]),
            command,
            flags,
            offset: be_u64(&b[16..24]),
            length: u32::from_be_bytes([b[24], b[25], b[26], b[27]]),
        })
    }

    /// Encodes a request (the client side; used by tests and the fuzz seeds).
    pub fn encode(req: &Request) -> [u8; REQUEST_HEADER_LEN] {
        let mut b = [0u8; REQUEST_HEADER_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&req.flags.to_be_bytes());
        b[6..8].copy_from_slice(&req.command.as_u16().to_be_bytes());
        b[8..16].copy_from_slice(&req.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&req.offset.to_be_bytes());
        b[24..28].copy_from_slice(&req.length.to_be_bytes());
        b
    }
}

pub(crate) fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// What the export and the negotiation allow, for [`Request::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportLimits {
    pub size: u64,
    pub max_block: u32,
    /// Structured replies were negotiated (DF is allowed only then).
    pub structured: bool,
}

/// A well-formed request the server refuses: answer it with `errno` (an NBD error value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid {
    pub errno: u32,
    pub reason: &'static str,
}

impl Request {
    /// How many payload bytes follow this header on the wire (WRITE only). A WRITE payload
    /// longer than `max_block` is a protocol violation: we will not buffer it and cannot skip
    /// it cheaply, so the connection is closed.
    pub fn payload_len(&self, max_block: u32) -> Result<usize, ProtoError> {
        match self.command {
            Command::Write if self.length > max_block => Err(ProtoError::PayloadTooLong {
                length: self.length,
                max: max_block,
            }),
            Command::Write => Ok(self.length as usize),
            _ => Ok(0),
        }
    }

    /// Checks the request against the export: flags, range (without overflow), size cap and
    /// the zero-length rule. `Err` is the error to answer with.
    pub fn validate(&self, lim: &ExportLimits) -> Result<(), Invalid> {
        let bad = |reason| {
            Err(Invalid {
                errno: EINVAL,
                reason,
            })
        };
        if self.flags & !self.command.allowed_flags() != 0 {
            return bad("command flag not valid for this command");
        }
        if self.flags & CMD_FLAG_DF != 0 && !lim.structured {
            return bad("DF without structured replies");
        }
        match self.command {
            // Offset and length mean nothing to these; proto.md asks clients to send zeros
            // but no server refuses otherwise.
            Command::Disc | Command::Flush => Ok(()),
            Command::Read | Command::Write | Command::Trim | Command::WriteZeroes => {
                // proto.md leaves length 0 unspecified; an error (not a disconnect) is the
                // conservative answer and what the reference server does.
                if self.length == 0 {
                    return bad("zero length");
                }
                let limited = matches!(self.command, Command::Read | Command::Write);
                if limited && self.length > lim.max_block {
                    return bad("length over the maximum block size");
                }
                match self.offset.checked_add(u64::from(self.length)) {
                    Some(end) if end <= lim.size => Ok(()),
                    _ => bad("range beyond the end of the export"),
                }
            }
        }
    }
}
