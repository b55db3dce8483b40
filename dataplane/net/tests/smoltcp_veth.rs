//! smoltcp backend over AF_PACKET on a veth pair between two network namespaces, with kernel
//! TCP clients on the other end. Needs root (creates namespaces); skipped otherwise.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use carmine_net::afpacket::AfPacket;
use carmine_net::netns::{self, VethPair, SERVER_IF};
use carmine_net::testapp::client;
use carmine_net::{SmolConfig, SmolStack};
use common::*;

const PORT: u16 = 7000;
const BACKLOG: usize = 8;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: needs root to create network namespaces");
    }
    root
}

fn shard_ip(shard: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 2 + shard as u8)
}

/// Starts `shards` smoltcp shards on the server side of `veth`, shard i at 10.77.0.(2+i).
fn start_smol(veth: &VethPair, shards: usize, tweak: fn(&mut SmolConfig)) -> Server {
    let ns = veth.server_ns.clone();
    start(shards, BACKLOG, move |shard| {
        netns::enter(&ns).map_err(|e| e.to_string())?;
        let dev = AfPacket::open(SERVER_IF, 1500).map_err(|e| e.to_string())?;
        let fd = dev.as_raw_fd();
        let mut cfg = SmolConfig {
            mac: [0x02, 0, 0, 0, 0x77, 2 + shard as u8],
            ip: shard_ip(shard),
            random_seed: 0x1234 + shard as u64,
            ..SmolConfig::default()
        };
        tweak(&mut cfg);
        let stack = SmolStack::new(dev, cfg, Some(fd)).map_err(|e| e.to_string())?;
        Ok((stack, PORT))
    })
}

fn addr(shard: usize) -> SocketAddr {
    SocketAddr::from((shard_ip(shard), PORT))
}

#[test]
fn ping_is_answered() {
    if !is_root() {
        return;
    }
    let veth = VethPair::create("p", 1500).expect("veth");
    let server = start_smol(&veth, 1, |_| {});
    let out = veth
        .client_command("ping")
        .args(["-c", "3", "-i", "0.2", "-W", "2", &shard_ip(0).to_string()])
        .output()
        .expect("run ping");
    assert!(
        out.status.success(),
        "ping failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 received"));
    drop(server);
}

#[test]
fn ten_thousand_round_trips_64b_to_64k() {
    if !is_root() {
        return;
    }
    let veth = VethPair::create("r", 1500).expect("veth");
    let server = start_smol(&veth, 1, |_| {});
    let t0 = Instant::now();
    round_trips(addr(0), 4, 10_000, &netns_spawner(veth.client_ns.clone()));
    eprintln!("10k round trips in {:?}", t0.elapsed());
    assert!(server.probes[0].requests.load(Ordering::Relaxed) >= 10_000);
}

/// Bytes streamed each way (smoltcp is built with opt-level 2 even in debug: see the root
/// Cargo.toml; about 15 s for both directions here).
const STREAM: u64 = 256 << 20;

#[test]
fn stream_each_way_with_checksum() {
    if !is_root() {
        return;
    }
    let veth = VethPair::create("s", 1500).expect("veth");
    let _server = start_smol(&veth, 1, |_| {});
    let t0 = Instant::now();
    let (up, down) = netns::run_in(&veth.client_ns, move || {
        let mut s = connect(addr(0));
        let up = client::upload(&mut s, STREAM, 11).expect("upload verified");
        let down = client::download(&mut s, STREAM, 12).expect("download verified");
        (up, down)
    })
    .expect("client in netns");
    eprintln!(
        "{} MiB each way in {:?} (crc {up:#x} / {down:#x})",
        STREAM >> 20,
        t0.elapsed()
    );
}

#[test]
fn sixty_four_concurrent_connections() {
    if !is_root() {
        return;
    }
    let veth = VethPair::create("c", 1500).expect("veth");
    let server = start_smol(&veth, 1, |_| {});
    concurrent_64(
        addr(0),
        server.probes[0].clone(),
        &netns_spawner(veth.client_ns.clone()),
    );
}

