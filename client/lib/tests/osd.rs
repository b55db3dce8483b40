//! The client against real processes: a monitor (in this process) and three `carmine-osd run`
//! processes (kernel sockets, memstore, 127.0.0.1) on distinct hosts, one of them with two
//! shards. Needs the `carmine-osd` binary (see `common::osd_bin`). Each test is bounded by a
//! timeout and kills its OSDs on drop.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use carmine_client::{Client, ClientConfig, Error, OpError};
use common::{runtime, Cluster};

const LIMIT: Duration = Duration::from_secs(50);

/// Deterministic content of object `i` (not all one byte: a misplaced chunk must show).
fn content(i: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| (k as u64 * 31 + i as u64 * 7 + (k >> 12) as u64) as u8)
        .collect()
}

/// 1 B … 1 MiB.
const SIZES: [usize; 6] = [1, 100, 4096, 65_537, 300_000, 1 << 20];

#[test]
fn mixed_size_objects_roundtrip_with_stat_list_and_remove() {
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let cluster = Cluster::start("data", 32, &[1, 2, 1]).await;
            let client = Arc::new(Client::connect(cluster.config()).await.unwrap());
            let names: Vec<String> = (0..300).map(|i| format!("obj_{i}")).collect();

            // Write all 300, 16 at a time.
            let sem = Arc::new(tokio::sync::Semaphore::new(16));
            let mut set = tokio::task::JoinSet::new();
            for (i, name) in names.iter().enumerate() {
                let (client, name, sem) = (client.clone(), name.clone(), sem.clone());
                set.spawn(async move {
                    let _permit = sem.acquire_owned().await.unwrap();
                    let data = content(i, SIZES[i % SIZES.len()]);
                    client.write_full("data", &name, &data).await
                });
            }
            while let Some(r) = set.join_next().await {
                r.unwrap().unwrap();
            }
            // Every (OSD, shard) that owns one of the objects got a connection of its own.
            let targets: BTreeSet<(u32, u32)> = names
                .iter()
                .map(|n| {
                    let t = client.locate("data", n).unwrap();
                    (t.osd, t.shard)
                })
                .collect();
            assert!(targets.len() >= 4, "{targets:?}");
            assert_eq!(client.stats().connects, targets.len() as u64);

            // Read back, verified; stat.
            for (i, name) in names.iter().enumerate() {
                let len = SIZES[i % SIZES.len()];
                let got = client.read("data", name, 0, len as u32 + 10).await.unwrap();
                assert!(got == content(i, len), "{name}: content differs");
                assert_eq!(client.stat("data", name).await.unwrap(), len as u64);
            }
            // A write at an offset past the end (obj_0 is 1 byte): the object grows, the
            // hole reads as zeros.
            client.write("data", "obj_0", 10, b"tail").await.unwrap();
            assert_eq!(client.stat("data", "obj_0").await.unwrap(), 14);
            let r = client.read("data", "obj_0", 0, 100).await.unwrap();
            assert_eq!(r.len(), 14);
            assert_eq!(r[0], content(0, 1)[0]);
            assert_eq!(&r[1..10], &[0u8; 9]);
            assert_eq!(&r[10..], b"tail");

            // The pool listing is exactly what was written; one PG paged 3 at a time agrees.
            let listed: BTreeSet<String> = client.list("data").await.unwrap().into_iter().collect();
            assert_eq!(listed, names.iter().cloned().collect());
            let pg = client.locate("data", "obj_0").unwrap().pg;
            let in_pg: BTreeSet<String> = names
                .iter()
                .filter(|n| client.locate("data", n).unwrap().pg == pg)
                .cloned()
                .collect();
            let mut paged = BTreeSet::new();
            let mut cursor = Vec::new();
            for _ in 0..1000 {
                let page = client.list_pg("data", pg, &cursor, 3).await.unwrap();
                assert!(page.names.len() <= 3);
                paged.extend(page.names);
                match page.next_cursor {
                    Some(c) => cursor = c,
                    None => break,
                }
            }
            assert_eq!(paged, in_pg);

            // Remove a third; they are gone, the rest is intact.
            for name in names.iter().step_by(3) {
                client.remove("data", name).await.unwrap();
            }
            for (i, name) in names.iter().enumerate() {
                let r = client.stat("data", name).await;
                if i % 3 == 0 {
                    assert!(
                        matches!(r, Err(Error::Op(OpError::NotFound))),
                        "{name}: {r:?}"
                    );
                } else {
                    r.unwrap();
                }
            }
            assert_eq!(client.list("data").await.unwrap().len(), 200);
            let s = client.stats();
            assert_eq!(s.reconnects, 0, "{s:?}");
        })
        .await
        .expect("test timed out");
    });
}

