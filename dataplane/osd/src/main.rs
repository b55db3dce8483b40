//! `carmine-osd`: the Carmine object storage daemon.
//!
//! Today it carries the device self-check (`selfcheck`), which brings up the real poll-mode
//! drivers (DPDK on af_packet, SPDK on malloc/null bdevs) and proves them with verified I/O. The
//! shard reactor, the messenger and the op path are added by the issues that follow; see
//! `../shared/DESIGN.md` for the path of one request.

mod netns;
mod selfcheck;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "carmine-osd", version, about = "Carmine object storage daemon")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check this machine with the real drivers: preflight, DPDK af_packet frames over a veth
    /// pair (private network namespace), SPDK malloc/null bdev I/O. Needs root and hugepages.
    Selfcheck {
        /// Print one JSON object with the figures instead of text.
        #[arg(long)]
        json: bool,
        /// Seconds of random I/O per direction in the bdev measurement.
        #[arg(long, default_value_t = 1.0)]
        io_seconds: f64,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Selfcheck { json, io_seconds } => match selfcheck::run(json, io_seconds) {
            Ok(report) => {
                if json {
                    match serde_json::to_string(&report) {
                        Ok(s) => println!("{s}"),
                        Err(e) => {
                            eprintln!("selfcheck: cannot encode the report: {e}");
                            std::process::exit(1);
                        }
                    }
                }
            }
            Err(e) => {
                eprintln!("selfcheck: FAILED: {e}");
                std::process::exit(1);
            }
        },
    }
}
