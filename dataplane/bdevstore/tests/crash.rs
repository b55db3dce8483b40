//! Crash consistency on a file-backed device: a child process (the
//! `carmine-bdevstore-crash-child` helper binary) streams transactions and is SIGKILLed at a
//! different point each round (24 rounds); see `common/crashkit.rs` for the driver and what it
//! checks.

use std::process::Command;

mod common;
#[path = "common/crashkit.rs"]
mod crashkit;
#[path = "common/crashload.rs"]
mod crashload;

const ROUNDS: u64 = 24;

#[test]
fn crash_consistency_under_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev");
    crashkit::run_rounds(
        || Command::new(env!("CARGO_BIN_EXE_carmine-bdevstore-crash-child")),
        &path,
        ROUNDS,
        20,
        || common::open_dev(&path),
    );
}
