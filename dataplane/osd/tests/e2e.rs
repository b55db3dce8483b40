//! The OSD end to end, as real processes: a monitor (in this process, the same
//! `carmine_mon::serve` the binary runs) and `carmine-osd run` processes on 127.0.0.1 (kernel
//! sockets), driven by the real `carmine-client`. The harness (monitor, OSD launcher, cluster)
//! is the client crate's test harness, shared by path so both crates test against one launcher.
//! The bdevstore OSD launcher and fsck are `common_bdev` (shared with e2e_faults.rs).
//!
//! - 10,000 objects of mixed sizes (1 B to 4 MiB) over 3 OSDs, read back verified, a PG listed
//!   page by page, the pool listed whole;
//! - a wrong key and an unknown id are refused with `AuthReject(BadCredentials)`; garbage,
//!   truncated, oversized and corrupt frames from raw sockets are each closed by the OSD (EOF or
//!   reset within a bound), counted exactly, and an authenticated connection opened before
//!   them keeps working;
//! - an op sent to the wrong shard is forwarded through the rings, served, and counted;
//! - ops held across two map changes meet the new epoch (`StaleMap`, exactly where the PG
//!   moved), are retried, and everything written reads back;
//! - (root + hugepages) bdevstore on an aio file: data survives a clean restart, and a SIGKILL
//!   under concurrent writes keeps every acknowledged write (fsck clean before the restart).
//!
//! `CARMINE_OSD_BIN` runs another `carmine-osd` (e.g. a deliberately broken build).

#[path = "../../../client/lib/tests/common/mod.rs"]
mod common;
mod common_bdev;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carmine_client::{
    AuthKey, Client, ClientError, ConnectOptions, Connection, Epoch, Op, OpError, OpRequest, PgId,
    PoolId, Reply,
};
use carmine_proto::v1;
use carmine_wire::{HandshakeError, RejectReason, VersionRange};
use common::{authed, runtime, Cluster, Mon};
use common_bdev::{bdev_image, fsck_clean, BdevOsd};

const LIMIT: Duration = Duration::from_secs(120);

/// Deterministic content of object `i`.
fn content(i: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| (k as u64 * 131 + i as u64 * 17 + (k >> 12) as u64) as u8)
        .collect()
}

/// 1 B to 4 MiB: mostly small objects, every 100th a large one (4 MiB included).
fn size_of(i: usize) -> usize {
    const LARGE: [usize; 5] = [65_537, 300_000, 1 << 20, 3 << 20, 4 << 20];
    const SMALL: [usize; 7] = [1, 17, 512, 4096, 4097, 8000, 16 << 10];
    if i % 100 == 99 {
        LARGE[(i / 100) % LARGE.len()]
    } else {
        SMALL[i % SMALL.len()]
    }
}

/// The OSD's perf counters, by name, from its admin service (what `carmine osd perf` shows).
async fn perf(mon: &Mon, osd: u32) -> BTreeMap<String, u64> {
    mon.osd_perf(osd).await
}

