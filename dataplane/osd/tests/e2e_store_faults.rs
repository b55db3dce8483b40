//! Failures that reach health, and stores that are not this OSD's (issue 13, part 4), end to
//! end as real processes: a monitor (in this process, the same `carmine_mon::serve` the binary
//! runs) and `carmine-osd run` processes on bdevstore over SPDK aio files, driven by the real
//! `carmine-client`.
//!
//! - a device that starts failing I/O: health goes ERR naming the OSD (`OSD_STORE_FAILED`),
//!   the monitor marks it down and keeps it down, the size-3 pool's PGs go active on the two
//!   others, and client reads and writes go on and read back what was written;
//! - a store of another cluster, and one of another OSD: the OSD exits non-zero before it
//!   boots, naming both owners, and the device's bytes are untouched; the rightful OSD still
//!   starts on it; with `--force-format` the other OSD takes it over (and the first is refused);
//! - a device holding data that is not a store: refused the same way unless
//!   `--force-format`, which formats it.
//!
//! Injection: the failing device is the OSD's aio file truncated to zero under the running OSD
//! (the issue's "file taken away"). SPDK's aio bdev fails every read whose result is shorter
//! than asked (`bdev_aio.c`: `res != len`), and reads past the end of a file return nothing, so
//! the next read of stored data fails: no kernel module (device-mapper is not on these
//! machines), no SPDK RPC server (the OSD runs none) and nothing privileged beyond what the
//! bdevstore tests already need. Writes past the end of a file still succeed (they extend it):
//! the failure is met by the first read, which is what the client's reads cause at once.
//!
//! These tests need root and hugepages (as `ci/test` runs them); their names contain "bdev"
//! (the nextest group of EAL/SPDK tests selects them by that).

#[path = "../../../client/lib/tests/common/mod.rs"]
mod common;
mod common_bdev;
mod common_signal;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use carmine_client::{Client, ClientConfig};
use carmine_proto::v1;
use common::{authed, osd_config, runtime, Mon};
use common_bdev::{bdev_osd_bin, BdevOsd};

fn needs_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root and hugepages: run through ci/test"
    );
}

fn content(i: usize, salt: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| (k as u64 * 131 + i as u64 * 17 + salt as u64 * 101) as u8)
        .collect()
}

async fn pool_create(mon: &Mon, name: &str, pg_num: u32, size: u32, min_size: u32) -> u32 {
    mon.admin()
        .await
        .pool_create(authed(v1::PoolCreateRequest {
            name: name.into(),
            pg_num,
            size,
            min_size,
        }))
        .await
        .unwrap()
        .into_inner()
        .id
}

async fn pg_states(mon: &Mon) -> Vec<v1::PgStat> {
    mon.admin()
        .await
        .pg_list(authed(v1::Empty {}))
        .await
        .unwrap()
        .into_inner()
        .pgs
}

const ACTIVE: u32 = v1::PgStateBit::PgStateActive as u32;
const STALE: u32 = v1::PgStateBit::PgStateStale as u32;

/// Every PG of `pool` reported active (and not stale: by the primary of its acting set in the
/// current map, for that acting set), and none of them with `without` in its acting set.
async fn pgs_active_without(mon: &Mon, pool: u32, without: u32) -> bool {
    let map = mon.map().await;
    let Some(p) = map.pools.get(&pool) else {
        return false;
    };
    let pgs: Vec<v1::PgStat> = pg_states(mon)
        .await
        .into_iter()
        .filter(|s| s.pool == pool)
        .collect();
    pgs.len() == p.pg_num as usize
        && pgs.iter().all(|s| {
            s.state & ACTIVE != 0
                && s.state & STALE == 0
                && !s.acting.contains(&without)
                && carmine_placement::pg_to_osds(&map, p, s.pg) == s.acting
        })
}

fn store_failed_check(h: &v1::HealthReply) -> Option<&v1::HealthCheck> {
    h.checks.iter().find(|c| c.code == "OSD_STORE_FAILED")
}

