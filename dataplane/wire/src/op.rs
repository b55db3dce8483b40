//! Object operations and their replies.
//!
//! Request payload (`FrameType::OpRequest`), little-endian:
//!
//! ```text
//! u8 op kind | u64 pool | u32 pg | u64 client map epoch | op fields
//!   Write      (1): str16 object | u64 offset | bytes32 data
//!   WriteFull  (2): str16 object | bytes32 data
//!   Read       (3): str16 object | u64 offset | u32 length
//!   Stat       (4): str16 object
//!   Remove     (5): str16 object
//!   List       (6): bytes16 cursor (empty = from the start) | u32 max entries
//! ```
//!
//! Reply payload (`FrameType::OpReply`, same tid as the request):
//!
//! ```text
//! u8 result code
//!   0 ok:         u8 op kind | body
//!                   Write, WriteFull, Remove: nothing
//!                   Read: bytes32 data (shorter than asked at the end of the object)
//!                   Stat: u64 size
//!                   List: u8 has_next (0|1) | [bytes16 next cursor] | u32 count | count × str16
//!   3 stale map:  u64 the OSD's epoch
//!   1 not found, 2 invalid, 4 again, 5 i/o, 6 no space: nothing
//! ```
//!
//! `str16` is a u16 length then UTF-8; `bytes16`/`bytes32` a u16/u32 length then bytes. Decoded
//! messages borrow names and data from the frame payload.

use thiserror::Error;

use crate::codec::{Reader, Writer};
use crate::error::{EncodeError, MessageError};
use crate::limits::Limits;

/// A pool, as numbered by the monitor's OSD map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolId(pub u64);

/// A placement group within a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PgId(pub u32);

/// A cluster map epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(pub u64);

/// Which operation a request or successful reply is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpKind {
    Write = 1,
    WriteFull = 2,
    Read = 3,
    Stat = 4,
    Remove = 5,
    List = 6,
}

impl OpKind {
    fn from_u8(v: u8) -> Result<Self, MessageError> {
        Ok(match v {
            1 => Self::Write,
            2 => Self::WriteFull,
            3 => Self::Read,
            4 => Self::Stat,
            5 => Self::Remove,
            6 => Self::List,
            other => return Err(MessageError::UnknownOpCode(other)),
        })
    }
}

/// One operation on one PG, addressed with the map epoch the client computed placement from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpRequest<'a> {
    pub pool: PoolId,
    pub pg: PgId,
    pub epoch: Epoch,
    pub op: Op<'a>,
}

/// The operation itself. Object names are non-empty UTF-8 of at most
/// [`Limits::max_name_len`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    /// Write `data` at `offset`, extending the object (creating it) as needed.
    Write {
        object: &'a str,
        offset: u64,
        data: &'a [u8],
    },
    /// Replace the whole object with `data`.
    WriteFull {
        object: &'a str,
        data: &'a [u8],
    },
    /// Read up to `len` bytes from `offset`.
    Read {
        object: &'a str,
        offset: u64,
        len: u32,
    },
    Stat {
        object: &'a str,
    },
    Remove {
        object: &'a str,
    },
    /// List object names of the PG, at most `max_entries` (at least 1), after `cursor` (an
    /// opaque value from a previous reply; empty to start).
    List {
        cursor: &'a [u8],
        max_entries: u32,
    },
}

impl<'a> Op<'a> {
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Write { .. } => OpKind::Write,
            Op::WriteFull { .. } => OpKind::WriteFull,
            Op::Read { .. } => OpKind::Read,
            Op::Stat { .. } => OpKind::Stat,
            Op::Remove { .. } => OpKind::Remove,
            Op::List { .. } => OpKind::List,
        }
    }

    /// The object the op addresses; `None` for a PG-wide list.
    pub fn object(&self) -> Option<&'a str> {
        match *self {
            Op::Write { object, .. }
            | Op::WriteFull { object, .. }
            | Op::Read { object, .. }
            | Op::Stat { object }
            | Op::Remove { object } => Some(object),
            Op::List { .. } => None,
        }
    }
}

