//! The PG calls of a real monitor process over gRPC: the history (record, get, trim) behind
//! the cluster token and durable across a SIGKILL, the lease in the boot reply and
//! `LeaseWait` (a restarted monitor waits a whole lease), and PG stats from heartbeats in
//! `PgList`, `PgQuery` and `Status`.

mod common;

use std::time::Duration;

use carmine_placement::{pg_to_osds, ClusterMap};
use carmine_proto::v1;
use common::{admin, authed, cluster, runtime, MonProc};
use tonic::Code;

/// OSD-service calls of this test act for several OSDs at once: as an admin, who may.
fn ct<T>(msg: T) -> tonic::Request<T> {
    common::authed(msg)
}

fn boot_req(i: u32) -> v1::BootRequest {
    v1::BootRequest {
        uuid: format!("uuid-{i}"),
        host: format!("host{i}"),
        shard_count: 1,
        shard_ports: vec![7000 + i],
        weight: 1.0,
        ..Default::default()
    }
}

const FLAGS: &[&str] = &["--down-grace-ms", "3000", "--heartbeat-ms", "200"];

#[test]
fn pg_history_leases_and_pg_stats_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mon = MonProc::start(dir.path(), FLAGS);
    let (pool, since, acting) = rt.block_on(async {
        let mut c = cluster(&mon.url()).await;
        let mut a = admin(&mon.url()).await;
        let mut ids = Vec::new();
        for i in 0..3 {
            let b = c.boot(ct(boot_req(i))).await.unwrap().into_inner();
            assert_eq!(
                b.lease_ms, 800,
                "the lease: four heartbeats (within the grace)"
            );
            ids.push(b.id);
        }
        let p = a
            .pool_create(authed(v1::PoolCreateRequest {
                name: "rep".into(),
                pg_num: 8,
                size: 3,
                min_size: 2,
            }))
            .await
            .unwrap()
            .into_inner();
        let map: ClusterMap = a
            .get_map(authed(v1::GetMapRequest { epoch: 0 }))
            .await
            .unwrap()
            .into_inner()
            .into();
        let acting = pg_to_osds(&map, &map.pools[&p.id], 0);
        assert_eq!(acting.len(), 3);
        let iv = v1::PgInterval {
            pool: p.id,
            pg: 0,
            since: p.epoch,
            acting: acting.clone(),
        };
        let rec = v1::RecordIntervalsRequest {
            osd: acting[0],
            intervals: vec![iv.clone()],
        };
        // A credential is needed (the roles are checked in `roles.rs`).
        let e = common::cluster_anon(&mon.url())
            .await
            .record_intervals(rec.clone())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let r = c
            .record_intervals(ct(rec.clone()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.epoch, p.epoch);
        assert!(r.superseded.is_empty());
        // Twice: a no-op.
        c.record_intervals(ct(rec)).await.unwrap();
        let get = v1::PgHistoryRequest { pool: p.id, pg: 0 };
        let h = c.get_pg_history(ct(get)).await.unwrap().into_inner();
        assert_eq!(h.intervals, std::slice::from_ref(&iv));
        let e = c
            .get_pg_history(ct(v1::PgHistoryRequest { pool: p.id, pg: 8 }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let e = c
            .trim_pg_history(ct(v1::PgInterval {
                since: p.epoch + 1,
                ..iv.clone()
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "not recorded");
        c.trim_pg_history(ct(iv)).await.unwrap();

        // Lease: no heartbeat since the boots, epoch committed after them: the boots bound it.
        let w = c
            .lease_wait(ct(v1::LeaseWaitRequest {
                osds: acting.clone(),
                epoch: p.epoch,
            }))
            .await
            .unwrap()
            .into_inner()
            .wait_ms;
        assert!(w > 0 && w <= 800, "{w}");

        // PG stats: the primary of pg 0 reports it active+clean; nobody reports the others.
        let stat = |pg: u32, state: u32| v1::PgStat {
            pool: p.id,
            pg,
            state,
            interval_since: p.epoch,
            acting: pg_to_osds(&map, &map.pools[&p.id], pg),
            objects: 5,
            degraded_objects: 2,
            ..Default::default()
        };
        let clean = v1::PgStateBit::PgStateActive as u32 | v1::PgStateBit::PgStateClean as u32;
        c.heartbeat(ct(v1::HeartbeatRequest {
            id: acting[0],
            uuid: format!("uuid-{}", ids.iter().position(|x| *x == acting[0]).unwrap()),
            map_epoch: p.epoch,
            pg_stats: vec![stat(0, clean)],
            ..Default::default()
        }))
        .await
        .unwrap();
        let l = a.pg_list(authed(v1::Empty {})).await.unwrap().into_inner();
        assert_eq!(l.pgs.len(), 8);
        assert_eq!(l.pgs[0].state, clean);
        assert_eq!(l.pgs[0].acting, acting);
        assert!(l.pgs[1..].iter().all(|s| s.state == 0));
        let s = a.status(authed(v1::Empty {})).await.unwrap().into_inner();
        assert_eq!(s.pgs_by_state["active+clean"], 1);
        assert_eq!(s.pgs_by_state["unknown"], 7);
        assert_eq!((s.objects, s.degraded_objects), (5, 2));
        let q = a
            .pg_query(authed(v1::PgHistoryRequest { pool: p.id, pg: 0 }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(q.stat.unwrap().state, clean);
        assert_eq!(q.history.len(), 1);
        assert!(q.reported_secs_ago >= 1);
        // Three heartbeat intervals without a report: stale.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let l = a.pg_list(authed(v1::Empty {})).await.unwrap().into_inner();
        assert_eq!(l.pgs[0].state, clean | v1::PgStateBit::PgStateStale as u32);
        (p.id, p.epoch, acting)
    });

    // SIGKILL and restart: the history is there; the new monitor waits a whole lease.
    mon.kill();
    let mon = MonProc::start(dir.path(), FLAGS);
    rt.block_on(async {
        let mut c = cluster(&mon.url()).await;
        let h = c
            .get_pg_history(ct(v1::PgHistoryRequest { pool, pg: 0 }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            h.intervals,
            [v1::PgInterval {
                pool,
                pg: 0,
                since,
                acting: acting.clone(),
            }]
        );
        let w = c
            .lease_wait(ct(v1::LeaseWaitRequest {
                osds: acting,
                epoch: since,
            }))
            .await
            .unwrap()
            .into_inner()
            .wait_ms;
        assert!(
            w > 500 && w <= 800,
            "a restarted monitor waits a lease: {w}"
        );
    });
}
