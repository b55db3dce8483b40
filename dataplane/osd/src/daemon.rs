//! `carmine-osd run`: bring-up, steady state and teardown of the daemon.
//!
//! Order of bring-up (each step refuses with a clear error before the next one starts):
//! 1. the config ([`Config::load`]) and the preflight checks that apply to it;
//! 2. bdevstore: the cluster fsid from the monitor (`carmine_agent::cluster_fsid`; the OSD
//!    waits for a monitor), since the device must hold a store of this cluster and this OSD;
//! 3. the DPDK EAL, when the NIC or the store needs it (hugepages), then SPDK and the bdev
//!    under bdevstore ([`prepare_bdev`]): a blank bdev (its first MiB zero) is formatted with
//!    one partition per shard and this OSD's owner (cluster fsid, OSD uuid); this OSD's store
//!    is mounted as is (never reformatted); a store that names no owner (formatted before
//!    owners were recorded) is claimed; a store of another cluster or OSD, or a device
//!    holding other data, is refused ([`DaemonError::ForeignStore`],
//!    [`DaemonError::NotAStore`]: the process exits non-zero before it boots) unless
//!    `--force-format` ([`RunOptions`]);
//! 4. the DPDK port with one queue pair and one mbuf pool per shard (software steering by
//!    destination port when there are several shards), or kernel sockets;
//! 5. the shards ([`carmine_reactor::Reactor`]): each builds its TCP stack, listens on
//!    `base_port + shard`, mounts its store partition on its own SPDK thread;
//! 6. the control-plane agent (own thread, tokio): boot with the monitor announcing the
//!    shards' ports, map subscription into every shard's control ring, the keyring, the admin
//!    gRPC with the perf counters, and `/metrics` when `[metrics] listen` is set.
//!
//! When every shard has applied a map that holds this OSD, one line goes to stdout:
//! `carmine-osd: ready osd=<id> shards=<n> addr=<ip> ports=<p0,..> admin=<addr>` and, with
//! `[metrics]`, ` metrics=<addr>`. SIGTERM or SIGINT stops
//! the agent, then the shards (each store writes its checkpoint on its own thread), then SPDK.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use carmine_agent::peering::{Lease, PeeringShards, ShardRequest};
use carmine_agent::scrub::{DigestRequest, PgDigests};
use carmine_agent::{
    Agent, AgentConfig, MapSink, MemConfig, OsdCredential, PeeringSetup, ScrubSetup, SharedKeyring,
    SinkFull,
};
use carmine_bdevstore::{Probe, StoreIdentity};
use carmine_dpdk::{Eal, EalConfig, EthPort, PktMbufPool};
use carmine_net::dpdk::{DpdkDevice, LinkChecksums, Steering};
use carmine_net::{KernelConfig, KernelStack, NetStack, SmolConfig, SmolStack};
use carmine_placement::ClusterMap;
use carmine_reactor::{ControlSender, IdlePolicy, Reactor, ReactorConfig};
use carmine_spdk::{BdevKind, Spdk, SpdkBlockDevice};

use crate::config::{derived_mac, BdevType, Config, Idle, MacChoice, NetBackend, StoreKind};
use crate::perf::{OsdStats, ShardCounters, StoreFailure};
use crate::shard::{ShardCore, ShardMsg, ShardParts, ShardPoller};
use crate::shard_store::ShardStore;

