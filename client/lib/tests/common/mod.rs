//! Test cluster for the client tests (also used by the `carmine bench` test of carmine-cli):
//! a real monitor served in this process (`carmine_mon::serve`, as the binary runs it) and real
//! `carmine-osd run` processes (kernel sockets, memstore, 127.0.0.1, port 0), each killed by a
//! Drop guard. Nothing here stands in for a part: the OSDs and the monitor are the real ones.
//! The OSD crate's end-to-end tests include it too (by path), and start their bdevstore OSDs
//! (`dataplane/osd/tests/common_bdev`) with its config, spawn and kill functions.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use carmine_client::{AuthKey, Credentials};
use carmine_proto::v1::{self, mon_admin_client::MonAdminClient};
use clap::Parser;
use tonic::transport::Channel;

pub const TOKEN: &str = "client-test-admin-token";

/// A monitor on its own runtime thread; stopped and joined on drop.
pub struct Mon {
    pub addr: String,
    /// Where the monitor serves `/metrics` and `/prometheus/targets` (127.0.0.1, a port the
    /// kernel picked; not served again after [`Mon::start_again`]).
    pub metrics: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Mon {
    pub fn start() -> Mon {
        Self::start_on("127.0.0.1:0")
    }

    /// A monitor listening on `listen` (e.g. a veth address in a test's network namespace;
    /// the monitor's thread inherits the calling thread's namespace).
    pub fn start_on(listen: &str) -> Mon {
        let listen = listen.to_string();
        let dir = tempfile::tempdir().unwrap();
        let cfg = carmine_mon::MonConfig::parse_from([
            "carmine-mon",
            "--plaintext",
            "--listen",
            "127.0.0.1:0",
            "--admin-token",
            TOKEN,
            "--heartbeat-ms",
            "500",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ]);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind(listen.as_str())
                    .await
                    .unwrap();
                let m = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addrs = (
                    l.local_addr().unwrap().to_string(),
                    m.local_addr().unwrap().to_string(),
                );
                addr_tx.send(addrs).unwrap();
                carmine_mon::serve_on(cfg, l, Some(m), async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            });
        });
        let (addr, metrics) = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Mon {
            addr,
            metrics,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }

    pub async fn admin(&self) -> MonAdminClient<Channel> {
        let ch = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
        MonAdminClient::new(ch)
    }

    pub async fn create_pool(&self, name: &str, pg_num: u32, size: u32) -> u32 {
        self.admin()
            .await
            .pool_create(authed(v1::PoolCreateRequest {
                name: name.into(),
                pg_num,
                size,
                min_size: 1,
            }))
            .await
            .unwrap()
            .into_inner()
            .id
    }

    /// A client key issued by the monitor (`carmine auth add`).
    pub async fn add_key(&self, id: &str) -> Credentials {
        let r = self
            .admin()
            .await
            .auth_add(authed(v1::AuthIdRequest {
                id: id.into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        let key: [u8; 32] = r.key.as_slice().try_into().expect("32-byte key");
        Credentials {
            id: r.id,
            key: AuthKey::new(key),
        }
    }

    /// Marks `osd` out; the new epoch.
    pub async fn osd_out(&self, osd: u32) -> u64 {
        self.admin()
            .await
            .osd_out(authed(v1::OsdIdRequest { id: osd }))
            .await
            .unwrap()
            .into_inner()
            .epoch
    }

    pub async fn map(&self) -> carmine_placement::ClusterMap {
        self.admin()
            .await
            .get_map(authed(v1::GetMapRequest { epoch: 0 }))
            .await
            .unwrap()
            .into_inner()
            .into()
    }

    /// The perf counters of OSD `id` by name (`shard<i>.<counter>`, what `carmine osd perf`
    /// shows), from its own admin service at the address the monitor learnt from its boot.
    pub async fn osd_perf(&self, id: u32) -> std::collections::BTreeMap<String, u64> {
        let addr = self
            .admin()
            .await
            .osd_admin_addr(authed(v1::OsdIdRequest { id }))
            .await
            .unwrap()
            .into_inner()
            .admin_addr;
        let mut c =
            carmine_proto::v1::osd_admin_client::OsdAdminClient::connect(format!("http://{addr}"))
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

    /// The oldest map epoch the shards of OSD `id` applied (`shard<i>.map_epoch`).
    pub async fn osd_map_epoch(&self, id: u32) -> u64 {
        let counters = self.osd_perf(id).await;
        let epochs: Vec<u64> = counters
            .iter()
            .filter(|(name, _)| name.starts_with("shard") && name.ends_with(".map_epoch"))
            .map(|(_, &v)| v)
            .collect();
        assert!(
            !epochs.is_empty(),
            "no shard<i>.map_epoch counters: {counters:?}"
        );
        epochs.into_iter().min().unwrap_or(0)
    }

    /// Waits until every OSD of `ids` applied `epoch`.
    pub async fn wait_osds_at(&self, ids: &[u32], epoch: u64) {
        for &id in ids {
            let mut n = 0;
            while self.osd_map_epoch(id).await < epoch {
                n += 1;
                assert!(n < 300, "osd.{id} did not reach epoch {epoch}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Waits until the monitor's map has `n` OSDs up.
    pub async fn wait_up(&self, n: usize) {
        for _ in 0..300 {
            if self.map().await.osds.values().filter(|o| o.up).count() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{n} OSDs did not come up");
    }
}

impl Drop for Mon {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A follower monitor: the real monitor service in follower mode (what an etcd-mode monitor
/// serves until elected), told the leader's address directly instead of through etcd. It
/// answers every call with the `carmine-leader` redirect.
pub struct Follower {
    pub addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Follower {
    pub fn start(leader: Option<String>) -> Follower {
        let cfg = carmine_mon::MonConfig::parse_from([
            "carmine-mon",
            "--plaintext",
            "--listen",
            "127.0.0.1:0",
            "--admin-token",
            TOKEN,
            "--etcd",
            "http://127.0.0.1:1",
        ]);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (_leader_tx, leader_rx) = tokio::sync::watch::channel(leader);
                let slot = carmine_mon::service::MonSlot::following(leader_rx);
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(l.local_addr().unwrap().to_string()).unwrap();
                carmine_mon::serve_slot(cfg, slot, l, async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Follower {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A request to an OSD's admin service carrying the admin key the admin token stands for
/// (the OSDs hold no token: they check it against their keyring).
pub fn osd_authed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        carmine_proto::AUTH_HEADER,
        carmine_proto::auth::admin_token_osd_bearer(TOKEN).unwrap(),
    );
    r
}

/// Prepares OSD `uuid` on the monitor at `mon_addr` (`carmine osd new`) and writes its key
/// file into `dir`; returns the file. Runs on a thread of its own, so that sync and async
/// callers alike can use it.
pub fn osd_keyfile(mon_addr: &str, dir: &Path, uuid: &str) -> PathBuf {
    let (addr, id) = (mon_addr.to_string(), uuid.to_string());
    let r = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let ch = Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
                .unwrap();
            MonAdminClient::new(ch)
                .osd_new(authed(v1::OsdNewRequest { uuid: id }))
                .await
                .unwrap()
                .into_inner()
        })
    })
    .join()
    .expect("osd new");
    let key: [u8; 32] = r.key.as_slice().try_into().expect("32-byte key");
    let path = dir.join(format!("{uuid}.key"));
    std::fs::write(
        &path,
        format!(
            "id = \"{}\"\nkey = \"{}\"\n",
            r.key_id,
            AuthKey::new(key).to_hex()
        ),
    )
    .unwrap();
    path
}

/// A request carrying the admin token.
pub fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        carmine_proto::AUTH_HEADER,
        carmine_proto::bearer(TOKEN).unwrap(),
    );
    r
}

/// The workspace's `carmine-osd` binary: `CARMINE_OSD_BIN`, else next to this test's target
/// dir (`cargo build -p carmine-osd`, or any workspace-wide build, puts it there).
pub fn osd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CARMINE_OSD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/carmine-osd
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("carmine-osd"))
        .unwrap();
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p carmine-osd) or set CARMINE_OSD_BIN",
        bin.display()
    );
    bin
}

/// The config of an OSD of these tests: `uuid` on `host`, booting with `mon`, its admin
/// service and its `/metrics` on 127.0.0.1 (port 0), its key from `osd new` ([`osd_keyfile`]), one unpinned
/// shard per entry of `cores`
/// (adaptive idle), kernel sockets on 127.0.0.1 (ports chosen by the kernel); `store`: the
/// `[store]` table and whatever follows it (e.g. `[spdk]`).
pub fn osd_config(uuid: &str, host: &str, mon: &Mon, cores: &[usize], store: &str) -> String {
    let cores: Vec<String> = cores.iter().map(|c| c.to_string()).collect();
    let keyfile = osd_keyfile(&mon.addr, mon._dir.path(), uuid);
    format!(
        r#"[osd]
uuid = "{uuid}"
host = "{host}"
[mon]
addr = "{mon}"
[admin]
listen = "127.0.0.1:0"
[metrics]
listen = "127.0.0.1:0"
[auth]
keyfile = "{keyfile}"
[tls]
plaintext = true
[reactor]
cores = [{cores}]
idle = "adaptive"
pin = false
[net]
backend = "kernel"
ip = "127.0.0.1"
base_port = 0
{store}"#,
        mon = mon.addr,
        cores = cores.join(", "),
        keyfile = keyfile.display(),
    )
}

/// What a `carmine-osd run` prints once it serves:
/// `carmine-osd: ready osd=<id> shards=<n> addr=<ip> ports=<p0,p1,..> admin=<a> [metrics=<m>]`.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The id the monitor gave the OSD.
    pub id: u32,
    /// Each shard's data port.
    pub ports: Vec<u16>,
    /// Where it serves `/metrics`, when its config has `[metrics]`.
    pub metrics: Option<String>,
}

/// Runs `bin run --config <config>` (any store: memstore here, bdevstore in the OSD crate's
/// tests) and waits up to `ready_within` for its ready line; its stdout is drained for its whole
/// life. Killed, then a panic, if the line does not come.
pub fn spawn_osd(bin: &Path, config: &Path, ready_within: Duration) -> (Child, Ready) {
    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(config)
        // CARMINE_TEST_OSD_LOG=<filter> for more than warnings when a test needs a closer look.
        .env(
            "RUST_LOG",
            std::env::var("CARMINE_TEST_OSD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("carmine-osd: ready") {
                let _ = tx.send(line);
            }
        }
    });
    let line = match rx.recv_timeout(ready_within) {
        Ok(line) => line,
        Err(e) => {
            let why = match e {
                mpsc::RecvTimeoutError::Timeout => format!("within {ready_within:?}"),
                mpsc::RecvTimeoutError::Disconnected => "before its stdout closed".into(),
            };
            kill_osd(&mut Some(child));
            panic!(
                "{} ({}) did not print its ready line {why} (a bdevstore OSD needs root and \
                 hugepages)",
                bin.display(),
                config.display()
            );
        }
    };
    let mut ready = Ready {
        id: 0,
        ports: Vec::new(),
        metrics: None,
    };
    for field in line.split_whitespace() {
        if let Some(v) = field.strip_prefix("osd=") {
            ready.id = v.parse().unwrap();
        } else if let Some(v) = field.strip_prefix("ports=") {
            ready.ports = v.split(',').map(|p| p.parse().unwrap()).collect();
        } else if let Some(v) = field.strip_prefix("metrics=") {
            ready.metrics = Some(v.to_string());
        }
    }
    assert!(!ready.ports.is_empty(), "no ports in {line:?}");
    (child, ready)
}

