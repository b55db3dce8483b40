//! The processes a thrash run starts: one `carmine-mon` and `carmine-osd run` daemons in the CI
//! mode (kernel sockets on 127.0.0.1 with kernel-chosen ports, bdevstore on an SPDK aio bdev
//! over a file, adaptive idle with a short spin so that several OSDs share two cores).
//!
//! Each process writes stdout and stderr to one log file in the run's directory (appended over
//! restarts, so a panic of any incarnation stays there for the final grep). Readiness is read
//! from the log: `carmine-mon listening on <addr>` and
//! `carmine-osd: ready osd=<id> ... ports=<p,..> admin=<addr>`.
//!
//! Invariants:
//! - Every child gets `PR_SET_PDEATHSIG = SIGKILL`: if this process dies (even by SIGKILL), the
//!   daemons die with it. The binary runs a current-thread runtime, so the thread that spawned
//!   them is the main thread and lives as long as the process.
//! - An [`Osd`] keeps its config (uuid, host, image path, SPDK file prefix) over restarts, so a
//!   restarted or wiped OSD comes back with the same id; a wipe deletes the image, which the
//!   OSD then creates and formats (a blank bdev is formatted, a formatted one mounted).
//! - Signals go only to the pids of children this process started and has not reaped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// Token of the monitor's admin API and of every OSD's admin service in a thrash cluster.
pub const ADMIN_TOKEN: &str = "thrash-admin-token";
/// Hugetlbfs mount of `hugepages/hugepages.sh`.
const HUGE_MNT: &str = "/dev/hugepages";

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} did not become ready within {secs} s (log {log}): {tail}")]
    NotReady {
        what: String,
        secs: u64,
        log: PathBuf,
        tail: String,
    },
    #[error("{what} exited before it was ready ({status}; log {log}): {tail}")]
    Exited {
        what: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("bad ready line {0:?}")]
    ReadyLine(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProcError {
    let what = what.into();
    move |source| ProcError::Io { what, source }
}

/// Where the daemons' binaries are.
#[derive(Debug, Clone)]
pub struct Bins {
    pub mon: PathBuf,
    pub osd: PathBuf,
}

/// Starts `cmd` with stdout and stderr appended to `log`, dying with this process.
fn spawn_logged(mut cmd: Command, log: &Path) -> Result<(Child, u64), ProcError> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io(format!("open {}", log.display())))?;
    let start = f
        .metadata()
        .map_err(io(format!("stat {}", log.display())))?
        .len();
    let f2 = f.try_clone().map_err(io("dup log fd"))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(f))
        .stderr(Stdio::from(f2))
        .kill_on_drop(true);
    // SAFETY: prctl(2) is async-signal-safe and touches only the forked child's own state.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(io(format!("spawn {:?}", cmd.as_std().get_program())))?;
    Ok((child, start))
}

/// The last lines of `log` (for error messages).
pub fn tail(log: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join(" | ")
}

/// Waits for a line starting with `prefix` written to `log` after byte `from`.
async fn wait_line(
    child: &mut Child,
    log: &Path,
    from: u64,
    prefix: &str,
    what: &str,
    within: Duration,
) -> Result<String, ProcError> {
    let deadline = Instant::now() + within;
    loop {
        let bytes = std::fs::read(log).map_err(io(format!("read {}", log.display())))?;
        let new = bytes.get(from as usize..).unwrap_or(&[]);
        if let Some(l) = String::from_utf8_lossy(new)
            .lines()
            .find(|l| l.starts_with(prefix))
        {
            return Ok(l.to_string());
        }
        if let Some(status) = child.try_wait().map_err(io("wait"))? {
            return Err(ProcError::Exited {
                what: what.into(),
                status: status.to_string(),
                log: log.into(),
                tail: tail(log, 8),
            });
        }
        if Instant::now() >= deadline {
            return Err(ProcError::NotReady {
                what: what.into(),
                secs: within.as_secs(),
                log: log.into(),
                tail: tail(log, 8),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child we started and have not reaped (so not reused).
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Whether every thread of `pid` is in state T (stopped): SIGSTOP returns before the group
/// stop has reached every thread of a busy process.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            return false;
        };
        // "tid (comm) S ...": the state follows the last ')' (comm may contain one).
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next());
        if state != Some("T") {
            return false;
        }
        any = true;
    }
    any
}

/// SIGTERM, then SIGKILL after `grace`; waits for the exit. Whether it stopped on SIGTERM.
async fn terminate(child: &mut Child, grace: Duration) -> bool {
    if let Some(pid) = child.id() {
        signal(pid, libc::SIGCONT);
        signal(pid, libc::SIGTERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(_) => true,
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            false
        }
    }
}

/// A `carmine-mon` process.
pub struct Mon {
    child: Child,
    pub addr: String,
    pub log: PathBuf,
}

impl Mon {
    /// Starts a monitor with its store in `dir/mon` on a kernel-chosen loopback port.
    /// `down_grace_ms`: an OSD not heard from for this long is marked down.
    pub async fn start(
        bins: &Bins,
        dir: &Path,
        heartbeat_ms: u64,
        down_grace_ms: u64,
    ) -> Result<Mon, ProcError> {
        let data = dir.join("mon");
        std::fs::create_dir_all(&data).map_err(io(format!("mkdir {}", data.display())))?;
        let log = dir.join("mon.log");
        let mut cmd = Command::new(&bins.mon);
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data)
            .arg("--heartbeat-ms")
            .arg(heartbeat_ms.to_string())
            .arg("--down-grace-ms")
            .arg(down_grace_ms.to_string())
            // A failure test of the data and peering logic: no TLS (see admin.rs).
            .arg("--plaintext")
            // The token through the environment, not the command line.
            .env("CARMINE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn");
        let (mut child, from) = spawn_logged(cmd, &log)?;
        let line = wait_line(
            &mut child,
            &log,
            from,
            "carmine-mon listening on ",
            "carmine-mon",
            Duration::from_secs(30),
        )
        .await?;
        let addr = line
            .trim_start_matches("carmine-mon listening on ")
            .trim()
            .to_string();
        Ok(Mon { child, addr, log })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGTERM (SIGKILL after 10 s).
    pub async fn stop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(10)).await;
    }
}

