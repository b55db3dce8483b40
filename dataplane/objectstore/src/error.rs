use crate::device::DeviceError;

/// The one error type of the object-store layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("collection not empty: {0}")]
    NotEmpty(String),
    #[error("no space left in the store")]
    NoSpace,
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("device I/O error: {0}")]
    Io(#[from] DeviceError),
    #[error(
        "checksum mismatch at block {block}: stored {stored:#010x}, computed {computed:#010x}"
    )]
    Checksum {
        block: u64,
        stored: u32,
        computed: u32,
    },
    #[error("on-disk structure corrupt: {0}")]
    Corrupt(String),
    #[error("device keeps no data and cannot back a durable store")]
    NotDurable,
    #[error("store failed earlier and refuses further work: {0}")]
    Failed(String),
}
