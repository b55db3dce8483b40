//! Test topology: a private network namespace for this test process, with veth pairs in it.
//!
//! `unshare(CLONE_NEWNET)` moves the calling thread (and every thread and child it creates
//! afterwards: DPDK's, `ip`) into a fresh namespace that disappears with the process, so tests
//! never touch the host's network and need no cleanup of links or namespaces.

#![allow(dead_code)] // each test binary uses part of this module

use std::process::Command;

pub fn private_netns() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root (network namespaces, af_packet, hugepages): run it through ci/test"
    );
    // SAFETY: unshare only changes this thread's namespaces.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    ip(&["link", "set", "lo", "up"]);
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn veth_pair(a: &str, b: &str) {
    ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
    ip(&["link", "set", a, "up"]);
    ip(&["link", "set", b, "up"]);
}
