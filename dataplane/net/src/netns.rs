//! Test/bench topologies made with `ip` and `ethtool` (needs root), removed again on drop:
//!
//! [`VethPair`]: two network namespaces joined by a veth pair.
//! ```text
//!   netns <server>                      netns <client>
//!   [vs] (no kernel IP: smoltcp owns it)  <== veth ==>  [vc] 10.77.0.1/24 (kernel TCP client)
//! ```
//! [`Hub`]: several server namespaces, each behind its own veth pair on a bridge in one client
//! ("hub") namespace, so that the servers reach each other (through the bridge) as well as the
//! client. What `ci/cluster-net` builds for a local cluster, for one test.
//! ```text
//!   netns <hub>                                   netns <member i>
//!   [br0] 10.77.0.1/24 -- [m<i>] <== veth ==>  [vs] (kernel IP if the test adds one; the
//!                                                    user-space stack's IP and MAC beside it)
//! ```
//! Checksum offload, TSO/GSO and GRO are switched off on both ends of every veth: AF_PACKET
//! would otherwise see frames with unfilled checksums or larger than the MTU.

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

/// A hub namespace holding a bridge (address [`CLIENT_IP`]: the monitor and the clients live
/// there) and `n` member namespaces, each joined to the bridge by a veth pair: member `i` has
/// [`SERVER_IF`] in its namespace, the hub has `m<i>` on the bridge. Every namespace is deleted
/// on drop (a member's veth and the bridge go with them), also when `create` fails half-way.
#[derive(Debug)]
pub struct Hub {
    pub hub_ns: String,
    pub member_ns: Vec<String>,
}

/// The bridge in a [`Hub`]'s namespace.
pub const HUB_BRIDGE: &str = "br0";

impl Hub {
    /// Creates `cmn<pid><tag>h` and `cmn<pid><tag><i>` (i < n), links of the given MTU.
    pub fn create(tag: &str, n: usize, mtu: u32) -> std::io::Result<Self> {
        let pid = std::process::id();
        let me = Self {
            hub_ns: format!("cmn{pid}{tag}h"),
            member_ns: (0..n).map(|i| format!("cmn{pid}{tag}{i}")).collect(),
        };
        for ns in me.all() {
            // Leftovers of an earlier crashed run with the same pid: ignore errors.
            let _ = run(&["ip", "netns", "del", ns]);
        }
        let hub = me.hub_ns.as_str();
        let mtu = mtu.to_string();
        for ns in me.all() {
            run(&["ip", "netns", "add", ns])?;
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            // No IPv6 (router solicitations and DAD on the links are noise to the stacks).
            sysctl(ns, "net/ipv6/conf/all/disable_ipv6", "1")?;
            sysctl(ns, "net/ipv6/conf/default/disable_ipv6", "1")?;
        }
        run(&[
            "ip",
            "-n",
            hub,
            "link",
            "add",
            HUB_BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        run(&["ip", "-n", hub, "link", "set", HUB_BRIDGE, "mtu", &mtu])?;
        // With br_netfilter loaded every bridged frame would also pass the (empty) IP hooks.
        for f in ["iptables", "ip6tables", "arptables"] {
            let _ = sysctl(hub, &format!("net/bridge/bridge-nf-call-{f}"), "0");
        }
        let cidr = format!("{CLIENT_IP}/24");
        run(&["ip", "-n", hub, "addr", "add", &cidr, "dev", HUB_BRIDGE])?;
        run(&["ip", "-n", hub, "link", "set", HUB_BRIDGE, "up"])?;
        for (i, ns) in me.member_ns.iter().enumerate() {
            let port = format!("m{i}");
            run(&[
                "ip", "-n", hub, "link", "add", &port, "type", "veth", "peer", "name", SERVER_IF,
                "netns", ns,
            ])?;
            for (ns, dev) in [(hub, port.as_str()), (ns.as_str(), SERVER_IF)] {
                run(&["ip", "-n", ns, "link", "set", dev, "mtu", &mtu])?;
                run(&[
                    "ip", "netns", "exec", ns, "ethtool", "-K", dev, "rx", "off", "tx", "off",
                    "tso", "off", "gso", "off", "gro", "off",
                ])?;
            }
            run(&["ip", "-n", hub, "link", "set", &port, "master", HUB_BRIDGE])?;
            run(&["ip", "-n", hub, "link", "set", &port, "up"])?;
            run(&["ip", "-n", ns, "link", "set", SERVER_IF, "up"])?;
        }
        Ok(me)
    }

    fn all(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.hub_ns.as_str()).chain(self.member_ns.iter().map(String::as_str))
    }

    /// Gives member `i`'s interface a kernel address too (e.g. an OSD agent's gRPC).
    pub fn add_member_kernel_ip(&self, i: usize, ip: Ipv4Addr) -> std::io::Result<()> {
        let ns = self
            .member_ns
            .get(i)
            .ok_or_else(|| std::io::Error::other(format!("no member {i}")))?;
        let cidr = format!("{ip}/24");
        run(&["ip", "-n", ns, "addr", "add", &cidr, "dev", SERVER_IF])
    }

    /// Bytes the bridge port of member `i` received from the member and sent to it (`m<i>`'s
    /// counters in the hub namespace: `/proc/thread-self/net/dev` of a thread there; sysfs
    /// would show the namespace it was mounted in).
    pub fn member_port_bytes(&self, i: usize) -> std::io::Result<(u64, u64)> {
        let dev = run_in(&self.hub_ns, || {
            std::fs::read_to_string("/proc/thread-self/net/dev")
        })??;
        dev_bytes(&dev, &format!("m{i}"))
            .ok_or_else(|| std::io::Error::other(format!("no m{i} in the hub's /proc/net/dev")))
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veth ends and the bridge inside it.
        for ns in self.all() {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

/// An interface's received and transmitted bytes in `/proc/net/dev` text (`name: rx_bytes
/// rx_packets .. (8 receive fields) tx_bytes ..`).
fn dev_bytes(text: &str, name: &str) -> Option<(u64, u64)> {
    text.lines().find_map(|l| {
        let (dev, fields) = l.split_once(':')?;
        if dev.trim() != name {
            return None;
        }
        let f: Vec<u64> = fields
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        Some((*f.first()?, *f.get(8)?))
    })
}

/// Writes `/proc/sys/<key>` as seen from namespace `ns` (network sysctls are per namespace:
/// the thread that opens the file decides which).
fn sysctl(ns: &str, key: &str, value: &'static str) -> std::io::Result<()> {
    let path = format!("/proc/sys/{key}");
    run_in(ns, move || std::fs::write(path, value))?
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

#[cfg(test)]
mod tests {
    use super::dev_bytes;

    #[test]
    fn interface_bytes_are_read_from_proc_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
    m1: 1234567    900    0    0    0     0          0         0  7654321     800    0    0    0     0       0          0
   m10: 5 1 0 0 0 0 0 0 6 1 0 0 0 0 0 0
";
        assert_eq!(dev_bytes(text, "m1"), Some((1_234_567, 7_654_321)));
        assert_eq!(dev_bytes(text, "m10"), Some((5, 6)));
        assert_eq!(dev_bytes(text, "m2"), None);
    }
}