#[test]
fn ten_thousand_mixed_objects_over_three_osds() {
    const N: usize = 10_000;
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let cluster = Cluster::start("data", 64, &[1, 1, 1]).await;
            let client = Arc::new(Client::connect(cluster.config()).await.unwrap());
            let sem = Arc::new(tokio::sync::Semaphore::new(32));
            let mut set = tokio::task::JoinSet::new();
            for i in 0..N {
                let (client, sem) = (client.clone(), sem.clone());
                set.spawn(async move {
                    let _p = sem.acquire_owned().await.unwrap();
                    let name = format!("o{i:05}");
                    client
                        .write_full("data", &name, &content(i, size_of(i)))
                        .await
                        .map_err(|e| format!("{name}: {e}"))
                });
            }
            while let Some(r) = set.join_next().await {
                r.unwrap().unwrap();
            }
            let mut set = tokio::task::JoinSet::new();
            for i in 0..N {
                let (client, sem) = (client.clone(), sem.clone());
                set.spawn(async move {
                    let _p = sem.acquire_owned().await.unwrap();
                    let name = format!("o{i:05}");
                    let len = size_of(i);
                    let got = client
                        .read("data", &name, 0, len as u32)
                        .await
                        .map_err(|e| format!("{name}: {e}"))?;
                    if got != content(i, len) {
                        return Err(format!("{name}: {} bytes read, content differs", got.len()));
                    }
                    Ok(len)
                });
            }
            let mut bytes = 0;
            while let Some(r) = set.join_next().await {
                bytes += r.unwrap().unwrap();
            }
            let want: usize = (0..N).map(size_of).sum();
            assert_eq!(bytes, want);

            // One PG, paged 7 names at a time, is exactly the objects placed in it.
            let pg = client.locate("data", "o00000").unwrap().pg;
            let expect: BTreeSet<String> = (0..N)
                .map(|i| format!("o{i:05}"))
                .filter(|n| client.locate("data", n).unwrap().pg == pg)
                .collect();
            let mut listed = BTreeSet::new();
            let mut cursor = Vec::new();
            loop {
                let page = client.list_pg("data", pg, &cursor, 7).await.unwrap();
                assert!(page.names.len() <= 7);
                listed.extend(page.names);
                match page.next_cursor {
                    Some(c) => cursor = c,
                    None => break,
                }
            }
            assert_eq!(listed, expect);
            assert_eq!(client.list("data").await.unwrap().len(), N);

            // A shard-aware client caused no cross-shard hop, and every OSD served ops.
            for o in &cluster.osds {
                let p = perf(&cluster.mon, o.id).await;
                assert_eq!(p["forwards"], 0, "osd.{}", o.id);
                assert!(p["shard0.ops"] > 1000, "osd.{}: {p:?}", o.id);
                assert!(p["shard0.lat_p99_us"] > 0);
            }
        })
        .await
        .expect("test time limit");
    });
}

/// Reads a raw socket until the OSD closes it: EOF or a reset, within 10 s. Still open after
/// 10 s (the read times out) fails the test: an OSD that ignores bad input and keeps the
/// socket open must not pass.
fn expect_closed(mut s: TcpStream, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{what}: the OSD kept the connection open for 10 s (sent {} bytes)",
            got.len()
        );
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("{what}: the OSD kept the connection open for 10 s ({e})")
            }
            Err(e) => panic!("{what}: reading the socket failed: {e}"),
        }
    }
}

/// The change of a perf counter between two snapshots.
fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, name: &str) -> u64 {
    let (Some(b), Some(a)) = (before.get(name), after.get(name)) else {
        panic!("no counter {name}: {after:?}");
    };
    a.checked_sub(*b)
        .unwrap_or_else(|| panic!("{name} went down: {b} -> {a}"))
}

/// A handshake refused as a wrong key is: the OSD's `AuthReject { BadCredentials }` (the
/// same for an unknown id, by design), nothing else (a timeout, a reset, a closed socket).
fn assert_refused(r: Result<Connection, ClientError>, what: &str) {
    match r {
        Err(ClientError::Handshake(HandshakeError::Rejected {
            reason: RejectReason::BadCredentials,
            server_versions,
        })) => assert_eq!(server_versions, VersionRange::SUPPORTED, "{what}"),
        Err(e) => panic!("{what}: refused, but not with AuthReject(BadCredentials): {e:?}"),
        Ok(_) => panic!("{what}: accepted"),
    }
}

