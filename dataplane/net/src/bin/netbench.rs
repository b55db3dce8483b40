//! carmine-netbench: one server shard over smoltcp on a DPDK port (`--device dpdk`, the default:
//! `net_af_packet` on the veth, EAL on hugepages) or on our raw AF_PACKET socket
//! (`--device af_packet`), vs the same server on kernel TCP, over the same veth pair, in the
//! same run. Needs root (two network namespaces) and, for DPDK, hugepages.
//!
//! Phases (each `--secs` long, `--conns` kernel client threads in the client namespace):
//! request/response 4 KiB → 64 B, then 64 B → 4 KiB, then bulk download and upload on one
//! connection. The server side is one reactor shard running `testapp::ServerPoller`, first over
//! `SmolStack<AfPacket>` at 10.77.0.2, then over `KernelStack` at 10.77.0.3 on the same veth.
//!
//! What limits the smoltcp side here (release build, 2 shared cores, 1500 MTU): every frame
//! costs an skb + copy through AF_PACKET each way, and veth runs the *client* kernel's receive
//! processing in the softirq of the core that sent the frame — the server shard's core — so
//! bulk sending from smoltcp pays for both ends (`--client-rps 1` moves it to core 0). Seen on
//! a loaded machine (load average 7-9): rr_ratio 1.2-1.5 (4 KiB request / 64 B reply), the
//! reverse 0.7-1.1, upload 0.7-1.2, download (bulk_ratio) 0.3-0.45. The DPDK device removes
//! the per-frame syscall and skb costs.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carmine_dpdk::{Eal, EalConfig, EthPort, PktMbufPool};
use carmine_net::afpacket::AfPacket;
use carmine_net::dpdk::DpdkDevice;
use carmine_net::netns::{self, VethPair, SERVER_IF};
use carmine_net::testapp::{Probe, ServerPoller};
use carmine_net::{KernelConfig, KernelStack, NetStack, SmolConfig, SmolStack};
use carmine_reactor::{IdlePolicy, Reactor, ReactorConfig};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "smoltcp vs kernel TCP over one veth pair, one server shard")]
struct Args {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Seconds per phase.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// Client connections for the request/response phases.
    #[arg(long, default_value_t = 8)]
    conns: usize,
    /// Core the server shard is pinned to.
    #[arg(long, default_value_t = 1)]
    core: usize,
    /// Idle policy of the server shard: busy or adaptive.
    #[arg(long, default_value = "busy")]
    idle: String,
    /// smoltcp per-socket rx/tx buffer, bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    smol_buf: usize,
    /// RPS CPU mask (hex) for the client end's receive queue: moves the client kernel's
    /// receive processing off the core that transmitted the frame (veth delivers in the
    /// sender's softirq otherwise). Applies to both phases. Empty: leave RPS off.
    #[arg(long, default_value = "")]
    client_rps: String,
    /// Link MTU of the veth pair.
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// smoltcp's device: dpdk (DPDK net_af_packet port, mbufs) or af_packet (raw socket).
    #[arg(long, default_value = "dpdk")]
    device: String,
}

const SMOL_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const KERNEL_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
const PORT: u16 = 7100;

