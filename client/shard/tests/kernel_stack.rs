//! `ShardClient` on a reactor shard over kernel sockets (`carmine_net::KernelStack`), against
//! real processes: the test cluster of the client tests (a monitor in this process and three
//! `carmine-osd run` memstore OSDs on 127.0.0.1, one with two shards). What runs on the shard is
//! the same code as over memif, minus the DPDK port: connections driven through `AsyncNet`,
//! the client library's handshake and its retry loop. Each test is bounded by a timeout.

#[path = "../../lib/tests/common/mod.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use carmine_client::{Client, Error, OpError};
use carmine_net::{KernelConfig, KernelStack};
use common::{runtime, Cluster};
use support::{content, on_shard};

const LIMIT: Duration = Duration::from_secs(60);

fn kernel_stack() -> Result<KernelStack, String> {
    KernelStack::new(KernelConfig::default()).map_err(|e| e.to_string())
}

#[test]
fn objects_roundtrip_over_shard_connections_and_errors_reach_the_caller() {
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let cluster = Cluster::start("data", 32, &[1, 2, 1]).await;
            let maps = Arc::new(Client::connect(cluster.config()).await.unwrap());
            let (stats, missing) = on_shard(
                kernel_stack,
                maps.clone(),
                cluster.config(),
                Box::new(|c| {
                    Box::pin(async move {
                        // 1 B .. 300 KB: small frames share writes, the large ones span many.
                        let sizes = [1usize, 4096, 65_537, 300_000];
                        let mut tasks = Vec::new();
                        for w in 0..8usize {
                            let c = c.clone();
                            tasks.push(
                                carmine_reactor::spawn_local(async move {
                                    for i in (w..120).step_by(8) {
                                        let name = format!("obj_{i}");
                                        let data = content(i, sizes[i % sizes.len()]);
                                        c.write_full("data".into(), &name, &data).await.unwrap();
                                    }
                                })
                                .unwrap(),
                            );
                        }
                        for t in tasks {
                            t.await;
                        }
                        for i in 0..120usize {
                            let len = sizes[i % sizes.len()];
                            let got = c
                                .read("data".into(), &format!("obj_{i}"), 0, len as u32 + 10)
                                .await
                                .unwrap();
                            let want = content(i, len);
                            let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
                            assert!(
                                got == want,
                                "obj_{i}: {} bytes read, {len} written, first difference at {first_diff:?}",
                                got.len()
                            );
                        }
                        let missing = c.read("data".into(), "never_written", 0, 10).await;
                        (c.stats(), missing)
                    })
                }),
            )
            .await;
            // The OSD's answer, not a transport failure, and not retried.
            assert!(
                matches!(missing, Err(Error::Op(OpError::NotFound))),
                "{missing:?}"
            );
            // One connection per (OSD, shard) that owns an object: 3 OSDs, 4 shards.
            assert!(stats.connects >= 3 && stats.connects <= 4, "{stats:?}");
            assert_eq!(stats.reconnects, 0, "{stats:?}");
            assert_eq!(stats.ops, 120 + 120 + 1, "{stats:?}");
            // What the shard wrote, the tokio client reads back: the same objects.
            let got = maps.read("data", "obj_6", 0, 70_000).await.unwrap();
            assert!(got == content(6, 65_537), "obj_6 as the tokio client reads it");
        })
        .await
        .expect("test timed out");
    });
}

/// A one-shot signal between the test body on the shard and the test's runtime.
fn signal() -> (
    tokio::sync::mpsc::UnboundedSender<()>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    tokio::sync::mpsc::unbounded_channel()
}

#[test]
fn a_restarted_osd_is_reconnected() {
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let mut cluster = Cluster::start("data", 32, &[1, 1, 1]).await;
            // Two copies: the OSD comes back empty (memstore) and the PG is recovered from the
            // other one.
            cluster.mon.create_pool("rep", 32, 2).await;
            let maps = Arc::new(Client::connect(cluster.config()).await.unwrap());
            let primary = maps.locate("rep", "k").unwrap().osd;
            let (restart_tx, mut restart_rx) = signal();
            let (restarted_tx, restarted_rx) = signal();
            let chans = std::sync::Mutex::new(Some((restart_tx, restarted_rx)));
            let shard = on_shard(
                kernel_stack,
                maps.clone(),
                cluster.config(),
                Box::new(move |c| {
                    let (restart, mut restarted) = chans.lock().unwrap().take().unwrap();
                    Box::pin(async move {
                        c.write_full("rep".into(), "k", b"before").await.unwrap();
                        restart.send(()).unwrap();
                        restarted.recv().await.unwrap();
                        // The old connection is dead and the OSD listens elsewhere (port 0).
                        c.write_full("rep".into(), "k", b"after").await.unwrap();
                        let got = c.read("rep".into(), "k", 0, 100).await.unwrap();
                        (got, c.stats())
                    })
                }),
            );
            let driver = async {
                restart_rx.recv().await.unwrap();
                cluster.osd_mut(primary).restart();
                restarted_tx.send(()).unwrap();
            };
            let ((got, stats), ()) = tokio::join!(shard, driver);
            assert_eq!(got, b"after");
            assert!(stats.reconnects >= 1, "{stats:?}");
            assert!(stats.retries >= 1, "{stats:?}");
        })
        .await
        .expect("test timed out");
    });
}

#[test]
fn an_op_to_a_dead_osd_times_out_at_its_deadline() {
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let mut cluster = Cluster::start("data", 8, &[1]).await;
            let maps = Arc::new(Client::connect(cluster.config()).await.unwrap());
            let osd = cluster.osds[0].id;
            let mut cfg = cluster.config();
            cfg.op_timeout = Duration::from_secs(3);
            let limit = cfg.op_timeout;
            let (kill_tx, mut kill_rx) = signal();
            let (killed_tx, killed_rx) = signal();
            let chans = std::sync::Mutex::new(Some((kill_tx, killed_rx)));
            let shard = on_shard(
                kernel_stack,
                maps.clone(),
                cfg,
                Box::new(move |c| {
                    let (kill, mut killed) = chans.lock().unwrap().take().unwrap();
                    Box::pin(async move {
                        c.write_full("data".into(), "a", b"one").await.unwrap();
                        kill.send(()).unwrap();
                        killed.recv().await.unwrap();
                        let t0 = Instant::now();
                        let r = c.write_full("data".into(), "a", b"two").await;
                        (r, t0.elapsed(), c.stats())
                    })
                }),
            );
            let driver = async {
                kill_rx.recv().await.unwrap();
                cluster.osd_mut(osd).kill();
                killed_tx.send(()).unwrap();
            };
            let ((r, took, stats), ()) = tokio::join!(shard, driver);
            // Nothing listens any more: reconnects fail until the op's deadline, and the
            // caller is told it timed out. The loop gives up as soon as the next backoff (at
            // most 200 ms) would pass the deadline.
            assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
            let early = Duration::from_millis(250);
            assert!(took + early >= limit && took < limit * 2, "{took:?}");
            assert!(stats.retries >= 3, "{stats:?}");
        })
        .await
        .expect("test timed out");
    });
}
