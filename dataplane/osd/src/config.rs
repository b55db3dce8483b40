//! `carmine-osd run --config osd.toml`: the daemon's configuration.
//!
//! One TOML file, parsed with `serde` + `toml` (a well-kept parser: no hand-written config
//! grammar), then checked as a whole by [`Config::validate`] so that a bad file is refused
//! with a message naming the key, before anything is started. The format is documented in
//! `dataplane/osd/README.md`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use carmine_proto::tls::{ClientTls, ServerTls, TlsError};
use serde::Deserialize;

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub osd: OsdSection,
    pub mon: MonSection,
    pub admin: AdminSection,
    /// Prometheus metrics over HTTP; absent: not served.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// The OSD's own credential; absent: none (only a monitor run with `--insecure` lets
    /// such an OSD in).
    pub auth: Option<AuthSection>,
    /// Required in effect: [`Config::validate`] refuses a file without it.
    #[serde(default)]
    pub tls: TlsSection,
    #[serde(default)]
    pub reactor: ReactorSection,
    pub net: NetSection,
    pub store: StoreSection,
    #[serde(default)]
    pub spdk: SpdkSection,
}

/// `[osd]`: identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsdSection {
    /// Persistent identity: the monitor maps it to the OSD id.
    pub uuid: String,
    /// Failure domain.
    pub host: String,
    /// Placement weight on first boot.
    #[serde(default = "one")]
    pub weight: f64,
    /// Seconds between background scrubs of each PG this OSD is primary for (0: none, only
    /// `carmine pg scrub`).
    #[serde(default = "day")]
    pub scrub_interval_s: u64,
}

fn one() -> f64 {
    1.0
}

/// The default scrub interval: a day, in seconds.
fn day() -> u64 {
    24 * 3600
}

/// `[mon]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonSection {
    /// "host:port", comma-separated for several monitors.
    pub addr: String,
}

/// `[admin]`: the OSD's own admin gRPC (perf counters, config). Its callers are checked
/// against the keyring from the monitor: no token is configured here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub listen: SocketAddr,
}

/// `[metrics]`: where the agent serves `GET /metrics` (Prometheus text format, plain HTTP:
/// counters only, no secret). Off unless `listen` is set: several OSDs share a host, so no
/// default port would fit them all (port 0 picks a free one, printed in the ready line).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    pub listen: Option<SocketAddr>,
}

/// `[auth]`: the OSD's key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// The key file `carmine osd new --uuid <uuid> --keyfile <path>` wrote: TOML with `id`
    /// (`osd.<n>`) and `key` (64 hex digits). Keep it readable by the OSD only.
    pub keyfile: PathBuf,
}

/// An OSD key file's contents.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    id: String,
    key: String,
}

/// Why an OSD key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl AuthSection {
    /// Reads the key file: (key id `osd.<n>`, 32-byte secret).
    pub fn load_key(&self) -> Result<(String, [u8; 32]), KeyFileError> {
        let path = &self.keyfile;
        let bad = |reason: String| KeyFileError::Invalid {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: path.clone(),
            source,
        })?;
        let k: KeyFile = toml::from_str(&text).map_err(|e| bad(e.message().to_string()))?;
        let n =
            k.id.strip_prefix("osd.")
                .and_then(|n| n.parse::<u32>().ok())
                .ok_or_else(|| bad(format!("id {:?} is not an OSD key id (osd.<n>)", k.id)))?;
        let key = carmine_wire::AuthKey::from_hex(&k.key).map_err(|e| bad(format!("key: {e}")))?;
        Ok((format!("osd.{n}"), *key.as_bytes()))
    }
}

/// `[tls]`: the control plane's transport security ([`carmine_proto::tls`]). Either `ca`,
/// `cert` and `key` (TLS: the monitor and the peers' admin services are verified against
/// `ca`, and this OSD's admin service presents `cert`, which must carry the admin listen
/// address as an IP SAN), or `plaintext = true`. Neither is refused: plain text is never
/// the silent default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The cluster CA certificate (PEM).
    pub ca: Option<PathBuf>,
    /// This OSD's certificate (PEM), issued by the CA.
    pub cert: Option<PathBuf>,
    /// The key of `cert` (PEM).
    pub key: Option<PathBuf>,
    /// No TLS on the control plane.
    #[serde(default)]
    pub plaintext: bool,
}

const TLS_OPTS: &str = "[tls] ca, cert and key";
const PLAIN_OPT: &str = "[tls] plaintext = true";

