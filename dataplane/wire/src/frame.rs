//! Frames: the fixed 32-byte header, the stateless [`decode_frame`], the buffering
//! [`FrameDecoder`] and the [`Encoder`].
//!
//! Header layout (all integers little-endian; byte offsets):
//!
//! | off | len | field         | meaning                                                    |
//! |----:|----:|---------------|------------------------------------------------------------|
//! |   0 |   4 | magic         | `b"CRMN"`                                                  |
//! |   4 |   1 | version       | protocol version of this frame                             |
//! |   5 |   1 | frame type    | [`FrameType`]                                              |
//! |   6 |   2 | flags         | none defined in version 1: must be zero                    |
//! |   8 |   8 | tid           | transaction id: a reply carries its request's tid          |
//! |  16 |   4 | payload len   | bytes after the header, at most [`Limits::max_payload`]    |
//! |  20 |   4 | payload crc   | CRC-32C of the payload                                     |
//! |  24 |   4 | reserved      | must be zero                                               |
//! |  28 |   4 | header crc    | CRC-32C of bytes 0..28                                     |
//!
//! Checks run in this order: magic, header crc, version, reserved, flags, frame type, payload
//! length (all on the header alone, before any payload is waited for), then payload crc.

use crate::error::{DecodeError, EncodeError, FrameError};
use crate::limits::Limits;
use crate::message::Message;

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"CRMN";
/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 32;
/// Oldest protocol version this build speaks.
pub const VERSION_MIN: u8 = 1;
/// Newest protocol version this build speaks.
pub const VERSION_MAX: u8 = 1;

/// What a frame's payload is. One frame carries exactly one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    Hello = 0x01,
    Challenge = 0x02,
    Auth = 0x03,
    AuthOk = 0x04,
    AuthReject = 0x05,
    OpRequest = 0x10,
    OpReply = 0x11,
    /// Primary OSD → replica OSD: one replicated mutation ([`RepOp`](crate::RepOp)).
    RepOp = 0x20,
    /// Replica OSD → primary: the answer to a `RepOp` ([`RepReply`](crate::RepReply)).
    RepReply = 0x21,
}

impl FrameType {
    pub fn from_u8(v: u8) -> Result<Self, FrameError> {
        Ok(match v {
            0x01 => Self::Hello,
            0x02 => Self::Challenge,
            0x03 => Self::Auth,
            0x04 => Self::AuthOk,
            0x05 => Self::AuthReject,
            0x10 => Self::OpRequest,
            0x11 => Self::OpReply,
            0x20 => Self::RepOp,
            0x21 => Self::RepReply,
            other => return Err(FrameError::UnknownFrameType(other)),
        })
    }
}

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: u8,
    pub frame_type: FrameType,
    pub tid: u64,
    pub payload_len: u32,
    pub payload_crc: u32,
}

impl FrameHeader {
    /// Parses and checks a header: everything but the payload crc.
    pub fn parse(bytes: &[u8; HEADER_LEN], limits: &Limits) -> Result<Self, FrameError> {
        let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        let u32_at =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        let stored = u32_at(28);
        let computed = carmine_checksum::crc32c(&bytes[..28]);
        if stored != computed {
            return Err(FrameError::HeaderCrc { stored, computed });
        }
        let version = bytes[4];
        if !(VERSION_MIN..=VERSION_MAX).contains(&version) {
            return Err(FrameError::UnsupportedVersion {
                version,
                min: VERSION_MIN,
                max: VERSION_MAX,
            });
        }
        let reserved = u32_at(24);
        if reserved != 0 {
            return Err(FrameError::ReservedNonZero(reserved));
        }
        let flags = u16_at(6);
        if flags != 0 {
            return Err(FrameError::UnknownFlags(flags));
        }
        let frame_type = FrameType::from_u8(bytes[5])?;
        let payload_len = u32_at(16);
        if payload_len > limits.max_payload {
            return Err(FrameError::FrameTooLarge {
                len: payload_len,
                max: limits.max_payload,
            });
        }
        let mut tid = [0u8; 8];
        tid.copy_from_slice(&bytes[8..16]);
        Ok(Self {
            version,
            frame_type,
            tid: u64::from_le_bytes(tid),
            payload_len,
            payload_crc: u32_at(20),
        })
    }

