//! The `carmine-mon` binary: parse flags, bind, serve until SIGINT/SIGTERM.
//!
//! With `--etcd` the monitor listens at once as a follower (every call is redirected to the
//! leader), campaigns, and serves the map once elected; it exits if it loses its lease.

use std::future::Future;

use carmine_mon::service::MonSlot;
use carmine_mon::store::Backend;
use carmine_mon::MonConfig;
use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

/// Resolves on SIGINT/SIGTERM (`false`) or when `deposed` fires (`true`).
async fn shutdown_signal(deposed: oneshot::Receiver<()>) -> bool {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let deposed = async {
        if deposed.await.is_err() {
            // Nobody can depose this monitor (no etcd): wait for a signal only.
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
        _ = deposed => {
            tracing::error!("lost the etcd lease: no longer the leader, stopping");
            return true;
        }
    }
    tracing::info!("shutting down");
    false
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match carmine_mon::args_with_config_file(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("carmine-mon: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let cfg = MonConfig::parse_from(args);
    // Before binding: a monitor without TLS files and without --plaintext does not start.
    if let Err(e) = cfg.server_tls() {
        eprintln!("carmine-mon: {e}");
        return std::process::ExitCode::from(2);
    }
    let listener = match TcpListener::bind(cfg.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("carmine-mon: cannot listen on {}: {e}", cfg.listen);
            return std::process::ExitCode::from(2);
        }
    };
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("carmine-mon: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let (depose_tx, depose_rx) = oneshot::channel();
    let deposed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = deposed.clone();
    let signal = shutdown_signal(depose_rx);
    let shutdown = async move {
        if signal.await {
            flag.store(true, std::sync::atomic::Ordering::Release);
        }
    };
    let res = if cfg.etcd.is_empty() {
        drop(depose_tx);
        // Tests and scripts read this line to learn the port when --listen uses port 0.
        println!("carmine-mon listening on {local}");
        carmine_mon::serve(cfg, listener, shutdown).await
    } else {
        serve_etcd(cfg, listener, local, shutdown, depose_tx).await
    };
    if deposed.load(std::sync::atomic::Ordering::Acquire) {
        eprintln!("carmine-mon: lost leadership");
        return std::process::ExitCode::FAILURE;
    }
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("carmine-mon: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// etcd mode: serve redirects while following, campaign, install the state once elected.
async fn serve_etcd(
    cfg: MonConfig,
    listener: TcpListener,
    local: std::net::SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
    depose: oneshot::Sender<()>,
) -> Result<(), carmine_mon::ServeError> {
    let advertise = cfg.advertise.clone().unwrap_or_else(|| local.to_string());
    let (leader_tx, leader_rx) = watch::channel(None);
    let slot = MonSlot::following(leader_rx);
    let (monitors_tx, monitors_rx) = watch::channel(Vec::new());
    slot.set_monitors(monitors_rx);
    tokio::spawn(carmine_mon::ha::watch_monitors(
        cfg.etcd.clone(),
        cfg.etcd_prefix.clone(),
        monitors_tx,
    ));
    let watcher = tokio::spawn(carmine_mon::ha::watch_leader(
        cfg.etcd.clone(),
        cfg.etcd_prefix.clone(),
        leader_tx,
    ));
    println!("carmine-mon following on {local}");
    let mut server = tokio::spawn(carmine_mon::serve_slot(
        cfg.clone(),
        slot.clone(),
        listener,
        shutdown,
    ));
    let campaign =
        carmine_mon::ha::campaign(&cfg.etcd, &cfg.etcd_prefix, cfg.etcd_lease_secs, &advertise);
    let elected = tokio::select! {
        r = campaign => r,
        // Stopped by a signal (or the server failed) before being elected.
        r = &mut server => {
            watcher.abort();
            return r.unwrap_or_else(|e| Err(carmine_mon::ServeError::Task(e.to_string())));
        }
    };
    watcher.abort();
    let leadership = match elected {
        Ok(l) => l,
        Err(e) => {
            server.abort();
            return Err(e.into());
        }
    };
    let mut lost = leadership.lost;
    // Before the state is installed: no heartbeat is answered without the check.
    slot.set_leads_until(leadership.valid_until);
    tokio::spawn(async move {
        let _ = lost.wait_for(|lost| *lost).await;
        let _ = depose.send(());
    });
    let mon = match carmine_mon::state::Monitor::open(
        Backend::Etcd(Box::new(leadership.store)),
        cfg.policy(),
    )
    .and_then(|mut m| cfg.prepare(&mut m).map(|()| m))
    {
        Ok(m) => m,
        Err(e) => {
            server.abort();
            return Err(e.into());
        }
    };
    slot.install(mon);
    // Tests and scripts read this line: it means "serving as the leader".
    println!("carmine-mon listening on {local}");
    server
        .await
        .unwrap_or_else(|e| Err(carmine_mon::ServeError::Task(e.to_string())))
}
