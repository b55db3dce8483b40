//! Command execution: resolve the monitor and token, call the monitor, render.

use std::path::PathBuf;
use std::time::Duration;

use carmine_placement::{object_to_pg, ClusterMap};
use carmine_proto::tls::{ClientTls, TlsError};
use carmine_proto::v1::{self, mon_admin_client::MonAdminClient};
use clap::CommandFactory;
use serde::Deserialize;
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::args::{AuthCmd, Cli, Cmd, MapCmd, OsdCmd, PgCmd, PoolCmd};
use crate::output::{self, Out};
use crate::scrub;

/// Default monitor address.
pub const DEFAULT_MON: &str = "127.0.0.1:6790";

/// Everything that can go wrong, each with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The config file is unreadable or malformed.
    #[error("config file {path}: {reason}")]
    Config {
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No token anywhere.
    #[error("no admin credential: pass --token, set CARMINE_TOKEN, or put `token = \"...\"` in the config file")]
    NoToken,
    /// The monitor could not be reached.
    #[error("cannot reach the monitor at {addr}: {reason}")]
    Unreachable {
        /// Address tried.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The monitor refused the token.
    #[error("the monitor refused the credential ({0}); check --token / CARMINE_TOKEN")]
    Refused(String),
    /// The monitor rejected the request.
    #[error("{0}")]
    Rejected(String),
    /// Transport security is not chosen, or its files are unusable.
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    /// `carmine cert` failed.
    #[error(transparent)]
    Cert(#[from] crate::cert::CertError),
    /// An image command failed (`carmine image`).
    #[error(transparent)]
    Image(#[from] carmine_client::ImageError),
    /// Something else failed.
    #[error("{0}")]
    Other(String),
    /// A scrub found inconsistent objects (`output` is its report, printed on stdout).
    #[error("scrub of pg {pg} found {objects} inconsistent objects")]
    Inconsistent {
        /// The PG.
        pg: String,
        /// How many objects.
        objects: usize,
        /// The report.
        output: String,
    },
}

impl CliError {
    /// Process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config { .. } | CliError::Other(_) | CliError::Tls(_) | CliError::Cert(_) => {
                1
            }
            CliError::Unreachable { .. } => 3,
            CliError::NoToken | CliError::Refused(_) => 4,
            CliError::Rejected(_) => 5,
            CliError::Image(e) => image_exit_code(e),
            CliError::Inconsistent { .. } => 6,
        }
    }

    /// What goes to stdout even though the command failed (a scrub's report).
    pub fn stdout(&self) -> Option<&str> {
        match self {
            CliError::Inconsistent { output, .. } => Some(output),
            _ => None,
        }
    }
}

/// Bad names and sizes, missing or existing images are the request's fault (5, like a
/// monitor's rejection); refused credentials 4; the cluster failing the op 1.
fn image_exit_code(e: &carmine_client::ImageError) -> u8 {
    use carmine_client::{Error, ImageError};
    match e {
        ImageError::Cluster(Error::Auth { .. }) => 4,
        ImageError::Cluster(Error::NoSuchPool { .. }) => 5,
        ImageError::Cluster(_) => 1,
        _ => 5,
    }
}

/// A status tonic made because the HTTP/2 connection failed, not one the server sent.
fn is_broken_connection(s: &tonic::Status) -> bool {
    let m = s.message();
    m.starts_with("h2 protocol error") || m == "transport error"
}

