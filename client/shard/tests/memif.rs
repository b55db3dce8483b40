//! The kernel-free link end to end: a real `carmine-osd run` (memstore, one shard) whose DPDK
//! port is the master end of a `net_memif` link, and this test's `ShardClient` on a reactor
//! shard with smoltcp on the slave end (`memif::MemifPort`): objects written and read back with
//! no kernel socket on the data path (the monitor and the OSD's agent talk over 127.0.0.1).
//! Needs root and hugepages (ci/test reserves them); nextest runs it in the `eal-spdk` group.

#[path = "../../lib/tests/common/mod.rs"]
mod common;
mod support;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use carmine_client::Client;
use carmine_client_shard::memif::{MemifConfig, MemifPort};
use common::{osd_bin, osd_keyfile, runtime, spawn_osd, KillOnDrop, Mon};
use support::{content, on_shard};

const LIMIT: Duration = Duration::from_secs(90);
const OSD_IP: &str = "10.91.0.1/24";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 91, 0, 2);

#[test]
fn objects_roundtrip_over_a_memif_link_with_no_kernel_on_the_data_path() {
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let mon = Mon::start();
            let creds = mon.add_key("client.memif").await;
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("memif.sock");
            let uuid = "memif-osd";
            let keyfile = osd_keyfile(&mon.addr, dir.path(), uuid);
            let prefix = format!("carmine-memif-test-{}", std::process::id());
            let config = dir.path().join("osd.toml");
            std::fs::write(
                &config,
                format!(
                    r#"[osd]
uuid = "{uuid}"
host = "memif-host"
[mon]
addr = "{mon}"
[admin]
listen = "127.0.0.1:0"
[auth]
keyfile = "{keyfile}"
[tls]
plaintext = true
[reactor]
cores = [0]
idle = "adaptive"
pin = false
[net]
backend = "dpdk"
ip = "{OSD_IP}"
device = "net_memif0,role=master,socket={socket}"
base_port = 6800
[store]
kind = "memstore"
[spdk]
mem_mib = 128
file_prefix = "{prefix}"
"#,
                    mon = mon.addr,
                    keyfile = keyfile.display(),
                    socket = socket.display(),
                ),
            )
            .unwrap();
            let (osd, _ready) = spawn_osd(&osd_bin(), &config, Duration::from_secs(30));
            let mut osd = KillOnDrop(Some(osd));
            mon.wait_up(1).await;
            mon.create_pool("data", 16, 1).await;
            let mut cfg = carmine_client::ClientConfig::new(mon.addr.clone(), creds).plaintext();
            cfg.op_timeout = Duration::from_secs(20);
            let maps = Arc::new(Client::connect(cfg.clone()).await.unwrap());
            // The map names the OSD by its address on the link.
            let t = maps.locate("data", "obj_0").unwrap();
            assert_eq!(t.addr.ip().to_string(), OSD_IP.split('/').next().unwrap());

            let mut memif = MemifConfig::new(&socket, CLIENT_IP, 24);
            memif.mem_mib = 64;
            let port = Arc::new(
                tokio::task::spawn_blocking(move || MemifPort::open(&memif))
                    .await
                    .unwrap()
                    .expect("the memif link comes up"),
            );
            let stack_port = port.clone();
            let stats = on_shard(
                move || stack_port.stack(|_| {}).map_err(|e| e.to_string()),
                maps.clone(),
                cfg,
                Box::new(|c| {
                    Box::pin(async move {
                        // 4 KiB ops (three frames at MTU 1500) and 100 KB ones, 8 at a time.
                        let sizes = [4096usize, 100_000];
                        let mut tasks = Vec::new();
                        for w in 0..8usize {
                            let c = c.clone();
                            tasks.push(
                                carmine_reactor::spawn_local(async move {
                                    for i in (w..64).step_by(8) {
                                        let data = content(i, sizes[i % 2]);
                                        c.write_full("data".into(), &format!("obj_{i}"), &data)
                                            .await
                                            .unwrap();
                                    }
                                })
                                .unwrap(),
                            );
                        }
                        for t in tasks {
                            t.await;
                        }
                        for i in 0..64usize {
                            let got = c
                                .read("data".into(), &format!("obj_{i}"), 0, 200_000)
                                .await
                                .unwrap();
                            assert!(
                                got == content(i, sizes[i % 2]),
                                "obj_{i}: {} bytes",
                                got.len()
                            );
                        }
                        c.stats()
                    })
                }),
            )
            .await;
            assert_eq!(stats.ops, 128, "{stats:?}");
            assert_eq!(stats.connects, 1, "{stats:?}");
            // Frames crossed the memif port both ways: at least one per 4 KiB op each way.
            let ps = port.port().stats().unwrap();
            assert!(ps.rx_packets > 128 && ps.tx_packets > 128, "{ps:?}");
            port.cleanup();
            let left: Vec<_> = std::fs::read_dir("/dev/hugepages")
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("carmine-client-{}", std::process::id()))
                })
                .collect();
            assert!(left.is_empty(), "hugepage files left behind: {left:?}");
            common::kill_osd(&mut osd.0);
            // A killed master leaves its memif socket behind: the OSD's next start must take
            // it back (a stale socket refused its bind before), and ready means its port is up.
            assert!(socket.exists());
            let (again, _ready) = spawn_osd(&osd_bin(), &config, Duration::from_secs(30));
            let mut osd = KillOnDrop(Some(again));
            common::kill_osd(&mut osd.0);
            // SIGKILLed, the OSD could not remove its own hugepage files.
            for e in std::fs::read_dir("/dev/hugepages").unwrap().flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{prefix}"));
        })
        .await
        .expect("test timed out");
    });
}
