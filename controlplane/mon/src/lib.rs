//! `carmine-mon`: the Carmine monitor.
//!
//! The monitor owns the authoritative cluster map. Every change (an OSD boots, misses its
//! heartbeats, is reported failed, an admin creates a pool...) makes a new epoch, which is
//! first committed to the embedded store ([`store`], redb) and only then published to the
//! subscribers as an incremental. Subscribers that are too far behind get a full map.
//!
//! Layers, top down:
//! * [`service`]: the tonic services `MonCluster` (OSDs, clients) and `MonAdmin` (operators),
//!   behind the credential check ([`service::Gate`]: each role may do only its own calls);
//! * [`keyring`]: every principal's secret and role (clients, OSDs, admins);
//! * [`state`]: the synchronous state machine ([`state::Monitor`]): map history, liveness,
//!   the down-after-grace and out-after-interval rules, the client keyring (the data path's
//!   handshake keys, issued here, fetched by the OSD agents) and each OSD's admin address;
//! * [`health`]: HEALTH_OK/WARN/ERR with reasons, computed from the map with the placement
//!   function and from the primaries' PG reports;
//! * [`history`]: the rules of a PG's recorded intervals (durable, in the store);
//! * [`lease`]: how long an earlier primary's read lease may still run (`LeaseWait`);
//! * [`pgstats`]: PG states from the primaries' heartbeats, stale and down marking, sums;
//! * [`client_io`]: client I/O rates from the OSDs' heartbeat counters (`status`);
//! * [`store`]: the crash-safe map history, client keyring and PG histories (redb by default);
//! * [`metrics`]: `/metrics` (Prometheus text format) and Prometheus service discovery of
//!   the OSDs' metrics addresses, on `--metrics-listen` (plain HTTP; off when not given);
//! * [`ha`]: the etcd backend for several monitors with one elected leader; the others listen
//!   and redirect every call to it (an empty [`service::MonSlot`] answers with
//!   [`carmine_proto::not_leader`]).
//!
//! Placement itself is not here: it is the `carmine-placement` library, which the OSDs and the
//! clients run themselves, so nobody asks the monitor where an object lives.

pub mod client_io;
pub mod ha;
pub mod health;
pub mod history;
pub mod keyring;
pub mod lease;
pub mod metrics;
pub mod pgstats;
pub mod service;
pub mod state;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use carmine_proto::tls::{ServerTls, TlsError};
use carmine_proto::v1::{mon_admin_server::MonAdminServer, mon_cluster_server::MonClusterServer};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::service::{AdminSvc, ClusterSvc, Gate, MonSlot, Shared};
use crate::state::{MonError, Monitor, Policy};
use crate::store::{Backend, MapStore};

/// Shortest admin token accepted, in characters.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// How long a stopping monitor waits for open calls (other than map streams, which end at
/// once) before it exits anyway.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

