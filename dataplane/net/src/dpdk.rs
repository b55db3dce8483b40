//! The DPDK [`NetDevice`]: smoltcp on one RX/TX queue pair of a DPDK port, through mbufs.
//!
//! - Receive: `rte_eth_rx_burst` fills a fixed [`RxBatch`]; each [`phy::RxToken`] owns one
//!   mbuf and hands smoltcp the mbuf's own data slice (no copy); the mbuf goes back to its
//!   pool when the token is consumed.
//! - Transmit: a [`phy::TxToken`] takes a fresh mbuf from the shard's pool, appends the frame's
//!   length and lets smoltcp write the frame straight into it; frames collect in a fixed
//!   [`TxBatch`] that `flush` (called by [`crate::SmolStack::poll`] after every interface poll)
//!   hands to `rte_eth_tx_burst`. When the pool is empty or the batch cannot be sent,
//!   `transmit` says "not now" and smoltcp retries on a later poll: backpressure, not drops.
//!
//! Invariant: one device per (port, queue), owned by one shard; the pool is that shard's. No
//! allocation on either path. This module holds no `unsafe`: the mbuf handling is in
//! `carmine-dpdk`.

use std::sync::Arc;

use carmine_dpdk::{EthPort, Mbuf, PktMbufPool, RxBatch, TxBatch};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::NetDevice;

/// Counters of the device itself.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DpdkDeviceStats {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// `transmit` declined because the pool was empty or the TX batch was stuck full.
    pub tx_deferred: u64,
    /// Frames longer than an mbuf (never with a 1514-byte MTU and 2 KiB mbufs): dropped.
    pub tx_too_long: u64,
}

/// smoltcp device on queue `queue` of a DPDK port.
pub struct DpdkDevice {
    port: Arc<EthPort>,
    queue: u16,
    pool: PktMbufPool,
    rx: RxBatch,
    tx: TxBatch,
    mtu: usize,
    stats: DpdkDeviceStats,
    /// Where a frame goes when no mbuf could hold it (kept so consume never fails).
    scratch: Vec<u8>,
}

impl DpdkDevice {
    /// A device on `queue` of the started `port`, taking transmit mbufs from `pool` (the pool
    /// the queue's RX side was configured with). `mtu` is the IP MTU (frames are `mtu + 14`).
    pub fn new(port: Arc<EthPort>, queue: u16, pool: PktMbufPool, mtu: usize) -> Self {
        Self {
            port,
            queue,
            pool,
            rx: RxBatch::default(),
            tx: TxBatch::default(),
            mtu,
            stats: DpdkDeviceStats::default(),
            scratch: vec![0; mtu + 14],
        }
    }

    pub fn stats(&self) -> DpdkDeviceStats {
        self.stats
    }

    /// The shard's mbuf pool (its `in_use` count returns to a baseline when connections close).
    pub fn pool(&self) -> &PktMbufPool {
        &self.pool
    }

    pub fn port(&self) -> &EthPort {
        &self.port
    }

    fn send_batch(&mut self) -> usize {
        self.port.tx_burst(self.queue, &mut self.tx)
    }
}

pub struct RxToken {
    mbuf: Mbuf,
}

pub struct TxToken<'a> {
    dev: &'a mut DpdkDevice,
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        // The frame is read in place; dropping the token returns the mbuf to its pool.
        f(self.mbuf.data())
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let dev = self.dev;
        let mut m = match dev.pool.alloc() {
            Ok(m) => m,
            // `transmit` checked that the pool had an mbuf; if it raced empty, the frame is
            // built and dropped (TCP retransmits it).
            Err(_) => {
                dev.stats.tx_deferred += 1;
                let n = len.min(dev.scratch.len());
                return f(&mut dev.scratch[..n]);
            }
        };
        match m.append(len) {
            Ok(buf) => {
                let r = f(buf);
                if let Err(m) = dev.tx.push(m) {
                    // The batch was full: `transmit` sends first, so this is rare; send and
                    // retry once, else drop the frame (TCP retransmits).
                    dev.send_batch();
                    if dev.tx.push(m).is_err() {
                        dev.stats.tx_deferred += 1;
                    }
                }
                dev.stats.tx_frames += 1;
                r
            }
            Err(_) => {
                dev.stats.tx_too_long += 1;
                drop(m);
                let n = len.min(dev.scratch.len());
                f(&mut dev.scratch[..n])
            }
        }
    }
}

impl phy::Device for DpdkDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _ts: Instant) -> Option<(RxToken, TxToken<'_>)> {
        if self.rx.is_empty() {
            self.port.rx_burst(self.queue, &mut self.rx);
        }
        let mbuf = self.rx.pop()?;
        self.stats.rx_frames += 1;
        Some((RxToken { mbuf }, TxToken { dev: self }))
    }

    fn transmit(&mut self, _ts: Instant) -> Option<TxToken<'_>> {
        if self.tx.is_full() {
            self.send_batch();
        }
        if self.tx.is_full() || self.pool.available() == 0 {
            self.stats.tx_deferred += 1;
            return None;
        }
        Some(TxToken { dev: self })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = self.mtu + 14;
        // max_burst_size stays None: smoltcp would clamp its advertised window to it.
        c
    }
}

impl NetDevice for DpdkDevice {
    fn flush(&mut self) -> usize {
        if self.tx.is_empty() {
            return 0;
        }
        self.send_batch()
    }
}
