//! Format, and the load procedure shared by mount and fsck: superblock -> newest valid
//! checkpoint -> journal replay -> end-of-log checks. Boot-time code: it drives the device with
//! bounded synchronous helpers (submit + poll until the completion arrives).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};

use carmine_objectstore::device::{BlockDevice, IoBuf, IoCompletion};
use carmine_objectstore::StoreError;
use serde::{Deserialize, Serialize};

use crate::format::{
    blocks_for, decode, encode, encode_into, frame, unframe, CkptHeader, Geometry, LogPos,
    RecordHeader, StoreIdentity, Superblock, BLOCK, CKPT_MAGIC, DEFAULT_SEG_BLOCKS, FORMAT_VERSION,
    REC_MAGIC, SB_MAGIC,
};
use crate::index::{Entry, Index, LOp};

const SYNC_TOKEN: u64 = u64::MAX;
const SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How to lay out a device.
#[derive(Clone, Debug)]
pub struct FormatOptions {
    pub shards: usize,
    /// Segment size in 4 KiB blocks (also the largest journal record). Default
    /// [`DEFAULT_SEG_BLOCKS`]: any transaction within [`MAX_TXN_DATA`](crate::MAX_TXN_DATA)
    /// and [`MAX_TXN_HEADER`](crate::MAX_TXN_HEADER) fits (see
    /// [`TxnFootprint`](crate::TxnFootprint)).
    pub seg_blocks: u64,
    /// Size of each of the two checkpoint slots in 4 KiB blocks (bounds the metadata size);
    /// 0 = 1/32 of the partition (at least 256 blocks): room for the extent map of a
    /// partition full of 4 KiB random writes (about 1% of the data).
    pub slot_blocks: u64,
    /// The format uuid to record; `None` (the default and the only choice outside tests): a
    /// random one. The uuid tells this format's records and checkpoints from those of an
    /// earlier format of the same device, so a fixed value is only for reproducible images: the
    /// test that pins the on-disk bytes (`tests/format_pin.rs`).
    pub uuid: Option<u64>,
}

impl Default for FormatOptions {
    fn default() -> Self {
        FormatOptions {
            shards: 1,
            seg_blocks: DEFAULT_SEG_BLOCKS,
            slot_blocks: 0,
            uuid: None,
        }
    }
}

/// Checkpoint body: the index plus the log order of segments that still hold live data.
#[derive(Serialize, Deserialize)]
pub(crate) struct CkptBody {
    pub index: Index,
    pub seg_seqs: Vec<(u32, u64)>,
}

fn wait_one<D: BlockDevice>(dev: &mut D) -> Result<Option<D::Buf>, StoreError> {
    let mut out: Vec<IoCompletion<D::Buf>> = Vec::new();
    let deadline = std::time::Instant::now() + SYNC_TIMEOUT;
    for i in 0u64.. {
        dev.poll(&mut out);
        if let Some(i) = out.iter().position(|c| c.token == SYNC_TOKEN) {
            let c = out.swap_remove(i);
            c.result?;
            return Ok(c.buf);
        }
        if !out.is_empty() {
            return Err(StoreError::Failed(
                "unexpected device completion during boot I/O".into(),
            ));
        }
        // Time-bounded rather than count-bounded: devices differ by orders of magnitude.
        if i % 1024 == 1023 && std::time::Instant::now() > deadline {
            break;
        }
        std::hint::spin_loop();
    }
    Err(StoreError::Failed(
        "device did not complete a boot I/O in time".into(),
    ))
}

/// Read `blocks` store blocks at partition block `rel` (device-absolute if `geo` is `None`).
pub(crate) fn sync_read<D: BlockDevice>(
    dev: &mut D,
    geo: Option<&Geometry>,
    rel: u64,
    blocks: u64,
) -> Result<D::Buf, StoreError> {
    let ratio = BLOCK / dev.block_size() as u64;
    let lba = geo.map_or(rel * ratio, |g| g.dev_lba(rel));
    let buf = dev.alloc_buf((blocks * BLOCK) as usize)?;
    dev.submit_read(lba, buf, SYNC_TOKEN);
    wait_one(dev)?.ok_or_else(|| StoreError::Failed("read completed without a buffer".into()))
}

