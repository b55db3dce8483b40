//! Scrub through the whole control plane: `carmine pg scrub` and `carmine pg ls` as real
//! processes, a monitor served in this test process, and three OSD agents hosted here (as an
//! OSD hosts them) whose PG digests come from a table the test edits, standing in for what
//! the shards read from their stores. The agents talk to each other's admin services (the
//! primary gathers the replicas' digests) and report to the monitor in their heartbeats.
//! The shard side (digests from a real store, a byte flipped in a bdevstore image) is tested
//! in the OSD crate.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use carmine_agent::scrub::{DigestRequest, ObjectDigest, ObjectVersion, PgDigests, PgId};
use carmine_agent::{Agent, AgentConfig, MemConfig, ScrubSetup, SharedKeyring, Stats};
use carmine_placement::{pg_to_osds, ClusterMap};
use carmine_proto::v1;
use serde_json::Value;

mod test_mon;
use test_mon::TestMon;

const TOKEN: &str = "scrub-test-token";

/// The test's monitor (heartbeats every 100 ms).
fn start_mon(dir: &Path) -> TestMon {
    TestMon::start(TOKEN, dir, &["--heartbeat-ms", "100"])
}

/// What one OSD's shards would read from its store: PG -> digest. Answers at once.
#[derive(Default)]
struct Table {
    pgs: Mutex<BTreeMap<PgId, Vec<ObjectDigest>>>,
    /// Answered once instead of `pgs` (a write that raced the scrub's first pass).
    once: Mutex<Option<(PgId, Vec<ObjectDigest>)>>,
}

impl PgDigests for Table {
    fn submit(&self, req: DigestRequest) -> Result<(), DigestRequest> {
        let mut once = self.once.lock().unwrap();
        let all = match once.take() {
            Some((pg, d)) if pg == req.pg => d,
            other => {
                *once = other;
                self.pgs
                    .lock()
                    .unwrap()
                    .get(&req.pg)
                    .cloned()
                    .unwrap_or_default()
            }
        };
        let answer = all
            .into_iter()
            .filter(|d| req.objects.is_empty() || req.objects.contains(&d.name))
            .collect();
        let _ = req.reply.send(Ok(answer));
        Ok(())
    }
}

struct NoStats;

impl Stats for NoStats {
    fn counters(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
}

fn start_agent(mon: &TestMon, i: usize, table: Arc<Table>, interval: Option<Duration>) -> Agent {
    Agent::start_with_scrub(
        AgentConfig {
            mon_addr: mon.addr.clone(),
            uuid: format!("uuid-scrub-{i}"),
            host: format!("host{i}"),
            public_addr: "127.0.0.1".into(),
            cluster_addr: "127.0.0.1".into(),
            shard_ports: vec![6800],
            weight: 1.0,
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: None,
            credential: Some(test_mon::osd_credential(
                &mon.addr,
                TOKEN,
                &format!("uuid-scrub-{i}"),
            )),
            client_tls: carmine_proto::tls::ClientTls::Plaintext,
            admin_tls: carmine_proto::tls::ServerTls::Plaintext,
        },
        Vec::new(),
        Arc::new(NoStats),
        Arc::new(MemConfig::default()),
        Arc::new(SharedKeyring::new()),
        Some(ScrubSetup {
            digests: table,
            interval,
        }),
    )
    .unwrap()
}

fn carmine(mon: &TestMon, args: &[&str]) -> Output {
    let mut all = vec!["--mon", &mon.addr, "--token", TOKEN];
    all.extend_from_slice(args);
    Command::new(env!("CARGO_BIN_EXE_carmine"))
        .args(&all)
        .env_remove("CARMINE_MON")
        .env_remove("CARMINE_TOKEN")
        .env_remove("CARMINE_CONFIG")
        .env_remove("CARMINE_TLS_CA")
        .env("CARMINE_PLAINTEXT", "1")
        .env("XDG_CONFIG_HOME", "/nonexistent-carmine-test")
        .output()
        .unwrap()
}

fn text(o: &Output) -> (Option<i32>, String, String) {
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn obj(name: &str, seq: u64, crc: u32) -> ObjectDigest {
    ObjectDigest {
        name: name.as_bytes().to_vec(),
        version: Some(ObjectVersion { epoch: 4, seq }),
        size: 4096,
        crc32c: Ok(crc),
    }
}

fn map(mon: &TestMon) -> ClusterMap {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = v1::mon_admin_client::MonAdminClient::connect(format!("http://{}", mon.addr))
            .await
            .unwrap();
        let mut r = tonic::Request::new(v1::GetMapRequest { epoch: 0 });
        r.metadata_mut().insert(
            carmine_proto::AUTH_HEADER,
            carmine_proto::bearer(TOKEN).unwrap(),
        );
        c.get_map(r).await.unwrap().into_inner().into()
    })
}

