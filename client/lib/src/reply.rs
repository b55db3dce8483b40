//! Owned op results: a decoded reply borrows the connection's receive buffer, which the reader
//! task reuses for the next frame, so the data is copied out once here.

use carmine_wire::{OpKind, ReplyBody};

/// The successful result of one op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Written,
    WrittenFull,
    Read(Vec<u8>),
    Stat {
        size: u64,
    },
    Removed,
    List {
        names: Vec<String>,
        /// Pass back in the next list request; `None` once the PG is exhausted.
        next_cursor: Option<Vec<u8>>,
    },
}

impl Reply {
    pub(crate) fn from_body(body: &ReplyBody<'_>) -> Self {
        match body {
            ReplyBody::Written => Reply::Written,
            ReplyBody::WrittenFull => Reply::WrittenFull,
            ReplyBody::Read { data } => Reply::Read(data.to_vec()),
            ReplyBody::Stat { size } => Reply::Stat { size: *size },
            ReplyBody::Removed => Reply::Removed,
            ReplyBody::List(page) => Reply::List {
                names: page.names.iter().map(str::to_owned).collect(),
                next_cursor: page.next_cursor.map(<[u8]>::to_vec),
            },
        }
    }

    pub fn kind(&self) -> OpKind {
        match self {
            Reply::Written => OpKind::Write,
            Reply::WrittenFull => OpKind::WriteFull,
            Reply::Read(_) => OpKind::Read,
            Reply::Stat { .. } => OpKind::Stat,
            Reply::Removed => OpKind::Remove,
            Reply::List { .. } => OpKind::List,
        }
    }
}