#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    rr: f64,
    rr_rev: f64,
    down_gbps: f64,
    up_gbps: f64,
}

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxErr> {
    let args = Args::parse();
    let idle = match args.idle.as_str() {
        "busy" => IdlePolicy::Busy,
        "adaptive" => IdlePolicy::adaptive(),
        other => return Err(format!("unknown idle policy {other}").into()),
    };
    let veth = VethPair::create("b", args.mtu)?;
    let mtu = args.mtu as usize;
    if !args.client_rps.is_empty() {
        let cmd = format!(
            "echo {} > /sys/class/net/vc/queues/rx-0/rps_cpus",
            args.client_rps
        );
        let st = veth.client_command("sh").args(["-c", &cmd]).status()?;
        if !st.success() {
            return Err("setting RPS on the client veth failed".into());
        }
    }
    let smol_buf = args.smol_buf;

    let ns = veth.server_ns.clone();
    let smol_cfg = move |mac: [u8; 6]| SmolConfig {
        mac,
        ip: SMOL_IP,
        max_sockets: 64,
        rx_buffer: smol_buf,
        tx_buffer: smol_buf,
        ..SmolConfig::default()
    };
    let smol = match args.device.as_str() {
        "af_packet" => run_phase(&args, idle, &veth, SMOL_IP, move || {
            netns::enter(&ns).map_err(|e| e.to_string())?;
            let dev = AfPacket::open(SERVER_IF, mtu).map_err(|e| e.to_string())?;
            let fd = dev.as_raw_fd();
            SmolStack::new(dev, smol_cfg([0x02, 0, 0, 0, 0x77, 0x02]), Some(fd))
                .map_err(|e| e.to_string())
        })?,
        "dpdk" => {
            let (port, pool) = dpdk_port(&veth)?;
            let mac = port.mac()?;
            let pool = std::sync::Mutex::new(Some(pool));
            run_phase(&args, idle, &veth, SMOL_IP, move || {
                let pool = pool
                    .lock()
                    .map_err(|e| e.to_string())?
                    .take()
                    .ok_or("the DPDK phase runs once")?;
                let dev = DpdkDevice::new(port.clone(), 0, pool, mtu);
                SmolStack::new(dev, smol_cfg(mac), None).map_err(|e| e.to_string())
            })?
        }
        other => return Err(format!("unknown device {other} (dpdk or af_packet)").into()),
    };

    if std::env::var_os("CARMINE_NETBENCH_DEBUG").is_some() {
        for (ns, dev) in [(&veth.server_ns, SERVER_IF), (&veth.client_ns, "vc")] {
            let out = std::process::Command::new("ip")
                .args(["-n", ns, "-s", "link", "show", dev])
                .output()?;
            eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        }
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &veth.client_ns, "nstat", "-az"])
            .output()?;
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            if l.split_whitespace().nth(1).is_some_and(|v| v != "0") {
                eprintln!("client {l}");
            }
        }
    }
    veth.add_server_kernel_ip(KERNEL_IP)?;
    let ns = veth.server_ns.clone();
    let kernel = run_phase(&args, idle, &veth, KERNEL_IP, move || {
        netns::enter(&ns).map_err(|e| e.to_string())?;
        KernelStack::new(KernelConfig {
            bind: KERNEL_IP,
            ..KernelConfig::default()
        })
        .map_err(|e| e.to_string())
    })?;

    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    if args.json {
        let v = serde_json::json!({
            "smoltcp_rr_per_s": smol.rr,
            "kernel_rr_per_s": kernel.rr,
            "smoltcp_rr_rev_per_s": smol.rr_rev,
            "kernel_rr_rev_per_s": kernel.rr_rev,
            "smoltcp_gbps": smol.down_gbps,
            "kernel_gbps": kernel.down_gbps,
            "smoltcp_upload_gbps": smol.up_gbps,
            "kernel_upload_gbps": kernel.up_gbps,
            "rr_ratio": ratio(smol.rr, kernel.rr),
            "rr_rev_ratio": ratio(smol.rr_rev, kernel.rr_rev),
            "bulk_ratio": ratio(smol.down_gbps, kernel.down_gbps),
            "upload_ratio": ratio(smol.up_gbps, kernel.up_gbps),
            "device": args.device,
            "conns": args.conns,
            "secs": args.secs,
            "mtu": args.mtu,
            "idle": args.idle,
            "server_core": args.core,
            "client_rps": args.client_rps,
        });
        println!("{v}");
    } else {
        println!("                 smoltcp/{:<10} kernel", args.device);
        println!("rr 4K->64  /s     {:>16.0} {:>10.0}", smol.rr, kernel.rr);
        println!(
            "rr 64->4K  /s     {:>16.0} {:>10.0}",
            smol.rr_rev, kernel.rr_rev
        );
        println!(
            "download Gbit/s   {:>16.3} {:>10.3}",
            smol.down_gbps, kernel.down_gbps
        );
        println!(
            "upload   Gbit/s   {:>16.3} {:>10.3}",
            smol.up_gbps, kernel.up_gbps
        );
        println!(
            "rr_ratio {:.3}  bulk_ratio {:.3}",
            ratio(smol.rr, kernel.rr),
            ratio(smol.down_gbps, kernel.down_gbps)
        );
    }
    Ok(())
}

