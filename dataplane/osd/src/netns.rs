//! A private network namespace for the self-check's veth pair.
//!
//! `unshare(CLONE_NEWNET)` moves the calling thread, and every thread and child process it starts
//! afterwards (DPDK's threads, `ip`), into a new namespace that vanishes with the process: the
//! self-check never touches the host's interfaces and leaves nothing behind.

use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("unshare(CLONE_NEWNET): {0} (needs root or CAP_SYS_ADMIN)")]
    Unshare(std::io::Error),
    #[error("`ip {args}` failed: {stderr} (is iproute2 installed?)")]
    Ip { args: String, stderr: String },
}

/// Moves this thread into a fresh network namespace with `lo` up.
pub fn enter_private() -> Result<(), NetnsError> {
    // SAFETY: unshare takes no pointers; it changes only this thread's namespace membership.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(NetnsError::Unshare(std::io::Error::last_os_error()));
    }
    ip(&["link", "set", "lo", "up"])
}

/// Runs `ip ARGS` in the current namespace.
pub fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetnsError::Ip {
            args: args.join(" "),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NetnsError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Creates a veth pair `a`–`b`, both up.
pub fn veth_pair(a: &str, b: &str) -> Result<(), NetnsError> {
    ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
    ip(&["link", "set", a, "up"])?;
    ip(&["link", "set", b, "up"])
}
