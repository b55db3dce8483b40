//! The client's map handling against a real monitor (served in this process): initial fetch,
//! subscription, routes that follow the map, pool lookups, unreachable OSDs and monitors.
//! OSD entries are registered with the monitor's own Boot RPC; no OSD process is needed here
//! (the data path is tested against real OSDs in `osd.rs`).

mod common;

use std::time::{Duration, Instant};

use carmine_client::{Client, Error};
use carmine_proto::v1::{self, mon_cluster_client::MonClusterClient};
use common::{runtime, Follower, Mon};

const LIMIT: Duration = Duration::from_secs(30);

/// Registers an OSD entry the way an OSD's agent does.
async fn boot(mon: &Mon, uuid: &str, host: &str, addr: &str, ports: Vec<u32>) -> u32 {
    let mut c = MonClusterClient::connect(format!("http://{}", mon.addr))
        .await
        .unwrap();
    // As an admin, who may register any OSD (no OSD key is needed without an OSD process).
    c.boot(common::authed(v1::BootRequest {
        uuid: uuid.into(),
        host: host.into(),
        public_addr: addr.into(),
        cluster_addr: addr.into(),
        shard_count: ports.len() as u32,
        shard_ports: ports,
        weight: 1.0,
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner()
    .id
}

/// Credentials for calls that never reach a monitor.
fn creds() -> carmine_client::Credentials {
    carmine_client::Credentials {
        id: "client.map".into(),
        key: carmine_client::AuthKey::new([7; 32]),
    }
}

#[test]
fn routes_follow_placement_and_the_subscription() {
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let mon = Mon::start();
            // One bare-IP announcement, one ip:port (the port is ignored), one with 2 shards.
            boot(&mon, "a", "h0", "127.0.0.1", vec![7000]).await;
            boot(&mon, "b", "h1", "127.0.0.2:6800", vec![7100]).await;
            boot(&mon, "c", "h2", "127.0.0.3", vec![7200, 7201]).await;
            mon.create_pool("data", 32, 1).await;
            let client = Client::connect(
                carmine_client::ClientConfig::new(
                    mon.addr.clone(),
                    mon.add_key("client.map").await,
                )
                .plaintext(),
            )
            .await
            .unwrap();
            let map = client.map();
            assert_eq!(map.epoch, mon.map().await.epoch);
            let pool = client.pool("data").await.unwrap();
            assert_eq!(client.pool(pool.id).await.unwrap(), pool);
            assert_eq!((pool.id, pool.pg_num), (0, 32));
            // Pinned routes (computed once from the placement code; a change is a protocol
            // change): object -> (pg, osd, shard, address). osd.2 has two shards.
            let pinned: [(&str, u32, u32, u32, &str); 12] = [
                ("o0", 4, 0, 0, "127.0.0.1:7000"),
                ("o1", 7, 0, 0, "127.0.0.1:7000"),
                ("o2", 15, 1, 0, "127.0.0.2:7100"),
                ("o3", 13, 2, 1, "127.0.0.3:7201"),
                ("o4", 29, 1, 0, "127.0.0.2:7100"),
                ("o5", 26, 1, 0, "127.0.0.2:7100"),
                ("o6", 22, 2, 0, "127.0.0.3:7200"),
                ("o7", 25, 1, 0, "127.0.0.2:7100"),
                ("o8", 18, 0, 0, "127.0.0.1:7000"),
                ("o9", 16, 1, 0, "127.0.0.2:7100"),
                ("o10", 13, 2, 1, "127.0.0.3:7201"),
                ("o11", 7, 0, 0, "127.0.0.1:7000"),
            ];
            for (name, pg, osd, shard, addr) in pinned {
                let t = client.locate("data", name).unwrap();
                assert_eq!(
                    (t.pg, t.osd, t.shard, t.addr.to_string().as_str()),
                    (pg, osd, shard, addr),
                    "{name}"
                );
            }
            let mut osds_seen = std::collections::BTreeSet::new();
            for i in 0..200 {
                let name = format!("o{i}");
                let t = client.locate("data", &name).unwrap();
                let osd = &map.osds[&t.osd];
                assert_eq!(t.addr.port() as u32, osd.shard_ports[t.shard as usize]);
                assert_eq!(
                    t.addr.ip().to_string(),
                    osd.public_addr.split(':').next().unwrap()
                );
                osds_seen.insert(t.osd);
            }
            assert_eq!(osds_seen.len(), 3);

            // An admin change reaches the client through the subscription alone.
            let victim = client.locate("data", "o0").unwrap().osd;
            let epoch = mon.osd_out(victim).await;
            assert!(client.wait_for_epoch(epoch, Duration::from_secs(10)).await);
            assert!(client.stats().map_epoch >= epoch);
            assert_eq!(client.stats().map_fetches, 0);
            for i in 0..200 {
                assert_ne!(client.locate("data", &format!("o{i}")).unwrap().osd, victim);
            }
        })
        .await
        .expect("test timed out");
    });
}

