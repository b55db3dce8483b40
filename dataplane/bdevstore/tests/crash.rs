//! Crash consistency on a file-backed device: a child process (this test binary re-executed on
//! `crash_child`) streams transactions and is SIGKILLed at a different point each round
//! (24 rounds); see `common/crashkit.rs` for the driver and what it checks.

mod common;
#[path = "common/crashkit.rs"]
mod crashkit;

const ROUNDS: u64 = 24;

/// The child: runs only when re-executed by `crash_consistency_under_sigkill`.
#[test]
fn crash_child() {
    let Some((path, round)) = crashkit::child_request() else {
        return;
    };
    crashkit::child_loop(common::open_dev(std::path::Path::new(&path)), round);
}

#[test]
fn crash_consistency_under_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev");
    crashkit::run_rounds("crash_child", &path, ROUNDS, 20, || common::open_dev(&path));
}
