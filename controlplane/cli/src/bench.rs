//! `carmine bench`: load a pool like `rados bench` (the engine is the `carmine-bench` crate).
//!
//! Unlike the other commands it talks to the data path: it needs client credentials (a key
//! file from `carmine auth add --keyfile`, or `--client-id` + `--key`) instead of the admin
//! token; the same key fetches the maps from the monitor.
//! Progress goes to stderr once a second; the summary (or `--format json`) to stdout. Exit
//! status 1 when any op failed or any read did not verify.

use std::path::PathBuf;
use std::time::Duration;

use carmine_bench::{BenchConfig, Mode};
use carmine_client::{AuthKey, ClientConfig, Credentials};
use clap::{Args, ValueEnum};

use crate::args::Format;
use crate::run::CliError;

/// What `carmine bench` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchMode {
    /// Write (write_full) `--block-size` objects `<prefix>_<n>`, n cycling over `--objects`.
    Write,
    /// Read those objects in order.
    Seq,
    /// Read those objects at random.
    Rand,
}

/// `carmine bench --pool P [write|seq|rand]`
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to do.
    #[arg(value_enum, default_value_t = BenchMode::Write)]
    pub mode: BenchMode,
    /// Pool name.
    #[arg(long)]
    pub pool: String,
    /// Run time (write also finishes its first pass over the objects).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Object / read size: bytes, or with K, M (KiB, MiB) suffix.
    #[arg(long, default_value = "4K", value_parser = parse_size)]
    pub block_size: u32,
    /// Number of objects written (reads use what a write run with the same prefix left).
    #[arg(long, default_value_t = 1024)]
    pub objects: u64,
    /// Ops in flight per client.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Independent clients (own map, own connections).
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Object name prefix: objects are `<prefix>_<n>`.
    #[arg(long, default_value = "bench")]
    pub prefix: String,
    /// Client key file (TOML `id`, `key`), from `carmine auth add --keyfile`.
    #[arg(long, env = "CARMINE_KEYFILE", conflicts_with = "client_id")]
    pub keyfile: Option<PathBuf>,
    /// Client id (with --key, instead of --keyfile).
    #[arg(long, requires = "key")]
    pub client_id: Option<String>,
    /// Client key, 64 hex digits (with --client-id).
    #[arg(long, env = "CARMINE_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Do not check the data read.
    #[arg(long)]
    pub no_verify: bool,
    /// Deadline of one op, retries included, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub op_timeout: f64,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Each worker sleeps this long (milliseconds) before each op: with `--concurrency 1`,
    /// every op finds the OSDs idle (a probe of their wake-up latency).
    #[arg(long, default_value_t = 0.0)]
    pub pause_ms: f64,
    /// End the run after this many ops (before `--seconds` if it comes first).
    #[arg(long)]
    pub ops: Option<u64>,
    /// How the ops reach the OSDs: kernel TCP (tokio), or smoltcp on a DPDK memif port polled
    /// by one pinned reactor shard (no kernel on the data path; needs hugepages and an OSD
    /// whose `net.device` is the memif master at `--memif-socket`).
    #[arg(long, value_enum, default_value_t = Transport::Kernel)]
    pub transport: Transport,
    /// memif: the OSD's memif socket.
    #[arg(long, default_value = "/run/carmine/memif.sock")]
    pub memif_socket: PathBuf,
    /// memif: the bench stack's address on the link, `a.b.c.d/len`.
    #[arg(long, default_value = "10.90.0.2/24")]
    pub memif_ip: String,
    /// memif: the core the bench shard is pinned to.
    #[arg(long, default_value_t = 1)]
    pub shard_core: usize,
    /// memif: the bench shard busy-polls, or naps when idle (adaptive).
    #[arg(long, value_enum, default_value_t = ShardIdle::Busy)]
    pub shard_idle: ShardIdle,
}

/// `--transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    Kernel,
    Memif,
}

/// `--shard-idle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShardIdle {
    Busy,
    Adaptive,
}

/// The memif transport's settings from the arguments.
fn shard_transport(a: &BenchArgs) -> Result<carmine_bench::shard::ShardTransport, CliError> {
    let bad = || CliError::Other(format!("--memif-ip {:?}: expected a.b.c.d/len", a.memif_ip));
    let (ip, len) = a.memif_ip.split_once('/').ok_or_else(bad)?;
    let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let prefix_len: u8 = len
        .parse()
        .ok()
        .filter(|l| (1..=30).contains(l))
        .ok_or_else(bad)?;
    Ok(carmine_bench::shard::ShardTransport {
        socket: a.memif_socket.clone(),
        ip,
        prefix_len,
        core: a.shard_core,
        idle: match a.shard_idle {
            ShardIdle::Busy => carmine_reactor::IdlePolicy::Busy,
            ShardIdle::Adaptive => carmine_reactor::IdlePolicy::adaptive(),
        },
    })
}

