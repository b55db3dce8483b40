//! Ethdev ports: one RX/TX queue pair per shard, fixed-size bursts.

use std::ffi::CString;
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use dpdk_sys::rte_mbuf;

use crate::{strerror, DpdkError, Eal, Mbuf, PktMbufPool};

/// Packets per burst (DPDK's customary 32: amortises the PMD call, fits in L1).
pub const BURST: usize = 32;

/// Port counters as the PMD reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_missed: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_no_mbuf: u64,
}

/// An ethdev port, configured and started.
#[derive(Debug)]
pub struct EthPort {
    id: u16,
    rx_queues: u16,
    tx_queues: u16,
    rss: bool,
}

/// A DPDK port call's return code (0 or a negative errno) as a result naming the call.
fn port_result(port: u16, op: &'static str, rc: i32) -> Result<(), DpdkError> {
    if rc == 0 {
        return Ok(());
    }
    Err(DpdkError::Port {
        port,
        op,
        reason: strerror(rc),
    })
}

impl EthPort {
    /// Looks up a probed port by its device name (e.g. "net_af_packet0" or "0000:01:00.0").
    pub fn id_by_name(_eal: &'static Eal, name: &str) -> Result<u16, DpdkError> {
        let c = CString::new(name).map_err(|_| DpdkError::Nul(name.into()))?;
        let mut id = 0u16;
        // SAFETY: valid string and out-pointer.
        let rc = unsafe { dpdk_sys::rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) };
        if rc != 0 {
            return Err(DpdkError::NoSuchPort(name.into()));
        }
        Ok(id)
    }

    /// Configures port `id` with one RX and one TX queue per pool in `pools` (RX queue i takes
    /// mbufs from `pools[i]`), `desc` descriptors each, asks for RSS when `rss` and there are
    /// several queues, and starts it.
    pub fn start(
        _eal: &'static Eal,
        id: u16,
        pools: &[&PktMbufPool],
        desc: u16,
        rss: bool,
    ) -> Result<Self, DpdkError> {
        let n = u16::try_from(pools.len()).map_err(|_| DpdkError::Port {
            port: id,
            op: "configure",
            reason: "too many queues".into(),
        })?;
        let mut raw: Vec<_> = pools.iter().map(|p| p.as_ptr()).collect();
        let mut rss_on = 0;
        // SAFETY: raw holds n valid mempool pointers that outlive the call (the queues keep
        // using them: the caller keeps the pools alive as long as the port, which the shard
        // owning both guarantees).
        let rc = unsafe {
            dpdk_sys::carmine_eth_port_setup(
                id,
                n,
                n,
                desc,
                raw.as_mut_ptr(),
                rss as i32,
                &mut rss_on,
            )
        };
        port_result(id, "setup", rc)?;
        Ok(Self {
            id,
            rx_queues: n,
            tx_queues: n,
            rss: rss_on != 0,
        })
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    pub fn queues(&self) -> (u16, u16) {
        (self.rx_queues, self.tx_queues)
    }

    /// Whether the NIC spreads flows over the RX queues itself (otherwise software steering).
    pub fn rss(&self) -> bool {
        self.rss
    }

    pub fn mac(&self) -> Result<[u8; 6], DpdkError> {
        let mut mac = [0u8; 6];
        // SAFETY: mac has room for 6 bytes.
        let rc = unsafe { dpdk_sys::carmine_eth_macaddr(self.id, mac.as_mut_ptr()) };
        port_result(self.id, "macaddr", rc)?;
        Ok(mac)
    }

    /// Accepts frames for any destination MAC: needed when the user-space stack answers on
    /// an address other than the port's own.
    pub fn enable_promiscuous(&self) -> Result<(), DpdkError> {
        // SAFETY: plain control call on a valid, started port.
        let rc = unsafe { dpdk_sys::rte_eth_promiscuous_enable(self.id) };
        port_result(self.id, "promiscuous_enable", rc)
    }

    /// Sets the port's IP MTU (frames of `mtu` + 14 bytes). On an af_packet port this sets
    /// the kernel interface's MTU and needs ring frames that big (the `framesz` devarg). Some
    /// hardware PMDs accept it only on a stopped port: they fail here with their reason.
    pub fn set_mtu(&self, mtu: u16) -> Result<(), DpdkError> {
        // SAFETY: plain control call on a valid port.
        let rc = unsafe { dpdk_sys::rte_eth_dev_set_mtu(self.id, mtu) };
        port_result(self.id, "set_mtu", rc)
    }

    /// The kernel socket behind RX queue `queue` when this is an af_packet port: it turns
    /// readable when a frame lands in the queue's ring, so an idle shard can sleep in poll(2)
    /// on it. `None` for other PMDs (their RX has no fd; hardware would use RX interrupts).
    pub fn af_packet_rx_fd(&self, queue: u16) -> Option<std::os::fd::RawFd> {
        // SAFETY: plain query on a valid port; the PMD checks the port's kind and the queue.
        let fd = unsafe { dpdk_sys::carmine_af_packet_rx_fd(self.id, queue) };
        (fd >= 0).then_some(fd)
    }

    pub fn link_up(&self) -> bool {
        // SAFETY: plain query on a valid port.
        unsafe { dpdk_sys::carmine_eth_link_up(self.id) == 1 }
    }

    pub fn stats(&self) -> Result<PortStats, DpdkError> {
        let mut s = dpdk_sys::carmine_eth_stats::default();
        // SAFETY: valid out-pointer.
        let rc = unsafe { dpdk_sys::carmine_eth_stats(self.id, &mut s) };
        port_result(self.id, "stats", rc)?;
        Ok(PortStats {
            rx_packets: s.ipackets,
            tx_packets: s.opackets,
            rx_bytes: s.ibytes,
            tx_bytes: s.obytes,
            rx_missed: s.imissed,
            rx_errors: s.ierrors,
            tx_errors: s.oerrors,
            rx_no_mbuf: s.rx_nombuf,
        })
    }

    /// Receives up to the batch's free room from RX queue `queue` into `batch`. Returns the
    /// number received. The queue must be used by one thread only.
    pub fn rx_burst(&self, queue: u16, batch: &mut RxBatch) -> usize {
        let room = batch.room();
        if room == 0 || queue >= self.rx_queues {
            return 0;
        }
        // SAFETY: the PMD writes at most `room` mbuf pointers into the uninitialised tail of the
        // array; each is an mbuf now owned by us.
        let got = unsafe {
            dpdk_sys::carmine_eth_rx_burst(
                self.id,
                queue,
                batch.slots.as_mut_ptr().add(batch.len) as *mut *mut rte_mbuf,
                room as u16,
            )
        } as usize;
        batch.len += got;
        got
    }

    /// Sends what `batch` holds on TX queue `queue`. Sent mbufs leave the batch (the PMD frees
    /// them after transmission); unsent ones stay at its front for the next try. Returns the
    /// number sent.
    pub fn tx_burst(&self, queue: u16, batch: &mut TxBatch) -> usize {
        if batch.len == 0 || queue >= self.tx_queues {
            return 0;
        }
        // SAFETY: slots[..len] hold mbufs we own; the PMD takes ownership of the first `sent`.
        let sent = unsafe {
            dpdk_sys::carmine_eth_tx_burst(
                self.id,
                queue,
                batch.slots.as_mut_ptr(),
                batch.len as u16,
            )
        } as usize;
        batch.slots.copy_within(sent..batch.len, 0);
        batch.len -= sent;
        sent
    }
}