pub(crate) fn sync_write<D: BlockDevice>(
    dev: &mut D,
    geo: Option<&Geometry>,
    rel: u64,
    data: &[u8],
) -> Result<(), StoreError> {
    let ratio = BLOCK / dev.block_size() as u64;
    let lba = geo.map_or(rel * ratio, |g| g.dev_lba(rel));
    let mut buf = dev.alloc_buf((blocks_for(data.len() as u64) * BLOCK) as usize)?;
    buf.as_mut_slice()[..data.len()].copy_from_slice(data);
    dev.submit_write(lba, buf, SYNC_TOKEN);
    wait_one(dev).map(|_| ())
}

pub(crate) fn sync_flush<D: BlockDevice>(dev: &mut D) -> Result<(), StoreError> {
    dev.submit_flush(SYNC_TOKEN);
    wait_one(dev).map(|_| ())
}

fn random_u64() -> u64 {
    // RandomState is seeded from the OS per process; good enough for a format uuid.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// The header block of a checkpoint whose body is `body`.
pub(crate) fn checkpoint_header(uuid: u64, generation: u64, start: LogPos, body: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    checkpoint_header_into(uuid, generation, start, body, &mut Vec::new(), &mut h);
    h
}

/// [`checkpoint_header`] into reused buffers (a running store's checkpoints allocate nothing
/// for it): `payload` is scratch, `out` becomes the header block.
pub(crate) fn checkpoint_header_into(
    uuid: u64,
    generation: u64,
    start: LogPos,
    body: &[u8],
    payload: &mut Vec<u8>,
    out: &mut Vec<u8>,
) {
    let hdr = CkptHeader {
        uuid,
        generation,
        body_len: body.len() as u64,
        body_crc: carmine_checksum::crc32c(body),
        start,
    };
    encode_into(&hdr, payload);
    out.clear();
    out.resize(BLOCK as usize, 0);
    frame(CKPT_MAGIC, payload, out);
}

/// Encode a checkpoint: its header block and its body padded to whole blocks.
pub(crate) fn encode_checkpoint(
    uuid: u64,
    generation: u64,
    start: LogPos,
    body: &[u8],
) -> (Vec<u8>, Vec<u8>) {
    let h = checkpoint_header(uuid, generation, start, body);
    let mut b = vec![0u8; (blocks_for(body.len() as u64) * BLOCK) as usize];
    b[..body.len()].copy_from_slice(body);
    (h, b)
}

/// Longest `cluster_fsid` or `osd_uuid` a superblock records (it must fit block 0 with the
/// partition table of 64 shards).
pub const MAX_IDENTITY_LEN: usize = 256;

/// Write a superblock and an empty checkpoint for every shard, with no owner recorded (see
/// [`format_owned`]). Destroys previous contents.
pub fn format<D: BlockDevice>(dev: &mut D, opts: &FormatOptions) -> Result<Superblock, StoreError> {
    format_owned(dev, opts, &StoreIdentity::default())
}

/// [`format`], recording `owner` (the cluster fsid and the OSD uuid) in the superblock.
/// Destroys previous contents: the caller decides whether the device may be formatted
/// ([`probe`] tells what it holds).
pub fn format_owned<D: BlockDevice>(
    dev: &mut D,
    opts: &FormatOptions,
    owner: &StoreIdentity,
) -> Result<Superblock, StoreError> {
    check_identity_len(owner)?;
    let bs = dev.block_size() as u64;
    if bs == 0 || !BLOCK.is_multiple_of(bs) {
        return Err(StoreError::InvalidArgument(format!(
            "device block size {bs} does not divide 4096"
        )));
    }
    let store_blocks = dev.block_count() * bs / BLOCK;
    let shards = opts.shards.max(1) as u64;
    let per = store_blocks.saturating_sub(1) / shards;
    let slot_blocks = match opts.slot_blocks {
        0 => (per / 32).max(256),
        n => n,
    };
    if opts.seg_blocks < 4 || per < 2 * slot_blocks + 4 * opts.seg_blocks {
        return Err(StoreError::InvalidArgument(format!(
            "device too small: {per} blocks per shard for 2x{} slot blocks + 4 segments of {}",
            slot_blocks, opts.seg_blocks
        )));
    }
    let sb = Superblock {
        version: FORMAT_VERSION,
        uuid: opts.uuid.unwrap_or_else(random_u64),
        store_blocks,
        seg_blocks: opts.seg_blocks,
        slot_blocks,
        partitions: (0..shards).map(|i| (1 + i * per, per)).collect(),
        identity: owner.clone(),
    };
    sync_write(dev, None, 0, &sb.block())?;
    for shard in 0..shards as usize {
        let geo = Geometry::from_superblock(&sb, shard, dev.block_size())
            .ok_or_else(|| StoreError::Corrupt("bad partition table".into()))?;
        let mut index = Index::default();
        index.rebuild_derived(&geo);
        let body = encode(&CkptBody {
            index,
            seg_seqs: Vec::new(),
        });
        let start = LogPos {
            seg: 0,
            block: 0,
            seq: 1,
            seg_seq: 1,
            prev_crc: 0,
        };
        let (h, b) = encode_checkpoint(sb.uuid, 1, start, &body);
        sync_write(dev, Some(&geo), 1, &b)?;
        sync_write(dev, Some(&geo), 0, &h)?;
        // The other slot must not hold a checkpoint of an older format: zero its header.
        sync_write(dev, Some(&geo), geo.slot_blocks, &vec![0u8; BLOCK as usize])?;
    }
    sync_flush(dev)?;
    Ok(sb)
}

pub(crate) fn read_superblock<D: BlockDevice>(
    dev: &mut D,
    shard: usize,
) -> Result<Geometry, StoreError> {
    let bs = dev.block_size() as u64;
    if bs == 0 || !BLOCK.is_multiple_of(bs) {
        return Err(StoreError::InvalidArgument(format!(
            "device block size {bs} does not divide 4096"
        )));
    }
    let buf = sync_read(dev, None, 0, 1)?;
    let (payload, _) = unframe(SB_MAGIC, buf.as_slice())
        .ok_or_else(|| StoreError::Corrupt("no valid superblock".into()))?;
    let sb = Superblock::decode(payload).map_err(StoreError::Corrupt)?;
    Geometry::from_superblock(&sb, shard, dev.block_size())
        .ok_or_else(|| StoreError::NotFound(format!("shard {shard} has no partition")))
}

fn check_identity_len(owner: &StoreIdentity) -> Result<(), StoreError> {
    for (what, v) in [
        ("cluster fsid", &owner.cluster_fsid),
        ("osd uuid", &owner.osd_uuid),
    ] {
        if v.len() > MAX_IDENTITY_LEN {
            return Err(StoreError::InvalidArgument(format!(
                "{what} of {} bytes: a superblock records at most {MAX_IDENTITY_LEN}",
                v.len()
            )));
        }
    }
    Ok(())
}

/// Bytes [`probe`] reads from the start of a device to tell a blank one from one holding data.
pub const PROBE_BYTES: u64 = 1 << 20;

/// What a device holds, as far as formatting is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The first [`PROBE_BYTES`] (or the whole device, if smaller) are zero.
    Blank,
    /// A valid bdevstore superblock (any supported version), with its owner.
    Store(Superblock),
    /// Neither: some other data (a file system, another program's, garbage). `offset` is the
    /// first non-zero byte.
    Data { offset: u64 },
}

