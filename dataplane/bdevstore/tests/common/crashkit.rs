//! The crash-consistency driver, generic over the device: the child side streams transactions
//! and reports each submit ("S i") and each commit completion ("A i") on stdout; the parent
//! side re-executes the test binary as the child, SIGKILLs it at a different point each round,
//! then checks with fsck and a remount that every acknowledged transaction is fully present and
//! that the state equals the model after exactly some prefix of the submitted transactions (so
//! nothing is half-applied). Used with a file (`crash.rs`) and an SPDK aio bdev
//! (`spdk_crash.rs`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use carmine_bdevstore::{format, fsck, BdevStore};
use carmine_objectstore::device::BlockDevice;
use carmine_objectstore::testkit::{compare, Model};
use carmine_objectstore::{drive, CollectionId, ObjectId, ObjectStore, Op, Transaction};

use super::common::{always_cleaning, busy_opts, small_format};

pub const C: CollectionId = CollectionId(9);
pub const ENV_DEV: &str = "CARMINE_CRASH_DEV";
pub const ENV_ROUND: &str = "CARMINE_CRASH_ROUND";

/// Transaction `i` of round `r`: deterministic, never fails validation, touches two objects
/// (so a half-applied transaction would show).
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
        entries: vec![(
            format!("k{}", i % 20).into_bytes(),
            i.to_le_bytes().to_vec(),
        )],
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
            oid: b,
            off: 512,
            len: 4096,
        });
    }
    t
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

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The parent: formats through `open()`, then runs `rounds` kill rounds of the child test
/// `child_test` (this binary re-executed with `--exact child_test`, `ENV_DEV` = `path`), checking
/// the device through `open()` after each. Asserts at least `min_points` distinct kill points.
pub fn run_rounds<D: BlockDevice>(
    child_test: &str,
    path: &std::path::Path,
    rounds: u64,
    min_points: usize,
    mut open: impl FnMut() -> D,
) {
    let mut d = open();
    format(&mut d, &small_format()).unwrap();
    let mut s = BdevStore::mount(d, busy_opts(0)).unwrap();
    let mut setup = Transaction::new();
    setup.create_collection(C);
    drive::commit(&mut s, setup.clone()).unwrap();
    s.shutdown().unwrap();
    let mut model = Model::default();
    model.apply(&setup).unwrap();

    let exe = std::env::current_exe().unwrap();
    let mut kill_points = std::collections::BTreeSet::new();
    for round in 0..rounds {
        // Kill after this many acks (0: right after the first submit, mid first record).
        let kill_after = (round * 29) % 150;
        let child = Command::new(&exe)
            .args(["--exact", child_test, "--nocapture", "--test-threads=1"])
            .env(ENV_DEV, path)
            .env(ENV_ROUND, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let stdout = child.0.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut acked, mut submitted): (Option<u64>, Option<u64>) = (None, None);
        let mut acks = 0u64;
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("child stalled");
            let (kind, n) = line.split_once(' ').unwrap_or(("?", "0"));
            let n: u64 = n.trim().parse().unwrap_or(0);
            match kind {
                "S" => submitted = Some(n),
                "A" => {
                    acked = Some(n);
                    acks += 1;
                }
                _ => continue,
            }
            if (kill_after == 0 && submitted.is_some()) || (kill_after > 0 && acks >= kill_after) {
                break;
            }
        }
        child.0.kill().unwrap(); // SIGKILL
        child.0.wait().unwrap();
        // Lines the child wrote before dying are still in the pipe.
        reader.join().unwrap();
        for line in rx.try_iter() {
            let (kind, n) = line.split_once(' ').unwrap_or(("?", "0"));
            let n: u64 = n.trim().parse().unwrap_or(0);
            match kind {
                "S" => submitted = Some(n),
                "A" => acked = Some(n),
                _ => {}
            }
        }
        let acked_count = acked.map_or(0, |a| a + 1);
        let submitted_count = submitted.map_or(0, |s| s + 1);
        kill_points.insert(acked_count);

        let mut d = open();
        let rep = fsck(&mut d, 0).unwrap();
        assert!(
            rep.is_clean(),
            "round {round}: fsck before remount: {:?}",
            rep.errors
        );
        let mut s = BdevStore::mount(d, busy_opts(0)).unwrap();
        // The state must equal the model after n transactions, acked_count <= n <= submitted.
        let mut cand = model.clone();
        for i in 0..acked_count {
            cand.apply(&txn(round, i)).unwrap();
        }
        let mut matched = None;
        let mut last_err = String::new();
        for n in acked_count..=submitted_count {
            match compare(&mut s, &cand) {
                Ok(()) => {
                    matched = Some(n);
                    break;
                }
                Err(e) => last_err = e,
            }
            if n < submitted_count {
                cand.apply(&txn(round, n)).unwrap();
            }
        }
        let n = matched.unwrap_or_else(|| {
            panic!("round {round}: state matches no prefix in {acked_count}..={submitted_count}: {last_err}")
        });
        println!("round {round}: acked {acked_count}, submitted {submitted_count}, recovered {n}");
        model = cand;
        // Alternate clean shutdown and crash-style drop between rounds.
        let mut d = if round % 2 == 0 {
            s.shutdown().unwrap()
        } else {
            drop(s);
            open()
        };
        let rep = fsck(&mut d, 0).unwrap();
        assert!(
            rep.is_clean(),
            "round {round}: fsck after remount: {:?}",
            rep.errors
        );
    }
    assert!(
        kill_points.len() >= min_points,
        "only {} distinct kill points",
        kill_points.len()
    );
}