#[test]
fn wrong_key_and_malformed_frames_close_only_that_connection() {
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let cluster = Cluster::start("data", 8, &[1]).await;
            let osd = &cluster.osds[0];
            let addr = SocketAddr::from(([127, 0, 0, 1], osd.ports[0]));
            // Placement only (the client opens no OSD connection for it).
            let client = Client::connect(cluster.config()).await.unwrap();
            cluster.mon.wait_osds_at(&[osd.id], client.epoch()).await;

            // A healthy authenticated connection, opened before any bad one: it must keep
            // working through all of them.
            let opts = ConnectOptions::new(cluster.creds.id.clone(), cluster.creds.data_path_key());
            let healthy = Connection::connect(addr, &opts).await.unwrap();
            let t = client.locate("data", "healthy").unwrap();
            let req = |op| OpRequest {
                pool: PoolId(u64::from(t.pool)),
                pg: PgId(t.pg),
                epoch: Epoch(client.epoch()),
                op,
            };
            let read = Op::Read {
                object: "healthy",
                offset: 0,
                len: 100,
            };
            let write = |data: &'static [u8]| Op::WriteFull {
                object: "healthy",
                data,
            };
            // The OSD may not have activated the PG yet (it answers Again until it has), and
            // a raw connection does not retry by itself.
            call_as_until_mapped(&healthy, 1, &req(write(b"before")))
                .await
                .unwrap();

            let before = perf(&cluster.mon, osd.id).await;

            // A wrong key is refused during the handshake; an unknown client id too.
            let wrong = ConnectOptions::new(cluster.creds.id.clone(), AuthKey::new([9; 32]));
            assert_refused(Connection::connect(addr, &wrong).await, "a wrong key");
            let unknown = ConnectOptions::new("client.nobody", cluster.creds.data_path_key());
            assert_refused(Connection::connect(addr, &unknown).await, "an unknown id");

            // Garbage (no magic).
            let garbage = TcpStream::connect(addr).unwrap();
            (&garbage).write_all(&[0xAB; 512]).unwrap();
            expect_closed(garbage, "garbage");
            // A truncated frame: the magic, then the peer stops sending (half close). The OSD
            // sees the end of the stream mid-frame and closes its side.
            let truncated = TcpStream::connect(addr).unwrap();
            (&truncated).write_all(&carmine_wire::MAGIC).unwrap();
            truncated.shutdown(Shutdown::Write).unwrap();
            expect_closed(truncated, "a truncated frame");
            // A well-formed header (valid CRC) announcing a payload beyond the frame limit.
            let mut huge = [0u8; carmine_wire::HEADER_LEN];
            carmine_wire::FrameHeader {
                version: carmine_wire::VERSION_MIN,
                frame_type: carmine_wire::FrameType::Hello,
                tid: 0,
                payload_len: u32::MAX,
                payload_crc: 0,
            }
            .write(&mut huge);
            let s = TcpStream::connect(addr).unwrap();
            (&s).write_all(&huge).unwrap();
            expect_closed(s, "an oversized frame");
            // A valid header CRC followed by a payload whose CRC is wrong.
            let mut bad = [0u8; carmine_wire::HEADER_LEN + 8];
            let mut head = [0u8; carmine_wire::HEADER_LEN];
            carmine_wire::FrameHeader {
                version: carmine_wire::VERSION_MIN,
                frame_type: carmine_wire::FrameType::Hello,
                tid: 0,
                payload_len: 8,
                payload_crc: 0x1234_5678,
            }
            .write(&mut head);
            bad[..carmine_wire::HEADER_LEN].copy_from_slice(&head);
            let s = TcpStream::connect(addr).unwrap();
            (&s).write_all(&bad).unwrap();
            expect_closed(s, "a payload CRC mismatch");

            // The connection opened before all that still works: it reads what it wrote
            // before, and writes and reads again.
            assert!(!healthy.is_closed(), "{:?}", healthy.closed_reason());
            match healthy.call(&req(read)).await.unwrap() {
                Reply::Read(d) => assert_eq!(d, b"before"),
                other => panic!("{other:?}"),
            }
            healthy.call(&req(write(b"after"))).await.unwrap();
            match healthy.call(&req(read)).await.unwrap() {
                Reply::Read(d) => assert_eq!(d, b"after"),
                other => panic!("{other:?}"),
            }

            // Exactly what happened since `before`: six bad connections accepted, and each
            // closed by the OSD (the shard closes them before it served the healthy
            // connection's next op); two refused handshakes; three broken frames (the
            // truncated one is an end of stream, not a protocol error); the healthy
            // connection's three ops, none failed.
            let after = perf(&cluster.mon, osd.id).await;
            let d = |name| delta(&before, &after, name);
            assert_eq!(d("shard0.conns_accepted"), 6, "{after:?}");
            assert_eq!(d("shard0.conns_closed"), 6, "{after:?}");
            assert_eq!(d("shard0.auth_failures"), 2, "{after:?}");
            assert_eq!(d("shard0.protocol_errors"), 3, "{after:?}");
            assert_eq!(d("shard0.ops"), 3, "{after:?}");
            assert_eq!(d("shard0.errors"), 0, "{after:?}");

            // And a new client is served.
            client
                .write_full("data", "still-here", b"yes")
                .await
                .unwrap();
            assert_eq!(
                client.read("data", "still-here", 0, 10).await.unwrap(),
                b"yes"
            );
        })
        .await
        .expect("test time limit");
    });
}

