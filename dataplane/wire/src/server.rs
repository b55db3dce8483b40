//! The server side of one connection, sans I/O: for the OSD messenger's run-to-completion
//! loop.
//!
//! A [`ServerConn`] owns the connection's [`FrameDecoder`] and its handshake state. The
//! messenger receives bytes into [`ServerConn::decoder`], then calls [`ServerConn::poll`] until
//! it returns `Ok(None)`. Each call handles at most one frame:
//!
//! - during the handshake it writes the answer (challenge, auth ok) into the caller's `out`
//!   buffer and says how many bytes to send;
//! - once authenticated it returns each [`OpRequest`] and each [`RepOp`] (replica op, from a
//!   primary OSD), borrowed from the receive buffer (no copy, no allocation), with its tid; the
//!   messenger answers with [`ServerConn::encode_reply`] (or [`ServerConn::encode_reply_head`]
//!   to send read data from where it lies) and [`ServerConn::encode_rep_reply`].
//!
//! The wire crate does not decide who may send what: any authenticated peer's ops and replica
//! ops are returned. The messenger checks the role of [`ServerConn::peer_id`] (only an OSD
//! identity may send replica ops) before acting on one. Replies (`OpReply`, `RepReply`) and
//! handshake frames arriving at a server are protocol errors.
//!
//! Any error is final: it comes with the bytes of a farewell frame already written to `out`
//! (an `AuthReject` during the handshake; nothing after it), the connection state is `Closed`,
//! and the messenger logs the error's reason, sends the farewell and closes the socket.
//!
//! States: `AwaitHello → AwaitAuth → Open`, or `Closed` from anywhere. Ops are only ever
//! returned in `Open`, so an unauthenticated peer cannot reach the op path.

use std::collections::HashMap;
use std::hash::BuildHasher;

use thiserror::Error;

use crate::error::{DecodeError, EncodeError};
use crate::frame::{Encoder, FrameDecoder, FrameType, VERSION_MIN};
use crate::handshake::{
    AuthKey, HandshakeError, Nonce, ServerAwaitingAuth, ServerHandshake, Session,
};
use crate::limits::Limits;
use crate::message::Message;
use crate::op::{OpReply, OpRequest};
use crate::rep::{RepOp, RepReply};

/// Where the server finds a client's key (the keyring the monitor distributes).
pub trait Keyring {
    fn key(&self, client_id: &str) -> Option<AuthKey>;
}

impl<S: BuildHasher> Keyring for HashMap<String, AuthKey, S> {
    fn key(&self, client_id: &str) -> Option<AuthKey> {
        self.get(client_id).cloned()
    }
}

/// What [`ServerConn::poll`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerEvent<'a> {
    /// Handshake in progress: send `out[..len]`.
    Send(usize),
    /// The client is authenticated: send `out[..len]` (the `AuthOk`); ops may follow.
    Authenticated(usize),
    /// An op from the authenticated client. Answer with the same `tid`.
    Op { tid: u64, request: OpRequest<'a> },
    /// A replica op from the authenticated peer (check that [`ServerConn::peer_id`] is an OSD
    /// before applying it). Answer with [`ServerConn::encode_rep_reply`] and the same `tid`.
    RepOp { tid: u64, op: RepOp<'a> },
}

/// The connection layer's error, for both ends ([`ServerConn`], [`ClientConn`](crate::ClientConn)).
/// From `poll`: why the connection must close (it is `Closed` from then on). From a
/// `ClientConn`'s `encode_*`: why nothing was encoded (`NotAuthenticated`, `Closed`, `Encode`),
/// the connection state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConnError {
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("cannot encode a frame: {0}")]
    Encode(#[from] EncodeError),
    #[error("the peer must not send {0:?} frames on an open connection")]
    Unexpected(FrameType),
    /// A caller bug, not an input condition: nothing but the handshake may be sent before it
    /// completes ([`ClientConn`](crate::ClientConn)).
    #[error("the connection is not authenticated yet")]
    NotAuthenticated,
    #[error("the connection is already closed")]
    Closed,
}

/// A [`ConnError`] plus the farewell frame already written to `out`: send `out[..farewell]`
/// (possibly 0 bytes), then close.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{error}")]
pub struct ServerError {
    pub error: ConnError,
    pub farewell: usize,
}

#[derive(Debug)]
enum State {
    AwaitHello(ServerHandshake),
    AwaitAuth(ServerAwaitingAuth),
    Open(Session),
    Closed,
}

/// One client connection, server side. `out` buffers passed to [`poll`](Self::poll) must hold
/// at least 128 bytes (the largest handshake frame is 70).
#[derive(Debug)]
pub struct ServerConn {
    dec: FrameDecoder,
    state: State,
    encoder: Encoder,
    /// Version to pin the decoder to before the next frame. (Set while a frame still borrows
    /// the decoder; every later frame must carry it.)
    pin_version: Option<u8>,
}

