//! Test support: a real `carmine-mon` process on a free loopback port, killed on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use carmine_proto::v1::{mon_admin_client::MonAdminClient, mon_cluster_client::MonClusterClient};
use tonic::transport::Channel;

pub const TOKEN: &str = "test-admin-token";

/// A running monitor process.
pub struct MonProc {
    child: Child,
    pub addr: String,
}

impl MonProc {
    /// Starts `carmine-mon` on 127.0.0.1:0 with `data` and extra flags; waits for its address.
    pub fn start(data: &Path, extra: &[&str]) -> MonProc {
        let mut args = vec!["--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let (mut proc, rx) = MonProc::spawn(data, &args);
        proc.addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("carmine-mon did not print its address");
        proc
    }

    /// Starts `carmine-mon` with these flags; the receiver gets its address once it listens
    /// (with etcd: once it is elected leader).
    pub fn spawn(data: &Path, args: &[&str]) -> (MonProc, mpsc::Receiver<String>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_carmine-mon"))
            .args(["--plaintext", "--admin-token", TOKEN, "--data-dir"])
            .arg(data)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn carmine-mon");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(a) = line.strip_prefix("carmine-mon listening on ") {
                    let _ = tx.send(a.to_string());
                }
            }
        });
        (
            MonProc {
                child,
                addr: String::new(),
            },
            rx,
        )
    }

    /// SIGKILL: a crash, not a clean shutdown.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: asks for a clean shutdown.
    pub fn terminate(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: as in `pause`: a signal to our own unreaped child.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill({pid}, SIGTERM) failed");
    }

    /// Stops (`true`) or continues (`false`) the process with SIGSTOP / SIGCONT.
    pub fn pause(&self, stop: bool) {
        let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) only sends a signal; `pid` is our own child, not yet reaped (we hold
        // its `Child`), so the pid cannot have been reused by another process.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for MonProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

pub async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .expect("url")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect to mon")
}

pub async fn admin(url: &str) -> MonAdminClient<Channel> {
    MonAdminClient::new(channel(url).await)
}

/// The OSD service as an admin (who may act for any OSD): every call carries the admin token.
pub type AdminCluster = MonClusterClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
    >,
>;

fn with_admin_token(mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    r.metadata_mut().insert(
        carmine_proto::AUTH_HEADER,
        carmine_proto::bearer(TOKEN).unwrap(),
    );
    Ok(r)
}

/// [`AdminCluster`] on the monitor at `url`.
pub async fn cluster(url: &str) -> AdminCluster {
    MonClusterClient::with_interceptor(channel(url).await, with_admin_token as fn(_) -> _)
}

/// The OSD service without any credential.
pub async fn cluster_anon(url: &str) -> MonClusterClient<Channel> {
    MonClusterClient::new(channel(url).await)
}

/// A request to an OSD's admin service carrying the admin key the admin token stands for.
pub fn osd_authed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        carmine_proto::AUTH_HEADER,
        carmine_proto::auth::admin_token_osd_bearer(TOKEN).unwrap(),
    );
    r
}

/// A request carrying the admin token.
pub fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        carmine_proto::AUTH_HEADER,
        carmine_proto::bearer(TOKEN).unwrap(),
    );
    r
}

/// Polls `f` every 20 ms until it returns `Some` or `limit` passes.
pub async fn wait_for<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Creates pools `{prefix}{i}` for every i in `range` (8 PGs, size 1), each a new epoch.
pub async fn create_pools(
    a: &mut MonAdminClient<Channel>,
    prefix: &str,
    range: std::ops::Range<u32>,
) {
    for i in range {
        a.pool_create(authed(carmine_proto::v1::PoolCreateRequest {
            name: format!("{prefix}{i}"),
            pg_num: 8,
            size: 1,
            min_size: 1,
        }))
        .await
        .unwrap();
    }
}

/// A policy for monitors driven directly (no process): nothing expires during a test.
pub fn test_policy() -> carmine_mon::state::Policy {
    carmine_mon::state::Policy {
        heartbeat_interval: Duration::from_millis(100),
        down_grace: Duration::from_secs(600),
        out_interval: Duration::from_secs(6000),
        history: 50,
        min_failure_reporters: 2,
        nearfull_ratio: 0.85,
        full_ratio: 0.95,
    }
}

fn boot_info(uuid: &str, host: &str) -> carmine_mon::state::BootInfo {
    carmine_mon::state::BootInfo {
        uuid: uuid.into(),
        host: host.into(),
        shard_ports: vec![6800],
        weight: 1.0,
        ..Default::default()
    }
}

