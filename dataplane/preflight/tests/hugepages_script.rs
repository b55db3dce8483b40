//! `hugepages/hugepages.sh`: the refusals are explicit and change nothing.

use std::path::PathBuf;
use std::process::Command;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../hugepages/hugepages.sh")
}

fn nr_hugepages() -> String {
    std::fs::read_to_string("/proc/sys/vm/nr_hugepages").unwrap()
}

#[test]
fn refuses_without_root_and_when_memory_is_short() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root: run through ci/test"
    );
    let before = nr_hugepages();

    // As nobody: a clear refusal naming the reason.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(script())
        .args(["reserve", "8"])
        .output()
        .expect("setpriv (util-linux)");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must run as root"), "{err}");

    // More pages than the machine has memory for: refused before touching the pool.
    let out = Command::new(script())
        .args(["reserve", "100000000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not enough memory"), "{err}");

    // Bad arguments.
    let out = Command::new(script())
        .args(["reserve", "lots"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = Command::new(script()).arg("status").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("page size 2048 kB"));

    assert_eq!(nr_hugepages(), before, "the pool is unchanged");
}
