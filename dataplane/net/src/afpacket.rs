//! An AF_PACKET [`NetDevice`] for the CI topology and the bench: one raw socket bound to one
//! interface; frames move in batches — `recvmmsg` fills up to [`BATCH`] preallocated receive
//! slots, transmitted frames are written into preallocated slots and sent with one `sendmmsg`
//! per batch or at `flush` (the same shape as a DPDK rx/tx burst). No allocation per frame
//! (unlike smoltcp's `RawSocket`); frames this host sent itself are filtered out; send errors
//! (link down, ENOBUFS) are counted as drops instead of panicking: a NIC drops, it does not
//! abort.
//!
//! All unsafe code of the device is in the `sys` submodule.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::NetDevice;

/// Frames per receive or transmit batch.
pub const BATCH: usize = 32;

/// Counters of the raw socket itself.
#[derive(Debug, Default, Clone, Copy)]
pub struct AfPacketStats {
    pub rx_batches: u64,
    pub tx_batches: u64,
    /// Frames the kernel refused (link down, buffer full): dropped.
    pub tx_dropped: u64,
    pub rx_errors: u64,
    /// Frames other sockets on this host transmitted (seen on a tap, ignored).
    pub rx_outgoing_skipped: u64,
}

/// `BATCH` frame slots in one buffer.
struct Slots {
    buf: Vec<u8>,
    len: [usize; BATCH],
    frame: usize,
}

impl Slots {
    fn new(frame: usize) -> Self {
        Self {
            buf: vec![0; frame * BATCH],
            len: [0; BATCH],
            frame,
        }
    }

    fn slot(&self, i: usize) -> &[u8] {
        &self.buf[i * self.frame..i * self.frame + self.len[i]]
    }
}

/// Pending transmit frames.
struct TxQueue {
    fd: RawFd,
    slots: Slots,
    count: usize,
    stats: AfPacketStats,
}

impl TxQueue {
    fn flush(&mut self) -> usize {
        if self.count == 0 {
            return 0;
        }
        let n = self.count;
        let sent = sys::send_batch(self.fd, &self.slots, n);
        self.stats.tx_batches += 1;
        self.stats.tx_dropped += (n - sent) as u64;
        self.count = 0;
        n
    }
}

/// A raw Ethernet device on a Linux interface.
pub struct AfPacket {
    fd: OwnedFd,
    mtu: usize,
    rx: Slots,
    rx_outgoing: [bool; BATCH],
    rx_count: usize,
    rx_next: usize,
    tx: TxQueue,
}

impl AfPacket {
    /// Opens a raw socket on interface `ifname` (in the calling thread's network namespace).
    /// `mtu` is the IP MTU of the link (frames are `mtu + 14` bytes).
    pub fn open(ifname: &str, mtu: usize) -> std::io::Result<Self> {
        let fd = sys::open_bound(ifname)?;
        let frame = mtu + 14;
        let raw = fd.as_raw_fd();
        Ok(Self {
            fd,
            mtu,
            rx: Slots::new(frame),
            rx_outgoing: [false; BATCH],
            rx_count: 0,
            rx_next: 0,
            tx: TxQueue {
                fd: raw,
                slots: Slots::new(frame),
                count: 0,
                stats: Default::default(),
            },
        })
    }

    pub fn stats(&self) -> AfPacketStats {
        self.tx.stats
    }

    /// Index of the next received frame, refilling the batch when it is used up.
    fn next_rx(&mut self) -> Option<usize> {
        loop {
            if self.rx_next < self.rx_count {
                let i = self.rx_next;
                self.rx_next += 1;
                if self.rx_outgoing[i] {
                    self.tx.stats.rx_outgoing_skipped += 1;
                    continue;
                }
                return Some(i);
            }
            match sys::recv_batch(self.fd.as_raw_fd(), &mut self.rx, &mut self.rx_outgoing) {
                Ok(0) => return None,
                Ok(n) => {
                    self.tx.stats.rx_batches += 1;
                    self.rx_count = n;
                    self.rx_next = 0;
                }
                Err(_) => {
                    self.tx.stats.rx_errors += 1;
                    return None;
                }
            }
        }
    }
}

impl AsRawFd for AfPacket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

pub struct RxToken<'a> {
    frame: &'a [u8],
}