#[test]
fn an_op_sent_to_the_wrong_shard_is_forwarded_and_counted() {
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let cluster = Cluster::start("data", 16, &[2]).await;
            let osd = &cluster.osds[0];
            let client = Client::connect(cluster.config()).await.unwrap();
            let pool = client.pool("data").await.unwrap();
            // An object owned by shard 0, sent to shard 1's port.
            let name = (0..)
                .map(|i| format!("fwd{i}"))
                .find(|n| client.locate("data", n).unwrap().shard == 0)
                .unwrap();
            let t = client.locate("data", &name).unwrap();
            // The PG peers before it serves (every PG does, one copy or more): the client
            // library waits for that, so that no forwarded op below meets Again and the
            // forward counts are exact.
            client.write_full("data", &name, b"peered").await.unwrap();
            let wrong = SocketAddr::from(([127, 0, 0, 1], osd.ports[1]));
            let opts = ConnectOptions::new(cluster.creds.id.clone(), cluster.creds.data_path_key());
            let conn = Connection::connect(wrong, &opts).await.unwrap();
            let req = |op| OpRequest {
                pool: PoolId(u64::from(pool.id)),
                pg: PgId(t.pg),
                epoch: Epoch(client.epoch()),
                op,
            };
            // The client's map may be newer than what shard 1 has applied yet: it answers
            // Again then, and a raw connection retries by hand (the client library would).
            let call = |op| {
                let conn = &conn;
                let req = req(op);
                async move {
                    for _ in 0..100 {
                        match conn.call(&req).await {
                            Err(ClientError::Op(OpError::Again)) => {
                                tokio::time::sleep(Duration::from_millis(50)).await
                            }
                            r => return r,
                        }
                    }
                    conn.call(&req).await
                }
            };
            call(Op::WriteFull {
                object: &name,
                data: b"forwarded",
            })
            .await
            .unwrap();
            let r = call(Op::Read {
                object: &name,
                offset: 0,
                len: 100,
            })
            .await
            .unwrap();
            // The forwarded read carries the data back through the rings, byte for byte.
            match r {
                Reply::Read(d) => assert_eq!(d, b"forwarded"),
                other => panic!("a read answered with {other:?}"),
            }
            // The data is where the owner keeps it: the shard-aware path reads it back.
            assert_eq!(
                client.read("data", &name, 0, 100).await.unwrap(),
                b"forwarded"
            );
            let p = perf(&cluster.mon, osd.id).await;
            assert_eq!(p["shard1.forwards_sent"], 2, "{p:?}");
            assert_eq!(p["shard0.forwards_received"], 2, "{p:?}");
            assert!(p["shard0.ring_hops_in"] >= 2);
        })
        .await
        .expect("test time limit");
    });
}

/// Keys of the bdevstore test.
const BDEV_KEYS: usize = 200;

/// Generation `gen` of bdevstore key `i`; its length changes with the generation too (1 B to
/// 4 MiB, the wire's largest write, mostly small), so a torn or mixed object does not pass for
/// either generation.
fn bdev_data(i: usize, gen: usize) -> Vec<u8> {
    content(i * 1000 + gen, size_of(i * 7 + 3 + gen * 13))
}

/// What a writer knows of one key: the last generation acknowledged, and the one sent but not
/// acknowledged (in flight at the kill: it may or may not be there after it).
#[derive(Debug, Clone, Copy, Default)]
struct KeyState {
    acked: usize,
    unsure: Option<usize>,
}

