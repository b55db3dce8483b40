//! Two shards on one DPDK port: `net_af_packet` with two queue pairs (the kernel spreads flows
//! over them by hash, like RSS, but not by the shard that owns the connection). Each shard owns
//! one queue, listens on its own port (7200 + shard) and passes frames that arrived on its queue
//! for the other shard through the software-steering rings. Every connection is served by the
//! shard whose port it dialled, and the cross-shard hops are counted. Connections a shard
//! opens itself (an OSD's replication links) get their answers on that shard too.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use carmine_dpdk::{Eal, EalConfig, EthPort, PktMbufPool};
use carmine_net::dpdk::{DpdkDevice, Steering};
use carmine_net::netns::{self, VethPair, SERVER_IF};
use carmine_net::testapp::client;
use carmine_net::{SmolConfig, SmolStack};
use common::*;

const BASE_PORT: u16 = 7200;
const IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

#[test]
fn two_shards_share_a_dpdk_port_through_software_steering() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root: run through ci/test"
    );
    let veth = VethPair::create("m", 1500).expect("veth");
    netns::enter(&veth.server_ns).expect("enter server netns");
    let eal = Eal::init(&EalConfig {
        app: "carmine-net-test2".into(),
        no_pci: true,
        in_memory: true,
        mem_mb: Some(128),
        vdevs: vec![format!("net_af_packet0,iface={SERVER_IF},qpairs=2")],
        ..EalConfig::default()
    })
    .expect("EAL (hugepages reserved?)");
    let pools: Vec<PktMbufPool> = (0..2)
        .map(|k| PktMbufPool::new(eal, &format!("shard{k}"), 4095, 0, 2176, -1).expect("pool"))
        .collect();
    let id = EthPort::id_by_name(eal, "net_af_packet0").expect("port");
    let port = EthPort::start(eal, id, &[&pools[0], &pools[1]], 512, true).expect("start");
    assert_eq!(port.queues(), (2, 2));
    let mac = port.mac().expect("mac");
    let port = Arc::new(port);
    let mesh = Steering::mesh(2, BASE_PORT, 1024);
    let counters: Vec<_> = mesh.iter().map(|s| s.stats()).collect();
    let parts = Arc::new(Mutex::new(
        pools.into_iter().zip(mesh).map(Some).collect::<Vec<_>>(),
    ));
    let server = start(2, 8, move |shard| {
        let (pool, steering) = parts.lock().map_err(|e| e.to_string())?[shard]
            .take()
            .ok_or("each shard once")?;
        let dev = DpdkDevice::new(port.clone(), shard as u16, pool, 1500).with_steering(steering);
        let cfg = SmolConfig {
            mac,
            ip: IP,
            random_seed: 0x77 + shard as u64,
            ..SmolConfig::default()
        };
        let stack = SmolStack::new(dev, cfg, None).map_err(|e| e.to_string())?;
        Ok((stack, BASE_PORT + shard as u16))
    });
    assert_eq!(server.ports, vec![BASE_PORT, BASE_PORT + 1]);

    let handles: Vec<_> = (0..16)
        .map(|k| {
            let ns = veth.client_ns.clone();
            std::thread::spawn(move || {
                netns::enter(&ns).expect("netns");
                let shard = k % 2;
                let mut s = connect(SocketAddr::from((IP, BASE_PORT + shard as u16)));
                let got = client::shard_id(&mut s).expect("shard id");
                client::request(&mut s, &[k as u8; 3000], 5000).expect("round trip");
                (shard, got)
            })
        })
        .collect();
    for h in handles {
        let (want, got) = h.join().expect("client");
        assert_eq!(
            got as usize, want,
            "served by the shard whose port was dialled"
        );
    }
    for p in &server.probes {
        assert_eq!(p.accepted.load(Ordering::Relaxed), 8);
    }
    // The kernel hashes flows over the two queues regardless of ports, so some frames arrived
    // on the other shard's queue and crossed over; ARP went to both shards.
    let sum = |f: fn(&carmine_net::dpdk::SteeringStats) -> &std::sync::atomic::AtomicU64| {
        counters
            .iter()
            .map(|c| f(c).load(Ordering::Relaxed))
            .sum::<u64>()
    };
    // Frames still in a ring (the last ACKs and FINs) are taken by the shards' next polls.
    wait_for(
        std::time::Duration::from_secs(10),
        "steered frames drained",
        || sum(|c| &c.steered_in) == sum(|c| &c.steered_out),
    );
    let (hops, copied) = (sum(|c| &c.steered_out), sum(|c| &c.copied_out));
    eprintln!("steered {hops} frames across shards ({copied} of them ARP copies)");
    assert!(
        hops > copied,
        "16 flows over 2 hashed queues: some TCP frames must cross"
    );
    assert!(copied > 0, "ARP reached both shards");
    assert_eq!(sum(|c| &c.dropped), 0);
    drop(server);
}