/// The state of an OSD process as the nemesis left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OsdState {
    Running,
    /// SIGSTOPped (every thread in state T).
    Paused,
    /// Not running (killed, stopped, or not started yet).
    Down,
}

/// What an OSD's ready line says.
#[derive(Debug, Clone, Default)]
pub struct Ready {
    pub id: u32,
    pub ports: Vec<u16>,
    pub admin: String,
}

fn parse_ready(line: &str) -> Result<Ready, ProcError> {
    let mut r = Ready::default();
    let mut have_id = false;
    for f in line.split_whitespace() {
        if let Some(v) = f.strip_prefix("osd=") {
            r.id = v
                .parse()
                .map_err(|_| ProcError::ReadyLine(line.to_string()))?;
            have_id = true;
        } else if let Some(v) = f.strip_prefix("ports=") {
            r.ports = v
                .split(',')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|_| ProcError::ReadyLine(line.to_string()))?;
        } else if let Some(v) = f.strip_prefix("admin=") {
            r.admin = v.to_string();
        }
    }
    if !have_id || r.ports.is_empty() || r.admin.is_empty() {
        return Err(ProcError::ReadyLine(line.to_string()));
    }
    Ok(r)
}

/// One `carmine-osd run` daemon (its process may be down, paused or running).
pub struct Osd {
    /// Index in the cluster (`osd<i>` files), not the monitor's id.
    pub index: usize,
    pub config: PathBuf,
    pub img: PathBuf,
    pub log: PathBuf,
    file_prefix: String,
    child: Option<Child>,
    pub state: OsdState,
    /// From the last ready line.
    pub ready: Ready,
    /// Incarnations started.
    pub starts: u32,
}

impl Osd {
    /// The uuid of OSD `index` (its key file, from `osd new`, is `osd<index>.key`).
    pub fn uuid(index: usize) -> String {
        format!("thrash-osd{index}")
    }

    /// Writes the config of OSD `index` (files in `dir`) without starting it. `tag` makes its
    /// SPDK file prefix unique on the machine; uuid and host depend on `index` only, so that
    /// placement, and with it the nemesis' choice of targets, is the same in every run of a
    /// seed. `core`: the core its one shard prefers (not pinned).
    pub fn new(
        dir: &Path,
        tag: &str,
        index: usize,
        mon: &str,
        core: usize,
        img_mib: u64,
        mem_mib: u32,
    ) -> Result<Osd, ProcError> {
        let config = dir.join(format!("osd{index}.toml"));
        let keyfile = dir.join(format!("osd{index}.key"));
        let uuid = Osd::uuid(index);
        let img = dir.join(format!("osd{index}.img"));
        let log = dir.join(format!("osd{index}.log"));
        let file_prefix = format!("{tag}-osd{index}");
        let text = format!(
            r#"# Generated by carmine-thrash for osd{index}.
[osd]
uuid = "{uuid}"
host = "thrash-host{index}"
[mon]
addr = "{mon}"
[admin]
listen = "127.0.0.1:0"
[auth]
keyfile = "{keyfile}"
[tls]
plaintext = true
[reactor]
cores = [{core}]
idle = "adaptive"
pin = false
# Several OSDs share two cores: spin a little, then sleep (scripts/cluster uses the same).
spin = 64
[net]
backend = "kernel"
ip = "127.0.0.1"
base_port = 0
[store]
kind = "bdevstore"
bdev = "aio"
path = "{img}"
size_mib = {img_mib}
[spdk]
mem_mib = {mem_mib}
file_prefix = "{file_prefix}"
"#,
            img = img.display(),
            keyfile = keyfile.display(),
        );
        std::fs::write(&config, text).map_err(io(format!("write {}", config.display())))?;
        Ok(Osd {
            index,
            config,
            img,
            log,
            file_prefix,
            child: None,
            state: OsdState::Down,
            ready: Ready::default(),
            starts: 0,
        })
    }