    /// Writes the header, computing its crc.
    pub fn write(&self, out: &mut [u8; HEADER_LEN]) {
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = self.version;
        out[5] = self.frame_type as u8;
        out[6..8].copy_from_slice(&0u16.to_le_bytes());
        out[8..16].copy_from_slice(&self.tid.to_le_bytes());
        out[16..20].copy_from_slice(&self.payload_len.to_le_bytes());
        out[20..24].copy_from_slice(&self.payload_crc.to_le_bytes());
        out[24..28].copy_from_slice(&0u32.to_le_bytes());
        let crc = carmine_checksum::crc32c(&out[..28]);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
    }

    /// Header plus payload length.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.payload_len as usize
    }
}

/// A complete frame whose checksums are verified. Borrows the payload from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: FrameHeader,
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Parses the payload as the message its frame type says it is. The message borrows names
    /// and data from the payload: nothing is copied or allocated.
    pub fn message(&self, limits: &Limits) -> Result<Message<'a>, DecodeError> {
        Ok(Message::parse(
            self.header.frame_type,
            self.payload,
            limits,
        )?)
    }
}

/// Result of [`decode_frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole frame: `len` bytes of the input (header plus payload) belong to it.
    Frame { frame: Frame<'a>, len: usize },
    /// The input holds only part of a frame: at least `needed` bytes in total are required
    /// before calling again (the exact frame length once the header has arrived).
    NeedMore { needed: usize },
}

/// Decodes the frame at the start of `input`, if complete. Stateless and allocation-free: the
/// OSD shard loop can run it directly on its receive buffer.
pub fn decode_frame<'a>(input: &'a [u8], limits: &Limits) -> Result<Decoded<'a>, FrameError> {
    let Some(head) = input.first_chunk::<HEADER_LEN>() else {
        // Reject garbage as soon as the magic can be seen, instead of waiting for 32 bytes.
        let seen = input.len().min(4);
        if input[..seen] != MAGIC[..seen] {
            let mut found = [0u8; 4];
            found[..seen].copy_from_slice(&input[..seen]);
            return Err(FrameError::BadMagic { found });
        }
        return Ok(Decoded::NeedMore { needed: HEADER_LEN });
    };
    let header = FrameHeader::parse(head, limits)?;
    let len = header.frame_len();
    let Some(payload) = input.get(HEADER_LEN..len) else {
        return Ok(Decoded::NeedMore { needed: len });
    };
    let computed = carmine_checksum::crc32c(payload);
    if computed != header.payload_crc {
        return Err(FrameError::PayloadCrc {
            stored: header.payload_crc,
            computed,
        });
    }
    Ok(Decoded::Frame {
        frame: Frame { header, payload },
        len,
    })
}

/// Incremental decoder over one preallocated buffer of `HEADER_LEN + max_payload` bytes.
///
/// Fill it with [`read_buf`](Self::read_buf) + [`advance`](Self::advance) (receive straight
/// into it) or with [`feed`](Self::feed) (copy), then drain it with
/// [`next_frame`](Self::next_frame) until it returns `Ok(None)` (need more bytes). A returned
/// frame borrows the buffer; its bytes are released on the next call. Leftover bytes of a
/// partial frame are moved to the front at most once per frame, so the buffer never grows.
///
/// After an error the stream has lost frame sync: the decoder keeps returning that error and
/// the connection must be closed.
pub struct FrameDecoder {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Bytes of the frame last returned, released on the next call.
    pending: usize,
    limits: Limits,
    negotiated: Option<u8>,
    failed: Option<FrameError>,
}

