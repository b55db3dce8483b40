//! The steady-state shard path makes no global-allocator call: after warm-up, cross-shard
//! ping-pong, control messages, task wake-ups and timers run with an allocator that counts
//! every allocation made on a shard thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carmine_reactor::{sleep, spawn_local, Reactor, ReactorConfig, Source};

struct Counting;

static ARMED: AtomicBool = AtomicBool::new(false);
static SHARD_ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static ON_SHARD: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if ARMED.load(Ordering::Relaxed) && ON_SHARD.with(|f| f.get()) {
        SHARD_ALLOCS.fetch_add(1, Ordering::Relaxed);
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

#[test]
fn steady_state_shard_path_does_not_allocate() {
    let pongs = Arc::new(AtomicU64::new(0));
    let ticks = Arc::new(AtomicU64::new(0));
    let (p2, t2) = (pongs.clone(), ticks.clone());
    let cfg = ReactorConfig {
        cores: vec![0, 1],
        pin: false,
        ..Default::default()
    };
    let (reactor, mut control) = Reactor::start::<u64, _>(cfg, move |s| {
        ON_SHARD.with(|f| f.set(true));
        let mb = s.mailbox();
        let shard = s.shard();
        let pongs = p2.clone();
        let bounce = Rc::new(Cell::new(0u64));
        s.on_message(move |src, m| match (shard, src) {
            // control -> shard 0: start a burst of pings
            (0, Source::Control) => {
                for i in 0..m {
                    let _ = mb.send(1, i);
                }
            }
            (1, Source::Shard(0)) => {
                bounce.set(bounce.get() + 1);
                let _ = mb.send(0, m);
            }
            (0, Source::Shard(1)) => {
                pongs.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        });
        if shard == 1 {
            let ticks = t2.clone();
            spawn_local(async move {
                loop {
                    sleep(Duration::from_millis(1)).await;
                    ticks.fetch_add(1, Ordering::Relaxed);
                }
            })
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .expect("start");

    let wait = |target: u64, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while pongs.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    // Warm-up: first use of every ring, the timer heap, thread-locals.
    control.send(0, 100).expect("ring");
    wait(100, "warm-up");
    std::thread::sleep(Duration::from_millis(20));

    ARMED.store(true, Ordering::SeqCst);
    let ticks_before = ticks.load(Ordering::Relaxed);
    let mut sent = 100;
    for _ in 0..50 {
        control.send(0, 200).expect("ring");
        sent += 200;
        wait(sent, "ping-pong");
    }
    std::thread::sleep(Duration::from_millis(30));
    ARMED.store(false, Ordering::SeqCst);

    assert!(
        ticks.load(Ordering::Relaxed) > ticks_before,
        "timers did not run while armed"
    );
    assert_eq!(
        SHARD_ALLOCS.load(Ordering::Relaxed),
        0,
        "shard threads allocated"
    );
    let s0 = reactor.stats(0).expect("s0").snapshot();
    assert_eq!(s0.cross_shard_sent, sent);
    reactor.shutdown().expect("stop");
}
