//! Shared set-up for the SPDK tests: one EAL + SPDK per test process (each test file is its own
//! binary, each holds one test, so this works under both `cargo test` and nextest).

#![allow(dead_code)]

use std::time::Duration;

use carmine_dpdk::{Eal, EalConfig};
use carmine_spdk::{reap, Completion, Spdk};

pub fn start(in_memory: bool, file_prefix: Option<String>) -> Spdk {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root and hugepages: run it through ci/test"
    );
    let eal = Eal::init(&EalConfig {
        app: "carmine-test".into(),
        no_pci: true,
        in_memory,
        file_prefix,
        single_file_segments: !in_memory,
        mem_mb: Some(256),
        ..EalConfig::default()
    })
    .expect("EAL init (hugepages reserved? `hugepages/hugepages.sh reserve 1024`)");
    Spdk::start(eal).expect("SPDK start")
}

/// Polls until a completion arrives (bounded).
pub fn wait(spdk: &Spdk) -> Completion {
    let mut got = None;
    spdk.thread()
        .poll_until(Duration::from_secs(10), "I/O completion", || {
            got = got.take().or_else(reap);
            got.is_some()
        })
        .expect("I/O completed within 10 s");
    got.unwrap()
}

/// The self-test pattern for `len` bytes at `offset`.
pub fn pattern(offset: u64, seed: u8, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    carmine_spdk::selftest::pattern(offset, seed, &mut v);
    v
}