#[test]
fn pools_created_later_are_fetched_and_unknown_pools_refused() {
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let mon = Mon::start();
            boot(&mon, "a", "h0", "127.0.0.1", vec![7000]).await;
            let mut cfg = carmine_client::ClientConfig::new(
                mon.addr.clone(),
                mon.add_key("client.map").await,
            )
            .plaintext();
            // No subscription: only an explicit fetch can bring the new pool.
            cfg.follow_map = false;
            let client = Client::connect(cfg).await.unwrap();
            let before = client.epoch();
            mon.create_pool("later", 8, 1).await;
            let p = client.pool("later").await.unwrap();
            assert_eq!(p.pg_num, 8);
            assert!(client.epoch() > before);
            assert_eq!(client.stats().map_fetches, 1);
            match client.stat("nope", "x").await {
                Err(Error::NoSuchPool { pool, .. }) => assert_eq!(pool, "\"nope\""),
                other => panic!("expected NoSuchPool, got {other:?}"),
            }
            match client.list_pg("later", 8, &[], 10).await {
                Err(Error::Protocol(_)) => {}
                other => panic!("a PG beyond pg_num must be refused, got {other:?}"),
            }
        })
        .await
        .expect("test timed out");
    });
}

#[test]
fn an_unreachable_osd_fails_within_the_deadline() {
    let rt = runtime();
    rt.block_on(async {
        let mon = Mon::start();
        // A port nobody listens on (bound, then closed).
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        boot(&mon, "a", "h0", "127.0.0.1", vec![u32::from(port)]).await;
        mon.create_pool("p", 4, 1).await;
        let mut cfg =
            carmine_client::ClientConfig::new(mon.addr.clone(), mon.add_key("client.map").await)
                .plaintext();
        cfg.op_timeout = Duration::from_millis(1500);
        let client = Client::connect(cfg).await.unwrap();
        let t0 = Instant::now();
        let r = client.write_full("p", "obj", b"data").await;
        let took = t0.elapsed();
        assert!(
            matches!(
                r,
                Err(Error::Timeout { .. } | Error::RetriesExhausted { .. })
            ),
            "{r:?}"
        );
        assert!(took < Duration::from_secs(10), "took {took:?}");
        let s = client.stats();
        assert!(s.retries >= 1, "{s:?}");
        assert_eq!(s.connects, 0);
        assert_eq!(s.ops, 1);

        // A small retry budget ends it sooner, with the last reason.
        let mut cfg =
            carmine_client::ClientConfig::new(mon.addr.clone(), mon.add_key("client.map").await)
                .plaintext();
        cfg.retry_budget = 2;
        let client = Client::connect(cfg).await.unwrap();
        match client.read("p", "obj", 0, 10).await {
            Err(Error::RetriesExhausted { attempts, last }) => {
                assert_eq!(attempts, 3);
                assert!(last.contains(&port.to_string()), "{last}");
            }
            other => panic!("expected RetriesExhausted, got {other:?}"),
        }
        assert_eq!(client.stats().retries, 2);
    });
}

#[test]
fn an_unreachable_monitor_is_an_error() {
    let rt = runtime();
    rt.block_on(async {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut cfg = carmine_client::ClientConfig::new(
            format!("127.0.0.1:{port}, ,127.0.0.1:{port}"),
            creds(),
        )
        .plaintext();
        cfg.mon_timeout = Duration::from_secs(2);
        match Client::connect(cfg).await {
            Err(Error::Mon(carmine_client::MonError::Unreachable(why))) => {
                assert!(why.contains(&port.to_string()), "{why}")
            }
            other => panic!("expected an unreachable monitor, got {other:?}"),
        }
        let cfg = carmine_client::ClientConfig::new(" , ", creds()).plaintext();
        assert!(matches!(
            Client::connect(cfg).await,
            Err(Error::Mon(carmine_client::MonError::NoAddress))
        ));
    });
}

#[test]
fn a_follower_monitor_redirects_the_client_to_the_leader() {
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let mon = Mon::start();
            boot(&mon, "a", "h0", "127.0.0.1", vec![7000]).await;
            mon.create_pool("p", 8, 1).await;
            let follower = Follower::start(Some(mon.addr.clone()));
            // Only the follower is listed: GetMap and the subscription are redirected.
            let client = Client::connect(
                carmine_client::ClientConfig::new(
                    follower.addr.clone(),
                    mon.add_key("client.map").await,
                )
                .plaintext(),
            )
            .await
            .unwrap();
            assert_eq!(client.epoch(), mon.map().await.epoch);
            let epoch = mon.osd_out(0).await;
            assert!(client.wait_for_epoch(epoch, Duration::from_secs(10)).await);

            // A follower that knows no leader sends the client on to the next monitor listed.
            let lost = Follower::start(None);
            let client = Client::connect(
                carmine_client::ClientConfig::new(
                    format!("{},{}", lost.addr, mon.addr),
                    mon.add_key("client.map").await,
                )
                .plaintext(),
            )
            .await
            .unwrap();
            assert_eq!(client.pool("p").await.unwrap().pg_num, 8);
            assert!(client.epoch() >= epoch);
        })
        .await
        .expect("test timed out");
    });
}
