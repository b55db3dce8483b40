//! Peering, recovery and backfill end to end, as real processes: a monitor (in this process)
//! and `carmine-osd run` processes (kernel sockets, memstore: a restarted OSD comes back
//! empty, i.e. wiped, under its old id), driven by the real client.
//!
//! - an OSD killed while clients write: its PGs fail over, keep taking writes, and when it
//!   comes back wiped it is backfilled; every PG goes active+clean, every acknowledged write
//!   reads back, every removed object stays removed, and a scrub of every PG finds its copies
//!   equal;
//! - `osd out` moves an OSD's PGs to the others (backfilled there) and `osd in` brings them
//!   back (the OSD's copies, stale by then, are made current); every acknowledged write reads
//!   back and every PG scrubs clean at each step;
//! - a paused primary whose PGs failed over serves no read once it resumes (its read lease ran
//!   out while it was paused), so no client reads a value older than one it was told was
//!   written;
//! - the split brain of Vitastor's test_splitbrain: the only OSD that had the last writes is
//!   gone and the one that comes back cannot speak for that interval (it was wiped), so the
//!   PG stays incomplete, takes no write, and health is ERR naming it.

#[path = "../../../client/lib/tests/common/mod.rs"]
mod common;
mod common_signal;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use carmine_cli::{Cli, CliError};
use carmine_client::{Client, ConnectOptions, Connection};
use carmine_proto::v1::{self, PgStateBit};
use carmine_wire::{Epoch, Op, OpError, OpRequest, PgId, PoolId};
use clap::Parser;
use common::{authed, runtime, Cluster, Mon, TOKEN};
use common_signal::{signal, wait_stopped};

const ACTIVE: u32 = PgStateBit::PgStateActive as u32;
const CLEAN: u32 = PgStateBit::PgStateClean as u32;
const INCOMPLETE: u32 = PgStateBit::PgStateIncomplete as u32;
const STALE: u32 = PgStateBit::PgStateStale as u32;

fn content(name: &str, round: usize) -> Vec<u8> {
    let seed = name.bytes().map(u64::from).sum::<u64>() + round as u64 * 7919;
    (0..4096u64).map(|k| (k * 131 + seed) as u8).collect()
}

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

async fn pg_states(mon: &Mon) -> Vec<v1::PgStat> {
    mon.admin()
        .await
        .pg_list(authed(v1::Empty {}))
        .await
        .unwrap()
        .into_inner()
        .pgs
}

