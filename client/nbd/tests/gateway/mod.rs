//! What the NBD integration tests share, on top of the client tests' cluster harness
//! (`client/lib/tests/common`, included by each test crate as `common`):
//! - [`Gateway`]: a real `carmine-nbd` process serving images of the test cluster, stopped on
//!   drop;
//! - [`run`] / [`Spawned`]: the NBD clients the issue names (qemu-img, qemu-io, nbdinfo,
//!   nbdcopy, fio) as real processes, each with a deadline, their output shown on failure, and a
//!   message naming the Debian package when one is missing;
//! - seeded random data ([`Rng`], [`random_file`]) and [`wire`], a minimal NBD client for what
//!   the tools cannot send.
//!
//! Nothing stands in for a part: the monitor, the OSDs, the gateway and the clients are the
//! real ones, talking over 127.0.0.1.

#![allow(dead_code)]

pub mod wire;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use carmine_client::image::Image;
use carmine_client::{Client, Credentials};

use crate::common::{self, Cluster};

/// The gateway binary: `CARMINE_NBD_BIN`, else this package's (cargo builds it before the
/// tests).
pub fn nbd_bin() -> PathBuf {
    std::env::var_os("CARMINE_NBD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_carmine-nbd")))
}

/// `carmine-osd` for the cluster harness: built here when missing (`cargo nextest run -p
/// carmine-nbd` builds this package only), with the profile of this test binary, so that
/// the tests run from a fresh clone.
pub fn ensure_osd_bin() {
    if std::env::var_os("CARMINE_OSD_BIN").is_some() {
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile dir>/deps/<test>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    if profile_dir.join("carmine-osd").exists() {
        return;
    }
    let profile = match profile_dir.file_name().and_then(OsStr::to_str) {
        Some("debug") | None => "dev".to_string(),
        Some(p) => p.to_string(),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building carmine-osd (profile {profile}) for the test cluster");
    let st = Command::new(cargo)
        .args(["build", "-p", "carmine-osd", "--profile", &profile])
        .env(
            "CARGO_TARGET_DIR",
            profile_dir.parent().expect("the target dir"),
        )
        .status()
        .expect("run cargo build -p carmine-osd");
    assert!(st.success(), "cargo build -p carmine-osd: {st}");
}

/// A test cluster (monitor in this process, `carmine-osd` processes) with one size-1 pool,
/// and a client of it.
pub struct Setup {
    pub rt: tokio::runtime::Runtime,
    pub cluster: Cluster,
    pub client: Arc<Client>,
}

impl Setup {
    /// `shards`: one OSD per entry, with that many shards (see `common::Cluster::start`).
    pub fn start(pool: &str, pg_num: u32, shards: &[usize]) -> Setup {
        ensure_osd_bin();
        let rt = common::runtime();
        let cluster = rt.block_on(Cluster::start(pool, pg_num, shards));
        let client = rt
            .block_on(Client::connect(cluster.config()))
            .expect("the test's client connects");
        Setup {
            rt,
            cluster,
            client: Arc::new(client),
        }
    }

    /// `carmine image create <pool>/<name> --size <size> --object-size <object_size>`, by the
    /// library call the CLI makes.
    pub fn create_image(&self, pool: &str, name: &str, size: u64, object_size: u32) -> Image {
        self.rt
            .block_on(Image::create(
                self.client.clone(),
                pool,
                name,
                size,
                object_size,
            ))
            .unwrap_or_else(|e| panic!("create image {pool}/{name}: {e}"))
    }

    /// A gateway serving `images` (`POOL/NAME`; the first is the default export).
    pub fn gateway(&self, images: &[&str], extra: &[&str]) -> Gateway {
        Gateway::start(&self.cluster.mon.addr, &self.cluster.creds, images, extra)
    }
}

/// A `carmine-nbd` process: SIGTERM on drop, SIGKILL if it has not exited 10 s later.
pub struct Gateway {
    child: Option<Child>,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts `carmine-nbd --image .. --listen 127.0.0.1:0 --mon .. --keyfile .. --plaintext`
    /// plus `extra`, and waits (30 s at most) for its ready line, which names the address it
    /// listens on.
    pub fn start(mon: &str, creds: &Credentials, images: &[&str], extra: &[&str]) -> Gateway {
        let dir = tempfile::tempdir().expect("a temp dir");
        let keyfile = dir.path().join("client.key");
        std::fs::write(&keyfile, creds.to_toml().expect("encode the key file"))
            .expect("write the key file");
        let mut cmd = Command::new(nbd_bin());
        for i in images {
            cmd.args(["--image", i]);
        }
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--mon",
            mon,
            "--plaintext",
            "--keyfile",
        ])
        .arg(&keyfile)
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("CARMINE_TEST_NBD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env_remove("CARMINE_TLS_CA")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", nbd_bin().display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // Drained for the process's whole life: a full pipe must never block it.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("[carmine-nbd] {line}");
                if line.starts_with("carmine-nbd: serving") {
                    let _ = tx.send(line);
                }
            }
        });
        let mut gw = Gateway {
            child: Some(child),
            addr: "127.0.0.1:0".parse().expect("an address"),
            _dir: dir,
        };
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(e) => {
                let status = gw.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                panic!("carmine-nbd printed no ready line ({e:?}; exit status {status:?})")
            }
        };
        // "carmine-nbd: serving N export(s) on ADDR"
        gw.addr = line
            .split_whitespace()
            .last()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address at the end of {line:?}"));
        assert_ne!(
            gw.addr.port(),
            0,
            "the ready line names the bound port: {line:?}"
        );
        gw
    }

    /// `nbd://127.0.0.1:PORT/EXPORT` (the export name is the whole path: `POOL/NAME`).
    pub fn uri(&self, export: &str) -> String {
        format!("nbd://{}/{export}", self.addr)
    }

    /// Still running (not exited, not killed).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// SIGTERM and the exit status (SIGKILL and a panic if it takes over `within`).
    pub fn stop(&mut self, within: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("the gateway runs");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = c.try_wait().expect("try_wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("carmine-nbd did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An external program the tests run, and the Debian package that has it (ci/apt-packages;
/// scripts/setup installs them).
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub name: &'static str,
    pub package: &'static str,
}

pub const QEMU_IMG: Tool = Tool {
    name: "qemu-img",
    package: "qemu-utils",
};
pub const QEMU_IO: Tool = Tool {
    name: "qemu-io",
    package: "qemu-utils",
};
pub const NBDINFO: Tool = Tool {
    name: "nbdinfo",
    package: "libnbd-bin",
};
pub const NBDCOPY: Tool = Tool {
    name: "nbdcopy",
    package: "libnbd-bin",
};
pub const FIO: Tool = Tool {
    name: "fio",
    package: "fio",
};
pub const CMP: Tool = Tool {
    name: "cmp",
    package: "diffutils",
};

impl Tool {
    /// The program's path; a panic naming the package if it is not installed.
    pub fn path(&self) -> PathBuf {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join(self.name))
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "{} is not installed: apt-get install {} (listed in ci/apt-packages; \
                     scripts/setup installs it)",
                    self.name, self.package
                )
            })
    }

    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new(self.path());
        c.args(args);
        c
    }
}