/// Monitor configuration (command line flags, each also settable by environment variable).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "carmine-mon",
    version,
    about = "The Carmine monitor: cluster map, health and admin service",
    after_help = "Precedence: command-line flags, then the --config file, then environment \
                  variables, then defaults.",
    args_override_self = true
)]
pub struct MonConfig {
    /// TOML file whose keys are flag names without dashes (`down-grace-ms = 3000`,
    /// `etcd = ["http://..."]`); flags on the command line override it.
    #[arg(long, env = "CARMINE_MON_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (loopback by default; port 0 picks a free port).
    #[arg(long, env = "CARMINE_MON_LISTEN", default_value = "127.0.0.1:6790")]
    pub listen: SocketAddr,
    /// Address clients should use for this monitor, published in etcd when it leads and sent
    /// by the followers in their redirects (default: the bound listen address).
    #[arg(long, env = "CARMINE_MON_ADVERTISE")]
    pub advertise: Option<String>,
    /// Directory of the map store (created if missing); required unless `--etcd` is given.
    #[arg(long, env = "CARMINE_MON_DATA", required_unless_present = "etcd")]
    pub data_dir: Option<PathBuf>,
    /// The bootstrap admin credential: admin calls present it as `authorization: Bearer
    /// <token>` (it is also the admin key `client.admin`, see `carmine_proto::auth`). Required
    /// unless `--insecure`.
    #[arg(long, env = "CARMINE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Accept calls without a credential (each then may do what an OSD does; admin calls too
    /// when no admin token is set). For experiments only: health warns `AUTH_INSECURE`.
    #[arg(long, env = "CARMINE_MON_INSECURE")]
    pub insecure: bool,
    /// Heartbeat interval OSDs are told to keep, in milliseconds.
    #[arg(long, env = "CARMINE_HEARTBEAT_MS", default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// An OSD not heard from for this long is marked down, in milliseconds.
    #[arg(long, env = "CARMINE_DOWN_GRACE_MS", default_value_t = 6000)]
    pub down_grace_ms: u64,
    /// A down OSD is marked out after this long, in milliseconds.
    #[arg(long, env = "CARMINE_OUT_INTERVAL_MS", default_value_t = 600_000)]
    pub out_interval_ms: u64,
    /// Number of epochs of history kept (incrementals and full maps).
    #[arg(long, env = "CARMINE_MAP_HISTORY", default_value_t = 500)]
    pub map_history: u64,
    /// Distinct peers that must report an OSD failed before it is marked down.
    #[arg(long, env = "CARMINE_MIN_FAILURE_REPORTERS", default_value_t = 2)]
    pub min_failure_reporters: usize,
    /// Usage ratio that raises OSD_NEARFULL.
    #[arg(long, default_value_t = 0.85)]
    pub nearfull_ratio: f64,
    /// Usage ratio that raises OSD_FULL.
    #[arg(long, default_value_t = 0.95)]
    pub full_ratio: f64,
    /// etcd endpoints (comma-separated, e.g. `http://127.0.0.1:2379`): keep the map in etcd and
    /// elect one leader among several monitors. Unset: a single monitor on the local store.
    #[arg(long, env = "CARMINE_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Key prefix of this cluster in etcd.
    #[arg(long, env = "CARMINE_ETCD_PREFIX", default_value = "/carmine")]
    pub etcd_prefix: String,
    /// TTL of the leader's etcd lease in seconds: a dead leader is replaced about this fast.
    #[arg(long, env = "CARMINE_ETCD_LEASE_SECS", default_value_t = 5)]
    pub etcd_lease_secs: i64,
    /// This monitor's TLS certificate (PEM, issued by the cluster CA with `carmine cert
    /// issue`, with the addresses clients dial as SANs); needs `--tls-key`.
    #[arg(long, env = "CARMINE_MON_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, env = "CARMINE_MON_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve gRPC without TLS. Required when no `--tls-cert`/`--tls-key` is given: plain
    /// text is never the silent default.
    #[arg(
        long,
        env = "CARMINE_MON_PLAINTEXT",
        value_parser = clap::builder::BoolishValueParser::new(),
        conflicts_with_all = ["tls_cert", "tls_key"]
    )]
    pub plaintext: bool,
    /// Serve Prometheus metrics (`GET /metrics`) and the OSDs' metrics addresses for
    /// Prometheus's HTTP service discovery (`GET /prometheus/targets`) over plain HTTP on
    /// this address (e.g. `127.0.0.1:9283`; port 0 picks one). Off when not given.
    #[arg(long, env = "CARMINE_MON_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

impl MonConfig {
    /// Refuses to run without credentials unless `--insecure` says so.
    pub fn check_credentials(&self) -> Result<(), ServeError> {
        match &self.admin_token {
            // The OSDs hold a hash of it (the admin's data-path key): too short a token could
            // be guessed from one offline.
            Some(t) if t.len() < MIN_ADMIN_TOKEN_LEN => Err(ServeError::Config(format!(
                "the admin token must be at least {MIN_ADMIN_TOKEN_LEN} characters long (e.g. \
                 head -c 24 /dev/urandom | base64)"
            ))),
            None if !self.insecure => Err(ServeError::Config(
                "the monitor needs credentials: give --admin-token (or CARMINE_ADMIN_TOKEN), \
                 or --insecure to accept calls without any"
                    .into(),
            )),
            _ => Ok(()),
        }
    }

    /// Applies the credential flags to a monitor state before it serves: the admin token
    /// becomes the admin key `client.admin`, `--insecure` a health warning.
    pub fn prepare(&self, mon: &mut Monitor) -> Result<(), MonError> {
        mon.set_insecure(self.insecure);
        // Without a token, no admin key from an earlier one stays valid.
        mon.set_admin_secret(
            self.admin_token
                .as_deref()
                .map(carmine_proto::auth::admin_token_secret),
        )?;
        Ok(())
    }

    /// The transport security chosen by `--tls-cert`/`--tls-key` or `--plaintext` (one of
    /// them is required), with the PEM files loaded and checked.
    pub fn server_tls(&self) -> Result<ServerTls, TlsError> {
        ServerTls::choose(
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.plaintext,
            "--tls-cert and --tls-key",
            "--plaintext",
        )
    }

