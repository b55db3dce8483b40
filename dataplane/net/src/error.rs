//! Errors of the network layer.

/// What a network operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("unknown or closed connection/listener handle")]
    InvalidHandle,
    #[error("the peer closed its sending side (end of stream)")]
    Eof,
    #[error("the connection is gone (reset by the peer or timed out)")]
    Closed,
    #[error("socket cap of the interface reached ({0} sockets)")]
    SocketCap(usize),
    #[error("port {0} is already listened on")]
    AddrInUse(u16),
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
