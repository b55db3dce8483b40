//! Test/bench topology: two network namespaces joined by a veth pair, made with `ip` and
//! `ethtool` (needs root), removed again on drop.
//!
//! ```text
//!   netns <server>                      netns <client>
//!   [vs] (no kernel IP: smoltcp owns it)  <== veth ==>  [vc] 10.77.0.1/24 (kernel TCP client)
//! ```
//! Checksum offload, TSO/GSO and GRO are switched off on both ends: AF_PACKET would otherwise
//! see frames with unfilled checksums or larger than the MTU.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;

/// Address of the kernel side (the client).
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Server-side interface name (inside the server namespace).
pub const SERVER_IF: &str = "vs";
/// Client-side interface name (inside the client namespace).
pub const CLIENT_IF: &str = "vc";

/// A pair of namespaces and the veth between them; deleted on drop.
#[derive(Debug)]
pub struct VethPair {
    pub server_ns: String,
    pub client_ns: String,
}

fn run(args: &[&str]) -> std::io::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl VethPair {
    /// Creates `cmn<pid><tag>s` / `cmn<pid><tag>c` and the veth pair with the given MTU.
    pub fn create(tag: &str, mtu: u32) -> std::io::Result<Self> {
        let pid = std::process::id();
        let me = Self {
            server_ns: format!("cmn{pid}{tag}s"),
            client_ns: format!("cmn{pid}{tag}c"),
        };
        // Leftovers of an earlier crashed run with the same pid: ignore errors.
        let _ = run(&["ip", "netns", "del", &me.server_ns]);
        let _ = run(&["ip", "netns", "del", &me.client_ns]);
        run(&["ip", "netns", "add", &me.server_ns])?;
        run(&["ip", "netns", "add", &me.client_ns])?;
        let (s, c) = (me.server_ns.as_str(), me.client_ns.as_str());
        let mtu = mtu.to_string();
        run(&[
            "ip", "-n", s, "link", "add", SERVER_IF, "type", "veth", "peer", "name", CLIENT_IF,
            "netns", c,
        ])?;
        for (ns, dev) in [(s, SERVER_IF), (c, CLIENT_IF)] {
            run(&["ip", "-n", ns, "link", "set", dev, "mtu", &mtu])?;
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            run(&[
                "ip", "netns", "exec", ns, "ethtool", "-K", dev, "rx", "off", "tx", "off", "tso",
                "off", "gso", "off", "gro", "off",
            ])?;
            run(&["ip", "-n", ns, "link", "set", dev, "up"])?;
        }
        let cidr = format!("{CLIENT_IP}/24");
        run(&["ip", "-n", c, "addr", "add", &cidr, "dev", CLIENT_IF])?;
        Ok(me)
    }

    /// Gives the server-side interface a kernel address too (kernel-vs-smoltcp benches).
    pub fn add_server_kernel_ip(&self, ip: Ipv4Addr) -> std::io::Result<()> {
        let cidr = format!("{ip}/24");
        run(&[
            "ip",
            "-n",
            &self.server_ns,
            "addr",
            "add",
            &cidr,
            "dev",
            SERVER_IF,
        ])
    }

    /// Takes the client's link down or up (a peer that vanishes without FIN/RST).
    pub fn set_client_link(&self, up: bool) -> std::io::Result<()> {
        let st = if up { "up" } else { "down" };
        run(&["ip", "-n", &self.client_ns, "link", "set", CLIENT_IF, st])
    }

    /// A command that runs inside the client namespace.
    pub fn client_command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.client_ns, program]);
        c
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veth end inside it, and with it the pair.
        let _ = run(&["ip", "netns", "del", &self.server_ns]);
        let _ = run(&["ip", "netns", "del", &self.client_ns]);
    }
}

/// Moves the calling *thread* into namespace `name` (`setns(2)` is per thread): sockets it
/// opens afterwards live there, whichever thread uses them later.
pub fn enter(name: &str) -> std::io::Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{name}"))?;
    sys::setns_net(f.as_raw_fd())
}

/// Runs `f` on a fresh thread inside namespace `name` and returns its result.
pub fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    let name = name.to_string();
    std::thread::spawn(move || {
        enter(&name)?;
        Ok(f())
    })
    .join()
    .map_err(|_| std::io::Error::other("netns thread panicked"))?
}

mod sys {
    use std::os::fd::RawFd;

    pub(super) fn setns_net(fd: RawFd) -> std::io::Result<()> {
        // SAFETY: setns takes an fd we keep open for the duration of the call and a constant.
        let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}