fn from_status(addr: &str, s: tonic::Status) -> CliError {
    match s.code() {
        Code::Unauthenticated | Code::PermissionDenied => {
            CliError::Refused(s.message().to_string())
        }
        Code::Unavailable => CliError::Unreachable {
            addr: addr.to_string(),
            reason: s.message().to_string(),
        },
        // The connection broke under the call (tonic's own statuses, not the server's): what
        // a plain-text call to a TLS server gets, its alert read as HTTP/2 frames.
        Code::Internal | Code::Unknown if is_broken_connection(&s) => CliError::Unreachable {
            addr: addr.to_string(),
            reason: s.message().to_string(),
        },
        Code::NotFound | Code::InvalidArgument | Code::AlreadyExists | Code::FailedPrecondition => {
            CliError::Rejected(s.message().to_string())
        }
        _ => CliError::Other(format!("monitor error {:?}: {}", s.code(), s.message())),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    mon: Option<String>,
    token: Option<String>,
    tls_ca: Option<PathBuf>,
    #[serde(default)]
    plaintext: bool,
}

/// The command's transport security as given: the CA file, or plain text. Flags and
/// environment first; the config file's choice is used only when they name none.
fn tls_options(cli: &Cli) -> Result<(Option<PathBuf>, bool), CliError> {
    if cli.tls_ca.is_some() || cli.plaintext {
        return Ok((cli.tls_ca.clone(), cli.plaintext));
    }
    let file = load_file(cli)?;
    Ok((file.tls_ca, file.plaintext))
}

/// The command's transport security, loaded: one of `--tls-ca` and `--plaintext` (or their
/// environment variables or config keys) is required.
fn client_tls(ca: Option<&std::path::Path>, plaintext: bool) -> Result<ClientTls, CliError> {
    Ok(ClientTls::choose(
        ca,
        plaintext,
        "--tls-ca (or CARMINE_TLS_CA, or `tls_ca` in the config file)",
        "--plaintext (or CARMINE_PLAINTEXT=1, or `plaintext = true` in the config file)",
    )?)
}

fn default_config_path() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME") {
        return Some(PathBuf::from(x).join("carmine/config.toml"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/carmine/config.toml"))
}

fn load_file(cli: &Cli) -> Result<FileConfig, CliError> {
    let (path, explicit) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => match default_config_path() {
            Some(p) => (p, false),
            None => return Ok(FileConfig::default()),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(FileConfig::default())
        }
        Err(e) => {
            return Err(CliError::Config {
                path,
                reason: e.to_string(),
            })
        }
    };
    toml::from_str(&text).map_err(|e| CliError::Config {
        path,
        reason: e.to_string(),
    })
}

/// Most redirects one command follows: a leader that changes hands mid-command may send us
/// through one or two followers, but never round in circles.
const MAX_REDIRECTS: usize = 3;

struct Conn {
    tls: ClientTls,
    addr: String,
    client: MonAdminClient<Channel>,
    token: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    /// Listed monitors not tried yet (fail-over when a follower knows no leader).
    rest: Vec<String>,
    redirects: usize,
}

impl Conn {
    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut()
            .insert(carmine_proto::AUTH_HEADER, self.token.clone());
        r.set_timeout(Duration::from_secs(10));
        r
    }

    fn fail(&self, s: tonic::Status) -> CliError {
        let plain_broken = !self.tls.is_tls() && is_broken_connection(&s);
        match from_status(&self.addr, s) {
            CliError::Unreachable { addr, reason } if plain_broken => CliError::Unreachable {
                addr,
                reason: format!("{reason} (if the monitor serves TLS, give --tls-ca)"),
            },
            e => e,
        }
    }

    /// After a failed call: when `s` is a follower's redirect (or a follower that knows no
    /// leader yet while other listed monitors are untried), connects to the leader (or the next
    /// monitor) so the caller can repeat the call — a follower executes nothing, so repeating
    /// is safe. Otherwise the error to report.
    async fn follow(&mut self, s: tonic::Status) -> Result<(), CliError> {
        if self.redirects >= MAX_REDIRECTS {
            return Err(self.fail(s));
        }
        let next = match carmine_proto::leader_redirect(&s) {
            Some(leader) => leader,
            None if carmine_proto::is_not_leader(&s) && !self.rest.is_empty() => {
                self.rest.remove(0)
            }
            None => return Err(self.fail(s)),
        };
        self.redirects += 1;
        let channel =
            connect_one(&self.tls, &next)
                .await
                .map_err(|reason| CliError::Unreachable {
                    addr: next.clone(),
                    reason: format!("redirected by {} ({}): {reason}", self.addr, s.message()),
                })?;
        self.client = MonAdminClient::new(channel);
        self.addr = next;
        Ok(())
    }

    async fn map(&mut self, epoch: u64) -> Result<ClusterMap, CliError> {
        loop {
            let r = self.req(v1::GetMapRequest { epoch });
            match self.client.get_map(r).await {
                Ok(m) => return Ok(m.into_inner().into()),
                Err(s) => self.follow(s).await?,
            }
        }
    }
}

