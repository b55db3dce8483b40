//! On-disk structures and their framing (see FORMAT.md). Everything on disk is a *frame*:
//! `magic u64 | payload_len u32 | crc32c u32 | payload (bincode, fixed-int)`, the CRC covering
//! the first 12 bytes and the payload.

use bincode::Options;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::index::Entry;

/// The store's block: every on-disk address is in 4 KiB blocks.
pub const BLOCK: u64 = 4096;
/// The superblock version this code writes: 2 adds the store's owner ([`StoreIdentity`]).
/// Version 1 superblocks (no owner) are still read: everything past block 0 is the same.
pub const FORMAT_VERSION: u32 = 2;
/// The first format, without an owner in the superblock.
pub const FORMAT_VERSION_V1: u32 = 1;
pub const SB_MAGIC: u64 = u64::from_le_bytes(*b"CRMN-SB1");
pub const CKPT_MAGIC: u64 = u64::from_le_bytes(*b"CRMN-CP1");
pub const REC_MAGIC: u64 = u64::from_le_bytes(*b"CRMN-RC1");
pub const FRAME_OVERHEAD: u64 = 16;
/// Largest data of one transaction that a store of the default geometry always takes, counted
/// as the record stores it: every non-empty `Write` in whole 4 KiB blocks (a write of 4 MiB at
/// any offset is 1024 blocks; many small writes take a block each). The OSD asserts that the
/// wire's largest op data (`carmine_wire::Limits::DEFAULT.max_io_size`) is within it.
pub const MAX_TXN_DATA: u64 = 4 << 20;
/// Largest record header such a transaction may have: frame, fixed fields and its encoded ops
/// (names, attributes, omap entries). An OSD write_full with a 1024-byte name in a new
/// collection measures about 2.2 KiB; the rest is room for metadata written with the data.
pub const MAX_TXN_HEADER: u64 = 64 << 10;
/// Default segment size in blocks (`FormatOptions::default()`): a record of one transaction
/// within `MAX_TXN_DATA` and `MAX_TXN_HEADER` fits one segment (1024 data + 16 header blocks).
/// Stores formatted before this default (1024-block segments) keep their geometry and refuse
/// larger transactions with `InvalidArgument`.
pub const DEFAULT_SEG_BLOCKS: u64 = (MAX_TXN_DATA + MAX_TXN_HEADER) / BLOCK;
const _: () = assert!(MAX_TXN_DATA.is_multiple_of(BLOCK) && MAX_TXN_HEADER.is_multiple_of(BLOCK));
/// Cap on any decoded payload (a corrupt length must not allocate wildly).
const DECODE_LIMIT: u64 = 1 << 30;

pub(crate) fn codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing our own in-memory types into a Vec cannot fail (no maps with non-string
    // keys restriction in bincode, no I/O).
    codec().serialize(v).unwrap_or_default()
}

/// [`encode`] into `out` (cleared first), reusing its capacity.
pub(crate) fn encode_into<T: Serialize>(v: &T, out: &mut Vec<u8>) {
    out.clear();
    // As in `encode`: writing our own types into a Vec cannot fail.
    let _ = codec().serialize_into(&mut *out, v);
}

pub(crate) fn encoded_len<T: Serialize>(v: &T) -> u64 {
    codec().serialized_size(v).unwrap_or(u64::MAX / 2)
}

pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Option<T> {
    codec().with_limit(DECODE_LIMIT).deserialize(b).ok()
}

/// Write a frame at the start of `out` (which must be large enough).
pub(crate) fn frame(magic: u64, payload: &[u8], out: &mut [u8]) -> u32 {
    out[0..8].copy_from_slice(&magic.to_le_bytes());
    out[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    let crc = carmine_checksum::crc32c_append(carmine_checksum::crc32c(&out[0..12]), payload);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
    out[16..16 + payload.len()].copy_from_slice(payload);
    crc
}

/// Parse a frame: `Some((payload, crc))` if magic and CRC match.
pub(crate) fn unframe(magic: u64, buf: &[u8]) -> Option<(&[u8], u32)> {
    if buf.len() < 16 || buf[0..8] != magic.to_le_bytes() {
        return None;
    }
    let len = u32::from_le_bytes(buf[8..12].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf[12..16].try_into().ok()?);
    let payload = buf.get(16..16 + len)?;
    (carmine_checksum::crc32c_append(carmine_checksum::crc32c(&buf[0..12]), payload) == crc)
        .then_some((payload, crc))
}

/// Blocks needed for `bytes`.
pub(crate) fn blocks_for(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK)
}

/// Whose store this is: the cluster (the monitor's fsid) and the OSD (its `osd.uuid`). Written
/// by format (version 2); empty in a version 1 superblock, or when formatted without an owner
/// (tools, tests). The OSD refuses to mount a store whose owner is another cluster or OSD.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreIdentity {
    pub cluster_fsid: String,
    pub osd_uuid: String,
}

impl StoreIdentity {
    /// No owner recorded (a version 1 store, or formatted without one).
    pub fn is_unclaimed(&self) -> bool {
        self.cluster_fsid.is_empty() && self.osd_uuid.is_empty()
    }
}

