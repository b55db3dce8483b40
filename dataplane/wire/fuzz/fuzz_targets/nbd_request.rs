//! NBD transmission requests (`carmine-nbd-proto`): a stream of request headers decoded and
//! validated as the server does, against an export size taken from the input. Must never
//! panic; a decoded header re-encodes to the same bytes; a request that validates lies
//! inside the export and within the block size limit.
//!
//! Input: 8 bytes export size (big-endian), 1 byte (bit 0: structured replies negotiated),
//! then the stream. A WRITE's payload is skipped as the server would read it.
#![no_main]

use carmine_nbd_proto::{Command, ExportLimits, RequestHeader, MAX_BLOCK_SIZE, REQUEST_HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&data[..8]);
    let lim = ExportLimits {
        size: u64::from_be_bytes(size),
        max_block: MAX_BLOCK_SIZE,
        structured: data[8] & 1 != 0,
    };
    let mut rest = &data[9..];
    while rest.len() >= REQUEST_HEADER_LEN {
        let Ok(req) = RequestHeader::decode(rest) else {
            return; // protocol violation: the server closes
        };
        assert_eq!(
            &RequestHeader::encode(&req)[..],
            &rest[..REQUEST_HEADER_LEN]
        );
        rest = &rest[REQUEST_HEADER_LEN..];
        let Ok(payload) = req.payload_len(lim.max_block) else {
            return;
        };
        assert!(payload <= MAX_BLOCK_SIZE as usize);
        if req.validate(&lim).is_ok() {
            if matches!(
                req.command,
                Command::Read | Command::Write | Command::Trim | Command::WriteZeroes
            ) {
                assert!(req.length > 0);
                let end = req
                    .offset
                    .checked_add(u64::from(req.length))
                    .expect("no overflow");
                assert!(end <= lim.size);
            }
            if matches!(req.command, Command::Read | Command::Write) {
                assert!(req.length <= MAX_BLOCK_SIZE);
            }
        }
        rest = &rest[payload.min(rest.len())..];
    }
});
