//! Replica operations: what a PG's primary OSD sends to every other member of the acting set,
//! and their answers. OSD to OSD, on the same frames and handshake as client ops (the primary
//! connects with a [`ClientConn`](crate::ClientConn), the replica serves it with a
//! [`ServerConn`](crate::ServerConn)).
//!
//! RepOp payload (`FrameType::RepOp`), little-endian:
//!
//! ```text
//! u64 pool | u32 pg | u64 map epoch (primary's) | u64 interval since
//! | u64 version epoch | u64 version seq | str16 reqid client | u64 reqid tid
//! | u8 op kind | op fields
//!   Write      (1): str16 object | u64 offset | bytes32 data
//!   WriteFull  (2): str16 object | bytes32 data
//!   Remove     (5): str16 object
//!   Push    (0x21): str16 object | bytes32 data
//!   PushTombstone (0x22): str16 object
//! ```
//!
//! Kinds 1, 2 and 5 are [`OpKind`]'s codes and their fields are encoded as in an
//! [`OpRequest`](crate::OpRequest). The push kinds are recovery: a whole object (or its
//! removal) at the version it already has, sent by an OSD that holds it to one that lacks it;
//! their reqid is the pusher's and is not logged. Any other kind (read, stat, list, unknown)
//! is refused as an unknown op code. Same limits as client ops: object names 1..=`max_name_len` bytes, data
//! ≤ `max_io_size`, `offset + len` ≤ `max_object_size`; the reqid's client id is
//! 1..=`max_client_id_len` bytes. Neither the interval start nor the version's epoch may be
//! newer than the map epoch the op was sent with.
//!
//! RepReply payload (`FrameType::RepReply`, same tid as the RepOp):
//!
//! ```text
//! u8 result code
//!   0 ok              durable on the replica
//!   1 stale interval  u64 the replica's map epoch | u64 the replica's interval since
//!                     (not after that epoch)
//!   2 not a member    the replica's map does not put it in the acting set at that interval
//!   3 i/o, 4 no space, 5 invalid: nothing
//! ```
//!
//! Decoded messages borrow names, the client id and data from the frame payload.

use thiserror::Error;

use crate::codec::{Reader, Writer};
use crate::error::{EncodeError, MessageError};
use crate::limits::Limits;
use crate::op::{check_io, check_name, check_range, Epoch, OpKind, PgId, PoolId, OBJECT};

/// An object version: the epoch of the PG interval in which the primary assigned it (the OSD
/// uses the interval's first epoch) and a per-PG sequence number. Ordered by `(epoch, seq)`: a
/// later interval always wins over a longer history in an older one. On the wire its epoch may
/// not be newer than the map epoch of the [`RepOp`] carrying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version {
    // Field order is the order `derive(Ord)` compares in: epoch first.
    pub epoch: Epoch,
    pub seq: u64,
}

/// A client's request identity, for duplicate detection: the client id as authenticated on
/// its connection to the primary, and the tid it gave the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReqId<'a> {
    pub client: &'a str,
    pub tid: u64,
}

/// One replicated mutation of one PG, as the primary sends it to a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepOp<'a> {
    pub pool: PoolId,
    pub pg: PgId,
    /// The primary's map epoch when it sent the op.
    pub epoch: Epoch,
    /// First epoch of the PG's current interval, as the primary sees it. A replica whose
    /// interval started later refuses the op ([`RepError::StaleInterval`]).
    pub interval_since: Epoch,
    /// The version the primary assigned; the replica stores it with the data.
    pub version: Version,
    /// The client request this mutation applies, for the replica's copy of the PG log.
    pub reqid: ReqId<'a>,
    pub op: RepMutation<'a>,
}