/// Reads block 0 (and, if it holds no superblock, up to [`PROBE_BYTES`]) and tells what the
/// device holds. Read-only. A superblock frame whose payload does not decode is `Data`.
pub fn probe<D: BlockDevice>(dev: &mut D) -> Result<Probe, StoreError> {
    let bs = dev.block_size() as u64;
    if bs == 0 || !BLOCK.is_multiple_of(bs) {
        return Err(StoreError::InvalidArgument(format!(
            "device block size {bs} does not divide 4096"
        )));
    }
    let buf = sync_read(dev, None, 0, 1)?;
    if let Some((payload, _)) = unframe(SB_MAGIC, buf.as_slice()) {
        if let Ok(sb) = Superblock::decode(payload) {
            return Ok(Probe::Store(sb));
        }
    }
    let dev_bytes = dev.block_count() * bs;
    let total = PROBE_BYTES.min(dev_bytes / BLOCK * BLOCK);
    let mut off = 0u64;
    // 64 KiB at a time: boot-time code, bounded.
    while off < total {
        let blocks = ((total - off) / BLOCK).min(16);
        let chunk = sync_read(dev, None, off / BLOCK, blocks)?;
        if let Some(i) = chunk.as_slice().iter().position(|&b| b != 0) {
            return Ok(Probe::Data {
                offset: off + i as u64,
            });
        }
        off += blocks * BLOCK;
    }
    Ok(Probe::Blank)
}

