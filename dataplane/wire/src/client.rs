//! The client side of one connection, sans I/O: the mirror of [`ServerConn`](crate::ServerConn)
//! for an OSD's outbound connections to its peers (a primary sending replica ops from its
//! polling shard). `carmine-client` (tokio) keeps its own code.
//!
//! A [`ClientConn`] owns the connection's [`FrameDecoder`] and its handshake state (the
//! [`ClientHandshake`] typestate chain). The shard calls [`ClientConn::poll`] once the socket is
//! connected and after every receive into [`ClientConn::decoder`], until it returns `Ok(None)`.
//! Each call handles at most one step:
//!
//! - the first call writes the `Hello` into `out` ([`ClientEvent::Send`]); the one that sees
//!   the server's `Challenge` writes the `Auth`; the one that sees `AuthOk` (with a server
//!   proof that matches the key) returns [`ClientEvent::Authenticated`];
//! - once authenticated it returns each [`RepReply`] and [`OpReply`] with its tid, borrowed
//!   from the receive buffer (no copy, no allocation). Matching tids to requests in flight is
//!   the caller's job.
//!
//! Requests are encoded with [`ClientConn::encode_rep_op`] (or
//! [`ClientConn::encode_rep_op_head`], zero-copy: one data buffer sent to every replica) and
//! [`ClientConn::encode_op`]; they refuse with [`ConnError::NotAuthenticated`] before
//! `Authenticated`, so nothing but the handshake is ever sent to an unauthenticated server.
//!
//! Any error from `poll` is final: the state is `Closed`, and the caller logs the error's
//! reason and closes the socket (a client sends no farewell). A server's `AuthReject` arrives
//! as [`HandshakeError::Rejected`]; a server that does not hold the key as
//! [`HandshakeError::BadServerProof`].
//!
//! States: `Start → AwaitChallenge → AwaitVerdict → Open`, or `Closed` from anywhere. Replies
//! are only ever returned in `Open`. Allocation: the receive buffer (once, in
//! [`ClientConn::new`]) and the client id (the handshake); none per frame.

use crate::error::DecodeError;
use crate::frame::{Encoder, FrameDecoder, VERSION_MIN};
use crate::handshake::{
    AuthKey, ClientAwaitingChallenge, ClientAwaitingVerdict, ClientHandshake, HandshakeError,
    Nonce, Session,
};
use crate::limits::Limits;
use crate::message::Message;
use crate::op::{OpReply, OpRequest};
use crate::rep::{RepOp, RepReply};
use crate::server::ConnError;

/// What [`ClientConn::poll`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEvent<'a> {
    /// Handshake in progress: send `out[..len]` (the `Hello`, then the `Auth`).
    Send(usize),
    /// The server accepted our key and proved it holds it too: requests may be sent.
    Authenticated,
    /// The answer to the replica op sent with `tid`.
    RepReply { tid: u64, reply: RepReply },
    /// The answer to the op sent with `tid`, borrowed from the receive buffer.
    OpReply { tid: u64, reply: OpReply<'a> },
}

#[derive(Debug)]
enum State {
    /// Nothing sent yet: the next poll writes the `Hello`.
    Start(ClientHandshake),
    AwaitChallenge(ClientAwaitingChallenge),
    AwaitVerdict(ClientAwaitingVerdict),
    Open(Session),
    Closed,
}

/// One outbound connection, client side. `out` buffers passed to [`poll`](Self::poll) must
/// hold the `Hello` frame: 68 bytes plus the client id (324 bytes covers any id within
/// [`Limits::DEFAULT`]).
#[derive(Debug)]
pub struct ClientConn {
    dec: FrameDecoder,
    state: State,
    encoder: Encoder,
    /// Version to pin the decoder to before the next frame (set while a frame still borrows
    /// the decoder).
    pin_version: Option<u8>,
}

impl ClientConn {
    /// `id`: the identity to authenticate as (e.g. the OSD's own id), `key` its secret, `nonce`
    /// fresh per connection ([`Nonce::random`]). Checks the id against `limits`; allocates the
    /// receive buffer.
    pub fn new(
        id: impl Into<String>,
        key: AuthKey,
        nonce: Nonce,
        limits: Limits,
    ) -> Result<Self, HandshakeError> {
        Ok(Self::with_handshake(
            ClientHandshake::new(id, key, nonce, &limits)?,
            limits,
        ))
    }