    /// The state machine's policy from these flags.
    pub fn policy(&self) -> Policy {
        Policy {
            heartbeat_interval: Duration::from_millis(self.heartbeat_ms),
            down_grace: Duration::from_millis(self.down_grace_ms),
            out_interval: Duration::from_millis(self.out_interval_ms),
            history: self.map_history.max(2),
            min_failure_reporters: self.min_failure_reporters,
            nearfull_ratio: self.nearfull_ratio,
            full_ratio: self.full_ratio,
        }
    }
}

/// Expands `--config FILE` (or `CARMINE_MON_CONFIG`): every `key = value` of the TOML file
/// becomes `--key value`, placed before the command-line arguments so that those win (the
/// parser lets a later occurrence of a flag override an earlier one).
pub fn args_with_config_file(
    args: Vec<std::ffi::OsString>,
) -> Result<Vec<std::ffi::OsString>, ServeError> {
    let mut path: Option<PathBuf> = std::env::var_os("CARMINE_MON_CONFIG").map(PathBuf::from);
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--config" {
            path = it.next().map(PathBuf::from);
        } else if let Some(p) = s.strip_prefix("--config=") {
            path = Some(PathBuf::from(p));
        }
    }
    let Some(path) = path else { return Ok(args) };
    let bad = |e: String| ServeError::Config(format!("{}: {e}", path.display()));
    let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| bad(e.to_string()))?;
    let mut out: Vec<std::ffi::OsString> = args.iter().take(1).cloned().collect();
    for (key, value) in table {
        if key == "config" {
            continue;
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            // A switch (`plaintext = true`): present or absent.
            toml::Value::Boolean(true) => {
                out.push(format!("--{key}").into());
                continue;
            }
            toml::Value::Boolean(false) => continue,
            toml::Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    _ => Err(bad(format!("{key}: list items must be strings"))),
                })
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            other => return Err(bad(format!("{key}: unsupported value {other}"))),
        };
        out.push(format!("--{key}").into());
        out.push(value.into());
    }
    out.extend(args.into_iter().skip(1));
    Ok(out)
}

/// Errors that stop the monitor.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The state could not be loaded.
    #[error(transparent)]
    Mon(#[from] MonError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Bad configuration.
    #[error("config: {0}")]
    Config(String),
    /// Transport security is not set up (neither TLS nor `--plaintext`, or a bad PEM file).
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    /// The etcd election failed.
    #[error(transparent)]
    Ha(#[from] ha::HaError),
    /// The metrics address could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    MetricsListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The server task panicked or was cancelled.
    #[error("server task: {0}")]
    Task(String),
}

/// Opens the local store, then serves on `listener` until `shutdown` resolves.
pub async fn serve(
    cfg: MonConfig,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let metrics = bind_metrics(&cfg).await?;
    serve_on(cfg, listener, metrics, shutdown).await
}

/// [`serve`] with the metrics listener given (bound by the caller; `--metrics-listen` is not
/// looked at).
pub async fn serve_on(
    cfg: MonConfig,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let dir = cfg
        .data_dir
        .clone()
        .ok_or_else(|| ServeError::Config("--data-dir is required".into()))?;
    let store = MapStore::open(&dir)?;
    cfg.check_credentials()?;
    let mut mon = Monitor::open(store, cfg.policy())?;
    cfg.prepare(&mut mon)?;
    serve_slot_on(cfg, MonSlot::leading(mon), listener, metrics, shutdown).await
}

/// Binds `--metrics-listen` when given, and says where on stdout (scripts read
/// `carmine-mon metrics on <addr>` when the port is 0).
async fn bind_metrics(cfg: &MonConfig) -> Result<Option<TcpListener>, ServeError> {
    let Some(addr) = cfg.metrics_listen else {
        return Ok(None);
    };
    let l = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::MetricsListen { addr, source })?;
    let local = l
        .local_addr()
        .map_err(|source| ServeError::MetricsListen { addr, source })?;
    println!("carmine-mon metrics on {local}");
    Ok(Some(l))
}

/// Serves the map kept in `backend` on `listener` until `shutdown` resolves.
pub async fn serve_with(
    cfg: MonConfig,
    backend: Backend,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    cfg.check_credentials()?;
    let mut mon = Monitor::open(backend, cfg.policy())?;
    cfg.prepare(&mut mon)?;
    serve_slot(cfg, MonSlot::leading(mon), listener, shutdown).await
}