/// Records `owner` in the superblock of a store that has none (version 1, or formatted
/// without an owner): the same geometry and format uuid, written as version 2. Nothing else
/// on the device changes. Refuses a store that already names an owner.
pub fn claim<D: BlockDevice>(dev: &mut D, owner: &StoreIdentity) -> Result<Superblock, StoreError> {
    check_identity_len(owner)?;
    let mut sb = match probe(dev)? {
        Probe::Store(sb) => sb,
        Probe::Blank | Probe::Data { .. } => {
            return Err(StoreError::Corrupt("no valid superblock".into()))
        }
    };
    if !sb.identity.is_unclaimed() {
        return Err(StoreError::InvalidArgument(format!(
            "the store already belongs to cluster {:?}, osd {:?}",
            sb.identity.cluster_fsid, sb.identity.osd_uuid
        )));
    }
    sb.identity = owner.clone();
    sb.version = FORMAT_VERSION;
    sync_write(dev, None, 0, &sb.block())?;
    sync_flush(dev)?;
    Ok(sb)
}

/// Everything mount and fsck learn from the device.
pub(crate) struct Loaded {
    pub geo: Geometry,
    pub index: Index,
    pub used: Vec<bool>,
    pub seg_seq: Vec<u64>,
    pub head: LogPos,
    pub ckpt_start: LogPos,
    pub generation: u64,
    pub active_slot: u64,
    /// Partition blocks holding a record header that must be wiped before new writes
    /// (a torn tail record, or a stale copy of the next sequence number).
    pub wipe: Vec<u64>,
    pub records: u64,
    pub replayed_blocks: u64,
}

/// Parse and fully verify the record at `off` of `buf` (the segment read from some block).
/// `Ok(Some)`: valid record; `Ok(None)`: no record header here; `Err(())`: a header that
/// belongs to the chain but whose data is torn.
fn parse_record(
    buf: &[u8],
    off: usize,
    geo: &Geometry,
    rec_lba: u64,
    expect: &LogPos,
) -> Result<Option<(RecordHeader, u32)>, ()> {
    let Some((payload, crc)) = unframe(REC_MAGIC, &buf[off..]) else {
        return Ok(None);
    };
    let Some(h): Option<RecordHeader> = decode(payload) else {
        return Ok(None);
    };
    if h.uuid != geo.uuid
        || h.seq != expect.seq
        || h.prev_crc != expect.prev_crc
        || h.seg_seq != expect.seg_seq
    {
        return Ok(None);
    }
    let total = (h.header_blocks as u64 + h.data_blocks as u64) * BLOCK;
    if off as u64 + total > buf.len() as u64 {
        return Err(());
    }
    // Every chunk of the record must be intact (a record is all or nothing).
    let base = rec_lba;
    for e in &h.entries {
        let chunks: Vec<_> = match e {
            Entry::Txn(ops) => ops
                .iter()
                .filter_map(|op| match op {
                    LOp::Write { chunk, .. } if chunk.len > 0 => Some(*chunk),
                    _ => None,
                })
                .collect(),
            Entry::Reloc(rs) => rs.iter().map(|r| r.new).collect(),
        };
        for c in chunks {
            let start = c.lba.checked_sub(base).map(|d| off as u64 + d * BLOCK);
            let ok = start.is_some_and(|s| {
                buf.get(s as usize..s as usize + c.len as usize)
                    .is_some_and(|d| carmine_checksum::crc32c(d) == c.crc)
            });
            if !ok {
                return Err(());
            }
        }
    }
    Ok(Some((h, crc)))
}

