//! What the server serves: a block device behind [`BlockExport`].
//!
//! The contract every implementation keeps (the server's FLUSH, FUA and CAN_MULTI_CONN
//! answers rely on it): a write, write-zeroes or discard that returned `Ok` is durable and
//! visible to every later read through any connection. [`BlockExport::flush`] therefore has
//! nothing left to do for a backend like Carmine's images, whose writes are acknowledged only
//! once every replica has persisted them.

use std::future::Future;

/// Why a backend operation failed, as far as an NBD client can be told.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The cluster is out of space (answered with NBD_ENOSPC).
    #[error("no space left: {0}")]
    NoSpace(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Anything else (answered with NBD_EIO).
    #[error("{0}")]
    Io(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ExportError {
    /// The NBD error value to reply with.
    pub fn errno(&self) -> u32 {
        match self {
            ExportError::NoSpace(_) => carmine_nbd_proto::ENOSPC,
            ExportError::Io(_) => carmine_nbd_proto::EIO,
        }
    }
}

/// A block device of a fixed size. Offsets and lengths are already validated against
/// [`BlockExport::size`] by the server.
pub trait BlockExport: Send + Sync + 'static {
    /// Size in bytes, fixed for the life of the server.
    fn size(&self) -> u64;

    /// Exactly `len` bytes at `offset`; zeros where never written.
    fn read(
        &self,
        offset: u64,
        len: usize,
    ) -> impl Future<Output = Result<Vec<u8>, ExportError>> + Send;

    /// Durable when `Ok` (see the module docs).
    fn write(
        &self,
        offset: u64,
        data: &[u8],
    ) -> impl Future<Output = Result<(), ExportError>> + Send;

    /// The range reads back as zeros and stays allocated (NBD's NO_HOLE); durable when `Ok`.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<(), ExportError>> + Send;

    /// The range may be deallocated; it reads back as zeros; durable when `Ok`.
    fn discard(
        &self,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<(), ExportError>> + Send;

    /// Every write that completed before this call is durable when `Ok`.
    fn flush(&self) -> impl Future<Output = Result<(), ExportError>> + Send;
}