/// The key the monitor's keyring holds under `id`, with its role and OSD id.
fn stored_key(m: &carmine_mon::state::Monitor, id: &str) -> Option<(Vec<u8>, i32, u32)> {
    m.keyring()
        .keys
        .into_iter()
        .find(|k| k.id == id)
        .map(|k| (k.key, k.role, k.osd_id))
}

/// OSD keys on a monitor, whatever its store: created at an OSD's first boot, the same key at
/// every later boot of the same uuid, another key for another OSD, `osd.` ids refused to
/// clients, the keyring carrying each key's role, `osd rm` removing the key. Leaves OSD
/// `uuid-keys-a` booted; returns its id and key (for a check after a reopen:
/// [`osd_key_kept_after_reopen`]).
pub fn osd_keys_scenario(m: &mut carmine_mon::state::Monitor) -> (u32, [u8; 32]) {
    use carmine_mon::state::{KeyRole, MonError};
    use carmine_proto::v1::KeyRole as Wire;
    let now = Instant::now();
    let client = m.auth_add("client.k", KeyRole::Client).unwrap().0;
    // A boot reply carries the OSD's data-path key; the keyring holds its secret.
    let dp = carmine_proto::auth::data_path_key;
    let v0 = m.keyring_version();

    // First boot: a key of its own, in the keyring with role OSD, a new keyring version.
    let a = m.boot(boot_info("uuid-keys-a", "hostA"), now).unwrap();
    assert_ne!(a.key, [0u8; 32]);
    assert_ne!(a.key, client, "the OSD got a client's key");
    assert_eq!(
        m.keyring_version(),
        v0 + 1,
        "an OSD's first boot changes the keyring"
    );
    let osd_a = format!("osd.{}", a.id);
    let (secret, role, osd_id) = stored_key(m, &osd_a).unwrap();
    assert_eq!(
        (dp(&secret.try_into().unwrap()), role, osd_id),
        (a.key, Wire::Osd as i32, a.id)
    );
    assert_eq!(
        stored_key(m, "client.k"),
        Some((client.to_vec(), Wire::Client as i32, 0))
    );

    // A reboot of the same uuid (after being marked down): same id, same key, same keyring.
    m.osd_down(a.id, now).unwrap();
    let a2 = m.boot(boot_info("uuid-keys-a", "hostA"), now).unwrap();
    assert_eq!(
        (a2.id, a2.key),
        (a.id, a.key),
        "a reboot changed the OSD's key"
    );
    assert_eq!(m.keyring_version(), v0 + 1, "a reboot changed the keyring");

    // Another OSD: another key.
    let b = m.boot(boot_info("uuid-keys-b", "hostB"), now).unwrap();
    assert_ne!(b.id, a.id);
    assert_ne!(b.key, a.key, "two OSDs got the same key");
    let osd_b = format!("osd.{}", b.id);
    assert_eq!(dp(&m.auth_get(&osd_b).unwrap().0), b.key);
    assert_eq!(m.auth_get(&osd_b).unwrap().1, KeyRole::Osd(b.id));
    assert_eq!(m.auth_get("client.k").unwrap().1, KeyRole::Client);
    let listed = m.auth_list();
    assert!(
        listed.contains(&(osd_a.clone(), KeyRole::Osd(a.id))),
        "{listed:?}"
    );
    assert!(
        listed.contains(&(osd_b.clone(), KeyRole::Osd(b.id))),
        "{listed:?}"
    );
    assert!(
        listed.contains(&("client.k".into(), KeyRole::Client)),
        "{listed:?}"
    );

    // Ids of OSD keys are reserved: a client cannot get (nor remove) one.
    let v = m.keyring_version();
    for id in ["osd.3", osd_a.as_str(), "osd.", "osd.x"] {
        let e = m.auth_add(id, KeyRole::Client).unwrap_err();
        assert!(matches!(e, MonError::Invalid(_)), "{id}: {e:?}");
        assert!(e.to_string().contains("reserved"), "{id}: {e}");
        let st = tonic::Status::from(e);
        assert_eq!(st.code(), tonic::Code::InvalidArgument);
    }
    let e = m.auth_rm(&osd_a).unwrap_err();
    assert!(e.to_string().contains("osd rm"), "{e}");
    assert_eq!(m.keyring_version(), v, "a refused call changed the keyring");
    assert_eq!(dp(&m.auth_get(&osd_a).unwrap().0), a.key);
    assert!(stored_key(m, "osd.3").is_none());

    // `osd rm` removes the OSD's key (refused while up: the key stays).
    assert!(matches!(m.osd_rm(b.id), Err(MonError::Precondition(_))));
    assert!(stored_key(m, &osd_b).is_some());
    m.osd_down(b.id, now).unwrap();
    m.osd_rm(b.id).unwrap();
    assert!(stored_key(m, &osd_b).is_none(), "osd rm left the key");
    assert!(matches!(m.auth_get(&osd_b), Err(MonError::NotFound(_))));
    assert_eq!(m.keyring_version(), v + 1);
    // The same uuid boots again: a new id, and a new key.
    let b2 = m.boot(boot_info("uuid-keys-b", "hostB"), now).unwrap();
    assert_ne!(b2.id, b.id);
    assert_ne!(b2.key, b.key, "a removed OSD's key came back");
    assert_ne!(b2.key, a.key);
    (a.id, a.key)
}

