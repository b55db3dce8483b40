//! The client's error type.

use std::sync::Arc;

use carmine_wire::{DecodeError, EncodeError, HandshakeError, OpError};
use thiserror::Error;

#[derive(Debug, Clone, Error)]
pub enum ClientError {
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("bad frame from the server: {0}")]
    Decode(#[from] DecodeError),
    #[error("request not encodable: {0}")]
    Encode(#[from] EncodeError),
    #[error("socket error: {0}")]
    Io(Arc<std::io::Error>),
    /// The connection is gone; the reason it closed. Reconnect to go on.
    #[error("connection closed: {0}")]
    Closed(Arc<str>),
    /// The server broke the protocol (e.g. answered a read with a stat).
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
    /// The OSD executed (or refused) the op and reported this.
    #[error("op failed: {0}")]
    Op(#[from] OpError),
    #[error("cannot generate a nonce: {0}")]
    Random(String),
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(Arc::new(e))
    }
}