/// How an idle shard waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Idle {
    /// Spin forever: bare metal, dedicated cores.
    Busy,
    /// Spin, yield, then sleep on the device fd / a timer: tests, shared machines.
    Adaptive,
}

/// `[reactor]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReactorSection {
    /// One shard per entry, pinned to that core.
    #[serde(default = "core0")]
    pub cores: Vec<usize>,
    #[serde(default = "adaptive")]
    pub idle: Idle,
    #[serde(default = "yes")]
    pub pin: bool,
    /// Adaptive idle: empty loop iterations a shard spins before it yields and sleeps
    /// (default 2048 on DPDK, 64 on kernel sockets). Lower it where several OSDs share a core:
    /// a shard spinning for milliseconds holds the core the next hop of a replicated write
    /// waits for.
    #[serde(default)]
    pub spin: Option<u32>,
}

fn core0() -> Vec<usize> {
    vec![0]
}
fn adaptive() -> Idle {
    Idle::Adaptive
}
fn yes() -> bool {
    true
}

impl Default for ReactorSection {
    fn default() -> Self {
        ReactorSection {
            cores: core0(),
            idle: adaptive(),
            pin: true,
            spin: None,
        }
    }
}

/// Which TCP stack carries client traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetBackend {
    /// Kernel sockets (laptops, unit tests, the benchmark's baseline).
    Kernel,
    /// A DPDK port and one smoltcp interface per shard.
    Dpdk,
}

/// `[net]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSection {
    pub backend: NetBackend,
    /// kernel: the address to bind ("127.0.0.1"); dpdk: the interface address with its
    /// prefix ("10.77.0.21/24").
    pub ip: String,
    /// dpdk: default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// dpdk: a vdev string ("net_af_packet0,iface=eth0") or a PCI address ("0000:03:00.0").
    pub device: Option<String>,
    /// Shard i listens on base_port + i; 0 picks free ports (kernel only).
    #[serde(default = "default_port")]
    pub base_port: u16,
    /// Connections per shard (authenticated or not; see `max_unauthenticated`).
    #[serde(default = "default_conns")]
    pub max_connections: usize,
    /// Of those, at most this many may still be in their handshake; a new connection beyond it
    /// evicts the oldest one still handshaking (see [`crate::messenger::Bounds`]).
    #[serde(default = "default_unauth")]
    pub max_unauthenticated: usize,
    /// A connection that has not authenticated within this many milliseconds is closed.
    #[serde(default = "default_handshake_ms")]
    pub handshake_timeout_ms: u64,
    /// A client session with nothing in flight and no bytes for this many seconds is closed
    /// (0: never). OSD sessions (replica links) are exempt.
    #[serde(default = "default_idle_s")]
    pub idle_timeout_s: u64,
    /// Ops one connection may have in flight; beyond it the shard stops reading it.
    #[serde(default = "default_conn_ops")]
    pub max_ops_per_connection: u32,
    /// Bytes one connection may hold in the shard (read replies reserved, write data, replies
    /// not yet sent), in KiB; beyond it the shard stops reading it.
    #[serde(default = "default_conn_kib")]
    pub max_kib_per_connection: usize,
    /// Bytes all connections of one shard may hold together (the same accounting), in MiB:
    /// a read or write waits for room before it reaches the store.
    #[serde(default = "default_shard_mib")]
    pub shard_memory_mib: usize,
    /// dpdk: the IP MTU of the port (576 to 9000; default 1500). Jumbo frames carry a 4 KiB
    /// op in one frame instead of three. An af_packet port needs ring frames that big: add
    /// `framesz=` (and `blocksz=`, a multiple of it) to the vdev string (e.g. 9216 and 36864
    /// for 9000). The kernel backend uses the interface's own MTU.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// dpdk: the user-space stack's MAC address: "port" (the port's own), "auto" (the
    /// default), or "xx:xx:xx:xx:xx:xx". See [`Config::stack_mac`].
    pub mac: Option<String>,
}

/// Which MAC the user-space stack uses, from `net.mac`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacChoice {
    /// The port's own address.
    Port,
    /// A locally administered address derived from the port's (see [`derived_mac`]).
    Derived,
    Fixed([u8; 6]),
}

