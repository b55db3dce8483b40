//! Ops as the shard executes them, owned (no borrow of the receive buffer), and their replies.
//!
//! A wire [`OpRequest`] borrows the connection's receive buffer; the shard turns it into a
//! [`Job`] (copying the name and, for writes, the data that the store transaction needs anyway)
//! so that the buffer can take the next frame, the job can wait behind a write to the same
//! object, or travel through a ring to the shard that owns its PG.

use carmine_objectstore::{ObjectId, StoreError};
use carmine_wire::op::NameList;
use carmine_wire::op::{ListPage, OpKind, ReplyBody};
use carmine_wire::{Op, OpError, OpReply, OpRequest, RepMutation};
use smallvec::SmallVec;

/// An op's target: pool, PG and the client's map epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub pool: u64,
    pub pg: u32,
    pub epoch: u64,
}

/// The object name of a read or stat, inline up to 64 bytes (longer names spill to the heap):
/// reads and stats take no allocation on the shard (the store is given a reused `ObjectId`,
/// see `ShardCore::execute`). Writes own an [`ObjectId`]: their transaction keeps it.
pub type Name = SmallVec<[u8; 64]>;

/// An owned op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    Write {
        oid: ObjectId,
        off: u64,
        data: Vec<u8>,
    },
    WriteFull {
        oid: ObjectId,
        data: Vec<u8>,
    },
    Read {
        name: Name,
        off: u64,
        len: u32,
    },
    Stat {
        name: Name,
    },
    Remove {
        oid: ObjectId,
    },
    List {
        cursor: Vec<u8>,
        max: u32,
    },
}

impl Job {
    /// The owned job for a decoded request. Write data is copied into a buffer by `data_buf`
    /// (the store's [`ObjectStore::data_buf_from`](carmine_objectstore::ObjectStore::data_buf_from):
    /// an engine that recycles buffers makes a steady write stream allocation-free).
    pub fn from_request(
        req: &OpRequest<'_>,
        data_buf: &mut dyn FnMut(&[u8]) -> Vec<u8>,
    ) -> (Target, Job) {
        let target = Target {
            pool: req.pool.0,
            pg: req.pg.0,
            epoch: req.epoch.0,
        };
        let oid = |s: &str| ObjectId::from_slice(s.as_bytes());
        let mut owned = |d: &[u8]| data_buf(d);
        let job = match req.op {
            Op::Write {
                object,
                offset,
                data,
            } => Job::Write {
                oid: oid(object),
                off: offset,
                data: owned(data),
            },
            Op::WriteFull { object, data } => Job::WriteFull {
                oid: oid(object),
                data: owned(data),
            },
            Op::Read {
                object,
                offset,
                len,
            } => Job::Read {
                name: Name::from_slice(object.as_bytes()),
                off: offset,
                len,
            },
            Op::Stat { object } => Job::Stat {
                name: Name::from_slice(object.as_bytes()),
            },
            Op::Remove { object } => Job::Remove { oid: oid(object) },
            Op::List {
                cursor,
                max_entries,
            } => Job::List {
                cursor: cursor.to_vec(),
                max: max_entries,
            },
        };
        (target, job)
    }

    /// The owned job for a replica op's mutation (write data copied as in
    /// [`from_request`](Self::from_request)).
    pub fn from_rep(m: &RepMutation<'_>, data_buf: &mut dyn FnMut(&[u8]) -> Vec<u8>) -> Job {
        let oid = |s: &str| ObjectId::from_slice(s.as_bytes());
        let mut owned = |d: &[u8]| data_buf(d);
        match *m {
            RepMutation::Write {
                object,
                offset,
                data,
            } => Job::Write {
                oid: oid(object),
                off: offset,
                data: owned(data),
            },
            RepMutation::WriteFull { object, data } | RepMutation::Push { object, data } => {
                Job::WriteFull {
                    oid: oid(object),
                    data: owned(data),
                }
            }
            RepMutation::Remove { object } | RepMutation::PushTombstone { object } => {
                Job::Remove { oid: oid(object) }
            }
        }
    }

    /// The replica op's mutation for this job, borrowing its name and data (`None`: not a
    /// mutation, or a name that is not UTF-8, which no client op can carry).
    pub fn as_rep(&self) -> Option<RepMutation<'_>> {
        fn name(oid: &ObjectId) -> Option<&str> {
            std::str::from_utf8(&oid.0).ok()
        }
        Some(match self {
            Job::Write { oid, off, data } => RepMutation::Write {
                object: name(oid)?,
                offset: *off,
                data,
            },
            Job::WriteFull { oid, data } => RepMutation::WriteFull {
                object: name(oid)?,
                data,
            },
            Job::Remove { oid } => RepMutation::Remove { object: name(oid)? },
            _ => return None,
        })
    }

    pub fn kind(&self) -> OpKind {
        match self {
            Job::Write { .. } => OpKind::Write,
            Job::WriteFull { .. } => OpKind::WriteFull,
            Job::Read { .. } => OpKind::Read,
            Job::Stat { .. } => OpKind::Stat,
            Job::Remove { .. } => OpKind::Remove,
            Job::List { .. } => OpKind::List,
        }
    }

    /// The object's name, for per-object ordering (`None`: a PG-wide list).
    pub fn object(&self) -> Option<&[u8]> {
        match self {
            Job::Write { oid, .. } | Job::WriteFull { oid, .. } | Job::Remove { oid } => {
                Some(&oid.0)
            }
            Job::Read { name, .. } | Job::Stat { name } => Some(name),
            Job::List { .. } => None,
        }
    }

    /// Whether the job changes the store (a transaction).
    pub fn mutates(&self) -> bool {
        matches!(
            self,
            Job::Write { .. } | Job::WriteFull { .. } | Job::Remove { .. }
        )
    }
}

