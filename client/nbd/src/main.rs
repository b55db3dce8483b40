//! `carmine-nbd`: serves Carmine block images over NBD.
//!
//!     carmine-nbd --mon 10.0.0.1:6789 --keyfile client.key --plaintext \
//!         --image rbd/vm1 --image rbd/vm2 --listen 0.0.0.0:10809
//!
//! Each `--image POOL/NAME` is an export of that name; the first is also the default export
//! (the empty name). Every image is opened before listening: a missing image is an error and
//! a non-zero exit. When listening, one line `carmine-nbd: serving N export(s) on ADDR` goes
//! to stdout (scripts and tests wait for it); logs go to stderr (`RUST_LOG`, default info).
//!
//! TLS for NBD clients (NBD_OPT_STARTTLS): `--nbd-tls-cert F --nbd-tls-key F` (PEM, e.g. from
//! `carmine cert issue --ip ...`), with `--nbd-tls-mode required` (the default: every option
//! before STARTTLS is refused with ERR_TLS_REQD) or `optional`. Unrelated to `--tls-ca`, which
//! is this process's TLS towards the monitor.
//!
//! SIGTERM or SIGINT: stop accepting, let connections finish their in-flight requests (at
//! most 10 s), exit 0.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use carmine_client::image::{Image, ImageError, ImageSpec};
use carmine_client::{Client, ClientConfig, Credentials, KeyFileError};
use carmine_nbd::{Export, NbdTls, Server, ServerConfig, TlsMode};
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::info;