/// Outgoing connections from both shards of a shared port (what an OSD's replication links
/// are): each shard dials a kernel echo server several times, and every connection completes
/// its handshake and echoes, because its local port is one whose segments are steered back
/// to the dialling shard. (Before `NetDevice::owns_local_port`, every other connection sat in
/// SYN-SENT: the SYN-ACK was steered to the other shard.)
#[test]
fn both_shards_connect_out_through_software_steering() {
    use carmine_net::{ConnState, NetStack};
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root: run through ci/test"
    );
    const PER_SHARD: usize = 6;
    let veth = VethPair::create("q", 1500).expect("veth");
    // The echo server: kernel TCP in the client namespace.
    let listener = netns::run_in(&veth.client_ns, || {
        std::net::TcpListener::bind((netns::CLIENT_IP, 0))
    })
    .expect("netns")
    .expect("bind");
    let echo_addr = match listener.local_addr().expect("addr") {
        SocketAddr::V4(a) => a,
        a => panic!("{a}"),
    };
    std::thread::spawn(move || {
        for s in listener.incoming().take(2 * PER_SHARD) {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });

    netns::enter(&veth.server_ns).expect("enter server netns");
    let eal = Eal::init(&EalConfig {
        app: "carmine-net-test3".into(),
        no_pci: true,
        in_memory: true,
        mem_mb: Some(128),
        vdevs: vec![format!("net_af_packet0,iface={SERVER_IF},qpairs=2")],
        ..EalConfig::default()
    })
    .expect("EAL (hugepages reserved?)");
    let pools: Vec<PktMbufPool> = (0..2)
        .map(|k| PktMbufPool::new(eal, &format!("out{k}"), 4095, 0, 2176, -1).expect("pool"))
        .collect();
    let id = EthPort::id_by_name(eal, "net_af_packet0").expect("port");
    let port = EthPort::start(eal, id, &[&pools[0], &pools[1]], 512, true).expect("start");
    let mac = port.mac().expect("mac");
    let port = Arc::new(port);
    let mesh = Steering::mesh(2, BASE_PORT, 1024);
    // Shards that finished keep polling until both have: a frame for one shard may arrive on
    // the other's queue, and only that shard's poll steers it over.
    let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let shards: Vec<_> = pools
        .into_iter()
        .zip(mesh)
        .enumerate()
        .map(|(shard, (pool, steering))| {
            let (port, finished) = (port.clone(), finished.clone());
            std::thread::spawn(move || -> Result<Duration, String> {
                let dev = DpdkDevice::new(port, shard as u16, pool, 1500).with_steering(steering);
                let cfg = SmolConfig {
                    mac,
                    ip: IP,
                    random_seed: 0x77 + shard as u64,
                    ..SmolConfig::default()
                };
                let mut stack = SmolStack::new(dev, cfg, None).map_err(|e| e.to_string())?;
                let started = Instant::now();
                for k in 0..PER_SHARD {
                    let c = stack.connect(echo_addr).map_err(|e| e.to_string())?;
                    let msg = format!("shard {shard} connection {k}");
                    let fail = |what: String| {
                        // Unblocks the other shard's wait.
                        finished.fetch_add(1, Ordering::SeqCst);
                        Err(format!("{msg}: {what}"))
                    };
                    let (mut sent, mut got) = (0, Vec::new());
                    let deadline = Instant::now() + Duration::from_secs(3);
                    while got.len() < msg.len() {
                        if Instant::now() > deadline {
                            let state = stack.conn_state(c);
                            return fail(format!("no echo within 3 s (state {state:?})"));
                        }
                        stack.poll();
                        match stack.conn_state(c) {
                            Ok(ConnState::Connecting) => continue,
                            Ok(ConnState::Open) => {}
                            s => return fail(format!("{s:?}")),
                        }
                        if sent < msg.len() {
                            match stack.write(c, &msg.as_bytes()[sent..]) {
                                Ok(n) => sent += n,
                                Err(e) => return fail(format!("write: {e}")),
                            }
                        }
                        let mut buf = [0u8; 256];
                        match stack.read(c, &mut buf) {
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                            Err(e) => return fail(format!("read: {e}")),
                        }
                    }
                    if got != msg.as_bytes() {
                        return fail(format!("echoed {got:?}"));
                    }
                    let _ = stack.close(c);
                }
                let took = started.elapsed();
                finished.fetch_add(1, Ordering::SeqCst);
                let end = Instant::now() + Duration::from_secs(10);
                while finished.load(Ordering::SeqCst) < 2 && Instant::now() < end {
                    stack.poll();
                }
                Ok(took)
            })
        })
        .collect();
    for (shard, h) in shards.into_iter().enumerate() {
        let took = h
            .join()
            .expect("shard thread")
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("shard {shard}: {PER_SHARD} outgoing connections echoed in {took:?}");
    }
}
