//! The client side of the `carmine-wire` handshake (version negotiation, HMAC challenge, the
//! server's proof), over any byte stream: tokio's TCP for [`crate::Connection`], a smoltcp
//! connection on a reactor shard for `carmine-client-shard`. The protocol steps are
//! `carmine_wire::ClientHandshake`'s; this is only their I/O.

use carmine_wire::{
    ClientHandshake, DecodeError, Encoder, FrameDecoder, HandshakeError, Message, Nonce, Session,
    VERSION_MIN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::conn::ConnectOptions;
use crate::error::ClientError;

/// A byte stream the handshake runs over.
#[allow(async_fn_in_trait)]
pub trait HandshakeIo {
    async fn write_all(&mut self, buf: &[u8]) -> Result<(), ClientError>;
    /// Reads at least one byte; `Ok(0)` at end of stream.
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ClientError>;
}

impl HandshakeIo for TcpStream {
    async fn write_all(&mut self, buf: &[u8]) -> Result<(), ClientError> {
        AsyncWriteExt::write_all(self, buf).await?;
        Ok(())
    }

    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ClientError> {
        Ok(AsyncReadExt::read(self, buf).await?)
    }
}

/// Runs the handshake as `opts.client_id`; the session it negotiated.
pub async fn run<S: HandshakeIo>(
    stream: &mut S,
    dec: &mut FrameDecoder,
    opts: &ConnectOptions,
) -> Result<Session, ClientError> {
    let nonce = Nonce::random().map_err(|e| ClientError::Random(e.to_string()))?;
    let hs = ClientHandshake::new(
        opts.client_id.clone(),
        opts.key.clone(),
        nonce,
        &opts.limits,
    )?;
    let mut buf = Vec::new();
    let hello = Message::Hello(hs.hello());
    send_frame(
        stream,
        &Encoder::new(VERSION_MIN, opts.limits),
        &hello,
        &mut buf,
    )
    .await?;
    let hs = hs.sent_hello();
    let verdict = recv_one(stream, dec, |m| hs.on_message(m)).await?;
    let auth = Message::Auth(verdict.auth());
    let enc = Encoder::new(verdict.version(), opts.limits);
    send_frame(stream, &enc, &auth, &mut buf).await?;
    recv_one(stream, dec, |m| verdict.on_message(m)).await
}

async fn send_frame<S: HandshakeIo>(
    stream: &mut S,
    enc: &Encoder,
    msg: &Message<'_>,
    buf: &mut Vec<u8>,
) -> Result<(), ClientError> {
    buf.resize(enc.frame_len(msg), 0);
    let n = enc.encode(0, msg, buf)?;
    stream.write_all(&buf[..n]).await?;
    Ok(())
}

/// Reads until one whole frame is there and feeds its message to the handshake step `step`.
async fn recv_one<S: HandshakeIo, T>(
    stream: &mut S,
    dec: &mut FrameDecoder,
    step: impl FnOnce(&Message<'_>) -> Result<T, HandshakeError>,
) -> Result<T, ClientError> {
    let limits = *dec.limits();
    loop {
        if let Some(frame) = dec.next_frame().map_err(DecodeError::from)? {
            let msg = frame.message(&limits)?;
            return Ok(step(&msg)?);
        }
        let n = stream.read(dec.read_buf()).await?;
        if n == 0 {
            return Err(ClientError::Closed(
                "server closed the connection during the handshake".into(),
            ));
        }
        dec.advance(n);
    }
}
