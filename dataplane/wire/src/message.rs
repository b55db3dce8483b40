//! [`Message`]: every frame payload, one variant per [`FrameType`].

use crate::codec::Writer;
use crate::error::{EncodeError, MessageError};
use crate::frame::FrameType;
use crate::handshake::{Auth, AuthOk, AuthReject, Challenge, Hello, SECRET_LEN};
use crate::limits::Limits;
use crate::op::{Op, OpReply, OpRequest, ReplyBody};
use crate::rep::{RepOp, RepReply};

/// A decoded (or to-be-encoded) message. Borrows strings and data from the frame payload, or
/// from the caller when encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Hello(Hello<'a>),
    Challenge(Challenge),
    Auth(Auth),
    AuthOk(AuthOk),
    AuthReject(AuthReject),
    OpRequest(OpRequest<'a>),
    OpReply(OpReply<'a>),
    RepOp(RepOp<'a>),
    RepReply(RepReply),
}

impl<'a> Message<'a> {
    pub fn frame_type(&self) -> FrameType {
        match self {
            Message::Hello(_) => FrameType::Hello,
            Message::Challenge(_) => FrameType::Challenge,
            Message::Auth(_) => FrameType::Auth,
            Message::AuthOk(_) => FrameType::AuthOk,
            Message::AuthReject(_) => FrameType::AuthReject,
            Message::OpRequest(_) => FrameType::OpRequest,
            Message::OpReply(_) => FrameType::OpReply,
            Message::RepOp(_) => FrameType::RepOp,
            Message::RepReply(_) => FrameType::RepReply,
        }
    }

    /// Parses a frame payload of type `ty`, enforcing `limits`.
    pub fn parse(ty: FrameType, payload: &'a [u8], limits: &Limits) -> Result<Self, MessageError> {
        Ok(match ty {
            FrameType::Hello => Message::Hello(Hello::parse(payload, limits)?),
            FrameType::Challenge => Message::Challenge(Challenge::parse(payload)?),
            FrameType::Auth => Message::Auth(Auth::parse(payload)?),
            FrameType::AuthOk => Message::AuthOk(AuthOk::parse(payload)?),
            FrameType::AuthReject => Message::AuthReject(AuthReject::parse(payload)?),
            FrameType::OpRequest => Message::OpRequest(OpRequest::parse(payload, limits)?),
            FrameType::OpReply => Message::OpReply(OpReply::parse(payload, limits)?),
            FrameType::RepOp => Message::RepOp(RepOp::parse(payload, limits)?),
            FrameType::RepReply => Message::RepReply(RepReply::parse(payload)?),
        })
    }

    /// Exact payload size [`write_payload`](Self::write_payload) produces.
    pub fn payload_len(&self) -> usize {
        match self {
            Message::Hello(h) => h.payload_len(),
            Message::Challenge(_) => Challenge::LEN,
            Message::Auth(_) | Message::AuthOk(_) => SECRET_LEN,
            Message::AuthReject(_) => AuthReject::LEN,
            Message::OpRequest(r) => r.payload_len(),
            Message::OpReply(r) => r.payload_len(),
            Message::RepOp(r) => r.payload_len(),
            Message::RepReply(r) => r.payload_len(),
        }
    }

    /// The bulk data a message carries as its last field (write and write_full data of client
    /// and replica ops, read reply data), if any.
    pub fn bulk(&self) -> Option<&'a [u8]> {
        match *self {
            Message::OpRequest(OpRequest {
                op: Op::Write { data, .. } | Op::WriteFull { data, .. },
                ..
            }) => Some(data),
            Message::OpReply(OpReply {
                result: Ok(ReplyBody::Read { data }),
            }) => Some(data),
            Message::RepOp(r) => r.op.data(),
            _ => None,
        }
    }

    /// Writes the payload (no header) into `out`; returns its length. Checks `limits` first.
    pub fn write_payload(&self, out: &mut [u8], limits: &Limits) -> Result<usize, EncodeError> {
        self.write_payload_with(out, limits, false)
    }

    /// `omit_bulk`: stop before the bytes of [`bulk`](Self::bulk) (its length is written).
    pub(crate) fn write_payload_with(
        &self,
        out: &mut [u8],
        limits: &Limits,
        omit_bulk: bool,
    ) -> Result<usize, EncodeError> {
        let mut w = Writer::new(out, omit_bulk);
        match self {
            Message::Hello(h) => h.write(&mut w, limits)?,
            Message::Challenge(c) => c.write(&mut w)?,
            Message::Auth(a) => w.bytes(&a.mac)?,
            Message::AuthOk(a) => w.bytes(&a.server_proof)?,
            Message::AuthReject(r) => r.write(&mut w)?,
            Message::OpRequest(r) => r.write(&mut w, limits)?,
            Message::OpReply(r) => r.write(&mut w, limits)?,
            Message::RepOp(r) => r.write(&mut w, limits)?,
            Message::RepReply(r) => r.write(&mut w)?,
        }
        Ok(w.position())
    }
}
