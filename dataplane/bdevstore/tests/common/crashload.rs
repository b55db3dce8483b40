//! The crash test's workload, shared by the child (`src/bin/crash_child.rs`, and the SPDK
//! crash test re-executed as its own child) and the checking parent (`crashkit.rs`): the
//! deterministic transaction stream and the loop that streams it into a store, reporting each
//! submit ("S i") and each commit completion ("A i") on stdout.
#![allow(dead_code)]

use std::io::Write;

use carmine_bdevstore::BdevStore;
use carmine_objectstore::device::BlockDevice;
use carmine_objectstore::{CollectionId, ObjectId, ObjectStore, Op, Transaction};

use super::common::{always_cleaning, busy_opts};

pub const C: CollectionId = CollectionId(9);
pub const ENV_DEV: &str = "CARMINE_CRASH_DEV";
pub const ENV_ROUND: &str = "CARMINE_CRASH_ROUND";

/// Transaction `i` of round `r`: deterministic, never fails validation (when applied after
/// transactions `0..i` of the round), touches several objects (so a half-applied transaction
/// would show) and removes one or two.
pub fn txn(r: u64, i: u64) -> Transaction {
    let a = ObjectId::from(format!("o{}", (i * 7 + r) % 11).as_str());
    let b = ObjectId::from(format!("o{}", (i * 3 + r + 5) % 11).as_str());
    let len = 1000 + (i % 5) as usize * 1500;
    let data: Vec<u8> = (0..len)
        .map(|j| (r * 131 + i * 17 + j as u64) as u8)
        .collect();
    let mut t = Transaction::new();
    t.write(C, &a, ((i * 13) % 16) * 1024, &data);
    t.set_attr(C, &b, "last", &[r as u8, i as u8, (i >> 8) as u8]);
    t.push(Op::OmapSet {
        cid: C,
        oid: b.clone(),
        entries: [(
            format!("k{}", i % 20).as_bytes().into(),
            i.to_le_bytes().as_slice().into(),
        )]
        .into_iter()
        .collect(),
    });
    if i % 9 == 4 {
        t.push(Op::Truncate {
            cid: C,
            oid: a.clone(),
            size: 3000 + (i % 4) * 2000,
        });
    }
    if i % 13 == 6 {
        t.push(Op::Zero {
            cid: C,
            oid: b.clone(),
            off: 512,
            len: 4096,
        });
    }
    if i % 11 == 8 {
        // `b` exists (set_attr above created it if needed). Later transactions recreate it with
        // a new attribute and omap key only: its old data, attributes and omap must not return.
        t.push(Op::Remove { cid: C, oid: b });
    }
    // Every transaction creates a short-lived object and removes the one created two
    // transactions before (which exists then: transactions apply in submission order), so a
    // recovery that loses a remove, or brings an object back (replay, checkpoint, cleaner),
    // shows as an object too many.
    let data: Vec<u8> = (0..600).map(|j| (r + i + j) as u8).collect();
    t.write(C, &short_lived(r, i), 0, &data);
    t.set_attr(C, &short_lived(r, i), "born", &i.to_le_bytes());
    if i >= 2 {
        t.push(Op::Remove {
            cid: C,
            oid: short_lived(r, i - 2),
        });
    }
    t
}

/// The object that transaction `i` of round `r` creates and transaction `i + 2` removes.
pub fn short_lived(r: u64, i: u64) -> ObjectId {
    ObjectId::from(format!("x{r}.{i}").as_str())
}

/// The child's request, when this process was started as one: (device path, round).
pub fn child_request() -> Option<(String, u64)> {
    let (Ok(path), Ok(round)) = (std::env::var(ENV_DEV), std::env::var(ENV_ROUND)) else {
        return None;
    };
    Some((path, round.parse().unwrap()))
}

/// The child: streams transactions into `dev` until killed (or 100,000 transactions).
pub fn child_loop<D: BlockDevice>(dev: D, round: u64) {
    // Odd rounds: the cleaner never stops, so kills land mid-relocation too.
    let opts = if round % 2 == 1 {
        always_cleaning(0)
    } else {
        busy_opts(0)
    };
    let mut s = BdevStore::mount(dev, opts).unwrap();
    let mut out = std::io::stdout().lock();
    let mut inflight = std::collections::VecDeque::new();
    let mut done = Vec::new();
    let mut next = 0u64;
    while next < 100_000 {
        // Keep up to 4 transactions queued so records batch several of them.
        while inflight.len() < 4 {
            writeln!(out, "S {next}").unwrap();
            out.flush().unwrap();
            inflight.push_back((s.submit(txn(round, next)), next));
            next += 1;
        }
        s.poll(&mut done);
        for c in done.drain(..) {
            let pos = inflight.iter().position(|(t, _)| *t == c.ticket).unwrap();
            let (_, i) = inflight.remove(pos).unwrap();
            c.result.unwrap();
            writeln!(out, "A {i}").unwrap();
            out.flush().unwrap();
        }
    }
}