/// Connects to one monitor address (`host:port` or a URI); the error says why not.
async fn connect_one(tls: &ClientTls, one: &str) -> Result<Channel, String> {
    let endpoint = tls.endpoint(one).map_err(|e| e.to_string())?;
    endpoint
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| {
            // The transport error's sources say why (connection refused, timeout...).
            let mut reason = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                reason = format!("{reason}: {s}");
                src = s.source();
            }
            reason
        })
}

async fn connect(cli: &Cli, tls: &ClientTls) -> Result<Conn, CliError> {
    let file = load_file(cli)?;
    let addr = cli
        .mon
        .clone()
        .or(file.mon)
        .unwrap_or_else(|| DEFAULT_MON.to_string());
    let token = cli.token.clone().or(file.token).ok_or(CliError::NoToken)?;
    let token = carmine_proto::bearer(&token).map_err(|e| CliError::Other(e.to_string()))?;
    // Several monitors (etcd HA), comma-separated: use the first that answers; a follower
    // redirects each call to the leader (see `Conn::follow`).
    let mut failures = Vec::new();
    let list: Vec<String> = addr
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    for (i, one) in list.iter().enumerate() {
        match connect_one(tls, one).await {
            Ok(channel) => {
                return Ok(Conn {
                    tls: tls.clone(),
                    addr: one.clone(),
                    client: MonAdminClient::new(channel),
                    token,
                    rest: list[i + 1..].to_vec(),
                    redirects: 0,
                })
            }
            Err(reason) => failures.push(if list.len() > 1 {
                format!("{one}: {reason}")
            } else {
                reason
            }),
        }
    }
    Err(CliError::Unreachable {
        addr: addr.clone(),
        reason: if failures.is_empty() {
            "no address given".into()
        } else {
            failures.join("; ")
        },
    })
}

/// One call, following follower redirects.
macro_rules! call {
    ($c:expr, $method:ident, $msg:expr) => {{
        let msg = $msg;
        loop {
            let r = $c.req(msg.clone());
            match $c.client.$method(r).await {
                Ok(r) => break r.into_inner(),
                Err(s) => $c.follow(s).await?,
            }
        }
    }};
}

/// The watch looks at no more than this many epochs per poll (the rest are diffed at once).
const WATCH_MAX_EPOCHS: u64 = 64;

/// Prints `text` on stdout now (a watch's output is read while it runs).
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // A closed pipe ends nothing here: the next poll tries again, Ctrl-C stops.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// `status --watch`: the summary, then every change until Ctrl-C (see [`crate::status`]).
/// A monitor that stops answering is reported once and reconnected to (through the whole
/// `--mon` list, so an etcd fail-over is followed).
async fn watch(
    cli: &Cli,
    tls: &ClientTls,
    mut c: Conn,
    out: &Out,
    interval: Duration,
) -> Result<String, CliError> {
    let first = call!(c, status, v1::Empty {});
    let mut map = c.map(0).await?;
    match out.format {
        crate::args::Format::Plain => emit(&crate::status::status(out, &first)),
        crate::args::Format::Json => {
            let v: serde_json::Value = serde_json::from_str(&crate::status::status(out, &first))
                .map_err(|e| CliError::Other(e.to_string()))?;
            emit(&format!("{}\n", serde_json::json!({"status": v})));
        }
    }
    let mut w = crate::status::Watch::new(first);
    let mut down: Option<String> = None;
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(String::new()),
            _ = tokio::time::sleep(interval) => {}
        }
        match watch_poll(&mut c, &mut map, &mut w).await {
            Ok(lines) => {
                if down.take().is_some() {
                    emit(&crate::status::watch_line(
                        out,
                        &format!("[INF] monitor {} answers again", c.addr),
                    ));
                }
                for l in lines {
                    emit(&crate::status::watch_line(out, &l));
                }
            }
            Err(e) => {
                let why = e.to_string();
                if down.as_deref() != Some(why.as_str()) {
                    emit(&crate::status::watch_line(out, &format!("[ERR] {why}")));
                }
                down = Some(why);
                if let Ok(next) = connect(cli, tls).await {
                    c = next;
                }
            }
        }
    }
}