    /// From a prepared handshake (e.g. [`ClientHandshake::with_versions`]).
    pub fn with_handshake(hs: ClientHandshake, limits: Limits) -> Self {
        ClientConn {
            dec: FrameDecoder::new(limits),
            state: State::Start(hs),
            encoder: Encoder::new(VERSION_MIN, limits),
            pin_version: None,
        }
    }

    /// Receive into this ([`FrameDecoder::read_buf`] + [`FrameDecoder::advance`], or
    /// [`FrameDecoder::feed`]).
    pub fn decoder(&mut self) -> &mut FrameDecoder {
        &mut self.dec
    }

    /// The authenticated session (negotiated version, our id), once there is one.
    pub fn session(&self) -> Option<&Session> {
        match &self.state {
            State::Open(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open(_))
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Takes the next step: writes the `Hello` on the first call, then handles the next
    /// buffered frame if a whole one is there.
    pub fn poll<'s>(&'s mut self, out: &mut [u8]) -> Result<Option<ClientEvent<'s>>, ConnError> {
        let state = std::mem::replace(&mut self.state, State::Closed);
        let hs = match state {
            State::Closed => return Err(ConnError::Closed),
            State::Start(hs) => hs,
            state => return self.on_frame(state, out),
        };
        let n = self.encoder.encode(0, &Message::Hello(hs.hello()), out)?;
        self.state = State::AwaitChallenge(hs.sent_hello());
        Ok(Some(ClientEvent::Send(n)))
    }

    fn on_frame<'s>(
        &'s mut self,
        state: State,
        out: &mut [u8],
    ) -> Result<Option<ClientEvent<'s>>, ConnError> {
        if let Some(v) = self.pin_version.take() {
            self.dec.set_negotiated_version(v);
        }
        let limits = *self.dec.limits();
        let frame = match self.dec.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                self.state = state;
                return Ok(None);
            }
            Err(e) => return Err(DecodeError::from(e).into()),
        };
        let tid = frame.header.tid;
        let msg = frame.message(&limits)?;
        match state {
            State::AwaitChallenge(hs) => {
                let verdict = hs.on_message(&msg)?;
                self.encoder = Encoder::new(verdict.version(), limits);
                self.pin_version = Some(verdict.version());
                let n = self
                    .encoder
                    .encode(0, &Message::Auth(verdict.auth()), out)?;
                self.state = State::AwaitVerdict(verdict);
                Ok(Some(ClientEvent::Send(n)))
            }
            State::AwaitVerdict(verdict) => {
                self.state = State::Open(verdict.on_message(&msg)?);
                Ok(Some(ClientEvent::Authenticated))
            }
            State::Open(session) => {
                let event = match msg {
                    Message::RepReply(reply) => ClientEvent::RepReply { tid, reply },
                    Message::OpReply(reply) => ClientEvent::OpReply { tid, reply },
                    other => return Err(ConnError::Unexpected(other.frame_type())),
                };
                self.state = State::Open(session);
                Ok(Some(event))
            }
            // Handled by `poll`; kept closed.
            State::Start(_) | State::Closed => Err(ConnError::Closed),
        }
    }

    /// The encoder of the open connection, or why there is none.
    fn open_encoder(&self) -> Result<&Encoder, ConnError> {
        match self.state {
            State::Open(_) => Ok(&self.encoder),
            State::Closed => Err(ConnError::Closed),
            _ => Err(ConnError::NotAuthenticated),
        }
    }

    /// Encodes replica op `tid` into `out`; returns the frame length. Only once authenticated.
    pub fn encode_rep_op(
        &self,
        tid: u64,
        op: &RepOp<'_>,
        out: &mut [u8],
    ) -> Result<usize, ConnError> {
        Ok(self
            .open_encoder()?
            .encode(tid, &Message::RepOp(*op), out)?)
    }

    /// Zero-copy variant: writes the frame up to the op's data and returns `(head, data)`; send
    /// `out[..head]` then `data` (see [`Encoder::encode_head`]). A primary sends the same data
    /// slice to every replica.
    pub fn encode_rep_op_head<'m>(
        &self,
        tid: u64,
        op: &RepOp<'m>,
        out: &mut [u8],
    ) -> Result<(usize, &'m [u8]), ConnError> {
        Ok(self
            .open_encoder()?
            .encode_head(tid, &Message::RepOp(*op), out)?)
    }

    /// Encodes client op `tid` into `out`; returns the frame length. Only once authenticated.
    pub fn encode_op(
        &self,
        tid: u64,
        request: &OpRequest<'_>,
        out: &mut [u8],
    ) -> Result<usize, ConnError> {
        Ok(self
            .open_encoder()?
            .encode(tid, &Message::OpRequest(*request), out)?)
    }
}
