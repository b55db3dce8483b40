//! An AF_PACKET `phy::Device` for the CI topology and the bench: one raw socket bound to one
//! interface, one preallocated receive and one transmit frame buffer (no allocation per frame,
//! unlike smoltcp's `RawSocket`), frames this host sent itself filtered out, and send errors
//! (link down, ENOBUFS) counted as drops instead of panicking — a NIC drops, it does not abort.
//!
//! All unsafe code of the device is in the `sys` submodule.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Frame counters of the raw socket itself.
#[derive(Debug, Default, Clone, Copy)]
pub struct AfPacketStats {
    pub tx_errors: u64,
    pub rx_errors: u64,
    /// Frames other sockets on this host transmitted (seen on a tap, ignored).
    pub rx_outgoing_skipped: u64,
}

/// A raw Ethernet device on a Linux interface.
pub struct AfPacket {
    fd: OwnedFd,
    mtu: usize,
    rx: Vec<u8>,
    tx: Vec<u8>,
    stats: AfPacketStats,
}

impl AfPacket {
    /// Opens a raw socket on interface `ifname` (in the calling thread's network namespace).
    /// `mtu` is the IP MTU of the link (frames are `mtu + 14` bytes).
    pub fn open(ifname: &str, mtu: usize) -> std::io::Result<Self> {
        let fd = sys::open_bound(ifname)?;
        let frame = mtu + 14;
        Ok(Self {
            fd,
            mtu,
            rx: vec![0; frame],
            tx: vec![0; frame],
            stats: Default::default(),
        })
    }

    pub fn stats(&self) -> AfPacketStats {
        self.stats
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
    fd: RawFd,
    buf: &'a mut [u8],
    errors: &'a mut u64,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(self.buf.len());
        let r = f(&mut self.buf[..len]);
        if sys::send(self.fd, &self.buf[..len]).is_err() {
            *self.errors += 1;
        }
        r
    }
}

impl phy::Device for AfPacket {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _ts: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let fd = self.fd.as_raw_fd();
        loop {
            match sys::recv(fd, &mut self.rx) {
                Ok(Some((n, outgoing))) => {
                    if outgoing {
                        self.stats.rx_outgoing_skipped += 1;
                        continue;
                    }
                    let rx = RxToken {
                        frame: &self.rx[..n],
                    };
                    let tx = TxToken {
                        fd,
                        buf: &mut self.tx,
                        errors: &mut self.stats.tx_errors,
                    };
                    return Some((rx, tx));
                }
                Ok(None) => return None,
                Err(_) => {
                    self.stats.rx_errors += 1;
                    return None;
                }
            }
        }
    }

    fn transmit(&mut self, _ts: Instant) -> Option<TxToken<'_>> {
        let fd = self.fd.as_raw_fd();
        Some(TxToken {
            fd,
            buf: &mut self.tx,
            errors: &mut self.stats.tx_errors,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = self.mtu + 14;
        c
    }
}

mod sys {
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};

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
        // Big socket buffers: the shard drains in bursts. Failure only costs drops.
        let size: libc::c_int = 4 << 20;
        for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
            // SAFETY: passes a pointer to a live c_int and its size.
            let _ = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        Ok(owned)
    }

    /// One frame into `buf`: `Ok(None)` when none is queued; the flag says "sent by this host".
    pub(super) fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<(usize, bool)>> {
        // SAFETY: sockaddr_ll is plain old data; the kernel fills it.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` is valid for writes of its length; `from`/`len` are live and sized.
        let n = unsafe {
            libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        let n = n as usize;
        if n > buf.len() {
            // Larger than our MTU (offloads left on?): drop it as a NIC would.
            return Err(io::Error::other("oversized frame"));
        }
        Ok(Some((n, from.sll_pkttype == libc::PACKET_OUTGOING)))
    }

    pub(super) fn send(fd: RawFd, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is valid for reads of its length.
        let n = unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
