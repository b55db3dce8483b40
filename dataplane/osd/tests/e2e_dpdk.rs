//! The OSD on its real data path, in the CI mode: DPDK `net_af_packet` on one end of a veth
//! pair in a private network namespace, smoltcp per shard, two shards on a two-queue port
//! (software steering), memstore, and the production combination with bdevstore on an SPDK aio
//! bdev over a file, killed under write load. The monitor and the client run in the other
//! namespace (this test's thread enters it; the threads it starts inherit it), kernel TCP, as a
//! real client would. Needs root and hugepages (ci/test reserves them); nextest runs these tests
//! one at a time (the `eal-spdk` group of `.config/nextest.toml`).

#[path = "../../../client/lib/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use carmine_client::{Client, ConnectOptions, Connection, Epoch, Op, OpRequest, PgId, PoolId};
use carmine_net::netns::{self, VethPair, CLIENT_IP, SERVER_IF};
use carmine_proto::v1;
use common::{authed, Mon, OSD_TOKEN};

const SMOLTCP_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const AGENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);

fn content(i: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| (k * 7 + i * 13 + (k >> 10)) as u8)
        .collect()
}

/// Kills the OSD (and its `ip netns exec` parent) on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        // Already reaped (killed and waited for by the test): its pid may be someone else's now.
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        // SAFETY: kill(2) on our own child's pid, not yet reaped. SIGTERM first: the OSD stops
        // cleanly.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        for _ in 0..200 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The test's network: a veth pair of this MTU between a private server namespace (the OSD's
/// agent address on it) and a client namespace that this thread enters, and a monitor there.
fn link_and_monitor(tag: &str, mtu: u32) -> (VethPair, Mon) {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root: run through ci/test"
    );
    let veth = VethPair::create(tag, mtu).expect("veth pair");
    veth.add_server_kernel_ip(AGENT_IP).expect("agent address");
    netns::enter(&veth.client_ns).expect("enter the client namespace");
    let mon = Mon::start_on(&format!("{CLIENT_IP}:0"));
    (veth, mon)
}

#[test]
fn two_shard_osd_on_dpdk_af_packet_serves_a_shard_aware_client() {
    let (veth, mon) = link_and_monitor("o", 1500);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &mon, 2, "", 1500, MEMSTORE);
    let rt = common::runtime();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), async {
            let creds = mon.add_key("client.dpdk").await;
            mon.create_pool("data", 32, 1).await;
            let (_osd, line) = start_osd(&veth, &config).await;
            let line = line.expect("the DPDK OSD's ready line");
            assert!(
                line.contains("shards=2") && line.contains("ports=6800,6801"),
                "{line}"
            );
            mon.wait_up(1).await;

            let client = connect_client(&mon, &creds).await;
            write_and_verify(&client, "d", 400, &[1, 4096, 60_000, 300_000, 1 << 20]).await;

            // Both shards served, and the shard-aware client caused no forward.
            let counters = perf(&mon).await;
            assert!(
                counters["shard0.ops"] > 0 && counters["shard1.ops"] > 0,
                "{counters:?}"
            );
            assert_eq!(counters["forwards"], 0, "{counters:?}");

            // An op sent to the other shard's port crosses the ring and is still served.
            let name = (0..)
                .map(|i| format!("f{i}"))
                .find(|n| client.locate("data", n).unwrap().shard == 1)
                .unwrap();
            let t = client.locate("data", &name).unwrap();
            let pool = client.pool("data").await.unwrap();
            let conn = Connection::connect(
                SocketAddr::from((SMOLTCP_IP, 6800)),
                &ConnectOptions::new(creds.id.clone(), creds.key.clone()),
            )
            .await
            .unwrap();
            conn.call(&OpRequest {
                pool: PoolId(u64::from(pool.id)),
                pg: PgId(t.pg),
                epoch: Epoch(client.epoch()),
                op: Op::WriteFull {
                    object: &name,
                    data: b"via shard 0",
                },
            })
            .await
            .unwrap();
            assert_eq!(
                client.read("data", &name, 0, 64).await.unwrap(),
                b"via shard 0"
            );
            let counters = perf(&mon).await;
            assert_eq!(counters["shard0.forwards_sent"], 1, "{counters:?}");
            assert_eq!(counters["shard1.forwards_received"], 1, "{counters:?}");
        })
        .await
        .expect("test time limit");
    });
}

