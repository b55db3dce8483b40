//! A `phy::Device` wrapper that counts frames and bytes in both directions, and caps the frames
//! one interface poll may take (`rx_left`): smoltcp's `poll` takes frames while the device has
//! any, and a DPDK queue refills as fast as a flood arrives, so without the cap one poll could
//! run for as long as the flood lasts while the shard's connections wait.

use std::cell::Cell;

use smoltcp::phy::{Device, DeviceCapabilities, PacketMeta, RxToken, TxToken};
use smoltcp::time::Instant;

#[derive(Debug, Default)]
pub(crate) struct FrameCounters {
    pub(crate) rx_frames: Cell<u64>,
    pub(crate) tx_frames: Cell<u64>,
    pub(crate) rx_bytes: Cell<u64>,
    pub(crate) tx_bytes: Cell<u64>,
}

fn bump(c: &Cell<u64>, n: u64) {
    c.set(c.get().wrapping_add(n));
}

pub(crate) struct Counted<D> {
    pub(crate) inner: D,
    pub(crate) counters: FrameCounters,
    /// Frames the current poll may still take (set before each poll).
    pub(crate) rx_left: usize,
}

pub(crate) struct CountedRx<'a, T> {
    token: T,
    c: &'a FrameCounters,
}

pub(crate) struct CountedTx<'a, T> {
    token: T,
    c: &'a FrameCounters,
}

impl<T: RxToken> RxToken for CountedRx<'_, T> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let c = self.c;
        self.token.consume(|frame| {
            bump(&c.rx_frames, 1);
            bump(&c.rx_bytes, frame.len() as u64);
            f(frame)
        })
    }

    fn meta(&self) -> PacketMeta {
        self.token.meta()
    }
}

impl<T: TxToken> TxToken for CountedTx<'_, T> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        bump(&self.c.tx_frames, 1);
        bump(&self.c.tx_bytes, len as u64);
        self.token.consume(len, f)
    }

    fn set_meta(&mut self, meta: PacketMeta) {
        self.token.set_meta(meta)
    }
}

impl<D: Device> Device for Counted<D> {
    type RxToken<'a>
        = CountedRx<'a, D::RxToken<'a>>
    where
        Self: 'a;
    type TxToken<'a>
        = CountedTx<'a, D::TxToken<'a>>
    where
        Self: 'a;

    fn receive(&mut self, ts: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if self.rx_left == 0 {
            return None;
        }
        let c = &self.counters;
        let got = self.inner.receive(ts);
        if got.is_some() {
            self.rx_left -= 1;
        }
        got.map(|(r, t)| (CountedRx { token: r, c }, CountedTx { token: t, c }))
    }

    fn transmit(&mut self, ts: Instant) -> Option<Self::TxToken<'_>> {
        let c = &self.counters;
        self.inner.transmit(ts).map(|t| CountedTx { token: t, c })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.inner.capabilities()
    }
}

impl<D: crate::NetDevice> crate::NetDevice for Counted<D> {
    fn flush(&mut self) -> usize {
        self.inner.flush()
    }

    fn has_pending(&self) -> bool {
        self.inner.has_pending()
    }

    fn owns_local_port(&self, port: u16) -> bool {
        self.inner.owns_local_port(port)
    }
}
