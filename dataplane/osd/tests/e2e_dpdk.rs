//! The OSD on its real data path, in the CI mode: DPDK `net_af_packet` on one end of a veth
//! pair in a private network namespace, smoltcp per shard, two shards on a two-queue port
//! (software steering), memstore, and the production combination with bdevstore on an SPDK aio
//! bdev over a file, killed under write load; and replication on that path: three such OSDs,
//! each in its own namespace behind a bridge (`netns::Hub`), a pool of size 3 whose replica ops
//! go over the primaries' own smoltcp connections, and a replica SIGKILLed. The monitor and the
//! client run in the other namespace (this test's thread enters it; the threads it starts
//! inherit it), kernel TCP, as a real client would. Needs root and hugepages (ci/test reserves
//! them); nextest runs these tests one at a time (the `eal-spdk` group of
//! `.config/nextest.toml`).

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
use carmine_net::netns::{self, Hub, VethPair, CLIENT_IP, SERVER_IF};
use carmine_placement::{pg_to_osds, pg_to_shard};
use carmine_proto::v1;
use common::{authed, osd_authed, osd_keyfile, Mon};

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
    let config = write_config(
        dir.path(),
        &Node::single(&veth),
        &mon,
        2,
        "",
        1500,
        MEMSTORE,
    );
    let rt = common::runtime();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), async {
            let creds = mon.add_key("client.dpdk").await;
            mon.create_pool("data", 32, 1).await;
            let (_osd, line) = start_osd(&veth.server_ns, &config).await;
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
                &ConnectOptions::new(creds.id.clone(), creds.data_path_key()),
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
    let mut cfg = carmine_client::ClientConfig::new(mon.addr.clone(), creds.clone()).plaintext();
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

/// Where one DPDK OSD runs: its namespace, its name (uuid; host `<name>-host`), the kernel
/// address of its agent (gRPC to the monitor, admin service) and its smoltcp address (the
/// data path, published in the map).
struct Node {
    ns: String,
    name: String,
    agent: Ipv4Addr,
    smoltcp: Ipv4Addr,
}

impl Node {
    /// The one OSD of the single-OSD tests, behind `veth`.
    fn single(veth: &VethPair) -> Node {
        Node {
            ns: veth.server_ns.clone(),
            name: "dpdk-osd".into(),
            agent: AGENT_IP,
            smoltcp: SMOLTCP_IP,
        }
    }
}

/// Writes `node`'s OSD config for `shards` shards on the af_packet port (`devargs` appended to
/// the vdev string) with IP MTU `mtu`, and `store` as the `[store]` table.
fn write_config(
    dir: &std::path::Path,
    node: &Node,
    mon: &Mon,
    shards: usize,
    devargs: &str,
    mtu: u32,
    store: &str,
) -> std::path::PathBuf {
    write_config_mem(dir, node, mon, shards, devargs, mtu, store, 256)
}

/// [`write_config`] with the EAL's hugepage memory (MiB).
#[allow(clippy::too_many_arguments)]
fn write_config_mem(
    dir: &std::path::Path,
    node: &Node,
    mon: &Mon,
    shards: usize,
    devargs: &str,
    mtu: u32,
    store: &str,
    mem_mib: u32,
) -> std::path::PathBuf {
    let name = &node.name;
    let config = dir.join(format!("{name}-{mtu}{}.toml", devargs.len()));
    let cores: Vec<String> = (0..shards).map(|c| c.to_string()).collect();
    std::fs::write(
        &config,
        format!(
            r#"[osd]
uuid = "{name}"
host = "{name}-host"
[mon]
addr = "{mon}"
[admin]
listen = "{agent}:0"
[auth]
keyfile = "{keyfile}"
[tls]
plaintext = true
[reactor]
cores = [{cores}]
idle = "adaptive"
pin = false
[net]
backend = "dpdk"
ip = "{smoltcp}/24"
mac = "auto"
device = "net_af_packet0,iface={SERVER_IF}{devargs}"
base_port = 6800
mtu = {mtu}
[store]
{store}
[spdk]
mem_mib = {mem_mib}
file_prefix = "carmine-e2e-dpdk-{pid}-{name}-{mtu}"
"#,
            mon = mon.addr,
            agent = node.agent,
            smoltcp = node.smoltcp,
            cores = cores.join(", "),
            pid = std::process::id(),
            keyfile = osd_keyfile(&mon.addr, dir, name).display(),
        ),
    )
    .unwrap();
    config
}

/// Starts an OSD in network namespace `ns`. Returns it (killed on drop) and its ready line, or
/// what it wrote to stderr if it exited first.
async fn start_osd(ns: &str, config: &std::path::Path) -> (Child, Result<String, String>) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
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
            let node = Node::single(&veth);
            let (mut osd, r) = start_osd(
                &node.ns,
                &write_config(dir.path(), &node, &mon, 1, "", 9000, MEMSTORE),
            )
            .await;
            let err = r.expect_err("an OSD with MTU 9000 on 2 KiB ring frames started");
            assert!(err.contains("net.mtu") && err.contains("framesz"), "{err}");
            let status = osd.0.wait().unwrap();
            assert!(!status.success());

            let devargs = ",framesz=9216,blocksz=36864";
            let (_osd, r) = start_osd(
                &node.ns,
                &write_config(dir.path(), &node, &mon, 1, devargs, 9000, MEMSTORE),
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
    let config = write_config(dir.path(), &Node::single(&veth), &mon, 2, "", 1500, &store);
    let rt = common::runtime();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(240), async {
            let creds = mon.add_key("client.prod").await;
            mon.create_pool("data", 32, 1).await;
            let (mut osd, line) = start_osd(&veth.server_ns, &config).await;
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
                let (restarted, line) = start_osd(&veth.server_ns, &config).await;
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
    perf_of(mon, 0).await
}

/// OSD `id`'s perf counters, from its own admin service at the address the monitor knows.
async fn perf_of(mon: &Mon, id: u32) -> BTreeMap<String, u64> {
    let addr = mon
        .admin()
        .await
        .osd_admin_addr(authed(v1::OsdIdRequest { id }))
        .await
        .unwrap()
        .into_inner()
        .admin_addr;
    let mut c = v1::osd_admin_client::OsdAdminClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    c.perf_counters(osd_authed(v1::Empty {}))
        .await
        .unwrap()
        .into_inner()
        .counters
        .into_iter()
        .map(|c| (c.name, c.value))
        .collect()
}

// ------------------------------------------------------------------ replication on DPDK

/// The replicated OSDs: osd `i` runs in the hub's member namespace `i`, its agent on
/// 10.77.0.1<i>, smoltcp on 10.77.0.2<i> (the layout of `ci/cluster-net`).
const REP_OSDS: usize = 3;
/// Shards of each replicated OSD: the first has two (one queue each, software steering), so
/// its links to its peers are per shard, and its peers' links reach either of its shards.
const REP_SHARDS: [usize; REP_OSDS] = [2, 1, 1];
/// The OSD that is SIGKILLed (a one-shard OSD: the two-shard one stays in the acting sets).
const REP_VICTIM: usize = 2;
const REP_PGS: u32 = 32;
/// Objects written (and read back) while all three OSDs run, and after the kill.
const REP_OBJECTS: usize = 3000;
const REP_OBJECTS_AFTER_KILL: usize = 600;
/// Client ops in flight.
const REP_CONCURRENCY: usize = 32;
/// How long a peer link may take to authenticate before the OSD gives it up and dials again
/// (`carmine_osd::peers::LINK_SETUP_TIMEOUT`).
const LINK_SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Every PG takes a write this soon after the last OSD is ready, or some link needed a second
/// connection. The links to the last OSD cannot start before it is in a map, so one that fails
/// its first setup is up LINK_SETUP_TIMEOUT later at the earliest; healthy ones take well
/// under a second, plus up to one keyring refresh (2 s) for the last OSD's key to reach the
/// others.
const LINKS_UP_WITHIN: Duration = Duration::from_secs(4);

fn rep_agent_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 10 + i as u8)
}

