//! smoltcp over DPDK: the server side of the veth pair is a DPDK `net_af_packet` port (EAL on
//! hugepages, `--no-pci`), driven by a reactor shard through [`DpdkDevice`]; kernel TCP clients
//! run in the other namespace. One test (the EAL starts once per process) walks through the
//! checks of the CI topology: ping, verified round trips of 64 B..64 KiB, a stream each way with
//! a checksum, 64 concurrent connections, and a client killed mid-stream whose connection is
//! reaped with socket and mbuf counts back at their baseline.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use carmine_dpdk::{Eal, EalConfig, EthPort, PktMbufPool};
use carmine_net::dpdk::DpdkDevice;
use carmine_net::netns::{self, VethPair, SERVER_IF};
use carmine_net::testapp::client;
use carmine_net::{SmolConfig, SmolStack};
use common::*;

const PORT: u16 = 7000;
const BACKLOG: usize = 8;
const IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const STREAM: u64 = 256 << 20;

#[test]
fn smoltcp_over_dpdk_af_packet() {
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "needs root (namespaces, af_packet, hugepages): run through ci/test"
    );
    let veth = VethPair::create("d", 1500).expect("veth");
    // The af_packet socket is opened by the EAL in the calling thread's namespace.
    netns::enter(&veth.server_ns).expect("enter server netns");
    let eal = Eal::init(&EalConfig {
        app: "carmine-net-test".into(),
        no_pci: true,
        in_memory: true,
        mem_mb: Some(128),
        vdevs: vec![format!("net_af_packet0,iface={SERVER_IF}")],
        ..EalConfig::default()
    })
    .expect("EAL (hugepages reserved?)");
    let pool = PktMbufPool::new(eal, "shard0_rx", 8191, 0, 2176, -1).expect("pool");
    let gauge = pool.gauge();
    let id = EthPort::id_by_name(eal, "net_af_packet0").expect("port");
    let port = Arc::new(EthPort::start(eal, id, &[&pool], 1024, false).expect("port start"));
    let mac = port.mac().expect("mac");
    let pool = Arc::new(Mutex::new(Some(pool)));
    let server = start(1, BACKLOG, move |_shard| {
        let pool = pool
            .lock()
            .map_err(|e| e.to_string())?
            .take()
            .ok_or("one shard")?;
        let dev = DpdkDevice::new(port.clone(), 0, pool, 1500);
        let cfg = SmolConfig {
            mac,
            ip: IP,
            random_seed: 0x5eed,
            ..SmolConfig::default()
        };
        // No fd to sleep on: the adaptive shard wakes on its timers and smoltcp's deadlines.
        let stack = SmolStack::new(dev, cfg, None).map_err(|e| e.to_string())?;
        Ok((stack, PORT))
    });
    let probe = server.probes[0].clone();
    let addr = SocketAddr::from((IP, PORT));
    wait_for(Duration::from_secs(5), "listener sockets", || {
        probe_sockets(&probe) > 0
    });
    let socket_baseline = probe_sockets(&probe);

    // Ping.
    let out = veth
        .client_command("ping")
        .args(["-c", "3", "-i", "0.2", "-W", "2", &IP.to_string()])
        .output()
        .expect("run ping");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 received"),
        "ping: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Verified round trips, 64 B..64 KiB.
    let t0 = Instant::now();
    round_trips(addr, 4, 10_000, &netns_spawner(veth.client_ns.clone()));
    eprintln!("10k round trips over DPDK in {:?}", t0.elapsed());
    assert!(probe.requests.load(Ordering::Relaxed) >= 10_000);

    // A stream each way, checksummed by the application protocol on both ends.
    let (up, down) = netns::run_in(&veth.client_ns, move || {
        let mut s = connect(addr);
        let up = client::upload(&mut s, STREAM, 21).expect("upload verified");
        let down = client::download(&mut s, STREAM, 22).expect("download verified");
        (up, down)
    })
    .expect("client in netns");
    eprintln!("{} MiB each way (crc {up:#x} / {down:#x})", STREAM >> 20);

    concurrent_64(addr, probe.clone(), &netns_spawner(veth.client_ns.clone()));

    // Every connection so far is closed: sockets and mbufs return to their baselines.
    wait_for(Duration::from_secs(20), "sockets back to baseline", || {
        probe_sockets(&probe) == socket_baseline
    });
    let mbuf_baseline = gauge.in_use();
    killed_client(
        &IP.to_string(),
        PORT,
        Some(&veth.client_ns),
        probe.clone(),
        socket_baseline,
    );
    // Mbufs in flight drain back once the reaped connection stops sending (the RX ring keeps
    // its own descriptors' mbufs, which the baseline includes).
    wait_for(Duration::from_secs(20), "mbufs back to baseline", || {
        gauge.in_use() <= mbuf_baseline
    });
    drop(server);
}
