//! Reactor behaviour: messaging and hop counts, backpressure, executor, timers, pollers,
//! adaptive sleep and wake-ups, init errors. Every test is bounded by `recv_timeout`.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use carmine_reactor::{
    sleep, spawn_local, IdlePolicy, Poller, Reactor, ReactorConfig, ReactorError, Source,
};

const T: Duration = Duration::from_secs(10);

fn cfg(n: usize) -> ReactorConfig {
    ReactorConfig {
        cores: (0..n).collect(),
        pin: false,
        ..ReactorConfig::default()
    }
}

#[derive(Debug)]
enum Msg {
    /// control -> shard 0: send `n` pings to shard 1
    Start(u32),
    Ping(u32),
    Pong(#[allow(dead_code)] u32),
}

#[test]
fn cross_shard_ping_pong_is_counted() {
    let (done_tx, done_rx) = mpsc::channel::<u32>();
    let (reactor, mut control) = Reactor::start(cfg(2), move |s| {
        let mb = s.mailbox();
        let done = done_tx.clone();
        let got = Rc::new(Cell::new(0u32));
        let target = Rc::new(Cell::new(0u32));
        s.on_message(move |src, m| match (src, m) {
            (Source::Control, Msg::Start(n)) => {
                target.set(n);
                for i in 0..n {
                    mb.send(1, Msg::Ping(i)).expect("ring has room");
                }
            }
            (Source::Shard(0), Msg::Ping(i)) => mb.send(0, Msg::Pong(i)).expect("room"),
            (Source::Shard(1), Msg::Pong(_)) => {
                got.set(got.get() + 1);
                if got.get() == target.get() {
                    done.send(got.get()).expect("test alive");
                }
            }
            other => panic!("unexpected {other:?}"),
        });
        Ok(())
    })
    .expect("start");
    control.send(0, Msg::Start(500)).expect("control ring");
    assert_eq!(done_rx.recv_timeout(T).expect("pongs"), 500);
    let s0 = reactor.stats(0).expect("shard 0").snapshot();
    let s1 = reactor.stats(1).expect("shard 1").snapshot();
    assert_eq!(s0.cross_shard_sent, 500);
    assert_eq!(s1.cross_shard_received, 500);
    assert_eq!(s1.cross_shard_sent, 500);
    assert_eq!(s0.cross_shard_received, 500);
    assert_eq!(s0.control_received, 1);
    assert!(s0.busy_loops > 0);
    reactor.shutdown().expect("clean stop");
}

#[test]
fn full_ring_returns_the_message() {
    const BLOCK: u32 = 1000;
    let (tx, rx) = mpsc::channel::<(usize, usize)>();
    let (blocked_tx, blocked_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (got_tx, got_rx) = mpsc::channel::<u32>();
    // Handed to shard 1's handler once (the init closure is shared by both shards).
    let release_rx = std::sync::Mutex::new(Some(release_rx));
    let config = ReactorConfig {
        ring_capacity: 4,
        ..cfg(2)
    };
    let (reactor, mut control) = Reactor::start(config, move |s| {
        let mb = s.mailbox();
        let tx = tx.clone();
        if s.shard() == 0 {
            s.on_message(move |_, _m: u32| {
                // Shard 1 is parked inside a handler: nothing drains its ring, only 4 fit.
                let ok = (0..10).filter(|i| mb.send(1, *i).is_ok()).count();
                tx.send((ok, mb.free_slots(1))).expect("test alive");
            });
        } else {
            let (blocked_tx, got_tx) = (blocked_tx.clone(), got_tx.clone());
            let release = release_rx
                .lock()
                .expect("lock")
                .take()
                .expect("one shard 1");
            s.on_message(move |_, m: u32| {
                if m == BLOCK {
                    blocked_tx.send(()).expect("test alive");
                    release.recv_timeout(T).expect("released");
                } else {
                    got_tx.send(m).expect("test alive");
                }
            });
        }
        Ok(())
    })
    .expect("start");
    control.send(1, BLOCK).expect("control");
    blocked_rx.recv_timeout(T).expect("shard 1 parked");
    control.send(0, 0).expect("control");
    let (ok, free) = rx.recv_timeout(T).expect("result");
    assert_eq!(
        (ok, free),
        (4, 0),
        "exactly the ring's capacity was accepted"
    );
    assert_eq!(reactor.stats(0).expect("s0").snapshot().ring_full, 6);
    release_tx.send(()).expect("shard 1 alive");
    // The 4 accepted messages arrive, in order; the 6 refused ones never do.
    let got: Vec<u32> = (0..4)
        .map(|_| got_rx.recv_timeout(T).expect("delivered"))
        .collect();
    assert_eq!(got, vec![0, 1, 2, 3]);
    assert!(got_rx.recv_timeout(Duration::from_millis(200)).is_err());
    reactor.shutdown().expect("clean stop");
}

#[test]
fn tasks_sleep_on_timers_and_the_shard_sleeps_meanwhile() {
    let (tx, rx) = mpsc::channel::<Duration>();
    let (reactor, _control) = Reactor::start::<(), _>(cfg(1), move |_s| {
        let tx = tx.clone();
        spawn_local(async move {
            let t0 = Instant::now();
            // a task awaiting another task's result
            let inner = spawn_local(async {
                sleep(Duration::from_millis(30)).await;
                7u32
            })
            .expect("spawn inner");
            assert_eq!(inner.await, 7);
            sleep(Duration::from_millis(20)).await;
            tx.send(t0.elapsed()).expect("test alive");
        })
        .map_err(|e| e.to_string())?;
        Ok(())
    })
    .expect("start");
    let elapsed = rx.recv_timeout(T).expect("task finished");
    assert!(
        elapsed >= Duration::from_millis(50),
        "slept only {elapsed:?}"
    );
    let s = reactor.stats(0).expect("s0").snapshot();
    assert!(s.timers_fired >= 2, "{s:?}");
    assert!(s.sleeps >= 1, "adaptive shard never blocked: {s:?}");
    assert!(s.task_polls >= 4, "{s:?}");
}

/// A poller whose work arrives on a pipe: the shard must wake from its ppoll on the fd.
struct PipePoller {
    rd: std::fs::File,
    seen: mpsc::Sender<u8>,
}

impl Poller for PipePoller {
    fn poll(&mut self) -> usize {
        use std::io::Read;
        let mut b = [0u8; 16];
        match self.rd.read(&mut b) {
            Ok(n) if n > 0 => {
                for x in &b[..n] {
                    self.seen.send(*x).expect("test alive");
                }
                n
            }
            _ => 0,
        }
    }
    fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        Some(self.rd.as_raw_fd())
    }
}

fn nonblocking_pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: test-only; pipe2 writes two fds into the array, which we then own.
    unsafe {
        assert_eq!(
            libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC),
            0
        );
        use std::os::fd::FromRawFd;
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

#[test]
fn poller_fd_wakes_a_sleeping_shard() {
    use std::io::Write;
    let (rd, mut wr) = nonblocking_pipe();
    let (tx, rx) = mpsc::channel();
    let rd = std::sync::Mutex::new(Some(rd));
    let config = ReactorConfig {
        // sleep long so that only the fd can wake it in time
        idle: IdlePolicy::Adaptive {
            spin: 4,
            yields: 0,
            max_sleep: Duration::from_secs(30),
            deep_sleep: Duration::from_secs(30),
        },
        ..cfg(1)
    };
    let (reactor, _c) = Reactor::start::<(), _>(config, move |s| {
        let rd = rd.lock().expect("lock").take().ok_or("init ran twice")?;
        s.add_poller(Box::new(PipePoller {
            rd,
            seen: tx.clone(),
        }));
        Ok(())
    })
    .expect("start");
    // Wait until it has gone to sleep.
    let deadline = Instant::now() + T;
    while reactor.stats(0).expect("s0").snapshot().sleeps == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    wr.write_all(&[42]).expect("write pipe");
    assert_eq!(rx.recv_timeout(T).expect("woken by fd"), 42);
    reactor.shutdown().expect("stop");
}

#[test]
fn control_message_wakes_a_sleeping_shard() {
    let (tx, rx) = mpsc::channel();
    let config = ReactorConfig {
        idle: IdlePolicy::Adaptive {
            spin: 4,
            yields: 0,
            max_sleep: Duration::from_secs(30),
            deep_sleep: Duration::from_secs(30),
        },
        ..cfg(1)
    };
    let (reactor, mut control) = Reactor::start::<u64, _>(config, move |s| {
        let tx = tx.clone();
        s.on_message(move |_, m| tx.send(m).expect("alive"));
        Ok(())
    })
    .expect("start");
    for i in 0..20u64 {
        // Give it time to fall asleep (30 s max) before every other send: only the eventfd
        // signal can then deliver the message within the test's bound.
        if i % 2 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        control.send(0, i).expect("room");
        assert_eq!(rx.recv_timeout(T).expect("delivered"), i);
    }
    assert!(reactor.stats(0).expect("s0").snapshot().sleeps >= 10);
}

#[test]
fn init_error_is_reported() {
    let r = Reactor::start::<(), _>(cfg(2), |s| {
        if s.shard() == 1 {
            Err("no such device".to_string())
        } else {
            Ok(())
        }
    });
    match r {
        Err(ReactorError::Init { shard: 1, reason }) => assert_eq!(reason, "no such device"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("start should fail"),
    }
}

#[test]
fn shards_are_pinned_to_their_core() {
    let (tx, rx) = mpsc::channel();
    let config = ReactorConfig {
        cores: vec![0],
        pin: true,
        ..ReactorConfig::default()
    };
    let (_reactor, _c) = Reactor::start::<(), _>(config, move |s| {
        // SAFETY: test-only; reads this thread's affinity mask into a zeroed cpu_set_t.
        let cpus = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
            (0..libc::CPU_SETSIZE as usize)
                .filter(|c| libc::CPU_ISSET(*c, &set))
                .count()
        };
        tx.send((s.core(), cpus)).expect("alive");
        Ok(())
    })
    .expect("start");
    assert_eq!(rx.recv_timeout(T).expect("init ran"), (Some(0), 1));
}

#[test]
fn spawn_off_shard_fails() {
    assert!(matches!(
        spawn_local(async {}),
        Err(ReactorError::NotOnShard)
    ));
}

#[test]
fn an_idle_shard_sleeps_longer_and_longer_and_a_message_still_wakes_it() {
    let (tx, rx) = mpsc::channel();
    let config = ReactorConfig {
        idle: IdlePolicy::Adaptive {
            spin: 4,
            yields: 0,
            max_sleep: Duration::from_micros(100),
            deep_sleep: Duration::from_secs(30),
        },
        ..cfg(1)
    };
    let (reactor, mut control) = Reactor::start::<u64, _>(config, move |s| {
        let tx = tx.clone();
        s.on_message(move |_, m| tx.send(m).expect("alive"));
        Ok(())
    })
    .expect("start");
    let stats = reactor.stats_handle(0).expect("s0");
    // Twelve sleeps of 0.1, 0.2, .. 204.8 ms: the cap is now 409.6 ms and grows on.
    let deadline = Instant::now() + T;
    while stats.snapshot().sleeps < 12 {
        assert!(Instant::now() < deadline, "{:?}", stats.snapshot());
        std::thread::sleep(Duration::from_millis(1));
    }
    // A second more: with a fixed 100 us cap that would be thousands of sleeps; backing off,
    // two or three (a slow machine only makes it fewer).
    std::thread::sleep(Duration::from_secs(1));
    let idle = stats.snapshot();
    assert!(idle.sleeps <= 16, "{idle:?}");
    // Nothing but the timeout ended those sleeps (the last may still be under way).
    assert_eq!(idle.sleep_wakeups, 0, "{idle:?}");
    assert!(idle.sleeps - idle.sleep_timeouts <= 1, "{idle:?}");
    // The eventfd still ends a deep sleep at once. (A message published in the few
    // instructions between two sleeps is found without sleeping: try again then.)
    for i in 0..3u64 {
        control.send(0, i).expect("room");
        assert_eq!(rx.recv_timeout(T).expect("delivered"), i);
        if stats.snapshot().sleep_wakeups > 0 {
            reactor.shutdown().expect("stop");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no message woke the sleeping shard: {:?}", stats.snapshot());
}

/// Work every 20 ms that only a deadline brings (a sweep): counts its rounds.
struct Housekeeping {
    next: Instant,
    rounds: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Poller for Housekeeping {
    fn poll(&mut self) -> usize {
        let now = Instant::now();
        if now < self.next {
            return 0;
        }
        self.next = now + Duration::from_millis(20);
        self.rounds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        1
    }

    fn next_deadline(&self) -> Option<Instant> {
        Some(self.next)
    }
}

#[test]
fn work_a_timer_brings_does_not_restart_the_spin_ladder() {
    const SPIN: u32 = 10_000;
    let rounds = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let rounds2 = rounds.clone();
    let config = ReactorConfig {
        idle: IdlePolicy::Adaptive {
            spin: SPIN,
            yields: 0,
            max_sleep: Duration::from_millis(1),
            deep_sleep: Duration::from_millis(50),
        },
        ..cfg(1)
    };
    let (reactor, _c) = Reactor::start::<(), _>(config, move |s| {
        s.add_poller(Box::new(Housekeeping {
            next: Instant::now(),
            rounds: rounds2.clone(),
        }));
        Ok(())
    })
    .expect("start");
    let deadline = Instant::now() + T;
    while rounds.load(std::sync::atomic::Ordering::Relaxed) < 50 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    let s = reactor.stats(0).expect("s0").snapshot();
    // Spinning the ladder after each round would make it 50 x SPIN idle iterations; the first
    // ladder (and one restarted where a round fell in it) is all it may spin.
    assert!(s.idle_loops < 10 * u64::from(SPIN), "{s:?}");
    assert!(s.housekeeping_wakes >= 40, "{s:?}");
    reactor.shutdown().expect("stop");
}

/// A "ring" with no fd that the test thread pushes into: a count of items published.
struct Pushed {
    published: std::sync::Arc<std::sync::atomic::AtomicU64>,
    taken: u64,
    seen: mpsc::Sender<u64>,
}

impl Poller for Pushed {
    fn poll(&mut self) -> usize {
        let n = self.published.load(std::sync::atomic::Ordering::Acquire);
        let work = (n - self.taken) as usize;
        if work > 0 {
            self.taken = n;
            self.seen.send(n).expect("alive");
        }
        work
    }

    fn has_pending(&self) -> bool {
        self.published.load(std::sync::atomic::Ordering::SeqCst) > self.taken
    }
}

#[test]
fn a_shard_waker_wakes_a_sleeping_shard_for_work_with_no_fd() {
    let published = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (seen_tx, seen) = mpsc::channel();
    let (waker_tx, waker_rx) = mpsc::channel();
    let p2 = published.clone();
    let config = ReactorConfig {
        // Only the waker can bring the work within the test's bound.
        idle: IdlePolicy::Adaptive {
            spin: 4,
            yields: 0,
            max_sleep: Duration::from_secs(30),
            deep_sleep: Duration::from_secs(30),
        },
        ..cfg(1)
    };
    let (reactor, _c) = Reactor::start::<(), _>(config, move |s| {
        waker_tx
            .send(s.waker(0).ok_or("no waker")?)
            .map_err(|e| e.to_string())?;
        assert!(s.waker(1).is_none());
        s.add_poller(Box::new(Pushed {
            published: p2.clone(),
            taken: 0,
            seen: seen_tx.clone(),
        }));
        Ok(())
    })
    .expect("start");
    let waker = waker_rx.recv_timeout(T).expect("waker");
    for i in 1..=20u64 {
        // Every other push finds the shard asleep (or falling asleep: the re-check of
        // has_pending after it announced its sleep catches those).
        if i % 2 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        published.store(i, std::sync::atomic::Ordering::SeqCst);
        waker.notify();
        assert_eq!(seen.recv_timeout(T).expect("woken by the waker"), i);
    }
    assert!(reactor.stats(0).expect("s0").snapshot().sleeps >= 10);
    reactor.shutdown().expect("stop");
}