fn rep_smoltcp_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 20 + i as u8)
}

/// Object `i`'s size: one to a few frames and more (MTU 1500: 1460 B of TCP payload), and a
/// 1 MiB object every 700.
fn rep_size(i: usize) -> usize {
    const SIZES: [usize; 8] = [1, 777, 1460, 1461, 4096, 8999, 30_000, 100_000];
    if i % 700 == 699 {
        1 << 20
    } else {
        SIZES[i % SIZES.len()]
    }
}

/// Replication on its production path. Three memstore OSDs, each in its own network namespace
/// with a DPDK `net_af_packet` port on a veth end and smoltcp on it (its own IP and MAC, the
/// smoltcp IP its cluster address in the map); the veth peers are ports of a bridge in the
/// namespace of the monitor and the client (`netns::Hub`). A pool of size 3, min_size 2: every
/// write crosses the bridge three times, client to primary and primary to each replica over
/// the primary shard's own smoltcp connections (active opens, ARP between the namespaces).
///
/// Asserted: every object reads back; per OSD and per shard, `rep_sent` and `rep_applied`
/// match what placement says each one leads and holds as a replica (so every mutation was
/// applied by exactly two replicas), nothing refused or failed once the links were up, and
/// the replica bytes left each primary through its bridge port. Then a replica OSD is
/// SIGKILLed: once the monitor marks it down, the objects it led read back from a former
/// replica (the copy it had applied), and new writes succeed, each applied by the one
/// remaining replica.
#[test]
fn three_dpdk_osds_replicate_over_smoltcp_links_and_survive_a_replica_kill() {
    let test_time = std::time::Instant::now();
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root: run through ci/test"
    );
    let hub = Hub::create("r", REP_OSDS, 1500).expect("hub and member namespaces");
    for i in 0..REP_OSDS {
        hub.add_member_kernel_ip(i, rep_agent_ip(i))
            .expect("agent address");
    }
    netns::enter(&hub.hub_ns).expect("enter the hub namespace");
    let mon = Mon::start_on(&format!("{CLIENT_IP}:0"));
    let dir = tempfile::tempdir().unwrap();
    let rt = common::runtime();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), async {
            let creds = mon.add_key("client.rep").await;
            // The pool first: the OSDs boot into a map that has it.
            mon.admin()
                .await
                .pool_create(authed(v1::PoolCreateRequest {
                    name: "data".into(),
                    pg_num: REP_PGS,
                    size: 3,
                    min_size: 2,
                }))
                .await
                .unwrap();
            // One after the other: an EAL maps its hugepages while it initialises.
            let mut osds: Vec<Option<Child>> = Vec::new();
            let mut ids = Vec::new();
            for (i, &shards) in REP_SHARDS.iter().enumerate() {
                let node = Node {
                    ns: hub.member_ns[i].clone(),
                    name: format!("rep-osd{i}"),
                    agent: rep_agent_ip(i),
                    smoltcp: rep_smoltcp_ip(i),
                };
                let config =
                    write_config_mem(dir.path(), &node, &mon, shards, "", 1500, MEMSTORE, 128);
                let (osd, line) = start_osd(&node.ns, &config).await;
                let line = line.unwrap_or_else(|e| panic!("rep-osd{i} exited: {e}"));
                let id: u32 = line
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("osd="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no osd id in {line:?}"));
                assert!(
                    line.contains(&format!("addr={}", node.smoltcp)),
                    "the map must carry the smoltcp address: {line}"
                );
                osds.push(Some(osd));
                ids.push(id);
            }
            let last_ready = std::time::Instant::now();
            mon.wait_up(REP_OSDS).await;
            let map = mon.map().await;
            for (i, id) in ids.iter().enumerate() {
                let o = &map.osds[id];
                assert_eq!(o.cluster_addr, rep_smoltcp_ip(i).to_string(), "osd.{id}");
                assert_eq!(o.shard_count as usize, REP_SHARDS[i], "osd.{id}");
            }
            mon.wait_osds_at(&ids, map.epoch).await;
            eprintln!(
                "three OSDs up at epoch {} after {:?}",
                map.epoch,
                test_time.elapsed()
            );

            let client = connect_client(&mon, &creds).await;
            // Warm-up: one write to every PG, so that every primary shard has its links to its
            // replicas' shards (a write whose link is not up yet gets Again; the client
            // retries). Bounded: links that never come up fail the test here.
            let warm = std::time::Instant::now();
            let mut warm_names = BTreeMap::new();
            for k in 0.. {
                let name = format!("warm{k}");
                warm_names
                    .entry(client.locate("data", &name).unwrap().pg)
                    .or_insert(name);
                if warm_names.len() == REP_PGS as usize {
                    break;
                }
            }
            let mut set = tokio::task::JoinSet::new();
            for (pg, name) in warm_names {
                let client = client.clone();
                set.spawn(async move {
                    let t = std::time::Instant::now();
                    loop {
                        match client.write_full("data", &name, b"warm").await {
                            Ok(()) => break,
                            Err(e) if t.elapsed() < Duration::from_secs(30) => {
                                eprintln!("warm-up write to pg {pg} failed, again: {e}");
                            }
                            Err(e) => panic!("pg {pg}: no write within 30 s: {e}"),
                        }
                    }
                    t.elapsed()
                });
            }
            let mut slowest = Duration::ZERO;
            while let Some(r) = set.join_next().await {
                slowest = slowest.max(r.unwrap());
            }
            let links_up = last_ready.elapsed();
            eprintln!(
                "links up: a write to each of {REP_PGS} PGs {links_up:?} after the last OSD was \
                 ready (warm-up {:?}, slowest write {slowest:?}), client {:?}",
                warm.elapsed(),
                client.stats()
            );
            // Every link came up on its first connection.
            assert!(
                links_up < LINKS_UP_WITHIN && slowest < LINK_SETUP_TIMEOUT,
                "every PG took a write only {links_up:?} after the last OSD was ready (slowest \
                 write {slowest:?}): a peer link failed its first setup"
            );

            // The load: REP_OBJECTS objects written and read back, verified.
            let before = all_perf(&mon, &ids).await;
            let bytes_before: Vec<(u64, u64)> = (0..REP_OSDS)
                .map(|i| hub.member_port_bytes(i).unwrap())
                .collect();
            let load = std::time::Instant::now();
            let names: Vec<String> = (0..REP_OBJECTS).map(|i| format!("r{i}")).collect();
            write_read_bounded(&client, &names, 0).await;
            let load_time = load.elapsed();
            let after = all_perf(&mon, &ids).await;
            let bytes: u64 = (0..REP_OBJECTS).map(|i| rep_size(i) as u64).sum();
            eprintln!(
                "{REP_OBJECTS} objects ({} MB) written to 3 copies and read back in {load_time:?}",
                bytes / 1_000_000
            );

            // What each OSD and shard should have done, from placement under this map.
            let map = mon.map().await;
            let pool = map.pool_by_name("data").unwrap().clone();
            let mut want_sent: BTreeMap<(u32, u32), u64> = BTreeMap::new();
            let mut want_applied: BTreeMap<(u32, u32), u64> = BTreeMap::new();
            let mut led_bytes: BTreeMap<u32, u64> = BTreeMap::new();
            for (i, name) in names.iter().enumerate() {
                let pg = client.locate("data", name).unwrap().pg;
                let acting = pg_to_osds(&map, &pool, pg);
                assert_eq!(acting.len(), 3, "pg {pg}: {acting:?}");
                let shard = |osd: u32| pg_to_shard(pg, map.osds[&osd].shard_count);
                *want_sent.entry((acting[0], shard(acting[0]))).or_default() += 2;
                *led_bytes.entry(acting[0]).or_default() += rep_size(i) as u64;
                for &r in &acting[1..] {
                    *want_applied.entry((r, shard(r))).or_default() += 1;
                }
            }
            let delta = |osd: usize, name: &str| {
                after[osd].get(name).copied().unwrap_or(0)
                    - before[osd].get(name).copied().unwrap_or(0)
            };
            let mut total_applied = 0;
            for (i, &id) in ids.iter().enumerate() {
                for shard in 0..REP_SHARDS[i] as u32 {
                    let c = |n: &str| delta(i, &format!("shard{shard}.{n}"));
                    let (sent, applied) = (c("rep_sent"), c("rep_applied"));
                    eprintln!(
                        "osd.{id} shard {shard}: rep_sent {sent}, rep_applied {applied}, \
                         ops {}, again {}",
                        c("ops"),
                        c("again")
                    );
                    let want_s = want_sent.get(&(id, shard)).copied().unwrap_or(0);
                    let want_a = want_applied.get(&(id, shard)).copied().unwrap_or(0);
                    assert!(want_s > 0 && want_a > 0, "osd.{id} shard {shard}: no work");
                    assert_eq!(sent, want_s, "osd.{id} shard {shard}: replica ops sent");
                    assert_eq!(
                        applied, want_a,
                        "osd.{id} shard {shard}: replica ops applied"
                    );
                    assert_eq!(c("rep_refused"), 0, "osd.{id} shard {shard}");
                    assert_eq!(c("rep_write_failures"), 0, "osd.{id} shard {shard}");
                    total_applied += applied;
                }
                // The replica bytes went out through the OSD's bridge port.
                let (rx, _) = hub.member_port_bytes(i).unwrap();
                let out = rx - bytes_before[i].0;
                let replicated = 2 * led_bytes.get(&id).copied().unwrap_or(0);
                eprintln!("osd.{id}: {out} B into the hub, {replicated} B of replica data");
                assert!(out >= replicated, "osd.{id}: {out} B into the hub");
            }
            assert_eq!(total_applied, 2 * REP_OBJECTS as u64);

            // SIGKILL a replica; once the monitor marks it down, the two others serve.
            let victim = ids[REP_VICTIM];
            let led_by_victim: Vec<usize> = (0..REP_OBJECTS)
                .filter(|&i| client.locate("data", &names[i]).unwrap().osd == victim)
                .collect();
            assert!(!led_by_victim.is_empty());
            {
                let mut osd = osds[REP_VICTIM].take().unwrap();
                osd.0.kill().unwrap();
                osd.0.wait().unwrap();
            }
            let killed = std::time::Instant::now();
            let down_epoch = loop {
                let map = mon.map().await;
                if !map.osds[&victim].up {
                    break map.epoch;
                }
                assert!(
                    killed.elapsed() < Duration::from_secs(30),
                    "osd.{victim} not marked down within 30 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let survivors: Vec<usize> = (0..REP_OSDS).filter(|&i| i != REP_VICTIM).collect();
            let survivor_ids: Vec<u32> = survivors.iter().map(|&i| ids[i]).collect();
            mon.wait_osds_at(&survivor_ids, down_epoch).await;
            assert!(
                client
                    .wait_for_epoch(down_epoch, Duration::from_secs(10))
                    .await
            );
            eprintln!(
                "osd.{victim} SIGKILLed, marked down at epoch {down_epoch} after {:?}",
                killed.elapsed()
            );

            // What the victim led now comes from a former replica: the copy it applied.
            for &i in &led_by_victim {
                let t = client.locate("data", &names[i]).unwrap();
                assert_ne!(t.osd, victim);
                let data = content(i, rep_size(i));
                let got = client
                    .read("data", &names[i], 0, data.len() as u32)
                    .await
                    .unwrap_or_else(|e| panic!("{} after the kill: {e}", names[i]));
                assert!(got == data, "{}: the surviving copy differs", names[i]);
            }

            // New writes, each applied by the one replica left.
            let before = all_perf(&mon, &survivor_ids).await;
            let more: Vec<String> = (0..REP_OBJECTS_AFTER_KILL)
                .map(|i| format!("k{i}"))
                .collect();
            write_read_bounded(&client, &more, 7).await;
            let after = all_perf(&mon, &survivor_ids).await;
            let sum = |m: &[BTreeMap<String, u64>], n: &str| -> u64 {
                m.iter()
                    .flat_map(|c| c.iter())
                    .filter(|(k, _)| k.starts_with("shard") && k.ends_with(&format!(".{n}")))
                    .map(|(_, v)| v)
                    .sum()
            };
            let d = |n: &str| sum(&after, n) - sum(&before, n);
            assert_eq!(d("rep_sent"), REP_OBJECTS_AFTER_KILL as u64);
            assert_eq!(d("rep_applied"), REP_OBJECTS_AFTER_KILL as u64);
            assert_eq!(d("rep_refused"), 0);
            assert_eq!(d("rep_write_failures"), 0);
            eprintln!(
                "{REP_OBJECTS_AFTER_KILL} more objects on two copies; {} objects led by \
                 osd.{victim} read from their former replicas; client {:?}; test {:?}",
                led_by_victim.len(),
                client.stats(),
                test_time.elapsed()
            );
        })
        .await
        .expect("test time limit");
    });
}

