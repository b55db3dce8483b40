//! Signals to OSD processes the tests started (SIGSTOP/SIGCONT), and waiting for a stop to
//! take.
#![allow(dead_code)]

use std::time::Duration;

/// SIGSTOP / SIGCONT of a process.
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child process of this test.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

/// Waits until every thread of `pid` is stopped. kill(SIGSTOP) returns at once, and a group
/// stop reaches the other threads only once the thread that took the signal runs: on a busy
/// machine the shard thread can go on serving for milliseconds.
pub fn wait_stopped(pid: u32) {
    let all_stopped = || -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat"))
                .ok()
                .and_then(|s| {
                    // The state follows the parenthesised command name.
                    s.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
                })
                .is_some_and(|state| state == "T" || state == "t")
        })
    };
    for _ in 0..500 {
        if all_stopped() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("osd (pid {pid}) did not stop within 5 s of SIGSTOP");
}