/// After [`osd_keys_scenario`] and a reopen of the same store: OSD `id`'s key is still
/// `key`, with its role, and a reboot of the same uuid gets it back.
pub fn osd_key_kept_after_reopen(m: &mut carmine_mon::state::Monitor, id: u32, key: [u8; 32]) {
    use carmine_mon::state::KeyRole;
    let (secret, role, version) = m.auth_get(&format!("osd.{id}")).unwrap();
    assert_eq!(
        (carmine_proto::auth::data_path_key(&secret), role, version),
        (key, KeyRole::Osd(id), m.keyring_version())
    );
    let v = m.keyring_version();
    let again = m
        .boot(boot_info("uuid-keys-a", "hostA"), Instant::now())
        .unwrap();
    assert_eq!(
        (again.id, again.key),
        (id, key),
        "the key changed across a reopen"
    );
    assert_eq!(m.keyring_version(), v);
}

fn interval(pool: u32, pg: u32, since: u64, acting: &[u32]) -> carmine_proto::v1::PgInterval {
    carmine_proto::v1::PgInterval {
        pool,
        pg,
        since,
        acting: acting.to_vec(),
    }
}

/// The PG history on a monitor, whatever its store: record (repeat and older = no-op, a
/// conflict refuses the whole call), get, trim, refusals, and one call of 100 PGs (more than
/// one etcd transaction). Leaves pool "hist" with pg 1 = [since e2 [b,a]], pg 2 = [e1 [a,b]],
/// pgs 10..110 = [e2 [a]]; returns (pool, e1, e2, a, b) for [`pg_history_kept_after_reopen`].
pub fn pg_history_scenario(m: &mut carmine_mon::state::Monitor) -> (u32, u64, u64, u32, u32) {
    use carmine_mon::state::MonError;
    let now = Instant::now();
    let a = m.boot(boot_info("uuid-hist-a", "hostA"), now).unwrap().id;
    let b = m.boot(boot_info("uuid-hist-b", "hostB"), now).unwrap().id;
    let (pool, e1) = m.pool_create("hist", 128, 2, 1).unwrap();
    let (_, e2) = m.pool_create("hist-other", 8, 1, 1).unwrap();
    let iv = |pg, since, acting: &[u32]| interval(pool, pg, since, acting);

    let r = m
        .record_intervals(a, &[iv(1, e1, &[a, b]), iv(2, e1, &[a, b])])
        .unwrap();
    assert_eq!(r, (e2, vec![]), "the reply carries the current epoch");
    assert_eq!(m.pg_history(pool, 1).unwrap(), [iv(1, e1, &[a, b])]);
    assert_eq!(m.pg_history(pool, 0).unwrap(), [], "never recorded");
    // A repeat is a no-op.
    m.record_intervals(a, &[iv(1, e1, &[a, b])]).unwrap();
    assert_eq!(m.pg_history(pool, 1).unwrap(), [iv(1, e1, &[a, b])]);
    // A conflicting interval refuses the whole call: pg 3 is not recorded either.
    let e = m
        .record_intervals(a, &[iv(3, e1, &[a, b]), iv(1, e1, &[b, a])])
        .unwrap_err();
    assert!(matches!(e, MonError::Precondition(_)), "{e:?}");
    assert_eq!(m.pg_history(pool, 3).unwrap(), []);
    // Newer appends; older is ignored.
    m.record_intervals(b, &[iv(1, e2, &[b, a])]).unwrap();
    let older = iv(1, e1 - 1, &[a]);
    let r = m.record_intervals(a, std::slice::from_ref(&older)).unwrap();
    assert_eq!(
        r.1,
        [older],
        "an older interval is not recorded, and the caller is told"
    );
    assert_eq!(
        m.pg_history(pool, 1).unwrap(),
        [iv(1, e1, &[a, b]), iv(1, e2, &[b, a])]
    );
    // Refusals.
    let bad = [
        (a, iv(1, e2 + 1, &[a])),
        (a, iv(128, e1, &[a])),
        (a, interval(pool + 99, 0, e1, &[a])),
        (999, iv(1, e2, &[b, a])),
    ];
    for (osd, i) in bad {
        let e = m
            .record_intervals(osd, std::slice::from_ref(&i))
            .unwrap_err();
        assert!(
            matches!(e, MonError::Invalid(_) | MonError::NotFound(_)),
            "{i:?}: {e:?}"
        );
    }
    assert!(matches!(
        m.pg_history(pool, 128),
        Err(MonError::NotFound(_))
    ));
    // Trim to e2 keeps e2; trimming to a dropped interval is refused.
    m.trim_pg_history(&iv(1, e2, &[])).unwrap();
    assert_eq!(m.pg_history(pool, 1).unwrap(), [iv(1, e2, &[b, a])]);
    m.trim_pg_history(&iv(1, e2, &[b, a])).unwrap();
    assert!(matches!(
        m.trim_pg_history(&iv(1, e1, &[])),
        Err(MonError::Precondition(_))
    ));
    // Many PGs in one call.
    let many: Vec<_> = (10..110).map(|pg| iv(pg, e2, &[a])).collect();
    m.record_intervals(a, &many).unwrap();
    assert_eq!(m.pg_history(pool, 109).unwrap(), [iv(109, e2, &[a])]);
    (pool, e1, e2, a, b)
}