    /// Starts the daemon on its image and waits for its ready line.
    pub async fn start(&mut self, bins: &Bins) -> Result<(), ProcError> {
        assert!(self.child.is_none(), "osd{} is still running", self.index);
        let mut cmd = Command::new(&bins.osd);
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "warn");
        let (mut child, from) = spawn_logged(cmd, &self.log)?;
        self.starts += 1;
        let what = format!("osd{} (start {})", self.index, self.starts);
        let line = match wait_line(
            &mut child,
            &self.log,
            from,
            "carmine-osd: ready",
            &what,
            Duration::from_secs(90),
        )
        .await
        {
            Ok(l) => l,
            Err(e) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(e);
            }
        };
        self.ready = parse_ready(&line)?;
        self.child = Some(child);
        self.state = OsdState::Running;
        Ok(())
    }

    /// The process id while it runs (or is paused).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// SIGKILL (a crash) and reap.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
        self.state = OsdState::Down;
    }

    /// SIGTERM (a clean stop: the store checkpoints), SIGKILL after `grace`. Whether it stopped
    /// cleanly.
    pub async fn terminate(&mut self, grace: Duration) -> bool {
        let clean = match self.child.take() {
            Some(mut c) => terminate(&mut c, grace).await,
            None => true,
        };
        self.state = OsdState::Down;
        clean
    }

    /// SIGSTOP, then waits (up to 5 s) until every thread is stopped. Whether they all were.
    pub async fn pause(&mut self) -> bool {
        let Some(pid) = self.pid() else { return false };
        signal(pid, libc::SIGSTOP);
        self.state = OsdState::Paused;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if all_threads_stopped(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGCONT);
            self.state = OsdState::Running;
        }
    }

    /// Deletes the image (the OSD must be down): the next start formats a blank one.
    pub fn wipe(&mut self) -> Result<(), ProcError> {
        assert!(self.child.is_none(), "wipe of a running osd{}", self.index);
        match std::fs::remove_file(&self.img) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ProcError::Io {
                what: format!("remove {}", self.img.display()),
                source: e,
            }),
        }
    }

    /// Removes what a killed DPDK process leaves behind: its hugepage files (they hold their
    /// pages until removed) and its runtime dir.
    pub fn remove_hugepage_files(&self) {
        if let Ok(rd) = std::fs::read_dir(HUGE_MNT) {
            let prefix = format!("{}map_", self.file_prefix);
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{}", self.file_prefix));
    }
}

impl Drop for Osd {
    /// A run that ends early (an error, Ctrl-C) still leaves no daemon and no hugepage file.
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Some(pid) = c.id() {
                signal(pid, libc::SIGCONT);
            }
            let _ = c.start_kill();
        }
        self.remove_hugepage_files();
    }
}

/// Lines of `log` that show a panic.
pub fn panics_in(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("panicked at"))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_are_found_in_logs() {
        let dir = std::env::temp_dir().join(format!("thrash-panics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("osd0.log");
        std::fs::write(
            &log,
            "carmine-osd: ready osd=0\n\
             thread 'carmine-shard-0' panicked at dataplane/osd/src/pg.rs:10:5:\nboom\n",
        )
        .unwrap();
        let p = panics_in(&log);
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("pg.rs:10:5"));
        assert!(panics_in(&dir.join("absent.log")).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ready_line_parses_and_bad_ones_are_refused() {
        let r = parse_ready(
            "carmine-osd: ready osd=3 shards=1 addr=127.0.0.1 ports=4242,4243 admin=127.0.0.1:555",
        )
        .unwrap();
        assert_eq!(
            (r.id, r.ports, r.admin.as_str()),
            (3, vec![4242, 4243], "127.0.0.1:555")
        );
        assert!(parse_ready("carmine-osd: ready osd=x ports=1 admin=a").is_err());
        assert!(parse_ready("carmine-osd: ready osd=1 admin=a").is_err());
    }
}