#[test]
fn bdev_a_failing_device_turns_health_err_and_the_pgs_fail_over() {
    needs_root();
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(120), async {
            let mon = Mon::start();
            let creds = mon.add_key("client.fail").await;
            let mut osds: Vec<BdevOsd> = (0..3)
                .map(|i| BdevOsd::start(&mon, dir.path(), &format!("f{i}"), 64, 1))
                .collect();
            mon.wait_up(3).await;
            let pool = pool_create(&mon, "rep", 8, 3, 2).await;
            let mut cfg = ClientConfig::new(mon.addr.clone(), creds).plaintext();
            cfg.op_timeout = Duration::from_secs(30);
            let client = std::sync::Arc::new(Client::connect(cfg).await.unwrap());
            const N: usize = 48;
            for i in 0..N {
                client
                    .write_full("rep", &format!("a{i}"), &content(i, 0, 6000))
                    .await
                    .unwrap_or_else(|e| panic!("write a{i}: {e}"));
            }
            let h = mon.health().await;
            assert!(store_failed_check(&h).is_none(), "{h:?}");

            // The primary of a0's PG loses its device.
            let victim = client.locate("rep", "a0").unwrap().osd;
            let v = osds.iter().position(|o| o.id == victim).unwrap();
            let t0 = Instant::now();
            eprintln!(
                "truncating osd.{victim}'s device at {:?}",
                std::time::SystemTime::now()
            );
            std::fs::OpenOptions::new()
                .write(true)
                .open(&osds[v].img)
                .unwrap()
                .set_len(0)
                .unwrap();
            // Reads meet the failure at once (while health is watched below); each is
            // answered, by the victim's replacement once the map has it down.
            let reader = {
                let client = client.clone();
                tokio::spawn(async move {
                    let mut first = None;
                    for i in 0..N {
                        let got = client
                            .read("rep", &format!("a{i}"), 0, 1 << 20)
                            .await
                            .unwrap_or_else(|e| panic!("read a{i} after the failure: {e}"));
                        assert!(got == content(i, 0, 6000), "a{i} differs");
                        // a0 was the victim's: served again by its PG's new primary.
                        first.get_or_insert(t0.elapsed());
                    }
                    (first, t0.elapsed())
                })
            };

            // Health: ERR, naming the OSD and the reason; the OSD is down.
            let mut err_at = None;
            let mut active_at = None;
            let mut down_at = None;
            let deadline = t0 + Duration::from_secs(30);
            while err_at.is_none() || active_at.is_none() {
                assert!(
                    Instant::now() < deadline,
                    "no ERR or no failover within 30 s: {:?} {:?}",
                    mon.health().await,
                    pg_states(&mon).await
                );
                let h = mon.health().await;
                if err_at.is_none() {
                    if let Some(c) = store_failed_check(&h) {
                        assert_eq!(h.status, v1::HealthStatus::HealthErr as i32);
                        assert_eq!(c.severity, v1::HealthStatus::HealthErr as i32);
                        let line = c.detail.join("\n");
                        assert!(
                            line.contains(&format!("osd.{victim} ")) && line.contains("failed"),
                            "{line}"
                        );
                        err_at = Some(t0.elapsed());
                        eprintln!("health: {line}");
                    }
                }
                if down_at.is_none() && !mon.map().await.osds[&victim].up {
                    down_at = Some(t0.elapsed());
                }
                if active_at.is_none() && pgs_active_without(&mon, pool, victim).await {
                    active_at = Some(t0.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(!mon.map().await.osds[&victim].up);
            let (first_read, reads_done) = reader.await.unwrap();
            eprintln!(
                "device taken away: health ERR after {:?}, marked down after {:?}, every PG \
                 reported active without osd.{victim} after {:?}; the victim's object a0 read \
                 again after {first_read:?}, all {N} reads done after {reads_done:?}",
                err_at.unwrap(),
                down_at,
                active_at.unwrap()
            );

            // Service goes on: new writes and overwrites, all read back.
            for i in 0..N {
                client
                    .write_full("rep", &format!("b{i}"), &content(i, 1, 3000))
                    .await
                    .unwrap_or_else(|e| panic!("write b{i} after the failure: {e}"));
            }
            for i in (0..N).step_by(3) {
                client
                    .write_full("rep", &format!("a{i}"), &content(i, 2, 5000))
                    .await
                    .unwrap();
            }
            for i in 0..N {
                let a = client
                    .read("rep", &format!("a{i}"), 0, 1 << 20)
                    .await
                    .unwrap();
                let want = if i % 3 == 0 {
                    content(i, 2, 5000)
                } else {
                    content(i, 0, 6000)
                };
                assert!(a == want, "a{i} differs");
                let b = client
                    .read("rep", &format!("b{i}"), 0, 1 << 20)
                    .await
                    .unwrap();
                assert!(b == content(i, 1, 3000), "b{i} differs");
            }

            // The failed OSD keeps running, keeps reporting and stays down: no flap over
            // several heartbeats (500 ms here).
            let epoch = mon.map().await.epoch;
            for _ in 0..15 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let m = mon.map().await;
                assert!(!m.osds[&victim].up, "osd.{victim} came back up");
                assert!(store_failed_check(&mon.health().await).is_some());
            }
            assert_eq!(
                mon.map().await.epoch,
                epoch,
                "no map change while it reports"
            );
            // Its store refuses work, so its clean stop cannot checkpoint: kill it; the others
            // stop cleanly.
            for (i, o) in osds.iter_mut().enumerate() {
                o.stop(i != v);
            }
        })
        .await
        .expect("test time limit");
    });
}

