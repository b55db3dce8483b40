//! Two shards on one DPDK port: `net_af_packet` with two queue pairs (the kernel spreads flows
//! over them by hash, like RSS, but not by the shard that owns the connection). Each shard owns
//! one queue, listens on its own port (7200 + shard) and passes frames that arrived on its queue
//! for the other shard through the software-steering rings. Every connection is served by the
//! shard whose port it dialled, and the cross-shard hops are counted.

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
