//! The same API tests against the kernel-socket backend on 127.0.0.1 (no root needed), plus
//! API-contract tests driven directly (no reactor).

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use carmine_net::testapp::client;
use carmine_net::{ConnState, KernelConfig, KernelStack, NetError, NetStack};
use common::*;

fn start_kernel(shards: usize) -> Server {
    start(shards, 16, |_shard| {
        let stack = KernelStack::new(KernelConfig::default()).map_err(|e| e.to_string())?;
        Ok((stack, 0))
    })
}

fn addr(s: &Server, shard: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, s.ports[shard]))
}

#[test]
fn kernel_ten_thousand_round_trips_64b_to_64k() {
    let server = start_kernel(1);
    round_trips(addr(&server, 0), 4, 10_000, &plain_spawner());
    assert!(server.probes[0].requests.load(Ordering::Relaxed) >= 10_000);
}

#[test]
fn kernel_stream_256mib_each_way_with_checksum() {
    let server = start_kernel(1);
    let mut s = connect(addr(&server, 0));
    client::upload(&mut s, 256 << 20, 21).expect("upload verified");
    client::download(&mut s, 256 << 20, 22).expect("download verified");
}

#[test]
fn kernel_sixty_four_concurrent_connections() {
    // All 64 connect at once: the kernel's accept queue (listen(2) backlog) must hold them, or
    // the kernel drops handshakes and some clients see resets on their first request.
    let server = start(1, 64, |_shard| {
        let stack = KernelStack::new(KernelConfig::default()).map_err(|e| e.to_string())?;
        Ok((stack, 0))
    });
    concurrent_64(addr(&server, 0), server.probes[0].clone(), &plain_spawner());
}

#[test]
fn kernel_killed_client_is_reaped() {
    let server = start_kernel(1);
    let probe = server.probes[0].clone();
    wait_for(Duration::from_secs(5), "listener", || {
        probe_sockets(&probe) > 0
    });
    let baseline = probe_sockets(&probe);
    killed_client("127.0.0.1", server.ports[0], None, probe, baseline);
}

#[test]
fn kernel_two_shards_each_serve_their_own_connections() {
    let server = start_kernel(2);
    for k in 0..8 {
        let shard = k % 2;
        let mut s = connect(addr(&server, shard));
        assert_eq!(client::shard_id(&mut s).expect("id") as usize, shard);
    }
    for p in &server.probes {
        wait_for(Duration::from_secs(5), "accept counts", || {
            p.accepted.load(Ordering::Relaxed) == 4
        });
    }
}

/// Polls `stack` until `f` yields Some, bounded.
fn drive<S: NetStack, T>(stack: &mut S, mut f: impl FnMut(&mut S) -> Option<T>) -> T {
    for _ in 0..5000 {
        stack.poll();
        if let Some(v) = f(stack) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("condition not reached");
}

#[test]
fn kernel_backpressure_eof_and_stale_handles() {
    let mut st = KernelStack::new(KernelConfig {
        tx_buffer: Some(64 * 1024),
        ..KernelConfig::default()
    })
    .expect("stack");
    let l = st.listen(0, 4).expect("listen");
    let port = st.local_port(l).expect("port");
    let mut peer = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let c = drive(&mut st, |s| s.accept(l).expect("accept"));
    assert_eq!(st.conn_state(c).expect("state"), ConnState::Open);
    let space = st.send_space(c).expect("space");
    assert!(
        space >= 64 * 1024,
        "fresh socket reports {space} bytes of send space"
    );

    // Nothing to read yet: Ok(0), not an error.
    let mut buf = [0u8; 16];
    assert_eq!(st.read(c, &mut buf).expect("read"), 0);

    // The peer does not read: writes must eventually be refused (backpressure), not block.
    let chunk = vec![7u8; 64 * 1024];
    let mut sent = 0usize;
    let full = (0..10_000).any(|_| {
        let n = st.write(c, &chunk).expect("write");
        sent += n;
        n < chunk.len()
    });
    assert!(full, "send buffer never filled");
    assert!(st.conn_stats(c).expect("stats").write_blocked >= 1);

    // Drain on the peer side: everything written arrives.
    let mut got = 0usize;
    let mut rbuf = vec![0u8; 1 << 16];
    while got < sent {
        let n = peer.read(&mut rbuf).expect("peer read");
        assert!(n > 0);
        assert!(rbuf[..n].iter().all(|b| *b == 7));
        got += n;
    }

    // Peer sends then closes: data first, then Eof.
    peer.write_all(b"bye").expect("peer write");
    drop(peer);
    let mut got = Vec::new();
    let end = drive(&mut st, |s| match s.read(c, &mut buf) {
        Ok(n) => {
            got.extend_from_slice(&buf[..n]);
            None
        }
        Err(e) => Some(e),
    });
    assert!(matches!(end, NetError::Eof), "{end:?}");
    assert_eq!(got, b"bye");
    assert_eq!(st.stats().connections, 1);
    st.close(c).expect("close");
    assert_eq!(st.stats().connections, 0);
    assert!(matches!(st.read(c, &mut buf), Err(NetError::InvalidHandle)));
    assert!(matches!(st.close(c), Err(NetError::InvalidHandle)));
}

#[test]
fn kernel_socket_cap_is_enforced() {
    let mut st = KernelStack::new(KernelConfig {
        max_sockets: 3,
        ..Default::default()
    })
    .expect("stack");
    let l = st.listen(0, 8).expect("listen");
    let port = st.local_port(l).expect("port");
    let peers: Vec<_> = (0..4)
        .map(|_| std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect"))
        .collect();
    let mut conns = Vec::new();
    for _ in 0..200 {
        st.poll();
        while let Some(c) = st.accept(l).expect("accept") {
            conns.push(c);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // 1 listener + 2 connections = the cap of 3.
    assert_eq!(conns.len(), 2);
    assert!(st.stats().socket_cap_hits >= 1);
    st.close(conns[0]).expect("close");
    let c = drive(&mut st, |s| s.accept(l).expect("accept"));
    assert_ne!(c, conns[0]);
    drop(peers);
}

#[test]
fn kernel_outgoing_connection_echo_and_refusal() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let echo = match l.local_addr().expect("addr") {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => unreachable!(),
    };
    let server = kernel_echo(l, 1);
    // A port nobody listens on: bind, note, drop.
    let refused = match std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
    {
        Ok(SocketAddr::V4(a)) => a,
        _ => unreachable!(),
    };
    let mut st = KernelStack::new(KernelConfig::default()).expect("stack");
    outgoing_echo(&mut st, echo, refused, 300_000, 0);
    server.join().expect("echo server");
}
