//! The bench on a reactor shard: `carmine bench --transport memif`.
//!
//! The same workers as [`crate::run`], as tasks of one pinned `carmine-reactor` shard that
//! polls a DPDK `net_memif` port through smoltcp ([`carmine_client_shard`]): no kernel between
//! the bench and an OSD whose port is the memif master. Routing and retries are the client
//! library's (`carmine_client::retry`), the map comes from a tokio `Client` on the caller's
//! runtime, and the progress lines and the report are the kernel transport's.
//!
//! The shard busy-polls by default (a bench wants the client out of the way); with
//! `IdlePolicy::Adaptive` it sleeps between polls when idle, which on a memif port (no fd to
//! wake it) means timed naps.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use carmine_client::{Client, ClientConfig, ClientStats};
use carmine_client_shard::memif::{MemifConfig, MemifPort};
use carmine_client_shard::ShardClient;
use carmine_net::{AsyncNet, NetStack};
use carmine_reactor::{IdlePolicy, Reactor, ReactorConfig};
use tokio::sync::oneshot;

use crate::PROGRESS_HEADER;
use crate::{check, worker, BenchConfig, BenchError, BenchOps, BenchReport, Shared, Ticker};

/// Where the shard runs and what link it uses.
#[derive(Debug, Clone)]
pub struct ShardTransport {
    /// The OSD's memif socket (its port is the master).
    pub socket: PathBuf,
    /// The bench stack's address on the link.
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    /// The core the shard is pinned to.
    pub core: usize,
    pub idle: IdlePolicy,
}

impl<S: NetStack + 'static> BenchOps for ShardClient<S> {
    async fn write_full(
        &self,
        pool: &str,
        name: &str,
        data: &[u8],
    ) -> Result<(), carmine_client::Error> {
        ShardClient::write_full(self, pool.into(), name, data).await
    }

    async fn read(
        &self,
        pool: &str,
        name: &str,
        len: u32,
    ) -> Result<Vec<u8>, carmine_client::Error> {
        ShardClient::read(self, pool.into(), name, 0, len).await
    }

    async fn pause(&self, d: Duration) {
        carmine_reactor::sleep(d).await;
    }
}

/// Removes the EAL's hugepage files however the run ends.
struct PortGuard(Arc<MemifPort>);

impl Drop for PortGuard {
    fn drop(&mut self) {
        self.0.cleanup();
    }
}

fn setup_error(e: impl std::fmt::Display) -> BenchError {
    BenchError::Transport(e.to_string())
}

/// Runs the bench on a reactor shard over memif (see the module docs). `progress` as for
/// [`crate::run`]. Call from a tokio runtime (it runs the map client).
pub async fn run_on_shard(
    client_cfg: &ClientConfig,
    cfg: &BenchConfig,
    transport: &ShardTransport,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, BenchError> {
    check(client_cfg, cfg)?;
    // One map source for the shard's clients: it follows the monitor's subscription.
    let maps = Arc::new(Client::connect(client_cfg.clone()).await?);
    maps.pool(cfg.pool.as_str()).await?;
    let memif = MemifConfig::new(&transport.socket, transport.ip, transport.prefix_len);
    // EAL start and link wait block for up to the link timeout.
    let port = tokio::task::spawn_blocking(move || MemifPort::open(&memif))
        .await
        .map_err(setup_error)?
        .map_err(setup_error)?;
    let port = Arc::new(port);
    let _guard = PortGuard(port.clone());
    let shared = Arc::new(Shared::new(cfg)?);
    let (done_tx, done_rx) = oneshot::channel::<Vec<ClientStats>>();
    let done_tx = Mutex::new(Some(done_tx));
    let workers = cfg.clients * cfg.concurrency;
    let init = {
        let (port, shared, maps) = (port.clone(), shared.clone(), maps.clone());
        let (client_cfg, runtime) = (client_cfg.clone(), tokio::runtime::Handle::current());
        move |setup: &mut carmine_reactor::ShardSetup<()>| {
            let stack = port.stack(|_| {}).map_err(|e| e.to_string())?;
            let (net, poller) = AsyncNet::new(stack, 64);
            setup.add_poller(Box::new(poller));
            let mut clients = Vec::with_capacity(shared.cfg.clients);
            let mut tasks = Vec::with_capacity(workers);
            for _ in 0..shared.cfg.clients {
                let c = ShardClient::new(net.clone(), maps.clone(), runtime.clone(), &client_cfg)
                    .map_err(|e| e.to_string())?;
                clients.push(Rc::new(c));
            }
            let mut id = 0u64;
            for c in &clients {
                for _ in 0..shared.cfg.concurrency {
                    let (shared, c) = (shared.clone(), c.clone());
                    let t = carmine_reactor::spawn_local(async move {
                        worker(&shared, &*c, id).await;
                    })
                    .map_err(|e| e.to_string())?;
                    tasks.push(t);
                    id += 1;
                }
            }
            let tx = done_tx
                .lock()
                .map_err(|e| e.to_string())?
                .take()
                .ok_or("the bench shard starts once")?;
            carmine_reactor::spawn_local(async move {
                for t in tasks {
                    t.await;
                }
                let _ = tx.send(clients.iter().map(|c| c.stats()).collect());
            })
            .map_err(|e| e.to_string())?;
            Ok(())
        }
    };
    let config = ReactorConfig {
        cores: vec![transport.core],
        pin: true,
        idle: transport.idle,
        max_tasks: workers + 64,
        timer_capacity: 4096,
        ..ReactorConfig::default()
    };
    let (reactor, _control) = Reactor::start(config, init).map_err(setup_error)?;
    let shard_stats = reactor
        .stats_handle(0)
        .ok_or_else(|| BenchError::Transport("the bench shard has no stats".into()))?;
    progress(PROGRESS_HEADER);
    let mut ticker = Ticker::new(&shared);
    let mut done_rx = std::pin::pin!(done_rx);
    let stats = loop {
        tokio::select! {
            r = &mut done_rx => break r,
            line = ticker.tick(&shared) => progress(&line),
        }
    };
    reactor.request_stop();
    let stopped = reactor.shutdown();
    let stats = stats.map_err(|_| BenchError::Worker("the bench shard stopped early".into()))?;
    stopped.map_err(setup_error)?;
    let mut report = shared.report(&stats);
    if report.ops > 0 {
        report.shard_busy_us_per_op =
            Some(shard_stats.busy_ns.get() as f64 / 1e3 / report.ops as f64);
    }
    Ok(report)
}
