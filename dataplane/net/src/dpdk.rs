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
//! - Several shards on one port: each owns one queue pair; a [`Steering`] end per shard passes
//!   frames that arrived on the wrong queue to the shard owning their connection (TCP by local
//!   port) through SPSC rings, and copies ARP to every shard, counting each hop.
//!
//! Invariant: one device per (port, queue), owned by one shard; the pool is that shard's. No
//! allocation on either path. This module holds no `unsafe`: the mbuf handling is in
//! `carmine-dpdk`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use carmine_dpdk::{EthPort, Mbuf, PktMbufPool, RxBatch, TxBatch};
use carmine_reactor::ShardWaker;
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

/// Whether the IPv4 and TCP checksums of a port's frames are computed and verified.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LinkChecksums {
    /// By smoltcp, in software, on every frame sent and received: a port on a wire.
    #[default]
    Software,
    /// Not at all: the link is memory shared by two processes on one host (memif), where
    /// nothing can flip a bit in transit, so checksums would only cost (a 4 KiB segment's TCP
    /// checksum is about 6% of an OSD's read on memif). Linux does the same on veth and
    /// loopback. Both ends must skip: a peer that verifies would drop every frame (the TCP
    /// checksum field is sent as 0). Carmine's frames still carry their CRC-32C end to end.
    /// Also the nearest stand-in for a NIC's checksum offload.
    Skip,
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
    /// Set when several shards share the port (see [`Steering`]).
    steering: Option<Steering>,
    checksums: LinkChecksums,
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
            steering: None,
            checksums: LinkChecksums::Software,
        }
    }

    /// Sets whether IPv4 and TCP checksums are computed and verified (see [`LinkChecksums`]).
    pub fn with_checksums(mut self, checksums: LinkChecksums) -> Self {
        self.checksums = checksums;
        self
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
    /// Taken by `transmit` up front (so "no mbuf" is a clean `None` there); the token paired
    /// with a received frame takes one only if smoltcp answers through it.
    mbuf: Option<Mbuf>,
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
        let mut m = match self.mbuf.map_or_else(|| dev.pool.alloc(), Ok) {
            Ok(m) => m,
            // Only a reply to a received frame gets here without an mbuf: the frame is built
            // and dropped (ARP and TCP retry).
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
        let mbuf = self.next_frame()?;
        self.stats.rx_frames += 1;
        Some((
            RxToken { mbuf },
            TxToken {
                dev: self,
                mbuf: None,
            },
        ))
    }

    fn transmit(&mut self, _ts: Instant) -> Option<TxToken<'_>> {
        if self.tx.is_full() {
            self.send_batch();
        }
        if self.tx.is_full() {
            self.stats.tx_deferred += 1;
            return None;
        }
        match self.pool.alloc() {
            Ok(m) => Some(TxToken {
                dev: self,
                mbuf: Some(m),
            }),
            Err(_) => {
                self.stats.tx_deferred += 1;
                None
            }
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = self.mtu + 14;
        if self.checksums == LinkChecksums::Skip {
            let none = smoltcp::phy::Checksum::None;
            c.checksum.ipv4 = none;
            c.checksum.tcp = none;
            c.checksum.udp = none;
            c.checksum.icmpv4 = none;
        }
        // max_burst_size stays None: smoltcp would clamp its advertised window to it.
        c
    }
}

impl NetDevice for DpdkDevice {
    fn has_pending(&self) -> bool {
        self.steering.as_ref().is_some_and(Steering::has_pending)
    }

    fn flush(&mut self) -> usize {
        if self.tx.is_empty() {
            return 0;
        }
        self.send_batch()
    }

    /// With steering, the ports [`port_owner`] gives this shard; alone on the port, all.
    fn owns_local_port(&self, port: u16) -> bool {
        self.steering
            .as_ref()
            .is_none_or(|st| port_owner(port, st.base_port, st.shards) == st.shard)
    }
}