/// Serves whatever `slot` holds on `listener` until `shutdown` resolves (see
/// [`serve_slot_on`]), with `/metrics` on `--metrics-listen` when given.
pub async fn serve_slot(
    cfg: MonConfig,
    shared: Shared,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let metrics = bind_metrics(&cfg).await?;
    serve_slot_on(cfg, shared, listener, metrics, shutdown).await
}

/// Serves whatever `slot` holds on `listener` until `shutdown` resolves: redirects to the
/// leader while the slot is empty (an etcd follower), the monitor once it is installed; and
/// [`metrics`] on `metrics` when given (a follower's says it is not the leader).
pub async fn serve_slot_on(
    cfg: MonConfig,
    shared: Shared,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    cfg.check_credentials()?;
    let tls = cfg.server_tls()?;
    let advertise = match (&cfg.advertise, listener.local_addr()) {
        (Some(a), _) => a.clone(),
        (None, Ok(a)) => a.to_string(),
        (None, Err(_)) => String::new(),
    };
    shared.set_advertise(advertise);
    let metrics_task = metrics.map(|l| {
        let h = metrics::handler(shared.clone(), !cfg.etcd.is_empty());
        tokio::spawn(carmine_metrics::serve(l, h, std::future::pending()))
    });
    tracing::info!(tls = tls.is_tls(), "transport security");
    // The liveness clock: marks OSDs down/out. A quarter of the grace keeps detection within
    // 1.25 x grace. It idles while this monitor follows.
    let tick = Duration::from_millis((cfg.down_grace_ms / 4).clamp(10, 1000));
    let ticker = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(tick);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                iv.tick().await;
                let Some(mon) = shared.get() else { continue };
                let r = match mon.lock() {
                    Ok(mut m) => m.tick(Instant::now()),
                    Err(_) => return,
                };
                if let Err(e) = r {
                    tracing::error!(error = %e, "liveness tick failed");
                }
            }
        })
    };

    if cfg.insecure {
        tracing::warn!("--insecure: calls without a credential are accepted");
    }
    let gate = Gate::new(shared.clone(), cfg.admin_token.as_deref(), cfg.insecure);
    let admin_gate = gate.clone();
    let admin =
        MonAdminServer::with_interceptor(AdminSvc(shared.clone()), move |r| admin_gate.admin(r));
    let (stop_tx, stopping) = watch::channel(false);
    let cluster =
        MonClusterServer::with_interceptor(ClusterSvc::new(shared, stopping.clone()), move |r| {
            gate.cluster(r)
        });
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let server = tls
        .server()?
        .add_service(admin)
        .add_service(cluster)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown);
    // Graceful shutdown waits for every open call. Map streams end by themselves once
    // `stopping` is set; anything else still open after SHUTDOWN_DRAIN is cut off.
    let mut stopped = stopping;
    let res = tokio::select! {
        r = server => r,
        _ = async {
            let _ = stopped.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_DRAIN).await;
        } => {
            tracing::warn!(?SHUTDOWN_DRAIN, "calls still open at shutdown, cut off");
            Ok(())
        }
    };
    ticker.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    res?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> MonConfig {
        let args = args.iter().map(std::ffi::OsString::from).collect();
        MonConfig::parse_from(args_with_config_file(args).unwrap())
    }

    #[test]
    fn transport_security_comes_from_flags_or_the_config_file() {
        let base = [
            "carmine-mon",
            "--admin-token",
            "t",
            "--data-dir",
            "/nonexistent",
        ];
        let e = parse(&base).server_tls().unwrap_err().to_string();
        assert!(e.contains("--tls-cert") && e.contains("--plaintext"), "{e}");
        let mut plain = base.to_vec();
        plain.push("--plaintext");
        assert!(!parse(&plain).server_tls().unwrap().is_tls());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mon.toml");
        let file_arg = file.to_str().unwrap();
        let mut with_file = base.to_vec();
        with_file.extend(["--config", file_arg]);
        std::fs::write(&file, "plaintext = true\n").unwrap();
        assert!(!parse(&with_file).server_tls().unwrap().is_tls());
        std::fs::write(&file, "plaintext = false\n").unwrap();
        assert!(parse(&with_file).server_tls().is_err());
        // TLS files from the config file: a missing one is named.
        std::fs::write(
            &file,
            "tls-cert = \"/nonexistent/mon.pem\"\ntls-key = \"/nonexistent/mon.key\"\n",
        )
        .unwrap();
        let e = parse(&with_file).server_tls().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/mon.pem"), "{e}");
    }
}