/// An owned reply (what crosses a ring back to the connection's shard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Written,
    WrittenFull,
    Read(Vec<u8>),
    Stat(u64),
    Removed,
    List {
        names: Vec<String>,
        next: Option<Vec<u8>>,
    },
}

impl Answer {
    /// Bytes of data this answer returns to the client.
    pub fn bytes_out(&self) -> usize {
        match self {
            Answer::Read(d) => d.len(),
            Answer::List { names, .. } => names.iter().map(|n| n.len()).sum(),
            _ => 0,
        }
    }

    /// An upper bound of the encoded reply frame.
    pub fn encoded_bound(&self) -> usize {
        const OVERHEAD: usize = 128;
        match self {
            Answer::Read(d) => OVERHEAD + d.len(),
            Answer::List { names, next } => {
                OVERHEAD
                    + names.iter().map(|n| n.len() + 8).sum::<usize>()
                    + next.as_ref().map_or(0, |c| c.len())
            }
            _ => OVERHEAD,
        }
    }
}

/// Encodes `result` as the wire reply and hands it to `f` (the borrowed form lives only
/// inside the call).
pub fn with_reply<R>(result: &Result<Answer, OpError>, f: impl FnOnce(&OpReply<'_>) -> R) -> R {
    match result {
        Err(e) => f(&OpReply::err(*e)),
        Ok(Answer::Written) => f(&OpReply::ok(ReplyBody::Written)),
        Ok(Answer::WrittenFull) => f(&OpReply::ok(ReplyBody::WrittenFull)),
        Ok(Answer::Read(data)) => f(&OpReply::ok(ReplyBody::Read { data })),
        Ok(Answer::Stat(size)) => f(&OpReply::ok(ReplyBody::Stat { size: *size })),
        Ok(Answer::Removed) => f(&OpReply::ok(ReplyBody::Removed)),
        Ok(Answer::List { names, next }) => {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            f(&OpReply::ok(ReplyBody::List(ListPage {
                names: NameList::from_slice(&refs),
                next_cursor: next.as_deref(),
            })))
        }
    }
}

/// The wire error for a store error. Errors that mean "the device or the store is broken"
/// all become `Io`: the client cannot act on the difference, the OSD log says which.
pub fn op_error(e: &StoreError) -> OpError {
    match e {
        StoreError::NotFound(_) => OpError::NotFound,
        StoreError::NoSpace => OpError::NoSpace,
        StoreError::InvalidArgument(_) | StoreError::AlreadyExists(_) | StoreError::NotEmpty(_) => {
            OpError::Invalid
        }
        StoreError::Io(_)
        | StoreError::Checksum { .. }
        | StoreError::Corrupt(_)
        | StoreError::NotDurable
        | StoreError::Failed(_) => OpError::Io,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carmine_wire::{Epoch, PgId, PoolId};

    #[test]
    fn request_becomes_an_owned_job() {
        let req = OpRequest {
            pool: PoolId(3),
            pg: PgId(7),
            epoch: Epoch(9),
            op: Op::Write {
                object: "obj",
                offset: 4,
                data: b"abc",
            },
        };
        let mut handed = 0;
        let (t, j) = Job::from_request(&req, &mut |d| {
            handed += 1;
            d.to_vec()
        });
        assert_eq!(handed, 1, "write data comes from the store's buffer");
        assert_eq!(
            t,
            Target {
                pool: 3,
                pg: 7,
                epoch: 9
            }
        );
        assert!(j.mutates());
        assert_eq!(j.object(), Some(&b"obj"[..]));
    }

    #[test]
    fn store_errors_map_to_wire_errors() {
        assert_eq!(
            op_error(&StoreError::NotFound("x".into())),
            OpError::NotFound
        );
        assert_eq!(op_error(&StoreError::NoSpace), OpError::NoSpace);
        assert_eq!(op_error(&StoreError::Corrupt("x".into())), OpError::Io);
        assert_eq!(
            op_error(&StoreError::InvalidArgument("x".into())),
            OpError::Invalid
        );
    }

    #[test]
    fn list_answer_encodes_within_its_bound() {
        let a = Answer::List {
            names: vec!["a".into(), "bb".into()],
            next: Some(b"bb".to_vec()),
        };
        let enc = carmine_wire::Encoder::new(carmine_wire::VERSION_MIN, Default::default());
        let mut buf = vec![0u8; a.encoded_bound()];
        let n = with_reply(&Ok(a), |r| {
            enc.encode(1, &carmine_wire::message::Message::OpReply(*r), &mut buf)
        })
        .unwrap();
        assert!(n > 0);
    }
}
