//! Command-line grammar (clap derive).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable text.
    Plain,
    /// One JSON document on stdout.
    Json,
}

/// The Carmine admin command line.
#[derive(Debug, Parser)]
#[command(
    name = "carmine",
    version,
    about = "Administer a Carmine cluster through its monitor",
    after_help = "The monitor address and token come from --mon/--token, CARMINE_MON/CARMINE_TOKEN, or the config file (keys `mon` and `token`)."
)]
pub struct Cli {
    /// Monitor address, host:port.
    #[arg(long, global = true, env = "CARMINE_MON")]
    pub mon: Option<String>,
    /// Admin token.
    #[arg(long, global = true, env = "CARMINE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Config file (TOML with `mon` and `token`, and `tls_ca` or `plaintext = true`).
    #[arg(long, global = true, env = "CARMINE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The cluster CA certificate (PEM): talk to the monitor and the OSDs over TLS and verify
    /// their certificates against it.
    #[arg(
        long,
        global = true,
        env = "CARMINE_TLS_CA",
        conflicts_with = "plaintext"
    )]
    pub tls_ca: Option<PathBuf>,
    /// Talk to the monitor and the OSDs without TLS. One of --tls-ca and --plaintext is
    /// required (or the config file's `tls_ca` / `plaintext = true`).
    #[arg(
        long,
        global = true,
        env = "CARMINE_PLAINTEXT",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub plaintext: bool,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Plain)]
    pub format: Format,
    /// What to do.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Cluster summary like `ceph -s`: health with its checks, monitors, OSDs up/in, pools,
    /// PGs by state, usage, client I/O and recovery rates; `--watch` keeps printing changes
    /// (like `ceph -w`).
    Status(StatusArgs),
    /// Cluster health; `health detail` lists every OSD/PG concerned.
    Health {
        /// `detail` for the per-item lines.
        #[arg(value_parser = ["detail"])]
        detail: Option<String>,
    },
    /// OSD commands.
    #[command(subcommand)]
    Osd(OsdCmd),
    /// Pool commands.
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Placement group commands.
    #[command(subcommand)]
    Pg(PgCmd),
    /// Cluster map commands.
    #[command(subcommand)]
    Map(MapCmd),
    /// Client keys for the data path (issued by the monitor, checked by the OSDs).
    #[command(subcommand)]
    Auth(AuthCmd),
    /// Block images (virtual disks striped over a pool's objects; `carmine-nbd` serves them).
    #[command(subcommand)]
    Image(crate::image::ImageCmd),
    /// Load a pool like `rados bench`: write, then seq or rand reads, verified.
    Bench(crate::bench::BenchArgs),
    /// Make the cluster CA and daemon certificates for TLS on the control plane (local files
    /// only: no monitor is contacted).
    #[command(subcommand)]
    Cert(crate::cert::CertCmd),
    /// Print a shell completion script.
    Completions {
        /// Shell to generate for.
        shell: clap_complete::Shell,
    },
}

/// `carmine status [--watch]`
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// After the summary, print each change as it happens (map events, health transitions,
    /// PG states, I/O) until interrupted.
    #[arg(long, short = 'w')]
    pub watch: bool,
    /// Seconds between two looks at the monitor (with --watch).
    #[arg(long, default_value_t = 1.0, requires = "watch")]
    pub interval: f64,
}

/// `carmine osd ...`
#[derive(Debug, Subcommand)]
pub enum OsdCmd {
    /// List OSDs.
    Ls,
    /// OSDs grouped by host (the failure domain).
    Tree,
    /// Per-OSD usage (from the OSDs' heartbeats) and PG counts, with totals and spread.
    Df,
    /// Mark an OSD out (no more data placed on it).
    Out {
        /// OSD id.
        id: u32,
    },
    /// Mark an OSD in.
    In {
        /// OSD id.
        id: u32,
    },
    /// Mark an OSD down (a live OSD boots again).
    Down {
        /// OSD id.
        id: u32,
    },
    /// Remove a down OSD from the map.
    Rm {
        /// OSD id.
        id: u32,
    },
    /// Set a cluster flag: noout (down OSDs stay in), nodown (OSDs are not marked down).
    Set {
        /// Flag.
        #[arg(value_parser = ["noout", "nodown"])]
        flag: String,
    },
    /// Clear a cluster flag.
    Unset {
        /// Flag.
        #[arg(value_parser = ["noout", "nodown"])]
        flag: String,
    },
    /// Set an OSD's placement weight.
    Reweight {
        /// OSD id.
        id: u32,
        /// New weight (>= 0).
        weight: f64,
    },
    /// An OSD's perf counters, one row per shard, from the OSD's own admin service.
    Perf {
        /// OSD id (its admin address is asked from the monitor).
        #[arg(required_unless_present = "admin_addr", conflicts_with = "admin_addr")]
        id: Option<u32>,
        /// The OSD admin service's HOST:PORT: skips the monitor.
        #[arg(long)]
        admin_addr: Option<String>,
    },
    /// Prepare a new OSD (before its first start): reserve its id and issue its key, bound to
    /// its uuid. The same uuid gets the same id and key again.
    New {
        /// The OSD's uuid (its config's `osd.uuid`).
        #[arg(long)]
        uuid: String,
        /// Write the OSD's key file (TOML `id` and `key`, mode 0600) here, for its config's
        /// `[auth] keyfile`.
        #[arg(long)]
        keyfile: Option<PathBuf>,
    },
}