#[test]
fn bdevstore_osd_keeps_its_data_over_restart_and_sigkill() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root: run through ci/test"
    );
    let dir = tempfile::tempdir().unwrap();
    let img = bdev_image(dir.path(), "osd");
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(240), async {
            let mon = Mon::start();
            let creds = mon.add_key("client.bdev").await;
            let mut osd = BdevOsd::start(&mon, dir.path(), "osd", 256, 1);
            mon.wait_up(1).await;
            mon.create_pool("data", 16, 1).await;
            let mut cfg =
                carmine_client::ClientConfig::new(mon.addr.clone(), creds.clone()).plaintext();
            cfg.op_timeout = Duration::from_secs(20);
            let name = |i: usize| format!("k{i}");
            // `state[i]`: what must be in key i.
            let check_all = |client: Arc<Client>, state: Vec<KeyState>| async move {
                for (i, s) in state.iter().enumerate() {
                    let got = client.read("data", &name(i), 0, 4 << 20).await.unwrap();
                    let acked = bdev_data(i, s.acked);
                    let unsure = s.unsure.map(|g| bdev_data(i, g));
                    assert!(
                        got == acked || Some(&got) == unsure.as_ref(),
                        "k{i}: {} bytes, neither the acknowledged generation {} ({} bytes) \
                         nor the one in flight {:?}",
                        got.len(),
                        s.acked,
                        acked.len(),
                        s.unsure
                    );
                }
            };
            let client = Arc::new(Client::connect(cfg.clone()).await.unwrap());
            for i in 0..BDEV_KEYS {
                client
                    .write_full("data", &name(i), &bdev_data(i, 0))
                    .await
                    .unwrap();
            }
            drop(client);

            // Clean restart: same uuid, same id, data back.
            osd.stop(true);
            osd.spawn();
            let client = Arc::new(Client::connect(cfg.clone()).await.unwrap());
            check_all(client.clone(), vec![KeyState::default(); BDEV_KEYS]).await;

            // SIGKILL under load: writers keep overwriting their own keys (one op in flight
            // each), noting every acknowledgement.
            const WRITERS: usize = 16;
            let state = Arc::new(std::sync::Mutex::new(vec![KeyState::default(); BDEV_KEYS]));
            let acks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut writers = tokio::task::JoinSet::new();
            for w in 0..WRITERS {
                let (client, state, acks) = (client.clone(), state.clone(), acks.clone());
                writers.spawn(async move {
                    for gen in 1.. {
                        for i in (w..BDEV_KEYS).step_by(WRITERS) {
                            state.lock().unwrap()[i].unsure = Some(gen);
                            if let Err(e) = client
                                .write_full("data", &name(i), &bdev_data(i, gen))
                                .await
                            {
                                return format!("k{i} generation {gen}: {e}");
                            }
                            state.lock().unwrap()[i] = KeyState {
                                acked: gen,
                                unsure: None,
                            };
                            acks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    unreachable!()
                });
            }
            let load_until = Instant::now() + Duration::from_secs(60);
            while acks.load(std::sync::atomic::Ordering::Relaxed) < 3 * BDEV_KEYS {
                assert!(Instant::now() < load_until, "the writers did not get going");
                if let Some(r) = writers.try_join_next() {
                    panic!("a writer stopped before the kill: {}", r.unwrap());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            osd.stop(false);
            let at_kill = acks.load(std::sync::atomic::Ordering::Relaxed);
            // The writers' ops now fail or retry against a dead OSD: stop them, and the client,
            // before the OSD comes back. What each had in flight stays `unsure`.
            writers.abort_all();
            while writers.join_next().await.is_some() {}
            drop(client);
            let state = state.lock().unwrap().clone();
            let unsure = state.iter().filter(|s| s.unsure.is_some()).count();
            assert_eq!(unsure, WRITERS, "one op in flight per writer at the end");

            // The unclean image checks clean before anything mounts it again (the journal
            // replays; a torn tail record is allowed, it was never acknowledged).
            let r = fsck_clean(&img, 1).remove(0);
            assert_eq!(r["objects"], data_objects(&r, BDEV_KEYS), "{r}");
            eprintln!("after SIGKILL ({at_kill} writes acknowledged under load): fsck {r}");

            osd.spawn();
            let client = Arc::new(Client::connect(cfg).await.unwrap());
            check_all(client, state).await;
            osd.stop(true);
        })
        .await
        .expect("test time limit");
    });
    // The store is consistent after the clean stop.
    let r = fsck_clean(&img, 1).remove(0);
    assert_eq!(r["objects"], data_objects(&r, BDEV_KEYS), "{r}");
}

/// The object count fsck must report for `n` client objects: every PG written has a data
/// and a meta collection, and the meta collection holds one object, the PG log.
fn data_objects(fsck: &serde_json::Value, n: usize) -> serde_json::Value {
    let colls = fsck["collections"]
        .as_u64()
        .expect("fsck reports collections");
    assert_eq!(
        colls % 2,
        0,
        "a meta collection for each data collection: {fsck}"
    );
    // Each PG's meta collection holds its log and, once the PG peered (every PG does, one
    // copy or more), its peering info: two objects per meta collection.
    serde_json::Value::from(n as u64 + colls)
}

/// `conn.call_as(tid, req)`, again while the OSD answers Again (a shard that has not applied
/// the client's map epoch yet), as the client library would.
async fn call_as_until_mapped(
    conn: &Connection,
    tid: u64,
    req: &OpRequest<'_>,
) -> Result<carmine_client::Reply, ClientError> {
    for _ in 0..200 {
        match conn.call_as(tid, req).await {
            Err(ClientError::Op(OpError::Again)) => {
                tokio::time::sleep(Duration::from_millis(25)).await
            }
            r => return r,
        }
    }
    conn.call_as(tid, req).await
}