/// The mutation a [`RepOp`] carries. Object names are non-empty UTF-8 of at most
/// [`Limits::max_name_len`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepMutation<'a> {
    /// Write `data` at `offset`, extending (creating) the object as needed.
    Write {
        object: &'a str,
        offset: u64,
        data: &'a [u8],
    },
    /// Replace the whole object with `data`.
    WriteFull { object: &'a str, data: &'a [u8] },
    /// Remove the object; the replica keeps a tombstone with the op's version.
    Remove { object: &'a str },
    /// Recovery: the whole object as the pusher holds it, at the op's (older) version.
    Push { object: &'a str, data: &'a [u8] },
    /// Recovery: the object was removed at the op's version (a tombstone).
    PushTombstone { object: &'a str },
}

/// Codes of the push kinds on the wire (apart from [`OpKind`]'s).
const PUSH: u8 = 0x21;
const PUSH_TOMBSTONE: u8 = 0x22;

impl<'a> RepMutation<'a> {
    /// The client op kind this mutation logs as (a push, which is not logged, as the op it
    /// stands for: a whole-object write or a remove).
    pub fn kind(&self) -> OpKind {
        match self {
            RepMutation::Write { .. } => OpKind::Write,
            RepMutation::WriteFull { .. } | RepMutation::Push { .. } => OpKind::WriteFull,
            RepMutation::Remove { .. } | RepMutation::PushTombstone { .. } => OpKind::Remove,
        }
    }

    /// Whether this is recovery (a push) rather than a client's mutation.
    pub fn is_push(&self) -> bool {
        matches!(
            self,
            RepMutation::Push { .. } | RepMutation::PushTombstone { .. }
        )
    }

    /// The kind's code on the wire.
    fn code(&self) -> u8 {
        match self {
            RepMutation::Push { .. } => PUSH,
            RepMutation::PushTombstone { .. } => PUSH_TOMBSTONE,
            other => other.kind() as u8,
        }
    }

    pub fn object(&self) -> &'a str {
        match *self {
            RepMutation::Write { object, .. }
            | RepMutation::WriteFull { object, .. }
            | RepMutation::Remove { object }
            | RepMutation::Push { object, .. }
            | RepMutation::PushTombstone { object } => object,
        }
    }

    /// The data written, if any: the frame's bulk (last) field.
    pub fn data(&self) -> Option<&'a [u8]> {
        match *self {
            RepMutation::Write { data, .. }
            | RepMutation::WriteFull { data, .. }
            | RepMutation::Push { data, .. } => Some(data),
            RepMutation::Remove { .. } | RepMutation::PushTombstone { .. } => None,
        }
    }
}

fn check_not_after(field: &'static str, value: Epoch, epoch: Epoch) -> Result<(), MessageError> {
    if value > epoch {
        return Err(MessageError::NewerThanMap {
            field,
            value: value.0,
            epoch: epoch.0,
        });
    }
    Ok(())
}

const DATA: &str = "op data";
const CLIENT: &str = "reqid client id";

impl<'a> RepOp<'a> {
    /// Fixed part: pool, pg, epoch, interval, version (2 × u64), reqid tid, client id length,
    /// op kind.
    const FIXED: usize = 8 + 4 + 8 + 8 + 16 + 8 + 2 + 1;

    /// Checks every limit; run on decode and before encode.
    pub fn validate(&self, limits: &Limits) -> Result<(), MessageError> {
        check_not_after("interval since", self.interval_since, self.epoch)?;
        check_not_after("version epoch", self.version.epoch, self.epoch)?;
        check_name(self.reqid.client, CLIENT, limits.max_client_id_len)?;
        check_name(self.op.object(), OBJECT, limits.max_name_len)?;
        match self.op {
            RepMutation::Write { offset, data, .. } => {
                check_io(data.len(), limits)?;
                check_range(offset, data.len() as u64, limits)
            }
            RepMutation::WriteFull { data, .. } | RepMutation::Push { data, .. } => {
                check_io(data.len(), limits)?;
                check_range(0, data.len() as u64, limits)
            }
            RepMutation::Remove { .. } | RepMutation::PushTombstone { .. } => Ok(()),
        }
    }

    pub(crate) fn payload_len(&self) -> usize {
        let name = 2 + self.op.object().len();
        Self::FIXED
            + self.reqid.client.len()
            + name
            + match self.op {
                RepMutation::Write { data, .. } => 8 + 4 + data.len(),
                RepMutation::WriteFull { data, .. } | RepMutation::Push { data, .. } => {
                    4 + data.len()
                }
                RepMutation::Remove { .. } | RepMutation::PushTombstone { .. } => 0,
            }
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>, limits: &Limits) -> Result<(), EncodeError> {
        self.validate(limits)?;
        w.u64(self.pool.0)?;
        w.u32(self.pg.0)?;
        w.u64(self.epoch.0)?;
        w.u64(self.interval_since.0)?;
        w.u64(self.version.epoch.0)?;
        w.u64(self.version.seq)?;
        w.bytes16(self.reqid.client.as_bytes(), CLIENT)?;
        w.u64(self.reqid.tid)?;
        w.u8(self.op.code())?;
        w.bytes16(self.op.object().as_bytes(), OBJECT)?;
        match self.op {
            RepMutation::Write { offset, data, .. } => {
                w.u64(offset)?;
                w.bulk32(data, DATA)
            }
            RepMutation::WriteFull { data, .. } | RepMutation::Push { data, .. } => {
                w.bulk32(data, DATA)
            }
            RepMutation::Remove { .. } | RepMutation::PushTombstone { .. } => Ok(()),
        }
    }