#[test]
fn a_stale_client_refreshes_its_map_and_retries() {
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let cluster = Cluster::start("data", 32, &[1, 1, 1]).await;
            // No subscription: the client keeps the map it fetched until an OSD says it is old.
            let mut cfg: ClientConfig = cluster.config();
            cfg.follow_map = false;
            let stale = Client::connect(cfg).await.unwrap();
            let old_epoch = stale.epoch();
            let victim = stale.locate("data", "s_0").unwrap().osd;
            // Objects that the stale map sends to the victim.
            let names: Vec<String> = (0..500)
                .map(|i| format!("s_{i}"))
                .filter(|n| stale.locate("data", n).unwrap().osd == victim)
                .take(20)
                .collect();
            assert!(!names.is_empty());

            let epoch = cluster.mon.osd_out(victim).await;
            let ids: Vec<u32> = cluster.osds.iter().map(|o| o.id).collect();
            cluster.mon.wait_osds_at(&ids, epoch).await;
            assert_eq!(
                stale.epoch(),
                old_epoch,
                "the client must still be stale here"
            );

            for (i, n) in names.iter().enumerate() {
                stale
                    .write_full("data", n, &content(i, 1000))
                    .await
                    .unwrap();
            }
            let s = stale.stats();
            assert!(s.stale_map_retries >= 1, "{s:?}");
            assert!(s.map_fetches >= 1, "{s:?}");
            assert!(stale.epoch() >= epoch);
            for n in &names {
                assert_ne!(stale.locate("data", n).unwrap().osd, victim);
            }
            // A fresh client reads what the formerly stale one wrote.
            let fresh = Client::connect(cluster.config()).await.unwrap();
            for (i, n) in names.iter().enumerate() {
                assert_eq!(
                    fresh.read("data", n, 0, 2000).await.unwrap(),
                    content(i, 1000)
                );
            }
        })
        .await
        .expect("test timed out");
    });
}

#[test]
fn a_killed_osd_connection_is_reestablished() {
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let mut cluster = Cluster::start("data", 32, &[1, 1, 1]).await;
            // Two copies: the OSD comes back empty (memstore) and the PG is recovered from the
            // other one. (With one copy the PG would rightly stay incomplete: its only copy
            // is gone.)
            cluster.mon.create_pool("rep", 32, 2).await;
            let client = Client::connect(cluster.config()).await.unwrap();
            let t = client.locate("rep", "k").unwrap();
            client.write_full("rep", "k", b"before").await.unwrap();
            assert_eq!(client.stats().connects, 1);

            // A crash and a restart: the old connection is dead, the OSD listens elsewhere
            // (port 0) and comes back empty (memstore).
            cluster.osd_mut(t.osd).restart();
            client.write_full("rep", "k", b"after").await.unwrap();
            assert_eq!(client.read("rep", "k", 0, 100).await.unwrap(), b"after");
            let s = client.stats();
            assert!(s.reconnects >= 1, "{s:?}");
            let t2 = client.locate("rep", "k").unwrap();
            assert_eq!(t2.osd, t.osd);

            // write_full replaces the whole object: shorter, empty, then longer again.
            for data in [&b"x"[..], b"", b"a longer object than before"] {
                client.write_full("rep", "k", data).await.unwrap();
                assert_eq!(client.stat("rep", "k").await.unwrap(), data.len() as u64);
                assert_eq!(client.read("rep", "k", 0, 100).await.unwrap(), data);
            }
        })
        .await
        .expect("test timed out");
    });
}

#[test]
fn a_wrong_key_is_refused_by_the_monitor_before_any_osd() {
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let cluster = Cluster::start("data", 8, &[1, 1, 1]).await;
            let mut creds = cluster.creds.clone();
            let mut key = [0u8; 32];
            key[0] = 1;
            creds.key = carmine_client::AuthKey::new(key);
            // The map is the first thing a client needs, and the monitor checks the key for
            // it (an OSD refuses a wrong key too: e2e.rs of carmine-osd).
            match Client::connect(ClientConfig::new(cluster.mon.addr.clone(), creds).plaintext())
                .await
            {
                Err(Error::Mon(carmine_client::MonError::Refused(why))) => {
                    assert!(why.contains("credential refused"), "{why}")
                }
                Err(e) => panic!("expected the monitor's refusal, got {e:?}"),
                Ok(_) => panic!("a wrong key got the map"),
            }
            // The right key still works on the same cluster.
            let good = Client::connect(cluster.config()).await.unwrap();
            good.write_full("data", "x", b"ok").await.unwrap();
        })
        .await
        .expect("test timed out");
    });
}

#[test]
fn a_removed_key_is_refused_by_the_osds_after_the_keyring_grace() {
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let cluster = Cluster::start("data", 8, &[1, 1, 1]).await;
            let creds = cluster.mon.add_key("client.gone").await;
            let client =
                Client::connect(ClientConfig::new(cluster.mon.addr.clone(), creds).plaintext())
                    .await
                    .unwrap();
            // The OSDs learn a new key with their next keyring refresh: retried until then.
            client.write_full("data", "x", b"before").await.unwrap();
            cluster
                .mon
                .admin()
                .await
                .auth_rm(common::authed(carmine_proto::v1::AuthIdRequest {
                    id: "client.gone".into(),
                    ..Default::default()
                }))
                .await
                .unwrap();
            // Its sessions end and new ones are refused: the OSD's refusal is retried while a
            // key could still be on its way, then given up.
            let t0 = std::time::Instant::now();
            let mut last = None;
            while t0.elapsed() < Duration::from_secs(20) {
                match client.write_full("data", "x", b"after").await {
                    Ok(()) => tokio::time::sleep(Duration::from_millis(200)).await,
                    Err(e) => {
                        last = Some(e);
                        break;
                    }
                }
            }
            match last {
                Some(Error::Auth { osd, .. }) => {
                    assert_eq!(osd, client.locate("data", "x").unwrap().osd)
                }
                other => panic!("expected the OSD's refusal, got {other:?}"),
            }
            assert!(client.stats().retries >= 1);
            // Another key still works (writes of the removed key until the OSDs learnt of the
            // removal went through: either value).
            let good = Client::connect(cluster.config()).await.unwrap();
            let got = good.read("data", "x", 0, 100).await.unwrap();
            assert!(got == b"before" || got == b"after", "{got:?}");
        })
        .await
        .expect("test timed out");
    });
}