/// After [`pg_history_scenario`] and a reopen of the same store: the history is all there;
/// then the pool is removed, and its history with it.
pub fn pg_history_kept_after_reopen(
    m: &mut carmine_mon::state::Monitor,
    (pool, e1, e2, a, b): (u32, u64, u64, u32, u32),
) {
    let iv = |pg, since, acting: &[u32]| interval(pool, pg, since, acting);
    assert_eq!(m.pg_history(pool, 1).unwrap(), [iv(1, e2, &[b, a])]);
    assert_eq!(m.pg_history(pool, 2).unwrap(), [iv(2, e1, &[a, b])]);
    assert_eq!(m.pg_history(pool, 3).unwrap(), []);
    for pg in 10..110 {
        assert_eq!(m.pg_history(pool, pg).unwrap(), [iv(pg, e2, &[a])]);
    }
    m.pool_rm("hist").unwrap();
    assert!(m.pg_history(pool, 1).is_err(), "the pool is gone");
}

/// Prepares OSD `uuid` (`MonAdmin.OsdNew` with [`TOKEN`]) on the first monitor in `mon_addrs`
/// that does it, and returns the credential an in-process agent presents. Runs on a thread of
/// its own, so that sync and async callers alike can use it.
pub fn osd_credential(mon_addrs: &str, uuid: &str) -> carmine_agent::OsdCredential {
    let (addrs, uuid) = (mon_addrs.to_string(), uuid.to_string());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut addrs: Vec<String> = addrs.split(',').map(str::to_string).collect();
            for _ in 0..50 {
                for addr in addrs.clone() {
                    let url = if addr.contains("://") {
                        addr.to_string()
                    } else {
                        format!("http://{addr}")
                    };
                    let Ok(ch) = Channel::from_shared(url).expect("url").connect().await else {
                        continue;
                    };
                    let r = MonAdminClient::new(ch)
                        .osd_new(authed(carmine_proto::v1::OsdNewRequest {
                            uuid: uuid.clone(),
                        }))
                        .await;
                    // A follower names the leader: ask it next.
                    if let Some(leader) = r.as_ref().err().and_then(carmine_proto::leader_redirect)
                    {
                        if !addrs.contains(&leader) {
                            addrs.push(leader);
                        }
                    }
                    if let Ok(r) = r {
                        let r = r.into_inner();
                        return carmine_agent::OsdCredential {
                            id: r.key_id,
                            secret: r.key.as_slice().try_into().expect("32-byte key"),
                        };
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            panic!("no monitor in {addrs:?} issued a key for {uuid}");
        })
    })
    .join()
    .expect("osd new")
}
