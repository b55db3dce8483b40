//! Bounds-checked little-endian readers and writers over byte slices.
//!
//! Every message body is parsed with [`Reader`] and written with [`Writer`]. Neither allocates:
//! a `Reader` hands out sub-slices of the frame payload, a `Writer` fills a caller buffer. Every
//! read names the field it was reading, so a short payload yields a
//! [`MessageError::Truncated`] that says exactly what was missing.

use crate::error::{EncodeError, MessageError};

/// Reads fields from a message payload, front to back.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn bytes(
        &mut self,
        n: usize,
        field: &'static str,
    ) -> Result<&'a [u8], MessageError> {
        let rest = &self.buf[self.pos..];
        if rest.len() < n {
            return Err(MessageError::Truncated {
                field,
                needed: n,
                available: rest.len(),
            });
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], MessageError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, field)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, MessageError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, MessageError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, MessageError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, MessageError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A `u16` length followed by that many bytes.
    pub(crate) fn bytes16(&mut self, field: &'static str) -> Result<&'a [u8], MessageError> {
        let n = self.u16(field)?;
        self.bytes(usize::from(n), field)
    }

    /// A `u32` length followed by that many bytes.
    pub(crate) fn bytes32(&mut self, field: &'static str) -> Result<&'a [u8], MessageError> {
        let n = self.u32(field)?;
        // u32 -> usize is lossless on the 32/64-bit targets we build for; a length that does
        // not fit is necessarily longer than the payload, hence truncated.
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        self.bytes(n, field)
    }

    /// A `u16`-length-prefixed UTF-8 string.
    pub(crate) fn str16(&mut self, field: &'static str) -> Result<&'a str, MessageError> {
        let raw = self.bytes16(field)?;
        std::str::from_utf8(raw).map_err(|e| MessageError::BadUtf8 {
            field,
            valid_up_to: e.valid_up_to(),
        })
    }

    /// Succeeds only if the whole payload was consumed: trailing garbage is an error, so two
    /// different byte strings never decode to the same message.
    pub(crate) fn finish(self) -> Result<(), MessageError> {
        let extra = self.buf.len() - self.pos;
        if extra == 0 {
            Ok(())
        } else {
            Err(MessageError::TrailingBytes { count: extra })
        }
    }
}

/// Writes fields into a caller buffer, front to back.
pub(crate) struct Writer<'b> {
    buf: &'b mut [u8],
    pos: usize,
    /// Write bulk fields' lengths but not their bytes (see [`Writer::bulk32`]).
    omit_bulk: bool,
}

impl<'b> Writer<'b> {
    pub(crate) fn new(buf: &'b mut [u8], omit_bulk: bool) -> Self {
        Self {
            buf,
            pos: 0,
            omit_bulk,
        }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn bytes(&mut self, data: &[u8]) -> Result<(), EncodeError> {
        let end = self.pos + data.len();
        if end > self.buf.len() {
            return Err(EncodeError::BufferTooSmall {
                needed: end,
                available: self.buf.len(),
            });
        }
        self.buf[self.pos..end].copy_from_slice(data);
        self.pos = end;
        Ok(())
    }

    pub(crate) fn u8(&mut self, v: u8) -> Result<(), EncodeError> {
        self.bytes(&[v])
    }

    pub(crate) fn u16(&mut self, v: u16) -> Result<(), EncodeError> {
        self.bytes(&v.to_le_bytes())
    }

    pub(crate) fn u32(&mut self, v: u32) -> Result<(), EncodeError> {
        self.bytes(&v.to_le_bytes())
    }

    pub(crate) fn u64(&mut self, v: u64) -> Result<(), EncodeError> {
        self.bytes(&v.to_le_bytes())
    }

    pub(crate) fn bytes16(&mut self, data: &[u8], field: &'static str) -> Result<(), EncodeError> {
        let n = u16::try_from(data.len()).map_err(|_| EncodeError::FieldTooLong {
            field,
            len: data.len(),
            max: usize::from(u16::MAX),
        })?;
        self.u16(n)?;
        self.bytes(data)
    }

    /// The bulk data of a message: a `u32` length and the bytes. Always the last field, so a
    /// zero-copy sender can write everything before it and send the bytes from where they are.
    pub(crate) fn bulk32(&mut self, data: &[u8], field: &'static str) -> Result<(), EncodeError> {
        let n = u32::try_from(data.len()).map_err(|_| EncodeError::FieldTooLong {
            field,
            len: data.len(),
            max: u32::MAX as usize,
        })?;
        self.u32(n)?;
        if self.omit_bulk {
            return Ok(());
        }
        self.bytes(data)
    }
}

impl<'a> Reader<'a> {
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// The bytes read since `start` (a previous [`position`](Self::position)).
    pub(crate) fn consumed_since(&self, start: usize) -> &'a [u8] {
        &self.buf[start..self.pos]
    }
}
