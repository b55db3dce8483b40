//! Shared harness: a reactor whose shards each run a `ServerPoller`, plus client helpers.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use carmine_net::testapp::{client, Probe, ServerPoller};
use carmine_net::NetStack;
use carmine_reactor::{Reactor, ReactorConfig, ShardSetup};

pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Server {
    pub reactor: Option<Reactor>,
    pub probes: Vec<Arc<Probe>>,
    pub ports: Vec<u16>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(r) = self.reactor.take() {
            let _ = r.shutdown();
        }
    }
}

/// Starts `shards` shards; `make(shard)` runs on the shard thread and returns its stack plus
/// the port to listen on; the listener gets `backlog`.
pub fn start<S, F>(shards: usize, backlog: usize, make: F) -> Server
where
    S: NetStack + 'static,
    F: Fn(usize) -> Result<(S, u16), String> + Send + Sync + 'static,
{
    let probes: Vec<Arc<Probe>> = (0..shards).map(|_| Arc::new(Probe::default())).collect();
    let ports = Arc::new(std::sync::Mutex::new(vec![0u16; shards]));
    let (p2, ports2) = (probes.clone(), ports.clone());
    let cfg = ReactorConfig {
        cores: (0..shards).collect(),
        pin: false,
        ..Default::default()
    };
    let (reactor, _control) = Reactor::start::<(), _>(cfg, move |s: &mut ShardSetup<()>| {
        let (mut stack, port) = make(s.shard())?;
        let l = stack.listen(port, backlog).map_err(|e| e.to_string())?;
        let port = stack.local_port(l).map_err(|e| e.to_string())?;
        ports2.lock().map_err(|e| e.to_string())?[s.shard()] = port;
        let app = ServerPoller::new(stack, vec![l], s.shard() as u32, p2[s.shard()].clone());
        s.add_poller(Box::new(app));
        Ok(())
    })
    .expect("reactor starts");
    let ports = ports.lock().expect("ports").clone();
    Server {
        reactor: Some(reactor),
        probes,
        ports,
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(s) => {
                s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
                s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
                s.set_nodelay(true).expect("nodelay");
                return s;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("connect {addr}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("connect {addr}: {e}"),
        }
    }
}

/// Waits until `cond` holds, at most `limit`.
pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub const SIZES: [usize; 11] = [
    64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536,
];

/// `total` verified round trips over `conns` parallel connections; request and reply sizes
/// walk through 64 B..64 KiB. `spawn` starts a client thread (inside a netns or not).
pub fn round_trips(addr: SocketAddr, conns: usize, total: usize, spawn: &Spawner) {
    let per = total / conns;
    let handles: Vec<_> = (0..conns)
        .map(|k| {
            spawn(Box::new(move || {
                let mut s = connect(addr);
                for i in 0..per {
                    let req_len = SIZES[(i + k) % SIZES.len()];
                    let resp_len = SIZES[(i * 7 + k) % SIZES.len()];
                    let req: Vec<u8> = (0..req_len).map(|j| (j * 31 + i + k) as u8).collect();
                    client::request(&mut s, &req, resp_len).expect("verified round trip");
                }
                per
            }))
        })
        .collect();
    let done: usize = handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .sum();
    assert_eq!(done, total);
}

pub type Spawner = dyn Fn(Box<dyn FnOnce() -> usize + Send>) -> std::thread::JoinHandle<usize>;

pub fn plain_spawner() -> Box<Spawner> {
    Box::new(std::thread::spawn)
}

pub fn netns_spawner(ns: String) -> Box<Spawner> {
    Box::new(move |f| {
        let ns = ns.clone();
        std::thread::spawn(move || {
            carmine_net::netns::enter(&ns).expect("enter client netns");
            f()
        })
    })
}

pub fn probe_sockets(p: &Probe) -> u64 {
    p.sockets.load(Ordering::Relaxed)
}

/// 64 clients connected at once, each served (round trips + shard id) while all are open.
pub fn concurrent_64(addr: SocketAddr, probe: Arc<Probe>, spawn: &Spawner) {
    let n = 64;
    let barrier = Arc::new(std::sync::Barrier::new(n + 1));
    let release = Arc::new(std::sync::Barrier::new(n + 1));
    let handles: Vec<_> = (0..n)
        .map(|k| {
            let (b, r) = (barrier.clone(), release.clone());
            spawn(Box::new(move || {
                let mut s = connect(addr);
                let req = vec![k as u8; 100 + k];
                // Reach the barriers even on failure, so a failed client fails the test instead
                // of leaving the others waiting forever.
                let first = client::request(&mut s, &req, 64 + k);
                b.wait();
                r.wait();
                first.expect("round trip");
                client::request(&mut s, &req, 4096).expect("round trip after all connected");
                1
            }))
        })
        .collect();
    barrier.wait();
    wait_for(Duration::from_secs(10), "64 live connections", || {
        probe.connections.load(Ordering::Relaxed) == n as u64
    });
    release.wait();
    let served: usize = handles.into_iter().map(|h| h.join().expect("client")).sum();
    assert_eq!(served, n);
    assert!(probe.accepted.load(Ordering::Relaxed) >= n as u64);
}

/// Runs a python3 client in its own process (optionally inside a netns) that downloads an
/// endless stream, waits until the server has sent a few MiB, then SIGKILLs it.
pub fn killed_client(ip: &str, port: u16, netns: Option<&str>, probe: Arc<Probe>, baseline: u64) {
    let script = format!(
        "import socket,struct\n\
         s=socket.create_connection(('{ip}',{port}),timeout=20)\n\
         s.sendall(b'D'+struct.pack('<QQ',1<<40,7))\n\
         n=0\n\
         while True:\n  d=s.recv(65536)\n  n+=len(d)\n  if not d: break\n"
    );
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns, "python3", "-c", &script]);
            c
        }
        None => {
            let mut c = std::process::Command::new("python3");
            c.args(["-c", &script]);
            c
        }
    };
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(cmd.spawn().expect("spawn python3 client"));
    wait_for(Duration::from_secs(15), "the client connection", || {
        probe.connections.load(Ordering::Relaxed) >= 1
    });
    // Let it stream for a moment so it is killed mid-stream.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.0.try_wait().expect("wait").is_none(),
        "client exited on its own"
    );
    child.0.kill().expect("SIGKILL the client");
    let _ = child.0.wait();
    wait_for(
        Duration::from_secs(20),
        "the connection to be reaped",
        || {
            probe.connections.load(Ordering::Relaxed) == 0
                && probe_sockets(&probe) == baseline
                && probe.reaped.load(Ordering::Relaxed) >= 1
        },
    );
}

