//! The bdevstore OSD launcher of the OSD crate's end-to-end tests (e2e.rs, e2e_faults.rs,
//! e2e_replication.rs): a `carmine-osd run` on bdevstore over an SPDK aio file (needs root and
//! hugepages, as in CI), and `carmine-osd fsck` and `carmine-osd list-objects` of its image. Process start, ready line and SIGKILL are the shared
//! harness's (`common::spawn_osd`, `common::kill_osd`, also behind its memstore `Osd`).
//!
//! It lives here, not in the shared harness, because it needs what only this crate's tests
//! have: `serde_json` (fsck reports), `libc` (SIGTERM) and `CARGO_BIN_EXE_carmine-osd`.
//! Included as `mod common_bdev;` next to `mod common;` (a directory module, so cargo does not
//! build it as a test target of its own).

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{kill_osd, osd_config, spawn_osd, Mon};

/// The `carmine-osd` under test: this package's, or `CARMINE_OSD_BIN` (as for the memstore
/// OSDs of the harness: e.g. a deliberately broken build, to see a test fail).
pub fn bdev_osd_bin() -> PathBuf {
    std::env::var_os("CARMINE_OSD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_carmine-osd").into())
}

/// The image of the bdevstore OSD `name` started in `dir`.
pub fn bdev_image(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.img"))
}

/// An OSD on bdevstore over an aio file in a test's directory.
pub struct BdevOsd {
    child: Option<Child>,
    config: PathBuf,
    /// The aio file ([`bdev_image`]).
    pub img: PathBuf,
    pub shards: usize,
    /// From the ready line (the same over restarts: the uuid is the same).
    pub id: u32,
    /// Each shard's port, from the last ready line (a restart binds new ones).
    pub ports: Vec<u16>,
}

impl BdevOsd {
    /// Writes `<dir>/<name>.toml` (uuid `bdev-<name>`, host `host-<name>`, `shards` shards, a
    /// `size_mib` image `<dir>/<name>.img`, an SPDK file prefix unique to this process and
    /// name) and starts the OSD.
    pub fn start(mon: &Mon, dir: &Path, name: &str, size_mib: u64, shards: usize) -> BdevOsd {
        let config = dir.join(format!("{name}.toml"));
        let img = bdev_image(dir, name);
        let cores: Vec<usize> = (0..shards).collect();
        let store = format!(
            r#"[store]
kind = "bdevstore"
bdev = "aio"
path = "{img}"
size_mib = {size_mib}
[spdk]
mem_mib = 128
file_prefix = "carmine-e2e-{pid}-{name}"
"#,
            img = img.display(),
            pid = std::process::id(),
        );
        let (uuid, host) = (format!("bdev-{name}"), format!("host-{name}"));
        std::fs::write(&config, osd_config(&uuid, &host, mon, &cores, &store)).unwrap();
        let mut o = BdevOsd {
            child: None,
            config,
            img,
            shards,
            id: 0,
            ports: Vec::new(),
        };
        o.spawn();
        o
    }

    /// Starts the (stopped) OSD again on its image.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the OSD is still running");
        let (child, ready) = spawn_osd(&bdev_osd_bin(), &self.config, Duration::from_secs(60));
        self.child = Some(child);
        self.id = ready.id;
        self.ports = ready.ports;
    }

    /// SIGTERM (clean: the store checkpoints; it must exit 0) or SIGKILL (a crash), then wait.
    pub fn stop(&mut self, clean: bool) {
        if !clean {
            return kill_osd(&mut self.child);
        }
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() >= deadline {
                    kill_osd(&mut Some(c));
                    panic!("OSD did not stop on SIGTERM within 30 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(c.wait().unwrap().success(), "clean stop exits 0");
        }
    }

    /// [`fsck_clean`] of every shard; the OSD must not be running.
    pub fn fsck(&self) -> Vec<serde_json::Value> {
        assert!(self.child.is_none(), "fsck of a running OSD's store");
        fsck_clean(&self.img, self.shards)
    }
}

impl Drop for BdevOsd {
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// `carmine-osd fsck --json` of shards `0..shards` of the aio image `img`: its exit status
/// and every shard's report (JSON), in shard order. Panics only if the check could not run.
pub fn fsck(img: &Path, shards: usize) -> (std::process::ExitStatus, Vec<serde_json::Value>) {
    let mut cmd = Command::new(bdev_osd_bin());
    cmd.args(["fsck", "--json", "--bdev-kind", "aio", "--path"])
        .arg(img);
    for s in 0..shards {
        cmd.args(["--shard", &s.to_string()]);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // SPDK prints its notices to stdout too: the report is the line that parses.
    let reports = stdout
        .lines()
        .find_map(|l| serde_json::from_str::<Vec<serde_json::Value>>(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no JSON report from fsck: {}\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert_eq!(reports.len(), shards, "one report per shard: {stdout}");
    (out.status, reports)
}

/// [`fsck`], which must be clean: exit 0 and every shard's report `clean`. The reports.
pub fn fsck_clean(img: &Path, shards: usize) -> Vec<serde_json::Value> {
    let (status, reports) = fsck(img, shards);
    assert!(
        status.success(),
        "fsck: {status}\n{}",
        serde_json::Value::from(reports.clone())
    );
    for r in &reports {
        assert_eq!(r["clean"], true, "{r}");
    }
    reports
}

/// `carmine-osd list-objects --json` of shards `0..shards` of the aio image `img` (the OSD must
/// be stopped), within `limit` (killed, then a panic, past it): its exit status and the
/// listing, one JSON value per object. Panics if no listing was printed.
pub fn list_objects(
    img: &Path,
    shards: usize,
    limit: Duration,
) -> (std::process::ExitStatus, Vec<serde_json::Value>) {
    let mut cmd = Command::new(bdev_osd_bin());
    cmd.args(["list-objects", "--json", "--bdev-kind", "aio", "--path"])
        .arg(img)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for s in 0..shards {
        cmd.args(["--shard", &s.to_string()]);
    }
    let mut child = cmd.spawn().unwrap();
    // Drained while it runs: a listing of thousands of objects is more than a pipe holds.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = r.read_to_end(&mut b);
            b
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            kill_osd(&mut Some(child));
            panic!("list-objects of {} took more than {limit:?}", img.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&stdout.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&stderr.join().unwrap()).into_owned();
    // SPDK prints its notices to stdout too: the listing is the line that parses.
    let objects = stdout
        .lines()
        .find_map(|l| serde_json::from_str::<Vec<serde_json::Value>>(l).ok())
        .unwrap_or_else(|| panic!("no listing from list-objects: {status}\n{stdout}\n{stderr}"));
    (status, objects)
}