impl std::fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("capacity", &self.buf.len())
            .field("buffered", &self.buffered())
            .field("negotiated", &self.negotiated)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl FrameDecoder {
    /// Allocates the receive buffer once, sized for the largest frame `limits` allow.
    pub fn new(limits: Limits) -> Self {
        Self {
            buf: vec![0u8; HEADER_LEN + limits.max_payload as usize].into_boxed_slice(),
            start: 0,
            end: 0,
            pending: 0,
            limits,
            negotiated: None,
            failed: None,
        }
    }

    /// From now on, accept only frames of the version the handshake settled on.
    pub fn set_negotiated_version(&mut self, version: u8) {
        self.negotiated = Some(version);
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start - self.pending
    }

    /// Releases the last frame and moves a partial frame to the front of the buffer.
    fn compact(&mut self) {
        self.start += self.pending;
        self.pending = 0;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// The free space to receive into. Empty only when a whole maximum-size frame is buffered
    /// and not yet drained by [`next_frame`](Self::next_frame).
    pub fn read_buf(&mut self) -> &mut [u8] {
        self.compact();
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes of [`read_buf`](Self::read_buf) as filled.
    ///
    /// # Panics
    /// If `n` exceeds the length `read_buf` returned: a caller bug, not an input condition.
    pub fn advance(&mut self, n: usize) {
        assert!(self.end + n <= self.buf.len(), "advance past read_buf");
        self.end += n;
    }

    /// Copies as much of `data` as fits; returns how many bytes were taken. Call
    /// [`next_frame`](Self::next_frame) until it yields `None`, then feed the rest.
    pub fn feed(&mut self, data: &[u8]) -> usize {
        let space = self.read_buf();
        let n = space.len().min(data.len());
        space[..n].copy_from_slice(&data[..n]);
        self.end += n;
        n
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        self.start += self.pending;
        self.pending = 0;
        let input = &self.buf[self.start..self.end];
        let checked = match decode_frame(input, &self.limits) {
            Ok(Decoded::NeedMore { .. }) => return Ok(None),
            Ok(Decoded::Frame { frame, len }) => match self.negotiated {
                Some(v) if v != frame.header.version => Err(FrameError::VersionMismatch {
                    version: frame.header.version,
                    negotiated: v,
                }),
                _ => Ok((frame.header, len)),
            },
            Err(e) => Err(e),
        };
        match checked {
            Ok((header, len)) => {
                let payload = &self.buf[self.start + HEADER_LEN..self.start + len];
                self.pending = len;
                Ok(Some(Frame { header, payload }))
            }
            Err(e) => {
                self.failed = Some(e);
                Err(e)
            }
        }
    }
}

/// Writes frames into caller buffers: header, then the message, with both crcs.
#[derive(Debug, Clone, Copy)]
pub struct Encoder {
    version: u8,
    limits: Limits,
}

impl Encoder {
    /// An encoder for frames of `version` (use [`VERSION_MIN`] for the client's hello, then the
    /// negotiated version).
    pub fn new(version: u8, limits: Limits) -> Self {
        Self { version, limits }
    }

    pub fn version(&self) -> u8 {
        self.version
    }

    /// Total frame length `msg` encodes to (header included): size the buffer with this.
    pub fn frame_len(&self, msg: &Message<'_>) -> usize {
        HEADER_LEN + msg.payload_len()
    }

    /// Encodes `msg` as one frame at the start of `out`; returns the frame length. Refuses, with
    /// nothing meaningful written, a message the peer's decoder would reject under the same
    /// limits.
    pub fn encode(
        &self,
        tid: u64,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        self.encode_inner(tid, msg, out, false)
    }

    /// Zero-copy variant for messages with bulk data ([`Message::bulk`]): writes the frame up
    /// to, not including, the bulk bytes, and returns `(head length, bulk)`. Sending
    /// `out[..head]` then `bulk` puts exactly the bytes of [`encode`](Self::encode) on the wire
    /// (the payload crc covers both), without copying the data into `out`. For a message
    /// without bulk data the tail is empty and the head is the whole frame.
    pub fn encode_head<'m>(
        &self,
        tid: u64,
        msg: &Message<'m>,
        out: &mut [u8],
    ) -> Result<(usize, &'m [u8]), EncodeError> {
        let tail = msg.bulk().unwrap_or(&[]);
        let head = self.encode_inner(tid, msg, out, true)?;
        Ok((head, tail))
    }

    fn encode_inner(
        &self,
        tid: u64,
        msg: &Message<'_>,
        out: &mut [u8],
        omit_bulk: bool,
    ) -> Result<usize, EncodeError> {
        let payload_len = msg.payload_len();
        let tail = if omit_bulk {
            msg.bulk().unwrap_or(&[])
        } else {
            &[]
        };
        let needed = HEADER_LEN + payload_len - tail.len();
        let max = self.limits.max_payload;
        let len32 = u32::try_from(payload_len)
            .ok()
            .filter(|&l| l <= max)
            .ok_or(EncodeError::FrameTooLarge {
                len: payload_len,
                max,
            })?;
        let available = out.len();
        if available < needed {
            return Err(EncodeError::BufferTooSmall { needed, available });
        }
        let (head, rest) = out
            .split_first_chunk_mut::<HEADER_LEN>()
            .ok_or(EncodeError::BufferTooSmall { needed, available })?;
        let payload = &mut rest[..needed - HEADER_LEN];
        let written = msg.write_payload_with(payload, &self.limits, omit_bulk)?;
        debug_assert_eq!(
            written,
            payload.len(),
            "payload_len disagrees with the writer"
        );
        let header = FrameHeader {
            version: self.version,
            frame_type: msg.frame_type(),
            tid,
            payload_len: len32,
            payload_crc: carmine_checksum::crc32c_append(carmine_checksum::crc32c(payload), tail),
        };
        header.write(head);
        Ok(needed)
    }
}