/// A kernel echo server on `listener` (one connection at a time, `conns` of them).
pub fn kernel_echo(listener: std::net::TcpListener, conns: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for _ in 0..conns {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            let mut buf = vec![0u8; 65536];
            loop {
                match std::io::Read::read(&mut s, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if std::io::Write::write_all(&mut s, &buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        }
    })
}

/// Drives `stack` (on this thread) through an outgoing connection to an echo server: sends
/// `len` patterned bytes, reads them back, verifies, closes, and checks the socket count
/// returns to `baseline`. Then a connection to `refused` (no listener) must end `Closed`.
pub fn outgoing_echo<S: carmine_net::NetStack>(
    stack: &mut S,
    echo: std::net::SocketAddrV4,
    refused: std::net::SocketAddrV4,
    len: usize,
    baseline: u64,
) {
    use carmine_net::{ConnState, NetError};
    let deadline = Instant::now() + IO_TIMEOUT;
    let c = stack.connect(echo).expect("connect");
    let mut out: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
    let mut sent = 0;
    let mut back = Vec::with_capacity(len);
    let mut buf = vec![0u8; 65536];
    let mut saw_connecting = false;
    while back.len() < len {
        assert!(
            Instant::now() < deadline,
            "echo timed out ({} of {len})",
            back.len()
        );
        stack.poll();
        match stack.conn_state(c).expect("state") {
            ConnState::Connecting => {
                saw_connecting = true;
                continue;
            }
            ConnState::Open => {}
            other => panic!("connection ended early: {other:?}"),
        }
        if sent < len {
            sent += stack.write(c, &out[sent..]).expect("write");
        }
        let n = stack.read(c, &mut buf).expect("read");
        back.extend_from_slice(&buf[..n]);
        if n == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    assert!(saw_connecting || stack.conn_stats(c).expect("stats").bytes_out == len as u64);
    assert_eq!(back, out);
    let st = stack.conn_stats(c).expect("stats");
    assert_eq!((st.bytes_out, st.bytes_in), (len as u64, len as u64));
    stack.close(c).expect("close");
    out.clear();
    while stack.stats().sockets != baseline {
        assert!(
            Instant::now() < deadline,
            "socket not reaped: {:?}",
            stack.stats()
        );
        stack.poll();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(matches!(
        stack.read(c, &mut buf),
        Err(NetError::InvalidHandle)
    ));

    let r = stack.connect(refused).expect("connect starts");
    loop {
        assert!(Instant::now() < deadline, "refused connection never closed");
        stack.poll();
        match stack.conn_state(r).expect("state") {
            ConnState::Closed => break,
            ConnState::Connecting => std::thread::sleep(Duration::from_millis(1)),
            other => panic!("refused connection is {other:?}"),
        }
    }
    assert!(matches!(stack.write(r, b"x"), Err(NetError::Closed)));
    stack.close(r).expect("close");
    stack.poll();
    assert_eq!(stack.stats().sockets, baseline);
}