/// Polls `carmine health detail` until `pred` holds for its output.
fn health_until(mon: &TestMon, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let (_, out, _) = text(&carmine(mon, &["health", "detail"]));
        if pred(&out) {
            return out;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "health never showed {what}:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ScrubPg` sent straight to an OSD's admin service.
fn scrub_at(agent: &Agent, pg: PgId) -> Result<v1::ScrubPgReply, tonic::Status> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c =
            v1::osd_admin_client::OsdAdminClient::connect(format!("http://{}", agent.admin_addr()))
                .await
                .unwrap();
        let mut r = tonic::Request::new(v1::ScrubPgRequest {
            pool: pg.pool,
            pg: pg.pg,
        });
        r.metadata_mut().insert(
            carmine_proto::AUTH_HEADER,
            carmine_proto::auth::admin_token_osd_bearer(TOKEN).unwrap(),
        );
        c.scrub_pg(r).await.map(|r| r.into_inner())
    })
}

/// A monitor, three agents on three hosts (background scrub every `interval`) and a pool
/// "rbd" (id 0) of size 3 with 8 PGs, every OSD holding objects a, b, c in every PG.
struct Cluster {
    mon: TestMon,
    agents: Vec<Agent>,
    tables: Vec<Arc<Table>>,
    ids: Vec<u32>,
    map: ClusterMap,
    pool: carmine_placement::Pool,
    _data: tempfile::TempDir,
}

impl Cluster {
    fn start(interval: Option<Duration>) -> Cluster {
        let data = tempfile::tempdir().unwrap();
        let mon = start_mon(data.path());
        let tables: Vec<Arc<Table>> = (0..3).map(|_| Arc::new(Table::default())).collect();
        // The same three objects in every PG, before the pool exists (so no scrub sees less).
        for t in &tables {
            let mut pgs = t.pgs.lock().unwrap();
            for pg in 0..8 {
                let pg = PgId { pool: 0, pg };
                pgs.insert(pg, vec![obj("a", 1, 11), obj("b", 2, 22), obj("c", 3, 33)]);
            }
        }
        let agents: Vec<Agent> = (0..3)
            .map(|i| start_agent(&mon, i, tables[i].clone(), interval))
            .collect();
        let start = Instant::now();
        let ids: Vec<u32> = agents
            .iter()
            .map(|a| loop {
                if let Some(id) = a.status().osd_id() {
                    break id;
                }
                assert!(start.elapsed() < Duration::from_secs(15), "never booted");
                std::thread::sleep(Duration::from_millis(20));
            })
            .collect();
        let (code, out, err) = text(&carmine(
            &mon,
            &["pool", "create", "rbd", "--pg-num", "8", "--size", "3"],
        ));
        assert_eq!(code, Some(0), "{out}{err}");
        let map = map(&mon);
        let pool = map.pool_by_name("rbd").unwrap().clone();
        assert_eq!(pool.id, 0, "the first pool");
        // Every agent must have the pool's map (a scrub needs the acting set).
        let start = Instant::now();
        while agents.iter().any(|a| a.status().map_epoch() < map.epoch) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "map not delivered"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Cluster {
            mon,
            agents,
            tables,
            ids,
            map,
            pool,
            _data: data,
        }
    }

    fn agent_of(&self, id: u32) -> &Agent {
        &self.agents[self.ids.iter().position(|&x| x == id).unwrap()]
    }

    fn table_of(&self, id: u32) -> &Table {
        &self.tables[self.ids.iter().position(|&x| x == id).unwrap()]
    }

    fn set(&self, osd: u32, pg: PgId, f: impl FnOnce(&mut Vec<ObjectDigest>)) {
        f(self.table_of(osd).pgs.lock().unwrap().get_mut(&pg).unwrap())
    }
}

