//! Encode/decode throughput of a 4 KiB write op (client → primary) and of a 4 KiB replica
//! write (primary → replica): `cargo bench -p carmine-wire`.
//!
//! A plain timing loop (no criterion: it would double this crate's build time for one number).
//! Prints ops/s and GB/s for encode (copying, and head-only with the data crc'd in place),
//! frame decode (header + both crcs) and full decode
//! (frame + message parse). Runs about a second in total.

use std::hint::black_box;
use std::time::{Duration, Instant};

use carmine_wire::{
    decode_frame, Decoded, Encoder, Epoch, Limits, Message, Op, OpRequest, PgId, PoolId,
    RepMutation, RepOp, ReqId, Version, VERSION_MAX,
};

const ITERS: u32 = 200_000;

fn report(name: &str, elapsed: Duration, bytes_per_op: usize) {
    let secs = elapsed.as_secs_f64();
    let ops = f64::from(ITERS) / secs;
    println!(
        "{name:<28} {:>8.0} ns/op {:>12.0} ops/s {:>7.2} GB/s",
        secs * 1e9 / f64::from(ITERS),
        ops,
        ops * bytes_per_op as f64 / 1e9
    );
}

fn main() {
    let limits = Limits::DEFAULT;
    let data = vec![0xa5u8; 4096];
    let object = "rbd_data.1234.0000000000000001";
    let op = Message::OpRequest(OpRequest {
        pool: PoolId(1),
        pg: PgId(42),
        epoch: Epoch(7),
        op: Op::Write {
            object,
            offset: 8192,
            data: &data,
        },
    });
    run("4 KiB write op", &op, limits);
    let rep = Message::RepOp(RepOp {
        pool: PoolId(1),
        pg: PgId(42),
        epoch: Epoch(7),
        interval_since: Epoch(5),
        version: Version {
            epoch: Epoch(7),
            seq: 123_456,
        },
        reqid: ReqId {
            client: "client.admin",
            tid: 987_654,
        },
        op: RepMutation::Write {
            object,
            offset: 8192,
            data: &data,
        },
    });
    println!();
    run("4 KiB replica write (RepOp)", &rep, limits);
}

/// Encode (copying and head-only), frame decode and full decode of `msg`, `ITERS` times each.
fn run(what: &str, msg: &Message<'_>, limits: Limits) {
    let enc = Encoder::new(VERSION_MAX, limits);
    let mut buf = vec![0u8; enc.frame_len(msg)];
    let len = enc.encode(1, msg, &mut buf).expect("encode");
    println!("{what}: frame of {len} bytes, {ITERS} iterations each");

    let t = Instant::now();
    for tid in 0..u64::from(ITERS) {
        black_box(enc.encode(tid, black_box(msg), &mut buf).expect("encode"));
    }
    report("encode", t.elapsed(), len);

    let mut head = [0u8; 256];
    let t = Instant::now();
    for tid in 0..u64::from(ITERS) {
        black_box(
            enc.encode_head(tid, black_box(msg), &mut head)
                .expect("encode"),
        );
    }
    report("encode_head (zero-copy)", t.elapsed(), len);

    let t = Instant::now();
    for _ in 0..ITERS {
        match decode_frame(black_box(&buf), &limits).expect("decode") {
            Decoded::Frame { frame, .. } => {
                black_box(frame);
            }
            Decoded::NeedMore { .. } => unreachable!("whole frame"),
        }
    }
    report("decode frame (crc)", t.elapsed(), len);

    let t = Instant::now();
    for _ in 0..ITERS {
        if let Decoded::Frame { frame, .. } =
            decode_frame(black_box(&buf), &limits).expect("decode")
        {
            black_box(frame.message(&limits).expect("parse"));
        }
    }
    report("decode frame + message", t.elapsed(), len);
}
