//! A real `carmine-mon` process and OSD agents hosted by this test process (as an OSD would
//! host them): boot, heartbeats, map delivery to every shard sink, down after the grace
//! period, back up on return, out after the longer interval, and the OSD admin service.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use carmine_agent::{Agent, AgentConfig, MapSink, MemConfig, SharedKeyring, SinkFull, Stats};
use carmine_placement::ClusterMap;
use carmine_proto::v1;
use common::{admin, authed, runtime, wait_for, MonProc};

const GRACE_MS: u64 = 1500;
const OUT_MS: u64 = 2000;

/// A shard's inbound queue, as seen by the agent: records the epochs it receives. Refuses the
/// first offer of every map to exercise the agent's retry.
struct ShardSink {
    tx: mpsc::Sender<u64>,
    refuse_next: bool,
}

impl MapSink for ShardSink {
    fn deliver(&mut self, map: Arc<ClusterMap>) -> Result<(), SinkFull> {
        if self.refuse_next {
            self.refuse_next = false;
            return Err(SinkFull);
        }
        self.refuse_next = true;
        let _ = self.tx.send(map.epoch);
        Ok(())
    }
}

struct OsdStats {
    ops: AtomicU64,
}

impl Stats for OsdStats {
    fn counters(&self) -> Vec<(String, u64)> {
        vec![
            (
                "shard0.ops".into(),
                self.ops.fetch_add(1, Ordering::Relaxed),
            ),
            ("msgr.conns".into(), 3),
        ]
    }
    fn usage(&self) -> (u64, u64) {
        (10, 100)
    }
}

fn start_agent(mon: &MonProc, uuid: &str, host: &str) -> (Agent, Vec<mpsc::Receiver<u64>>) {
    let mut sinks: Vec<Box<dyn MapSink>> = Vec::new();
    let mut rxs = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = mpsc::channel();
        sinks.push(Box::new(ShardSink {
            tx,
            refuse_next: true,
        }));
        rxs.push(rx);
    }
    let cfg = AgentConfig {
        mon_addr: mon.addr.clone(),
        uuid: uuid.into(),
        host: host.into(),
        public_addr: "127.0.0.1:6800".into(),
        cluster_addr: "127.0.0.1:6801".into(),
        shard_ports: vec![6800, 6802],
        weight: 1.0,
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: None,
        credential: Some(common::osd_credential(&mon.addr, uuid)),
        client_tls: carmine_proto::tls::ClientTls::Plaintext,
        admin_tls: carmine_proto::tls::ServerTls::Plaintext,
    };
    let agent = Agent::start(
        cfg,
        sinks,
        Arc::new(OsdStats {
            ops: AtomicU64::new(0),
        }),
        Arc::new(MemConfig::new([("osd_op_threads", "2"), ("debug_ms", "0")])),
        Arc::new(SharedKeyring::new()),
    )
    .unwrap();
    (agent, rxs)
}

/// The epochs a sink receives until it gets `epoch` (bounded by `limit`); asserts they only
/// increase. The agent re-offers a refused map every 20 ms, so `epoch` may come a little after
/// the agent itself reports it: this waits for it instead of sleeping a fixed time.
fn epochs_until(rx: &mpsc::Receiver<u64>, epoch: u64, limit: Duration) -> Vec<u64> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    while got.last() != Some(&epoch) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(e) => got.push(e),
            Err(_) => panic!("a shard never got epoch {epoch} within {limit:?}: {got:?}"),
        }
    }
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "epochs out of order: {got:?}"
    );
    got
}

