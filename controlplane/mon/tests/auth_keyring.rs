//! Client keys against a real `carmine-mon` process: add (get-or-create), get, ls, rm, ids
//! refused, the keyring surviving a SIGKILL, and an OSD agent (hosted here, as an OSD hosts
//! it) receiving keys added and losing keys removed after it booted; the OSD admin address the
//! monitor remembers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use carmine_agent::{Agent, AgentConfig, MemConfig, Role, SharedKeyring, Stats};
use carmine_proto::v1;
use carmine_wire::server::Keyring;
use carmine_wire::AuthKey;
use common::{admin, authed, cluster, runtime, wait_for, MonProc};
use tonic::Code;

struct NoStats;

impl Stats for NoStats {
    fn counters(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
}

/// The data-path key of the secret `bytes` (what the OSDs hold).
fn key_of(bytes: &[u8]) -> AuthKey {
    AuthKey::new(carmine_proto::auth::data_path_key(
        bytes.try_into().expect("a 32-byte key"),
    ))
}

#[test]
fn keys_add_get_rm_ls_refuse_bad_ids_and_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mon = MonProc::start(dir.path(), &[]);
    let url = mon.url();
    let (key_a, version) = rt.block_on(async {
        let mut a = admin(&url).await;
        let v0 = a
            .auth_list(authed(v1::Empty {}))
            .await
            .unwrap()
            .into_inner();
        // Only the admin key the admin token stands for.
        assert_eq!(v0.ids, ["client.admin"]);
        let first = a
            .auth_add(authed(v1::AuthIdRequest {
                id: "client.a".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(first.created);
        assert_eq!(first.key.len(), 32);
        assert!(first.keyring_version > v0.keyring_version);
        // Get-or-create: the same key, nothing changes.
        let again = a
            .auth_add(authed(v1::AuthIdRequest {
                id: "client.a".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(!again.created);
        assert_eq!(again.key, first.key);
        assert_eq!(again.keyring_version, first.keyring_version);
        let got = a
            .auth_get(authed(v1::AuthIdRequest {
                id: "client.a".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.key, first.key);
        let b = a
            .auth_add(authed(v1::AuthIdRequest {
                id: "client.b".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_ne!(b.key, first.key, "two clients got the same key");
        let c = a
            .auth_add(authed(v1::AuthIdRequest {
                id: "client.c".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        let rm = a
            .auth_rm(authed(v1::AuthIdRequest {
                id: "client.c".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(rm.keyring_version > c.keyring_version);
        let e = a
            .auth_rm(authed(v1::AuthIdRequest {
                id: "client.c".into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let e = a
            .auth_get(authed(v1::AuthIdRequest {
                id: "client.c".into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let ls = a
            .auth_list(authed(v1::Empty {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ls.ids, ["client.a", "client.admin", "client.b"]);
        assert_eq!(ls.keyring_version, rm.keyring_version);

        // Invalid ids: refused with the reason, nothing stored.
        let long = "x".repeat(257);
        for (bad, why) in [
            ("", "empty"),
            ("client a", "' '"),
            ("client\u{e9}", "printable ASCII"),
            ("tab\there", "printable ASCII"),
            (long.as_str(), "257 bytes"),
        ] {
            let e = a
                .auth_add(authed(v1::AuthIdRequest {
                    id: bad.into(),
                    ..Default::default()
                }))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
            assert!(e.message().contains(why), "{bad:?}: {}", e.message());
        }
        // 256 bytes is the limit, and allowed.
        let max = "y".repeat(256);
        a.auth_add(authed(v1::AuthIdRequest {
            id: max.clone(),
            ..Default::default()
        }))
        .await
        .unwrap();
        a.auth_rm(authed(v1::AuthIdRequest {
            id: max,
            ..Default::default()
        }))
        .await
        .unwrap();

        // Without the admin token: refused.
        let e = a
            .auth_get(v1::AuthIdRequest {
                id: "client.a".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);

        // The OSD-facing keyring: every key, sorted, with the same version, each as its
        // data-path key (never the secret).
        let mut cl = cluster(&url).await;
        let kr = cl.get_keyring(v1::Empty {}).await.unwrap().into_inner();
        let ids: Vec<&str> = kr.keys.iter().map(|k| k.id.as_str()).collect();
        assert_eq!(ids, ["client.a", "client.admin", "client.b"]);
        assert_eq!(kr.keys[0].key, key_of(&first.key).as_bytes().to_vec());
        assert_eq!(kr.keys[2].key, key_of(&b.key).as_bytes().to_vec());
        assert_ne!(kr.keys[0].key, first.key);
        let ls = a
            .auth_list(authed(v1::Empty {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(kr.version, ls.keyring_version);
        (first.key, kr.version)
    });

    // A crash (SIGKILL), then a restart on the same store: same keys, same version.
    mon.kill();
    let mon = MonProc::start(dir.path(), &[]);
    let url = mon.url();
    rt.block_on(async {
        let mut a = admin(&url).await;
        let got = a
            .auth_get(authed(v1::AuthIdRequest {
                id: "client.a".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.key, key_a);
        let ls = a
            .auth_list(authed(v1::Empty {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ls.ids, ["client.a", "client.admin", "client.b"]);
        assert_eq!(ls.keyring_version, version);
        // The next change gets a newer version than any before the crash.
        let d = a
            .auth_add(authed(v1::AuthIdRequest {
                id: "client.d".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(d.keyring_version, version + 1);
    });
}

/// An OSD agent with a cluster token: boot, the keyring right after, a key added later
/// arrives, a removed one goes; the monitor tells admins where the OSD's admin service is.
#[test]
fn agent_follows_the_keyring_and_mon_knows_its_admin_addr() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mon = MonProc::start(dir.path(), &["--heartbeat-ms", "100"]);
    let url = mon.url();
    let limit = Duration::from_secs(15);
    let early = rt.block_on(async {
        let mut a = admin(&url).await;
        // Without a credential the keyring is refused.
        let mut cl = common::cluster_anon(&url).await;
        let e = cl.get_keyring(v1::Empty {}).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        a.auth_add(authed(v1::AuthIdRequest {
            id: "client.early".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
    });

    let keyring = Arc::new(SharedKeyring::new());
    assert_eq!(keyring.version(), 0);
    assert!(keyring.is_empty());
    let agent = Agent::start(
        AgentConfig {
            mon_addr: mon.addr.clone(),
            uuid: "uuid-k".into(),
            host: "hostK".into(),
            public_addr: "127.0.0.1".into(),
            cluster_addr: "127.0.0.1".into(),
            shard_ports: vec![6800],
            weight: 1.0,
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: None,
            credential: Some(common::osd_credential(&mon.addr, "uuid-k")),
            client_tls: carmine_proto::tls::ClientTls::Plaintext,
            admin_tls: carmine_proto::tls::ServerTls::Plaintext,
        },
        Vec::new(),
        Arc::new(NoStats),
        Arc::new(MemConfig::default()),
        keyring.clone(),
    )
    .unwrap();

    // Right after boot: the key issued before, the admin's, and this OSD's own key (`osd new`
    // made it: one keyring version more).
    let got = rt.block_on(wait_for(limit, || async { keyring.key("client.early") }));
    assert_eq!(got, Some(key_of(&early.key)));
    assert_eq!(keyring.len(), 3);
    assert_eq!(agent.status().keyring_version(), early.keyring_version + 1);
    let v1_local = keyring.version();
    assert!(v1_local >= 1);

    // A key added after boot arrives, and the local version moves on.
    let late = rt.block_on(async {
        admin(&url)
            .await
            .auth_add(authed(v1::AuthIdRequest {
                id: "client.late".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
    });
    let got = rt.block_on(wait_for(limit, || async { keyring.key("client.late") }));
    assert_eq!(got, Some(key_of(&late.key)));
    assert!(keyring.version() > v1_local);
    assert_eq!(agent.status().keyring_version(), late.keyring_version);
    assert_eq!(keyring.key("client.nobody"), None);

    // A removed key goes; the other stays.
    let v2_local = keyring.version();
    rt.block_on(async {
        admin(&url)
            .await
            .auth_rm(authed(v1::AuthIdRequest {
                id: "client.early".into(),
                ..Default::default()
            }))
            .await
            .unwrap();
    });
    let gone = rt.block_on(wait_for(limit, || async {
        keyring.key("client.early").is_none().then_some(())
    }));
    assert!(gone.is_some(), "the removed key is still held");
    assert!(keyring.version() > v2_local);
    assert_eq!(keyring.key("client.late"), Some(key_of(&late.key)));

    // The monitor knows where the OSD's admin service listens.
    let id = agent.status().osd_id().expect("booted");
    rt.block_on(async {
        let mut a = admin(&url).await;
        let r = a
            .osd_admin_addr(authed(v1::OsdIdRequest { id }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.admin_addr, agent.admin_addr().to_string());
        assert!(r.up);
        let e = a
            .osd_admin_addr(authed(v1::OsdIdRequest { id: id + 100 }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.message().contains("does not exist"), "{}", e.message());
    });

    // A monitor restarted (after a SIGKILL, on the same address) learns it again: the
    // address is soft state, re-sent by the OSD's boot and heartbeats. Its keyring is intact.
    let addr = mon.addr.clone();
    mon.kill();
    let mon = MonProc::start(dir.path(), &["--heartbeat-ms", "100", "--listen", &addr]);
    let url = mon.url();
    let back = rt.block_on(wait_for(limit, || async {
        let mut a = admin(&url).await;
        a.osd_admin_addr(authed(v1::OsdIdRequest { id }))
            .await
            .ok()
            .map(|r| r.into_inner().admin_addr)
    }));
    assert_eq!(back, Some(agent.admin_addr().to_string()));
    assert_eq!(keyring.key("client.late"), Some(key_of(&late.key)));
    assert_eq!(agent.status().keyring_version(), late.keyring_version + 1);
    drop(agent);
}

fn start_agent(mon_addr: &str, uuid: &str, keyring: Arc<SharedKeyring>) -> Agent {
    Agent::start(
        AgentConfig {
            mon_addr: mon_addr.into(),
            uuid: uuid.into(),
            host: format!("host-{uuid}"),
            public_addr: "127.0.0.1".into(),
            cluster_addr: "127.0.0.1".into(),
            shard_ports: vec![6800],
            weight: 1.0,
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: None,
            credential: Some(common::osd_credential(mon_addr, uuid)),
            client_tls: carmine_proto::tls::ClientTls::Plaintext,
            admin_tls: carmine_proto::tls::ServerTls::Plaintext,
        },
        Vec::new(),
        Arc::new(NoStats),
        Arc::new(MemConfig::default()),
        keyring,
    )
    .unwrap()
}

/// Two OSD agents against a real monitor: each booted agent holds its own identity
/// (`osd.<its id>` and a key of its own), the keyring the other agent fetches holds that key
/// with role `Osd(id)`, the admin sees the same key (`auth get osd.N`); a reboot keeps it, and
/// `osd rm` takes it out of every keyring.
#[test]
fn booted_agents_get_their_own_osd_identity_and_see_each_others_role() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mon = MonProc::start(dir.path(), &["--heartbeat-ms", "100"]);
    let url = mon.url();
    let limit = Duration::from_secs(15);
    let kr_a = Arc::new(SharedKeyring::new());
    let kr_b = Arc::new(SharedKeyring::new());
    let agent_a = start_agent(&mon.addr, "uuid-id-a", kr_a.clone());
    let agent_b = start_agent(&mon.addr, "uuid-id-b", kr_b.clone());
    let booted = rt.block_on(wait_for(limit, || async {
        agent_a.status().osd_id().zip(agent_b.status().osd_id())
    }));
    let (a, b) = booted.expect("both agents boot");
    assert_ne!(a, b);

    // Each agent knows who it is: `osd.<its id>`, set by the time the boot shows.
    let (name_a, key_a) = agent_a.identity().expect("agent a has an identity");
    let (name_b, key_b) = agent_b.identity().expect("agent b has an identity");
    assert_eq!(name_a, format!("osd.{a}"));
    assert_eq!(name_b, format!("osd.{b}"));
    assert_ne!(key_a, key_b, "two OSDs hold the same key");
    assert_eq!(kr_a.identity(), Some((name_a.clone(), key_a.clone())));

    // The keyring each fetches holds the other's key with its role (b booted after a, or the
    // other way round: wait until both keys are in both keyrings).
    let both = rt.block_on(wait_for(limit, || async {
        (kr_a.role(&name_b).is_some() && kr_b.role(&name_a).is_some()).then_some(())
    }));
    assert!(both.is_some(), "the keyrings never held both OSD keys");
    assert_eq!(kr_b.role(&name_a), Some(Role::Osd(a)));
    assert_eq!(kr_b.key(&name_a), Some(key_a.clone()));
    assert_eq!(kr_a.role(&name_b), Some(Role::Osd(b)));
    assert_eq!(kr_a.key(&name_b), Some(key_b.clone()));
    assert_eq!(kr_a.role(&name_a), Some(Role::Osd(a)));

    rt.block_on(async {
        let mut adm = admin(&url).await;
        // The admin sees the same key, with its role.
        let got = adm
            .auth_get(authed(v1::AuthIdRequest {
                id: name_a.clone(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(key_of(&got.key), key_a);
        assert_eq!(got.role(), v1::KeyRole::Osd);
        assert_eq!(got.osd_id, a);
        let ls = adm
            .auth_list(authed(v1::Empty {}))
            .await
            .unwrap()
            .into_inner();
        assert!(ls
            .entries
            .iter()
            .any(|e| e.id == name_b && e.role() == v1::KeyRole::Osd && e.osd_id == b));
        // A client cannot take an OSD's id.
        let e = adm
            .auth_add(authed(v1::AuthIdRequest {
                id: name_a.clone(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("reserved"), "{}", e.message());
        // A's monitor-side reboot (marked down; it boots again): the same key.
        adm.osd_down(authed(v1::OsdIdRequest { id: a }))
            .await
            .unwrap();
    });
    let rebooted = rt.block_on(wait_for(limit, || async {
        (agent_a.status().boots() >= 2).then_some(())
    }));
    assert!(rebooted.is_some(), "agent a did not boot again");
    assert_eq!(agent_a.identity(), Some((name_a.clone(), key_a.clone())));

    // B stops and is removed: its key leaves A's keyring.
    drop(agent_b);
    rt.block_on(async {
        let mut adm = admin(&url).await;
        adm.osd_down(authed(v1::OsdIdRequest { id: b }))
            .await
            .unwrap();
        adm.osd_rm(authed(v1::OsdIdRequest { id: b }))
            .await
            .unwrap();
        let e = adm
            .auth_get(authed(v1::AuthIdRequest {
                id: name_b.clone(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
    });
    let gone = rt.block_on(wait_for(limit, || async {
        kr_a.role(&name_b).is_none().then_some(())
    }));
    assert!(gone.is_some(), "a removed OSD's key is still held");
    assert_eq!(kr_a.role(&name_a), Some(Role::Osd(a)));
    drop(agent_a);
}
