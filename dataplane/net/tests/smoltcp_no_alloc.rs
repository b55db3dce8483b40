//! After warm-up, a shard serving request/response traffic through `SmolStack<AfPacket>`
//! (device, interface, sockets, accept/reap bookkeeping and the test application) makes no
//! global-allocator call. Needs root (veth in network namespaces); skipped otherwise.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use carmine_net::afpacket::AfPacket;
use carmine_net::netns::{self, VethPair, SERVER_IF};
use carmine_net::testapp::{client, Probe, ServerPoller};
use carmine_net::{NetStack, SmolConfig, SmolStack};
use carmine_reactor::{Poller, Reactor, ReactorConfig};

struct Counting;
static ARMED: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
thread_local! {
    static IN_POLL: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if ARMED.load(Ordering::Relaxed) && IN_POLL.with(|f| f.get()) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        note();
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Flags the thread as "on the data path" for the duration of each poll.
struct Flagged<P>(P);

impl<P: Poller> Poller for Flagged<P> {
    fn poll(&mut self) -> usize {
        IN_POLL.with(|f| f.set(true));
        let n = self.0.poll();
        IN_POLL.with(|f| f.set(false));
        n
    }
    fn next_deadline(&self) -> Option<std::time::Instant> {
        self.0.next_deadline()
    }
    fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        self.0.wait_fd()
    }
}

#[test]
fn smoltcp_request_response_does_not_allocate() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let veth = VethPair::create("a", 1500).expect("veth");
    let ip = Ipv4Addr::new(10, 77, 0, 2);
    let probe = Arc::new(Probe::default());
    let (ns, p2) = (veth.server_ns.clone(), probe.clone());
    let cfg = ReactorConfig {
        cores: vec![0],
        pin: false,
        ..Default::default()
    };
    let (reactor, _c) = Reactor::start::<(), _>(cfg, move |s| {
        netns::enter(&ns).map_err(|e| e.to_string())?;
        let dev = AfPacket::open(SERVER_IF, 1500).map_err(|e| e.to_string())?;
        let fd = dev.as_raw_fd();
        let cfg = SmolConfig {
            ip,
            ..SmolConfig::default()
        };
        let mut stack = SmolStack::new(dev, cfg, Some(fd)).map_err(|e| e.to_string())?;
        let l = stack.listen(7000, 8).map_err(|e| e.to_string())?;
        s.add_poller(Box::new(Flagged(ServerPoller::new(
            stack,
            vec![l],
            0,
            p2.clone(),
        ))));
        Ok(())
    })
    .expect("start");

    let addr = SocketAddr::from((ip, 7000));
    let warm = Arc::new(std::sync::Barrier::new(4));
    let clients: Vec<_> = (0..4)
        .map(|k| {
            let (ns, warm) = (veth.client_ns.clone(), warm.clone());
            std::thread::spawn(move || {
                netns::enter(&ns).expect("netns");
                let mut s = common::connect(addr);
                let req = vec![k as u8; 4096];
                for i in 0..1500 {
                    if i == 200 {
                        // Every connection is accepted and warm: start counting.
                        warm.wait();
                        ARMED.store(true, Ordering::SeqCst);
                    }
                    client::request(&mut s, &req, if i % 2 == 0 { 64 } else { 4096 })
                        .expect("round trip");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    ARMED.store(false, Ordering::SeqCst);
    assert!(probe.requests.load(Ordering::Relaxed) >= 6000);
    assert_eq!(
        ALLOCS.load(Ordering::Relaxed),
        0,
        "the shard's poll path allocated"
    );
    reactor.shutdown().expect("stop");
}