/// SIGKILL (a crash) of an OSD process, if it runs, and waits for it.
pub fn kill_osd(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A process from [`spawn_osd`] that is killed and reaped when dropped, so a test that panics
/// midway still stops the OSD it started (a bare `Child` outlives its test).
pub struct KillOnDrop(pub Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill_osd(&mut self.0);
    }
}

/// One `carmine-osd run` process.
pub struct Osd {
    child: Option<Child>,
    pub id: u32,
    pub ports: Vec<u16>,
    /// Where it serves `/metrics` (from its ready line).
    pub metrics: Option<String>,
    pub uuid: String,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Osd {
    /// Starts an OSD with `shards` shards (kernel sockets, memstore) and waits for its ready
    /// line.
    pub fn start(mon: &Mon, uuid: &str, host: &str, shards: usize) -> Osd {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("osd.toml");
        let cores: Vec<usize> = (0..shards).map(|i| i % 2).collect();
        let store = "[store]\nkind = \"memstore\"\n";
        std::fs::write(&config, osd_config(uuid, host, mon, &cores, store)).unwrap();
        let mut osd = Osd {
            child: None,
            id: 0,
            ports: Vec::new(),
            metrics: None,
            uuid: uuid.into(),
            config,
            _dir: dir,
        };
        osd.spawn();
        osd
    }

    fn spawn(&mut self) {
        let (child, ready) = spawn_osd(&osd_bin(), &self.config, Duration::from_secs(30));
        self.child = Some(child);
        self.id = ready.id;
        self.ports = ready.ports;
        self.metrics = ready.metrics;
    }

    /// The process id (while it runs).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the OSD runs").id()
    }

