//! `carmine-osd`: the Carmine object storage daemon.
//!
//! Subcommands:
//! - `run --config osd.toml`: the daemon ([`daemon`]): shards ([`shard`]) that each own a
//!   messenger ([`messenger`]: a TCP stack, smoltcp on a DPDK queue or kernel sockets, and its
//!   connections), the PGs they serve ([`pg`]), a partition of the object store and a routing
//!   table ([`routing`]) built from the cluster map, plus the control-plane agent. See `README.md` next to this crate for the config and
//!   `../shared/DESIGN.md` for the path of one request.
//! - `selfcheck`: brings up the real poll-mode drivers (DPDK on af_packet, SPDK on malloc/null
//!   bdevs) and proves them with verified I/O.
//! - `fsck`: bdevstore's checker on an SPDK bdev.
//! - `list-objects`: every client object of a stopped OSD's bdevstore, read whole, with its
//!   version and checksums ([`objects_tool`]).

mod bdev_tool;
mod config;
mod daemon;
mod fsck;
mod messenger;
mod netns;
mod objects_tool;
mod ops;
mod peers;
mod perf;
mod pg;
mod pglog;
mod pgmeta;
mod recovery;
mod replication;
mod routing;
mod scrub;
mod selfcheck;
mod shard;
mod shard_store;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "carmine-osd", version, about = "Carmine object storage daemon")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the OSD daemon until SIGTERM/SIGINT. Prints one `carmine-osd: ready ...` line on
    /// stdout once it serves clients.
    Run {
        /// The TOML config file.
        #[arg(long)]
        config: std::path::PathBuf,
        /// bdevstore: format the device even if it holds data (another program's, or a store
        /// of another cluster or OSD), destroying it. Without it such a device is refused. A
        /// blank device is always formatted; this OSD's own store is never reformatted.
        #[arg(long)]
        force_format: bool,
    },
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
    /// Check a bdevstore on an SPDK bdev: every structure and checksum, read-only. Exit status:
    /// 0 clean, 1 problems found, 2 the check could not run. Needs root and hugepages.
    Fsck {
        #[command(flatten)]
        bdev: bdev_tool::BdevArgs,
        /// Print one JSON array (one object per shard) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List every client object of a STOPPED OSD's bdevstore: pool, PG, name, version, size,
    /// CRC-32C and xxh64 of its bytes, each object read whole from the store. Mounting the
    /// store may write (journal replay, a torn tail wiped): the OSD must not be running. Exit
    /// status: 0 every object read, 1 some object could not be read (its `error`), 2 the
    /// listing could not run. Needs root and hugepages.
    ListObjects {
        #[command(flatten)]
        bdev: bdev_tool::BdevArgs,
        /// Print one JSON array (an element per object) instead of text.
        #[arg(long)]
        json: bool,
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
        Cmd::Run {
            config,
            force_format,
        } => {
            if let Err(e) = daemon::run(&config, daemon::RunOptions { force_format }) {
                eprintln!("carmine-osd: {e}");
                std::process::exit(1);
            }
        }
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
        Cmd::Fsck { bdev, json } => match fsck::run(&bdev) {
            Ok(reports) => {
                if json {
                    match serde_json::to_string(&reports) {
                        Ok(s) => println!("{s}"),
                        Err(e) => {
                            eprintln!("fsck: cannot encode the report: {e}");
                            std::process::exit(2);
                        }
                    }
                } else {
                    for r in &reports {
                        println!(
                            "shard {}: {} ({} records replayed, {} collections, {} objects, {} extents, {} chunks verified{})",
                            r.shard,
                            if r.clean { "clean" } else { "PROBLEMS" },
                            r.records_replayed,
                            r.collections,
                            r.objects,
                            r.extents,
                            r.chunks_verified,
                            if r.torn_tail { ", torn tail record" } else { "" },
                        );
                        for e in &r.errors {
                            println!("  {e}");
                        }
                    }
                }
                if reports.iter().any(|r| !r.clean) {
                    std::process::exit(1);
                }
            }
            Err(e) => {
                eprintln!("fsck: cannot run: {e}");
                std::process::exit(2);
            }
        },
        Cmd::ListObjects { bdev, json } => match objects_tool::run(&bdev) {
            Ok(objects) => {
                if json {
                    match serde_json::to_string(&objects) {
                        Ok(s) => println!("{s}"),
                        Err(e) => {
                            eprintln!("list-objects: cannot encode the listing: {e}");
                            std::process::exit(2);
                        }
                    }
                } else {
                    for o in &objects {
                        println!("{}", o.line());
                    }
                }
                let bad = objects.iter().filter(|o| o.error.is_some()).count();
                if bad > 0 {
                    eprintln!(
                        "list-objects: {bad} of {} objects could not be read",
                        objects.len()
                    );
                    std::process::exit(1);
                }
            }
            Err(e) => {
                eprintln!("list-objects: cannot run: {e}");
                std::process::exit(2);
            }
        },
    }
}
