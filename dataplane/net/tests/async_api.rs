//! The async layer on a reactor shard: an echo server written as `!Send` tasks (accept loop +
//! one task per connection) serving concurrent kernel clients, and an outgoing connection made
//! from a task. Kernel backend on loopback; smoltcp over veth when root.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use carmine_net::afpacket::AfPacket;
use carmine_net::netns::{self, VethPair, SERVER_IF};
use carmine_net::{AsyncNet, KernelConfig, KernelStack, NetStack, SmolConfig, SmolStack};
use carmine_reactor::{spawn_local, Reactor, ReactorConfig};
use common::{connect, kernel_echo, IO_TIMEOUT};

/// Starts one shard running an async echo server on `port` of the stack `make` builds, and
/// (if `outgoing` is set) a task that connects there, sends 200 kB, expects them back, and
/// reports the result on `done`.
fn start_async<S, F>(
    make: F,
    port: u16,
    outgoing: Option<SocketAddrV4>,
    done: mpsc::Sender<Result<usize, String>>,
) -> (Reactor, u16)
where
    S: NetStack + 'static,
    F: Fn() -> Result<S, String> + Send + Sync + 'static,
{
    let bound = Arc::new(Mutex::new(0u16));
    let b2 = bound.clone();
    let done = Mutex::new(done);
    let cfg = ReactorConfig {
        cores: vec![0],
        pin: false,
        ..Default::default()
    };
    let (reactor, _c) = Reactor::start::<(), _>(cfg, move |s| {
        let stack = make()?;
        let (net, poller) = AsyncNet::new(stack, 256);
        s.add_poller(Box::new(poller));
        let l = net
            .with(|st| st.listen(port, 8))
            .map_err(|e| e.to_string())?;
        *b2.lock().map_err(|e| e.to_string())? =
            net.with(|st| st.local_port(l)).map_err(|e| e.to_string())?;
        let n2 = net.clone();
        spawn_local(async move {
            while let Ok(c) = n2.accept(l).await {
                let n3 = n2.clone();
                let _ = spawn_local(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match n3.read(c, &mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if n3.write_all(c, &buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = n3.close(c);
                });
            }
        })
        .map_err(|e| e.to_string())?;
        if let Some(remote) = outgoing {
            let tx = done.lock().map_err(|e| e.to_string())?.clone();
            let n2 = net.clone();
            spawn_local(async move {
                let r = async {
                    let c = n2.connect(remote).await.map_err(|e| e.to_string())?;
                    let data: Vec<u8> = (0..200_000).map(|i| (i % 253) as u8).collect();
                    n2.write_all(c, &data).await.map_err(|e| e.to_string())?;
                    let mut back = vec![0u8; data.len()];
                    let mut got = 0;
                    while got < back.len() {
                        let n = n2
                            .read(c, &mut back[got..])
                            .await
                            .map_err(|e| e.to_string())?;
                        if n == 0 {
                            return Err("eof before the echo".to_string());
                        }
                        got += n;
                    }
                    n2.close(c).map_err(|e| e.to_string())?;
                    if back != data {
                        return Err("echo differs".to_string());
                    }
                    Ok(got)
                }
                .await;
                let _ = tx.send(r);
            })
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .expect("reactor");
    let port = *bound.lock().expect("port");
    (reactor, port)
}

/// 16 concurrent clients, each echoing 256 kB in uneven pieces.
fn echo_clients(addr: SocketAddr, spawn: &common::Spawner) {
    let hs: Vec<_> = (0..16)
        .map(|k| {
            spawn(Box::new(move || {
                let mut s = connect(addr);
                let data: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 + k) as u8).collect();
                let w = s.try_clone().expect("clone");
                let d2 = data.clone();
                let writer = std::thread::spawn(move || {
                    let mut w = w;
                    for chunk in d2.chunks(1000 + k * 97) {
                        w.write_all(chunk).expect("write");
                    }
                });
                let mut back = vec![0u8; data.len()];
                s.read_exact(&mut back).expect("echo");
                writer.join().expect("writer");
                assert_eq!(back, data);
                1
            }))
        })
        .collect();
    let n: usize = hs.into_iter().map(|h| h.join().expect("client")).sum();
    assert_eq!(n, 16);
}

#[test]
fn async_echo_and_outgoing_on_kernel_backend() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let echo = match l.local_addr().expect("addr") {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => unreachable!(),
    };
    let echo_server = kernel_echo(l, 1);
    let (tx, rx) = mpsc::channel();
    let (reactor, port) = start_async(
        || KernelStack::new(KernelConfig::default()).map_err(|e| e.to_string()),
        0,
        Some(echo),
        tx,
    );
    assert_eq!(
        rx.recv_timeout(IO_TIMEOUT).expect("outgoing task"),
        Ok(200_000)
    );
    echo_clients(
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        &common::plain_spawner(),
    );
    reactor.shutdown().expect("stop");
    echo_server.join().expect("echo server");
}

#[test]
fn async_echo_and_outgoing_on_smoltcp() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let veth = VethPair::create("y", 1500).expect("veth");
    let echo = SocketAddrV4::new(netns::CLIENT_IP, 9100);
    let l = netns::run_in(&veth.client_ns, move || std::net::TcpListener::bind(echo))
        .expect("netns")
        .expect("bind");
    let echo_server = kernel_echo(l, 1);
    let ip = Ipv4Addr::new(10, 77, 0, 2);
    let ns = veth.server_ns.clone();
    let (tx, rx) = mpsc::channel();
    let (reactor, port) = start_async(
        move || {
            netns::enter(&ns).map_err(|e| e.to_string())?;
            let dev = AfPacket::open(SERVER_IF, 1500).map_err(|e| e.to_string())?;
            let fd = dev.as_raw_fd();
            let cfg = SmolConfig {
                ip,
                ..SmolConfig::default()
            };
            SmolStack::new(dev, cfg, Some(fd)).map_err(|e| e.to_string())
        },
        7300,
        Some(echo),
        tx,
    );
    assert_eq!(
        rx.recv_timeout(IO_TIMEOUT).expect("outgoing task"),
        Ok(200_000)
    );
    echo_clients(
        SocketAddr::from((ip, port)),
        &common::netns_spawner(veth.client_ns.clone()),
    );
    // Idle now: smoltcp's timers must not keep the adaptive shard from sleeping.
    common::wait_for(Duration::from_secs(10), "the idle shard to sleep", || {
        reactor.stats(0).expect("stats").snapshot().sleeps > 0
    });
    reactor.shutdown().expect("stop");
    echo_server.join().expect("echo server");
}
