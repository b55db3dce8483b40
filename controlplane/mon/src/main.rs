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
    let cfg = carmine_mon::MonConfig::parse();
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
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term => {},
        }
        tracing::info!("shutting down");
    };
    match carmine_mon::serve(cfg, listener, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("carmine-mon: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