/// `carmine-osd run --config <config>` (plus `extra`) that must exit within `limit`: its exit
/// status and stderr. Killed, then a panic, if it runs on (it must refuse before it serves).
fn run_to_exit(
    config: &Path,
    extra: &[&str],
    limit: Duration,
) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(bdev_osd_bin())
        .args(["run", "--config"])
        .arg(config)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} did not exit within {limit:?}: {}",
                config.display(),
                reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().unwrap())
}

/// The config of a bdevstore OSD `uuid` on the aio file `img`, booting with `mon`.
fn write_config(dir: &Path, name: &str, uuid: &str, mon: &Mon, img: &Path) -> std::path::PathBuf {
    let store = format!(
        r#"[store]
kind = "bdevstore"
bdev = "aio"
path = "{img}"
size_mib = 64
[spdk]
mem_mib = 128
file_prefix = "carmine-e2e-{pid}-{name}"
"#,
        img = img.display(),
        pid = std::process::id(),
    );
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        osd_config(uuid, &format!("host-{name}"), mon, &[0], &store),
    )
    .unwrap();
    config
}

#[test]
fn bdev_a_store_of_another_cluster_or_osd_is_refused_and_left_untouched() {
    needs_root();
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(120), async {
            let mon_a = Mon::start();
            let mon_b = Mon::start();
            let fsid_a = mon_a.map().await.fsid;
            let fsid_b = mon_b.map().await.fsid;
            assert!(!fsid_a.is_empty() && fsid_a != fsid_b, "{fsid_a} {fsid_b}");
            // osd "owner" (uuid bdev-owner) formats its device in cluster A and stops.
            let mut owner = BdevOsd::start(&mon_a, dir.path(), "owner", 64, 1);
            mon_a.wait_up(1).await;
            owner.stop(true);
            let before = std::fs::read(&owner.img).unwrap();

            // The same OSD uuid in cluster B.
            let other_cluster = write_config(dir.path(), "b", "bdev-owner", &mon_b, &owner.img);
            let t = Instant::now();
            let (status, err) = run_to_exit(&other_cluster, &[], Duration::from_secs(30));
            eprintln!("other cluster refused in {:?}: {err}", t.elapsed());
            assert!(!status.success(), "{status}: {err}");
            assert!(
                err.contains(&fsid_a)
                    && err.contains(&fsid_b)
                    && err.contains("belongs to cluster"),
                "{err}"
            );
            // Another OSD uuid in cluster A.
            let other_osd = write_config(dir.path(), "c", "bdev-intruder", &mon_a, &owner.img);
            let (status, err) = run_to_exit(&other_osd, &[], Duration::from_secs(30));
            assert!(!status.success(), "{status}: {err}");
            assert!(
                err.contains("\"bdev-owner\"") && err.contains("\"bdev-intruder\""),
                "{err}"
            );
            // Neither booted, and the device is as it was, byte for byte.
            assert!(mon_b.map().await.osds.is_empty());
            assert!(mon_a.map().await.osd_by_uuid("bdev-intruder").is_none());
            assert!(
                std::fs::read(&owner.img).unwrap() == before,
                "the store was written"
            );

            // The rightful OSD still starts on it, in its own cluster.
            owner.spawn();
            mon_a.wait_up(1).await;
            owner.stop(true);

            // Told to, the other OSD formats it for itself; then the first one is refused.
            let (intruder, ready) = spawn_forced(&other_osd);
            let m = mon_a.map().await;
            assert_eq!(m.osd_by_uuid("bdev-intruder").map(|o| o.id), Some(ready.id));
            common::kill_osd(&mut Some(intruder));
            let owner_config = dir.path().join("owner.toml");
            let (status, err) = run_to_exit(&owner_config, &[], Duration::from_secs(30));
            assert!(!status.success(), "{status}: {err}");
            assert!(err.contains("\"bdev-intruder\""), "{err}");
        })
        .await
        .expect("test time limit");
    });
}