#[test]
fn bdev_a_retried_mutation_is_applied_once_also_after_a_restart() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root: run through ci/test"
    );
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let mon = Mon::start();
            let creds = mon.add_key("client.retry").await;
            let other = mon.add_key("client.other").await;
            let mut osd = BdevOsd::start(&mon, dir.path(), "osd", 256, 1);
            mon.wait_up(1).await;
            mon.create_pool("data", 8, 1).await;
            let cfg =
                carmine_client::ClientConfig::new(mon.addr.clone(), creds.clone()).plaintext();
            let client = Client::connect(cfg.clone()).await.unwrap();
            let pool = client.pool("data").await.unwrap();
            // The OSD's port (a restart binds a new one).
            let connect = |port: u16, c: &carmine_client::Credentials| {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                let opts = ConnectOptions::new(c.id.clone(), c.data_path_key());
                async move { Connection::connect(addr, &opts).await.unwrap() }
            };
            let req = |object: &'static str, op| {
                let t = client.locate("data", object).unwrap();
                OpRequest {
                    pool: PoolId(u64::from(pool.id)),
                    pg: PgId(t.pg),
                    epoch: Epoch(client.epoch()),
                    op,
                }
            };
            let read = |object: &'static str| client.read("data", object, 0, 100);
            let wf = |object, data| Op::WriteFull { object, data };
            let dups = |p: &BTreeMap<String, u64>| p["shard0.dup_replies"];

            // tid 7: "first"; tid 8 overwrites it with "second". A retry of tid 7, on another
            // connection, is answered as before and does not write "first" again.
            let c1 = connect(osd.ports[0], &creds).await;
            call_as_until_mapped(&c1, 7, &req("obj", wf("obj", b"first")))
                .await
                .unwrap();
            call_as_until_mapped(&c1, 8, &req("obj", wf("obj", b"second")))
                .await
                .unwrap();
            let before = perf(&mon, osd.id).await;
            let c2 = connect(osd.ports[0], &creds).await;
            let r = call_as_until_mapped(&c2, 7, &req("obj", wf("obj", b"first"))).await;
            assert!(matches!(r, Ok(carmine_client::Reply::WrittenFull)), "{r:?}");
            assert_eq!(
                read("obj").await.unwrap(),
                b"second",
                "the retry was applied again"
            );
            assert_eq!(dups(&perf(&mon, osd.id).await) - dups(&before), 1);
            // A remove retried gets its first result (Removed), not NotFound.
            call_as_until_mapped(&c1, 9, &req("gone", wf("gone", b"x")))
                .await
                .unwrap();
            let rm = || req("gone", Op::Remove { object: "gone" });
            call_as_until_mapped(&c1, 10, &rm()).await.unwrap();
            let r = call_as_until_mapped(&c2, 10, &rm()).await;
            assert!(matches!(r, Ok(carmine_client::Reply::Removed)), "{r:?}");
            // The same tid from another client is another request: applied.
            let c3 = connect(osd.ports[0], &other).await;
            call_as_until_mapped(&c3, 7, &req("obj", wf("obj", b"third")))
                .await
                .unwrap();
            assert_eq!(read("obj").await.unwrap(), b"third");
            drop((c1, c2, c3, client));

            // The log is durable: after a crash, a retry of tid 8 of client.retry is still
            // recognised (it would write "second" over "third" otherwise).
            osd.stop(false);
            osd.spawn();
            let client = Client::connect(cfg).await.unwrap();
            let c4 = connect(osd.ports[0], &creds).await;
            let t = client.locate("data", "obj").unwrap();
            let retry = OpRequest {
                pool: PoolId(u64::from(pool.id)),
                pg: PgId(t.pg),
                epoch: Epoch(client.epoch()),
                op: Op::WriteFull {
                    object: "obj",
                    data: b"second",
                },
            };
            let r = call_as_until_mapped(&c4, 8, &retry).await;
            assert!(matches!(r, Ok(carmine_client::Reply::WrittenFull)), "{r:?}");
            assert_eq!(
                client.read("data", "obj", 0, 100).await.unwrap(),
                b"third",
                "a retry after the restart was applied again"
            );
            // New tids still apply.
            call_as_until_mapped(
                &c4,
                11,
                &OpRequest {
                    op: Op::WriteFull {
                        object: "obj",
                        data: b"fourth",
                    },
                    ..retry
                },
            )
            .await
            .unwrap();
            assert_eq!(client.read("data", "obj", 0, 100).await.unwrap(), b"fourth");
            osd.stop(true);
        })
        .await
        .expect("test time limit");
    });
}

