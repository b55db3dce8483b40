//! Every credential against every door it must not open, on a real `carmine-mon` process and a
//! real OSD agent (its admin service), and that the doors it may open still work: a client key
//! fetches maps and nothing else; an OSD key acts as that OSD only; only admins reach
//! `MonAdmin`, the keys and the OSDs' admin calls; secrets never reach an OSD; a removed key's
//! subscription ends; a monitor without credentials refuses to start unless `--insecure`, and
//! then warns.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use carmine_agent::{Agent, AgentConfig, MemConfig, OsdCredential, SharedKeyring, Stats};
use carmine_proto::auth::{data_path_key, key_bearer};
use carmine_proto::v1::{
    self, mon_admin_client::MonAdminClient, mon_cluster_client::MonClusterClient,
    osd_admin_client::OsdAdminClient,
};
use common::{authed, channel, runtime, wait_for, MonProc, TOKEN};
use tokio_stream::StreamExt;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Code, Request};

struct NoStats;

impl Stats for NoStats {
    fn counters(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
}

fn start_agent(mon: &str, uuid: &str, credential: OsdCredential) -> Agent {
    Agent::start(
        AgentConfig {
            mon_addr: mon.into(),
            uuid: uuid.into(),
            host: format!("host-{uuid}"),
            public_addr: "127.0.0.1".into(),
            cluster_addr: "127.0.0.1".into(),
            shard_ports: vec![6800],
            weight: 1.0,
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: None,
            credential: Some(credential),
            client_tls: carmine_proto::tls::ClientTls::Plaintext,
            admin_tls: carmine_proto::tls::ServerTls::Plaintext,
        },
        Vec::new(),
        Arc::new(NoStats),
        Arc::new(MemConfig::default()),
        Arc::new(SharedKeyring::new()),
    )
    .unwrap()
}

/// `msg` carrying `bearer` (none: no credential at all).
fn with<T>(bearer: &Option<MetadataValue<Ascii>>, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(b) = bearer {
        r.metadata_mut()
            .insert(carmine_proto::AUTH_HEADER, b.clone());
    }
    r
}

fn token(t: &str) -> Option<MetadataValue<Ascii>> {
    Some(carmine_proto::bearer(t).unwrap())
}

fn key(id: &str, proof: &[u8]) -> Option<MetadataValue<Ascii>> {
    Some(key_bearer(id, proof.try_into().unwrap()).unwrap())
}

/// The code of a refused call (`Ok` is a failure of the test, naming `what`).
fn refused<T: std::fmt::Debug>(what: &str, r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(r) => panic!("{what}: allowed ({:?})", r.into_inner()),
        Err(s) => {
            println!("{what}: {:?} {}", s.code(), s.message());
            s.code()
        }
    }
}

fn denied(what: &str, code: Code) {
    assert!(
        matches!(code, Code::PermissionDenied | Code::Unauthenticated),
        "{what}: refused with {code:?}, not as a credential problem"
    );
}