impl ServerConn {
    /// `nonce`: fresh per connection ([`Nonce::random`]). Allocates the receive buffer.
    pub fn new(nonce: Nonce, limits: Limits) -> Self {
        ServerConn {
            dec: FrameDecoder::new(limits),
            state: State::AwaitHello(ServerHandshake::new(nonce, limits)),
            encoder: Encoder::new(VERSION_MIN, limits),
            pin_version: None,
        }
    }

    /// Receive into this ([`FrameDecoder::read_buf`] + [`FrameDecoder::advance`], or
    /// [`FrameDecoder::feed`]).
    pub fn decoder(&mut self) -> &mut FrameDecoder {
        &mut self.dec
    }

    /// The authenticated peer's id (a client id, or an OSD's id for replica connections), once
    /// the handshake has succeeded.
    pub fn peer_id(&self) -> Option<&str> {
        self.session().map(|s| s.client_id.as_str())
    }

    /// The authenticated session, once there is one.
    pub fn session(&self) -> Option<&Session> {
        match &self.state {
            State::Open(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Handles the next buffered frame, if a whole one is there.
    pub fn poll<'s>(
        &'s mut self,
        keys: &dyn Keyring,
        out: &mut [u8],
    ) -> Result<Option<ServerEvent<'s>>, ServerError> {
        let state = std::mem::replace(&mut self.state, State::Closed);
        if let State::Closed = state {
            return Err(ServerError {
                error: ConnError::Closed,
                farewell: 0,
            });
        }
        if let Some(v) = self.pin_version.take() {
            self.dec.set_negotiated_version(v);
        }
        let limits = *self.dec.limits();
        let fail = |error: ConnError| ServerError { error, farewell: 0 };
        let frame = match self.dec.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                self.state = state;
                return Ok(None);
            }
            Err(e) => return Err(fail(DecodeError::from(e).into())),
        };
        let tid = frame.header.tid;
        let msg = frame.message(&limits).map_err(|e| fail(e.into()))?;
        match state {
            State::AwaitHello(hs) => match hs.on_message(&msg) {
                Ok(awaiting) => {
                    self.encoder = Encoder::new(awaiting.version(), limits);
                    self.pin_version = Some(awaiting.version());
                    let challenge = Message::Challenge(awaiting.challenge());
                    let n = self
                        .encoder
                        .encode(0, &challenge, out)
                        .map_err(|e| fail(e.into()))?;
                    self.state = State::AwaitAuth(awaiting);
                    Ok(Some(ServerEvent::Send(n)))
                }
                Err(e) => Err(reject(&self.encoder, e, out)),
            },
            State::AwaitAuth(awaiting) => {
                let key = keys.key(awaiting.client_id());
                match awaiting.on_message(&msg, key.as_ref()) {
                    Ok((session, ok)) => {
                        let n = self
                            .encoder
                            .encode(0, &Message::AuthOk(ok), out)
                            .map_err(|e| fail(e.into()))?;
                        self.state = State::Open(session);
                        Ok(Some(ServerEvent::Authenticated(n)))
                    }
                    Err(e) => Err(reject(&self.encoder, e, out)),
                }
            }
            State::Open(session) => match msg {
                Message::OpRequest(request) => {
                    self.state = State::Open(session);
                    Ok(Some(ServerEvent::Op { tid, request }))
                }
                Message::RepOp(op) => {
                    self.state = State::Open(session);
                    Ok(Some(ServerEvent::RepOp { tid, op }))
                }
                other => Err(fail(ConnError::Unexpected(other.frame_type()))),
            },
            State::Closed => Err(fail(ConnError::Closed)),
        }
    }

    /// Encodes the reply to op `tid` into `out`; returns the frame length.
    pub fn encode_reply(
        &self,
        tid: u64,
        reply: &OpReply<'_>,
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        self.encoder.encode(tid, &Message::OpReply(*reply), out)
    }

    /// Zero-copy variant: writes the frame up to the read data and returns `(head, data)`; send
    /// `out[..head]` then `data` (see [`Encoder::encode_head`]).
    pub fn encode_reply_head<'m>(
        &self,
        tid: u64,
        reply: &OpReply<'m>,
        out: &mut [u8],
    ) -> Result<(usize, &'m [u8]), EncodeError> {
        self.encoder
            .encode_head(tid, &Message::OpReply(*reply), out)
    }

    /// Encodes the reply to replica op `tid` into `out`; returns the frame length (at most
    /// 49 bytes).
    pub fn encode_rep_reply(
        &self,
        tid: u64,
        reply: &RepReply,
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        self.encoder.encode(tid, &Message::RepReply(*reply), out)
    }
}

/// Writes the handshake error's `AuthReject` (if it has one) into `out`.
fn reject(encoder: &Encoder, error: HandshakeError, out: &mut [u8]) -> ServerError {
    let farewell = error
        .reject()
        .and_then(|r| encoder.encode(0, &Message::AuthReject(r), out).ok())
        .unwrap_or(0);
    ServerError {
        error: error.into(),
        farewell,
    }
}