/// Where a received frame belongs when several shards share one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameOwner {
    /// One shard (TCP by local port, everything else to shard 0).
    Shard(usize),
    /// Every shard (ARP: each shard's interface answers and learns neighbours itself).
    All,
}

/// The shard that owns local TCP port `port` when `shards` shards share a port: shard `k`
/// listens on `base_port + k`; any other port (the local end of an outgoing connection)
/// belongs to shard `port % shards`, so a shard must connect from a port it owns
/// ([`crate::NetDevice::owns_local_port`]).
pub fn port_owner(port: u16, base_port: u16, shards: usize) -> usize {
    match port.checked_sub(base_port) {
        Some(k) if usize::from(k) < shards => usize::from(k),
        _ => usize::from(port) % shards.max(1),
    }
}

/// Which shard owns a frame: TCP segments by their destination (local) port ([`port_owner`]),
/// ARP to all shards, anything else (ICMP, malformed) to shard 0.
pub fn frame_owner(frame: &[u8], base_port: u16, shards: usize) -> FrameOwner {
    const ARP: [u8; 2] = [0x08, 0x06];
    const IPV4: [u8; 2] = [0x08, 0x00];
    if shards <= 1 || frame.len() < 14 {
        return FrameOwner::Shard(0);
    }
    match [frame[12], frame[13]] {
        ARP => FrameOwner::All,
        IPV4 => {
            let ip = &frame[14..];
            if ip.len() < 20 || ip[9] != 6 {
                return FrameOwner::Shard(0);
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let Some(tcp) = ip.get(ihl..ihl + 4) else {
                return FrameOwner::Shard(0);
            };
            let port = u16::from_be_bytes([tcp[2], tcp[3]]);
            FrameOwner::Shard(port_owner(port, base_port, shards))
        }
        _ => FrameOwner::Shard(0),
    }
}

/// Counters of software steering on one shard. Atomics (relaxed, written by the owning shard
/// only) so that monitoring and tests can read them from another thread.
#[derive(Debug, Default)]
pub struct SteeringStats {
    /// Frames this shard received for another shard and passed on (one cross-shard hop each).
    pub steered_out: AtomicU64,
    /// Frames other shards passed to this one.
    pub steered_in: AtomicU64,
    /// Broadcast frames (ARP) copied to the other shards.
    pub copied_out: AtomicU64,
    /// Frames dropped because a shard's inbox was full or no mbuf was free for a copy.
    pub dropped: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// One shard's end of the software-steering mesh: when the NIC cannot spread flows over the
/// queues the way shards own connections (no RSS, or a different hash), every shard classifies
/// what its queue receives and passes foreign frames, by mbuf (no copy), through a
/// single-producer/single-consumer ring to their owner. Every hop is counted.
///
/// Given the shards' wakers ([`Steering::with_wakers`]), a push wakes a target that sleeps in
/// the adaptive idle mode (a fence and a load when it is awake; the target checks its inboxes
/// in `NetDevice::has_pending` before it blocks, so no wake-up is lost). Without them the frame
/// waits for the target's next timer or deadline. NICs with RSS keyed to the shard's flows make
/// steering rare.
pub struct Steering {
    shard: usize,
    shards: usize,
    base_port: u16,
    /// One ring from each other shard (a handful of shards: scanning them is cheap).
    inboxes: Vec<rtrb::Consumer<Mbuf>>,
    next_inbox: usize,
    /// outboxes[k]: the ring into shard k (None for this shard itself).
    outboxes: Vec<Option<rtrb::Producer<Mbuf>>>,
    /// wakers[k]: wakes shard k after a push into its ring (empty: no wake-ups).
    wakers: Vec<Option<ShardWaker>>,
    stats: Arc<SteeringStats>,
}

impl Steering {
    /// A full mesh of rings for `shards` shards, `capacity` mbufs each; element k is shard k's
    /// end. Listeners of shard k use `base_port + k`.
    pub fn mesh(shards: usize, base_port: u16, capacity: usize) -> Vec<Steering> {
        let mut ends: Vec<Steering> = (0..shards)
            .map(|shard| Steering {
                shard,
                shards,
                base_port,
                inboxes: Vec::with_capacity(shards.saturating_sub(1)),
                next_inbox: 0,
                outboxes: (0..shards).map(|_| None).collect(),
                wakers: Vec::new(),
                stats: Arc::default(),
            })
            .collect();
        for from in 0..shards {
            for to in 0..shards {
                if from != to {
                    let (p, c) = rtrb::RingBuffer::new(capacity);
                    ends[from].outboxes[to] = Some(p);
                    ends[to].inboxes.push(c);
                }
            }
        }
        ends
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Wakes shard k through `wakers[k]` after each push into its ring (see the type's docs).
    pub fn with_wakers(mut self, wakers: Vec<Option<ShardWaker>>) -> Self {
        self.wakers = wakers;
        self
    }

    /// A frame another shard passed here is waiting.
    pub fn has_pending(&self) -> bool {
        self.inboxes.iter().any(|c| c.slots() > 0)
    }

    /// The shard's steering counters (shareable with other threads).
    pub fn stats(&self) -> Arc<SteeringStats> {
        self.stats.clone()
    }

    /// A frame another shard passed here, if any (round-robin over the inboxes).
    fn next_steered(&mut self) -> Option<Mbuf> {
        for _ in 0..self.inboxes.len() {
            let i = self.next_inbox;
            self.next_inbox = (i + 1) % self.inboxes.len();
            if let Ok(m) = self.inboxes[i].pop() {
                bump(&self.stats.steered_in);
                return Some(m);
            }
        }
        None
    }

    fn send_to(&mut self, shard: usize, m: Mbuf) {
        match self.outboxes.get_mut(shard).and_then(Option::as_mut) {
            Some(ring) => match ring.push(m) {
                Ok(()) => {
                    bump(&self.stats.steered_out);
                    if let Some(w) = self.wakers.get(shard).and_then(Option::as_ref) {
                        w.notify();
                    }
                }
                // A full ring drops the frame (a NIC queue overflowing does the same; TCP
                // retransmits).
                Err(_) => bump(&self.stats.dropped),
            },
            None => bump(&self.stats.dropped),
        }
    }
}

impl DpdkDevice {
    /// A device whose shard shares the port with others through `steering` (see [`Steering`]).
    pub fn with_steering(mut self, steering: Steering) -> Self {
        self.steering = Some(steering);
        self
    }

    /// Software-steering counters (None when the device is not steered).
    pub fn steering_stats(&self) -> Option<Arc<SteeringStats>> {
        self.steering.as_ref().map(Steering::stats)
    }

    /// The next frame for this shard: one passed by another shard, else one from the queue.
    /// Frames of other shards are passed on; broadcast (ARP) frames are also copied to them.
    fn next_frame(&mut self) -> Option<Mbuf> {
        let Some(st) = self.steering.as_mut() else {
            if self.rx.is_empty() {
                self.port.rx_burst(self.queue, &mut self.rx);
            }
            return self.rx.pop();
        };
        if let Some(m) = st.next_steered() {
            return Some(m);
        }
        loop {
            if self.rx.is_empty() && self.port.rx_burst(self.queue, &mut self.rx) == 0 {
                return None;
            }
            let m = self.rx.pop()?;
            match frame_owner(m.data(), st.base_port, st.shards) {
                FrameOwner::Shard(k) if k == st.shard => return Some(m),
                FrameOwner::Shard(k) => st.send_to(k, m),
                FrameOwner::All => {
                    let (me, n) = (st.shard, st.shards);
                    for k in (0..n).filter(|&k| k != me) {
                        match self.pool.alloc() {
                            Ok(mut copy) => match copy.append(m.data_len()) {
                                Ok(buf) => {
                                    buf.copy_from_slice(m.data());
                                    bump(&st.stats.copied_out);
                                    st.send_to(k, copy);
                                }
                                Err(_) => bump(&st.stats.dropped),
                            },
                            Err(_) => bump(&st.stats.dropped),
                        }
                    }
                    return Some(m);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_frame(dst_port: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45; // IPv4, 20-byte header
        f[14 + 9] = 6; // TCP
        f[34..36].copy_from_slice(&40000u16.to_be_bytes());
        f[36..38].copy_from_slice(&dst_port.to_be_bytes());
        f
    }

    #[test]
    fn frames_go_to_their_owner() {
        assert_eq!(frame_owner(&tcp_frame(7001), 7000, 2), FrameOwner::Shard(1));
        assert_eq!(frame_owner(&tcp_frame(7000), 7000, 2), FrameOwner::Shard(0));
        // Not a listener port: by port modulo shards.
        assert_eq!(
            frame_owner(&tcp_frame(50003), 7000, 4),
            FrameOwner::Shard(3)
        );
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(frame_owner(&arp, 7000, 2), FrameOwner::All);
        let mut udp = tcp_frame(7001);
        udp[14 + 9] = 17;
        assert_eq!(frame_owner(&udp, 7000, 2), FrameOwner::Shard(0));
        // Truncated or odd headers never panic and go to shard 0.
        assert_eq!(
            frame_owner(&tcp_frame(7001)[..30], 7000, 2),
            FrameOwner::Shard(0)
        );
        let mut long_ihl = tcp_frame(7001);
        long_ihl[14] = 0x4f;
        assert_eq!(frame_owner(&long_ihl[..40], 7000, 2), FrameOwner::Shard(0));
        assert_eq!(frame_owner(&[], 7000, 2), FrameOwner::Shard(0));
        assert_eq!(frame_owner(&tcp_frame(7001), 7000, 1), FrameOwner::Shard(0));
    }

    /// The local port an outgoing connection of shard k may use ([`port_owner`], what
    /// `owns_local_port` answers) is one whose segments the classifier gives shard k.
    #[test]
    fn every_local_port_is_steered_to_its_owner() {
        for shards in 1..=4 {
            for port in (1..=u16::MAX).step_by(7).chain([6800, 6801, 6802, 6803]) {
                let owner = port_owner(port, 6800, shards);
                assert!(owner < shards);
                assert_eq!(
                    frame_owner(&tcp_frame(port), 6800, shards),
                    FrameOwner::Shard(owner),
                    "port {port}, {shards} shards"
                );
            }
        }
    }

    proptest::proptest! {
        /// Any bytes off the wire: no panic, and always a shard that exists.
        #[test]
        fn any_frame_has_an_existing_owner(
            frame in proptest::collection::vec(proptest::num::u8::ANY, 0..128),
            base_port in proptest::num::u16::ANY,
            shards in 1usize..64,
        ) {
            match frame_owner(&frame, base_port, shards) {
                FrameOwner::Shard(k) => proptest::prop_assert!(k < shards),
                FrameOwner::All => proptest::prop_assert!(frame.len() >= 14 && shards > 1),
            }
        }

        /// A TCP segment with any IP options goes to the shard listening on its port.
        #[test]
        fn tcp_segments_go_to_their_listener_whatever_the_ip_options(
            options in 0usize..=10,
            shard in 0u16..8,
            base_port in 1024u16..60_000,
        ) {
            let mut f = vec![0u8; 14 + 20 + options * 4 + 20];
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            f[14] = 0x40 | (5 + options as u8);
            f[14 + 9] = 6;
            let tcp = 14 + 20 + options * 4;
            f[tcp + 2..tcp + 4].copy_from_slice(&(base_port + shard).to_be_bytes());
            proptest::prop_assert_eq!(
                frame_owner(&f, base_port, 8),
                FrameOwner::Shard(usize::from(shard))
            );
        }
    }
}
