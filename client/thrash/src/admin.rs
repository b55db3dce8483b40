//! The admin calls a thrash run makes: the monitor's `MonAdmin` (pool, key, map, `PgList`) and
//! an OSD's `OsdAdmin.ScrubPg` (what `carmine pg scrub` calls), all with the run's admin token.

use std::time::Duration;

use carmine_client::{AuthKey, ClusterMap, Credentials};
use carmine_proto::tls::{ClientTls, TlsError};
use carmine_proto::v1::{self, mon_admin_client::MonAdminClient, osd_admin_client::OsdAdminClient};
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::procs::ADMIN_TOKEN;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{call}: {status}")]
    Call {
        call: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("{0}")]
    Reply(&'static str),
    #[error("write {path}: {source}")]
    KeyFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("connect: {0}")]
    Tls(Box<TlsError>),
}

fn authed<T>(msg: T, timeout: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    // The token is a constant of this crate: it is a valid header value.
    if let Ok(v) = carmine_proto::bearer(ADMIN_TOKEN) {
        r.metadata_mut().insert(carmine_proto::AUTH_HEADER, v);
    }
    r.set_timeout(timeout);
    r
}

async fn channel(addr: &str) -> Result<Channel, AdminError> {
    let connect = |source| AdminError::Connect {
        addr: addr.to_string(),
        source,
    };
    // The run's cluster speaks plain text (procs.rs starts it with --plaintext): a failure
    // test of the replication and peering logic, not of the transport.
    ClientTls::Plaintext
        .endpoint(addr)
        .map_err(|e| AdminError::Tls(Box::new(e)))?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(connect)
}

fn call(call: &'static str) -> impl FnOnce(tonic::Status) -> AdminError {
    move |status| AdminError::Call {
        call,
        status: Box::new(status),
    }
}

const T: Duration = Duration::from_secs(10);

/// The monitor's admin API.
#[derive(Clone)]
pub struct Admin {
    mon: MonAdminClient<Channel>,
}

impl Admin {
    pub async fn connect(addr: &str) -> Result<Admin, AdminError> {
        Ok(Admin {
            mon: MonAdminClient::new(channel(addr).await?),
        })
    }

    /// Creates a pool; its id.
    pub async fn pool_create(
        &self,
        name: &str,
        pg_num: u32,
        size: u32,
        min_size: u32,
    ) -> Result<u32, AdminError> {
        let req = v1::PoolCreateRequest {
            name: name.into(),
            pg_num,
            size,
            min_size,
        };
        Ok(self
            .mon
            .clone()
            .pool_create(authed(req, T))
            .await
            .map_err(call("PoolCreate"))?
            .into_inner()
            .id)
    }

    /// A client key (`carmine auth add`).
    pub async fn auth_add(&self, id: &str) -> Result<Credentials, AdminError> {
        let r = self
            .mon
            .clone()
            .auth_add(authed(
                v1::AuthIdRequest {
                    id: id.into(),
                    ..Default::default()
                },
                T,
            ))
            .await
            .map_err(call("AuthAdd"))?
            .into_inner();
        let key: [u8; 32] = r
            .key
            .as_slice()
            .try_into()
            .map_err(|_| AdminError::Reply("AuthAdd: the key is not 32 bytes"))?;
        Ok(Credentials {
            id: r.id,
            key: AuthKey::new(key),
        })
    }

    /// Prepares OSD `uuid` (`carmine osd new`): writes its key file to `keyfile` (mode 0600).
    pub async fn osd_new(&self, uuid: &str, keyfile: &std::path::Path) -> Result<u32, AdminError> {
        let r = self
            .mon
            .clone()
            .osd_new(authed(v1::OsdNewRequest { uuid: uuid.into() }, T))
            .await
            .map_err(call("OsdNew"))?
            .into_inner();
        let key: [u8; 32] = r
            .key
            .as_slice()
            .try_into()
            .map_err(|_| AdminError::Reply("OsdNew: the key is not 32 bytes"))?;
        let text = format!(
            "id = \"{}\"\nkey = \"{}\"\n",
            r.key_id,
            AuthKey::new(key).to_hex()
        );
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(keyfile)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|source| AdminError::KeyFile {
                path: keyfile.to_path_buf(),
                source,
            })?;
        Ok(r.id)
    }

    pub async fn map(&self) -> Result<ClusterMap, AdminError> {
        Ok(self
            .mon
            .clone()
            .get_map(authed(v1::GetMapRequest { epoch: 0 }, T))
            .await
            .map_err(call("GetMap"))?
            .into_inner()
            .into())
    }

    /// Every PG's state (`MonAdmin.PgList`), or `None` while the monitor does not implement it.
    pub async fn pg_list(&self) -> Result<Option<Vec<v1::PgStat>>, AdminError> {
        match self.mon.clone().pg_list(authed(v1::Empty {}, T)).await {
            Ok(r) => Ok(Some(r.into_inner().pgs)),
            Err(s) if s.code() == Code::Unimplemented => Ok(None),
            Err(s) => Err(call("PgList")(s)),
        }
    }
}

/// `OsdAdmin.ScrubPg` on the OSD admin service at `addr` (the PG's primary).
pub async fn scrub(addr: &str, pool: u32, pg: u32) -> Result<v1::ScrubPgReply, AdminError> {
    let mut c = OsdAdminClient::new(channel(addr).await?).max_decoding_message_size(64 << 20);
    let mut r = Request::new(v1::ScrubPgRequest { pool, pg });
    r.set_timeout(Duration::from_secs(120));
    // An OSD checks the admin key the token stands for against its keyring.
    if let Ok(v) = carmine_proto::auth::admin_token_osd_bearer(ADMIN_TOKEN) {
        r.metadata_mut().insert(carmine_proto::AUTH_HEADER, v);
    }
    Ok(c.scrub_pg(r).await.map_err(call("ScrubPg"))?.into_inner())
}

/// [`scrub`], again every 500 ms for up to 10 s while the primary compares fewer than `size`
/// members (a member that just came back may not be in the map the primary scrubs with yet).
pub async fn scrub_full(
    addr: &str,
    pool: u32,
    pg: u32,
    size: usize,
) -> Result<v1::ScrubPgReply, AdminError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = scrub(addr, pool, pg).await?;
        if r.acting.len() >= size || tokio::time::Instant::now() >= deadline {
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The first `n` inconsistent objects of a scrub, each with what differs on which OSD.
pub fn describe_inconsistent(r: &v1::ScrubPgReply, n: usize) -> String {
    r.inconsistent
        .iter()
        .take(n)
        .map(|o| {
            let why: Vec<String> = o
                .problems
                .iter()
                .map(|p| format!("osd.{} {}", p.osd, p.detail))
                .collect();
            format!("{} [{}]", o.name, why.join("; "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `a+b+c` names of a PgStat state.
pub fn state_name(state: u32) -> String {
    carmine_proto::pg_state::name(state)
}

/// Exactly active+clean.
pub fn is_active_clean(state: u32) -> bool {
    state == v1::PgStateBit::PgStateActive as u32 | v1::PgStateBit::PgStateClean as u32
}

/// Serving I/O.
pub fn is_active(state: u32) -> bool {
    state & v1::PgStateBit::PgStateActive as u32 != 0
}

pub fn has_bit(state: u32, bit: v1::PgStateBit) -> bool {
    state & bit as u32 != 0
}
