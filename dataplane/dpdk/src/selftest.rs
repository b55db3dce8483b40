//! Self-tests on real ports, used by `carmine-osd selfcheck` and by the tests: they return a
//! report or a precise error, and never panic.

use std::time::{Duration, Instant};

use crate::{EthPort, PktMbufPool, RxBatch, TxBatch};

/// IEEE 802 "local experimental" ethertype: nothing else on a test link sends it.
pub const TEST_ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// What a frame exchange saw.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeReport {
    pub frames: u32,
    pub bytes: u64,
    /// Other frames seen on the receiving port (the kernel's IPv6 chatter on a fresh link).
    pub foreign_frames: u32,
    pub elapsed: Duration,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ExchangeError {
    #[error("mbuf pool exhausted")]
    NoMbuf,
    #[error("frame {seq}: payload differs from what was sent (byte {at})")]
    Corrupt { seq: u32, at: usize },
    #[error("frame {seq} received twice")]
    Duplicate { seq: u32 },
    #[error("only {got} of {want} frames arrived within {timeout:?}")]
    Lost {
        got: u32,
        want: u32,
        timeout: Duration,
    },
    #[error("port: {0}")]
    Port(String),
}

/// The frame with sequence number `seq` and `payload` bytes after the Ethernet header.
pub fn test_frame(dst: [u8; 6], src: [u8; 6], seq: u32, payload: usize, out: &mut [u8]) {
    out[0..6].copy_from_slice(&dst);
    out[6..12].copy_from_slice(&src);
    out[12..14].copy_from_slice(&TEST_ETHERTYPE);
    out[14..18].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in out[18..14 + payload].iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(31).wrapping_add(seq) as u8;
    }
}

/// Payload length of frame `seq`: 46..1446 bytes, so sizes vary across the run.
pub fn payload_len(seq: u32) -> usize {
    46 + (seq as usize * 37) % 1400
}

/// Sends `frames` frames out of `tx` queue 0 and receives them on `rx` queue 0, checking every
/// byte, every sequence number once. Bounded by `timeout`.
pub fn frame_exchange(
    tx: &EthPort,
    rx: &EthPort,
    pool: &PktMbufPool,
    frames: u32,
    timeout: Duration,
) -> Result<ExchangeReport, ExchangeError> {
    let src = tx.mac().map_err(|e| ExchangeError::Port(e.to_string()))?;
    let dst = rx.mac().map_err(|e| ExchangeError::Port(e.to_string()))?;
    let mut seen = vec![false; frames as usize];
    let (mut sent, mut got, mut foreign, mut bytes) = (0u32, 0u32, 0u32, 0u64);
    let mut txb = TxBatch::default();
    let mut rxb = RxBatch::default();
    let mut want = [0u8; 1514];
    let start = Instant::now();
    while got < frames {
        if start.elapsed() > timeout {
            return Err(ExchangeError::Lost {
                got,
                want: frames,
                timeout,
            });
        }
        while sent < frames && !txb.is_full() {
            let len = 14 + payload_len(sent);
            let mut m = pool.alloc().map_err(|_| ExchangeError::NoMbuf)?;
            let data = m
                .append(len)
                .map_err(|e| ExchangeError::Port(e.to_string()))?;
            test_frame(dst, src, sent, len - 14, data);
            // The batch has room: checked by is_full above.
            let _ = txb.push(m);
            sent += 1;
        }
        tx.tx_burst(0, &mut txb);
        if rx.rx_burst(0, &mut rxb) == 0 {
            std::thread::sleep(Duration::from_micros(100));
        }
        for m in rxb.drain() {
            let d = m.data();
            if d.len() < 18 || d[12..14] != TEST_ETHERTYPE {
                foreign += 1;
                continue;
            }
            let seq = u32::from_be_bytes([d[14], d[15], d[16], d[17]]);
            if seq >= frames || d.len() != 14 + payload_len(seq) {
                return Err(ExchangeError::Corrupt { seq, at: 14 });
            }
            test_frame(dst, src, seq, d.len() - 14, &mut want);
            if let Some(at) = d.iter().zip(&want[..d.len()]).position(|(a, b)| a != b) {
                return Err(ExchangeError::Corrupt { seq, at });
            }
            if std::mem::replace(&mut seen[seq as usize], true) {
                return Err(ExchangeError::Duplicate { seq });
            }
            got += 1;
            bytes += d.len() as u64;
        }
    }
    Ok(ExchangeReport {
        frames,
        bytes,
        foreign_frames: foreign,
        elapsed: start.elapsed(),
    })
}
