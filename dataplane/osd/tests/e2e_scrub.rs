//! Scrub end to end, as real processes: a monitor (in this process, the same
//! `carmine_mon::serve` the binary runs), three `carmine-osd run` processes on bdevstore over
//! aio files, the real client, and `carmine pg scrub` / `pg ls` (the CLI's own `run`, in this
//! process, as the binary calls it).
//!
//! A pool of size 3 keeps every object on the three OSDs. One replica is stopped (SIGTERM: its
//! store checkpoints), one byte of one object's data is flipped in its image file, and it is
//! started again. The scrub of that object's PG must name the object and the replica (its
//! store's checksum catches the flip), exit with 6, and the monitor's health must show
//! `PG_INCONSISTENT` naming it; a PG without damage scrubs clean.

#[path = "../../../client/lib/tests/common/mod.rs"]
mod common;
mod common_bdev;

use std::time::Duration;

use carmine_cli::{Cli, CliError};
use carmine_client::Client;
use carmine_placement::pg_to_osds;
use clap::Parser;
use common::{runtime, Mon, TOKEN};
use common_bdev::BdevOsd;

/// The first bytes of an object's payload: unique to it, so its data can be found in an
/// image file.
fn marker(name: &str) -> Vec<u8> {
    format!("<scrub-e2e marker of {name}>").into_bytes()
}

/// An object's payload: its marker, then bytes that depend on the name.
fn payload(name: &str, len: usize) -> Vec<u8> {
    let seed = name.bytes().map(u64::from).sum::<u64>();
    let mut p = marker(name);
    p.extend((p.len()..len).map(|k| (k as u64 * 7 + seed) as u8));
    p
}

/// `carmine <args>` against `mon` with the admin token and the OSDs' admin token.
async fn carmine(mon: &Mon, args: &[&str]) -> Result<String, CliError> {
    let mut all = vec![
        "carmine",
        "--plaintext",
        "--mon",
        &mon.addr,
        "--token",
        TOKEN,
        "--format",
        "plain",
    ];
    all.extend_from_slice(args);
    carmine_cli::run(Cli::parse_from(all)).await
}

/// Flips one bit in every copy of `marker` in the file at `path` (a log-structured store may
/// hold stale copies of old data too: the live one is among them). Returns how many there
/// were.
fn flip_everywhere(path: &std::path::Path, marker: &[u8]) -> usize {
    let mut img = std::fs::read(path).unwrap();
    let mut at = Vec::new();
    let mut i = 0;
    while let Some(p) = img[i..].windows(marker.len()).position(|w| w == marker) {
        at.push(i + p);
        i += p + marker.len();
    }
    for &p in &at {
        img[p + 3] ^= 0x04;
    }
    std::fs::write(path, &img).unwrap();
    at.len()
}