pub struct TxToken<'a> {
    q: &'a mut TxQueue,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if self.q.count == BATCH {
            self.q.flush();
        }
        let i = self.q.count;
        let frame = self.q.slots.frame;
        let len = len.min(frame);
        let r = f(&mut self.q.slots.buf[i * frame..i * frame + len]);
        self.q.slots.len[i] = len;
        self.q.count += 1;
        if self.q.count == BATCH {
            self.q.flush();
        }
        r
    }
}

impl phy::Device for AfPacket {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _ts: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let i = self.next_rx()?;
        Some((
            RxToken {
                frame: self.rx.slot(i),
            },
            TxToken { q: &mut self.tx },
        ))
    }

    fn transmit(&mut self, _ts: Instant) -> Option<TxToken<'_>> {
        Some(TxToken { q: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = self.mtu + 14;
        // max_burst_size stays None: smoltcp clamps the advertised receive window to
        // max_burst_size * MSS, which would throttle every sender to ~46 KB in flight.
        c
    }
}

impl NetDevice for AfPacket {
    fn flush(&mut self) -> usize {
        self.tx.flush()
    }
}

mod sys {
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};

    use super::{Slots, BATCH};

    fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    pub(super) fn open_bound(ifname: &str) -> io::Result<OwnedFd> {
        let name = CString::new(ifname).map_err(|_| io::Error::other("NUL in interface name"))?;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the result is checked and then owned.
        let fd = cvt(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                proto as libc::c_int,
            )
        })?;
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: `name` is a valid NUL-terminated string for the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid starting value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as libc::c_int;
        // SAFETY: passes a pointer to a live sockaddr_ll and its exact size.
        cvt(unsafe {
            libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        // Big socket buffers and no qdisc on transmit: the shard works in bursts.
        // Failure of either only costs drops or speed.
        let size: libc::c_int = 4 << 20;
        let one: libc::c_int = 1;
        for (level, opt, val) in [
            (libc::SOL_SOCKET, libc::SO_RCVBUF, &size),
            (libc::SOL_SOCKET, libc::SO_SNDBUF, &size),
            (libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &one),
        ] {
            // SAFETY: passes a pointer to a live c_int and its size.
            let _ = unsafe {
                libc::setsockopt(
                    fd,
                    level,
                    opt,
                    (val as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        Ok(owned)
    }

    /// Receives up to BATCH frames into `rx`; `outgoing[i]` = frame i was sent by this host.
    pub(super) fn recv_batch(
        fd: RawFd,
        rx: &mut Slots,
        outgoing: &mut [bool; BATCH],
    ) -> io::Result<usize> {
        // SAFETY: all-zero is valid for these plain C structs (null pointers, zero lengths).
        let mut from: [libc::sockaddr_ll; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let frame = rx.frame;
        let base = rx.buf.as_mut_ptr();
        for i in 0..BATCH {
            // SAFETY: slot i lies inside `rx.buf` (BATCH * frame bytes).
            iov[i].iov_base = unsafe { base.add(i * frame) }.cast();
            iov[i].iov_len = frame;
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = (&mut from[i] as *mut libc::sockaddr_ll).cast();
            msgs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        }
        // SAFETY: every pointer in `msgs` points into live arrays/buffers of this frame, with
        // matching lengths; MSG_DONTWAIT never blocks; a null timeout is allowed.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for i in 0..n {
            let truncated = msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            rx.len[i] = if truncated {
                0
            } else {
                msgs[i].msg_len as usize
            };
            // A truncated (oversized) frame becomes an empty one smoltcp discards.
            outgoing[i] = from[i].sll_pkttype == libc::PACKET_OUTGOING;
        }
        Ok(n)
    }

    /// Sends the first `n` frames of `tx`; returns how many the kernel took.
    pub(super) fn send_batch(fd: RawFd, tx: &Slots, n: usize) -> usize {
        // SAFETY: all-zero is valid for these plain C structs.
        let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            let s = tx.slot(i);
            iov[i].iov_base = s.as_ptr() as *mut libc::c_void;
            iov[i].iov_len = s.len();
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        let (mut done, mut refused) = (0, 0);
        while done < n {
            // SAFETY: msgs[done..n] point at live iovecs over `tx.buf`; sendmmsg only reads them.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    msgs[done..].as_mut_ptr(),
                    (n - done) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r <= 0 {
                // The frame at `done` was refused (ENOBUFS, link down, ...): drop it, go on.
                done += 1;
                refused += 1;
                continue;
            }
            done += r as usize;
        }
        n - refused
    }
}