    pub(crate) fn parse(payload: &'a [u8], limits: &Limits) -> Result<Self, MessageError> {
        let mut r = Reader::new(payload);
        let pool = PoolId(r.u64("pool id")?);
        let pg = PgId(r.u32("pg id")?);
        let epoch = Epoch(r.u64("map epoch")?);
        let interval_since = Epoch(r.u64("interval since")?);
        let version = Version {
            epoch: Epoch(r.u64("version epoch")?),
            seq: r.u64("version seq")?,
        };
        let reqid = ReqId {
            client: r.str16(CLIENT)?,
            tid: r.u64("reqid tid")?,
        };
        let kind = r.u8("op kind")?;
        let object = r.str16(OBJECT)?;
        let op = match kind {
            k if k == OpKind::Write as u8 => RepMutation::Write {
                object,
                offset: r.u64("write offset")?,
                data: r.bytes32(DATA)?,
            },
            k if k == OpKind::WriteFull as u8 => RepMutation::WriteFull {
                object,
                data: r.bytes32(DATA)?,
            },
            k if k == OpKind::Remove as u8 => RepMutation::Remove { object },
            PUSH => RepMutation::Push {
                object,
                data: r.bytes32(DATA)?,
            },
            PUSH_TOMBSTONE => RepMutation::PushTombstone { object },
            other => return Err(MessageError::UnknownOpCode(other)),
        };
        r.finish()?;
        let op = RepOp {
            pool,
            pg,
            epoch,
            interval_since,
            version,
            reqid,
            op,
        };
        op.validate(limits)?;
        Ok(op)
    }
}

/// Replica result codes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RepResultCode {
    Ok = 0,
    StaleInterval = 1,
    NotMember = 2,
    Io = 3,
    NoSpace = 4,
    Invalid = 5,
}

/// Why a replica did not make a [`RepOp`] durable. The primary must not count that replica
/// for the write (so the client is not told the write is done).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum RepError {
    /// The op's interval is older than the replica's: the primary's map is out of date. It
    /// fails the write with a retryable error and catches up to at least `replica_epoch`.
    #[error(
        "stale interval: the replica is at epoch {}, its interval started at epoch {}",
        replica_epoch.0,
        interval_since.0
    )]
    StaleInterval {
        replica_epoch: Epoch,
        interval_since: Epoch,
    },
    /// The replica's map does not put it in the PG's acting set at the op's interval.
    #[error("not a member of the acting set at that interval")]
    NotMember,
    #[error("I/O error on the replica")]
    Io,
    #[error("no space left on the replica")]
    NoSpace,
    /// The replica refused the op itself (e.g. a version not newer than the one it holds).
    #[error("invalid replica op")]
    Invalid,
}

impl RepError {
    pub fn code(&self) -> RepResultCode {
        match self {
            RepError::StaleInterval { .. } => RepResultCode::StaleInterval,
            RepError::NotMember => RepResultCode::NotMember,
            RepError::Io => RepResultCode::Io,
            RepError::NoSpace => RepResultCode::NoSpace,
            RepError::Invalid => RepResultCode::Invalid,
        }
    }
}

/// The answer to one [`RepOp`]; the op's tid is in the frame header. `Ok(())`: the mutation
/// and its version are durable on the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RepReply {
    pub result: Result<(), RepError>,
}

impl RepReply {
    pub const OK: RepReply = RepReply { result: Ok(()) };

    pub fn err(error: RepError) -> Self {
        RepReply { result: Err(error) }
    }

    /// Checks the reply's invariant (a replica's interval cannot start after its map epoch);
    /// run on decode and before encode.
    pub fn validate(&self) -> Result<(), MessageError> {
        match self.result {
            Err(RepError::StaleInterval {
                replica_epoch,
                interval_since,
            }) => check_not_after("replica interval since", interval_since, replica_epoch),
            _ => Ok(()),
        }
    }

    pub(crate) fn payload_len(&self) -> usize {
        match self.result {
            Err(RepError::StaleInterval { .. }) => 1 + 16,
            _ => 1,
        }
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        self.validate()?;
        match self.result {
            Ok(()) => w.u8(RepResultCode::Ok as u8),
            Err(e) => {
                w.u8(e.code() as u8)?;
                if let RepError::StaleInterval {
                    replica_epoch,
                    interval_since,
                } = e
                {
                    w.u64(replica_epoch.0)?;
                    w.u64(interval_since.0)?;
                }
                Ok(())
            }
        }
    }

    pub(crate) fn parse(payload: &[u8]) -> Result<Self, MessageError> {
        let mut r = Reader::new(payload);
        let result = match r.u8("result code")? {
            0 => Ok(()),
            1 => Err(RepError::StaleInterval {
                replica_epoch: Epoch(r.u64("replica epoch")?),
                interval_since: Epoch(r.u64("replica interval since")?),
            }),
            2 => Err(RepError::NotMember),
            3 => Err(RepError::Io),
            4 => Err(RepError::NoSpace),
            5 => Err(RepError::Invalid),
            other => return Err(MessageError::UnknownResultCode(other)),
        };
        r.finish()?;
        let reply = RepReply { result };
        reply.validate()?;
        Ok(reply)
    }
}
