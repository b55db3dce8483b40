//! Carmine's cluster map and placement function.
//!
//! This crate is linked by the monitor, the OSD data path and the client, so it has no async or
//! RPC dependency and does no I/O.
//!
//! * [`map`]: the in-memory [`ClusterMap`] (OSDs, pools, flags at one epoch) and
//!   [`Incremental`], the difference between two consecutive epochs. Invariant: applying
//!   `ClusterMap::diff(a, b)` to `a` yields `b`, and an incremental only applies to the epoch
//!   right before it.
//! * [`placement`]: object name → PG by a fixed-seed xxh64 hash and jump consistent hashing,
//!   and (pool, PG) → ordered OSD list by straw2-style weighted rendezvous hashing over
//!   host → OSD with the host as failure domain. Only OSDs that are up, in and of positive
//!   weight are candidates.
//!
//! The placement function is **on-wire stable**: every OSD and client computes the same answer
//! from the same map, on every platform and in every build. Its hash seed, the byte layout of the
//! hash inputs and the draw formula are part of the protocol; changing any of them moves data and
//! needs a new pool option, never an in-place edit.
#![forbid(unsafe_code)]

pub mod map;
pub mod placement;

pub use map::{ClusterMap, Incremental, MapError, Osd, Pool};
pub use placement::{object_to_pg, pg_to_osds, pg_to_shard, PlacementError, PLACEMENT_SEED};