#[test]
fn bdev_scrub_finds_a_byte_flipped_in_one_replicas_store() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root and hugepages: run through ci/test"
    );
    const OBJECTS: usize = 24;
    const LEN: usize = 3 * 4096 + 123;
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(240), async {
            let mon = Mon::start();
            let creds = mon.add_key("client.scrub").await;
            let mut osds: Vec<BdevOsd> = (0..3)
                .map(|i| BdevOsd::start(&mon, dir.path(), &format!("s{i}"), 128, 1))
                .collect();
            mon.wait_up(3).await;
            mon.create_pool("rep", 8, 3).await;
            let mut cfg = carmine_client::ClientConfig::new(mon.addr.clone(), creds).plaintext();
            cfg.op_timeout = Duration::from_secs(30);
            let client = Client::connect(cfg).await.unwrap();
            let names: Vec<String> = (0..OBJECTS).map(|i| format!("obj{i:02}")).collect();
            for n in &names {
                client.write_full("rep", n, &payload(n, LEN)).await.unwrap();
            }
            let victim = &names[7];
            let map = mon.map().await;
            let pool = map.pool_by_name("rep").unwrap().clone();
            let pg = client.locate("rep", victim).unwrap().pg;
            let acting = pg_to_osds(&map, &pool, pg);
            assert_eq!(acting.len(), 3, "{acting:?}");
            let replica = acting[2];
            let pgid = format!("{}.{pg:x}", pool.id);
            // A PG with objects and no damage, for the clean scrub.
            let (clean_pg, clean_count) = (0..pool.pg_num)
                .filter(|&p| p != pg)
                .map(|p| {
                    let n = names
                        .iter()
                        .filter(|n| client.locate("rep", n).unwrap().pg == p)
                        .count();
                    (p, n)
                })
                .max_by_key(|&(_, n)| n)
                .unwrap();
            assert!(clean_count > 0);
            drop(client);

            // Before: the PG is consistent.
            let out = carmine(&mon, &["pg", "scrub", &pgid])
                .await
                .unwrap_or_else(|e| panic!("scrub before the flip: {e}"));
            assert!(out.contains(", consistent"), "{out}");

            // Stop the replica cleanly, flip a byte of the victim's data in its image, start it.
            let r = osds.iter_mut().find(|o| o.id == replica).unwrap();
            r.stop(true);
            let flipped = flip_everywhere(&r.img, &marker(victim));
            assert!(
                flipped >= 1,
                "the victim's data is not in {}",
                r.img.display()
            );
            r.spawn();
            mon.wait_up(3).await;
            let epoch = mon.map().await.epoch;
            let ids: Vec<u32> = osds.iter().map(|o| o.id).collect();
            mon.wait_osds_at(&ids, epoch).await;

            // The scrub names the object and the replica; the command fails with 6.
            let err = carmine(&mon, &["pg", "scrub", &pgid])
                .await
                .expect_err("the scrub must find the flipped byte");
            assert_eq!(err.exit_code(), 6, "{err}");
            let out = err.stdout().unwrap_or_default().to_string();
            assert!(out.contains("1 inconsistent"), "{out}");
            assert!(
                out.contains(&format!(
                    "  {victim} (authoritative: osd.{}, osd.{})",
                    acting[0], acting[1]
                )),
                "{out}"
            );
            assert!(
                out.contains(&format!("    osd.{replica}: read error: checksum mismatch")),
                "{out}"
            );

            // Health: an error naming the PG and the object (from the primary's heartbeat).
            let mut health = mon.health().await;
            for _ in 0..100 {
                if health.checks.iter().any(|c| c.code == "PG_INCONSISTENT") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                health = mon.health().await;
            }
            let check = health
                .checks
                .iter()
                .find(|c| c.code == "PG_INCONSISTENT")
                .unwrap_or_else(|| panic!("no PG_INCONSISTENT: {health:?}"));
            assert_eq!(
                health.status,
                carmine_proto::v1::HealthStatus::HealthErr as i32
            );
            assert!(
                check
                    .detail
                    .iter()
                    .any(|d| d
                        .starts_with(&format!("pg {pgid} is inconsistent: 1 objects ({victim})"))),
                "{check:?}"
            );
            let ls = carmine(&mon, &["pg", "ls", "--pool", "rep"]).await.unwrap();
            let line = ls
                .lines()
                .find(|l| l.starts_with(&format!("{pgid} ")))
                .unwrap();
            assert!(line.contains("active+clean+inconsistent"), "{ls}");
            assert!(line.ends_with(victim.as_str()), "{ls}");

            // A PG without damage scrubs clean, every object of it seen.
            let clean = format!("{}.{clean_pg:x}", pool.id);
            let out = carmine(&mon, &["pg", "scrub", &clean])
                .await
                .unwrap_or_else(|e| panic!("scrub of {clean}: {e}"));
            assert!(
                out.ends_with(&format!("{clean_count} objects, consistent\n")),
                "{out}"
            );

            for o in &mut osds {
                o.stop(true);
            }
        })
        .await
        .expect("test time limit");
    });
}