/// A cluster client with a generous op timeout (2 cores, debug build, DPDK in adaptive idle).
async fn connect_client(mon: &Mon, creds: &carmine_client::Credentials) -> Arc<Client> {
    let mut cfg = carmine_client::ClientConfig::new(mon.addr.clone(), creds.clone());
    cfg.op_timeout = Duration::from_secs(20);
    Arc::new(Client::connect(cfg).await.unwrap())
}

/// Writes `n` objects `<prefix><i>` of the sizes in turn, all at once, and reads each back.
async fn write_and_verify(client: &Arc<Client>, prefix: &str, n: usize, sizes: &[usize]) {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let client = client.clone();
        let name = format!("{prefix}{i}");
        let data = content(i, sizes[i % sizes.len()]);
        set.spawn(async move {
            client.write_full("data", &name, &data).await.unwrap();
            let got = client
                .read("data", &name, 0, data.len() as u32)
                .await
                .unwrap();
            assert!(got == data, "{name} read back differs");
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

/// The `[store]` table of the memstore OSDs.
const MEMSTORE: &str = "kind = \"memstore\"";

/// Writes an OSD config for `shards` shards on the af_packet port (`devargs` appended to the
/// vdev string) with IP MTU `mtu`, and `store` as the `[store]` table.
fn write_config(
    dir: &std::path::Path,
    mon: &Mon,
    shards: usize,
    devargs: &str,
    mtu: u32,
    store: &str,
) -> std::path::PathBuf {
    let config = dir.join(format!("osd-{mtu}{}.toml", devargs.len()));
    let cores: Vec<String> = (0..shards).map(|c| c.to_string()).collect();
    std::fs::write(
        &config,
        format!(
            r#"[osd]
uuid = "dpdk-osd"
host = "dpdk-host"
[mon]
addr = "{mon}"
[admin]
listen = "{AGENT_IP}:0"
token = "{OSD_TOKEN}"
[reactor]
cores = [{cores}]
idle = "adaptive"
pin = false
[net]
backend = "dpdk"
ip = "{SMOLTCP_IP}/24"
device = "net_af_packet0,iface={SERVER_IF}{devargs}"
base_port = 6800
mtu = {mtu}
[store]
{store}
[spdk]
mem_mib = 256
file_prefix = "carmine-e2e-dpdk-{pid}-{mtu}"
"#,
            mon = mon.addr,
            cores = cores.join(", "),
            pid = std::process::id(),
        ),
    )
    .unwrap();
    config
}

/// Starts the OSD in the server namespace. Returns it (killed on drop) and its ready line, or
/// what it wrote to stderr if it exited first.
async fn start_osd(veth: &VethPair, config: &std::path::Path) -> (Child, Result<String, String>) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &veth.server_ns])
        .arg(env!("CARGO_BIN_EXE_carmine-osd"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let tx_err = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.starts_with("carmine-osd: ready") {
                let _ = tx.send(Ok(line));
            }
        }
    });
    std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("{line}");
            text.push_str(&line);
            text.push('\n');
        }
        // stderr closes when the OSD exits: report what it said (ignored after a ready line).
        let _ = tx_err.send(Err(text));
    });
    let line = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("the OSD neither became ready nor exited within 60 s");
    (Child(child), line)
}

