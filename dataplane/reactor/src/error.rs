//! Errors of the reactor layer.

/// What can go wrong starting or running shards.
#[derive(Debug, thiserror::Error)]
pub enum ReactorError {
    #[error("the reactor needs at least one shard")]
    NoShards,
    #[error("at most {max} shards are supported, {got} requested")]
    TooManyShards { max: usize, got: usize },
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    #[error("pinning shard {shard} to core {core}: {source}")]
    Pin {
        shard: usize,
        core: usize,
        source: std::io::Error,
    },
    #[error("system call failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("shard {shard} init failed: {reason}")]
    Init { shard: usize, reason: String },
    #[error("shard {0} thread panicked")]
    Panicked(usize),
    #[error("not called on a shard thread")]
    NotOnShard,
    #[error("the shard's task slab is full")]
    TooManyTasks,
    #[error("no shard {0}")]
    NoSuchShard(usize),
}
