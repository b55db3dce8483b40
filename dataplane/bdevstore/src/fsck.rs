//! `fsck`: verify every structure and checksum of one shard's partition, read-only.

use std::collections::{HashMap, HashSet};

use carmine_objectstore::device::{BlockDevice, IoBuf};
use carmine_objectstore::StoreError;

use crate::format::{blocks_for, BLOCK};
use crate::mount::{load, sync_read};

/// What fsck found. `errors` empty means clean.
#[derive(Clone, Debug, Default)]
pub struct FsckReport {
    pub errors: Vec<String>,
    pub records_replayed: u64,
    pub collections: u64,
    pub objects: u64,
    pub extents: u64,
    pub chunks_verified: u64,
    /// A torn (never acknowledged) tail record was found; mount wipes it. Not an error.
    pub torn_tail: bool,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Check shard `shard` of `dev`: superblock, checkpoint header and body CRCs, every journal
/// record's header and data CRCs during replay, the end of the log (no valid record beyond
/// it), index invariants (extents inside objects, inside used segments, no dangling onodes),
/// and the CRC of every live data chunk. Errors that stop loading are reported, not returned.
pub fn fsck<D: BlockDevice>(dev: &mut D, shard: usize) -> Result<FsckReport, StoreError> {
    let mut r = FsckReport::default();
    let l = match load(dev, shard) {
        Ok(l) => l,
        Err(e @ StoreError::Io(_)) => return Err(e),
        Err(e) => {
            r.errors.push(format!("load: {e}"));
            return Ok(r);
        }
    };
    r.records_replayed = l.records;
    r.torn_tail = !l.wipe.is_empty();
    let geo = &l.geo;
    let idx = &l.index;
    r.collections = idx.colls.len() as u64;
    let mut referenced = HashSet::new();
    for (cid, objs) in &idx.colls {
        for (oid, id) in objs {
            if !referenced.insert(*id) {
                r.errors
                    .push(format!("onode {id} referenced twice ({cid:?}/{oid:?})"));
            }
            if !idx.onodes.contains_key(id) {
                r.errors
                    .push(format!("{cid:?}/{oid:?} points at missing onode {id}"));
            }
        }
    }
    for id in idx.onodes.keys() {
        if !referenced.contains(id) {
            r.errors
                .push(format!("onode {id} is not referenced by any collection"));
        }
    }
    r.objects = idx.onodes.len() as u64;
    let mut verified: HashMap<u64, bool> = HashMap::new();
    for (id, o) in &idx.onodes {
        let mut prev_end = 0u64;
        for (&off, e) in &o.extents {
            r.extents += 1;
            if off < prev_end {
                r.errors.push(format!(
                    "onode {id}: extent at {off} overlaps the previous one"
                ));
            }
            prev_end = off + e.len;
            if off + e.len > o.size {
                r.errors.push(format!(
                    "onode {id}: extent at {off} ends past the size {}",
                    o.size
                ));
            }
            if e.skip as u64 + e.len > e.chunk.len as u64 || e.len == 0 {
                r.errors
                    .push(format!("onode {id}: extent at {off} outside its chunk"));
            }
            let blocks = blocks_for(e.chunk.len as u64);
            let seg = geo.seg_of(e.chunk.lba);
            if seg.is_none() || seg != geo.seg_of(e.chunk.lba + blocks.max(1) - 1) {
                r.errors.push(format!(
                    "onode {id}: chunk at block {} outside one segment",
                    e.chunk.lba
                ));
                continue;
            }
            if let Some(s) = seg {
                if !l.used[s as usize] {
                    r.errors.push(format!(
                        "onode {id}: chunk at block {} in a free segment",
                        e.chunk.lba
                    ));
                }
            }
            let ok = match verified.get(&e.chunk.lba) {
                Some(ok) => *ok,
                None => {
                    let buf = sync_read(dev, Some(geo), e.chunk.lba, blocks)?;
                    let ok = carmine_checksum::crc32c(&buf.as_slice()[..e.chunk.len as usize])
                        == e.chunk.crc;
                    r.chunks_verified += 1;
                    verified.insert(e.chunk.lba, ok);
                    if !ok {
                        r.errors.push(format!(
                            "data checksum mismatch in chunk at block {} (onode {id})",
                            e.chunk.lba
                        ));
                    }
                    ok
                }
            };
            let _ = ok;
        }
    }
    let _ = BLOCK;
    Ok(r)
}
