//! The OSD on its real data path, in the CI mode: DPDK `net_af_packet` on one end of a veth
//! pair in a private network namespace, smoltcp per shard, two shards on a two-queue port
//! (software steering), memstore. The monitor and the client run in the other namespace (this
//! test's thread enters it; the threads it starts inherit it), kernel TCP, as a real client
//! would. Needs root and hugepages (ci/test reserves them).

#[path = "../../../client/lib/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
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
        // SAFETY: kill(2) on our own child's pid. SIGTERM first: the OSD stops cleanly.
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
    let config = write_config(dir.path(), &mon, 2, "", 1500);
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

/// Writes an OSD config for `shards` shards on the af_packet port (`devargs` appended to the
/// vdev string) with IP MTU `mtu`.
fn write_config(
    dir: &std::path::Path,
    mon: &Mon,
    shards: usize,
    devargs: &str,
    mtu: u32,
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
kind = "memstore"
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
            let (mut osd, r) = start_osd(&veth, &write_config(dir.path(), &mon, 1, "", 9000)).await;
            let err = r.expect_err("an OSD with MTU 9000 on 2 KiB ring frames started");
            assert!(err.contains("net.mtu") && err.contains("framesz"), "{err}");
            let status = osd.0.wait().unwrap();
            assert!(!status.success());

            let devargs = ",framesz=9216,blocksz=36864";
            let (_osd, r) =
                start_osd(&veth, &write_config(dir.path(), &mon, 1, devargs, 9000)).await;
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