/// A locally administered unicast address that differs from `port` (bit 1 of the first byte
/// set, multicast bit clear, the top bit of the fourth byte flipped).
pub fn derived_mac(port: [u8; 6]) -> [u8; 6] {
    let mut m = port;
    m[0] = (m[0] | 0x02) & !0x01;
    m[3] ^= 0x80;
    m
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn default_port() -> u16 {
    6800
}
fn default_mtu() -> u16 {
    1500
}
fn default_conns() -> usize {
    64
}
fn default_unauth() -> usize {
    crate::messenger::Bounds::DEFAULT.max_unauthenticated
}
fn default_handshake_ms() -> u64 {
    crate::messenger::Bounds::DEFAULT
        .handshake_timeout
        .as_millis() as u64
}
fn default_idle_s() -> u64 {
    crate::messenger::Bounds::DEFAULT
        .idle_timeout
        .map_or(0, |d| d.as_secs())
}
fn default_conn_ops() -> u32 {
    crate::messenger::Bounds::DEFAULT.max_ops_per_conn
}
fn default_conn_kib() -> usize {
    crate::messenger::Bounds::DEFAULT.max_bytes_per_conn >> 10
}
fn default_shard_mib() -> usize {
    crate::messenger::Bounds::DEFAULT.shard_bytes >> 20
}

/// Which object store each shard runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Memstore,
    Bdevstore,
}

/// The SPDK bdev under bdevstore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BdevType {
    Malloc,
    Aio,
    VirtioBlk,
    /// Keeps no data: refused for a durable store (benchmarks of the stack only).
    Null,
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    pub kind: StoreKind,
    pub bdev: Option<BdevType>,
    /// aio: file or block device; virtio-blk: vhost-user socket.
    pub path: Option<PathBuf>,
    /// malloc: bdev size; aio: size of the file when it has to be created.
    pub size_mib: Option<u64>,
}

/// `[spdk]`: the DPDK EAL that both DPDK and SPDK run on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpdkSection {
    #[serde(default = "default_mem")]
    pub mem_mib: u32,
    /// Hugepage file prefix, unique per process on one machine.
    pub file_prefix: Option<String>,
}

fn default_mem() -> u32 {
    512
}

impl Default for SpdkSection {
    fn default() -> Self {
        SpdkSection {
            mem_mib: default_mem(),
            file_prefix: None,
        }
    }
}