pub(crate) fn check_name(name: &str, field: &'static str, max: u16) -> Result<(), MessageError> {
    if name.is_empty() {
        return Err(MessageError::Empty { field });
    }
    if name.len() > usize::from(max) {
        return Err(MessageError::TooLong {
            field,
            len: name.len(),
            max: usize::from(max),
        });
    }
    Ok(())
}

pub(crate) fn check_io(len: usize, limits: &Limits) -> Result<(), MessageError> {
    if len > limits.max_io_size as usize {
        return Err(MessageError::TooLong {
            field: "op data",
            len,
            max: limits.max_io_size as usize,
        });
    }
    Ok(())
}

pub(crate) fn check_range(offset: u64, len: u64, limits: &Limits) -> Result<(), MessageError> {
    let end = offset.saturating_add(len);
    if end > limits.max_object_size {
        return Err(MessageError::ObjectTooLarge {
            end,
            max: limits.max_object_size,
        });
    }
    Ok(())
}

fn check_cursor(cursor: &[u8], limits: &Limits) -> Result<(), MessageError> {
    if cursor.len() > usize::from(limits.max_cursor_len) {
        return Err(MessageError::TooLong {
            field: "list cursor",
            len: cursor.len(),
            max: usize::from(limits.max_cursor_len),
        });
    }
    Ok(())
}

fn check_list_count(count: u32, limits: &Limits) -> Result<(), MessageError> {
    if count > limits.max_list_entries {
        return Err(MessageError::TooMany {
            field: "list entries",
            value: u64::from(count),
            max: u64::from(limits.max_list_entries),
        });
    }
    Ok(())
}

pub(crate) const OBJECT: &str = "object name";

impl<'a> OpRequest<'a> {
    /// Checks every limit; run on decode and before encode.
    pub fn validate(&self, limits: &Limits) -> Result<(), MessageError> {
        if let Some(object) = self.op.object() {
            check_name(object, OBJECT, limits.max_name_len)?;
        }
        match self.op {
            Op::Write { offset, data, .. } => {
                check_io(data.len(), limits)?;
                check_range(offset, data.len() as u64, limits)
            }
            Op::WriteFull { data, .. } => {
                check_io(data.len(), limits)?;
                check_range(0, data.len() as u64, limits)
            }
            Op::Read { offset, len, .. } => {
                check_io(len as usize, limits)?;
                check_range(offset, u64::from(len), limits)
            }
            Op::Stat { .. } | Op::Remove { .. } => Ok(()),
            Op::List {
                cursor,
                max_entries,
            } => {
                check_cursor(cursor, limits)?;
                if max_entries == 0 {
                    return Err(MessageError::Empty {
                        field: "list max entries",
                    });
                }
                check_list_count(max_entries, limits)
            }
        }
    }

    pub(crate) fn payload_len(&self) -> usize {
        let head = 1 + 8 + 4 + 8;
        let name = |o: &str| 2 + o.len();
        head + match self.op {
            Op::Write { object, data, .. } => name(object) + 8 + 4 + data.len(),
            Op::WriteFull { object, data } => name(object) + 4 + data.len(),
            Op::Read { object, .. } => name(object) + 8 + 4,
            Op::Stat { object } | Op::Remove { object } => name(object),
            Op::List { cursor, .. } => 2 + cursor.len() + 4,
        }
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>, limits: &Limits) -> Result<(), EncodeError> {
        self.validate(limits)?;
        w.u8(self.op.kind() as u8)?;
        w.u64(self.pool.0)?;
        w.u32(self.pg.0)?;
        w.u64(self.epoch.0)?;
        match self.op {
            Op::Write {
                object,
                offset,
                data,
            } => {
                w.bytes16(object.as_bytes(), OBJECT)?;
                w.u64(offset)?;
                w.bulk32(data, "op data")
            }
            Op::WriteFull { object, data } => {
                w.bytes16(object.as_bytes(), OBJECT)?;
                w.bulk32(data, "op data")
            }
            Op::Read {
                object,
                offset,
                len,
            } => {
                w.bytes16(object.as_bytes(), OBJECT)?;
                w.u64(offset)?;
                w.u32(len)
            }
            Op::Stat { object } | Op::Remove { object } => w.bytes16(object.as_bytes(), OBJECT),
            Op::List {
                cursor,
                max_entries,
            } => {
                w.bytes16(cursor, "list cursor")?;
                w.u32(max_entries)
            }
        }
    }