#[derive(Debug, Parser)]
#[command(
    name = "carmine-nbd",
    version,
    about = "Serve Carmine block images over NBD"
)]
struct Args {
    /// An image to export, as POOL/NAME (also its export name). Repeatable; the first is the
    /// default export.
    #[arg(long = "image", value_name = "POOL/NAME", required = true)]
    images: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:10809", value_name = "HOST:PORT")]
    listen: String,
    /// Monitor address(es), comma-separated host:port.
    #[arg(long, env = "CARMINE_MON")]
    mon: String,
    /// Client key file (TOML `id`, `key`), from `carmine auth add --keyfile`.
    #[arg(long, env = "CARMINE_KEYFILE")]
    keyfile: PathBuf,
    /// The cluster CA certificate (PEM): talk to the monitor over TLS, verified against it.
    #[arg(long, env = "CARMINE_TLS_CA", conflicts_with = "plaintext")]
    tls_ca: Option<PathBuf>,
    /// Talk to the monitor without TLS. One of --tls-ca and --plaintext is required.
    #[arg(
        long,
        env = "CARMINE_PLAINTEXT",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    plaintext: bool,
    /// NBD connections served at once (more wait in the listen backlog).
    #[arg(long, default_value_t = 64)]
    max_connections: usize,
    /// Deadline of one cluster op, retries included, in seconds.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    op_timeout: u64,
    /// Certificate chain (PEM) offered to NBD clients over NBD_OPT_STARTTLS; needs
    /// --nbd-tls-key. Without it, NBD clients are served in plain text only.
    #[arg(long, value_name = "FILE", requires = "nbd_tls_key")]
    nbd_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --nbd-tls-cert.
    #[arg(long, value_name = "FILE", requires = "nbd_tls_cert")]
    nbd_tls_key: Option<PathBuf>,
    /// `required`: NBD clients must upgrade to TLS before any other option; `optional`:
    /// they may.
    #[arg(
        long,
        value_enum,
        default_value = "required",
        requires = "nbd_tls_cert"
    )]
    nbd_tls_mode: NbdTlsMode,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum NbdTlsMode {
    Required,
    Optional,
}

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error("one of --tls-ca and --plaintext (or CARMINE_TLS_CA / CARMINE_PLAINTEXT) is required")]
    NoTransport,
    #[error("{0}")]
    KeyFile(#[from] KeyFileError),
    #[error("--image {spec}: {source}")]
    Spec {
        spec: String,
        #[source]
        source: ImageError,
    },
    #[error("--image {0} given twice")]
    Duplicate(String),
    #[error("connecting to the cluster: {0}")]
    Connect(#[source] carmine_client::Error),
    #[error("opening image {spec}: {source}")]
    Open {
        spec: String,
        #[source]
        source: ImageError,
    },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--nbd-tls-cert/--nbd-tls-key: {0}")]
    NbdTls(#[source] carmine_proto::tls::TlsError),
    #[error("installing the signal handler: {0}")]
    Signal(#[source] std::io::Error),
}

fn main() -> ExitCode {
    let args = Args::parse();
    // rustls warns on every libnbd connection (it sends an IP address as SNI).
    let default_filter = || tracing_subscriber::EnvFilter::new("info,rustls=error");
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("carmine-nbd: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("carmine-nbd: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), MainError> {
    let mut specs: Vec<ImageSpec> = Vec::new();
    for s in &args.images {
        let spec = ImageSpec::parse(s).map_err(|source| MainError::Spec {
            spec: s.clone(),
            source,
        })?;
        if specs.contains(&spec) {
            return Err(MainError::Duplicate(s.clone()));
        }
        specs.push(spec);
    }
    // Checked before connecting, so that a bad certificate fails at once.
    let nbd_tls = match (&args.nbd_tls_cert, &args.nbd_tls_key) {
        (Some(cert), Some(key)) => Some(NbdTls {
            config: Arc::new(
                carmine_proto::tls::server_config(cert, key).map_err(MainError::NbdTls)?,
            ),
            mode: match args.nbd_tls_mode {
                NbdTlsMode::Required => TlsMode::Required,
                NbdTlsMode::Optional => TlsMode::Optional,
            },
        }),
        _ => None,
    };
    let creds = Credentials::load(&args.keyfile)?;
    let mut cfg = ClientConfig::new(args.mon.clone(), creds);
    cfg.op_timeout = Duration::from_secs(args.op_timeout.max(1));
    let cfg = match (&args.tls_ca, args.plaintext) {
        (Some(ca), false) => cfg.with_ca(ca),
        (None, true) => cfg.plaintext(),
        _ => return Err(MainError::NoTransport),
    };
    let client = Arc::new(Client::connect(cfg).await.map_err(MainError::Connect)?);

    let mut exports = Vec::with_capacity(specs.len());
    for spec in &specs {
        let image = Image::open(client.clone(), &spec.pool, &spec.name)
            .await
            .map_err(|source| MainError::Open {
                spec: spec.to_string(),
                source,
            })?;
        let i = image.info();
        info!(image = %spec, size = i.size, object_size = i.object_size, id = %i.id, "opened");
        exports.push(Export {
            name: spec.to_string(),
            description: format!(
                "carmine image {spec} ({} bytes, {} byte objects)",
                i.size, i.object_size
            ),
            backend: Arc::new(image),
        });
    }

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|source| MainError::Listen {
            addr: args.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| MainError::Listen {
        addr: args.listen.clone(),
        source,
    })?;
    let n = exports.len();
    let tls_mode = nbd_tls.as_ref().map(|t| t.mode);
    let server = Arc::new(Server::new(
        exports,
        ServerConfig {
            max_connections: args.max_connections.max(1),
            tls: nbd_tls,
            ..ServerConfig::default()
        },
    ));

    let shutdown = CancellationToken::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(MainError::Signal)?;
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            r = tokio::signal::ctrl_c() => match r {
                Ok(()) => info!("SIGINT: shutting down"),
                Err(e) => tracing::warn!("waiting for SIGINT: {e}"),
            },
        }
        stop.cancel();
    });

    if let Some(t) = &tls_mode {
        info!(mode = ?t, "NBD clients: TLS (NBD_OPT_STARTTLS)");
    }
    println!("carmine-nbd: serving {n} export(s) on {addr}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let drained = server.run(listener, shutdown).await;
    info!(drained, "stopped");
    Ok(())
}