/// The bdev name bdevstore runs on.
const BDEV: &str = "Osd0";
/// Where `hugepages/hugepages.sh` mounts hugetlbfs.
const HUGETLBFS: &str = "/dev/hugepages";
/// mbufs per shard pool, descriptors per queue.
const MBUFS: u32 = 8191;
const DESC: u16 = 1024;

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("auth: {0}")]
    KeyFile(#[from] crate::config::KeyFileError),
    #[error("preflight: {0}")]
    Preflight(String),
    #[error("DPDK: {0}")]
    Dpdk(#[from] carmine_dpdk::DpdkError),
    #[error("SPDK: {0}")]
    Spdk(#[from] carmine_spdk::SpdkError),
    #[error("store: {0}")]
    Store(String),
    #[error("net: {0}")]
    Net(#[from] carmine_net::NetError),
    #[error("shards: {0}")]
    Reactor(#[from] carmine_reactor::ReactorError),
    #[error("agent: {0}")]
    Agent(#[from] carmine_agent::AgentError),
    #[error("signals: {0}")]
    Signal(std::io::Error),
    /// The store on the device belongs to another cluster or another OSD.
    #[error(
        "the store on {device} belongs to cluster {store_fsid:?}, osd uuid {store_osd:?}; this \
         OSD is osd uuid {osd:?} of cluster {fsid:?}: refusing to mount it (`carmine-osd run \
         --force-format` formats the device, destroying what it holds)"
    )]
    ForeignStore {
        device: String,
        store_fsid: String,
        store_osd: String,
        fsid: String,
        osd: String,
    },
    /// The device holds data that is not a bdevstore.
    #[error(
        "{device} is not blank (a non-zero byte at offset {offset}) and holds no carmine store: \
         refusing to format it (`carmine-osd run --force-format` formats it, destroying what \
         it holds)"
    )]
    NotAStore { device: String, offset: u64 },
}

/// How `carmine-osd run` was asked to treat its device.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Format the device even if it holds data: another program's, or a store of another
    /// cluster or OSD. A store that is this OSD's own is mounted, never reformatted.
    pub force_format: bool,
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(config_path: &Path, opts: RunOptions) -> Result<(), DaemonError> {
    let cfg = Config::load(config_path)?;
    // The PEM files are read now, before any device is touched: a bad one stops the OSD here.
    let (client_tls, admin_tls) = cfg.tls()?;
    tracing::info!(
        tls = client_tls.is_tls(),
        "control-plane transport security"
    );
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).map_err(DaemonError::Signal)?;
    }
    let shards = cfg.reactor.cores.len();
    if cfg.needs_eal() {
        preflight(&cfg)?;
    }
    let credential = match &cfg.auth {
        Some(a) => {
            let (id, secret) = a.load_key()?;
            Some(OsdCredential { id, secret })
        }
        None => {
            tracing::warn!("no [auth] keyfile: only a monitor run with --insecure admits this OSD");
            None
        }
    };
    let agent_cfg = AgentConfig {
        mon_addr: cfg.mon.addr.clone(),
        uuid: cfg.osd.uuid.clone(),
        host: cfg.osd.host.clone(),
        public_addr: cfg.public_ip()?.to_string(),
        cluster_addr: cfg.public_ip()?.to_string(),
        shard_ports: Vec::new(),
        weight: cfg.osd.weight,
        admin_listen: cfg.admin.listen,
        metrics_listen: cfg.metrics.listen,
        credential,
        client_tls,
        admin_tls,
    };
    // 0. Whose store the device must hold: the cluster's fsid comes from the monitor before
    // the device is touched (memstore keeps nothing: no check).
    let owner = if cfg.store.kind == StoreKind::Bdevstore {
        let fsid = match carmine_agent::cluster_fsid(&agent_cfg, &stop) {
            Err(carmine_agent::AgentError::Stopped) => {
                tracing::info!("stopped before the monitor answered: nothing was started");
                return Ok(());
            }
            r => r?,
        };
        Some(StoreIdentity {
            cluster_fsid: fsid,
            osd_uuid: cfg.osd.uuid.clone(),
        })
    } else {
        None
    };

    // 1. EAL, SPDK, the bdev.
    let vhost =
        cfg.store.kind == StoreKind::Bdevstore && cfg.store.bdev == Some(BdevType::VirtioBlk);
    // Both keep hugepage files (removed at exit): vhost-user passes them to its backend, and
    // DPDK's memif driver needs the multi-process channel, which --in-memory switches off.
    let shared_files = vhost || cfg.memif_port();
    if let Some(socket) = cfg.memif_master_socket() {
        clear_stale_memif_socket(&socket)?;
    }
    let eal = if cfg.needs_eal() {
        Some(Eal::init(&eal_config(&cfg, shards, vhost, shared_files))?)
    } else {
        None
    };
    let spdk = match (eal, cfg.store.kind) {
        (Some(eal), StoreKind::Bdevstore) => {
            let spdk = Spdk::start(eal)?;
            spdk.create_bdev(BDEV, &bdev_kind(&cfg)?)?;
            let owner = owner
                .as_ref()
                .ok_or_else(|| DaemonError::Store("bdevstore without the cluster fsid".into()))?;
            prepare_bdev(&spdk, shards, &device_name(&cfg), owner, opts.force_format)?;
            Some(spdk)
        }
        _ => None,
    };

    // 2. The NIC.
    let nic = match (eal, cfg.net.backend) {
        (Some(eal), NetBackend::Dpdk) => Some(Nic::start(eal, &cfg, shards)?),
        _ => None,
    };

    // 3. The shards.
    let keyring = Arc::new(SharedKeyring::new());
    let counters: Vec<Arc<ShardCounters>> = (0..shards)
        .map(|_| Arc::new(ShardCounters::default()))
        .collect();
    let usage: Vec<Arc<(AtomicU64, AtomicU64)>> = (0..shards)
        .map(|_| Arc::new((AtomicU64::new(0), AtomicU64::new(0))))
        .collect();
    let store_failures: Vec<StoreFailure> = (0..shards).map(|_| StoreFailure::default()).collect();
    let lease = Arc::new(Lease::new());
    let (events_tx, events_rx) = carmine_agent::peering::event_channel();
    let peer_parts = PeerParts {
        lease: lease.clone(),
        events: events_tx,
    };
    let shared = ShardShared {
        keyring: keyring.clone(),
        counters: counters.clone(),
        usage: usage.clone(),
        store_failures: store_failures.clone(),
    };
    let (reactor, control, ports) = start_shards(&cfg, nic.as_ref(), shared, peer_parts)?;

    // 4. The agent.
    let public_ip = cfg.public_ip()?.to_string();
    let stats = Arc::new(OsdStats {
        started: Instant::now(),
        shards: counters
            .iter()
            .enumerate()
            .filter_map(|(i, c)| reactor.stats_handle(i).map(|r| (c.clone(), r)))
            .collect(),
        usage: usage.clone(),
        store_failures,
    });
    let control = Arc::new(Mutex::new(control));
    let sinks: Vec<Box<dyn MapSink>> = (0..shards)
        .map(|shard| {
            Box::new(RingSink {
                shard,
                control: control.clone(),
            }) as Box<dyn MapSink>
        })
        .collect();
    let digests = Arc::new(ShardDigests {
        shards,
        control: control.clone(),
    });
    let peering_shards = Arc::new(ShardPeering {
        shards,
        control: control.clone(),
    });
    let agent = Agent::start_osd(
        AgentConfig {
            shard_ports: ports.iter().map(|&p| u32::from(p)).collect(),
            ..agent_cfg
        },
        sinks,
        stats,
        Arc::new(MemConfig::new([
            ("osd.uuid", cfg.osd.uuid.clone()),
            ("osd.host", cfg.osd.host.clone()),
            (
                "net.backend",
                format!("{:?}", cfg.net.backend).to_lowercase(),
            ),
            ("store.kind", format!("{:?}", cfg.store.kind).to_lowercase()),
        ])),
        keyring.clone(),
        Some(ScrubSetup {
            digests,
            interval: cfg.scrub_interval(),
        }),
        Some(PeeringSetup {
            shards: peering_shards,
            events: events_rx,
            lease,
        }),
    )?;
    tracing::info!(admin = %agent.admin_addr(), "agent started");

    // 5. Steady state: the main thread serves SPDK's main thread and waits for a signal.
    let ports_s = ports
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut ready = false;
    let started = Instant::now();
    let mut last_warn = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(s) = &spdk {
            s.poll();
        }
        if !ready {
            let epochs_ok = counters
                .iter()
                .all(|c| c.map_epoch.load(Ordering::Relaxed) > 0);
            if let (Some(id), true) = (agent.status().osd_id(), epochs_ok) {
                ready = true;
                let metrics = agent
                    .metrics_addr()
                    .map(|a| format!(" metrics={a}"))
                    .unwrap_or_default();
                println!(
                    "carmine-osd: ready osd={id} shards={shards} addr={public_ip} ports={ports_s} admin={}{metrics}",
                    agent.admin_addr()
                );
                tracing::info!(osd = id, "ready");
                // The identity replica connections authenticate as (`keyring.identity()`, the
                // same value, is what the shards read).
                match agent.identity() {
                    Some((entity, _)) => tracing::info!(%entity, "osd key from the monitor"),
                    None => tracing::warn!(
                        "the monitor issued no osd key: replica connections cannot authenticate"
                    ),
                }
            } else if last_warn.elapsed() > Duration::from_secs(10) {
                last_warn = Instant::now();
                tracing::warn!(
                    waited_s = started.elapsed().as_secs(),
                    mon = %cfg.mon.addr,
                    "not booted with the monitor yet"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(if spdk.is_some() { 1 } else { 20 }));
    }

    // Teardown.
    tracing::info!("stopping");
    drop(agent);
    let shards_down = reactor.shutdown();
    drop(nic);
    let spdk_down = match spdk {
        Some(s) => s.shutdown(),
        None => Ok(()),
    };
    if let Some(eal) = eal {
        if shared_files {
            eal.remove_shared_files(Path::new(HUGETLBFS));
        }
    }
    shards_down?;
    spdk_down?;
    tracing::info!("stopped");
    Ok(())
}