/// The dpdk backend's parsed interface address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfaceAddr {
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source: Box::new(source),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the keys against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.osd.uuid.trim().is_empty() {
            return Err(invalid("osd.uuid", "must not be empty"));
        }
        if self.osd.host.trim().is_empty() {
            return Err(invalid("osd.host", "must not be empty"));
        }
        if !(self.osd.weight.is_finite() && self.osd.weight >= 0.0) {
            return Err(invalid("osd.weight", "must be a finite number >= 0"));
        }
        if self.mon.addr.trim().is_empty() {
            return Err(invalid("mon.addr", "must not be empty"));
        }
        let t = &self.tls;
        match (
            t.plaintext,
            t.ca.is_some(),
            t.cert.is_some(),
            t.key.is_some(),
        ) {
            (true, false, false, false) | (false, true, true, true) => {}
            (false, false, false, false) => {
                return Err(TlsError::NotChosen {
                    tls: TLS_OPTS,
                    plaintext: PLAIN_OPT,
                }
                .into())
            }
            (true, ..) => {
                return Err(TlsError::Conflict {
                    tls: TLS_OPTS,
                    plaintext: PLAIN_OPT,
                }
                .into())
            }
            (false, ..) => {
                return Err(TlsError::Incomplete(
                    "[tls] needs all of ca, cert and key (the OSD both dials and serves)",
                )
                .into())
            }
        }
        let n = self.reactor.cores.len();
        if n == 0 || n > 64 {
            return Err(invalid("reactor.cores", "needs 1 to 64 entries"));
        }
        let mut seen = self.reactor.cores.clone();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != n {
            return Err(invalid("reactor.cores", "a core is listed twice"));
        }
        if self.net.max_connections == 0 {
            return Err(invalid("net.max_connections", "must be > 0"));
        }
        let net = &self.net;
        if net.max_unauthenticated == 0 || net.max_unauthenticated > net.max_connections {
            return Err(invalid(
                "net.max_unauthenticated",
                "must be 1 to net.max_connections",
            ));
        }
        if net.handshake_timeout_ms == 0 {
            return Err(invalid("net.handshake_timeout_ms", "must be > 0"));
        }
        if net.max_ops_per_connection == 0 {
            return Err(invalid("net.max_ops_per_connection", "must be > 0"));
        }
        if net.max_kib_per_connection == 0 {
            return Err(invalid("net.max_kib_per_connection", "must be > 0"));
        }
        if (net.shard_memory_mib << 10) < net.max_kib_per_connection {
            return Err(invalid(
                "net.shard_memory_mib",
                "must hold at least one connection's max_kib_per_connection",
            ));
        }
        match self.net.backend {
            NetBackend::Kernel => {
                self.kernel_ip()?;
            }
            NetBackend::Dpdk => {
                self.iface_addr()?;
                self.stack_mac()?;
                if !(576..=9000).contains(&self.net.mtu) {
                    return Err(invalid("net.mtu", "must be 576 to 9000"));
                }
                self.check_af_packet_ring()?;
                if self.memif_port()
                    && self.net.mtu > 1500
                    && !self.net.device.as_deref().unwrap_or("").contains("bsize=")
                {
                    return Err(invalid(
                        "net.mtu",
                        "a memif port's buffers are 2 KiB (bsize=2048): MTU 1500 at most unless the device string raises bsize",
                    ));
                }
                if self.net.device.as_deref().is_none_or_empty() {
                    return Err(invalid(
                        "net.device",
                        "the dpdk backend needs a vdev string or a PCI address",
                    ));
                }
                if self.net.base_port == 0 {
                    return Err(invalid(
                        "net.base_port",
                        "the dpdk backend needs fixed ports (steering is by port)",
                    ));
                }
            }
        }
        if u32::from(self.net.base_port) + n as u32 > 65536 {
            return Err(invalid("net.base_port", "base_port + shards exceeds 65535"));
        }
        if self.store.kind == StoreKind::Bdevstore {
            let bdev = self
                .store
                .bdev
                .ok_or_else(|| invalid("store.bdev", "bdevstore needs a bdev"))?;
            match bdev {
                BdevType::Null => {
                    return Err(invalid(
                        "store.bdev",
                        "the null bdev keeps no data and cannot back a durable store",
                    ))
                }
                BdevType::Malloc => {
                    if self.store.size_mib.unwrap_or(0) == 0 {
                        return Err(invalid("store.size_mib", "malloc needs a size"));
                    }
                }
                BdevType::Aio | BdevType::VirtioBlk => {
                    if self.store.path.is_none() {
                        return Err(invalid("store.path", "aio and virtio-blk need a path"));
                    }
                }
            }
        }
        Ok(())
    }

    /// The control plane's transport security, with the PEM files read and checked: how the
    /// agent dials the monitor and its peers, and how its admin service serves. A monitor
    /// address whose scheme contradicts the choice (`http://` with TLS) is refused here.
    pub fn tls(&self) -> Result<(ClientTls, ServerTls), ConfigError> {
        let t = &self.tls;
        let client = ClientTls::choose(t.ca.as_deref(), t.plaintext, TLS_OPTS, PLAIN_OPT)?;
        for addr in self
            .mon
            .addr
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            client.uri(addr)?;
        }
        let server = ServerTls::choose(
            t.cert.as_deref(),
            t.key.as_deref(),
            t.plaintext,
            TLS_OPTS,
            PLAIN_OPT,
        )?;
        Ok((client, server))
    }

    /// Whether the process needs the DPDK EAL (and hugepages).
    pub fn needs_eal(&self) -> bool {
        self.net.backend == NetBackend::Dpdk || self.store.kind == StoreKind::Bdevstore
    }

    /// The kernel backend's bind address.
    /// The messenger's bounds on peers, from `[net]` (checked by `validate`).
    pub fn bounds(&self) -> crate::messenger::Bounds {
        let n = &self.net;
        crate::messenger::Bounds {
            max_unauthenticated: n.max_unauthenticated,
            handshake_timeout: std::time::Duration::from_millis(n.handshake_timeout_ms),
            idle_timeout: (n.idle_timeout_s > 0)
                .then(|| std::time::Duration::from_secs(n.idle_timeout_s)),
            max_ops_per_conn: n.max_ops_per_connection,
            max_bytes_per_conn: n.max_kib_per_connection << 10,
            shard_bytes: n.shard_memory_mib << 20,
        }
    }

    pub fn kernel_ip(&self) -> Result<Ipv4Addr, ConfigError> {
        self.net
            .ip
            .parse()
            .map_err(|_| invalid("net.ip", "the kernel backend needs an IPv4 address"))
    }

    /// The dpdk backend's interface address ("a.b.c.d/len").
    pub fn iface_addr(&self) -> Result<IfaceAddr, ConfigError> {
        let (ip, len) = self
            .net
            .ip
            .split_once('/')
            .ok_or_else(|| invalid("net.ip", "the dpdk backend needs address/prefix"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| invalid("net.ip", format!("{ip:?} is not an IPv4 address")))?;
        let prefix_len: u8 = len
            .parse()
            .ok()
            .filter(|l| (1..=32).contains(l))
            .ok_or_else(|| invalid("net.ip", format!("bad prefix length {len:?}")))?;
        Ok(IfaceAddr { ip, prefix_len })
    }

    /// The devargs of `net.device` when it is an af_packet vdev ("iface=eth0,framesz=9216"),
    /// `None` for any other device.
    pub fn af_packet_devargs(&self) -> Option<&str> {
        let dev = self.net.device.as_deref()?;
        let (name, args) = dev.split_once(',').unwrap_or((dev, ""));
        // DPDK still registers the driver's old name as an alias.
        ["net_af_packet", "eth_af_packet"]
            .iter()
            .any(|p| name.starts_with(p))
            .then_some(args)
    }

    /// `net.device` is a DPDK memif vdev: a shared-memory link to a user-space peer (the memif
    /// variant of `scripts/bench-osd`), no kernel on the data path.
    pub fn memif_port(&self) -> bool {
        self.net.backend == NetBackend::Dpdk
            && self
                .net
                .device
                .as_deref()
                .is_some_and(|d| d.starts_with("net_memif") || d.starts_with("eth_memif"))
    }

    /// The control socket of a memif port that is the master of its link (`role=master`):
    /// `socket=` of the device string, or DPDK's default, `/run/memif.sock`.
    pub fn memif_master_socket(&self) -> Option<PathBuf> {
        if !self.memif_port() {
            return None;
        }
        let args = self.net.device.as_deref()?.split(',').skip(1);
        let mut master = false;
        let mut socket = PathBuf::from("/run/memif.sock");
        for a in args {
            match a.split_once('=') {
                Some(("role", r)) => master = r == "master",
                Some(("socket", p)) => socket = PathBuf::from(p),
                _ => {}
            }
        }
        master.then_some(socket)
    }

    /// An af_packet port copies each frame into one ring frame of `framesz` bytes (the PMD's
    /// default: 2048), after an 80-byte header: a smaller ring frame than MTU + 80 would cut
    /// the longest frames short, silently. Checked here, before anything starts.
    fn check_af_packet_ring(&self) -> Result<(), ConfigError> {
        let Some(args) = self.af_packet_devargs() else {
            return Ok(());
        };
        let framesz = match args.split(',').find_map(|kv| kv.strip_prefix("framesz=")) {
            None => 2048,
            Some(v) => v.parse::<u32>().map_err(|_| {
                invalid(
                    "net.device",
                    format!("framesz={v:?} is not a number of bytes"),
                )
            })?,
        };
        let need = u32::from(self.net.mtu) + 80;
        if framesz < need {
            return Err(invalid(
                "net.device",
                format!(
                    "af_packet ring frames of {framesz} B are too small for net.mtu = {}: \
                     add framesz= of at least {need} (and blocksz=, a multiple of it and of \
                     4096), e.g. framesz=9216,blocksz=36864 for 9000",
                    self.net.mtu
                ),
            ));
        }
        Ok(())
    }

    /// The user-space stack's MAC. "auto" derives its own address when the device is an
    /// af_packet port: the kernel shares that interface, and with the kernel's MAC on every
    /// data frame the kernel's IP layer takes each one through a (slow, uncached) route
    /// lookup before dropping it; with another MAC the promiscuous port hands it to the
    /// kernel as "other host", dropped before routing. Any other device: the port's MAC.
    pub fn stack_mac(&self) -> Result<MacChoice, ConfigError> {
        match self.net.mac.as_deref() {
            None | Some("auto") => Ok(if self.af_packet_devargs().is_some() {
                MacChoice::Derived
            } else {
                MacChoice::Port
            }),
            Some("port") => Ok(MacChoice::Port),
            Some(s) => match parse_mac(s) {
                Some(m) if m[0] & 0x01 == 0 && m != [0; 6] => Ok(MacChoice::Fixed(m)),
                Some(_) => Err(invalid("net.mac", format!("{s} is not a unicast address"))),
                None => Err(invalid(
                    "net.mac",
                    format!("{s:?}: expected \"auto\", \"port\" or xx:xx:xx:xx:xx:xx"),
                )),
            },
        }
    }

    /// The address published in the map (clients connect here).
    pub fn public_ip(&self) -> Result<Ipv4Addr, ConfigError> {
        match self.net.backend {
            NetBackend::Kernel => self.kernel_ip(),
            NetBackend::Dpdk => Ok(self.iface_addr()?.ip),
        }
    }

    /// How often each PG is scrubbed in the background (`None`: never).
    pub fn scrub_interval(&self) -> Option<std::time::Duration> {
        (self.osd.scrub_interval_s > 0)
            .then(|| std::time::Duration::from_secs(self.osd.scrub_interval_s))
    }
}

