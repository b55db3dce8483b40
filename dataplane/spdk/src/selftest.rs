//! Self-tests on real bdevs, used by `carmine-osd selfcheck` and the tests: they return a report
//! or a precise error, and never panic.

use std::time::{Duration, Instant};

use crate::{reap, Bdev, DmaBuf, IoKind, Spdk, SpdkError};

/// A 4 KiB-style pattern that differs per offset and per seed.
pub fn pattern(offset: u64, seed: u8, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        *b = (i as u64 ^ (offset >> 9)).wrapping_mul(2654435761) as u8 ^ seed;
    }
}

/// Why a self-test failed.
#[derive(Debug, thiserror::Error)]
pub enum SelftestError {
    #[error(transparent)]
    Spdk(#[from] SpdkError),
    #[error("{kind:?} I/O with token {token} failed on the device")]
    IoFailed { kind: IoKind, token: u64 },
    #[error("read back at offset {offset}: byte {at} differs from what was written")]
    Mismatch { offset: u64, at: usize },
}

/// Polls `spdk`'s thread until one completion is reaped; a failed I/O is an error.
fn wait_one(spdk: &Spdk) -> Result<crate::Completion, SelftestError> {
    let mut got = None;
    spdk.thread()
        .poll_until(Duration::from_secs(10), "I/O completion", || {
            got = got.take().or_else(reap);
            got.is_some()
        })?;
    // poll_until returned Ok only once `got` is set.
    let c = got.ok_or(SpdkError::Timeout(
        Duration::from_secs(10),
        "I/O completion",
    ))?;
    if !c.ok {
        return Err(SelftestError::IoFailed {
            kind: c.kind,
            token: c.token,
        });
    }
    Ok(c)
}

/// Writes a distinct `len`-byte pattern at each offset (all in flight at once), flushes, reads
/// each back and compares. Returns the number of bytes verified.
pub fn pattern_roundtrip(
    spdk: &Spdk,
    bdev: &Bdev,
    offsets: &[u64],
    len: usize,
    seed: u8,
) -> Result<u64, SelftestError> {
    let align = bdev.info().buf_align.max(4096);
    for (i, &off) in offsets.iter().enumerate() {
        let mut buf = DmaBuf::new(len, align)?;
        pattern(off, seed, buf.as_mut_slice());
        bdev.write(off, len as u64, buf, i as u64)
            .map_err(|(e, _)| e)?;
    }
    for _ in offsets {
        wait_one(spdk)?;
    }
    bdev.flush(u64::MAX)?;
    wait_one(spdk)?;
    let mut want = vec![0u8; len];
    for (i, &off) in offsets.iter().enumerate() {
        bdev.read(off, len as u64, DmaBuf::new(len, align)?, i as u64)
            .map_err(|(e, _)| e)?;
        let c = wait_one(spdk)?;
        let off = offsets[c.token as usize];
        pattern(off, seed, &mut want);
        let got = c.buf.as_ref().map(|b| &b.as_slice()[..len]).unwrap_or(&[]);
        if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
            return Err(SelftestError::Mismatch { offset: off, at });
        }
    }
    Ok((offsets.len() * len) as u64)
}

/// Figures of a random I/O run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IoRun {
    pub ops: u64,
    pub iops: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Random `block`-sized I/O (writes when `write`, else reads) over the first `span` bytes of the
/// bdev at queue depth `qd` for `duration`, completions reaped by polling the SPDK thread.
pub fn random_io(
    spdk: &Spdk,
    bdev: &Bdev,
    write: bool,
    block: usize,
    qd: usize,
    span: u64,
    duration: Duration,
) -> Result<IoRun, SelftestError> {
    let blocks = (span.min(bdev.info().size_bytes()) / block as u64).max(1);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        // splitmix64: enough to spread offsets, no dependency.
        rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| SpdkError::Env(e.to_string()))?;
    let mut started = vec![Instant::now(); qd];
    let align = bdev.info().buf_align.max(4096);
    let submit = |buf: DmaBuf, slot: usize, off: u64| {
        if write {
            bdev.write(off, block as u64, buf, slot as u64)
        } else {
            bdev.read(off, block as u64, buf, slot as u64)
        }
        .map_err(|(e, _)| SelftestError::Spdk(e))
    };
    for (slot, t) in started.iter_mut().enumerate() {
        *t = Instant::now();
        submit(
            DmaBuf::new(block, align)?,
            slot,
            (next() % blocks) * block as u64,
        )?;
    }
    let start = Instant::now();
    let mut ops = 0u64;
    let mut inflight = qd;
    while inflight > 0 {
        spdk.poll();
        while let Some(c) = reap() {
            if !c.ok {
                return Err(SelftestError::IoFailed {
                    kind: c.kind,
                    token: c.token,
                });
            }
            let slot = c.token as usize;
            let _ = hist.record(started[slot].elapsed().as_nanos() as u64);
            ops += 1;
            inflight -= 1;
            if start.elapsed() < duration {
                if let Some(buf) = c.buf {
                    started[slot] = Instant::now();
                    submit(buf, slot, (next() % blocks) * block as u64)?;
                    inflight += 1;
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(IoRun {
        ops,
        iops: ops as f64 / secs,
        p50_us: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: hist.value_at_quantile(0.99) as f64 / 1000.0,
    })
}