#[test]
fn killed_client_is_reaped() {
    if !is_root() {
        return;
    }
    let veth = VethPair::create("k", 1500).expect("veth");
    let server = start_smol(&veth, 1, |_| {});
    let probe = server.probes[0].clone();
    wait_for(Duration::from_secs(5), "listener sockets", || {
        probe_sockets(&probe) > 0
    });
    let baseline = probe_sockets(&probe);
    assert_eq!(baseline, BACKLOG as u64);
    killed_client(
        &shard_ip(0).to_string(),
        PORT,
        Some(&veth.client_ns),
        probe.clone(),
        baseline,
    );
}

#[test]
fn vanished_peer_times_out_and_is_reaped() {
    if !is_root() {
        return;
    }
    let veth = VethPair::create("v", 1500).expect("veth");
    let server = start_smol(&veth, 1, |c| {
        c.timeout = Some(Duration::from_secs(2));
        c.keep_alive = Some(Duration::from_secs(1));
    });
    let probe = server.probes[0].clone();
    wait_for(Duration::from_secs(5), "listener sockets", || {
        probe_sockets(&probe) > 0
    });
    let baseline = probe_sockets(&probe);
    let ns = veth.client_ns.clone();
    let reader = std::thread::spawn(move || {
        netns::enter(&ns).expect("netns");
        let mut s = connect(addr(0));
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        // Download "forever"; the read fails once the link is gone.
        client::download(&mut s, 1 << 40, 3).err()
    });
    wait_for(Duration::from_secs(10), "the connection", || {
        probe.connections.load(Ordering::Relaxed) == 1
    });
    std::thread::sleep(Duration::from_millis(200));
    veth.set_client_link(false).expect("link down");
    wait_for(
        Duration::from_secs(20),
        "the timed-out connection to be reaped",
        || probe.connections.load(Ordering::Relaxed) == 0 && probe_sockets(&probe) == baseline,
    );
    assert!(
        probe.resets.load(Ordering::Relaxed) >= 1,
        "ended by timeout, counted as reset"
    );
    assert!(
        reader.join().expect("reader").is_some(),
        "client saw the stream break"
    );
}

#[test]
fn two_shards_each_serve_their_own_connections() {
    if !is_root() {
        return;
    }
    let veth = VethPair::create("2", 1500).expect("veth");
    let server = start_smol(&veth, 2, |_| {});
    let handles: Vec<_> = (0..16)
        .map(|k| {
            let ns = veth.client_ns.clone();
            std::thread::spawn(move || {
                netns::enter(&ns).expect("netns");
                let shard = k % 2;
                let mut s = connect(addr(shard));
                let got = client::shard_id(&mut s).expect("shard id");
                client::request(&mut s, &[k as u8; 1000], 2000).expect("round trip");
                (shard, got)
            })
        })
        .collect();
    for h in handles {
        let (want, got) = h.join().expect("client");
        assert_eq!(got as usize, want, "served by the wrong shard");
    }
    for p in &server.probes {
        assert_eq!(p.accepted.load(Ordering::Relaxed), 8);
    }
}

#[test]
fn outgoing_connection_echo_and_refusal() {
    if !is_root() {
        return;
    }
    let veth = VethPair::create("o", 1500).expect("veth");
    let echo_addr = std::net::SocketAddrV4::new(netns::CLIENT_IP, 9000);
    let l = netns::run_in(&veth.client_ns, move || {
        std::net::TcpListener::bind(echo_addr)
    })
    .expect("netns")
    .expect("bind echo");
    let server = kernel_echo(l, 1);
    let ns = veth.server_ns.clone();
    netns::run_in(&ns, move || {
        let dev = AfPacket::open(SERVER_IF, 1500).expect("af_packet");
        let fd = dev.as_raw_fd();
        let cfg = SmolConfig {
            ip: shard_ip(0),
            ..SmolConfig::default()
        };
        let mut st = SmolStack::new(dev, cfg, Some(fd)).expect("stack");
        let refused = std::net::SocketAddrV4::new(netns::CLIENT_IP, 9001);
        outgoing_echo(&mut st, echo_addr, refused, 1_000_000, 0);
    })
    .expect("smoltcp side");
    server.join().expect("echo server");
}

