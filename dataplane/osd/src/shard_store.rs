//! The object store a shard owns: memstore, or bdevstore on the shard's SPDK thread.
//!
//! bdevstore runs on an [`SpdkBlockDevice`], which borrows the shard's [`SpdkThread`] for as
//! long as it lives (it polls that thread to reap completions). Both live in the same shard
//! state for the life of the shard, which a plain borrow cannot express, so the thread is
//! leaked into a `&'static` when the shard starts and taken back, in [`Drop`], only after the
//! store and its device are gone. That reclaim is this module's one `unsafe` block.

use carmine_bdevstore::{BdevStore, MountOptions};
use carmine_memstore::MemStore;
use carmine_objectstore::{ObjectStore, StoreError};
use carmine_spdk::{SpdkBlockDevice, SpdkThread};

/// A shard's store.
pub enum ShardStore {
    Mem(MemStore),
    Bdev(Box<BdevShard>),
}

/// bdevstore with the SPDK thread its device polls.
pub struct BdevShard {
    store: Option<BdevStore<SpdkBlockDevice<'static>>>,
    thread: Option<&'static SpdkThread>,
    /// Segments only the store's cleaner may open (`MountOptions::reserve_segs`).
    reserve_segs: u32,
}

/// Why a shard's store could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShardStoreError {
    #[error("SPDK: {0}")]
    Spdk(#[from] carmine_spdk::SpdkError),
    #[error("mounting bdevstore shard {shard}: {source}")]
    Mount { shard: usize, source: StoreError },
}

impl ShardStore {
    /// Opens bdev `name` on a new SPDK thread of the calling (shard) thread and mounts the
    /// shard's partition.
    pub fn bdev(name: &str, shard: usize) -> Result<ShardStore, ShardStoreError> {
        let thread: &'static SpdkThread =
            Box::leak(Box::new(SpdkThread::new(&format!("osd-shard{shard}"))?));
        let opts = MountOptions {
            shard,
            ..MountOptions::default()
        };
        let mut guard = BdevShard {
            store: None,
            thread: Some(thread),
            reserve_segs: opts.reserve_segs,
        };
        let dev = SpdkBlockDevice::open(thread, name)?;
        let store = BdevStore::mount(dev, opts)
            .map_err(|source| ShardStoreError::Mount { shard, source })?;
        guard.store = Some(store);
        Ok(ShardStore::Bdev(Box::new(guard)))
    }

    pub fn get(&mut self) -> &mut dyn ObjectStore {
        match self {
            ShardStore::Mem(m) => m,
            ShardStore::Bdev(b) => b
                .store
                .as_mut()
                .map(|s| s as &mut dyn ObjectStore)
                .unwrap_or_else(|| unreachable!("a BdevShard holds its store until dropped")),
        }
    }

    pub fn get_ref(&self) -> &dyn ObjectStore {
        match self {
            ShardStore::Mem(m) => m,
            ShardStore::Bdev(b) => b
                .store
                .as_ref()
                .map(|s| s as &dyn ObjectStore)
                .unwrap_or_else(|| unreachable!("a BdevShard holds its store until dropped")),
        }
    }

    /// Why the store failed, once it has (bdevstore: the first device I/O error; memstore
    /// never fails). A failed store refuses every later operation until it is mounted again.
    pub fn failure(&self) -> Option<&str> {
        match self {
            ShardStore::Mem(_) => None,
            ShardStore::Bdev(b) => b.store.as_ref().and_then(|s| s.failure()),
        }
    }

    /// (used, capacity) bytes, when the store knows. The capacity is what client writes can
    /// fill: bdevstore answers `NoSpace` once only its reserve segments (kept for the
    /// cleaner) are free, so they are left out, and a store that refuses writes reports
    /// itself 100% used (the monitor's `OSD_FULL`), whatever its size. Memstore has no
    /// capacity (0: the monitor's fullness checks skip it), only the data it holds.
    pub fn usage(&self) -> Option<(u64, u64)> {
        match self {
            ShardStore::Mem(m) => Some((m.used_bytes(), 0)),
            ShardStore::Bdev(b) => b.store.as_ref().map(|s| {
                let geo = s.geometry();
                let seg = geo.seg_bytes();
                let nsegs = u64::from(geo.nsegs);
                let usable = nsegs.saturating_sub(u64::from(b.reserve_segs));
                let used = nsegs
                    .saturating_sub(u64::from(s.free_segments()))
                    .min(usable);
                (used * seg, usable * seg)
            }),
        }
    }
}

impl ShardStore {
    /// The store's own counters (bdevstore), for the metrics; `None` for memstore.
    pub fn counters(&self) -> Option<crate::perf::StoreCounters> {
        use carmine_objectstore::device::BlockDevice;
        match self {
            ShardStore::Mem(_) => None,
            ShardStore::Bdev(b) => b.store.as_ref().map(|s| {
                let st = s.stats();
                crate::perf::StoreCounters {
                    user_bytes: st.user_bytes,
                    relocated_bytes: st.relocated_bytes,
                    device_written_bytes: s.device().stats().bytes_written,
                    cleaner_steps: st.cleaner_steps,
                    segments_freed: st.segments_freed,
                    cleaner_stalls: st.cleaner_stalls,
                    checkpoints: st.checkpoints,
                }
            }),
        }
    }
}

impl Drop for BdevShard {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            // A clean shutdown writes a checkpoint so the next mount replays nothing.
            match store.shutdown() {
                Ok(dev) => drop(dev),
                Err(e) => tracing::error!(error = %e, "bdevstore shutdown failed"),
            }
        }
        if let Some(thread) = self.thread.take() {
            // SAFETY: `thread` came from `Box::leak` in `ShardStore::bdev`, and the only
            // borrower of it, the store's `SpdkBlockDevice`, was dropped above (or never
            // created). Rebuilding the box runs `SpdkThread`'s Drop (exit + destroy) on this,
            // its own, OS thread.
            unsafe {
                drop(Box::from_raw(
                    thread as *const SpdkThread as *mut SpdkThread,
                ))
            };
        }
    }
}