#[test]
fn scrub_names_the_replica_that_differs_in_health_and_pg_ls_until_a_clean_scrub() {
    // Background scrub every 2 s: it must find what the test breaks without being asked.
    let c = Cluster::start(Some(Duration::from_secs(2)));
    let mon = &c.mon;
    let acting = pg_to_osds(&c.map, &c.pool, 5);
    assert_eq!(acting.len(), 3, "three hosts, size 3: {acting:?}");
    let (primary, replica) = (acting[0], acting[2]);
    let bad = PgId { pool: 0, pg: 5 };
    let pgid = "0.5";

    // A clean PG.
    let (code, out, err) = text(&carmine(mon, &["pg", "scrub", pgid]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("pg {pgid} scrubbed by osd.{primary}")),
        "{out}"
    );
    assert!(out.ends_with("3 objects, consistent\n"), "{out}");

    // One replica's copy of "c" reads back with another CRC (a flipped byte).
    c.set(replica, bad, |d| d[2] = obj("c", 3, 34));
    let (code, out, err) = text(&carmine(mon, &["pg", "scrub", pgid]));
    assert_eq!(code, Some(6), "{out}{err}");
    assert!(out.contains("3 objects, 1 inconsistent"), "{out}");
    let auth = format!("  c (authoritative: osd.{}, osd.{})", acting[0], acting[1]);
    assert!(out.contains(&auth), "{out}");
    assert!(
        out.contains(&format!(
            "    osd.{replica}: data crc32c 0x00000022 (authoritative 0x00000021)"
        )),
        "{out}"
    );
    assert!(err.contains("found 1 inconsistent objects"), "{err}");
    // JSON says the same.
    let o = carmine(mon, &["--format", "json", "pg", "scrub", pgid]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(6));
    assert_eq!(v["inconsistent"][0]["name"], "c");
    assert_eq!(v["inconsistent"][0]["problems"][0]["osd"], replica);
    assert_eq!(v["inconsistent"][0]["problems"][0]["problem"], "mismatch");

    // The primary reports it: health is an error naming the PG and the object, pg ls marks it.
    let h = health_until(mon, "PG_INCONSISTENT", |h| h.contains("PG_INCONSISTENT"));
    assert!(h.starts_with("HEALTH_ERR"), "{h}");
    assert!(
        h.contains(&format!("pg {pgid} is inconsistent: 1 objects (c)")),
        "{h}"
    );
    let (code, ls, _) = text(&carmine(mon, &["pg", "ls", "--pool", "rbd"]));
    assert_eq!(code, Some(0));
    let line = ls
        .lines()
        .find(|l| l.starts_with(&format!("{pgid} ")))
        .unwrap();
    // These agents report no PG stats (no shards): the state is "unknown", the scrub's
    // finding is added to it.
    assert!(line.contains(" unknown+inconsistent "), "{ls}");
    assert!(line.ends_with(" c"), "{ls}");
    assert_eq!(
        ls.lines().filter(|l| l.contains(" unknown ")).count(),
        7,
        "every other PG has no finding:\n{ls}"
    );
    let (code, only, _) = text(&carmine(mon, &["pg", "ls", "--state", "inconsistent"]));
    assert_eq!(code, Some(0));
    assert_eq!(only.lines().count(), 2, "the header and pg {pgid}:\n{only}");

    // Only the primary scrubs.
    let err = scrub_at(c.agent_of(replica), bad).unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("is not the primary"), "{err:?}");
    let r = scrub_at(c.agent_of(primary), bad).unwrap();
    assert_eq!(r.inconsistent.len(), 1);

    // Repaired: the next scrub is clean and the error goes away.
    c.set(replica, bad, |d| d[2] = obj("c", 3, 33));
    let (code, out, _) = text(&carmine(mon, &["pg", "scrub", pgid]));
    assert_eq!(code, Some(0), "{out}");
    health_until(mon, "no PG_INCONSISTENT", |h| {
        h.starts_with("HEALTH_OK") && !h.contains("PG_INCONSISTENT")
    });

    // The background scrub finds a missing object on its own (no command).
    let other = PgId { pool: 0, pg: 3 };
    let victim = pg_to_osds(&c.map, &c.pool, other.pg)[1];
    c.set(victim, other, |d| {
        d.remove(0);
    });
    let h = health_until(mon, "the background scrub's finding", |h| {
        h.contains("pg 0.3 is inconsistent: 1 objects (a)")
    });
    assert!(h.starts_with("HEALTH_ERR"), "{h}");
}

/// A difference seen in the first pass only (a write racing the scrub) is looked at again and
/// not reported; one still there on the second look is.
#[test]
fn a_difference_gone_on_the_recheck_is_not_reported() {
    let c = Cluster::start(None);
    let acting = pg_to_osds(&c.map, &c.pool, 2);
    let pg = PgId { pool: 0, pg: 2 };
    let racing = vec![obj("a", 1, 11), obj("b", 2, 22), obj("c", 4, 99)];
    *c.table_of(acting[1]).once.lock().unwrap() = Some((pg, racing));
    let (code, out, err) = text(&carmine(&c.mon, &["pg", "scrub", "0.2"]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.ends_with("3 objects, consistent\n"), "{out}");
    assert!(
        c.table_of(acting[1]).once.lock().unwrap().is_none(),
        "the racing answer was given"
    );
    // Missing on one member in both passes: reported.
    c.set(acting[1], pg, |d| {
        d.remove(1);
    });
    let (code, out, _) = text(&carmine(&c.mon, &["pg", "scrub", "0.2"]));
    assert_eq!(code, Some(6), "{out}");
    assert!(out.contains("  b (authoritative: "), "{out}");
    assert!(
        out.contains(&format!("    osd.{}: missing", acting[1])),
        "{out}"
    );
}
