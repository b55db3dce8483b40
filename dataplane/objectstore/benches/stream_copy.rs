//! ns per 4 KiB copy into a cold destination: `extend_streaming` beside `extend_from_slice`,
//! the way the OSD fills a store's spare page with a write's data. 16,384 destination buffers
//! (64 MiB, more than the caches) filled in a random order, the caches flushed by a 128 MiB
//! sweep before each pass; best of 4 passes each, alternating.
//!
//!     cargo bench -p carmine-objectstore --bench stream_copy

use std::hint::black_box;
use std::time::Instant;

use carmine_objectstore::extend_streaming;

const BUFS: usize = 16_384;
const LEN: usize = 4096;

fn flush_caches() {
    let sweep = vec![1u8; 128 << 20];
    black_box(&sweep);
}

fn pass(bufs: &mut [Vec<u8>], order: &[usize], src: &[u8], stream: bool) -> f64 {
    flush_caches();
    let t = Instant::now();
    for &i in order {
        let b = &mut bufs[i];
        b.clear();
        if stream {
            extend_streaming(b, src);
        } else {
            b.extend_from_slice(src);
        }
    }
    black_box(&bufs[order[0]]);
    t.elapsed().as_nanos() as f64 / order.len() as f64
}

fn main() {
    let mut bufs: Vec<Vec<u8>> = (0..BUFS).map(|i| vec![i as u8; LEN]).collect();
    let src: Vec<u8> = (0..LEN as u32).map(|i| (i * 31 + 7) as u8).collect();
    // A fixed shuffle (xorshift), so runs compare.
    let mut order: Vec<usize> = (0..BUFS).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..BUFS).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let (mut plain, mut streamed) = (f64::MAX, f64::MAX);
    for _ in 0..4 {
        plain = plain.min(pass(&mut bufs, &order, &src, false));
        streamed = streamed.min(pass(&mut bufs, &order, &src, true));
    }
    assert!(
        bufs.iter().all(|b| b[..] == src[..]),
        "every buffer holds the data"
    );
    println!(
        "4 KiB into a cold buffer: extend_from_slice {plain:.0} ns, extend_streaming {streamed:.0} ns, ratio {:.2}",
        plain / streamed
    );
}