/// `carmine pool ...`
#[derive(Debug, Subcommand)]
pub enum PoolCmd {
    /// Create a replicated pool.
    Create {
        /// Pool name.
        name: String,
        /// Number of placement groups.
        #[arg(long)]
        pg_num: u32,
        /// Copies of each object (1 to 5): every write is acknowledged once all the PG's
        /// acting OSDs have it.
        #[arg(long, default_value_t = 1)]
        size: u32,
        /// Replicas needed for I/O (default: size - size/2).
        #[arg(long)]
        min_size: Option<u32>,
    },
    /// List pools.
    Ls,
    /// Remove a pool.
    Rm {
        /// Pool name.
        name: String,
    },
    /// Change a pool property (size, min_size, pg_num).
    Set {
        /// Pool name.
        name: String,
        /// Property.
        #[arg(value_parser = ["size", "min_size", "pg_num"])]
        key: String,
        /// New value.
        value: String,
    },
}

/// `carmine pg ...`
#[derive(Debug, Subcommand)]
pub enum PgCmd {
    /// Where an object lives: its PG and the PG's OSDs (primary first).
    Map {
        /// Pool name.
        pool: String,
        /// Object name.
        object: String,
    },
    /// Every PG of every pool with its OSDs.
    Dump,
    /// PGs with their state as their primaries report it (active+clean, degraded, peering,
    /// incomplete...; stale when the primary has not reported it lately, down below min_size,
    /// unknown before any report), acting set and object counts; +inconsistent when the PG's
    /// last scrub found objects whose copies differ.
    Ls {
        /// Only this pool (name).
        #[arg(long)]
        pool: Option<String>,
        /// Only PGs whose state has every one of these names, joined with '+' (e.g.
        /// active+clean, degraded, stale, inconsistent, unknown).
        #[arg(long, value_parser = crate::pg::parse_state_filter)]
        state: Option<crate::pg::StateFilter>,
    },
    /// One PG: its state, acting set, interval, object counts, the intervals recorded since it
    /// was last clean, and what blocks it when it is incomplete.
    Query {
        /// The PG as `pg ls` prints it: the pool's id (or name), a dot and the PG number in hex,
        /// e.g. 1.1a.
        pgid: String,
    },
    /// Scrub a PG now: its primary compares every copy of every object (version, size, data
    /// CRC-32C) across the acting set. Exits with 6 when objects are inconsistent.
    Scrub {
        /// The PG as `pg dump` prints it: the pool's id (or name), a dot and the PG number in
        /// hex, e.g. 1.1a.
        pgid: String,
    },
}

/// `carmine map ...`
#[derive(Debug, Subcommand)]
pub enum MapCmd {
    /// Print the cluster map.
    Get {
        /// Epoch (default: current).
        #[arg(long)]
        epoch: Option<u64>,
    },
}

/// `carmine auth ...`
#[derive(Debug, Subcommand)]
pub enum AuthCmd {
    /// Get-or-create a client key: prints the existing key if the id has one.
    Add {
        /// Client id (printable ASCII without spaces, at most 256 bytes), e.g. client.bench.
        id: String,
        /// Also write the client key file (TOML `id` and `key`, mode 0600) here.
        #[arg(long)]
        keyfile: Option<PathBuf>,
        /// What the key may do: `client` (data I/O and maps) or `admin` (everything).
        #[arg(long, default_value = "client", value_parser = ["client", "admin"])]
        role: String,
    },
    /// Print a client's key.
    Get {
        /// Client id.
        id: String,
        /// Also write the client key file (TOML `id` and `key`, mode 0600) here.
        #[arg(long)]
        keyfile: Option<PathBuf>,
    },
    /// Remove a client's key: OSDs refuse the client from their next keyring refresh.
    Rm {
        /// Client id.
        id: String,
    },
    /// List the client ids that have a key.
    Ls,
}
