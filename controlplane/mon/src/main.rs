//! The `carmine-mon` binary: parse flags, bind, serve until SIGINT/SIGTERM.

use clap::Parser;
use tokio::net::TcpListener;

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
    let cfg = carmine_mon::MonConfig::parse_from(args);
    // With etcd, wait to be elected before listening: followers do not answer, so clients
    // holding the list of monitors fail over to the leader.
    let mut lost = None;
    let mut backend = None;
    if !cfg.etcd.is_empty() {
        let advertise = cfg.listen.to_string();
        match carmine_mon::ha::campaign(
            &cfg.etcd,
            &cfg.etcd_prefix,
            cfg.etcd_lease_secs,
            &advertise,
        )
        .await
        {
            Ok(l) => {
                lost = Some(l.lost);
                backend = Some(carmine_mon::store::Backend::Etcd(Box::new(l.store)));
            }
            Err(e) => {
                eprintln!("carmine-mon: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    let listener = match TcpListener::bind(cfg.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("carmine-mon: cannot listen on {}: {e}", cfg.listen);
            return std::process::ExitCode::from(2);
        }
    };
    match listener.local_addr() {
        // Tests and scripts read this line to learn the port when --listen uses port 0.
        Ok(a) => println!("carmine-mon listening on {a}"),
        Err(e) => eprintln!("carmine-mon: {e}"),
    }
    let shutdown = async {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        let deposed = async {
            match lost.as_mut() {
                Some(l) => {
                    let _ = l.wait_for(|lost| *lost).await;
                }
                None => std::future::pending::<()>().await,
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
    };
    let deposed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = deposed.clone();
    let shutdown = async move {
        if shutdown.await {
            flag.store(true, std::sync::atomic::Ordering::Release);
        }
    };
    let res = match backend {
        Some(b) => carmine_mon::serve_with(cfg, b, listener, shutdown).await,
        None => carmine_mon::serve(cfg, listener, shutdown).await,
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