fn preflight(cfg: &Config) -> Result<(), DaemonError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(DaemonError::Preflight(
            "the dpdk backend and bdevstore need root (hugepages, raw sockets)".into(),
        ));
    }
    // The default page size's pool (what the EAL maps): 1 GiB pages on bare metal count
    // 1024 MiB each, 2 MiB pages in CI 2.
    let hp = carmine_preflight::System::default()
        .hugepages()
        .map_err(|e| DaemonError::Preflight(e.to_string()))?;
    if hp.total_mib() < u64::from(cfg.spdk.mem_mib) {
        return Err(DaemonError::Preflight(format!(
            "spdk.mem_mib = {} needs {} MiB of hugepages, {} MiB reserved ({} pages of {} KiB): \
             run hugepages/hugepages.sh reserve N",
            cfg.spdk.mem_mib,
            cfg.spdk.mem_mib,
            hp.total_mib(),
            hp.total,
            hp.page_kib,
        )));
    }
    Ok(())
}

fn eal_config(cfg: &Config, shards: usize, vhost: bool, shared_files: bool) -> EalConfig {
    let mut vdevs = Vec::new();
    let mut extra = Vec::new();
    let mut no_pci = true;
    if cfg.net.backend == NetBackend::Dpdk {
        if let Some(dev) = cfg.net.device.as_deref() {
            if is_pci(dev) {
                no_pci = false;
                extra.push("-w".to_string());
                extra.push(dev.to_string());
            } else if shards > 1
                && cfg
                    .af_packet_devargs()
                    .is_some_and(|a| !a.contains("qpairs="))
            {
                vdevs.push(format!("{dev},qpairs={shards}"));
            } else {
                vdevs.push(dev.to_string());
            }
        }
    }
    EalConfig {
        app: "carmine-osd".into(),
        no_pci,
        // vhost-user hands our hugepage files to the backend: they must exist as files.
        in_memory: !shared_files,
        single_file_segments: vhost,
        file_prefix: Some(
            cfg.spdk
                .file_prefix
                .clone()
                .unwrap_or_else(|| format!("carmine-osd-{}", std::process::id())),
        ),
        mem_mb: Some(cfg.spdk.mem_mib),
        vdevs,
        extra,
        log_level: Some("lib.eal:warning".into()),
        ..EalConfig::default()
    }
}