/// Waits (bounded) until every PG of `pool` is reported, for its acting set in the current
/// map, in a state with all the `want` bits.
///
/// The monitor shows every PG with its current acting set and keeps the last report's state
/// bits, marking it `STALE` when that report was for another acting set or primary (an OSD
/// that just came back, before the PG has peered again). So "reported for the current acting
/// set" is "not stale": comparing the acting sets alone passed at once on the reports from
/// before a restart.
async fn wait_pgs(mon: &Mon, pool: u32, want: u32, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let map = mon.map().await;
        let pgs: Vec<v1::PgStat> = pg_states(mon)
            .await
            .into_iter()
            .filter(|p| p.pool == pool)
            .collect();
        let current = |p: &v1::PgStat| {
            p.state & STALE == 0
                && map
                    .pools
                    .get(&pool)
                    .is_some_and(|pl| carmine_placement::pg_to_osds(&map, pl, p.pg) == p.acting)
        };
        if !pgs.is_empty() && pgs.iter().all(|p| p.state & want == want && current(p)) {
            return;
        }
        if Instant::now() > deadline {
            panic!("PGs not {want:#x} within {within:?}: {pgs:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn mark_down(mon: &Mon, osd: u32) -> u64 {
    mon.admin()
        .await
        .osd_down(authed(v1::OsdIdRequest { id: osd }))
        .await
        .unwrap()
        .into_inner()
        .epoch
}

#[test]
fn a_killed_osd_fails_over_and_comes_back_wiped_to_be_backfilled() {
    runtime().block_on(async {
        let mut cluster = Cluster::start("unused", 8, &[1, 1, 1, 1]).await;
        let pool = cluster.mon.create_pool("rep", 16, 3).await;
        let client = Client::connect(cluster.config()).await.unwrap();
        // The model: name -> Some(round) written last, None removed.
        let mut model: BTreeMap<String, Option<usize>> = BTreeMap::new();
        for i in 0..200 {
            let n = format!("obj-{i}");
            client.write_full("rep", &n, &content(&n, 0)).await.unwrap();
            model.insert(n, Some(0));
        }
        for i in (0..200).step_by(10) {
            let n = format!("obj-{i}");
            client.remove("rep", &n).await.unwrap();
            model.insert(n, None);
        }
        wait_pgs(&cluster.mon, pool, ACTIVE | CLEAN, Duration::from_secs(30)).await;
        // Kill the primary of obj-1's PG.
        let victim = client.locate("rep", "obj-1").unwrap().osd;
        cluster.osd_mut(victim).kill();
        let down = mark_down(&cluster.mon, victim).await;
        client.wait_for_epoch(down, Duration::from_secs(10)).await;
        // Writes go on while it is gone: overwrites, new objects, removes, a rewrite of a
        // removed one.
        let t0 = Instant::now();
        for i in (1..200).step_by(4) {
            let n = format!("obj-{i}");
            client.write_full("rep", &n, &content(&n, 1)).await.unwrap();
            model.insert(n, Some(1));
        }
        let failover = t0.elapsed();
        for i in 200..260 {
            let n = format!("obj-{i}");
            client.write_full("rep", &n, &content(&n, 1)).await.unwrap();
            model.insert(n, Some(1));
        }
        for i in (3..200).step_by(20) {
            let n = format!("obj-{i}");
            client.remove("rep", &n).await.unwrap();
            model.insert(n, None);
        }
        client
            .write_full("rep", "obj-0", &content("obj-0", 2))
            .await
            .unwrap();
        model.insert("obj-0".into(), Some(2));
        eprintln!("first write after the failover took {failover:?}");
        // It comes back with an empty store: backfilled from the others.
        cluster.osd_mut(victim).restart();
        cluster.mon.wait_up(4).await;
        let clean_from = Instant::now();
        wait_pgs(&cluster.mon, pool, ACTIVE | CLEAN, Duration::from_secs(60)).await;
        eprintln!("clean {:?} after the restart", clean_from.elapsed());
        let pushed: u64 = cluster
            .mon
            .osd_perf(victim)
            .await
            .iter()
            .filter(|(k, _)| k.ends_with(".push_applied"))
            .map(|(_, v)| v)
            .sum();
        assert!(pushed > 0, "the wiped OSD received no push");
        // Every acknowledged write reads back; removed objects stay removed.
        for (n, round) in &model {
            match round {
                Some(r) => assert_eq!(
                    client.read("rep", n, 0, 8192).await.unwrap(),
                    content(n, *r),
                    "{n}"
                ),
                None => assert!(
                    matches!(
                        client.read("rep", n, 0, 8192).await,
                        Err(carmine_client::Error::Op(OpError::NotFound))
                    ),
                    "{n} came back"
                ),
            }
        }
        // Every PG's copies are equal (versions, sizes and CRCs).
        for pg in 0..16 {
            let pgid = format!("{pool}.{pg:x}");
            carmine(&cluster.mon, &["pg", "scrub", &pgid])
                .await
                .unwrap_or_else(|e| panic!("scrub of {pgid}: {e}"));
        }
    });
}

#[test]
fn a_pg_whose_last_writer_is_gone_stays_incomplete_and_takes_no_write() {
    runtime().block_on(async {
        let mut cluster = Cluster::start("unused", 8, &[1, 1]).await;
        let pool = cluster.mon.create_pool("sb", 4, 2).await;
        let mut cfg = cluster.config();
        cfg.op_timeout = Duration::from_secs(3);
        let client = Client::connect(cfg).await.unwrap();
        client.write_full("sb", "x", b"one").await.unwrap();
        wait_pgs(&cluster.mon, pool, ACTIVE | CLEAN, Duration::from_secs(30)).await;
        let t = client.locate("sb", "x").unwrap();
        let (a, b) = {
            let map = cluster.mon.map().await;
            let acting = carmine_placement::pg_to_osds(&map, &map.pools[&pool], t.pg);
            (acting[0], acting[1])
        };
        // a goes: b alone takes the next write (acknowledged by b only).
        cluster.osd_mut(a).kill();
        let e = mark_down(&cluster.mon, a).await;
        client.wait_for_epoch(e, Duration::from_secs(10)).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match client.write_full("sb", "x", b"two").await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => eprintln!("write on b alone: {e}"),
                Err(e) => panic!("b never took the write: {e}"),
            }
        }
        // b goes, a comes back without the write (wiped: memstore).
        cluster.osd_mut(b).kill();
        mark_down(&cluster.mon, b).await;
        cluster.osd_mut(a).restart();
        // The PG must not go active: the interval where only b wrote has nobody to speak
        // for it.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let st = pg_states(&cluster.mon)
                .await
                .into_iter()
                .find(|p| p.pool == pool && p.pg == t.pg)
                .unwrap();
            // Until a reports it, the monitor shows b's last report (stale).
            let current = st.acting == [a] && st.state & STALE == 0;
            if current {
                assert_eq!(st.state & ACTIVE, 0, "the PG went active: {st:?}");
            }
            if current && st.state & INCOMPLETE != 0 {
                assert!(!st.blocked_by.is_empty(), "{st:?}");
                break;
            }
            assert!(Instant::now() < deadline, "never incomplete: {st:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            client.write_full("sb", "x", b"three").await.is_err(),
            "a write to an incomplete PG was acknowledged"
        );
        let health = cluster
            .mon
            .admin()
            .await
            .health(authed(v1::Empty {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            health.status,
            v1::HealthStatus::HealthErr as i32,
            "{health:?}"
        );
        assert!(
            health.checks.iter().any(|c| c.code == "PG_INCOMPLETE"),
            "{health:?}"
        );
    });
}

async fn osd_in(mon: &Mon, osd: u32) -> u64 {
    mon.admin()
        .await
        .osd_in(authed(v1::OsdIdRequest { id: osd }))
        .await
        .unwrap()
        .into_inner()
        .epoch
}

async fn scrub_all(mon: &Mon, pool: u32, pg_num: u32) {
    for pg in 0..pg_num {
        let pgid = format!("{pool}.{pg:x}");
        carmine(mon, &["pg", "scrub", &pgid])
            .await
            .unwrap_or_else(|e| panic!("scrub of {pgid}: {e}"));
    }
}

#[test]
fn out_moves_an_osds_pgs_away_and_in_brings_them_back() {
    runtime().block_on(async {
        let cluster = Cluster::start("unused", 8, &[1, 1, 1, 1]).await;
        let pool = cluster.mon.create_pool("mv", 16, 3).await;
        let client = Client::connect(cluster.config()).await.unwrap();
        let mut model: BTreeMap<String, usize> = BTreeMap::new();
        for i in 0..150 {
            let n = format!("m-{i}");
            client.write_full("mv", &n, &content(&n, 0)).await.unwrap();
            model.insert(n, 0);
        }
        wait_pgs(&cluster.mon, pool, ACTIVE | CLEAN, Duration::from_secs(30)).await;
        let moved = client.locate("mv", "m-0").unwrap().osd;
        // Out: its PGs go to the other three, which backfill the one that joins each.
        let e = cluster.mon.osd_out(moved).await;
        client.wait_for_epoch(e, Duration::from_secs(10)).await;
        for i in (0..150).step_by(3) {
            let n = format!("m-{i}");
            client.write_full("mv", &n, &content(&n, 1)).await.unwrap();
            model.insert(n, 1);
        }
        wait_pgs(&cluster.mon, pool, ACTIVE | CLEAN, Duration::from_secs(60)).await;
        let map = cluster.mon.map().await;
        for pg in 0..16 {
            let acting = carmine_placement::pg_to_osds(&map, &map.pools[&pool], pg);
            assert!(
                !acting.contains(&moved),
                "pg {pg} still on osd.{moved}: {acting:?}"
            );
        }
        scrub_all(&cluster.mon, pool, 16).await;
        // In again: its PGs come back to it, its stale copies made current.
        let e = osd_in(&cluster.mon, moved).await;
        client.wait_for_epoch(e, Duration::from_secs(10)).await;
        for i in (1..150).step_by(3) {
            let n = format!("m-{i}");
            client.write_full("mv", &n, &content(&n, 2)).await.unwrap();
            model.insert(n, 2);
        }
        wait_pgs(&cluster.mon, pool, ACTIVE | CLEAN, Duration::from_secs(60)).await;
        assert_eq!(
            client.locate("mv", "m-0").unwrap().osd,
            moved,
            "placement moved back"
        );
        for (n, r) in &model {
            assert_eq!(
                client.read("mv", n, 0, 8192).await.unwrap(),
                content(n, *r),
                "{n}"
            );
        }
        scrub_all(&cluster.mon, pool, 16).await;
    });
}

#[test]
fn a_paused_primary_serves_no_stale_read_after_its_pgs_failed_over() {
    runtime().block_on(async {
        let mut cluster = Cluster::start("unused", 8, &[1, 1, 1]).await;
        let pool = cluster.mon.create_pool("lease", 8, 3).await;
        let client = Client::connect(cluster.config()).await.unwrap();
        client.write_full("lease", "x", b"old").await.unwrap();
        wait_pgs(&cluster.mon, pool, ACTIVE | CLEAN, Duration::from_secs(30)).await;
        let t = client.locate("lease", "x").unwrap();
        let victim = t.osd;
        // A connection to the primary, opened while it runs.
        let opts = ConnectOptions::new(cluster.creds.id.clone(), cluster.creds.data_path_key());
        let conn = Connection::connect(t.addr, &opts).await.unwrap();
        let epoch = client.epoch();
        let pid = cluster.osd_mut(victim).pid();
        signal(pid, libc::SIGSTOP);
        wait_stopped(pid);
        // It is marked down; a new primary takes a new value (acknowledged).
        let e = mark_down(&cluster.mon, victim).await;
        client.wait_for_epoch(e, Duration::from_secs(10)).await;
        client.write_full("lease", "x", b"new").await.unwrap();
        // The old primary resumes and is asked at once, before its map can catch up.
        signal(pid, libc::SIGCONT);
        let req = OpRequest {
            pool: PoolId(u64::from(t.pool)),
            pg: PgId(t.pg),
            epoch: Epoch(epoch),
            op: Op::Read {
                object: "x",
                offset: 0,
                len: 16,
            },
        };
        match conn.call_as(4242, &req).await {
            Err(carmine_client::ClientError::Op(OpError::Again | OpError::StaleMap { .. })) => {}
            Ok(r) => panic!("the resumed ex-primary served a read: {r:?}"),
            Err(e) => panic!("unexpected answer: {e}"),
        }
        let refused: u64 = cluster
            .mon
            .osd_perf(victim)
            .await
            .iter()
            .filter(|(k, _)| k.ends_with(".lease_refused") || k.ends_with(".stale_map"))
            .map(|(_, v)| v)
            .sum();
        assert!(refused > 0, "neither the lease nor the map refused it");
        assert_eq!(client.read("lease", "x", 0, 16).await.unwrap(), b"new");
    });
}