    pub(crate) fn parse(payload: &'a [u8], limits: &Limits) -> Result<Self, MessageError> {
        let mut r = Reader::new(payload);
        let kind = OpKind::from_u8(r.u8("op kind")?)?;
        let pool = PoolId(r.u64("pool id")?);
        let pg = PgId(r.u32("pg id")?);
        let epoch = Epoch(r.u64("map epoch")?);
        let op = match kind {
            OpKind::Write => Op::Write {
                object: r.str16(OBJECT)?,
                offset: r.u64("write offset")?,
                data: r.bytes32("op data")?,
            },
            OpKind::WriteFull => Op::WriteFull {
                object: r.str16(OBJECT)?,
                data: r.bytes32("op data")?,
            },
            OpKind::Read => Op::Read {
                object: r.str16(OBJECT)?,
                offset: r.u64("read offset")?,
                len: r.u32("read length")?,
            },
            OpKind::Stat => Op::Stat {
                object: r.str16(OBJECT)?,
            },
            OpKind::Remove => Op::Remove {
                object: r.str16(OBJECT)?,
            },
            OpKind::List => Op::List {
                cursor: r.bytes16("list cursor")?,
                max_entries: r.u32("list max entries")?,
            },
        };
        r.finish()?;
        let req = OpRequest {
            pool,
            pg,
            epoch,
            op,
        };
        req.validate(limits)?;
        Ok(req)
    }
}

/// Result codes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ResultCode {
    Ok = 0,
    NotFound = 1,
    Invalid = 2,
    StaleMap = 3,
    Again = 4,
    Io = 5,
    NoSpace = 6,
}

/// Why an op failed, as the OSD reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum OpError {
    #[error("object not found")]
    NotFound,
    #[error("invalid request")]
    Invalid,
    /// The client's map is older than the OSD's (or the PG is not here at the client's epoch):
    /// fetch a map at least this new, recompute placement and retry.
    #[error("stale map: the OSD is at epoch {}", osd_epoch.0)]
    StaleMap { osd_epoch: Epoch },
    /// Transient: retry later (e.g. the PG is not active yet).
    #[error("try again")]
    Again,
    #[error("I/O error")]
    Io,
    #[error("no space left")]
    NoSpace,
}

impl OpError {
    pub fn code(&self) -> ResultCode {
        match self {
            OpError::NotFound => ResultCode::NotFound,
            OpError::Invalid => ResultCode::Invalid,
            OpError::StaleMap { .. } => ResultCode::StaleMap,
            OpError::Again => ResultCode::Again,
            OpError::Io => ResultCode::Io,
            OpError::NoSpace => ResultCode::NoSpace,
        }
    }

    /// Whether the same request may succeed if sent again (after a map refresh for
    /// `StaleMap`).
    pub fn is_retryable(&self) -> bool {
        matches!(self, OpError::StaleMap { .. } | OpError::Again)
    }
}

/// The answer to one [`OpRequest`]: the request's tid is in the frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpReply<'a> {
    pub result: Result<ReplyBody<'a>, OpError>,
}