#[test]
fn every_credential_reaches_only_its_own_doors() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mon = MonProc::start(dir.path(), &["--heartbeat-ms", "200"]);
    let url = mon.url();
    let cred_a = common::osd_credential(&mon.addr, "uuid-a");
    let cred_b = common::osd_credential(&mon.addr, "uuid-b");
    let id_a: u32 = cred_a.id.trim_start_matches("osd.").parse().unwrap();
    let id_b: u32 = cred_b.id.trim_start_matches("osd.").parse().unwrap();
    assert_ne!(id_a, id_b);
    let agent_a = start_agent(&mon.addr, "uuid-a", cred_a.clone());
    let agent_b = start_agent(&mon.addr, "uuid-b", cred_b.clone());
    let limit = Duration::from_secs(15);

    rt.block_on(async {
        let mut admin = MonAdminClient::new(channel(&url).await);
        let client = admin
            .auth_add(authed(v1::AuthIdRequest {
                id: "client.c".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        let ops = admin
            .auth_add(authed(v1::AuthIdRequest {
                id: "client.ops".into(),
                role: v1::KeyRole::Admin.into(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ops.role(), v1::KeyRole::Admin);
        // Both OSDs up: the map and the keyring hold them.
        wait_for(limit, || async {
            let m = MonAdminClient::new(channel(&url).await)
                .get_map(authed(v1::GetMapRequest { epoch: 0 }))
                .await
                .ok()?
                .into_inner();
            (m.osds.iter().filter(|o| o.up).count() == 2).then_some(())
        })
        .await
        .expect("both OSDs up");

        let none = None;
        let bad_token = token("not-the-admin-token");
        let client_k = key("client.c", &client.key);
        let osd_a = key(&cred_a.id, &cred_a.secret);
        let admin_key = key("client.ops", &ops.key);
        // What OSDs hold: a data-path key is no credential at the monitor.
        let client_dp = key(
            "client.c",
            &data_path_key(client.key.as_slice().try_into().unwrap()),
        );
        let osd_a_dp = key(&cred_a.id, &data_path_key(&cred_a.secret));
        // Another principal's id with one's own secret.
        let client_as_osd = key(&cred_b.id, &client.key);

        let mut c = MonClusterClient::new(channel(&url).await);
        let mut a = MonAdminClient::new(channel(&url).await);

        // MonAdmin: admins only.
        for (who, b) in [
            ("no credential", &none),
            ("a wrong token", &bad_token),
            ("a client key", &client_k),
            ("an OSD key", &osd_a),
            ("a client's data-path key", &client_dp),
            ("an OSD's data-path key", &osd_a_dp),
            ("a client secret under an OSD id", &client_as_osd),
        ] {
            denied(
                who,
                refused(
                    &format!("{who}: Status"),
                    a.status(with(b, v1::Empty {})).await,
                ),
            );
            denied(
                who,
                refused(
                    &format!("{who}: AuthList"),
                    a.auth_list(with(b, v1::Empty {})).await,
                ),
            );
            denied(
                who,
                refused(
                    &format!("{who}: AuthGet"),
                    a.auth_get(with(
                        b,
                        v1::AuthIdRequest {
                            id: "client.c".into(),
                            ..Default::default()
                        },
                    ))
                    .await,
                ),
            );
            denied(
                who,
                refused(
                    &format!("{who}: PoolCreate"),
                    a.pool_create(with(
                        b,
                        v1::PoolCreateRequest {
                            name: "x".into(),
                            pg_num: 8,
                            size: 1,
                            min_size: 1,
                        },
                    ))
                    .await,
                ),
            );
            denied(
                who,
                refused(
                    &format!("{who}: OsdOut"),
                    a.osd_out(with(b, v1::OsdIdRequest { id: id_b })).await,
                ),
            );
            denied(
                who,
                refused(
                    &format!("{who}: OsdNew"),
                    a.osd_new(with(
                        b,
                        v1::OsdNewRequest {
                            uuid: "uuid-evil".into(),
                        },
                    ))
                    .await,
                ),
            );
        }
        // The admin token and an admin key may.
        for b in [&token(TOKEN), &admin_key] {
            a.status(with(b, v1::Empty {})).await.unwrap();
            a.auth_list(with(b, v1::Empty {})).await.unwrap();
        }

        // MonCluster. No credential, a wrong one, a data-path key: nothing at all.
        for (who, b) in [
            ("no credential", &none),
            ("a wrong token", &bad_token),
            ("a client's data-path key", &client_dp),
            ("an OSD's data-path key", &osd_a_dp),
        ] {
            let code = refused(
                who,
                c.get_map(with(b, v1::GetMapRequest { epoch: 0 })).await,
            );
            assert_eq!(code, Code::Unauthenticated, "{who}");
        }
        // A client key: maps, and nothing else.
        c.get_map(with(&client_k, v1::GetMapRequest { epoch: 0 }))
            .await
            .unwrap();
        let mut sub = c
            .subscribe(with(&client_k, v1::SubscribeRequest { have_epoch: 0 }))
            .await
            .unwrap()
            .into_inner();
        assert!(sub.next().await.unwrap().is_ok());
        let boot = |uuid: &str, id: Option<u32>| v1::BootRequest {
            uuid: uuid.into(),
            host: "h".into(),
            shard_ports: vec![1],
            weight: 1.0,
            id: id.unwrap_or(0),
            has_id: id.is_some(),
            ..Default::default()
        };
        let hb = |id: u32, uuid: &str| v1::HeartbeatRequest {
            id,
            uuid: uuid.into(),
            ..Default::default()
        };
        let code = refused(
            "client: Boot",
            c.boot(with(&client_k, boot("uuid-evil", None))).await,
        );
        assert_eq!(code, Code::PermissionDenied);
        let code = refused(
            "client: Heartbeat",
            c.heartbeat(with(&client_k, hb(id_a, "uuid-a"))).await,
        );
        assert_eq!(code, Code::PermissionDenied);
        let code = refused(
            "client: ReportFailure",
            c.report_failure(with(
                &client_k,
                v1::FailureReport {
                    reporter: id_a,
                    target: id_b,
                    ..Default::default()
                },
            ))
            .await,
        );
        assert_eq!(code, Code::PermissionDenied);
        let code = refused(
            "client: GetKeyring",
            c.get_keyring(with(&client_k, v1::Empty {})).await,
        );
        assert_eq!(code, Code::PermissionDenied);
        let code = refused(
            "client: RecordIntervals",
            c.record_intervals(with(
                &client_k,
                v1::RecordIntervalsRequest {
                    osd: id_a,
                    intervals: vec![],
                },
            ))
            .await,
        );
        assert_eq!(code, Code::PermissionDenied);

        // An OSD key acts as that OSD only.
        let code = refused(
            "osd.a: Boot as uuid-b",
            c.boot(with(&osd_a, boot("uuid-b", None))).await,
        );
        assert_eq!(code, Code::FailedPrecondition);
        let code = refused(
            "osd.a: Boot a new uuid",
            c.boot(with(&osd_a, boot("uuid-evil", None))).await,
        );
        assert_eq!(code, Code::FailedPrecondition);
        let code = refused(
            "osd.a: Boot claiming osd.b's id",
            c.boot(with(&osd_a, boot("uuid-a", Some(id_b)))).await,
        );
        assert!(
            matches!(code, Code::FailedPrecondition | Code::PermissionDenied),
            "{code:?}"
        );
        let code = refused(
            "osd.a: Heartbeat as osd.b",
            c.heartbeat(with(&osd_a, hb(id_b, "uuid-b"))).await,
        );
        assert_eq!(code, Code::PermissionDenied);
        let code = refused(
            "osd.a: ReportFailure as osd.b",
            c.report_failure(with(
                &osd_a,
                v1::FailureReport {
                    reporter: id_b,
                    target: id_a,
                    ..Default::default()
                },
            ))
            .await,
        );
        assert_eq!(code, Code::PermissionDenied);
        let code = refused(
            "osd.a: RecordIntervals as osd.b",
            c.record_intervals(with(
                &osd_a,
                v1::RecordIntervalsRequest {
                    osd: id_b,
                    intervals: vec![],
                },
            ))
            .await,
        );
        assert_eq!(code, Code::PermissionDenied);
        // Interval records and trims only for PGs it leads in them.
        let iv = |acting: Vec<u32>| v1::PgInterval {
            pool: 0,
            pg: 0,
            since: 1,
            acting,
        };
        let code = refused(
            "osd.a: RecordIntervals of a PG osd.b leads",
            c.record_intervals(with(
                &osd_a,
                v1::RecordIntervalsRequest {
                    osd: id_a,
                    intervals: vec![iv(vec![id_b, id_a])],
                },
            ))
            .await,
        );
        assert_eq!(code, Code::PermissionDenied);
        let code = refused(
            "osd.a: TrimPgHistory of a PG osd.b leads",
            c.trim_pg_history(with(&osd_a, iv(vec![id_b, id_a]))).await,
        );
        assert_eq!(code, Code::PermissionDenied);
        // Its own heartbeat, report and the keyring it may.
        assert!(
            !c.heartbeat(with(&osd_a, hb(id_a, "uuid-a")))
                .await
                .unwrap()
                .into_inner()
                .must_boot
        );
        // The keyring holds data-path keys only, never a secret.
        let kr = c
            .get_keyring(with(&osd_a, v1::Empty {}))
            .await
            .unwrap()
            .into_inner();
        let secrets = [
            client.key.clone(),
            ops.key.clone(),
            cred_a.secret.to_vec(),
            cred_b.secret.to_vec(),
        ];
        for k in &kr.keys {
            assert!(!secrets.contains(&k.key), "{} sent as its secret", k.id);
        }
        let admin_dp = data_path_key(&carmine_proto::auth::admin_token_secret(TOKEN));
        assert!(kr
            .keys
            .iter()
            .any(|k| k.id == "client.admin" && k.key == admin_dp));

        // An OSD's admin service: admins everything, other OSDs the peer calls only, clients
        // and everyone else nothing; secrets (instead of data-path keys) are refused.
        let mut osd =
            OsdAdminClient::new(channel(&format!("http://{}", agent_a.admin_addr())).await);
        let osd_b_dp = key(&cred_b.id, &data_path_key(&cred_b.secret));
        let admin_secret_at_osd = key("client.ops", &ops.key);
        let osd_url = format!("http://{}", agent_a.admin_addr());
        wait_for(limit, || async {
            OsdAdminClient::new(channel(&osd_url).await)
                .status(with(
                    &key(
                        "client.ops",
                        &data_path_key(ops.key.as_slice().try_into().unwrap()),
                    ),
                    v1::Empty {},
                ))
                .await
                .ok()
        })
        .await
        .expect("the admin key reaches the OSD's admin service");
        for (who, b) in [
            ("no credential", &none),
            ("the admin token itself", &token(TOKEN)),
            ("an admin secret", &admin_secret_at_osd),
            ("a client's data-path key", &client_dp),
            ("another OSD's data-path key", &osd_b_dp),
        ] {
            denied(
                who,
                refused(
                    &format!("{who}: OSD Status"),
                    osd.status(with(b, v1::Empty {})).await,
                ),
            );
            denied(
                who,
                refused(
                    &format!("{who}: OSD ConfigSet"),
                    osd.config_set(with(
                        b,
                        v1::ConfigSetRequest {
                            key: "x".into(),
                            value: "y".into(),
                        },
                    ))
                    .await,
                ),
            );
            denied(
                who,
                refused(
                    &format!("{who}: OSD ScrubPg"),
                    osd.scrub_pg(with(b, v1::ScrubPgRequest { pool: 0, pg: 0 }))
                        .await,
                ),
            );
        }
        // A peer OSD may ask for a digest (its credential passes; this agent keeps no objects).
        let r = osd
            .pg_digest(with(
                &osd_b_dp,
                v1::PgDigestRequest {
                    pool: 0,
                    pg: 0,
                    objects: vec![],
                },
            ))
            .await;
        if let Err(s) = &r {
            assert!(
                !matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated),
                "{s:?}"
            );
        }
        // A client may not.
        denied(
            "client: PgDigest",
            refused(
                "client: PgDigest",
                osd.pg_digest(with(
                    &client_dp,
                    v1::PgDigestRequest {
                        pool: 0,
                        pg: 0,
                        objects: vec![],
                    },
                ))
                .await,
            ),
        );
        // A prepare in another primary's name is refused even to a peer.
        let code = refused(
            "osd.b: PgPrepare as osd.a's primary",
            osd.pg_prepare(with(
                &osd_b_dp,
                v1::PgPrepareRequest {
                    primary: id_a,
                    ..Default::default()
                },
            ))
            .await,
        );
        assert_eq!(code, Code::PermissionDenied);
        // So is a push to another OSD than the asking one.
        let code = refused(
            "osd.b: PgPush to osd.a",
            osd.pg_push(with(
                &osd_b_dp,
                v1::PgPushRequest {
                    target: id_a,
                    ..Default::default()
                },
            ))
            .await,
        );
        assert_eq!(code, Code::PermissionDenied);

        // A removed key: refused from then on, and its map stream ends at the next epoch.
        admin
            .auth_rm(authed(v1::AuthIdRequest {
                id: "client.c".into(),
                ..Default::default()
            }))
            .await
            .unwrap();
        let code = refused(
            "removed client: GetMap",
            c.get_map(with(&client_k, v1::GetMapRequest { epoch: 0 }))
                .await,
        );
        assert_eq!(code, Code::Unauthenticated);
        admin
            .pool_create(authed(v1::PoolCreateRequest {
                name: "next".into(),
                pg_num: 8,
                size: 1,
                min_size: 1,
            }))
            .await
            .unwrap();
        let end = tokio::time::timeout(limit, async {
            loop {
                match sub.next().await {
                    Some(Ok(_)) => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("the removed key's subscription went on");
        match end {
            Some(Err(s)) => assert_eq!(s.code(), Code::Unauthenticated, "{s:?}"),
            other => panic!("expected the stream to end with the refusal, got {other:?}"),
        }
    });
    drop(agent_a);
    drop(agent_b);
}

#[test]
fn a_monitor_without_credentials_refuses_to_start_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_carmine-mon"))
        .args(["--listen", "127.0.0.1:0", "--plaintext", "--data-dir"])
        .arg(dir.path())
        .env_remove("CARMINE_ADMIN_TOKEN")
        .env_remove("CARMINE_MON_INSECURE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--admin-token") && err.contains("--insecure"),
        "{err}"
    );

    // --insecure: anonymous OSDs get in, admins still need the token, and health warns.
    let rt = runtime();
    let mon = MonProc::start(dir.path(), &["--insecure"]);
    rt.block_on(async {
        let mut c = MonClusterClient::new(channel(&mon.url()).await);
        let b = c
            .boot(v1::BootRequest {
                uuid: "uuid-anon".into(),
                host: "h".into(),
                shard_ports: vec![1],
                weight: 1.0,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            !b.key.is_empty(),
            "an insecure monitor issues the OSD a key at boot"
        );
        let mut a = MonAdminClient::new(channel(&mon.url()).await);
        assert_eq!(
            a.health(v1::Empty {}).await.unwrap_err().code(),
            Code::Unauthenticated
        );
        let h = a.health(authed(v1::Empty {})).await.unwrap().into_inner();
        assert_eq!(h.status, v1::HealthStatus::HealthWarn as i32, "{h:?}");
        assert!(h.checks.iter().any(|c| c.code == "AUTH_INSECURE"), "{h:?}");
    });
}