/// Commands for a stack driven on its own thread inside the server namespace.
enum Cmd {
    Accept(std::sync::mpsc::Sender<bool>),
    Stats(std::sync::mpsc::Sender<carmine_net::IfaceStats>),
    Stop,
}

#[test]
fn explicit_backlog_is_honoured_and_cap_enforced() {
    use carmine_net::{NetError, NetStack};
    if !is_root() {
        return;
    }
    let veth = VethPair::create("l", 1500).expect("veth");
    let (tx, rx) = std::sync::mpsc::channel::<Cmd>();
    let ns = veth.server_ns.clone();
    let driver = std::thread::spawn(move || {
        netns::enter(&ns).expect("netns");
        let open = || {
            let dev = AfPacket::open(SERVER_IF, 1500).expect("af_packet");
            let fd = dev.as_raw_fd();
            (dev, fd)
        };
        // The cap: 3 sockets cannot hold a backlog of 4.
        let (dev, fd) = open();
        let small = SmolConfig {
            max_sockets: 3,
            ip: shard_ip(0),
            ..SmolConfig::default()
        };
        let mut st = SmolStack::new(dev, small, Some(fd)).expect("stack");
        assert!(matches!(st.listen(PORT, 4), Err(NetError::SocketCap(3))));
        drop(st);

        let (dev, fd) = open();
        let cfg = SmolConfig {
            ip: shard_ip(0),
            ..SmolConfig::default()
        };
        let mut st = SmolStack::new(dev, cfg, Some(fd)).expect("stack");
        let l = st.listen(PORT, 2).expect("listen");
        assert_eq!(st.stats().sockets, 2, "backlog sockets pre-created");
        let mut held = Vec::new();
        loop {
            st.poll();
            match rx.try_recv() {
                Ok(Cmd::Accept(r)) => {
                    let c = st.accept(l).expect("accept");
                    held.extend(c);
                    r.send(c.is_some()).expect("reply");
                }
                Ok(Cmd::Stats(r)) => r.send(st.stats()).expect("reply"),
                Ok(Cmd::Stop) | Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    std::thread::sleep(Duration::from_micros(200))
                }
            }
        }
    });
    let cns = veth.client_ns.clone();
    let try_connect = move || {
        netns::run_in(&cns, || {
            std::net::TcpStream::connect_timeout(&addr(0), Duration::from_secs(3))
        })
        .expect("netns")
    };
    let c1 = try_connect().expect("1st fits the backlog");
    let c2 = try_connect().expect("2nd fits the backlog");
    let e = try_connect().expect_err("3rd is beyond the backlog");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    let (r, got) = std::sync::mpsc::channel();
    tx.send(Cmd::Accept(r)).expect("driver");
    assert!(got.recv_timeout(Duration::from_secs(5)).expect("reply"));
    // The accepted connection freed a backlog place: one more fits, then none.
    let mut c4 = None;
    for _ in 0..50 {
        match try_connect() {
            Ok(s) => {
                c4 = Some(s);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    assert!(c4.is_some(), "backlog place was not refilled");
    assert!(try_connect().is_err(), "backlog exceeded after refill");
    let (r, got) = std::sync::mpsc::channel();
    tx.send(Cmd::Stats(r)).expect("driver");
    let st = got.recv_timeout(Duration::from_secs(5)).expect("stats");
    assert_eq!((st.connections, st.accepted), (3, 1), "{st:?}");
    tx.send(Cmd::Stop).expect("driver");
    driver.join().expect("driver thread");
    drop((c1, c2, c4));
}
