//! Copying into cold memory with streaming stores: this crate's one use of `unsafe`, kept in
//! a module of its own.
//!
//! A spare buffer an engine hands out for write data ([`crate::SpareBufs`]) is usually cold:
//! a page that a write replaced, last touched long ago. An ordinary copy into it first reads
//! every destination line from memory (to own it), then overwrites it: half the traffic is
//! reads of bytes about to be thrown away, and the copy waits for them. Streaming
//! (non-temporal) stores write whole lines without reading them. A random 4 KiB destination
//! in a 64 MiB working set here: about 330-400 ns instead of 530-630 ns (`cargo bench -p
//! carmine-objectstore --bench stream_copy`); in the memif OSD, the copy into the write's buffer was 11-14%
//! of a memstore write's CPU.
//!
//! The bytes do not stay in the cache, which is the point for data the shard hands to its
//! store and does not read again soon; small copies go the ordinary way.

/// Below this, an ordinary copy: a few lines, and the fence would cost more than it saves.
const MIN_STREAM: usize = 2048;

/// Appends `src` to `dst`, as `dst.extend_from_slice(src)` does; a large `src` with
/// streaming stores (see the module docs).
pub fn extend_streaming(dst: &mut Vec<u8>, src: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    if src.len() >= MIN_STREAM {
        dst.reserve(src.len());
        let start = dst.len();
        // SAFETY: `reserve` made room for `src.len()` bytes after `start`, so `[at, at +
        // src.len())` is inside `dst`'s allocation and does not overlap `src` (a shared
        // borrow of other memory); every byte of it is written below before `set_len` makes
        // it part of the vector.
        unsafe {
            let at = dst.as_mut_ptr().add(start);
            stream_copy(at, src);
            dst.set_len(start + src.len());
        }
        return;
    }
    dst.extend_from_slice(src);
}

/// Copies `src` to `dst`: an ordinary copy up to `dst`'s first 16-byte boundary, streaming
/// 64-byte steps, a store fence, then an ordinary copy of the tail.
///
/// # Safety
/// `dst` must be valid for writes of `src.len()` bytes and must not overlap `src`.
#[cfg(target_arch = "x86_64")]
unsafe fn stream_copy(dst: *mut u8, src: &[u8]) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    let len = src.len();
    let head = dst.align_offset(16).min(len);
    let body = (len - head) / 64 * 64;
    let s = src.as_ptr();
    // SAFETY: (for the whole block) the caller guarantees `dst..dst + len` is writable and
    // disjoint from `src`; every offset below is under `len`; the streamed addresses
    // `dst + head + i` are 16-byte aligned, as `_mm_stream_si128` requires; SSE2 is part of
    // x86-64. The fence orders the streaming stores before any later access to this memory,
    // which Rust's memory model requires of non-temporal stores.
    unsafe {
        std::ptr::copy_nonoverlapping(s, dst, head);
        let (s_body, d_body) = (s.add(head), dst.add(head));
        for i in (0..body).step_by(64) {
            let from = s_body.add(i).cast::<__m128i>();
            let to = d_body.add(i).cast::<__m128i>();
            let a = _mm_loadu_si128(from);
            let b = _mm_loadu_si128(from.add(1));
            let c = _mm_loadu_si128(from.add(2));
            let d = _mm_loadu_si128(from.add(3));
            _mm_stream_si128(to, a);
            _mm_stream_si128(to.add(1), b);
            _mm_stream_si128(to.add(2), c);
            _mm_stream_si128(to.add(3), d);
        }
        _mm_sfence();
        let done = head + body;
        std::ptr::copy_nonoverlapping(s.add(done), dst.add(done), len - done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The same bytes as `extend_from_slice`, at any starting length and alignment, for
        /// lengths on both sides of the threshold.
        #[test]
        fn same_as_extend_from_slice(
            prefix in proptest::collection::vec(any::<u8>(), 0..70),
            data in proptest::collection::vec(any::<u8>(), 0..9000),
            skip in 0usize..64,
        ) {
            let src = &data[skip.min(data.len())..];
            let mut want = prefix.clone();
            want.extend_from_slice(src);
            let mut got = prefix.clone();
            extend_streaming(&mut got, src);
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn a_page_into_a_spare_buffer() {
        let src: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut dst = Vec::with_capacity(4096);
        extend_streaming(&mut dst, &src);
        assert_eq!(dst, src);
        assert_eq!(
            dst.capacity(),
            4096,
            "no reallocation when the room is there"
        );
    }
}
