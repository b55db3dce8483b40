//! SPDK on reactor shards, the way the OSD runs it: each shard owns an SPDK thread and an I/O
//! channel, polls the SPDK thread from its loop as a reactor poller, and reaps its own bdev
//! completions on its own OS thread. Two shards write and read back disjoint regions of one
//! malloc bdev at queue depth 8.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use carmine_reactor::{IdlePolicy, Poller, Reactor, ReactorConfig};
use carmine_spdk::selftest::pattern;
use carmine_spdk::{reap, Bdev, BdevKind, DmaBuf, IoKind, SpdkThread};

const BLOCKS_PER_SHARD: u64 = 256; // 4 KiB blocks
const QD: u64 = 8;

#[derive(Debug)]
struct Report {
    shard: usize,
    verified: u64,
}

/// The per-shard I/O driver: writes every block of its region (QD in flight), then reads every
/// block back and checks it. Fields drop in order: the bdev (channel) before the SPDK thread.
struct ShardIo {
    bdev: Bdev,
    thread: SpdkThread,
    shard: usize,
    os_thread: std::thread::ThreadId,
    next: u64,
    inflight: u64,
    done_writes: u64,
    verified: u64,
    reading: bool,
    failed: Option<String>,
    report: Option<mpsc::Sender<Result<Report, String>>>,
    scratch: Vec<u8>,
}

impl ShardIo {
    fn offset(&self, block: u64) -> u64 {
        (self.shard as u64 * BLOCKS_PER_SHARD + block) * 4096
    }

    fn submit(&mut self) {
        while self.inflight < QD && self.next < BLOCKS_PER_SHARD && self.failed.is_none() {
            let off = self.offset(self.next);
            let r = match DmaBuf::new(4096, 4096) {
                Ok(mut buf) if !self.reading => {
                    pattern(off, self.shard as u8, buf.as_mut_slice());
                    self.bdev.write(off, 4096, buf, self.next)
                }
                Ok(buf) => self.bdev.read(off, 4096, buf, self.next),
                Err(e) => Err((e, None)),
            };
            if let Err((e, _)) = r {
                self.failed = Some(format!("submit: {e}"));
                return;
            }
            self.next += 1;
            self.inflight += 1;
        }
    }
}

impl Poller for ShardIo {
    fn poll(&mut self) -> usize {
        let mut work = usize::from(self.thread.poll());
        while let Some(c) = reap() {
            work += 1;
            self.inflight -= 1;
            if std::thread::current().id() != self.os_thread {
                self.failed = Some("completion reaped on another thread".into());
            }
            if !c.ok {
                self.failed = Some(format!("{:?} of block {} failed", c.kind, c.token));
                continue;
            }
            match c.kind {
                IoKind::Write => self.done_writes += 1,
                IoKind::Read => {
                    let off = self.offset(c.token);
                    pattern(off, self.shard as u8, &mut self.scratch);
                    match c.buf {
                        Some(b) if b.as_slice() == &self.scratch[..] => self.verified += 1,
                        _ => self.failed = Some(format!("block {} read back wrong", c.token)),
                    }
                }
                IoKind::Flush => {}
            }
        }
        if !self.reading && self.done_writes == BLOCKS_PER_SHARD {
            self.reading = true;
            self.next = 0;
        }
        self.submit();
        let finished = self.reading && self.inflight == 0 && self.next == BLOCKS_PER_SHARD;
        if let Some(tx) = self.report.as_ref() {
            if let Some(e) = self.failed.take() {
                let _ = tx.send(Err(e));
                self.report = None;
            } else if finished {
                let _ = tx.send(Ok(Report {
                    shard: self.shard,
                    verified: self.verified,
                }));
                self.report = None;
            }
        }
        work
    }
}

#[test]
fn shards_poll_their_spdk_threads_and_reap_their_own_completions() {
    let spdk = common::start(true, None);
    spdk.create_bdev(
        "Malloc0",
        &BdevKind::Malloc {
            blocks: 2 * BLOCKS_PER_SHARD,
            block_size: 4096,
        },
    )
    .unwrap();
    let (tx, rx) = mpsc::channel();
    let cfg = ReactorConfig {
        cores: vec![0, 1],
        pin: false,
        idle: IdlePolicy::adaptive(),
        ..ReactorConfig::default()
    };
    let (reactor, _control) = Reactor::start::<(), _>(cfg, move |s| {
        let shard = s.shard();
        let thread = SpdkThread::new(&format!("shard{shard}")).map_err(|e| e.to_string())?;
        let bdev = Bdev::open("Malloc0", true).map_err(|e| e.to_string())?;
        let mut io = ShardIo {
            bdev,
            thread,
            shard,
            os_thread: std::thread::current().id(),
            next: 0,
            inflight: 0,
            done_writes: 0,
            verified: 0,
            reading: false,
            failed: None,
            report: Some(tx.clone()),
            scratch: vec![0; 4096],
        };
        io.submit();
        s.add_poller(Box::new(io));
        Ok(())
    })
    .expect("reactor with SPDK shards");
    let mut reports = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while reports.len() < 2 {
        assert!(Instant::now() < deadline, "shards did not finish");
        // The main SPDK thread keeps serving messages meanwhile.
        spdk.poll();
        if let Ok(r) = rx.recv_timeout(Duration::from_millis(1)) {
            reports.push(r.expect("shard I/O"));
        }
    }
    reports.sort_by_key(|r| r.shard);
    for (i, r) in reports.iter().enumerate() {
        assert_eq!(r.shard, i);
        // Every block verified, every completion reaped on the submitting shard's own OS thread
        // (a completion seen anywhere else fails the shard's report).
        assert_eq!(r.verified, BLOCKS_PER_SHARD);
    }
    reactor.shutdown().expect("clean stop");
    spdk.shutdown().unwrap();
}
