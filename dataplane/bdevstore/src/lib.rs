//! # carmine-bdevstore: a log-structured object store on a poll-mode block device
//!
//! One instance per shard, on that shard's static partition of a device (SPDK bdev in the OSD,
//! a file in tests). The on-disk format, record layouts and recovery procedure are specified in
//! `FORMAT.md` next to this crate; this is the design in short.
//!
//! ## Layout
//! Block 0 of the device is the superblock (geometry, one partition per shard, and since
//! format version 2 the store's owner: cluster fsid and OSD uuid, [`StoreIdentity`]; version 1
//! superblocks still mount). [`probe`] tells a blank device, a store and other data apart
//! before anything formats it. A partition
//! holds two checkpoint slots followed by fixed-size segments. The log is a chain of segments;
//! each journal *record* is `header blocks | data blocks`, the header a CRC-32C frame that lists
//! the transactions (logical ops, with every written byte range replaced by a checksummed
//! *chunk* reference into the record's own data blocks). Data lives in the log: there is no
//! second copy, so a 4 KiB overwrite costs its data block plus a share of a header block.
//!
//! ## Index and recovery
//! All metadata (collections, onodes with attributes, omap and extent maps) is memory resident
//! in [`index::Index`]. A checkpoint serializes it into the inactive slot (body, flush, header,
//! flush); mount loads the newest valid checkpoint and replays records from its log position.
//! Records are chained by sequence number, segment sequence number and the previous header's
//! CRC, so stale records in reused segments never replay; a record is applied only if its header
//! and every data chunk verify (atomicity). A valid-looking record *beyond* the end of the log
//! means a corrupted record cut the log short: mount refuses and fsck reports it.
//!
//! ## Write path and durability
//! `submit` queues; `poll` packs everything queued into one record (group commit), applies it to
//! the index, and writes it; when the write and a flush complete, the record's transactions
//! complete as committed. One record is in flight at a time, so record N+1 is never on disk
//! before record N is durable: the log has no holes. (More records in flight would not help on
//! a malloc bdev, where the write path is CPU-bound and idle polling while a record is in flight
//! measured under 3% of the time; on a device with latency they would, at the price of a
//! recovery rule for valid records past a torn one, i.e. a format change.) Write data is copied
//! into the record buffer once and its heap buffer kept as a spare, which
//! `ObjectStore::data_buf` hands out for the next write and read results reuse. Building a
//! record and a cleaner step reuse their lists (`RecordScratch`, `Cleaner::scratch`) and the
//! names of writes move from the transaction into the record: in steady state the store
//! allocates nothing per op (`carmine-storebench` counts it).
//!
//! ## Failure
//! The first device I/O error on any path (journal write or flush, a read, a cleaner read, a
//! checkpoint write) fails the store ([`BdevStore::failure`] names it): the operation it
//! belonged to gets the I/O error, every later one `StoreError::Failed`, reads included,
//! until the store is mounted again. A failed device is not trusted with more work; the OSD
//! reports it to the monitor and the data is served from the other copies.
//!
//! ## Reads and checksums
//! A read resolves extents in the index, reads whole chunks and verifies each chunk's CRC-32C
//! before copying bytes out: a mismatch is `StoreError::Checksum`, never wrong data. Reads of
//! data still in the in-flight record wait for its completion.
//!
//! ## Cleaner and space
//! Per-segment live-byte counts are maintained with every extent change, and per-segment back
//! references as append-only *candidate* lists (a push per new extent, nothing on removal;
//! compacted when they outgrow twice the live count): the cleaner checks each candidate
//! against the extent map and keeps a cursor into its victim's list between steps.
//! When free segments run low, the cleaner picks the used segment cheapest to relocate, counted
//! in the whole blocks its extents take once moved (not bytes: a segment of small objects is
//! mostly free by bytes yet refills a segment when moved), and relocates at most
//! `clean_batch_bytes` per step (read chunks, verify, write a relocation entry into the next
//! record; a relocation applies only if the extent did not change meanwhile). Batches are also
//! bounded to half a segment of blocks. Emptied segments become free once a checkpoint's replay
//! start lies past them. The pause is bounded by the batch size and measured
//! (`StoreStats::cleaner_max_pause`).
//!
//! The cleaner is in one of three rest states (`CleanerRest` in store/cleaner.rs); both ways it can
//! rest exist so that it always stops when cleaning cannot help:
//! - *Active*: cleans while free segments are below the low-water mark or a transaction
//!   waits for space.
//! - *Stalled* (progress guard, for packing losses block accounting cannot see): after
//!   `CLEAN_FUTILE_LIMIT` victims emptied without the net gain in blocks (`Cleaner::net`: a
//!   segment per victim, minus relocation records and head tails skipped) reaching a new high,
//!   it picks no victim until the foreground has written records and dropped live blocks
//!   (overwrites, removes: new garbage) worth a segment together (`StoreStats::cleaner_stalls`). A transaction waiting for space overrides the stall, for
//!   at most the bounded wait of `worth_waiting`. Without foreground writes cleaning ends.
//! - *Stuck* (a full store): a relocation found no segment to write into (the cleaner leaves
//!   the last free segment to transactions without data). The batch is dropped (nothing
//!   moved), the cleaner does nothing (no override), transactions needing a new segment fail
//!   with `NoSpace` at once, and a warning is logged once. A committed transaction (e.g. a
//!   remove) or a freed segment wakes it, back into the stall it interrupted if any (only a
//!   waiting transaction makes a stalled cleaner relocate), else Active.
//!
//! A transaction that needs space the cleaner cannot produce fails with `NoSpace` and has no
//! effect; transactions with data may not take the last `reserve_segs` free segments, those
//! without data may take all, so removes keep working on a full store.
//!
//! ## Limits (by design, documented in FORMAT.md)
//! Metadata must fit a checkpoint slot and memory; a transaction must fit one segment
//! ([`TxnFootprint`]). The default segment (`DEFAULT_SEG_BLOCKS`) holds any transaction of up
//! to [`MAX_TXN_DATA`] (4 MiB, the wire's largest op) with a header of up to
//! [`MAX_TXN_HEADER`]; a store formatted with smaller segments refuses larger transactions
//! with `InvalidArgument` naming its limit.
//! The null bdev keeps no data: `MountOptions::durable` refuses it.

pub mod format;
mod fsck;
pub mod index;
mod mount;
mod store;

pub use format::{StoreIdentity, Superblock, DEFAULT_SEG_BLOCKS, MAX_TXN_DATA, MAX_TXN_HEADER};
pub use fsck::{fsck, FsckReport};
pub use mount::{
    claim, format, format_owned, probe, FormatOptions, Probe, MAX_IDENTITY_LEN, PROBE_BYTES,
};
pub use store::{BdevStore, MountOptions, StoreStats, TxnFootprint};