/// Device block 0 (in store blocks): geometry of the whole device and its owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superblock {
    pub version: u32,
    /// Random per format: records and checkpoints of an older format never match.
    pub uuid: u64,
    pub store_blocks: u64,
    pub seg_blocks: u64,
    pub slot_blocks: u64,
    /// `(first store block, store blocks)` per shard.
    pub partitions: Vec<(u64, u64)>,
    /// Version 2: the owner (appended after the version 1 fields, so both decode by version).
    pub identity: StoreIdentity,
}

/// The version 1 payload: [`Superblock`] without its identity.
#[derive(Deserialize)]
struct SuperblockV1 {
    version: u32,
    uuid: u64,
    store_blocks: u64,
    seg_blocks: u64,
    slot_blocks: u64,
    partitions: Vec<(u64, u64)>,
}

impl Superblock {
    /// Decode a superblock payload of any supported version (the first 4 bytes are the
    /// version, as fixed-int bincode puts it). `Err` names what is wrong.
    pub fn decode(payload: &[u8]) -> Result<Superblock, String> {
        let version = payload
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or("superblock payload too short")?;
        match version {
            FORMAT_VERSION_V1 => {
                let v1: SuperblockV1 = decode(payload).ok_or("superblock (v1) undecodable")?;
                Ok(Superblock {
                    version: v1.version,
                    uuid: v1.uuid,
                    store_blocks: v1.store_blocks,
                    seg_blocks: v1.seg_blocks,
                    slot_blocks: v1.slot_blocks,
                    partitions: v1.partitions,
                    identity: StoreIdentity::default(),
                })
            }
            FORMAT_VERSION => decode(payload).ok_or_else(|| "superblock undecodable".into()),
            v => Err(format!("format version {v} unsupported")),
        }
    }

    /// The block-0 image of this superblock (always written as [`FORMAT_VERSION`]).
    pub fn block(&self) -> Vec<u8> {
        let mut sb = self.clone();
        sb.version = FORMAT_VERSION;
        let mut blk = vec![0u8; BLOCK as usize];
        frame(SB_MAGIC, &encode(&sb), &mut blk);
        blk
    }
}

/// A position in the log: where the next record goes and what it must carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPos {
    pub seg: u32,
    /// Block offset inside the segment.
    pub block: u64,
    /// Sequence number of the next record.
    pub seq: u64,
    /// Sequence number of segment `seg` (segments are numbered in log order).
    pub seg_seq: u64,
    /// Header CRC of the previous record (the chain that rejects stale records).
    pub prev_crc: u32,
}

/// Header block of a checkpoint slot; the body follows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CkptHeader {
    pub uuid: u64,
    pub generation: u64,
    pub body_len: u64,
    pub body_crc: u32,
    /// Replay starts here.
    pub start: LogPos,
}

/// A journal record header; `data_blocks` of chunk data follow the `header_blocks`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordHeader {
    pub uuid: u64,
    pub seq: u64,
    pub seg_seq: u64,
    pub prev_crc: u32,
    pub header_blocks: u32,
    pub data_blocks: u32,
    pub entries: Vec<Entry>,
}

/// The geometry of one shard's partition, all in store blocks relative to the partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub uuid: u64,
    /// Device blocks per store block.
    pub ratio: u64,
    pub part_start: u64,
    pub part_blocks: u64,
    pub slot_blocks: u64,
    pub seg_blocks: u64,
    pub nsegs: u32,
}

impl Geometry {
    pub fn from_superblock(sb: &Superblock, shard: usize, dev_block_size: u32) -> Option<Self> {
        let (part_start, part_blocks) = *sb.partitions.get(shard)?;
        let ratio = BLOCK / dev_block_size as u64;
        let usable = part_blocks.checked_sub(2 * sb.slot_blocks)?;
        let nsegs = u32::try_from(usable / sb.seg_blocks.max(1)).ok()?;
        Some(Geometry {
            uuid: sb.uuid,
            ratio,
            part_start,
            part_blocks,
            slot_blocks: sb.slot_blocks,
            seg_blocks: sb.seg_blocks,
            nsegs,
        })
    }
    /// First block of the segment area.
    pub fn seg_area(&self) -> u64 {
        2 * self.slot_blocks
    }
    /// First block of segment `s`.
    pub fn seg_lba(&self, s: u32) -> u64 {
        self.seg_area() + s as u64 * self.seg_blocks
    }
    /// Segment holding partition block `lba`.
    pub fn seg_of(&self, lba: u64) -> Option<u32> {
        let rel = lba.checked_sub(self.seg_area())?;
        let s = u32::try_from(rel / self.seg_blocks).ok()?;
        (s < self.nsegs).then_some(s)
    }
    /// Device LBA of partition block `rel`.
    pub fn dev_lba(&self, rel: u64) -> u64 {
        (self.part_start + rel) * self.ratio
    }
    pub fn seg_bytes(&self) -> u64 {
        self.seg_blocks * BLOCK
    }
}
