//! Test support: a real `carmine-mon` process on a free loopback port, killed on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use carmine_proto::v1::{mon_admin_client::MonAdminClient, mon_cluster_client::MonClusterClient};
use tonic::transport::Channel;

pub const TOKEN: &str = "test-admin-token";

/// A running monitor process.
pub struct MonProc {
    child: Child,
    pub addr: String,
}

impl MonProc {
    /// Starts `carmine-mon` on 127.0.0.1:0 with `data` and extra flags; waits for its address.
    pub fn start(data: &Path, extra: &[&str]) -> MonProc {
        let mut args = vec!["--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let (mut proc, rx) = MonProc::spawn(data, &args);
        proc.addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("carmine-mon did not print its address");
        proc
    }

    /// Starts `carmine-mon` with these flags; the receiver gets its address once it listens
    /// (with etcd: once it is elected leader).
    pub fn spawn(data: &Path, args: &[&str]) -> (MonProc, mpsc::Receiver<String>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_carmine-mon"))
            .args(["--admin-token", TOKEN, "--data-dir"])
            .arg(data)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn carmine-mon");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(a) = line.strip_prefix("carmine-mon listening on ") {
                    let _ = tx.send(a.to_string());
                }
            }
        });
        (
            MonProc {
                child,
                addr: String::new(),
            },
            rx,
        )
    }

    /// SIGKILL: a crash, not a clean shutdown.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: asks for a clean shutdown.
    pub fn terminate(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: as in `pause`: a signal to our own unreaped child.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill({pid}, SIGTERM) failed");
    }

    /// Stops (`true`) or continues (`false`) the process with SIGSTOP / SIGCONT.
    pub fn pause(&self, stop: bool) {
        let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) only sends a signal; `pid` is our own child, not yet reaped (we hold
        // its `Child`), so the pid cannot have been reused by another process.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for MonProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

pub async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .expect("url")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect to mon")
}

pub async fn admin(url: &str) -> MonAdminClient<Channel> {
    MonAdminClient::new(channel(url).await)
}

pub async fn cluster(url: &str) -> MonClusterClient<Channel> {
    MonClusterClient::new(channel(url).await)
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

/// Polls `f` every 20 ms until it returns `Some` or `limit` passes.
pub async fn wait_for<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Creates pools `{prefix}{i}` for every i in `range` (8 PGs, size 1), each a new epoch.
pub async fn create_pools(
    a: &mut MonAdminClient<Channel>,
    prefix: &str,
    range: std::ops::Range<u32>,
) {
    for i in range {
        a.pool_create(authed(carmine_proto::v1::PoolCreateRequest {
            name: format!("{prefix}{i}"),
            pg_num: 8,
            size: 1,
            min_size: 1,
        }))
        .await
        .unwrap();
    }
}
