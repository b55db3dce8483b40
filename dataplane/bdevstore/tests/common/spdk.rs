//! SPDK set-up for the store tests on real bdevs: one EAL + SPDK per test process (one test per
//! file; a crash child is its own process).

#![allow(dead_code)]
use carmine_dpdk::{Eal, EalConfig};
use carmine_spdk::Spdk;

/// Starts the EAL (in-memory, no PCI, `mem_mb` of hugepage memory) and SPDK. Needs root and
/// reserved hugepages (`ci/test` reserves them).
pub fn start(mem_mb: u32) -> Spdk {
    start_with(mem_mb, None)
}

/// Like [`start`], but with hugepage files under `file_prefix` (one per memseg list) instead
/// of in-memory: vhost-user (the virtio bdev) passes them to the backend. The caller removes
/// them at the end (`Eal::hugepage_files`).
pub fn start_with(mem_mb: u32, file_prefix: Option<String>) -> Spdk {
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "this test needs root and hugepages: run it through ci/test"
    );
    let eal = Eal::init(&EalConfig {
        app: "carmine-store-test".into(),
        no_pci: true,
        in_memory: file_prefix.is_none(),
        single_file_segments: file_prefix.is_some(),
        file_prefix,
        mem_mb: Some(mem_mb),
        ..EalConfig::default()
    })
    .expect("EAL init (hugepages reserved? `hugepages/hugepages.sh reserve 1024`)");
    Spdk::start(eal).expect("SPDK start")
}

/// A zero-filled file of `bytes` bytes for an aio bdev.
pub fn image(path: &std::path::Path, bytes: u64) {
    std::fs::File::create(path).unwrap().set_len(bytes).unwrap();
}