/// A process being run, its stdout and stderr collected by threads; SIGKILL on drop.
pub struct Spawned {
    pub what: String,
    child: Option<Child>,
    out: Option<JoinHandle<Vec<u8>>>,
    err: Option<JoinHandle<Vec<u8>>>,
}

fn collect<R: Read + Send + 'static>(r: Option<R>) -> Option<JoinHandle<Vec<u8>>> {
    r.map(|mut r| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    })
}

impl Spawned {
    /// Spawns `cmd` with stdout and stderr piped and collected (stdin closed).
    pub fn start(mut cmd: Command) -> Spawned {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let out = collect(child.stdout.take());
        let err = collect(child.stderr.take());
        Spawned {
            what,
            child: Some(child),
            out,
            err,
        }
    }

    /// Spawns `cmd` with stdout handed to `on_stdout` (on a thread of its own) instead of
    /// being collected.
    pub fn start_with_stdout(
        mut cmd: Command,
        on_stdout: impl FnOnce(std::process::ChildStdout) + Send + 'static,
    ) -> Spawned {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || on_stdout(stdout));
        let err = collect(child.stderr.take());
        Spawned {
            what,
            child: Some(child),
            out: None,
            err,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Not exited yet.
    pub fn is_running(&mut self) -> bool {
        let c = self.child.as_mut().expect("not waited for");
        c.try_wait().expect("try_wait").is_none()
    }

    /// Waits at most `limit` for the exit; on timeout kills it and panics with its output.
    pub fn wait(mut self, limit: Duration) -> Output {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = self
            .out
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        let stderr = self
            .err
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        match status {
            Some(status) => Output {
                status,
                stdout,
                stderr,
            },
            None => panic!(
                "{} did not finish within {limit:?}\nstdout: {}\nstderr: {}",
                self.what,
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            ),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `cmd` to its end (at most `limit`), whatever its exit status.
pub fn run(cmd: Command, limit: Duration) -> Output {
    Spawned::start(cmd).wait(limit)
}

/// Runs `cmd` and asserts it succeeded; its output is shown when it did not.
pub fn run_ok(cmd: Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let t = Instant::now();
    let out = run(cmd, limit);
    assert!(out.status.success(), "{what} failed: {}", show(&out));
    eprintln!("{what}: ok in {:.1?}", t.elapsed());
    out
}

/// An output for a failure message.
pub fn show(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The seed of a test's random data: `CARMINE_NBD_TEST_SEED` to replay, else from the clock.
/// Printed either way.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("CARMINE_NBD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: seed {seed} (CARMINE_NBD_TEST_SEED={seed} to replay)");
    seed
}

/// splitmix64: fast, seedable, good enough for test data (every byte pattern differs).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes `len` random bytes from `seed` to `path`.
pub fn random_file(path: &Path, len: u64, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create a data file"));
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).expect("write the data file");
        left -= n as u64;
    }
    f.flush().expect("flush the data file");
}

pub const MIB: u64 = 1 << 20;
