//! The committed seeds of the NBD fuzz targets (`dataplane/wire/fuzz/seeds/nbd_request`,
//! `nbd_option`): generated here, checked to be exactly what is committed (an encoding change
//! fails this test until they are regenerated) and to be valid inputs. To regenerate:
//!
//!     CARMINE_WRITE_FUZZ_SEEDS=1 cargo test -p carmine-nbd-proto --test fuzz_seeds

use std::path::PathBuf;

use carmine_nbd_proto::*;

fn seeds_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../dataplane/wire/fuzz/seeds")
        .join(target)
}

fn req(out: &mut Vec<u8>, command: Command, flags: u16, offset: u64, length: u32) {
    let r = Request {
        cookie: out.len() as u64,
        command,
        flags,
        offset,
        length,
    };
    out.extend_from_slice(&RequestHeader::encode(&r));
    if command == Command::Write {
        out.resize(out.len() + length as usize, 0xab);
    }
}

fn request_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let stream = |size: u64, structured: bool, f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = size.to_be_bytes().to_vec();
        v.push(u8::from(structured));
        f(&mut v);
        v
    };
    vec![
        (
            "rw-simple",
            stream(1 << 20, false, &|v| {
                req(v, Command::Write, 0, 0, 4096);
                req(v, Command::Read, 0, 0, 4096);
                req(v, Command::Flush, 0, 0, 0);
                req(v, Command::Trim, 0, 4096, 8192);
                req(v, Command::WriteZeroes, CMD_FLAG_NO_HOLE, 0, 512);
                req(v, Command::Disc, 0, 0, 0);
            }),
        ),
        (
            "structured-df-fua",
            stream(1 << 30, true, &|v| {
                req(v, Command::Read, CMD_FLAG_DF, 1 << 20, 65536);
                req(v, Command::Write, CMD_FLAG_FUA, 512, 100);
            }),
        ),
        (
            "out-of-range",
            stream(4096, false, &|v| {
                req(v, Command::Read, 0, 4000, 200);
                req(v, Command::Write, 0, 4095, 0);
                req(v, Command::Read, 0, u64::MAX, 1);
            }),
        ),
    ]
}

fn option(out: &mut Vec<u8>, opt: u32, payload: &[u8]) {
    let h = OptionHeader {
        option: opt,
        length: payload.len() as u32,
    };
    out.extend_from_slice(&h.encode());
    out.extend_from_slice(payload);
}

fn info(name: &str, infos: &[u16]) -> Vec<u8> {
    InfoRequest {
        name,
        infos: infos.to_vec(),
    }
    .encode()
}

fn option_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let flags = |step: u8, f: u32| {
        let mut v = vec![step];
        v.extend_from_slice(&f.to_be_bytes());
        v
    };
    let mut go = flags(7, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
    option(&mut go, OPT_STRUCTURED_REPLY, &[]);
    option(&mut go, OPT_LIST, &[]);
    option(
        &mut go,
        OPT_INFO,
        &info("rbd/a", &[INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE]),
    );
    option(&mut go, OPT_GO, &info("", &[INFO_BLOCK_SIZE]));
    let mut export_name = flags(63, FLAG_C_FIXED_NEWSTYLE);
    option(&mut export_name, OPT_EXPORT_NAME, b"rbd/b");
    let mut errors = flags(1, FLAG_C_FIXED_NEWSTYLE);
    option(&mut errors, OPT_STARTTLS, &[]);
    option(&mut errors, 42, b"x");
    option(&mut errors, OPT_GO, &info("rbd/none", &[]));
    option(&mut errors, OPT_GO, &[0, 0, 0, 9]);
    option(&mut errors, OPT_ABORT, &[]);
    // FORCEDTLS (mode 2 in the top bits): refused, then STARTTLS, then over TLS.
    let mut tls = flags(0x80 | 5, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
    option(&mut tls, OPT_LIST, &[]);
    option(&mut tls, OPT_GO, &info("rbd/a", &[]));
    option(&mut tls, OPT_STARTTLS, &[]);
    option(&mut tls, OPT_STRUCTURED_REPLY, &[]);
    option(&mut tls, OPT_STARTTLS, &[]);
    option(&mut tls, OPT_GO, &info("rbd/a", &[INFO_BLOCK_SIZE]));
    vec![
        ("go-structured", go),
        ("tls-forced-go", tls),
        ("export-name", export_name),
        ("errors-abort", errors),
    ]
}

fn exports() -> Vec<ExportInfo> {
    ["rbd/a", "rbd/b"]
        .iter()
        .map(|n| ExportInfo {
            name: n.to_string(),
            description: String::new(),
            size: 1 << 30,
            flags: FLAG_HAS_FLAGS,
        })
        .collect()
}

#[test]
fn seeds_are_valid_inputs() {
    for (name, s) in request_seeds() {
        let lim = ExportLimits {
            size: u64::from_be_bytes(s[..8].try_into().unwrap()),
            max_block: MAX_BLOCK_SIZE,
            structured: s[8] == 1,
        };
        let mut rest = &s[9..];
        let mut n = 0;
        while !rest.is_empty() {
            let r = RequestHeader::decode(rest).unwrap_or_else(|e| panic!("{name}: {e}"));
            let valid = r.validate(&lim).is_ok();
            assert_eq!(valid, name != "out-of-range", "{name}: {r:?}");
            rest = &rest[REQUEST_HEADER_LEN + r.payload_len(MAX_BLOCK_SIZE).unwrap()..];
            n += 1;
        }
        assert!(n >= 2);
    }
    for (name, s) in option_seeds() {
        let mode = match s[0] >> 6 {
            0 => TlsMode::NoTls,
            1 => TlsMode::Optional,
            _ => TlsMode::Required,
        };
        let mut h = Handshake::with_tls(exports(), mode);
        let mut rest = &s[1..];
        let (used, step) = loop {
            match h.advance(rest).unwrap() {
                (used, Step::StartTls) => {
                    rest = &rest[used..];
                    h.tls_started();
                }
                r => break r,
            }
        };
        assert_eq!(used, rest.len(), "{name}");
        assert_eq!(h.is_tls(), name.starts_with("tls"), "{name}");
        let want_go = name != "errors-abort";
        assert_eq!(matches!(step, Step::Transmission(_)), want_go, "{name}");
        assert_eq!(step == Step::Aborted, !want_go, "{name}");
    }
}

#[test]
fn committed_seeds_are_current() {
    let write = std::env::var_os("CARMINE_WRITE_FUZZ_SEEDS").is_some();
    for (target, seeds) in [
        ("nbd_request", request_seeds()),
        ("nbd_option", option_seeds()),
    ] {
        let dir = seeds_dir(target);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
        }
        for (name, bytes) in seeds {
            let p = dir.join(name);
            if write {
                std::fs::write(&p, &bytes).unwrap();
            } else {
                let got = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                assert!(
                    got == bytes,
                    "{} is stale: CARMINE_WRITE_FUZZ_SEEDS=1 cargo test -p carmine-nbd-proto --test fuzz_seeds",
                    p.display()
                );
            }
        }
    }
}