/// Objects of the map-change test.
const MAPCHANGE_OBJECTS: usize = 300;

/// Generation `gen` of map-change object `i` (its length changes with the generation too).
fn mapchange_data(i: usize, gen: usize) -> Vec<u8> {
    content(i * 10 + gen, 100 + (i * 37 + gen * 1000) % 4000)
}

/// Sum of a per-OSD perf counter's change.
fn total_delta(
    before: &[BTreeMap<String, u64>],
    after: &[BTreeMap<String, u64>],
    name: &str,
) -> u64 {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| delta(b, a, name))
        .sum()
}

/// Writes generation `gen` of every object across one map change, deterministically:
///
/// 1. hold: with the map the lagging client has (`follow_map` off, so it keeps it), each
///    object's write is addressed to its primary at that epoch, over raw connections opened
///    now;
/// 2. change the map (`change`) and wait until every OSD applied the new epoch;
/// 3. release every held op at once: an op whose PG stayed where it was is served (an older
///    epoch is fine where the PG did not move), an op whose PG moved gets exactly
///    `StaleMap { osd_epoch: new }`, nothing else;
/// 4. the lagging client writes the refused ones: its first attempt meets the new epoch too
///    (`StaleMap`), it fetches the map and retries; every write succeeds;
/// 5. every object reads back as generation `gen` at the new epoch.
///
/// The OSDs' `stale_map` counters account for every refusal, exactly. Returns the new epoch.
async fn write_across_a_map_change(
    cluster: &Cluster,
    following: &Client,
    lagging: &Arc<Client>,
    gen: usize,
    change: impl std::future::Future<Output = u64>,
) -> u64 {
    let ids: Vec<u32> = cluster.osds.iter().map(|o| o.id).collect();
    let name = |i: usize| format!("m{i}");
    let old = lagging.epoch();
    let pool = lagging.pool("data").await.unwrap();
    let held: Vec<_> = (0..MAPCHANGE_OBJECTS)
        .map(|i| lagging.locate("data", &name(i)).unwrap())
        .collect();
    let opts = ConnectOptions::new(cluster.creds.id.clone(), cluster.creds.data_path_key());
    let mut conns = BTreeMap::new();
    for t in &held {
        if let std::collections::btree_map::Entry::Vacant(e) = conns.entry(t.addr) {
            e.insert(Connection::connect(t.addr, &opts).await.unwrap());
        }
    }
    let conns = Arc::new(conns);
    let mut perf_before = Vec::new();
    for &id in &ids {
        perf_before.push(perf(&cluster.mon, id).await);
    }
    let stats_before = lagging.stats();

    let new = change.await;
    assert!(new > old, "the change made epoch {new}, after {old}");
    cluster.mon.wait_osds_at(&ids, new).await;
    assert!(following.wait_for_epoch(new, Duration::from_secs(10)).await);
    assert_eq!(following.epoch(), new, "one change, one epoch");
    assert_eq!(
        lagging.epoch(),
        old,
        "the lagging client still has the old map"
    );
    let moved: BTreeSet<usize> = (0..MAPCHANGE_OBJECTS)
        .filter(|&i| following.locate("data", &name(i)).unwrap().osd != held[i].osd)
        .collect();
    assert!(
        !moved.is_empty() && moved.len() < MAPCHANGE_OBJECTS,
        "the change moved {} of {MAPCHANGE_OBJECTS} objects",
        moved.len()
    );

    // Release.
    let mut set = tokio::task::JoinSet::new();
    for (i, t) in held.iter().enumerate() {
        let (conns, t) = (conns.clone(), *t);
        set.spawn(async move {
            let (object, data) = (format!("m{i}"), mapchange_data(i, gen));
            let req = OpRequest {
                pool: PoolId(u64::from(pool.id)),
                pg: PgId(t.pg),
                epoch: Epoch(old),
                op: Op::WriteFull {
                    object: &object,
                    data: &data,
                },
            };
            (i, conns[&t.addr].call(&req).await)
        });
    }
    while let Some(r) = set.join_next().await {
        let (i, r) = r.unwrap();
        match r {
            Ok(Reply::WrittenFull) if !moved.contains(&i) => {}
            Err(ClientError::Op(OpError::StaleMap { osd_epoch })) if moved.contains(&i) => {
                assert_eq!(osd_epoch, Epoch(new), "m{i}")
            }
            r => panic!(
                "m{i} (PG moved: {}) at epoch {old} after the change to {new}: {r:?}",
                moved.contains(&i)
            ),
        }
    }
    drop(conns);

    // The refused ones through the lagging client, all at once.
    let mut set = tokio::task::JoinSet::new();
    for &i in &moved {
        let lagging = lagging.clone();
        set.spawn(async move {
            lagging
                .write_full("data", &format!("m{i}"), &mapchange_data(i, gen))
                .await
                .map_err(|e| format!("m{i}: {e}"))
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
    let stats = lagging.stats();
    assert_eq!(lagging.epoch(), new, "{stats:?}");
    let stale = stats.stale_map_retries - stats_before.stale_map_retries;
    assert!(
        (1..=moved.len() as u64).contains(&stale),
        "the lagging client met StaleMap {stale} times for {} moved objects: {stats:?}",
        moved.len()
    );
    assert!(
        stats.map_fetches > stats_before.map_fetches,
        "it fetched the new map: {stats:?}"
    );
    // The moved PGs' new primaries peer before they serve (pulling what the old primary
    // held: a PG of one copy is never served empty), answering Again meanwhile.
    let agains = stats.again_retries - stats_before.again_retries;

    // Every refusal is on the OSDs' books, and nothing else went wrong there.
    let mut perf_after = Vec::new();
    for &id in &ids {
        perf_after.push(perf(&cluster.mon, id).await);
    }
    let d = |name| total_delta(&perf_before, &perf_after, name);
    assert_eq!(
        d("shard0.stale_map"),
        moved.len() as u64 + stale,
        "{perf_after:?}"
    );
    assert_eq!(d("shard0.again"), agains, "{perf_after:?}");
    assert_eq!(d("shard0.errors"), 0, "{perf_after:?}");
    assert_eq!(
        d("shard0.ops_write"),
        // (An op answered Again is counted as received, like one answered StaleMap.)
        (MAPCHANGE_OBJECTS + moved.len()) as u64 + stale + agains,
        "{perf_after:?}"
    );

    // Everything reads back as this generation at the new epoch.
    for i in 0..MAPCHANGE_OBJECTS {
        let want = mapchange_data(i, gen);
        let got = lagging.read("data", &name(i), 0, 1 << 20).await.unwrap();
        assert!(
            got == want,
            "m{i}: {} bytes, generation {gen} has {}",
            got.len(),
            want.len()
        );
    }
    eprintln!(
        "epoch {old} -> {new}: {} of {MAPCHANGE_OBJECTS} objects moved; client {stats:?}",
        moved.len()
    );
    new
}

#[test]
fn ops_in_flight_across_map_changes_all_complete() {
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let cluster = Cluster::start("data", 32, &[1, 1, 1]).await;
            let ids: Vec<u32> = cluster.osds.iter().map(|o| o.id).collect();
            let victim = cluster.osds[2].id;
            // Follows the map: where each object is at each epoch.
            let following = Client::connect(cluster.config()).await.unwrap();
            // Keeps its map until an OSD tells it that it is stale.
            let mut cfg = cluster.config();
            cfg.follow_map = false;
            let lagging = Arc::new(Client::connect(cfg).await.unwrap());
            assert_eq!(lagging.epoch(), following.epoch());
            cluster.mon.wait_osds_at(&ids, lagging.epoch()).await;
            for i in 0..MAPCHANGE_OBJECTS {
                lagging
                    .write_full("data", &format!("m{i}"), &mapchange_data(i, 0))
                    .await
                    .unwrap();
            }

            // Out, then in again: two changes, each met by held ops.
            let e1 = write_across_a_map_change(
                &cluster,
                &following,
                &lagging,
                1,
                cluster.mon.osd_out(victim),
            )
            .await;
            let back_in = async {
                cluster
                    .mon
                    .admin()
                    .await
                    .osd_in(authed(v1::OsdIdRequest { id: victim }))
                    .await
                    .unwrap()
                    .into_inner()
                    .epoch
            };
            let e2 = write_across_a_map_change(&cluster, &following, &lagging, 2, back_in).await;
            assert!(e2 > e1);
        })
        .await
        .expect("test time limit");
    });
}