/// One look at the monitor: map events for each new epoch, then the status changes.
async fn watch_poll(
    c: &mut Conn,
    map: &mut ClusterMap,
    w: &mut crate::status::Watch,
) -> Result<Vec<String>, CliError> {
    c.redirects = 0;
    let s = call!(c, status, v1::Empty {});
    let mut lines = Vec::new();
    if s.epoch < map.epoch || s.epoch < w.epoch() {
        // Another monitor with an older history answered: start from its map, no events.
        *map = c.map(0).await?;
    }
    let from = map.epoch.max(s.epoch.saturating_sub(WATCH_MAX_EPOCHS));
    for e in from + 1..=s.epoch {
        // An epoch the monitor no longer holds: diff against the newest instead.
        let (next, last) = match c.map(e).await {
            Ok(m) => (m, false),
            Err(_) => (c.map(0).await?, true),
        };
        lines.extend(
            crate::status::map_events(map, &next)
                .into_iter()
                .map(|l| format!("[INF] e{}: {l}", next.epoch)),
        );
        *map = next;
        if last {
            break;
        }
    }
    lines.extend(w.update(s));
    Ok(lines)
}

/// The admin token, for an OSD's admin service: the CLI presents the admin key it stands
/// for (`carmine_proto::auth`), which the OSD checks against the keyring.
fn admin_token_of(cli: &Cli) -> Result<String, CliError> {
    match cli.token.clone() {
        Some(t) => Ok(t),
        None => load_file(cli)?.token.ok_or(CliError::NoToken),
    }
}

