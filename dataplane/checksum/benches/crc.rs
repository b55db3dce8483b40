//! ns per CRC-32C of a buffer, this crate beside the crc32c crate (its previous
//! implementation), for the sizes the data path checksums: a frame header, a small op, a 4 KiB
//! block, a 64 KiB chunk. Best of 5 runs each (the machine is shared).
//!
//!     cargo bench -p carmine-checksum

use std::hint::black_box;
use std::time::Instant;

fn best_ns(n: u64, mut f: impl FnMut(u64) -> u32) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let mut acc = 0u32;
        for i in 0..n {
            acc = acc.wrapping_add(f(i));
        }
        black_box(acc);
        best = best.min(t.elapsed().as_nanos() as f64 / n as f64);
    }
    best
}

fn main() {
    // 64 distinct buffers, so the loop does not run on one line of L1 only.
    let bufs: Vec<Vec<u8>> = (0..64u32)
        .map(|i| {
            (0..65_536u32)
                .map(|j| (j.wrapping_mul(2_654_435_761).wrapping_add(i) >> 7) as u8)
                .collect()
        })
        .collect();
    println!(
        "{:>8} {:>12} {:>12} {:>8}",
        "bytes", "crc32c ns", "carmine ns", "ratio"
    );
    for len in [28usize, 64, 512, 4096, 65_536] {
        let n = (100_000_000 / (len as u64 + 64)).max(10_000);
        let old = best_ns(n, |i| crc32c::crc32c(&bufs[(i & 63) as usize][..len]));
        let new = best_ns(n, |i| {
            carmine_checksum::crc32c(&bufs[(i & 63) as usize][..len])
        });
        println!("{len:>8} {old:>12.1} {new:>12.1} {:>8.2}", old / new);
    }
}