    /// SIGKILL (a crash): every connection to it breaks.
    pub fn kill(&mut self) {
        kill_osd(&mut self.child);
    }

    /// Starts the same OSD (same uuid, so the same id) again; memstore starts empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Osd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A 3-OSD cluster on distinct hosts, a pool and a client key.
pub struct Cluster {
    pub osds: Vec<Osd>,
    pub creds: Credentials,
    pub mon: Mon,
}

impl Cluster {
    /// `shards`: shards of each OSD.
    pub async fn start(pool: &str, pg_num: u32, shards: &[usize]) -> Cluster {
        let mon = Mon::start();
        // The key first: the OSDs fetch the keyring after they boot.
        let creds = mon.add_key("client.test").await;
        let osds: Vec<Osd> = shards
            .iter()
            .enumerate()
            .map(|(i, &n)| Osd::start(&mon, &format!("osd-uuid-{i}"), &format!("host{i}"), n))
            .collect();
        mon.wait_up(osds.len()).await;
        mon.create_pool(pool, pg_num, 1).await;
        Cluster { osds, creds, mon }
    }

    pub fn config(&self) -> carmine_client::ClientConfig {
        let mut c = carmine_client::ClientConfig::new(self.mon.addr.clone(), self.creds.clone())
            .plaintext();
        c.op_timeout = Duration::from_secs(20);
        c
    }