/// Runs the parsed command; returns the text to print on stdout.
pub async fn run(cli: Cli) -> Result<String, CliError> {
    let out = Out { format: cli.format };
    if let Cmd::Completions { shell } = &cli.cmd {
        let mut buf = Vec::new();
        clap_complete::generate(*shell, &mut Cli::command(), "carmine", &mut buf);
        return String::from_utf8(buf).map_err(|e| CliError::Other(e.to_string()));
    }
    if let Cmd::Cert(cmd) = &cli.cmd {
        // Local files only: no monitor, no transport security to choose.
        return Ok(crate::cert::run(cmd)?);
    }
    let (tls_ca, plaintext) = tls_options(&cli)?;
    let tls = client_tls(tls_ca.as_deref(), plaintext)?;
    if let Cmd::Bench(args) = &cli.cmd {
        // The data path: client credentials, no admin token (see `bench`). The client
        // library loads the CA itself.
        let mon = cli.mon.clone().or(load_file(&cli)?.mon);
        let mon = mon.unwrap_or_else(|| DEFAULT_MON.to_string());
        return crate::bench::run(&mon, tls_ca, args, cli.format).await;
    }
    if let Cmd::Osd(OsdCmd::Perf {
        admin_addr: Some(addr),
        ..
    }) = &cli.cmd
    {
        // Addressed directly: no monitor involved.
        let t = crate::perf::fetch(&tls, addr, &admin_token_of(&cli)?).await?;
        return Ok(crate::perf::render(&out, None, addr, None, &t));
    }
    if let Cmd::Image(cmd) = &cli.cmd {
        // The data path, like bench: a client key, or the admin token's key.
        let file = load_file(&cli)?;
        let mon = cli.mon.clone().or(file.mon);
        let mon = mon.unwrap_or_else(|| DEFAULT_MON.to_string());
        let token = cli.token.clone().or(file.token);
        return crate::image::run(&mon, tls_ca, token.as_deref(), cmd, cli.format).await;
    }
    let mut c = connect(&cli, &tls).await?;
    Ok(match &cli.cmd {
        Cmd::Completions { .. } | Cmd::Bench(_) | Cmd::Cert(_) | Cmd::Image(_) => String::new(),
        Cmd::Status(a) if a.watch => {
            let interval = Duration::try_from_secs_f64(a.interval)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    CliError::Other("--interval must be a positive number of seconds".into())
                })?;
            watch(&cli, &tls, c, &out, interval).await?
        }
        Cmd::Status(_) => crate::status::status(&out, &call!(c, status, v1::Empty {})),
        Cmd::Health { detail } => {
            output::health(&out, &call!(c, health, v1::Empty {}), detail.is_some())
        }
        Cmd::Osd(cmd) => match cmd {
            OsdCmd::Ls => output::osd_ls(&out, &c.map(0).await?),
            OsdCmd::Tree => output::osd_tree(&out, &c.map(0).await?),
            OsdCmd::Df => crate::status::osd_df(&out, &call!(c, osd_df, v1::Empty {}).osds),
            OsdCmd::Out { id } => output::changed(
                &out,
                &format!("marked osd.{id} out"),
                call!(c, osd_out, v1::OsdIdRequest { id: *id }).epoch,
            ),
            OsdCmd::In { id } => output::changed(
                &out,
                &format!("marked osd.{id} in"),
                call!(c, osd_in, v1::OsdIdRequest { id: *id }).epoch,
            ),
            OsdCmd::Down { id } => output::changed(
                &out,
                &format!("marked osd.{id} down"),
                call!(c, osd_down, v1::OsdIdRequest { id: *id }).epoch,
            ),
            OsdCmd::Rm { id } => output::changed(
                &out,
                &format!("removed osd.{id}"),
                call!(c, osd_rm, v1::OsdIdRequest { id: *id }).epoch,
            ),
            OsdCmd::Set { flag } | OsdCmd::Unset { flag } => {
                let set = matches!(cmd, OsdCmd::Set { .. });
                let epoch = call!(
                    c,
                    set_flag,
                    v1::FlagRequest {
                        flag: flag.clone(),
                        set
                    }
                )
                .epoch;
                let what = format!("{} {flag}", if set { "set" } else { "unset" });
                output::changed(&out, &what, epoch)
            }
            OsdCmd::Reweight { id, weight } => output::changed(
                &out,
                &format!("osd.{id} weight {weight}"),
                call!(
                    c,
                    osd_reweight,
                    v1::OsdWeightRequest {
                        id: *id,
                        weight: *weight
                    }
                )
                .epoch,
            ),
            OsdCmd::New { uuid, keyfile } => {
                let r = call!(c, osd_new, v1::OsdNewRequest { uuid: uuid.clone() });
                crate::auth::osd_new(&out, &r, keyfile.as_deref())?
            }
            OsdCmd::Perf { id, .. } => {
                // clap requires the id when --admin-addr is absent (handled above).
                let id = id.ok_or_else(|| CliError::Other("osd perf needs an OSD id".into()))?;
                let a = call!(c, osd_admin_addr, v1::OsdIdRequest { id });
                let t = crate::perf::fetch(&tls, &a.admin_addr, &admin_token_of(&cli)?).await?;
                let metrics = (!a.metrics_addr.is_empty()).then_some(a.metrics_addr.as_str());
                crate::perf::render(&out, Some(id), &a.admin_addr, metrics, &t)
            }
        },
        Cmd::Pool(cmd) => match cmd {
            PoolCmd::Create {
                name,
                pg_num,
                size,
                min_size,
            } => {
                let r = call!(
                    c,
                    pool_create,
                    v1::PoolCreateRequest {
                        name: name.clone(),
                        pg_num: *pg_num,
                        size: *size,
                        min_size: min_size.unwrap_or(0),
                    }
                );
                output::pool_created(&out, name, r.id, r.epoch)
            }
            PoolCmd::Ls => output::pool_ls(&out, &call!(c, pool_list, v1::Empty {})),
            PoolCmd::Rm { name } => output::changed(
                &out,
                &format!("removed pool {name}"),
                call!(c, pool_rm, v1::PoolNameRequest { name: name.clone() }).epoch,
            ),
            PoolCmd::Set { name, key, value } => output::changed(
                &out,
                &format!("set pool {name} {key} = {value}"),
                call!(
                    c,
                    pool_set,
                    v1::PoolSetRequest {
                        name: name.clone(),
                        key: key.clone(),
                        value: value.clone(),
                    }
                )
                .epoch,
            ),
        },
        Cmd::Pg(PgCmd::Map { pool, object }) => {
            let map = c.map(0).await?;
            let p = map
                .pool_by_name(pool)
                .ok_or_else(|| CliError::Rejected(format!("no pool named {pool:?}")))?;
            let pg = object_to_pg(object.as_bytes(), p.pg_num)
                .map_err(|e| CliError::Other(e.to_string()))?;
            output::pg_map(&out, &map, p, object, pg)
        }
        Cmd::Pg(PgCmd::Dump) => output::pg_dump(&out, &c.map(0).await?),
        Cmd::Pg(PgCmd::Ls { pool, state }) => {
            let map = c.map(0).await?;
            let pools: Vec<&carmine_placement::Pool> = match pool {
                Some(name) => vec![map
                    .pool_by_name(name)
                    .ok_or_else(|| CliError::Rejected(format!("no pool named {name:?}")))?],
                None => map.pools.values().collect(),
            };
            let pgs = call!(c, pg_list, v1::Empty {}).pgs;
            let bad = call!(c, list_inconsistent_pgs, v1::Empty {}).pgs;
            crate::pg::pg_ls(&out, &map, &pools, &pgs, &bad, state.as_ref())
        }
        Cmd::Pg(PgCmd::Query { pgid }) => {
            let map = c.map(0).await?;
            let (pool, pg) = scrub::parse_pgid(&map, pgid)?;
            let r = call!(c, pg_query, v1::PgHistoryRequest { pool: pool.id, pg });
            let bad = call!(c, list_inconsistent_pgs, v1::Empty {}).pgs;
            let bad = bad.iter().find(|b| b.pool == pool.id && b.pg == pg);
            crate::pg::pg_query(&out, pool, pg, &r, bad)
        }
        Cmd::Pg(PgCmd::Scrub { pgid }) => {
            let map = c.map(0).await?;
            let (pool, pg) = scrub::parse_pgid(&map, pgid)?;
            let primary = carmine_placement::pg_to_osds(&map, pool, pg)
                .first()
                .copied()
                .ok_or_else(|| {
                    CliError::Rejected(format!("pg {pgid} has no OSD up in epoch {}", map.epoch))
                })?;
            let addr = call!(c, osd_admin_addr, v1::OsdIdRequest { id: primary }).admin_addr;
            let r = scrub::scrub(&tls, &addr, &admin_token_of(&cli)?, pool.id, pg).await?;
            scrub::render(&out, primary, &r)?
        }
        Cmd::Map(MapCmd::Get { epoch }) => output::map(&out, &c.map(epoch.unwrap_or(0)).await?),
        Cmd::Auth(cmd) => match cmd {
            AuthCmd::Add { id, keyfile, role } => {
                let role = if role == "admin" {
                    v1::KeyRole::Admin
                } else {
                    v1::KeyRole::Client
                };
                let r = call!(
                    c,
                    auth_add,
                    v1::AuthIdRequest {
                        id: id.clone(),
                        role: role.into()
                    }
                );
                crate::auth::key(&out, &r, keyfile.as_deref())?
            }
            AuthCmd::Get { id, keyfile } => {
                let r = call!(
                    c,
                    auth_get,
                    v1::AuthIdRequest {
                        id: id.clone(),
                        ..Default::default()
                    }
                );
                crate::auth::key(&out, &r, keyfile.as_deref())?
            }
            AuthCmd::Rm { id } => crate::auth::removed(
                &out,
                id,
                &call!(
                    c,
                    auth_rm,
                    v1::AuthIdRequest {
                        id: id.clone(),
                        ..Default::default()
                    }
                ),
            ),
            AuthCmd::Ls => crate::auth::ls(&out, &call!(c, auth_list, v1::Empty {})),
        },
    })
}