#[test]
fn jumbo_frames_carry_ops_and_a_too_small_ring_is_refused() {
    let (veth, mon) = link_and_monitor("j", 9000);
    let dir = tempfile::tempdir().unwrap();
    let rt = common::runtime();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), async {
            let creds = mon.add_key("client.jumbo").await;
            mon.create_pool("data", 16, 1).await;

            // MTU 9000 with the PMD's default 2 KiB ring frames: refused, with the remedy.
            let (mut osd, r) = start_osd(
                &veth,
                &write_config(dir.path(), &mon, 1, "", 9000, MEMSTORE),
            )
            .await;
            let err = r.expect_err("an OSD with MTU 9000 on 2 KiB ring frames started");
            assert!(err.contains("net.mtu") && err.contains("framesz"), "{err}");
            let status = osd.0.wait().unwrap();
            assert!(!status.success());

            let devargs = ",framesz=9216,blocksz=36864";
            let (_osd, r) = start_osd(
                &veth,
                &write_config(dir.path(), &mon, 1, devargs, 9000, MEMSTORE),
            )
            .await;
            r.expect("the jumbo OSD's ready line");
            mon.wait_up(1).await;

            // smoltcp advertises the jumbo MSS: the client's kernel sends 9000-byte frames.
            let mss = tokio::task::spawn_blocking(|| {
                let s = std::net::TcpStream::connect((SMOLTCP_IP, 6800)).unwrap();
                let mut mss: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: getsockopt writes at most `len` bytes into `mss`, a c_int we own.
                let rc = unsafe {
                    libc::getsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&s),
                        libc::IPPROTO_TCP,
                        libc::TCP_MAXSEG,
                        (&mut mss as *mut libc::c_int).cast(),
                        &mut len,
                    )
                };
                assert_eq!(rc, 0);
                mss
            })
            .await
            .unwrap();
            assert!(mss > 8000, "MSS {mss}: the link MTU is 9000");

            let client = connect_client(&mon, &creds).await;
            write_and_verify(&client, "j", 100, &[1, 4096, 8960, 100_000, 1 << 20]).await;
        })
        .await
        .expect("test time limit");
    });
}

/// The production combination: DPDK af_packet + smoltcp on two shards, bdevstore on an SPDK
/// aio bdev over a file in the test's temp dir. Writes and reads verified; then concurrent
/// writers (each owns its objects: write_full, write at an offset, remove, and read-backs of
/// what was acknowledged) while the OSD is SIGKILLed; fsck of the image as the kill left it;
/// a restart on the same file; and every object read back. An object must hold its last
/// acknowledged state, or, if an op on it was in flight at the kill, that op's result:
/// never anything else, never missing, never a mix.
#[test]
fn bdevstore_on_dpdk_af_packet_keeps_acknowledged_writes_over_sigkill_under_load() {
    let (veth, mon) = link_and_monitor("b", 1500);
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("osd.img");
    let store = format!(
        "kind = \"bdevstore\"\nbdev = \"aio\"\npath = \"{}\"\nsize_mib = 256",
        img.display()
    );
    let config = write_config(dir.path(), &mon, 2, "", 1500, &store);
    let rt = common::runtime();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(240), async {
            let creds = mon.add_key("client.prod").await;
            mon.create_pool("data", 32, 1).await;
            let (mut osd, line) = start_osd(&veth, &config).await;
            let line = line.expect("the DPDK + bdevstore OSD's ready line");
            assert!(line.contains("shards=2"), "{line}");
            mon.wait_up(1).await;

            // Plain writes and reads through the whole stack, up to 1 MiB.
            let client = connect_client(&mon, &creds).await;
            write_and_verify(&client, "v", 60, &[1, 4096, 60_000, 300_000, 1 << 20]).await;

            // Rounds of: load, SIGKILL while it runs, fsck, restart, read everything back.
            let sizes = [1, 4096, 60_000, 300_000, 1 << 20];
            let mut objects = vec![Expected::default(); Load::OBJECTS];
            let mut client = client;
            for round in 0..KILL_ROUNDS {
                let load_time = std::time::Instant::now();
                let mut load = Load::start(&client, objects, round);
                load.wait_acked(ACKS_PER_ROUND).await;
                load.killed.store(true, Ordering::SeqCst);
                osd.0.kill().unwrap();
                osd.0.wait().unwrap();
                let load_acked = load.acked.load(Ordering::SeqCst);
                objects = load.stop().await;
                drop(client);
                let in_flight = objects.iter().filter(|o| o.pending.is_some()).count();
                assert!(in_flight > 0, "no write was in flight at the kill");
                eprintln!(
                    "round {round}: SIGKILL after {load_acked} acknowledged ops, {in_flight} in \
                     flight, {:?} into the load",
                    load_time.elapsed()
                );

                // The image as the kill left it is consistent (a torn, unacknowledged tail is
                // allowed), before the OSD replays it.
                let report = fsck(&img).await;
                eprintln!("round {round}: fsck after the kill: {report}");
                assert!(report["objects"].as_u64().unwrap() >= 60, "{report}");

                // Same config, same file: every acknowledged write is back.
                let (restarted, line) = start_osd(&veth, &config).await;
                line.expect("the restarted OSD's ready line");
                osd = restarted;
                mon.wait_up(1).await;
                client = connect_client(&mon, &creds).await;
                for (i, o) in objects.iter_mut().enumerate() {
                    let name = Load::name(i);
                    let got = match client.read("data", &name, 0, READ_ALL).await {
                        Ok(data) => Some(data),
                        Err(e) if e.is_not_found() => None,
                        Err(e) => panic!("{name}: {e}"),
                    };
                    let matches = |s: &Option<Vec<u8>>| *s == got;
                    assert!(
                        matches(&o.acked) || o.pending.as_ref().is_some_and(matches),
                        "round {round}: {name} holds {} (acknowledged: {}; in flight: {})",
                        describe(&got),
                        describe(&o.acked),
                        o.pending.as_ref().map_or("nothing".into(), describe),
                    );
                    // What it holds now is what the next round starts from.
                    o.acked = got;
                    o.pending = None;
                }
                for i in 0..60 {
                    let data = content(i, sizes[i % sizes.len()]);
                    let got = client
                        .read("data", &format!("v{i}"), 0, data.len() as u32)
                        .await
                        .unwrap();
                    assert!(got == data, "v{i} after restart {round}");
                }
            }
            // And the recovered store takes new writes.
            write_and_verify(&client, "after", 40, &[4096, 100_000]).await;
        })
        .await
        .expect("test time limit");
    });
}