/// Read the first record header of every segment: the candidates for "the next segment".
fn first_headers<D: BlockDevice>(
    dev: &mut D,
    geo: &Geometry,
) -> Result<HashMap<u64, Vec<u32>>, StoreError> {
    let mut map: HashMap<u64, Vec<u32>> = HashMap::new();
    for s in 0..geo.nsegs {
        let buf = sync_read(dev, Some(geo), geo.seg_lba(s), 1)?;
        let b = buf.as_slice();
        if b[0..8] != REC_MAGIC.to_le_bytes() {
            continue;
        }
        let len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as u64;
        let blocks = blocks_for(len + 16).min(geo.seg_blocks);
        let full = if blocks > 1 {
            sync_read(dev, Some(geo), geo.seg_lba(s), blocks)?
        } else {
            buf
        };
        if let Some((p, _)) = unframe(REC_MAGIC, full.as_slice()) {
            if let Some(h) = decode::<RecordHeader>(p) {
                if h.uuid == geo.uuid {
                    map.entry(h.seq).or_default().push(s);
                }
            }
        }
    }
    Ok(map)
}

/// Superblock, checkpoint, replay, end-of-log checks. Read-only.
pub(crate) fn load<D: BlockDevice>(dev: &mut D, shard: usize) -> Result<Loaded, StoreError> {
    let geo = read_superblock(dev, shard)?;
    // Newest checkpoint whose header is valid. Its body was flushed before the header was
    // written, so a bad body is corruption, not a crash artifact: refuse rather than fall back.
    let mut best: Option<(CkptHeader, u64)> = None;
    for slot in 0..2u64 {
        let buf = sync_read(dev, Some(&geo), slot * geo.slot_blocks, 1)?;
        if let Some((p, _)) = unframe(CKPT_MAGIC, buf.as_slice()) {
            if let Some(h) = decode::<CkptHeader>(p) {
                if h.uuid == geo.uuid
                    && best
                        .as_ref()
                        .is_none_or(|(b, _)| h.generation > b.generation)
                {
                    best = Some((h, slot));
                }
            }
        }
    }
    let (hdr, slot) =
        best.ok_or_else(|| StoreError::Corrupt("no valid checkpoint header".into()))?;
    let body_blocks = blocks_for(hdr.body_len);
    if 1 + body_blocks > geo.slot_blocks {
        return Err(StoreError::Corrupt(
            "checkpoint body larger than its slot".into(),
        ));
    }
    let body = sync_read(dev, Some(&geo), slot * geo.slot_blocks + 1, body_blocks)?;
    let body = &body.as_slice()[..hdr.body_len as usize];
    let computed = carmine_checksum::crc32c(body);
    if computed != hdr.body_crc {
        return Err(StoreError::Checksum {
            block: slot * geo.slot_blocks + 1,
            stored: hdr.body_crc,
            computed,
        });
    }
    let ck: CkptBody =
        decode(body).ok_or_else(|| StoreError::Corrupt("checkpoint body undecodable".into()))?;
    let mut index = ck.index;
    index.rebuild_derived(&geo);
    let n = geo.nsegs as usize;
    let mut seg_seq = vec![0u64; n];
    let mut in_chain = vec![false; n];
    for (s, q) in ck.seg_seqs {
        if let Some(x) = seg_seq.get_mut(s as usize) {
            *x = q;
        }
    }
    if hdr.start.seg >= geo.nsegs {
        return Err(StoreError::Corrupt(
            "checkpoint start outside the segment area".into(),
        ));
    }

    let firsts = first_headers(dev, &geo)?;
    let mut pos = hdr.start;
    let mut records = 0u64;
    let mut replayed_blocks = 0u64;
    let mut wipe = Vec::new();
    let mut torn_at: Option<u64> = None;
    // Replay segment by segment.
    loop {
        in_chain[pos.seg as usize] = true;
        seg_seq[pos.seg as usize] = pos.seg_seq;
        let remain = geo.seg_blocks - pos.block;
        let seg_base = geo.seg_lba(pos.seg);
        if remain > 0 {
            let buf = sync_read(dev, Some(&geo), seg_base + pos.block, remain)?;
            let b = buf.as_slice();
            let mut off = 0usize;
            while (off as u64) < remain * BLOCK {
                let rec_lba = seg_base + pos.block;
                match parse_record(b, off, &geo, rec_lba, &pos) {
                    Ok(Some((h, crc))) => {
                        for e in &h.entries {
                            index.apply_entry(e);
                        }
                        let blocks = h.header_blocks as u64 + h.data_blocks as u64;
                        off += (blocks * BLOCK) as usize;
                        pos.block += blocks;
                        pos.seq += 1;
                        pos.prev_crc = crc;
                        records += 1;
                        replayed_blocks += blocks;
                    }
                    Ok(None) => break,
                    Err(()) => {
                        torn_at = Some(rec_lba);
                        break;
                    }
                }
            }
        }
        if torn_at.is_some() {
            break;
        }
        // Does the log continue in another segment?
        let mut next = None;
        for &s in firsts.get(&pos.seq).map(Vec::as_slice).unwrap_or(&[]) {
            if s == pos.seg || in_chain[s as usize] {
                continue;
            }
            let expect = LogPos {
                seg: s,
                block: 0,
                seq: pos.seq,
                seg_seq: pos.seg_seq + 1,
                prev_crc: pos.prev_crc,
            };
            let buf = sync_read(dev, Some(&geo), geo.seg_lba(s), geo.seg_blocks)?;
            match parse_record(buf.as_slice(), 0, &geo, geo.seg_lba(s), &expect) {
                Ok(Some(_)) => next = Some(expect),
                Ok(None) => {}
                Err(()) => wipe.push(geo.seg_lba(s)),
            }
        }
        match next {
            Some(p) => pos = p,
            None => break,
        }
    }
    if let Some(t) = torn_at {
        wipe.push(t);
    }
    check_log_end(dev, &geo, &pos, &firsts, &wipe)?;
    let mut used = vec![false; n];
    for s in 0..n {
        used[s] = in_chain[s] || index.acct.live[s] > 0;
    }
    Ok(Loaded {
        geo,
        index,
        used,
        seg_seq,
        head: pos,
        ckpt_start: hdr.start,
        generation: hdr.generation,
        active_slot: slot,
        wipe,
        records,
        replayed_blocks,
    })
}