/// A memif master listens on its socket file, which DPDK leaves behind when the process ends
/// without closing the port (a kill, or our shutdown, which stops ports but does not close
/// them), and then cannot bind it again. A file nobody listens on (connecting is refused) is
/// removed; one that someone serves is an error: another OSD owns that link.
fn clear_stale_memif_socket(path: &Path) -> Result<(), DaemonError> {
    if !path.exists() {
        return Ok(());
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "removing a stale memif socket");
            std::fs::remove_file(path).map_err(|e| {
                DaemonError::Preflight(format!(
                    "cannot remove the stale memif socket {}: {e}",
                    path.display()
                ))
            })
        }
        // Accepted, or refused for its type (memif listens with SOCK_SEQPACKET): it is served.
        Ok(_) | Err(_) => Err(DaemonError::Preflight(format!(
            "the memif socket {} is in use by another process (net.device)",
            path.display()
        ))),
    }
}

/// "0000:03:00.0"-shaped (domain:bus:device.function).
fn is_pci(dev: &str) -> bool {
    let parts: Vec<&str> = dev.split([':', '.']).collect();
    parts.len() == 4
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn bdev_kind(cfg: &Config) -> Result<BdevKind, DaemonError> {
    let path = |p: &Option<PathBuf>| {
        p.clone()
            .ok_or_else(|| DaemonError::Store("store.path is required".into()))
    };
    Ok(match cfg.store.bdev {
        Some(BdevType::Malloc) => BdevKind::Malloc {
            blocks: cfg.store.size_mib.unwrap_or(0) * 256,
            block_size: 4096,
        },
        Some(BdevType::Aio) => {
            let p = path(&cfg.store.path)?;
            if !p.exists() {
                let size = cfg.store.size_mib.ok_or_else(|| {
                    DaemonError::Store(format!(
                        "{} does not exist and store.size_mib is not set",
                        p.display()
                    ))
                })?;
                let f = std::fs::File::create(&p)
                    .and_then(|f| f.set_len(size << 20).map(|()| f))
                    .map_err(|e| DaemonError::Store(format!("creating {}: {e}", p.display())))?;
                drop(f);
            }
            BdevKind::Aio {
                path: p,
                block_size: 4096,
            }
        }
        Some(BdevType::VirtioBlk) => BdevKind::VirtioBlk {
            socket: path(&cfg.store.path)?,
            queues: cfg.reactor.cores.len() as u32,
            queue_size: 256,
        },
        Some(BdevType::Null) | None => {
            return Err(DaemonError::Store(
                "bdevstore needs a bdev that keeps data".into(),
            ))
        }
    })
}

/// Formats a blank bdev (one partition per shard); leaves a formatted one alone.
/// A blank bdev is formatted with bdevstore's default geometry, whose segments hold a journal
/// record of any transaction with up to `MAX_TXN_DATA` bytes of data (and a header within
/// `MAX_TXN_HEADER`): the largest op data the wire carries must be within it, or the largest
/// write_full would be refused as invalid. (A bdev formatted with smaller segments keeps them;
/// bdevstore then refuses too large a transaction with `InvalidArgument` and logs why.)
const _: () =
    assert!(carmine_wire::Limits::DEFAULT.max_io_size as u64 <= carmine_bdevstore::MAX_TXN_DATA);

/// What the device is called in errors: the aio file or vhost socket, or the malloc bdev.
fn device_name(cfg: &Config) -> String {
    match &cfg.store.path {
        Some(p) => p.display().to_string(),
        None => format!("{BDEV} ({:?})", cfg.store.bdev).to_lowercase(),
    }
}

/// Makes the bdev hold this OSD's store, or refuses: a blank device (its first MiB zero) is
/// formatted for `owner`; a store of `owner` is left to the shards to mount; a store formatted
/// before owners were recorded is claimed for `owner`; a store of another cluster or OSD, or a
/// device holding other data, is refused ([`DaemonError::ForeignStore`],
/// [`DaemonError::NotAStore`]) unless `force` (then formatted, with a warning).
fn prepare_bdev(
    spdk: &Spdk,
    shards: usize,
    device: &str,
    owner: &StoreIdentity,
    force: bool,
) -> Result<(), DaemonError> {
    let mut dev = SpdkBlockDevice::open(spdk.thread(), BDEV)?;
    let store = |e: carmine_objectstore::StoreError| DaemonError::Store(format!("{device}: {e}"));
    let format = |dev: &mut SpdkBlockDevice| {
        carmine_bdevstore::format_owned(
            dev,
            &carmine_bdevstore::FormatOptions {
                shards,
                ..Default::default()
            },
            owner,
        )
        .map(|_| ())
        .map_err(|e| DaemonError::Store(format!("format {device}: {e}")))
    };
    match carmine_bdevstore::probe(&mut dev).map_err(store)? {
        Probe::Blank => {
            tracing::info!(shards, %device, fsid = %owner.cluster_fsid, "blank device: formatting");
            format(&mut dev)
        }
        Probe::Store(sb) if sb.identity == *owner => {
            tracing::info!(%device, "this OSD's store: mounting");
            Ok(())
        }
        Probe::Store(sb) if sb.identity.is_unclaimed() => {
            tracing::warn!(
                %device,
                version = sb.version,
                fsid = %owner.cluster_fsid,
                "a store that names no owner (formatted before owners were recorded): \
                 claiming it for this cluster and OSD"
            );
            carmine_bdevstore::claim(&mut dev, owner)
                .map(|_| ())
                .map_err(store)
        }
        Probe::Store(sb) if force => {
            tracing::warn!(
                %device,
                store_fsid = %sb.identity.cluster_fsid,
                store_osd = %sb.identity.osd_uuid,
                "--force-format: formatting another cluster's or OSD's store"
            );
            format(&mut dev)
        }
        Probe::Store(sb) => Err(DaemonError::ForeignStore {
            device: device.to_string(),
            store_fsid: sb.identity.cluster_fsid,
            store_osd: sb.identity.osd_uuid,
            fsid: owner.cluster_fsid.clone(),
            osd: owner.osd_uuid.clone(),
        }),
        Probe::Data { offset } if force => {
            tracing::warn!(%device, offset, "--force-format: formatting a device that holds data");
            format(&mut dev)
        }
        Probe::Data { offset } => Err(DaemonError::NotAStore {
            device: device.to_string(),
            offset,
        }),
    }
}

fn format_mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// Mbufs per shard pool and their data room (bytes, headroom included) for an IP MTU: one
/// frame per mbuf (MTU + Ethernet header + a VLAN tag + 128 B headroom, in whole KiB, at least
/// the standard 2 KiB + headroom). Jumbo pools hold half as many (about 38 MiB at 9000).
fn mbuf_sizing(mtu: u16) -> (u32, u16) {
    let frame = u32::from(mtu) + 14 + 4;
    let room = frame.div_ceil(1024).max(2) * 1024 + 128;
    let n = if room > 2176 { MBUFS / 2 } else { MBUFS };
    // MTU <= 9000 (validated): room <= 9344, fits u16.
    (n, u16::try_from(room).unwrap_or(u16::MAX))
}

/// One shard's mbuf pool and software-steering endpoint.
type QueueParts = (PktMbufPool, Option<Steering>);

/// The DPDK port and what each shard takes from it.
struct Nic {
    port: Arc<EthPort>,
    /// The user-space stack's address (`net.mac`).
    mac: [u8; 6],
    /// Per shard: its mbuf pool and steering endpoint, taken once by the shard's init.
    parts: Mutex<Vec<Option<QueueParts>>>,
}

impl Nic {
    fn start(eal: &'static Eal, cfg: &Config, shards: usize) -> Result<Nic, DaemonError> {
        let dev = cfg.net.device.as_deref().unwrap_or_default();
        let name = dev.split(',').next().unwrap_or(dev);
        let (mbufs, room) = mbuf_sizing(cfg.net.mtu);
        let pools = (0..shards)
            .map(|k| PktMbufPool::new(eal, &format!("osd-shard{k}"), mbufs, 256, room, -1))
            .collect::<Result<Vec<_>, _>>()?;
        let id = EthPort::id_by_name(eal, name)?;
        let refs: Vec<&PktMbufPool> = pools.iter().collect();
        let port = EthPort::start(eal, id, &refs, DESC, shards > 1)?;
        // Every received frame must fit one mbuf (the af_packet PMD copies a frame into one
        // mbuf unchecked), so the port's MTU is set to ours even at the default.
        match port.set_mtu(cfg.net.mtu) {
            Ok(()) => {}
            Err(e) if cfg.net.mtu == 1500 => {
                tracing::warn!(error = %e, "cannot set the port's MTU to 1500; using it as it is")
            }
            Err(e) => {
                return Err(DaemonError::Config(crate::config::ConfigError::Invalid {
                    key: "net.mtu",
                    reason: format!("the port refused MTU {}: {e}", cfg.net.mtu),
                }))
            }
        }
        let port_mac = port.mac()?;
        let mac = match cfg.stack_mac()? {
            MacChoice::Port => port_mac,
            MacChoice::Derived => derived_mac(port_mac),
            MacChoice::Fixed(m) => m,
        };
        if mac != port_mac {
            port.enable_promiscuous()?;
        }
        tracing::info!(mac = %format_mac(mac), "user-space stack MAC");
        let mut steering: Vec<Option<Steering>> = if shards > 1 {
            Steering::mesh(shards, cfg.net.base_port, 4096)
                .into_iter()
                .map(Some)
                .collect()
        } else {
            vec![None]
        };
        let parts = pools
            .into_iter()
            .zip(steering.drain(..))
            .map(Some)
            .collect();
        Ok(Nic {
            port: Arc::new(port),
            mac,
            parts: Mutex::new(parts),
        })
    }
}

type Started = (Reactor, ControlSender<ShardMsg>, Vec<u16>);

/// The longest sleep of an idle adaptive shard whose every work source wakes it: ten
/// wake-ups a second when nothing happens (the sleep starts short after work and doubles).
const DEEP_SLEEP: Duration = Duration::from_millis(100);

/// What the shards share with the agent, one entry per shard (the keyring: one for all).
struct ShardShared {
    keyring: Arc<SharedKeyring>,
    counters: Vec<Arc<ShardCounters>>,
    usage: Vec<Arc<(AtomicU64, AtomicU64)>>,
    store_failures: Vec<StoreFailure>,
}

fn start_shards(
    cfg: &Config,
    nic: Option<&Nic>,
    shared: ShardShared,
    peer_parts: PeerParts,
) -> Result<Started, DaemonError> {
    let shards = cfg.reactor.cores.len();
    // A shard may sleep deeply when every source of its work wakes it or sets a deadline
    // (`IdlePolicy::Adaptive`). The messages of other shards and of the control plane ring
    // its eventfd; SPDK completions keep a deadline of now while I/O is in flight
    // (`ShardCore::next_deadline`); kernel sockets wake it through epoll. On DPDK an af_packet
    // queue wakes its shard through its socket, and a frame steered from another shard through
    // the steering ring's waker; other PMDs' queues have no fd, so their shards nap for short
    // periods only.
    let woken_by_frames = nic.is_some_and(|n| {
        (0..shards).all(|q| u16::try_from(q).is_ok_and(|q| n.port.af_packet_rx_fd(q).is_some()))
    });
    let mut idle = match (cfg.reactor.idle, cfg.net.backend) {
        (Idle::Busy, _) => IdlePolicy::Busy,
        (Idle::Adaptive, NetBackend::Kernel) => IdlePolicy::Adaptive {
            spin: 64,
            yields: 4,
            max_sleep: Duration::from_millis(10),
            deep_sleep: DEEP_SLEEP,
        },
        (Idle::Adaptive, NetBackend::Dpdk) => {
            let nap = Duration::from_micros(200);
            IdlePolicy::Adaptive {
                spin: 2048,
                yields: 16,
                max_sleep: nap,
                deep_sleep: if woken_by_frames { DEEP_SLEEP } else { nap },
            }
        }
    };
    if let (IdlePolicy::Adaptive { spin, .. }, Some(n)) = (&mut idle, cfg.reactor.spin) {
        *spin = n;
    }
    let adaptive = matches!(idle, IdlePolicy::Adaptive { .. });
    let rcfg = ReactorConfig {
        cores: cfg.reactor.cores.clone(),
        pin: cfg.reactor.pin,
        idle,
        ring_capacity: 4096,
        ..ReactorConfig::default()
    };
    let (port_tx, port_rx) = mpsc::channel::<(usize, u16)>();
    let port_tx = Mutex::new(port_tx);
    let kernel_ip = if cfg.net.backend == NetBackend::Kernel {
        Some(cfg.kernel_ip()?)
    } else {
        None
    };
    let iface = if cfg.net.backend == NetBackend::Dpdk {
        Some(cfg.iface_addr()?)
    } else {
        None
    };
    let nic_parts = nic.map(|n| (n.port.clone(), n.mac));
    let nic_slots: Option<Arc<Mutex<Vec<_>>>> = nic.map(|n| {
        let taken = n
            .parts
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        Arc::new(Mutex::new(taken))
    });
    let bdev = cfg.store.kind == StoreKind::Bdevstore;
    let uuid = cfg.osd.uuid.clone();
    let base_port = cfg.net.base_port;
    let gateway = cfg.net.gateway;
    let max_conns = cfg.net.max_connections;
    let bounds = cfg.bounds();
    let mtu = cfg.net.mtu;
    let memif = cfg.memif_port();
    let ShardShared {
        keyring,
        counters,
        usage,
        store_failures,
    } = shared;
    let (reactor, control) = Reactor::start::<ShardMsg, _>(rcfg, move |setup| {
        let shard = setup.shard();
        let port = if base_port == 0 {
            0
        } else {
            base_port + shard as u16
        };
        let net: Box<dyn NetStack> = match (&kernel_ip, &nic_parts, &iface, &nic_slots) {
            (Some(ip), _, _, _) => Box::new(
                KernelStack::new(KernelConfig {
                    bind: *ip,
                    max_sockets: max_conns + BACKLOG_SOCKETS,
                    ..KernelConfig::default()
                })
                .map_err(|e| e.to_string())?,
            ),
            (None, Some((eth, mac)), Some(addr), Some(slots)) => {
                let (pool, steering) = slots
                    .lock()
                    .map_err(|e| e.to_string())?
                    .get_mut(shard)
                    .and_then(Option::take)
                    .ok_or("each shard takes its queue once")?;
                // Mbuf alloc/free on this shard (ours and the PMD's) through its own lcore's
                // mempool cache instead of the pool's shared ring.
                if let Some(eal) = Eal::get() {
                    let lcore = eal.adopt_lcore().map_err(|e| e.to_string())?;
                    tracing::debug!(shard, lcore, "shard adopted a DPDK lcore id");
                }
                let mut dev = DpdkDevice::new(eth.clone(), shard as u16, pool, usize::from(mtu));
                if memif {
                    // A link through memory to a Carmine client that skips them too.
                    dev = dev.with_checksums(LinkChecksums::Skip);
                }
                if let Some(s) = steering {
                    // Busy shards never sleep: no fence per steered frame for them.
                    let wakers = if adaptive {
                        (0..shards).map(|k| setup.waker(k)).collect()
                    } else {
                        Vec::new()
                    };
                    dev = dev.with_steering(s.with_wakers(wakers));
                }
                let smol = SmolConfig {
                    mac: *mac,
                    ip: addr.ip,
                    prefix_len: addr.prefix_len,
                    gateway,
                    max_sockets: max_conns + BACKLOG_SOCKETS,
                    random_seed: u64::from(std::process::id()) << 8 | shard as u64,
                    ..SmolConfig::default()
                };
                // On an af_packet port an adaptive shard sleeps in poll(2) on its queue's
                // socket and wakes when a frame arrives (other PMDs: timer sleeps only).
                let wake = eth.af_packet_rx_fd(shard as u16);
                Box::new(SmolStack::new(dev, smol, wake).map_err(|e| e.to_string())?)
            }
            _ => return Err("no network backend for this shard".into()),
        };
        let store = if bdev {
            ShardStore::bdev(BDEV, shard).map_err(|e| e.to_string())?
        } else {
            ShardStore::Mem(carmine_memstore::MemStore::new())
        };
        let parts = ShardParts {
            shard,
            shards,
            uuid: uuid.clone(),
            net,
            port,
            max_connections: max_conns,
            bounds,
            store,
            keyring: keyring.clone(),
            counters: counters[shard].clone(),
            usage: usage[shard].clone(),
            store_failure: store_failures[shard].clone(),
            lease: peer_parts.lease.clone(),
            events: Some(peer_parts.events.clone()),
        };
        let (core, bound) = ShardCore::new(parts, setup.mailbox()).map_err(|e| e.to_string())?;
        let core = std::rc::Rc::new(std::cell::RefCell::new(core));
        let handler_core = core.clone();
        setup.on_message(move |src, msg| handler_core.borrow_mut().on_message(src, msg));
        setup.add_poller(Box::new(ShardPoller(core)));
        port_tx
            .lock()
            .map_err(|e| e.to_string())?
            .send((shard, bound))
            .map_err(|e| e.to_string())?;
        tracing::info!(shard, port = bound, "shard listening");
        Ok(())
    })?;
    let mut ports = vec![0u16; shards];
    for (shard, port) in port_rx.try_iter() {
        if let Some(p) = ports.get_mut(shard) {
            *p = port;
        }
    }
    Ok((reactor, control, ports))
}

/// Sockets beyond the connection cap: the listener's pre-created LISTEN sockets.
const BACKLOG_SOCKETS: usize = crate::shard::BACKLOG + 1;

/// Delivers maps into one shard's control ring.
struct RingSink {
    shard: usize,
    control: Arc<Mutex<ControlSender<ShardMsg>>>,
}

impl MapSink for RingSink {
    fn deliver(&mut self, map: Arc<ClusterMap>) -> Result<(), SinkFull> {
        let mut c = self.control.lock().map_err(|_| SinkFull)?;
        c.send(self.shard, ShardMsg::Map(map)).map_err(|_| SinkFull)
    }
}

/// Hands peering requests to the shard that holds the PG, through its control ring.
struct ShardPeering {
    shards: usize,
    control: Arc<Mutex<ControlSender<ShardMsg>>>,
}

impl PeeringShards for ShardPeering {
    fn submit(&self, req: ShardRequest) -> Result<(), ShardRequest> {
        let shard = carmine_placement::pg_to_shard(req.pg().pg, self.shards as u32) as usize;
        let Ok(mut c) = self.control.lock() else {
            return Err(req);
        };
        c.send(shard, ShardMsg::Peering(Box::new(req)))
            .map_err(|m| match m {
                ShardMsg::Peering(req) => *req,
                _ => unreachable!("the ring gives back the message it was given"),
            })
    }
}

/// What every shard gets for peering: the lease to check and where events go.
#[derive(Clone)]
struct PeerParts {
    lease: Arc<Lease>,
    events: carmine_agent::peering::EventSender,
}

/// Hands scrub digest requests to the shard that holds the PG, through its control ring.
struct ShardDigests {
    shards: usize,
    control: Arc<Mutex<ControlSender<ShardMsg>>>,
}

impl PgDigests for ShardDigests {
    fn submit(&self, req: DigestRequest) -> Result<(), DigestRequest> {
        let shard = carmine_placement::pg_to_shard(req.pg.pg, self.shards as u32) as usize;
        let Ok(mut c) = self.control.lock() else {
            return Err(req);
        };
        c.send(shard, ShardMsg::Scrub(Box::new(req)))
            .map_err(|m| match m {
                ShardMsg::Scrub(req) => *req,
                _ => unreachable!("the ring gives back the message it was given"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::{clear_stale_memif_socket, is_pci, mbuf_sizing, MBUFS};
    use carmine_bdevstore::{FormatOptions, TxnFootprint};
    use carmine_objectstore::{CollectionId, ObjectId, Op, Transaction};
    use carmine_wire::Limits;

    /// The largest transactions a shard builds (write_full or write of the wire's largest data,
    /// with the longest name, creating the PG's collection; see `ShardCore::execute`) fit one
    /// journal record of the geometry `prepare_bdev` formats with.
    #[test]
    fn the_largest_op_fits_one_record_of_the_formatted_store() {
        let l = Limits::DEFAULT;
        let cid = CollectionId(u64::MAX);
        let oid = ObjectId::from(vec![b'x'; usize::from(l.max_name_len)]);
        let data = vec![0u8; l.max_io_size as usize];
        let write_full = Transaction {
            ops: vec![
                Op::CreateCollection { cid },
                Op::Write {
                    cid,
                    oid: oid.clone(),
                    off: 0,
                    data: data.clone(),
                },
                Op::Truncate {
                    cid,
                    oid: oid.clone(),
                    size: u64::from(l.max_io_size),
                },
            ],
        };
        let write = Transaction {
            ops: vec![
                Op::CreateCollection { cid },
                Op::Write {
                    cid,
                    oid,
                    off: l.max_object_size - u64::from(l.max_io_size) - 1,
                    data,
                },
            ],
        };
        let seg_blocks = FormatOptions::default().seg_blocks;
        for t in [write_full, write] {
            let f = TxnFootprint::of(&t);
            assert!(f.within_limits(), "{f:?}");
            assert!(
                f.blocks() <= seg_blocks,
                "{f:?} vs {seg_blocks}-block segments"
            );
        }
    }

    #[test]
    fn a_stale_memif_socket_is_removed_and_a_served_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memif.sock");
        // Nothing there: nothing to do.
        clear_stale_memif_socket(&path).unwrap();
        // A listener that went away leaves its file: stale, removed.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        clear_stale_memif_socket(&path).unwrap();
        assert!(!path.exists());
        // A live listener: another process's link, left alone.
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let e = clear_stale_memif_socket(&path).unwrap_err();
        assert!(e.to_string().contains("in use"), "{e}");
        assert!(path.exists());
        drop(live);
    }

    #[test]
    fn pci_addresses_are_told_from_vdev_strings() {
        assert!(is_pci("0000:03:00.0"));
        assert!(!is_pci("net_af_packet0,iface=eth0"));
        assert!(!is_pci("net_memif0"));
    }

    #[test]
    fn an_mbuf_holds_a_whole_frame_at_every_mtu() {
        assert_eq!(mbuf_sizing(1500), (MBUFS, 2176));
        assert_eq!(mbuf_sizing(9000), (MBUFS / 2, 9344));
        for mtu in [576u16, 1500, 1501, 2030, 2031, 4000, 8999, 9000] {
            let (_, room) = mbuf_sizing(mtu);
            // 128 B of headroom, then the frame with a VLAN tag.
            assert!(
                usize::from(room) - 128 >= usize::from(mtu) + 18,
                "mtu {mtu}: room {room}"
            );
        }
    }
}
