//! High availability: a 3-member etcd cluster and 2 monitors on loopback. The follower answers
//! every call (admin and OSD services, the map subscription included) with a redirect naming
//! the leader, which the CLI follows. Kill the leader monitor; the other is elected and serves
//! within a bounded time with every epoch intact, and the next change makes the next epoch
//! (none lost, none duplicated).
//!
//! Needs Debian's `etcd-server` (`/usr/bin/etcd`, listed in ci/apt-packages).

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use carmine_proto::v1;
use clap::Parser;
use common::{admin, authed, cluster, create_pools, runtime, wait_for, MonProc};
use prost::Message;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The etcd members, killed on drop.
struct Etcd {
    members: Vec<Child>,
    pub endpoints: Vec<String>,
}

impl Etcd {
    fn start(dir: &Path) -> Etcd {
        let bin = std::env::var("CARMINE_ETCD_BIN").unwrap_or_else(|_| "/usr/bin/etcd".into());
        assert!(
            Path::new(&bin).exists(),
            "{bin} not found: install Debian's etcd-server (ci/apt-packages lists it)"
        );
        let peers: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let clients: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let cluster: Vec<String> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}=http://127.0.0.1:{p}"))
            .collect();
        let cluster = cluster.join(",");
        let mut members = Vec::new();
        for i in 0..3 {
            let child = Command::new(&bin)
                .arg("--name")
                .arg(format!("m{i}"))
                .arg("--data-dir")
                .arg(dir.join(format!("m{i}")))
                .arg("--listen-peer-urls")
                .arg(format!("http://127.0.0.1:{}", peers[i]))
                .arg("--initial-advertise-peer-urls")
                .arg(format!("http://127.0.0.1:{}", peers[i]))
                .arg("--listen-client-urls")
                .arg(format!("http://127.0.0.1:{}", clients[i]))
                .arg("--advertise-client-urls")
                .arg(format!("http://127.0.0.1:{}", clients[i]))
                .arg("--initial-cluster")
                .arg(&cluster)
                .args([
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "carmine-test",
                ])
                .args(["--logger", "zap", "--log-level", "error"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn etcd");
            members.push(child);
        }
        Etcd {
            members,
            endpoints: clients
                .iter()
                .map(|p| format!("http://127.0.0.1:{p}"))
                .collect(),
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.members {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn leader_mon_killed_other_takes_over_without_losing_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let rt = runtime();
    // The etcd cluster is up once a write through it succeeds.
    let ready = rt.block_on(wait_for(Duration::from_secs(30), || {
        let eps = etcd.endpoints.clone();
        async move {
            let mut c = etcd_client::Client::connect(eps, None).await.ok()?;
            c.put("/carmine-test-probe", "1", None)
                .await
                .ok()
                .map(|_| ())
        }
    }));
    assert!(ready.is_some(), "etcd cluster did not come up");

    let endpoints = etcd.endpoints.join(",");
    let ports = [free_port(), free_port()];
    let listen: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let flags = |i: usize| -> Vec<String> {
        vec![
            "--listen".into(),
            listen[i].clone(),
            "--etcd".into(),
            endpoints.clone(),
            "--etcd-prefix".into(),
            "/carmine-ha-test".into(),
            "--etcd-lease-secs".into(),
            "2".into(),
            // Long enough that the agent never misses it while monitors change hands, so the
            // epoch counts below are exact.
            "--down-grace-ms".into(),
            "30000".into(),
        ]
    };
    let f0 = flags(0);
    let f0: Vec<&str> = f0.iter().map(String::as_str).collect();
    let (mon0, rx0) = MonProc::spawn(&dir.path().join("mon0"), &f0);
    let addr0 = rx0
        .recv_timeout(Duration::from_secs(20))
        .expect("first monitor never led");
    assert_eq!(addr0, listen[0]);
    let f1 = flags(1);
    let f1: Vec<&str> = f1.iter().map(String::as_str).collect();
    let (mut mon1, rx1) = MonProc::spawn(&dir.path().join("mon1"), &f1);

    let start_agent = |mon_addr: String, uuid: &str, host: &str| {
        let credential = Some(common::osd_credential(&mon_addr, uuid));
        carmine_agent::Agent::start(
            carmine_agent::AgentConfig {
                mon_addr,
                uuid: uuid.into(),
                host: host.into(),
                public_addr: "127.0.0.1:6800".into(),
                cluster_addr: "127.0.0.1:6801".into(),
                shard_ports: vec![6800],
                weight: 1.0,
                admin_listen: "127.0.0.1:0".parse().unwrap(),
                metrics_listen: None,
                credential,
                client_tls: carmine_proto::tls::ClientTls::Plaintext,
                admin_tls: carmine_proto::tls::ServerTls::Plaintext,
            },
            Vec::new(),
            std::sync::Arc::new(NoStats),
            std::sync::Arc::new(carmine_agent::MemConfig::default()),
            std::sync::Arc::new(carmine_agent::SharedKeyring::new()),
        )
        .unwrap()
    };
    // An OSD agent that knows both monitors follows whichever leads.
    let agent = start_agent(listen.join(","), "uuid-ha", "hostA");
    let booted = rt.block_on(wait_for(Duration::from_secs(15), || async {
        (agent.status().map_epoch() >= 2).then_some(())
    }));
    assert!(booted.is_some(), "agent never booted through the leader");

    // The follower listens too, and redirects every call to the leader without executing it.
    let url1 = format!("http://{}", listen[1]);
    let redirect = rt.block_on(wait_for(Duration::from_secs(15), || async {
        let mut a = tonic::transport::Channel::from_shared(url1.clone())
            .ok()?
            .connect()
            .await
            .map(v1::mon_admin_client::MonAdminClient::new)
            .ok()?;
        let e = a.status(authed(v1::Empty {})).await.err()?;
        carmine_proto::leader_redirect(&e).map(|leader| (e, leader))
    }));
    let (status, leader) = redirect.expect("the follower never answered with a redirect");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(leader, addr0, "the redirect must name the leader");
    rt.block_on(async {
        let mut a = admin(&url1).await;
        // The credential is still checked first.
        let e = a.status(v1::Empty {}).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        // A write is redirected, not executed.
        let e = a
            .pool_create(authed(v1::PoolCreateRequest {
                name: "on-follower".into(),
                pg_num: 8,
                size: 1,
                min_size: 1,
            }))
            .await
            .unwrap_err();
        assert_eq!(carmine_proto::leader_redirect(&e).as_deref(), Some(&*addr0));
        // The OSD service too, the map subscription included.
        let mut c = cluster(&url1).await;
        let e = c
            .subscribe(v1::SubscribeRequest { have_epoch: 0 })
            .await
            .expect_err("a follower must not stream maps");
        assert_eq!(carmine_proto::leader_redirect(&e).as_deref(), Some(&*addr0));
        let e = c
            .heartbeat(v1::HeartbeatRequest::default())
            .await
            .unwrap_err();
        assert_eq!(carmine_proto::leader_redirect(&e).as_deref(), Some(&*addr0));
    });
    // The CLI given only the follower gets its answers through the redirect (a write and a
    // read), each executed once by the leader.
    let carmine = |args: &[&str]| -> Result<String, carmine_cli::CliError> {
        let mut argv = vec!["carmine", "--plaintext", "--token", common::TOKEN];
        argv.extend_from_slice(args);
        let cli = carmine_cli::Cli::try_parse_from(argv).expect("cli arguments");
        rt.block_on(carmine_cli::run(cli))
    };
    let out = carmine(&[
        "--mon",
        &listen[1],
        "pool",
        "create",
        "via-follower",
        "--pg-num",
        "8",
        "--size",
        "1",
    ])
    .expect("pool create through the follower");
    println!("carmine --mon <follower> pool create: {out}");
    let out = carmine(&["--mon", &listen[1], "--format", "json", "status"])
        .expect("status through the follower");
    let st: serde_json::Value = serde_json::from_str(&out).expect("status json");
    // 1: the empty map, 2: the agent's OSD boots, 3: the pool created through the follower.
    assert_eq!(st["epoch"], 3, "{out}");
    assert_eq!(st["pools"], 1, "{out}");
    // Both monitors campaign: status lists them, the leader first (the list is re-read from
    // etcd every 2 s).
    let mut mons = serde_json::Value::Null;
    for _ in 0..40 {
        let out = carmine(&["--mon", &listen[1], "--format", "json", "status"])
            .expect("status through the follower");
        let st: serde_json::Value = serde_json::from_str(&out).expect("status json");
        mons = st["monitors"].clone();
        if mons.as_array().is_some_and(|m| m.len() == 2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        mons,
        serde_json::json!([
            {"addr": listen[0], "leader": true},
            {"addr": listen[1], "leader": false},
        ]),
        "status lists both monitors, the leader first"
    );
    // An agent given only the follower boots through the redirect.
    let agent2 = start_agent(listen[1].clone(), "uuid-ha-2", "hostB");
    let booted2 = rt.block_on(wait_for(Duration::from_secs(15), || async {
        (agent2.status().map_epoch() >= 4).then_some(())
    }));
    assert!(
        booted2.is_some(),
        "an agent given only the follower never booted (epoch {})",
        agent2.status().map_epoch()
    );
    // Each OSD got a key of its own from the leader (the keyring in etcd).
    let (osd_name, osd_key) = agent.identity().expect("the first agent has an identity");
    let id1 = agent.status().osd_id().expect("booted");
    assert_eq!(osd_name, format!("osd.{id1}"));
    let (_, osd2_key) = agent2.identity().expect("the second agent has an identity");
    assert_ne!(osd_key, osd2_key, "two OSDs hold the same key");

    // Changes through the leader; remember every epoch's map as encoded.
    let url0 = format!("http://{addr0}");
    let (maps, client_key) = rt.block_on(async {
        let mut a = admin(&url0).await;
        create_pools(&mut a, "p", 0..3).await;
        // A client key: the keyring lives in etcd beside the maps.
        let key = a
            .auth_add(authed(v1::AuthIdRequest {
                id: "client.ha".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        let cur = a
            .get_map(authed(v1::GetMapRequest { epoch: 0 }))
            .await
            .unwrap()
            .into_inner();
        // 1: the empty map, 2: the agent's OSD boots, 3: via-follower, 4: the second agent's
        // OSD boots (through the redirect), 5-7: the pools.
        assert_eq!(cur.epoch, 7);
        let mut maps = Vec::new();
        for e in 1..=cur.epoch {
            let m = a
                .get_map(authed(v1::GetMapRequest { epoch: e }))
                .await
                .unwrap()
                .into_inner();
            maps.push(m.encode_to_vec());
        }
        (maps, key)
    });
    // The follower does not serve while the leader lives, and keeps campaigning for longer
    // than any etcd request timeout (it once gave up, and exited, after 5 s).
    match rx1.recv_timeout(Duration::from_secs(7)) {
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        Ok(a) => panic!("two leaders at once: {a}"),
        Err(e) => panic!("the standby monitor stopped while the leader lived: {e}"),
    }

    mon0.kill();
    let t0 = Instant::now();
    let addr1 = rx1
        .recv_timeout(Duration::from_secs(20))
        .expect("the second monitor never took over");
    let took = t0.elapsed();
    println!("second monitor serving {took:?} after the leader was killed (lease 2 s)");
    assert_eq!(addr1, listen[1]);
    assert!(took < Duration::from_secs(15), "takeover took {took:?}");

    assert_eq!(format!("http://{addr1}"), url1);
    rt.block_on(async {
        let mut a = admin(&url1).await;
        let cur = a
            .get_map(authed(v1::GetMapRequest { epoch: 0 }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            cur.epoch,
            maps.len() as u64,
            "an epoch was lost or invented"
        );
        for (i, want) in maps.iter().enumerate() {
            let e = i as u64 + 1;
            let m = a
                .get_map(authed(v1::GetMapRequest { epoch: e }))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                &m.encode_to_vec(),
                want,
                "epoch {e} differs on the new leader"
            );
        }
        let p = a
            .pool_create(authed(v1::PoolCreateRequest {
                name: "after".into(),
                pg_num: 8,
                size: 1,
                min_size: 1,
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            p.epoch,
            cur.epoch + 1,
            "the next change must make the next epoch"
        );
        assert_eq!(p.id, 4, "pool ids continue");
        // The keyring came over too, version included.
        let k = a
            .auth_get(authed(v1::AuthIdRequest {
                id: "client.ha".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(k.key, client_key.key);
        assert_eq!(k.keyring_version, client_key.keyring_version);
        // The OSD keys came over too, with their role.
        let k = a
            .auth_get(authed(v1::AuthIdRequest {
                id: osd_name.clone(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        // The agent holds its data-path key; the keyring its secret.
        assert_eq!(
            carmine_wire::AuthKey::new(carmine_proto::auth::data_path_key(
                k.key.as_slice().try_into().unwrap()
            )),
            osd_key
        );
        assert_eq!((k.role(), k.osd_id), (v1::KeyRole::Osd, id1));
    });
    // The CLI given the whole list skips the dead monitor and reaches the new leader.
    let both = listen.join(",");
    let out = carmine(&["--mon", &both, "--format", "json", "status"])
        .expect("status through the monitor list after the takeover");
    let st: serde_json::Value = serde_json::from_str(&out).expect("status json");
    assert_eq!(st["epoch"], maps.len() as u64 + 1, "{out}");
    // The agent found the new leader and has the newest map.
    let followed = rt.block_on(wait_for(Duration::from_secs(15), || async {
        (agent.status().map_epoch() == maps.len() as u64 + 1).then_some(())
    }));
    assert!(
        followed.is_some(),
        "agent at epoch {}",
        agent.status().map_epoch()
    );
    // It booted again at the new leader, which gave it the same key.
    assert!(agent.status().boots() >= 2, "{}", agent.status().boots());
    assert_eq!(agent.identity(), Some((osd_name.clone(), osd_key.clone())));

    // A leader that stalls (SIGSTOP) loses its lease; a restarted monitor takes over. When the
    // stalled one resumes, its writes are fenced off and it stops by itself.
    let last = maps.len() as u64 + 1;
    let (_mon0b, rx0b) = MonProc::spawn(&dir.path().join("mon0b"), &f0);
    assert!(
        rx0b.recv_timeout(Duration::from_millis(500)).is_err(),
        "two leaders at once"
    );
    // A client already connected to the leader sends a write while it is stalled.
    let mut stale_client = rt.block_on(admin(&url1));
    mon1.pause(true);
    let addr0b = rx0b
        .recv_timeout(Duration::from_secs(20))
        .expect("the restarted monitor never took over from the stalled one");
    let stale = rt.spawn(async move {
        stale_client
            .pool_create(authed(v1::PoolCreateRequest {
                name: "stale".into(),
                pg_num: 8,
                size: 1,
                min_size: 1,
            }))
            .await
    });
    std::thread::sleep(Duration::from_millis(200));
    mon1.pause(false);
    // Either the fenced commit refuses it, or the monitor notices the lost lease first and
    // stops: in both cases the write must not be acknowledged.
    let stale = rt.block_on(stale).unwrap();
    println!("write sent to the deposed leader: {stale:?}");
    assert!(
        stale.is_err(),
        "a deposed leader accepted a write: {stale:?}"
    );
    let exit = mon1
        .wait_exit(Duration::from_secs(15))
        .expect("deposed monitor kept running");
    assert!(!exit.success(), "a deposed monitor exits with an error");
    rt.block_on(async {
        let mut a = admin(&format!("http://{addr0b}")).await;
        let cur = a
            .get_map(authed(v1::GetMapRequest { epoch: 0 }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(cur.epoch, last, "the deposed leader changed the epoch");
        assert!(cur.pools.iter().all(|p| p.name != "stale"));
        let p = a
            .pool_create(authed(v1::PoolCreateRequest {
                name: "third-leader".into(),
                pg_num: 8,
                size: 1,
                min_size: 1,
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(p.epoch, last + 1);
    });
    drop(agent);
    drop(agent2);

    // The fence itself, deterministically: a store that won an election under another prefix
    // cannot commit over an epoch someone else wrote, nor once its election key is gone.
    rt.block_on(async {
        let eps = etcd.endpoints.clone();
        tokio::spawn(async move {
            let l = carmine_mon::ha::campaign(&eps, "/fence-test", 2, "127.0.0.1:1")
                .await
                .unwrap();
            let first = carmine_placement::ClusterMap {
                epoch: 1,
                ..Default::default()
            };
            l.store.commit(&first, 10).unwrap();
            let second = carmine_placement::ClusterMap {
                epoch: 2,
                next_pool_id: 1,
                ..Default::default()
            };
            let mut c = etcd_client::Client::connect(eps, None).await.unwrap();
            c.put("/fence-test/epoch", "2", None).await.unwrap(); // another writer moved on
            let e = l.store.commit(&second, 10).unwrap_err();
            assert!(
                matches!(e, carmine_mon::store::StoreError::Fenced(2)),
                "{e}"
            );
            c.put("/fence-test/epoch", "1", None).await.unwrap();
            l.store.commit(&second, 10).unwrap();
            // Leadership gone (its election key deleted, as when the lease expires).
            c.delete(
                "/fence-test/leader",
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await
            .unwrap();
            let third = carmine_placement::ClusterMap {
                epoch: 3,
                ..Default::default()
            };
            let e = l.store.commit(&third, 10).unwrap_err();
            assert!(
                matches!(e, carmine_mon::store::StoreError::Fenced(3)),
                "{e}"
            );
            let maps = l.store.load().unwrap();
            assert_eq!(maps.iter().map(|m| m.epoch).collect::<Vec<_>>(), [1, 2]);
        })
        .await
        .unwrap();
    });

    // OSD keys on the etcd store: the scenario the redb store runs (tests/osd_keys.rs), then a
    // new leader (the first one's election key deleted, as when its lease expires) loads them.
    rt.block_on(async {
        let eps = etcd.endpoints.clone();
        tokio::spawn(async move {
            let prefix = "/osd-keys-test";
            let open = |l: carmine_mon::ha::Leadership| {
                carmine_mon::state::Monitor::open(
                    carmine_mon::store::Backend::Etcd(Box::new(l.store)),
                    common::test_policy(),
                )
                .unwrap()
            };
            let l = carmine_mon::ha::campaign(&eps, prefix, 2, "127.0.0.1:1")
                .await
                .unwrap();
            let mut m = open(l);
            // The cluster fsid, made with the store, is in etcd like the maps.
            let fsid = m.map().fsid.clone();
            assert_eq!(fsid.len(), 36, "{fsid}");
            let (id, key) = common::osd_keys_scenario(&mut m);
            drop(m);
            let mut c = etcd_client::Client::connect(eps.clone(), None)
                .await
                .unwrap();
            c.delete(
                format!("{prefix}/leader"),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await
            .unwrap();
            let l = carmine_mon::ha::campaign(&eps, prefix, 2, "127.0.0.1:2")
                .await
                .unwrap();
            let mut m = open(l);
            assert_eq!(m.map().fsid, fsid, "a new leader keeps the cluster fsid");
            common::osd_key_kept_after_reopen(&mut m, id, key);
        })
        .await
        .unwrap();
    });

    // PG history on the etcd store: the redb scenario (tests/pg_history.rs), a new leader
    // loads it, the pool's removal deletes its keys, and a deposed leader cannot write it.
    rt.block_on(async {
        let eps = etcd.endpoints.clone();
        tokio::spawn(async move {
            let prefix = "/pg-history-test";
            let open = |l: carmine_mon::ha::Leadership| {
                carmine_mon::state::Monitor::open(
                    carmine_mon::store::Backend::Etcd(Box::new(l.store)),
                    common::test_policy(),
                )
                .unwrap()
            };
            let mut c = etcd_client::Client::connect(eps.clone(), None)
                .await
                .unwrap();
            let depose = |mut c: etcd_client::Client| async move {
                c.delete(
                    format!("{prefix}/leader"),
                    Some(etcd_client::DeleteOptions::new().with_prefix()),
                )
                .await
                .unwrap();
            };
            let l = carmine_mon::ha::campaign(&eps, prefix, 2, "127.0.0.1:1")
                .await
                .unwrap();
            let mut m = open(l);
            let s = common::pg_history_scenario(&mut m);
            drop(m);
            depose(c.clone()).await;
            let l = carmine_mon::ha::campaign(&eps, prefix, 2, "127.0.0.1:2")
                .await
                .unwrap();
            let mut m = open(l);
            common::pg_history_kept_after_reopen(&mut m, s);
            let keys = c
                .get(
                    format!("{prefix}/pg_history/"),
                    Some(
                        etcd_client::GetOptions::new()
                            .with_prefix()
                            .with_count_only(),
                    ),
                )
                .await
                .unwrap()
                .count();
            assert_eq!(keys, 0, "pool rm left pg history keys in etcd");
            // Deposed: a history write is refused, and memory is unchanged.
            let (pool, epoch) = m.pool_create("after", 8, 1, 1).unwrap();
            let osd = m.map().osds.keys().next().copied().unwrap();
            depose(c.clone()).await;
            let iv = v1::PgInterval {
                pool,
                pg: 0,
                since: epoch,
                acting: vec![osd],
            };
            let e = m.record_intervals(osd, &[iv]).unwrap_err();
            assert!(e.to_string().contains("no longer the leader"), "{e}");
            assert_eq!(m.pg_history(pool, 0).unwrap(), []);
        })
        .await
        .unwrap();
    });
}

struct NoStats;

impl carmine_agent::Stats for NoStats {
    fn counters(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
}