trait NoneOrEmpty {
    fn is_none_or_empty(&self) -> bool;
}

impl NoneOrEmpty for Option<&str> {
    fn is_none_or_empty(&self) -> bool {
        self.map(|s| s.trim().is_empty()).unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNEL: &str = r#"
[osd]
uuid = "u1"
host = "h1"
[mon]
addr = "127.0.0.1:6789"
[admin]
listen = "127.0.0.1:0"
[tls]
plaintext = true
[net]
backend = "kernel"
ip = "127.0.0.1"
base_port = 0
[store]
kind = "memstore"
"#;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(s).map_err(|e| ConfigError::Parse {
            path: "x".into(),
            source: Box::new(e),
        })?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn metrics_are_off_unless_listen_is_set() {
        assert_eq!(parse(KERNEL).unwrap().metrics.listen, None);
        let c = parse(&format!("{KERNEL}[metrics]\nlisten = \"127.0.0.1:9284\"\n")).unwrap();
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9284".parse().unwrap()));
        assert!(parse(&format!("{KERNEL}[metrics]\nlisten = \"nowhere\"\n")).is_err());
        assert!(parse(&format!("{KERNEL}[metrics]\nport = 1\n")).is_err());
    }

    #[test]
    fn the_auth_keyfile_names_one_osd_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("osd.key");
        let cfg = |path: &Path| {
            parse(&format!(
                "{KERNEL}[auth]\nkeyfile = \"{}\"\n",
                path.display()
            ))
            .unwrap()
        };
        std::fs::write(
            &key,
            format!("id = \"osd.7\"\nkey = \"{}\"\n", "ab".repeat(32)),
        )
        .unwrap();
        let (id, secret) = cfg(&key).auth.unwrap().load_key().unwrap();
        assert_eq!((id.as_str(), secret), ("osd.7", [0xab; 32]));
        // A client's key, a short key, a missing file: refused, naming the file.
        std::fs::write(
            &key,
            format!("id = \"client.x\"\nkey = \"{}\"\n", "ab".repeat(32)),
        )
        .unwrap();
        let e = cfg(&key).auth.unwrap().load_key().unwrap_err().to_string();
        assert!(
            e.contains("not an OSD key id") && e.contains("osd.key"),
            "{e}"
        );
        std::fs::write(&key, "id = \"osd.7\"\nkey = \"abcd\"\n").unwrap();
        assert!(cfg(&key).auth.unwrap().load_key().is_err());
        let gone = dir.path().join("gone.key");
        let e = cfg(&gone).auth.unwrap().load_key().unwrap_err().to_string();
        assert!(e.contains("gone.key"), "{e}");
        // No [auth]: no credential (only an --insecure monitor admits the OSD).
        assert!(parse(KERNEL).unwrap().auth.is_none());
    }

    #[test]
    fn minimal_kernel_config_has_defaults() {
        let c = parse(KERNEL).unwrap();
        assert_eq!(c.reactor.cores, vec![0]);
        assert_eq!(c.reactor.idle, Idle::Adaptive);
        assert_eq!(c.reactor.spin, None);
        assert!(!c.needs_eal());
        assert_eq!(c.public_ip().unwrap(), Ipv4Addr::LOCALHOST);
        assert_eq!(
            c.scrub_interval(),
            Some(std::time::Duration::from_secs(86400))
        );
        let off = parse(&KERNEL.replace("[mon]", "scrub_interval_s = 0\n[mon]")).unwrap();
        assert_eq!(off.scrub_interval(), None);
        let short = parse(&KERNEL.replace("[mon]", "scrub_interval_s = 2\n[mon]")).unwrap();
        assert_eq!(
            short.scrub_interval(),
            Some(std::time::Duration::from_secs(2))
        );
    }

    #[test]
    fn peer_bounds_default_and_are_checked() {
        use crate::messenger::Bounds;
        assert_eq!(parse(KERNEL).unwrap().bounds(), Bounds::DEFAULT);
        let with = |kv: &str| parse(&KERNEL.replace("[store]", &format!("{kv}\n[store]")));
        let b = with("handshake_timeout_ms = 500\nidle_timeout_s = 0\nshard_memory_mib = 32")
            .unwrap()
            .bounds();
        assert_eq!(b.handshake_timeout, std::time::Duration::from_millis(500));
        assert_eq!(b.idle_timeout, None);
        assert_eq!(b.shard_bytes, 32 << 20);
        for (bad, key) in [
            ("max_unauthenticated = 0", "net.max_unauthenticated"),
            ("max_unauthenticated = 65", "net.max_unauthenticated"),
            ("handshake_timeout_ms = 0", "net.handshake_timeout_ms"),
            ("max_ops_per_connection = 0", "net.max_ops_per_connection"),
            ("max_kib_per_connection = 0", "net.max_kib_per_connection"),
            ("shard_memory_mib = 1", "net.shard_memory_mib"),
        ] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn the_adaptive_spin_is_configurable() {
        let s = format!("{KERNEL}[reactor]\nspin = 16\n");
        assert_eq!(parse(&s).unwrap().reactor.spin, Some(16));
    }

    #[test]
    fn dpdk_config_parses_address_and_needs_device() {
        let s = KERNEL
            .replace("backend = \"kernel\"", "backend = \"dpdk\"")
            .replace("ip = \"127.0.0.1\"", "ip = \"10.77.0.21/24\"")
            .replace("base_port = 0", "base_port = 6800");
        let e = parse(&s).unwrap_err().to_string();
        assert!(e.contains("net.device"), "{e}");
        let s = s.replace("[store]", "device = \"net_af_packet0,iface=eth0\"\n[store]");
        let c = parse(&s).unwrap();
        assert_eq!(
            c.iface_addr().unwrap(),
            IfaceAddr {
                ip: Ipv4Addr::new(10, 77, 0, 21),
                prefix_len: 24
            }
        );
        assert!(c.needs_eal());
        let bad = s.replace("/24", "/40");
        assert!(parse(&bad).unwrap_err().to_string().contains("prefix"));
    }

    #[test]
    fn memif_master_socket_comes_from_the_device_string() {
        let base = KERNEL
            .replace("backend = \"kernel\"", "backend = \"dpdk\"")
            .replace("ip = \"127.0.0.1\"", "ip = \"10.90.0.1/24\"")
            .replace("base_port = 0", "base_port = 6800");
        let with = |dev: &str| {
            let s = base.replace("[store]", &format!("device = \"{dev}\"\n[store]"));
            parse(&s).unwrap().memif_master_socket()
        };
        assert_eq!(
            with("net_memif0,role=master,socket=/run/carmine/m.sock"),
            Some(PathBuf::from("/run/carmine/m.sock"))
        );
        assert_eq!(
            with("net_memif0,role=master"),
            Some(PathBuf::from("/run/memif.sock"))
        );
        // A slave connects to someone else's socket; other devices have none.
        assert_eq!(with("net_memif0,role=slave,socket=/run/m.sock"), None);
        assert_eq!(with("net_af_packet0,iface=eth0"), None);
    }

    #[test]
    fn stack_mac_auto_derives_on_af_packet_only_and_checks_fixed_ones() {
        let s = KERNEL
            .replace("backend = \"kernel\"", "backend = \"dpdk\"")
            .replace("ip = \"127.0.0.1\"", "ip = \"10.77.0.21/24\"")
            .replace(
                "base_port = 0",
                "base_port = 6800\ndevice = \"net_af_packet0,iface=eth0\"",
            );
        assert_eq!(parse(&s).unwrap().stack_mac().unwrap(), MacChoice::Derived);
        let pci = s.replace("net_af_packet0,iface=eth0", "0000:03:00.0");
        assert_eq!(parse(&pci).unwrap().stack_mac().unwrap(), MacChoice::Port);
        let port = s.replace("[store]", "mac = \"port\"\n[store]");
        assert_eq!(parse(&port).unwrap().stack_mac().unwrap(), MacChoice::Port);
        let fixed = s.replace("[store]", "mac = \"02:00:0a:4d:00:15\"\n[store]");
        assert_eq!(
            parse(&fixed).unwrap().stack_mac().unwrap(),
            MacChoice::Fixed([0x02, 0, 0x0a, 0x4d, 0, 0x15])
        );
        for bad in [
            "03:00:00:00:00:01",
            "00:00:00:00:00:00",
            "02:00:00:00:00",
            "zz:00:00:00:00:01",
        ] {
            let b = s.replace("[store]", &format!("mac = \"{bad}\"\n[store]"));
            let e = parse(&b).unwrap_err().to_string();
            assert!(e.contains("net.mac"), "{bad}: {e}");
        }
        // The ring frames of an af_packet port must hold the MTU's frames.
        let jumbo = s.replace("[store]", "mtu = 9000\n[store]");
        let e = parse(&jumbo).unwrap_err().to_string();
        assert!(e.contains("net.mtu = 9000") && e.contains("framesz"), "{e}");
        let small = jumbo.replace("iface=eth0", "iface=eth0,framesz=9040,blocksz=36160");
        assert!(parse(&small)
            .unwrap_err()
            .to_string()
            .contains("at least 9080"));
        let fits = jumbo.replace("iface=eth0", "iface=eth0,framesz=9216,blocksz=36864");
        assert_eq!(
            parse(&fits).unwrap().af_packet_devargs(),
            Some("iface=eth0,framesz=9216,blocksz=36864")
        );
        let junk = jumbo.replace("iface=eth0", "iface=eth0,framesz=big");
        assert!(parse(&junk)
            .unwrap_err()
            .to_string()
            .contains("not a number"));
        assert_eq!(
            parse(&pci.replace("[store]", "mtu = 9000\n[store]"))
                .unwrap()
                .af_packet_devargs(),
            None
        );
        // Derived: unicast, locally administered, never the port's own address.
        for port in [[0u8; 6], [0x02, 0x11, 0x22, 0x33, 0x44, 0x55], [0xff; 6]] {
            let d = derived_mac(port);
            assert_ne!(d, port);
            assert_eq!(d[0] & 0x03, 0x02);
        }
    }

    #[test]
    fn refuses_null_bdev_unknown_keys_and_duplicate_cores() {
        let s = KERNEL.replace(
            "kind = \"memstore\"",
            "kind = \"bdevstore\"\nbdev = \"null\"",
        );
        assert!(parse(&s).unwrap_err().to_string().contains("keeps no data"));
        let s = KERNEL.replace("[store]", "[reactor]\ncores = [0, 0]\n[store]");
        assert!(parse(&s).unwrap_err().to_string().contains("twice"));
        let s = KERNEL.replace("[store]", "bogus = 1\n[store]");
        assert!(parse(&s).unwrap_err().to_string().contains("bogus"));
        let s = KERNEL.replace(
            "kind = \"memstore\"",
            "kind = \"bdevstore\"\nbdev = \"malloc\"",
        );
        assert!(parse(&s).unwrap_err().to_string().contains("size"));
    }

    #[test]
    fn transport_security_must_be_chosen() {
        let none = KERNEL.replace("[tls]\nplaintext = true\n", "");
        let e = parse(&none).unwrap_err().to_string();
        assert!(
            e.contains("[tls] ca, cert and key") && e.contains("[tls] plaintext = true"),
            "{e}"
        );
        let both = KERNEL.replace("plaintext = true", "plaintext = true\nca = \"ca.pem\"");
        assert!(parse(&both).unwrap_err().to_string().contains("contradict"));
        let part = KERNEL.replace("plaintext = true", "ca = \"ca.pem\"");
        assert!(parse(&part).unwrap_err().to_string().contains("all of"));
        let tls = KERNEL.replace(
            "plaintext = true",
            "ca = \"ca.pem\"\ncert = \"osd.pem\"\nkey = \"osd.key\"",
        );
        let c = parse(&tls).unwrap();
        // The files are read when the daemon starts, and a missing one is named.
        let e = c.tls().unwrap_err().to_string();
        assert!(e.contains("ca.pem"), "{e}");
        let (client, server) = parse(KERNEL).unwrap().tls().unwrap();
        assert!(!client.is_tls() && !server.is_tls());
        let https = KERNEL.replace(
            "addr = \"127.0.0.1:6789\"",
            "addr = \"https://127.0.0.1:6789\"",
        );
        let e = parse(&https).unwrap().tls().unwrap_err().to_string();
        assert!(e.contains("plain text"), "{e}");
    }
}