/// What a successful op returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyBody<'a> {
    Written,
    WrittenFull,
    Read { data: &'a [u8] },
    Stat { size: u64 },
    Removed,
    List(ListPage<'a>),
}

impl ReplyBody<'_> {
    pub fn kind(&self) -> OpKind {
        match self {
            ReplyBody::Written => OpKind::Write,
            ReplyBody::WrittenFull => OpKind::WriteFull,
            ReplyBody::Read { .. } => OpKind::Read,
            ReplyBody::Stat { .. } => OpKind::Stat,
            ReplyBody::Removed => OpKind::Remove,
            ReplyBody::List(_) => OpKind::List,
        }
    }
}

/// One page of a PG listing: names, and where to continue (`None` once the PG is exhausted).
#[derive(Debug, Clone, Copy)]
pub struct ListPage<'a> {
    pub names: NameList<'a>,
    pub next_cursor: Option<&'a [u8]>,
}

impl PartialEq for ListPage<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.next_cursor == other.next_cursor && self.names.iter().eq(other.names.iter())
    }
}
impl Eq for ListPage<'_> {}

/// Object names of a list reply. Built from a slice by the OSD; on decode it is a validated
/// view into the frame payload, iterated without allocating.
#[derive(Debug, Clone, Copy)]
pub struct NameList<'a>(NameRepr<'a>);

#[derive(Debug, Clone, Copy)]
enum NameRepr<'a> {
    Slice(&'a [&'a str]),
    /// `count` × str16, already checked to be valid names.
    Encoded {
        count: u32,
        bytes: &'a [u8],
    },
}

impl<'a> NameList<'a> {
    pub fn from_slice(names: &'a [&'a str]) -> Self {
        NameList(NameRepr::Slice(names))
    }

    pub fn len(&self) -> usize {
        match self.0 {
            NameRepr::Slice(s) => s.len(),
            NameRepr::Encoded { count, .. } => count as usize,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> NameIter<'a> {
        NameIter(match self.0 {
            NameRepr::Slice(s) => IterRepr::Slice(s.iter()),
            NameRepr::Encoded { bytes, .. } => IterRepr::Encoded(bytes),
        })
    }
}

/// Iterator over a [`NameList`].
#[derive(Debug)]
pub struct NameIter<'a>(IterRepr<'a>);

#[derive(Debug)]
enum IterRepr<'a> {
    Slice(std::slice::Iter<'a, &'a str>),
    Encoded(&'a [u8]),
}

impl<'a> Iterator for NameIter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        match &mut self.0 {
            IterRepr::Slice(it) => it.next().copied(),
            IterRepr::Encoded(rest) => {
                // Validated when the reply was parsed, so these reads cannot fail; a failure
                // would just end the iteration.
                let mut r = Reader::new(rest);
                let name = r.str16(OBJECT).ok()?;
                *rest = &rest[2 + name.len()..];
                Some(name)
            }
        }
    }
}

impl<'a> OpReply<'a> {
    pub fn ok(body: ReplyBody<'a>) -> Self {
        OpReply { result: Ok(body) }
    }

    pub fn err(error: OpError) -> Self {
        OpReply { result: Err(error) }
    }