/// Nothing that looks like a later record may exist past the end of the log: that would mean
/// a corrupted record cut the log short (acknowledged transactions lost).
fn check_log_end<D: BlockDevice>(
    dev: &mut D,
    geo: &Geometry,
    end: &LogPos,
    firsts: &HashMap<u64, Vec<u32>>,
    wipe: &[u64],
) -> Result<(), StoreError> {
    let later: BTreeMap<u64, &Vec<u32>> = firsts
        .iter()
        .filter(|(q, _)| **q > end.seq)
        .map(|(q, v)| (*q, v))
        .collect();
    if let Some((q, segs)) = later.iter().next() {
        return Err(StoreError::Corrupt(format!(
            "journal: record seq {q} in segment {:?} lies beyond the log end (seq {})",
            segs, end.seq
        )));
    }
    let seg_base = geo.seg_lba(end.seg);
    let remain = geo.seg_blocks - end.block;
    if remain == 0 {
        return Ok(());
    }
    let buf = sync_read(dev, Some(geo), seg_base + end.block, remain)?;
    let b = buf.as_slice();
    for blk in 0..remain {
        let lba = seg_base + end.block + blk;
        let off = (blk * BLOCK) as usize;
        if wipe.contains(&lba) {
            continue;
        }
        if let Some((p, _)) = unframe(REC_MAGIC, &b[off..]) {
            if let Some(h) = decode::<RecordHeader>(p) {
                if h.uuid == geo.uuid && h.seq >= end.seq {
                    return Err(StoreError::Corrupt(format!(
                        "journal: record seq {} at block {lba} lies beyond the log end (seq {})",
                        h.seq, end.seq
                    )));
                }
            }
        }
    }
    Ok(())
}