#[test]
fn agent_down_after_grace_up_on_return_out_after_interval() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let grace = GRACE_MS.to_string();
    let out = OUT_MS.to_string();
    let mon = MonProc::start(
        dir.path(),
        &[
            "--heartbeat-ms",
            "100",
            "--down-grace-ms",
            &grace,
            "--out-interval-ms",
            &out,
        ],
    );
    let url = mon.url();
    let limit = Duration::from_secs(15);
    rt.block_on(async {
        let mut a = admin(&url).await;
        a.pool_create(authed(v1::PoolCreateRequest {
            name: "rbd".into(),
            pg_num: 16,
            size: 1,
            min_size: 1,
        }))
        .await
        .unwrap();
    });

    let (agent_a, sinks_a) = start_agent(&mon, "uuid-a", "hostA");
    let (agent_b, _sinks_b) = start_agent(&mon, "uuid-b", "hostB");

    let health = |want: v1::HealthStatus| {
        let url = url.clone();
        async move {
            let a = admin(&url).await;
            wait_for(limit, || {
                let mut a = a.clone();
                async move {
                    let h = a.health(authed(v1::Empty {})).await.ok()?.into_inner();
                    (h.status == want as i32).then_some(h)
                }
            })
            .await
        }
    };
    let osd = |id: u32| {
        let url = url.clone();
        async move {
            let mut a = admin(&url).await;
            let m = a
                .get_map(authed(v1::GetMapRequest { epoch: 0 }))
                .await
                .unwrap()
                .into_inner();
            (m.epoch, m.osds.into_iter().find(|o| o.id == id).unwrap())
        }
    };

    // Both boot; the cluster is healthy and every shard of A has the current map.
    let h = rt.block_on(health(v1::HealthStatus::HealthOk));
    assert!(h.is_some(), "cluster never became healthy");
    // The monitor marks an OSD up before the agent has read the boot reply: wait for both.
    let id_b = rt
        .block_on(wait_for(limit, || async {
            agent_a.status().osd_id()?;
            agent_b.status().osd_id()
        }))
        .expect("agents never learned their ids");
    let (epoch, _) = rt.block_on(osd(id_b));
    let synced = rt.block_on(wait_for(limit, || async {
        (agent_a.status().map_epoch() == epoch).then_some(())
    }));
    assert!(synced.is_some(), "agent A never reached epoch {epoch}");
    let seen_a: Vec<Vec<u64>> = sinks_a
        .iter()
        .map(|rx| epochs_until(rx, epoch, limit))
        .collect();

    // The OSD admin service of agent A.
    rt.block_on(async {
        let ch = common::channel(&format!("http://{}", agent_a.admin_addr())).await;
        let mut c = v1::osd_admin_client::OsdAdminClient::new(ch);
        let e = c.status(v1::Empty {}).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let s = c
            .status(common::osd_authed(v1::Empty {}))
            .await
            .unwrap()
            .into_inner();
        assert!(s.booted);
        assert_eq!(s.id, agent_a.status().osd_id().unwrap());
        assert_eq!(s.shard_count, 2);
        assert!(s.map_epoch >= epoch);
        let p = c
            .perf_counters(common::osd_authed(v1::Empty {}))
            .await
            .unwrap()
            .into_inner();
        let names: Vec<&str> = p.counters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["msgr.conns", "shard0.ops"]);
        let r = c
            .config_set(common::osd_authed(v1::ConfigSetRequest {
                key: "debug_ms".into(),
                value: "5".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.value, "5");
        let g = c
            .config_get(common::osd_authed(v1::ConfigGetRequest {
                key: "debug_ms".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(g.entries[0].value, "5");
        let all = c
            .config_get(common::osd_authed(v1::ConfigGetRequest {
                key: String::new(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(all.entries.len(), 2);
        let e = c
            .config_set(common::osd_authed(v1::ConfigSetRequest {
                key: "nope".into(),
                value: "1".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    });

    // B stops (its OSD process died): down within the grace period (plus one liveness tick),
    // health WARN for the down OSD only (size 1: its PGs are placed on A at once, none is
    // degraded or unavailable).
    drop(agent_b);
    let t0 = Instant::now();
    let down = rt.block_on(wait_for(limit, || async {
        let (_, o) = osd(id_b).await;
        (!o.up).then_some(t0.elapsed())
    }));
    let took = down.expect("B was never marked down");
    println!(
        "osd.{id_b} marked down {took:?} after its last heartbeat stopped (grace {GRACE_MS} ms)"
    );
    assert!(
        took >= Duration::from_millis(GRACE_MS - 200),
        "marked down before the grace period: {took:?}"
    );
    assert!(
        took <= Duration::from_millis(GRACE_MS * 3),
        "marked down too late: {took:?}"
    );
    let h = rt
        .block_on(health(v1::HealthStatus::HealthWarn))
        .expect("health never turned WARN");
    let codes: Vec<&str> = h.checks.iter().map(|c| c.code.as_str()).collect();
    assert_eq!(codes, ["OSD_DOWN"]);

    // B returns with the same uuid: same id, up, health OK again.
    let (agent_b, _sinks_b) = start_agent(&mon, "uuid-b", "hostB");
    assert!(
        rt.block_on(health(v1::HealthStatus::HealthOk)).is_some(),
        "health never OK again"
    );
    let id = rt.block_on(wait_for(limit, || async { agent_b.status().osd_id() }));
    assert_eq!(id, Some(id_b));
    let (_, o) = rt.block_on(osd(id_b));
    assert!(o.up && o.r#in);

    // B stops again and stays away: down again (WARN), then out after the out interval, when
    // the down-but-in warning goes and health is OK again.
    drop(agent_b);
    let t0 = Instant::now();
    let out_after = rt.block_on(wait_for(limit, || async {
        let (_, o) = osd(id_b).await;
        (!o.r#in).then_some(t0.elapsed())
    }));
    let took = out_after.expect("B was never marked out");
    println!(
        "osd.{id_b} marked out {took:?} after it stopped (grace {GRACE_MS} ms + out {OUT_MS} ms)"
    );
    assert!(
        took >= Duration::from_millis(GRACE_MS + OUT_MS - 300),
        "out too early: {took:?}"
    );
    let h = rt
        .block_on(health(v1::HealthStatus::HealthOk))
        .expect("health never OK after the out");
    assert!(h.checks.is_empty(), "{:?}", h.checks);

    // Back again: booting marks it in again (it was out by the monitor, not by an admin).
    let (agent_b, _sinks_b) = start_agent(&mon, "uuid-b", "hostB");
    let (epoch, o) = rt
        .block_on(wait_for(limit, || async {
            let (epoch, o) = osd(id_b).await;
            (o.up && o.r#in).then_some((epoch, o))
        }))
        .expect("B never came back up and in");
    assert!(o.up && o.r#in);
    assert!(rt.block_on(health(v1::HealthStatus::HealthOk)).is_some());

    // A followed every epoch in order on every shard and has the last one.
    let synced = rt.block_on(wait_for(limit, || async {
        (agent_a.status().map_epoch() == epoch).then_some(())
    }));
    assert!(synced.is_some());
    for (rx, before) in sinks_a.iter().zip(&seen_a) {
        let after = epochs_until(rx, epoch, limit);
        assert!(after.first() > before.last(), "{before:?} then {after:?}");
    }
    assert!(agent_a.status().heartbeats_acked() > 5);
    drop(agent_b);
    drop(agent_a);
}

/// Stats of an OSD whose store fails when the test says so.
struct FailingStats {
    failure: std::sync::Mutex<Option<String>>,
}

impl Stats for FailingStats {
    fn counters(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
    fn store_failure(&self) -> Option<String> {
        self.failure.lock().unwrap().clone()
    }
}

/// An agent whose OSD's store fails reports it within a heartbeat: the monitor marks the OSD
/// down (`OSD_STORE_FAILED`, ERR, naming it and the reason), and it stays down: the agent
/// neither boots it again nor does the monitor take it back, over many heartbeats. The other
/// OSD is untouched. The cluster fsid the OSD fetches before its bring-up is the map's.
#[test]
fn a_failed_store_is_reported_and_the_osd_stays_down() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mon = MonProc::start(dir.path(), &["--heartbeat-ms", "100"]);
    let url = mon.url();
    let limit = Duration::from_secs(15);
    let cfg = |uuid: &str| AgentConfig {
        mon_addr: mon.addr.clone(),
        uuid: uuid.into(),
        host: format!("host-{uuid}"),
        public_addr: "127.0.0.1:6800".into(),
        cluster_addr: "127.0.0.1:6801".into(),
        shard_ports: vec![6800],
        weight: 1.0,
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: None,
        credential: Some(common::osd_credential(&mon.addr, uuid)),
        client_tls: carmine_proto::tls::ClientTls::Plaintext,
        admin_tls: carmine_proto::tls::ServerTls::Plaintext,
    };
    // The fsid, as an OSD learns it before touching its device; a stop ends the wait.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let fsid = carmine_agent::cluster_fsid(&cfg("x"), &stop).unwrap();
    let map_fsid = rt.block_on(async {
        let mut a = admin(&url).await;
        a.get_map(authed(v1::GetMapRequest { epoch: 0 }))
            .await
            .unwrap()
            .into_inner()
            .fsid
    });
    assert_eq!(fsid, map_fsid);
    assert_eq!(fsid.len(), 36, "{fsid}");
    stop.store(true, Ordering::Relaxed);
    let mut nowhere = cfg("x");
    nowhere.mon_addr = "127.0.0.1:1".into();
    assert!(matches!(
        carmine_agent::cluster_fsid(&nowhere, &stop),
        Err(carmine_agent::AgentError::Stopped)
    ));

    let stats = Arc::new(FailingStats {
        failure: std::sync::Mutex::new(None),
    });
    let sink = |tx| {
        Box::new(ShardSink {
            tx,
            refuse_next: false,
        }) as Box<dyn MapSink>
    };
    let (tx, _rx_a) = mpsc::channel();
    let a = Agent::start(
        cfg("a"),
        vec![sink(tx)],
        stats.clone(),
        Arc::new(MemConfig::new([("k", "v")])),
        Arc::new(SharedKeyring::new()),
    )
    .unwrap();
    let (tx, _rx_b) = mpsc::channel();
    let b = Agent::start(
        cfg("b"),
        vec![sink(tx)],
        Arc::new(FailingStats {
            failure: std::sync::Mutex::new(None),
        }),
        Arc::new(MemConfig::new([("k", "v")])),
        Arc::new(SharedKeyring::new()),
    )
    .unwrap();
    let (id_a, id_b) = rt
        .block_on(wait_for(limit, || async {
            Some((a.status().osd_id()?, b.status().osd_id()?))
        }))
        .expect("agents never booted");
    let map = || {
        let url = url.clone();
        async move {
            let mut c = admin(&url).await;
            c.get_map(authed(v1::GetMapRequest { epoch: 0 }))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let up = |m: &v1::ClusterMap, id: u32| m.osds.iter().any(|o| o.id == id && o.up);
    rt.block_on(wait_for(limit, || async {
        let m = map().await;
        (up(&m, id_a) && up(&m, id_b)).then_some(())
    }))
    .expect("both up");

    let why = "shard 0: read of block 12 failed: I/O error";
    *stats.failure.lock().unwrap() = Some(why.into());
    let t0 = Instant::now();
    let h = rt
        .block_on(wait_for(limit, || async {
            let mut c = admin(&url).await;
            let h = c.health(authed(v1::Empty {})).await.ok()?.into_inner();
            h.checks
                .iter()
                .any(|c| c.code == "OSD_STORE_FAILED")
                .then_some(h)
        }))
        .expect("health never showed the failed store");
    let took = t0.elapsed();
    println!("store failure in health {took:?} after the store failed");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(h.status, v1::HealthStatus::HealthErr as i32);
    let c = h
        .checks
        .iter()
        .find(|c| c.code == "OSD_STORE_FAILED")
        .unwrap();
    assert_eq!(c.detail.len(), 1);
    assert!(
        c.detail[0].starts_with(&format!("osd.{id_a} (host host-a) store failed: {why}")),
        "{:?}",
        c.detail
    );
    let m = rt.block_on(map());
    assert!(!up(&m, id_a) && up(&m, id_b));
    let epoch = m.epoch;
    // Many heartbeats later: still down, no new epoch, no second boot.
    std::thread::sleep(Duration::from_millis(1500));
    let m = rt.block_on(map());
    assert!(!up(&m, id_a), "the failed OSD came back up");
    assert_eq!(m.epoch, epoch);
    assert_eq!(a.status().boots(), 1);
    drop(a);
    drop(b);
}