/// Writes `names[i]` (content and size by `i + salt`) with `REP_CONCURRENCY` ops in flight,
/// then reads each back and compares.
async fn write_read_bounded(client: &Arc<Client>, names: &[String], salt: usize) {
    let names: Arc<Vec<String>> = Arc::new(names.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..REP_CONCURRENCY {
        let (client, names, next) = (client.clone(), names.clone(), next.clone());
        set.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(name) = names.get(k) else { break };
                let data = content(k + salt, rep_size(k + salt));
                client
                    .write_full("data", name, &data)
                    .await
                    .unwrap_or_else(|e| panic!("write {name}: {e}"));
                let got = client
                    .read("data", name, 0, data.len() as u32)
                    .await
                    .unwrap_or_else(|e| panic!("read {name}: {e}"));
                assert!(got == data, "{name} read back differs");
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

/// The perf counters of each of `ids`, in that order.
async fn all_perf(mon: &Mon, ids: &[u32]) -> Vec<BTreeMap<String, u64>> {
    let mut v = Vec::with_capacity(ids.len());
    for &id in ids {
        v.push(perf_of(mon, id).await);
    }
    v
}

/// The TCP checksum of `seg` (header + payload) from `src` to `dst` (RFC 793 pseudo-header).
fn tcp_checksum(src: Ipv4Addr, dst: Ipv4Addr, seg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&[0, 6]);
    add(&(seg.len() as u16).to_be_bytes());
    add(seg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One IPv4 + TCP SYN from `src`:`sport` to `dst`:`dport` (the kernel fills the IP checksum
/// and length of a raw IPPROTO_RAW packet).
fn syn_packet(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, seq: u32) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02; // SYN
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let sum = tcp_checksum(src, dst, t);
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    p
}

/// xorshift64*: the flood's addresses and ports, replayable from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Sends `count` SYNs to `dst`:`dport` from on-link addresses that never answer ARP (the
/// OSD's SYN-ACKs never leave, its listen sockets stay SYN-RECEIVED), at most `rate` a second,
/// from a raw socket in the calling thread's namespace. Returns how many were sent.
fn syn_flood(dst: Ipv4Addr, dport: u16, seed: u64, count: u64, rate: u64) -> u64 {
    // SAFETY: socket(2) with constant arguments; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    let mut rng = Rng(seed.max(1));
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst).to_be(),
        },
        sin_zero: [0; 8],
    };
    let start = std::time::Instant::now();
    let mut sent = 0;
    for i in 0..count {
        let r = rng.next();
        // 10.77.0.100-249: in the veth's /24, owned by no one.
        let src = Ipv4Addr::new(10, 77, 0, 100 + (r % 150) as u8);
        let sport = 1024 + ((r >> 16) % 60_000) as u16;
        let p = syn_packet(src, sport, dst, dport, (r >> 32) as u32);
        // SAFETY: sendto(2) with a valid buffer and a sockaddr_in of the right length.
        let n = unsafe {
            libc::sendto(
                fd,
                p.as_ptr().cast(),
                p.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n == p.len() as isize {
            sent += 1;
        }
        // Paced: ahead of `rate`, wait.
        let due = Duration::from_secs_f64((i + 1) as f64 / rate as f64);
        let elapsed = start.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
    sent
}

/// `tasks` loops of a 4 KiB write then its read until `dur` passes, every op successful; ops/s.
async fn rw_load(client: &Arc<Client>, tasks: usize, dur: Duration, tag: &str) -> f64 {
    let start = std::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let client = client.clone();
        let name = format!("{tag}{t}");
        set.spawn(async move {
            let data = content(t, 4096);
            let mut ops = 0u64;
            while start.elapsed() < dur {
                client.write_full("data", &name, &data).await.unwrap();
                assert_eq!(client.read("data", &name, 0, 4096).await.unwrap(), data);
                ops += 2;
            }
            ops
        });
    }
    let mut ops = 0;
    while let Some(r) = set.join_next().await {
        ops += r.unwrap();
    }
    ops as f64 / start.elapsed().as_secs_f64()
}

/// A SYN flood from spoofed on-link addresses against the smoltcp listener (raw socket in the
/// client namespace; seeded: `CARMINE_SYNFLOOD_SEED` replays one): the established client
/// keeps its service, the half-open sockets are taken back (counted), and once the flood stops
/// a new client connects at once.
#[test]
fn a_syn_flood_does_not_starve_established_clients_on_smoltcp() {
    const SYNS: u64 = 100_000;
    const RATE: u64 = 25_000;
    let seed = std::env::var("CARMINE_SYNFLOOD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("SYN flood seed {seed} (CARMINE_SYNFLOOD_SEED={seed} replays it)");
    let (veth, mon) = link_and_monitor("y", 1500);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &Node::single(&veth),
        &mon,
        1,
        "",
        1500,
        MEMSTORE,
    );
    let rt = common::runtime();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), async {
            let creds = mon.add_key("client.synflood").await;
            mon.create_pool("data", 8, 1).await;
            let (_osd, line) = start_osd(&veth.server_ns, &config).await;
            line.expect("the DPDK OSD's ready line");
            mon.wait_up(1).await;
            let client = connect_client(&mon, &creds).await;
            let base = rw_load(&client, 4, Duration::from_secs(2), "b").await;
            let before = perf(&mon).await;

            // The flood, from a thread of this namespace, while the client keeps going.
            let flood = std::thread::spawn(move || syn_flood(SMOLTCP_IP, 6800, seed, SYNS, RATE));
            tokio::time::sleep(Duration::from_millis(300)).await;
            let under = rw_load(&client, 4, Duration::from_secs(3), "u").await;
            let during = perf(&mon).await;
            let sent = tokio::task::spawn_blocking(move || flood.join().unwrap())
                .await
                .unwrap();
            // Half-open sockets are taken back within syn_timeout (2 s): a new client then
            // connects and is served.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            let fresh = connect_client(&mon, &creds).await;
            fresh.write_full("data", "fresh", b"in").await.unwrap();
            assert_eq!(fresh.read("data", "fresh", 0, 2).await.unwrap(), b"in");
            let after = perf(&mon).await;
            let d = |name: &str| after[name].saturating_sub(before[name]);
            println!(
                "seed {seed}: {sent} SYNs at <= {RATE}/s; client {base:.0} ops/s before, \
                 {under:.0} ops/s during; listen sockets taken back {} ({} by the end of the \
                 load)",
                d("shard0.syn_recycled"),
                during["shard0.syn_recycled"].saturating_sub(before["shard0.syn_recycled"]),
            );
            assert!(sent > SYNS / 2, "seed {seed}: only {sent} SYNs sent");
            assert!(d("shard0.syn_recycled") > 0, "seed {seed}: {after:?}");
            assert_eq!(d("shard0.errors"), 0, "seed {seed}: {after:?}");
            assert!(
                under >= base * 0.25,
                "seed {seed}: throughput fell from {base:.0} to {under:.0} ops/s"
            );
        })
        .await
        .expect("test time limit");
    });
}