#[test]
fn bdev_a_device_holding_data_is_formatted_only_when_forced() {
    needs_root();
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(120), async {
            let mon = Mon::start();
            let img = dir.path().join("data.img");
            // 64 MiB, of which the first 64 KiB are pseudo-random bytes (another program's).
            let mut head = vec![0u8; 64 << 10];
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            for b in head.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            head[0] = 0; // the first non-zero byte is further in: the error names its offset
            let f = std::fs::File::create(&img).unwrap();
            f.set_len(64 << 20).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&f, &head, 0).unwrap();
            drop(f);
            let before = std::fs::read(&img).unwrap();
            let offset = head.iter().position(|&b| b != 0).unwrap();

            let config = write_config(dir.path(), "d", "bdev-data", &mon, &img);
            let (status, err) = run_to_exit(&config, &[], Duration::from_secs(30));
            assert!(!status.success(), "{status}: {err}");
            assert!(
                err.contains("is not blank")
                    && err.contains(&format!("offset {offset}"))
                    && err.contains("--force-format"),
                "{err}"
            );
            assert!(
                std::fs::read(&img).unwrap() == before,
                "the device was written"
            );
            assert!(mon.map().await.osds.is_empty(), "it booted");

            // Told to: it formats the device for this cluster and serves.
            let (child, ready) = spawn_forced(&config);
            // Killed on drop: a failed assertion below must not leave it running (and holding
            // hugepages).
            let mut child = common::KillOnDrop(Some(child));
            mon.wait_up(1).await;
            let creds = mon.add_key("client.data").await;
            mon.create_pool("one", 4, 1).await;
            let client = Client::connect(ClientConfig::new(mon.addr.clone(), creds).plaintext())
                .await
                .unwrap();
            client.write_full("one", "x", b"formatted").await.unwrap();
            assert_eq!(client.read("one", "x", 0, 64).await.unwrap(), b"formatted");
            assert_eq!(
                ready.id,
                mon.map().await.osd_by_uuid("bdev-data").unwrap().id
            );
            let c = child.0.as_mut().unwrap();
            common_signal::signal(c.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "no clean stop");
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(c.wait().unwrap().success());
            child.0 = None;
            // It holds this OSD's store now: a start without the flag mounts it.
            let (again, _) = common::spawn_osd(&bdev_osd_bin(), &config, Duration::from_secs(60));
            common::kill_osd(&mut Some(again));
        })
        .await
        .expect("test time limit");
    });
}

/// `carmine-osd run --config <config> --force-format`, until its ready line.
fn spawn_forced(config: &Path) -> (std::process::Child, common::Ready) {
    // The shared spawner runs `run --config <config>`: a wrapper script adds the flag.
    let script = config.with_extension("sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec {} \"$@\" --force-format\n",
            bdev_osd_bin().display()
        ),
    )
    .unwrap();
    let mut p = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o755);
    std::fs::set_permissions(&script, p).unwrap();
    common::spawn_osd(&script, config, Duration::from_secs(60))
}
