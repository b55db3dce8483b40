//! `carmine pg ls --state`, `carmine pg query` and `carmine status` as real processes against
//! a monitor served in this test process. The OSDs are this test speaking `MonCluster` as an
//! OSD agent does (boot, heartbeats carrying PG stats, RecordIntervals): real gRPC clients of
//! the real monitor.

use std::process::{Command, Output};
use std::time::Duration;

use carmine_placement::{pg_to_osds, ClusterMap};
use carmine_proto::v1::{self, PgStateBit as B};
use serde_json::Value;

mod test_mon;
use test_mon::TestMon;

const TOKEN: &str = "pg-states-admin-token";

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

fn ok(mon: &TestMon, args: &[&str]) -> String {
    let o = carmine(mon, args);
    assert!(
        o.status.success(),
        "carmine {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn json(mon: &TestMon, args: &[&str]) -> Value {
    let mut all = vec!["--format", "json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(mon, &all)).unwrap()
}

/// The PG ids `pg ls` printed (first column, header skipped).
fn ids(ls: &str) -> Vec<String> {
    ls.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn pg_ls_by_state_pg_query_and_status_from_reported_pg_stats() {
    let dir = tempfile::tempdir().unwrap();
    // Heartbeats every 2 s: a report is fresh for 6 s, long enough for the commands below;
    // the OSDs stay up without more heartbeats.
    let mon = TestMon::start(
        TOKEN,
        dir.path(),
        &["--heartbeat-ms", "2000", "--down-grace-ms", "60000"],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("http://{}", mon.addr);
    let mut c = rt.block_on(async {
        v1::mon_cluster_client::MonClusterClient::connect(url.clone())
            .await
            .unwrap()
    });
    let mut osds = Vec::new();
    for i in 0..3u32 {
        let id = rt
            .block_on(c.boot(test_mon::as_admin(
                TOKEN,
                v1::BootRequest {
                    uuid: format!("uuid-{i}"),
                    host: format!("host{i}"),
                    shard_count: 1,
                    shard_ports: vec![6800],
                    weight: 1.0,
                    ..Default::default()
                },
            )))
            .unwrap()
            .into_inner()
            .id;
        osds.push((id, format!("uuid-{i}")));
    }
    ok(
        &mon,
        &[
            "pool",
            "create",
            "rep",
            "--pg-num",
            "8",
            "--size",
            "3",
            "--min-size",
            "2",
        ],
    );
    let map: ClusterMap = rt.block_on(async {
        let mut a = v1::mon_admin_client::MonAdminClient::connect(url.clone())
            .await
            .unwrap();
        let mut r = tonic::Request::new(v1::GetMapRequest { epoch: 0 });
        r.metadata_mut().insert(
            carmine_proto::AUTH_HEADER,
            carmine_proto::bearer(TOKEN).unwrap(),
        );
        a.get_map(r).await.unwrap().into_inner().into()
    });
    let pool = map.pool_by_name("rep").unwrap().clone();
    let acting = |pg: u32| pg_to_osds(&map, &pool, pg);
    let since = map.epoch;
    let active_clean = B::PgStateActive as u32 | B::PgStateClean as u32;
    // What each PG's primary says: 1 degraded and recovering, 2 incomplete, the rest clean.
    let stat = |pg: u32, recovered: u64| {
        let mut s = v1::PgStat {
            pool: pool.id,
            pg,
            state: active_clean,
            interval_since: since,
            acting: acting(pg),
            objects: 10,
            ..Default::default()
        };
        match pg {
            1 => {
                s.state = B::PgStateActive as u32
                    | B::PgStateDegraded as u32
                    | B::PgStateRecovering as u32;
                s.degraded_objects = 4;
                s.recovered_bytes = recovered;
                s.recovered_objects = recovered / 4096;
            }
            2 => {
                s.state = B::PgStateIncomplete as u32;
                s.blocked_by = vec![format!("since {} [9,8,7]", since - 1)];
            }
            _ => {}
        }
        s
    };
    let heartbeats = |c: &mut v1::mon_cluster_client::MonClusterClient<_>, recovered: u64| {
        for (id, uuid) in &osds {
            let mut pg_stats: Vec<v1::PgStat> = (0..8)
                .filter(|pg| acting(*pg)[0] == *id)
                .map(|pg| stat(pg, recovered))
                .collect();
            // pg 3 is also reported by a member that is not its primary: ignored (the primary's
            // own report stands).
            if acting(3)[1] == *id {
                pg_stats.push(stat(3, 0));
            }
            let r = rt
                .block_on(c.heartbeat(test_mon::as_admin(
                    TOKEN,
                    v1::HeartbeatRequest {
                        id: *id,
                        uuid: uuid.clone(),
                        map_epoch: since,
                        pg_stats,
                        ..Default::default()
                    },
                )))
                .unwrap()
                .into_inner();
            assert!(!r.must_boot);
        }
    };
    heartbeats(&mut c, 0);
    // pg 2's recorded history, as its primary would record it.
    let iv = |s: u64, a: Vec<u32>| v1::PgInterval {
        pool: pool.id,
        pg: 2,
        since: s,
        acting: a,
    };
    rt.block_on(c.record_intervals(test_mon::as_admin(
        TOKEN,
        v1::RecordIntervalsRequest {
            osd: acting(2)[0],
            intervals: vec![iv(since - 1, vec![9, 8, 7]), iv(since, acting(2))],
        },
    )))
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    heartbeats(&mut c, 1 << 20);

    // pg ls --state: every named bit must be there.
    let all = ok(&mon, &["pg", "ls"]);
    assert_eq!(ids(&all).len(), 8, "{all}");
    let clean = ids(&ok(&mon, &["pg", "ls", "--state", "active+clean"]));
    assert_eq!(clean, ["0.0", "0.3", "0.4", "0.5", "0.6", "0.7"]);
    let degraded = ok(&mon, &["pg", "ls", "--state", "degraded"]);
    assert_eq!(ids(&degraded), ["0.1"], "{degraded}");
    assert!(
        degraded.contains(" active+degraded+recovering "),
        "{degraded}"
    );
    assert_eq!(
        ids(&ok(&mon, &["pg", "ls", "--state", "recovering+active"])),
        ["0.1"]
    );
    assert!(ids(&ok(&mon, &["pg", "ls", "--state", "active+incomplete"])).is_empty());
    let v = json(&mon, &["pg", "ls", "--state", "incomplete"]);
    assert_eq!(v["pgs"].as_array().unwrap().len(), 1);
    assert_eq!(v["pgs"][0]["pgid"], "0.2");
    assert_eq!(v["pgs"][0]["state"], "incomplete");
    assert_eq!(v["pgs"][0]["acting"], serde_json::json!(acting(2)));
    let o = carmine(&mon, &["pg", "ls", "--state", "active+bogus"]);
    assert_eq!(o.status.code(), Some(2), "a bad state is a usage error");
    assert!(String::from_utf8_lossy(&o.stderr).contains("\"bogus\""));

    // pg query: by pool id or name.
    let q = ok(&mon, &["pg", "query", "0.2"]);
    assert!(
        q.starts_with("pg 0.2 (pool rep)\n  state:      incomplete\n"),
        "{q}"
    );
    let blocked = format!("since {} [9,8,7]", since - 1);
    assert!(q.contains(&format!("  history:    {blocked}\n")), "{q}");
    let mine: Vec<String> = acting(2).iter().map(u32::to_string).collect();
    assert!(
        q.contains(&format!(
            "              since {since} [{}]\n",
            mine.join(",")
        )),
        "{q}"
    );
    assert!(q.contains(&format!("  blocked by: {blocked}\n")), "{q}");
    let v = json(&mon, &["pg", "query", "rep.1"]);
    assert_eq!(v["state"], "active+degraded+recovering");
    assert_eq!(v["degraded_objects"], 4);
    assert_eq!(v["recovered_bytes"], 1 << 20);
    assert_eq!(v["history"], serde_json::json!([]));
    assert!(v["reported_secs_ago"].as_u64().unwrap() >= 1);
    let o = carmine(&mon, &["pg", "query", "0.8"]);
    assert_eq!(o.status.code(), Some(5), "no such pg");

    // status: PGs by state, objects, recovery; health names the incomplete PG.
    let s = json(&mon, &["status"]);
    assert_eq!(s["pgs"], 8, "the old field keeps its meaning");
    assert_eq!(s["pgs_by_state"]["active+clean"], 6);
    assert_eq!(s["pgs_by_state"]["active+degraded+recovering"], 1);
    assert_eq!(s["pgs_by_state"]["incomplete"], 1);
    assert_eq!(s["objects"]["total"], 80);
    assert_eq!(s["objects"]["degraded"], 4);
    let rate = s["recovery"]["bytes_per_sec"].as_u64().unwrap();
    // 1 MiB over the ~0.5 s between the two reports.
    assert!(rate > 500_000 && rate < 2_200_000, "{rate}");
    assert_eq!(s["health"]["status"], "HEALTH_ERR");
    let plain = ok(&mon, &["status"]);
    assert!(
        plain.contains(
            "    pgs:     6 active+clean\n             1 active+degraded+recovering\n             1 incomplete\n"
        ),
        "{plain}"
    );
    assert!(plain.contains("    objects: 80 objects\n"), "{plain}");
    assert!(
        plain.contains("             4 degraded, 0 misplaced objects\n"),
        "{plain}"
    );
    assert!(plain.contains("    recovery: "), "{plain}");
    assert!(plain.contains("PG_INCOMPLETE"), "{plain}");
    let h = ok(&mon, &["health", "detail"]);
    assert!(
        h.contains(&format!("pg 0.2 is incomplete: blocked by {blocked}")),
        "{h}"
    );
    assert!(
        h.contains("PG_DEGRADED (HEALTH_WARN): 1 pgs degraded, 4 objects degraded"),
        "{h}"
    );

    // Silence: after three heartbeat intervals every PG is stale.
    std::thread::sleep(Duration::from_millis(6200));
    let stale = ids(&ok(&mon, &["pg", "ls", "--state", "stale"]));
    assert_eq!(stale.len(), 8);
    assert!(ok(&mon, &["health"]).contains("PG_STALE"));
}

/// The CLI names the state bits as the monitor does (its health lines and `status` counts use
/// the monitor's names, `pg ls` the CLI's).
#[test]
fn the_cli_names_pg_states_as_the_monitor_does() {
    assert_eq!(
        carmine_cli::pg::STATE_NAMES,
        carmine_mon::pgstats::STATE_NAMES
    );
    for bits in [0, 1, 3, 0x3ff, 8 | 16 | 256] {
        assert_eq!(
            carmine_cli::pg::state_string(bits, false),
            carmine_mon::pgstats::state_string(bits)
        );
    }
}