    pub fn osd_mut(&mut self, id: u32) -> &mut Osd {
        self.osds.iter_mut().find(|o| o.id == id).unwrap()
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A monitor restart: the same monitor stopped and served again on the same address from the
/// same data dir (what restarting the `carmine-mon` process does).
impl Mon {
    /// Stops the monitor (its map streams end, its connections close) and keeps its address
    /// and data dir for [`Mon::start_again`].
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("monitor thread panicked");
        }
    }

    /// Serves the monitor again on its old address, from its old data dir.
    pub fn start_again(&mut self) {
        assert!(self.thread.is_none(), "the monitor is still running");
        let cfg = carmine_mon::MonConfig::parse_from([
            "carmine-mon",
            "--plaintext",
            "--listen",
            self.addr.as_str(),
            "--admin-token",
            TOKEN,
            "--heartbeat-ms",
            "500",
            "--data-dir",
            self._dir.path().to_str().unwrap(),
        ]);
        let listen = self.addr.clone();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // The old listener is closed once the old thread is joined; the port may
                // still be held for a moment by the kernel: retry the bind, bounded.
                let mut tries = 0;
                let l = loop {
                    match tokio::net::TcpListener::bind(listen.as_str()).await {
                        Ok(l) => break l,
                        Err(e) => {
                            tries += 1;
                            assert!(tries < 100, "cannot bind {listen} again: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                };
                ready_tx.send(()).unwrap();
                carmine_mon::serve(cfg, l, async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the restarted monitor did not bind its address");
        self.stop = Some(stop);
        self.thread = Some(thread);
    }

    /// `carmine health`: the monitor's health checks.
    pub async fn health(&self) -> v1::HealthReply {
        self.admin()
            .await
            .health(authed(v1::Empty {}))
            .await
            .unwrap()
            .into_inner()
    }
}