/// Starts DPDK's EAL with a `net_af_packet` port on the server end of the veth (the socket is
/// opened in the server namespace, entered by this thread first) and one mbuf pool.
fn dpdk_port(veth: &VethPair) -> Result<(Arc<EthPort>, PktMbufPool), BoxErr> {
    netns::enter(&veth.server_ns)?;
    let eal = Eal::init(&EalConfig {
        app: "carmine-netbench".into(),
        no_pci: true,
        in_memory: true,
        mem_mb: Some(256),
        vdevs: vec![format!("net_af_packet0,iface={SERVER_IF}")],
        log_level: Some("*:warning".into()),
        ..EalConfig::default()
    })?;
    let pool = PktMbufPool::new(eal, "netbench", 16383, 0, 2176, -1)?;
    let id = EthPort::id_by_name(eal, "net_af_packet0")?;
    let port = EthPort::start(eal, id, &[&pool], 2048, false)?;
    Ok((Arc::new(port), pool))
}

/// Starts one server shard with the stack `make` builds, runs every client phase, stops it.
fn run_phase<S, F>(
    args: &Args,
    idle: IdlePolicy,
    veth: &VethPair,
    ip: Ipv4Addr,
    make: F,
) -> Result<Figures, BoxErr>
where
    S: NetStack + 'static,
    F: Fn() -> Result<S, String> + Send + Sync + 'static,
{
    let probe = Arc::new(Probe::default());
    let p2 = probe.clone();
    let cfg = ReactorConfig {
        cores: vec![args.core],
        pin: true,
        idle,
        ..Default::default()
    };
    let (reactor, _ctl) = Reactor::start::<(), _>(cfg, move |s| {
        let mut stack = make()?;
        let l = stack.listen(PORT, 16).map_err(|e| e.to_string())?;
        s.add_poller(Box::new(ServerPoller::new(stack, vec![l], 0, p2.clone())));
        Ok(())
    })?;
    let addr = SocketAddr::from((ip, PORT));
    let d = Duration::from_secs_f64(args.secs);
    let ns = veth.client_ns.clone();
    let conns = args.conns;
    let figures = netns::run_in(&ns.clone(), move || -> Result<Figures, String> {
        let rr = rr_phase(&ns, addr, conns, 4096, 64, d)?;
        let rr_rev = rr_phase(&ns, addr, conns, 64, 4096, d)?;
        let down_gbps = bulk(addr, d, false)?;
        let up_gbps = bulk(addr, d, true)?;
        Ok(Figures {
            rr,
            rr_rev,
            down_gbps,
            up_gbps,
        })
    })??;
    reactor.shutdown()?;
    Ok(figures)
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// `conns` client threads doing back-to-back round trips for `d`; returns transactions/s.
fn rr_phase(
    ns: &str,
    addr: SocketAddr,
    conns: usize,
    req: usize,
    resp: usize,
    d: Duration,
) -> Result<f64, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let (ns, stop) = (ns.to_string(), stop.clone());
            std::thread::spawn(move || -> Result<u64, String> {
                netns::enter(&ns).map_err(|e| e.to_string())?;
                let mut s = connect(addr)?;
                let mut msg = vec![b'R'];
                msg.extend_from_slice(&(req as u32).to_le_bytes());
                msg.extend_from_slice(&(resp as u32).to_le_bytes());
                msg.resize(9 + req, 0x33);
                let mut buf = vec![0u8; resp];
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    s.write_all(&msg).map_err(|e| e.to_string())?;
                    s.read_exact(&mut buf).map_err(|e| e.to_string())?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    std::thread::sleep(d);
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in threads {
        total += t
            .join()
            .map_err(|_| "client thread panicked".to_string())??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// One connection streaming for `d` (server→client, or client→server when `upload`).
fn bulk(addr: SocketAddr, d: Duration, upload: bool) -> Result<f64, String> {
    let mut s = connect(addr)?;
    if let Some(b) = std::env::var("CARMINE_NETBENCH_RCVBUF")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        let _ = socket2::SockRef::from(&s).set_recv_buffer_size(b);
    }
    let mut hdr = vec![if upload { b'U' } else { b'D' }];
    hdr.extend_from_slice(&(1u64 << 50).to_le_bytes());
    if !upload {
        hdr.extend_from_slice(&5u64.to_le_bytes());
    }
    s.write_all(&hdr).map_err(|e| e.to_string())?;
    let mut buf = vec![0x44u8; 256 * 1024];
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < d {
        let n = if upload {
            s.write(&buf).map_err(|e| e.to_string())?
        } else {
            s.read(&mut buf).map_err(|e| e.to_string())?
        };
        if n == 0 {
            return Err("stream ended early".into());
        }
        bytes += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(bytes as f64 * 8.0 / secs / 1e9)
}
