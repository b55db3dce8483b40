//! The crash-consistency driver, generic over the device: a child process streams the
//! transactions of `crashload.rs` and reports each submit ("S i") and each commit completion
//! ("A i") on stdout; this parent SIGKILLs it at a different point each round, then checks with
//! fsck and a remount that every acknowledged transaction is fully present, that the state
//! equals the model after exactly some prefix of the submitted transactions (so nothing is
//! half-applied), and that every object removed in that prefix stays removed. Used with a file
//! (`crash.rs`, child: the `carmine-bdevstore-crash-child` helper binary) and an SPDK aio
//! bdev (`spdk_crash.rs`, child: that test re-executed).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use carmine_bdevstore::{format, fsck, BdevStore};
use carmine_objectstore::device::BlockDevice;
use carmine_objectstore::testkit::{compare, Model};
use carmine_objectstore::{drive, ObjectStore, StoreError, Transaction};

use super::common::{busy_opts, small_format};
use super::crashload::{short_lived, txn, C, ENV_DEV, ENV_ROUND};

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The parent: formats through `open()`, then runs `rounds` kill rounds of the child that
/// `child()` gives (run with `ENV_DEV` = `path` and `ENV_ROUND` set, stdout piped), checking the
/// device through `open()` after each. Asserts at least `min_points` distinct kill points.
pub fn run_rounds<D: BlockDevice>(
    child: impl Fn() -> Command,
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

    let mut kill_points = std::collections::BTreeSet::new();
    for round in 0..rounds {
        // Kill after this many acks (0: right after the first submit, mid first record).
        let kill_after = (round * 29) % 150;
        let child = child()
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
        // Removed objects stay removed: transaction i removed the object of i - 2. (The listing
        // in `compare` shows it too; this asks the index by name.)
        for i in 0..n.saturating_sub(2) {
            let oid = short_lived(round, i);
            match s.stat(C, &oid) {
                Err(StoreError::NotFound(_)) => {}
                other => panic!("round {round}: removed {oid:?} is back after recovery: {other:?}"),
            }
        }
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
