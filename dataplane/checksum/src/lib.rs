//! CRC-32C (Castagnoli, the iSCSI/Ceph polynomial): the checksum of every wire frame and of
//! every on-disk record and data chunk.
//!
//! One crate so that the wire, the stores and the tools agree on one implementation, and so
//! that the implementation is chosen in one place. It is `crc-fast` (carry-less multiply
//! folding, the widest vector unit the CPU has, detected at run time): on the AMD EPYC
//! (Zen 4) machines here it checks a 4 KiB block in about 90 ns where the crc32c crate's SSE4.2
//! loop takes about 210 ns (`cargo bench -p carmine-checksum`). Every write and read of a
//! 4 KiB object pays one such check on the wire and one in bdevstore.
//!
//! Invariant: the values are bit-for-bit the standard CRC-32C (reflected, init and xorout
//! `0xffff_ffff`), so data written by an older build verifies; the tests hold this against the
//! crc32c crate and the RFC 3720 vectors.

use crc_fast::{CrcAlgorithm, Digest};

/// The CRC-32C of `data`.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(data)
}

/// The CRC-32C of the concatenation `a ++ data`, given `crc = crc32c(a)`: a checksum carried
/// over pieces (a frame's payload and its tail, a stream read in chunks).
#[inline]
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    // crc-fast's state is the register before the final xor: the complement of a finished CRC.
    let mut d = Digest::new_with_init_state(CrcAlgorithm::Crc32Iscsi, u64::from(!crc));
    d.update(data);
    d.finalize() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 3720 appendix B.4 and the catalogue's check value.
    #[test]
    fn known_vectors() {
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46dd_794e);
        let descending: Vec<u8> = (0..32).rev().collect();
        assert_eq!(crc32c(&descending), 0x113f_db5c);
        assert_eq!(crc32c_append(crc32c(b"1234"), b"56789"), 0xe306_9283);
        assert_eq!(crc32c_append(0, b""), 0);
    }

    proptest! {
        /// Every length class of the vector paths (short tails, one fold block, many).
        #[test]
        fn matches_crc32c_crate(data in proptest::collection::vec(any::<u8>(), 0..20_000)) {
            prop_assert_eq!(crc32c(&data), crc32c::crc32c(&data));
        }

        #[test]
        fn append_is_crc_of_concatenation(
            data in proptest::collection::vec(any::<u8>(), 0..9_000),
            cut in any::<prop::sample::Index>(),
        ) {
            let k = cut.index(data.len() + 1);
            let (a, b) = data.split_at(k);
            prop_assert_eq!(crc32c_append(crc32c(a), b), crc32c::crc32c(&data));
            prop_assert_eq!(crc32c_append(crc32c(a), b), crc32c::crc32c_append(crc32c::crc32c(a), b));
        }
    }
}