/// `4096`, `4K`, `4KiB`, `1M`, `1MiB` (K = 1024), at most 4 GiB - 1.
pub fn parse_size(s: &str) -> Result<u32, String> {
    let n = crate::units::parse_bytes(s)?;
    u32::try_from(n).map_err(|_| format!("{s:?} is out of range"))
}

fn credentials(a: &BenchArgs) -> Result<Credentials, CliError> {
    match (&a.keyfile, &a.client_id, &a.key) {
        (Some(path), None, _) => Credentials::load(path).map_err(|e| CliError::Other(e.to_string())),
        (None, Some(id), Some(key)) => Ok(Credentials {
            id: id.clone(),
            key: AuthKey::from_hex(key)
                .map_err(|e| CliError::Other(format!("--key: {e}")))?,
        }),
        _ => Err(CliError::Other(
            "bench needs client credentials: --keyfile F (or CARMINE_KEYFILE), or --client-id ID --key HEX".into(),
        )),
    }
}

fn duration(secs: f64, what: &str) -> Result<Duration, CliError> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| CliError::Other(format!("{what} must be a positive number of seconds")))
}

/// Runs the bench against the monitor(s) `mon`; returns the summary for stdout.
/// `tls_ca`: the cluster CA for TLS, `None` for plain text (the command's choice, already
/// checked).
pub async fn run(
    mon: &str,
    tls_ca: Option<PathBuf>,
    a: &BenchArgs,
    format: Format,
) -> Result<String, CliError> {
    let creds = credentials(a)?;
    let mut client = ClientConfig::new(mon, creds);
    client = match tls_ca {
        Some(ca) => client.with_ca(ca),
        None => client.plaintext(),
    };
    client.op_timeout = duration(a.op_timeout, "--op-timeout")?;
    let cfg = BenchConfig {
        mode: match a.mode {
            BenchMode::Write => Mode::Write,
            BenchMode::Seq => Mode::Seq,
            BenchMode::Rand => Mode::Rand,
        },
        pool: a.pool.clone(),
        duration: duration(a.seconds, "--seconds")?,
        block_size: a.block_size,
        objects: a.objects,
        concurrency: a.concurrency,
        clients: a.clients,
        prefix: a.prefix.clone(),
        verify: !a.no_verify,
        pause: Duration::try_from_secs_f64(a.pause_ms / 1e3)
            .map_err(|_| CliError::Other("--pause-ms must be >= 0".into()))?,
        max_ops: a.ops,
    };
    // On a terminal: a bar over the run time, the latest second's figures as its message.
    // Otherwise (scripts, logs): one line per second, as before.
    let bar = if a.quiet {
        None
    } else {
        crate::progress::bar(
            cfg.duration.as_secs().max(1),
            "s",
            &format!("bench {}", a.pool),
        )
    };
    let quiet = a.quiet;
    let started = std::time::Instant::now();
    let show = |line: &str| match &bar {
        Some(b) => {
            if line == carmine_bench::PROGRESS_HEADER {
                b.println(line);
            } else {
                b.set_position(started.elapsed().as_secs().min(b.length().unwrap_or(0)));
                b.set_message(line.trim().to_string());
            }
        }
        None if !quiet => eprintln!("{line}"),
        None => {}
    };
    let report = match a.transport {
        Transport::Kernel => carmine_bench::run(&client, &cfg, show).await,
        Transport::Memif => {
            let t = shard_transport(a)?;
            carmine_bench::shard::run_on_shard(&client, &cfg, &t, show).await
        }
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let report = report.map_err(|e| match e {
        carmine_bench::BenchError::Client(carmine_client::Error::Mon(m)) => CliError::Unreachable {
            addr: mon.to_owned(),
            reason: m.to_string(),
        },
        carmine_bench::BenchError::Client(e @ carmine_client::Error::NoSuchPool { .. }) => {
            CliError::Rejected(e.to_string())
        }
        e => CliError::Other(e.to_string()),
    })?;
    let text = match format {
        Format::Json => serde_json::to_string(&report)
            .map(|s| s + "\n")
            .map_err(|e| CliError::Other(e.to_string()))?,
        Format::Plain => report.to_text(),
    };
    if report.clean() {
        Ok(text)
    } else {
        // The figures still go to stdout; the status says the data or ops were not right.
        print!("{text}");
        Err(CliError::Other(format!(
            "bench: {} failed ops, {} reads that did not verify{}",
            report.errors,
            report.mismatches,
            report
                .first_problem
                .as_deref()
                .map(|p| format!(" (first: {p})"))
                .unwrap_or_default()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4kib"), Ok(4096));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("x").is_err());
        assert!(parse_size("8192M").is_err());
    }
}