/// Kills (and restarts) of the OSD under load.
const KILL_ROUNDS: u64 = 3;
/// Acknowledged ops of a round before its kill (a few seconds of load on the debug build).
const ACKS_PER_ROUND: usize = 800;
/// More than any object of the load grows to.
const READ_ALL: u32 = 1 << 20;

/// What one object of the load must hold: the state its last acknowledged op left (`None`:
/// absent), and the state the op in flight would leave, if one was.
#[derive(Clone, Debug, Default)]
struct Expected {
    acked: Option<Vec<u8>>,
    pending: Option<Option<Vec<u8>>>,
}

fn describe(s: &Option<Vec<u8>>) -> String {
    match s {
        None => "no object".into(),
        Some(d) => format!(
            "{} bytes, crc32c {:08x}",
            d.len(),
            crc32c(d) // distinguishes contents without printing them
        ),
    }
}

/// Bitwise CRC-32C: only to tell contents apart in a failure message.
fn crc32c(d: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in d {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = (c >> 1) ^ (0x82F6_3B78 & (c & 1).wrapping_neg());
        }
    }
    !c
}

/// Pseudo-random bytes, different for every `seed`: old and new contents of an object never
/// look alike.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Concurrent writers, each the only one to touch its objects, so each object has at most
/// one op in flight and its expected state is exact.
struct Load {
    set: tokio::task::JoinSet<()>,
    model: Arc<Mutex<Vec<Expected>>>,
    acked: Arc<AtomicUsize>,
    progress: Arc<tokio::sync::Notify>,
    /// Set just before the kill: from then on an op's failure is expected.
    killed: Arc<AtomicBool>,
}

impl Load {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 6;
    const OBJECTS: usize = Self::WRITERS * Self::PER_WRITER;

    fn name(i: usize) -> String {
        format!("load{i}")
    }