    /// Checks every limit; run on decode and before encode.
    pub fn validate(&self, limits: &Limits) -> Result<(), MessageError> {
        match self.result {
            Ok(ReplyBody::Read { data }) => check_io(data.len(), limits),
            Ok(ReplyBody::List(page)) => {
                let count = u32::try_from(page.names.len()).unwrap_or(u32::MAX);
                check_list_count(count, limits)?;
                if let Some(c) = page.next_cursor {
                    check_cursor(c, limits)?;
                }
                page.names
                    .iter()
                    .try_for_each(|n| check_name(n, OBJECT, limits.max_name_len))
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn payload_len(&self) -> usize {
        1 + match &self.result {
            Err(OpError::StaleMap { .. }) => 8,
            Err(_) => 0,
            Ok(body) => {
                1 + match body {
                    ReplyBody::Written | ReplyBody::WrittenFull | ReplyBody::Removed => 0,
                    ReplyBody::Read { data } => 4 + data.len(),
                    ReplyBody::Stat { .. } => 8,
                    ReplyBody::List(page) => {
                        1 + page.next_cursor.map_or(0, |c| 2 + c.len())
                            + 4
                            + page.names.iter().map(|n| 2 + n.len()).sum::<usize>()
                    }
                }
            }
        }
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>, limits: &Limits) -> Result<(), EncodeError> {
        self.validate(limits)?;
        let body = match self.result {
            Err(e) => {
                w.u8(e.code() as u8)?;
                if let OpError::StaleMap { osd_epoch } = e {
                    w.u64(osd_epoch.0)?;
                }
                return Ok(());
            }
            Ok(body) => body,
        };
        w.u8(ResultCode::Ok as u8)?;
        w.u8(body.kind() as u8)?;
        match body {
            ReplyBody::Written | ReplyBody::WrittenFull | ReplyBody::Removed => Ok(()),
            ReplyBody::Read { data } => w.bulk32(data, "read data"),
            ReplyBody::Stat { size } => w.u64(size),
            ReplyBody::List(page) => {
                match page.next_cursor {
                    None => w.u8(0)?,
                    Some(c) => {
                        w.u8(1)?;
                        w.bytes16(c, "list cursor")?;
                    }
                }
                // validate() bounded the count by max_list_entries, a u32.
                w.u32(u32::try_from(page.names.len()).unwrap_or(u32::MAX))?;
                page.names
                    .iter()
                    .try_for_each(|n| w.bytes16(n.as_bytes(), OBJECT))
            }
        }
    }

    pub(crate) fn parse(payload: &'a [u8], limits: &Limits) -> Result<Self, MessageError> {
        let mut r = Reader::new(payload);
        let code = r.u8("result code")?;
        let result = match code {
            0 => Ok(Self::parse_body(&mut r, limits)?),
            1 => Err(OpError::NotFound),
            2 => Err(OpError::Invalid),
            3 => Err(OpError::StaleMap {
                osd_epoch: Epoch(r.u64("osd epoch")?),
            }),
            4 => Err(OpError::Again),
            5 => Err(OpError::Io),
            6 => Err(OpError::NoSpace),
            other => return Err(MessageError::UnknownResultCode(other)),
        };
        r.finish()?;
        let reply = OpReply { result };
        reply.validate(limits)?;
        Ok(reply)
    }

    fn parse_body(r: &mut Reader<'a>, limits: &Limits) -> Result<ReplyBody<'a>, MessageError> {
        Ok(match OpKind::from_u8(r.u8("op kind")?)? {
            OpKind::Write => ReplyBody::Written,
            OpKind::WriteFull => ReplyBody::WrittenFull,
            OpKind::Remove => ReplyBody::Removed,
            OpKind::Read => ReplyBody::Read {
                data: r.bytes32("read data")?,
            },
            OpKind::Stat => ReplyBody::Stat {
                size: r.u64("object size")?,
            },
            OpKind::List => {
                let next_cursor = match r.u8("list has_next")? {
                    0 => None,
                    1 => Some(r.bytes16("list cursor")?),
                    value => {
                        return Err(MessageError::InvalidValue {
                            field: "list has_next",
                            value,
                        })
                    }
                };
                let count = r.u32("list count")?;
                // Bound the loop before running it: a hostile count costs nothing.
                check_list_count(count, limits)?;
                let start = r.position();
                for _ in 0..count {
                    let name = r.str16(OBJECT)?;
                    check_name(name, OBJECT, limits.max_name_len)?;
                }
                let bytes = r.consumed_since(start);
                ReplyBody::List(ListPage {
                    names: NameList(NameRepr::Encoded { count, bytes }),
                    next_cursor,
                })
            }
        })
    }
}
