//! The monitor as a real process: persistence across a crash, credentials, map history.

mod common;

use carmine_proto::v1;
use common::{admin, authed, cluster, create_pools, runtime, MonProc};
use tonic::Code;

fn boot_req(uuid: &str, host: &str) -> v1::BootRequest {
    v1::BootRequest {
        uuid: uuid.into(),
        host: host.into(),
        public_addr: "127.0.0.1:7000".into(),
        cluster_addr: "127.0.0.1:7001".into(),
        shard_count: 2,
        shard_ports: vec![7000, 7002],
        weight: 2.0,
        ..Default::default()
    }
}

#[test]
fn restarted_mon_keeps_epoch_osds_and_pools() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mon = MonProc::start(dir.path(), &[]);
    let (epoch, osd_id, pool_id) = rt.block_on(async {
        let mut a = admin(&mon.url()).await;
        let mut c = cluster(&mon.url()).await;
        let b = c
            .boot(boot_req("uuid-a", "hostA"))
            .await
            .unwrap()
            .into_inner();
        let b2 = c
            .boot(boot_req("uuid-b", "hostB"))
            .await
            .unwrap()
            .into_inner();
        assert_ne!(b.id, b2.id);
        let p = a
            .pool_create(authed(v1::PoolCreateRequest {
                name: "rbd".into(),
                pg_num: 32,
                size: 1,
                min_size: 1,
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(p.epoch > b2.epoch);
        let e = a
            .osd_out(authed(v1::OsdIdRequest { id: b2.id }))
            .await
            .unwrap()
            .into_inner()
            .epoch;
        (e, b.id, p.id)
    });
    mon.kill(); // SIGKILL: the store must already hold every announced epoch.

    let mon = MonProc::start(dir.path(), &[]);
    rt.block_on(async {
        let mut a = admin(&mon.url()).await;
        let m = a
            .get_map(authed(v1::GetMapRequest { epoch: 0 }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(m.epoch, epoch, "epoch survives the restart");
        assert_eq!(m.osds.len(), 2);
        let osd = m.osds.iter().find(|o| o.id == osd_id).unwrap();
        assert_eq!(osd.uuid, "uuid-a");
        assert_eq!(osd.host, "hostA");
        assert_eq!(osd.shard_ports, vec![7000, 7002]);
        assert_eq!(osd.weight, 2.0);
        assert!(m.osds.iter().any(|o| o.uuid == "uuid-b" && !o.r#in));
        assert_eq!(m.pools.len(), 1);
        assert_eq!(m.pools[0].id, pool_id);
        assert_eq!(m.pools[0].name, "rbd");
        // Older epochs are still there, and the next change makes the next epoch (no reuse).
        let old = a
            .get_map(authed(v1::GetMapRequest { epoch: epoch - 1 }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(old.epoch, epoch - 1);
        let p2 = a
            .pool_create(authed(v1::PoolCreateRequest {
                name: "two".into(),
                pg_num: 8,
                size: 1,
                min_size: 1,
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(p2.epoch, epoch + 1);
        assert!(p2.id > pool_id, "pool ids are never reused");
        // A known uuid gets its id back.
        let mut c = cluster(&mon.url()).await;
        assert_eq!(
            c.boot(boot_req("uuid-a", "hostA"))
                .await
                .unwrap()
                .into_inner()
                .id,
            osd_id
        );
    });
}

#[test]
fn admin_calls_need_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mon = MonProc::start(dir.path(), &[]);
    rt.block_on(async {
        let mut a = admin(&mon.url()).await;
        let e = a.status(v1::Empty {}).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e}");
        let mut wrong = tonic::Request::new(v1::PoolCreateRequest {
            name: "x".into(),
            pg_num: 8,
            size: 1,
            min_size: 1,
        });
        wrong.metadata_mut().insert(
            carmine_proto::AUTH_HEADER,
            carmine_proto::bearer("not-the-token").unwrap(),
        );
        let e = a.pool_create(wrong).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e}");
        // Nothing was created by the refused call.
        let pools = a
            .pool_list(authed(v1::Empty {}))
            .await
            .unwrap()
            .into_inner();
        assert!(pools.pools.is_empty());
        let s = a.status(authed(v1::Empty {})).await.unwrap().into_inner();
        assert_eq!(s.health.unwrap().status, v1::HealthStatus::HealthOk as i32);
        // Bad arguments are refused with a clear code.
        let e = a
            .pool_create(authed(v1::PoolCreateRequest {
                name: "bad".into(),
                pg_num: 0,
                size: 1,
                min_size: 1,
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        // More copies than the OSDs keep: refused, saying why.
        let e = a
            .pool_create(authed(v1::PoolCreateRequest {
                name: "replicated".into(),
                pg_num: 8,
                size: 6,
                min_size: 2,
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
        assert!(e.message().contains("at most 5 copies"), "{e}");
        let pools = a
            .pool_list(authed(v1::Empty {}))
            .await
            .unwrap()
            .into_inner();
        assert!(pools.pools.is_empty());
        let e = a
            .osd_out(authed(v1::OsdIdRequest { id: 99 }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
    });
}

#[test]
fn subscription_sends_backlog_then_live_incrementals() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mon = MonProc::start(dir.path(), &[]);
    rt.block_on(async {
        use tokio_stream::StreamExt;
        let mut a = admin(&mon.url()).await;
        let mut c = cluster(&mon.url()).await;
        create_pools(&mut a, "p", 0..3).await;
        // Epochs: 1 (empty), 2, 3, 4. A subscriber at epoch 2 gets incrementals 3 and 4.
        let mut s = c
            .subscribe(v1::SubscribeRequest { have_epoch: 2 })
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        for _ in 0..2 {
            match s.next().await.unwrap().unwrap().update.unwrap() {
                v1::map_update::Update::Incremental(i) => got.push(i.epoch),
                v1::map_update::Update::Full(_) => panic!("expected incrementals"),
            }
        }
        assert_eq!(got, [3, 4]);
        a.pool_rm(authed(v1::PoolNameRequest { name: "p0".into() }))
            .await
            .unwrap();
        match s.next().await.unwrap().unwrap().update.unwrap() {
            v1::map_update::Update::Incremental(i) => {
                assert_eq!(i.epoch, 5);
                assert_eq!(i.removed_pools, vec![0]);
            }
            v1::map_update::Update::Full(_) => panic!("expected an incremental"),
        }
        // A brand new subscriber gets the full map.
        let mut s0 = c
            .subscribe(v1::SubscribeRequest { have_epoch: 0 })
            .await
            .unwrap()
            .into_inner();
        match s0.next().await.unwrap().unwrap().update.unwrap() {
            v1::map_update::Update::Full(m) => {
                assert_eq!(m.epoch, 5);
                assert_eq!(m.pools.len(), 2);
            }
            v1::map_update::Update::Incremental(_) => panic!("expected a full map"),
        }
    });
}

#[test]
fn sigterm_ends_open_subscriptions_and_exits_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut mon = MonProc::start(dir.path(), &[]);
    let mut s = rt.block_on(async {
        use tokio_stream::StreamExt;
        let mut c = cluster(&mon.url()).await;
        let mut s = c
            .subscribe(v1::SubscribeRequest { have_epoch: 0 })
            .await
            .unwrap()
            .into_inner();
        assert!(matches!(
            s.next().await.unwrap().unwrap().update,
            Some(v1::map_update::Update::Full(_))
        ));
        s
    });
    // The subscription stays open (an OSD agent's would): shutdown must not wait on it.
    mon.terminate();
    let status = mon
        .wait_exit(std::time::Duration::from_secs(10))
        .expect("carmine-mon still running 10 s after SIGTERM");
    assert!(status.success(), "carmine-mon exited with {status}");
    rt.block_on(async {
        use tokio_stream::StreamExt;
        // The monitor ended the stream itself (status OK, no more items). Had it been cut off
        // by the shutdown drain instead, the client would see a transport error here.
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), s.next())
            .await
            .expect("the subscription neither ended nor failed");
        assert!(end.is_none(), "expected a clean end of stream, got {end:?}");
    });
}

#[test]
fn config_file_sets_flags_and_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mon.toml");
    std::fs::write(
        &file,
        "admin-token = \"from-the-config-file\"\nmap-history = 3\nheartbeat-ms = 250\n",
    )
    .unwrap();
    let rt = runtime();
    // MonProc passes --admin-token on the command line: it overrides the file's.
    let mon = MonProc::start(
        &dir.path().join("data"),
        &["--config", file.to_str().unwrap()],
    );
    rt.block_on(async {
        let mut a = admin(&mon.url()).await;
        let mut c = cluster(&mon.url()).await;
        // The file's heartbeat interval is what OSDs are told.
        let b = c
            .boot(boot_req("uuid-a", "hostA"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(b.heartbeat_interval_ms, 250);
        create_pools(&mut a, "p", 0..4).await;
        // map-history = 3 from the file: only the last 3 epochs are held.
        let cur = a
            .get_map(authed(v1::GetMapRequest { epoch: 0 }))
            .await
            .unwrap()
            .into_inner()
            .epoch;
        assert!(a
            .get_map(authed(v1::GetMapRequest { epoch: cur - 2 }))
            .await
            .is_ok());
        let e = a
            .get_map(authed(v1::GetMapRequest { epoch: cur - 3 }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
    });
}