impl Drop for EthPort {
    fn drop(&mut self) {
        // SAFETY: we own the started port.
        unsafe {
            dpdk_sys::rte_eth_dev_stop(self.id);
        }
    }
}

/// Received mbufs, at most [`BURST`]: a fixed array, so receiving never allocates.
///
/// Invariant: `slots[head..len]` hold owned mbufs not yet taken.
pub struct RxBatch {
    slots: [MaybeUninit<*mut rte_mbuf>; BURST],
    head: usize,
    len: usize,
}

impl Default for RxBatch {
    fn default() -> Self {
        Self {
            slots: [MaybeUninit::uninit(); BURST],
            head: 0,
            len: 0,
        }
    }
}

impl RxBatch {
    /// Mbufs received and not yet taken.
    pub fn len(&self) -> usize {
        self.len - self.head
    }

    pub fn is_empty(&self) -> bool {
        self.head == self.len
    }

    /// Free room for the next `rx_burst` (the array is compacted when it runs empty).
    fn room(&mut self) -> usize {
        if self.head == self.len {
            self.head = 0;
            self.len = 0;
        }
        BURST - self.len
    }

    /// Takes the oldest received mbuf.
    pub fn pop(&mut self) -> Option<Mbuf> {
        if self.head == self.len {
            return None;
        }
        let p = self.slots[self.head];
        self.head += 1;
        // SAFETY: slots[head..len] were written by rx_burst with owned, non-null mbufs; head
        // moved past this one so it is taken once.
        Some(unsafe { Mbuf::from_raw(NonNull::new_unchecked(p.assume_init())) })
    }

    /// Takes the received mbufs out, in arrival order.
    pub fn drain(&mut self) -> impl Iterator<Item = Mbuf> + '_ {
        std::iter::from_fn(move || self.pop())
    }
}

impl Drop for RxBatch {
    fn drop(&mut self) {
        self.drain().for_each(drop);
    }
}

/// Mbufs waiting to be sent, at most [`BURST`].
pub struct TxBatch {
    slots: [*mut rte_mbuf; BURST],
    len: usize,
}

impl Default for TxBatch {
    fn default() -> Self {
        Self {
            slots: [std::ptr::null_mut(); BURST],
            len: 0,
        }
    }
}

impl TxBatch {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len == BURST
    }

    /// Queues an mbuf for the next `tx_burst`; gives it back when the batch is full.
    pub fn push(&mut self, m: Mbuf) -> Result<(), Mbuf> {
        if self.len == BURST {
            return Err(m);
        }
        self.slots[self.len] = m.into_raw();
        self.len += 1;
        Ok(())
    }
}

impl Drop for TxBatch {
    fn drop(&mut self) {
        for &p in &self.slots[..self.len] {
            // SAFETY: slots[..len] are mbufs we own.
            unsafe { drop(Mbuf::from_raw(NonNull::new_unchecked(p))) };
        }
    }
}