    /// Starts the writers on objects whose states are `objects` (none in flight). `round`
    /// makes this load's contents differ from every earlier one's.
    fn start(client: &Arc<Client>, objects: Vec<Expected>, round: u64) -> Load {
        assert_eq!(objects.len(), Self::OBJECTS);
        let mut load = Load {
            set: tokio::task::JoinSet::new(),
            model: Arc::new(Mutex::new(objects)),
            acked: Arc::new(AtomicUsize::new(0)),
            progress: Arc::new(tokio::sync::Notify::new()),
            killed: Arc::new(AtomicBool::new(false)),
        };
        for w in 0..Self::WRITERS {
            let (client, model) = (client.clone(), load.model.clone());
            let (acked, progress, killed) = (
                load.acked.clone(),
                load.progress.clone(),
                load.killed.clone(),
            );
            load.set.spawn(async move {
                let mut rng = (round * 64 + w as u64 + 1) * 0x2545_F491;
                for step in 0u64.. {
                    rng = rng
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let r = rng >> 33;
                    let i = w * Self::PER_WRITER + (r as usize % Self::PER_WRITER);
                    let name = Self::name(i);
                    let current = model.lock().unwrap()[i].acked.clone();
                    // Every fourth step reads back what was acknowledged (nothing is in flight
                    // on this object: this writer is its only one).
                    if step % 4 == 3 {
                        let got = match client.read("data", &name, 0, READ_ALL).await {
                            Ok(d) => Some(d),
                            Err(e) if e.is_not_found() => None,
                            Err(_) if killed.load(Ordering::SeqCst) => return,
                            Err(e) => panic!("read {name}: {e}"),
                        };
                        assert!(
                            got == current,
                            "{name} read {} after acknowledged {}",
                            describe(&got),
                            describe(&current)
                        );
                        continue;
                    }
                    let seed = (round << 56) | ((w as u64) << 40) | step;
                    let len = current.as_ref().map_or(0, Vec::len);
                    let (next, result) = match (r >> 8) % 10 {
                        // Overwrite or extend at an offset inside the object.
                        0..=3 if len > 0 && len < 400_000 => {
                            let off = (r >> 12) as usize % len;
                            let data = pattern(seed, 1 + (r >> 20) as usize % 20_000);
                            let mut next = current.clone().unwrap_or_default();
                            let end = off + data.len();
                            if next.len() < end {
                                next.resize(end, 0);
                            }
                            next[off..end].copy_from_slice(&data);
                            model.lock().unwrap()[i].pending = Some(Some(next.clone()));
                            let res = client.write("data", &name, off as u64, &data).await;
                            (Some(next), res)
                        }
                        4 if len > 0 => {
                            model.lock().unwrap()[i].pending = Some(None);
                            (None, client.remove("data", &name).await)
                        }
                        _ => {
                            let sizes = [4096, 12_288, 65_536, 200_000, 777];
                            let data = pattern(seed, sizes[(r >> 12) as usize % sizes.len()]);
                            model.lock().unwrap()[i].pending = Some(Some(data.clone()));
                            let res = client.write_full("data", &name, &data).await;
                            (Some(data), res)
                        }
                    };
                    match result {
                        Ok(()) => {
                            let mut m = model.lock().unwrap();
                            m[i].acked = next;
                            m[i].pending = None;
                            drop(m);
                            acked.fetch_add(1, Ordering::SeqCst);
                            progress.notify_one();
                        }
                        // Left pending: it may or may not have reached the store.
                        Err(_) if killed.load(Ordering::SeqCst) => return,
                        Err(e) => panic!("{name}: {e}"),
                    }
                }
            });
        }
        load
    }

    /// Waits until `n` ops were acknowledged (the test's time limit bounds it).
    async fn wait_acked(&mut self, n: usize) {
        while self.acked.load(Ordering::SeqCst) < n {
            tokio::select! {
                () = self.progress.notified() => {}
                Some(r) = self.set.join_next() => {
                    r.expect("a writer failed before the kill");
                    unreachable!("writers run until stopped");
                }
            }
        }
    }

    /// Stops the writers where they are (an op in flight stays pending in the model) and
    /// returns the model.
    async fn stop(mut self) -> Vec<Expected> {
        self.set.abort_all();
        while let Some(r) = self.set.join_next().await {
            if let Err(e) = r {
                assert!(e.is_cancelled(), "a writer failed: {e}");
            }
        }
        let m = self.model.lock().unwrap().clone();
        m
    }
}

/// `carmine-osd fsck` of both shards of the image: must be clean. Returns the totals.
async fn fsck(img: &std::path::Path) -> serde_json::Value {
    let img = img.to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_carmine-osd"))
            .args(["fsck", "--bdev-kind", "aio", "--shard", "0", "--shard", "1"])
            .arg("--json")
            .arg("--path")
            .arg(&img)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fsck after the kill: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // DPDK's EAL logs to stdout too: the report is the line holding the JSON array.
    let shards: Vec<serde_json::Value> = stdout
        .lines()
        .find(|l| l.starts_with('['))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no fsck report in: {stdout}"));
    let objects: u64 = shards.iter().map(|s| s["objects"].as_u64().unwrap()).sum();
    serde_json::json!({ "objects": objects, "shards": shards })
}

async fn perf(mon: &Mon) -> BTreeMap<String, u64> {
    let addr = mon
        .admin()
        .await
        .osd_admin_addr(authed(v1::OsdIdRequest { id: 0 }))
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
