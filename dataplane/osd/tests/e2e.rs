//! The OSD end to end, as real processes: a monitor (in this process, the same
//! `carmine_mon::serve` the binary runs) and `carmine-osd run` processes on 127.0.0.1 (kernel
//! sockets), driven by the real `carmine-client`. The harness (monitor, OSD launcher, cluster)
//! is the client crate's test harness, shared by path so both crates test against one launcher.
//!
//! - 10,000 objects of mixed sizes (1 B to 4 MiB) over 3 OSDs, read back verified, a PG listed
//!   page by page, the pool listed whole;
//! - a wrong key is refused; garbage, truncated and oversized frames from raw sockets close
//!   only that connection, are counted, and the OSD keeps serving;
//! - an op sent to the wrong shard is forwarded through the rings, served, and counted;
//! - (root + hugepages) bdevstore on an aio file: data survives a clean restart and a SIGKILL.

#[path = "../../../client/lib/tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carmine_client::{
    AuthKey, Client, ClientError, ConnectOptions, Connection, Epoch, Op, OpError, OpRequest, PgId,
    PoolId,
};
use carmine_proto::v1;
use common::{authed, runtime, Cluster, Mon, OSD_TOKEN};

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
    let addr = mon
        .admin()
        .await
        .osd_admin_addr(authed(v1::OsdIdRequest { id: osd }))
        .await
        .unwrap()
        .into_inner()
        .admin_addr;
    let mut c = v1::osd_admin_client::OsdAdminClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut r = tonic::Request::new(v1::Empty {});
    r.metadata_mut().insert(
        carmine_proto::AUTH_HEADER,
        carmine_proto::bearer(OSD_TOKEN).unwrap(),
    );
    c.perf_counters(r)
        .await
        .unwrap()
        .into_inner()
        .counters
        .into_iter()
        .map(|c| (c.name, c.value))
        .collect()
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

/// A raw socket that expects the OSD to close it (EOF or reset) within 10 s.
fn expect_closed(mut s: TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => assert!(
                Instant::now() < deadline,
                "the OSD kept the connection open"
            ),
        }
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

            // A wrong key is refused during the handshake.
            let wrong = ConnectOptions::new(cluster.creds.id.clone(), AuthKey::new([9; 32]));
            match Connection::connect(addr, &wrong).await {
                Err(e) => assert!(!matches!(e, ClientError::Op(_)), "{e}"),
                Ok(_) => panic!("a wrong key was accepted"),
            }
            // An unknown client id too.
            let unknown = ConnectOptions::new("client.nobody", cluster.creds.key.clone());
            assert!(Connection::connect(addr, &unknown).await.is_err());

            // Garbage; a truncated frame (the peer goes away mid-frame); a header announcing
            // more than the frame limit; a valid magic with a corrupt header CRC.
            let garbage = TcpStream::connect(addr).unwrap();
            (&garbage).write_all(&[0xAB; 512]).unwrap();
            expect_closed(garbage);
            let truncated = TcpStream::connect(addr).unwrap();
            (&truncated).write_all(&carmine_wire::MAGIC).unwrap();
            drop(truncated);
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
            expect_closed(s);
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
            expect_closed(s);

            // The OSD still serves a proper client.
            let client = Client::connect(cluster.config()).await.unwrap();
            client
                .write_full("data", "still-here", b"yes")
                .await
                .unwrap();
            assert_eq!(
                client.read("data", "still-here", 0, 10).await.unwrap(),
                b"yes"
            );

            let p = perf(&cluster.mon, osd.id).await;
            assert!(p["shard0.auth_failures"] >= 2, "{p:?}");
            assert!(p["shard0.protocol_errors"] >= 2, "{p:?}");
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
            let wrong = SocketAddr::from(([127, 0, 0, 1], osd.ports[1]));
            let opts = ConnectOptions::new(cluster.creds.id.clone(), cluster.creds.key.clone());
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
            assert!(
                format!("{r:?}").contains("forwarded") || format!("{r:?}").contains("Read"),
                "{r:?}"
            );
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

/// An OSD on bdevstore over an aio file (needs root and hugepages, as in CI).
struct BdevOsd {
    child: Option<Child>,
    config: PathBuf,
    id: u32,
    port: u16,
}

impl BdevOsd {
    fn start(mon: &Mon, dir: &Path) -> BdevOsd {
        let config = dir.join("osd.toml");
        std::fs::write(
            &config,
            format!(
                r#"[osd]
uuid = "bdev-osd"
host = "bdevhost"
[mon]
addr = "{mon}"
[admin]
listen = "127.0.0.1:0"
token = "{OSD_TOKEN}"
[reactor]
cores = [1]
pin = false
[net]
backend = "kernel"
ip = "127.0.0.1"
base_port = 0
[store]
kind = "bdevstore"
bdev = "aio"
path = "{img}"
size_mib = 256
[spdk]
mem_mib = 128
file_prefix = "carmine-e2e-{pid}"
"#,
                mon = mon.addr,
                img = dir.join("osd.img").display(),
                pid = std::process::id(),
            ),
        )
        .unwrap();
        let mut o = BdevOsd {
            child: None,
            config,
            id: 0,
            port: 0,
        };
        o.spawn();
        o
    }

    fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_carmine-osd"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        self.child = Some(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.starts_with("carmine-osd: ready") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("bdevstore OSD ready line (root and hugepages?)");
        for f in line.split_whitespace() {
            if let Some(v) = f.strip_prefix("osd=") {
                self.id = v.parse().unwrap();
            } else if let Some(v) = f.strip_prefix("ports=") {
                self.port = v.parse().unwrap();
            }
        }
    }

    /// SIGTERM (clean: the store checkpoints) or SIGKILL, then wait.
    fn stop(&mut self, clean: bool) {
        if let Some(mut c) = self.child.take() {
            if clean {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(30);
                while c.try_wait().unwrap().is_none() {
                    assert!(Instant::now() < deadline, "OSD did not stop on SIGTERM");
                    std::thread::sleep(Duration::from_millis(20));
                }
                assert!(c.wait().unwrap().success(), "clean stop exits 0");
            } else {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for BdevOsd {
    fn drop(&mut self) {
        self.stop(false);
    }
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
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let mon = Mon::start();
            let creds = mon.add_key("client.bdev").await;
            let mut osd = BdevOsd::start(&mon, dir.path());
            mon.wait_up(1).await;
            mon.create_pool("data", 16, 1).await;
            let mut cfg = carmine_client::ClientConfig::new(mon.addr.clone(), creds.clone());
            cfg.op_timeout = Duration::from_secs(20);
            let write_all = |client: Arc<Client>, gen: usize| async move {
                for i in 0..200 {
                    let data = content(i + gen, size_of(i * 7 + 3));
                    client
                        .write_full("data", &format!("k{i}"), &data)
                        .await
                        .unwrap();
                }
            };
            let check_all = |client: Arc<Client>, gen: usize| async move {
                for i in 0..200 {
                    let len = size_of(i * 7 + 3);
                    let got = client
                        .read("data", &format!("k{i}"), 0, len as u32)
                        .await
                        .unwrap();
                    assert!(got == content(i + gen, len), "k{i} after restart");
                }
            };
            let client = Arc::new(Client::connect(cfg.clone()).await.unwrap());
            write_all(client.clone(), 0).await;
            drop(client);

            // Clean restart: same uuid, same id, data back.
            osd.stop(true);
            osd.spawn();
            let client = Arc::new(Client::connect(cfg.clone()).await.unwrap());
            check_all(client.clone(), 0).await;
            // Overwrite everything, then crash: every acknowledged write must be there.
            write_all(client.clone(), 1).await;
            drop(client);
            osd.stop(false);
            osd.spawn();
            let client = Arc::new(Client::connect(cfg).await.unwrap());
            check_all(client, 1).await;
            osd.stop(true);
        })
        .await
        .expect("test time limit");
    });
    // The store is consistent after the clean stop.
    let out = Command::new(env!("CARGO_BIN_EXE_carmine-osd"))
        .args(["fsck", "--bdev-kind", "aio", "--path"])
        .arg(dir.path().join("osd.img"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fsck: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn ops_in_flight_across_map_changes_all_complete() {
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let cluster = Cluster::start("data", 32, &[1, 1, 1]).await;
            let client = Arc::new(Client::connect(cluster.config()).await.unwrap());
            let victim = cluster.osds[2].id;
            let writer = {
                let client = client.clone();
                tokio::spawn(async move {
                    let sem = Arc::new(tokio::sync::Semaphore::new(16));
                    let mut set = tokio::task::JoinSet::new();
                    for i in 0..3000 {
                        let (client, sem) = (client.clone(), sem.clone());
                        set.spawn(async move {
                            let _p = sem.acquire_owned().await.unwrap();
                            client
                                .write_full("data", &format!("m{i}"), &content(i, 4096))
                                .await
                                .map_err(|e| format!("m{i}: {e}"))
                        });
                    }
                    let mut ok = 0;
                    while let Some(r) = set.join_next().await {
                        r.unwrap().unwrap();
                        ok += 1;
                    }
                    ok
                })
            };
            // Two map changes while the writes are in flight: out, then in again.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let e1 = cluster.mon.osd_out(victim).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let e2 = cluster
                .mon
                .admin()
                .await
                .osd_in(authed(v1::OsdIdRequest { id: victim }))
                .await
                .unwrap()
                .into_inner()
                .epoch;
            assert!(e2 > e1);
            assert_eq!(writer.await.unwrap(), 3000, "every write acknowledged");
            // (Whether some op met a StaleMap or Again depends on timing: shown, not asserted.)
            eprintln!("client across the map changes: {:?}", client.stats());
            // Every OSD applied the last epoch; the client followed it.
            let ids: Vec<u32> = cluster.osds.iter().map(|o| o.id).collect();
            cluster.mon.wait_osds_at(&ids, e2).await;
            assert!(client.wait_for_epoch(e2, Duration::from_secs(10)).await);
            // Placement is back where it started: what is written now reads back everywhere.
            for i in 0..300 {
                let name = format!("m{i}");
                client
                    .write_full("data", &name, &content(i, 100))
                    .await
                    .unwrap();
                assert_eq!(
                    client.read("data", &name, 0, 200).await.unwrap(),
                    content(i, 100)
                );
            }
        })
        .await
        .expect("test time limit");
    });
}
