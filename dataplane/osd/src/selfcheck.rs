//! `carmine-osd selfcheck`: proves this machine can run an OSD, with the real drivers.
//!
//! It runs the startup checks, then starts DPDK (EAL on hugepages, `--no-pci`) with two
//! `net_af_packet` ports on a veth pair in a private network namespace and sends frames across,
//! then starts SPDK on the same EAL, creates a malloc and a null bdev, writes 4 KiB patterns and
//! reads them back, and measures 4 KiB random I/O on the malloc bdev. Every step prints what it
//! found; the first failure stops the check with a non-zero exit.

use std::time::Duration;

use carmine_dpdk::selftest::frame_exchange;
use carmine_dpdk::{Eal, EalConfig, EthPort, PktMbufPool};
use carmine_preflight::System;
use carmine_spdk::selftest::{pattern_roundtrip, random_io};
use carmine_spdk::{Bdev, BdevKind, Spdk};
use serde::Serialize;

use crate::netns;

/// Hugepages the self-check needs (2 MiB each): 256 MiB of EAL memory (mbuf pool, the 64 MiB
/// malloc bdev, SPDK's bdev pools) plus headroom.
const NEED_HUGEPAGES: u64 = 192;

#[derive(Debug, thiserror::Error)]
pub enum SelfcheckError {
    #[error("preflight: {0}")]
    Preflight(String),
    #[error("network namespace: {0}")]
    Netns(#[from] netns::NetnsError),
    #[error("DPDK: {0}")]
    Dpdk(#[from] carmine_dpdk::DpdkError),
    #[error("DPDK frame exchange: {0}")]
    Exchange(#[from] carmine_dpdk::selftest::ExchangeError),
    #[error("SPDK: {0}")]
    Spdk(#[from] carmine_spdk::SpdkError),
    #[error("SPDK I/O: {0}")]
    Io(#[from] carmine_spdk::selftest::SelftestError),
    #[error("the null bdev was not recognised as non-durable")]
    NullDurable,
}

/// What the self-check measured (printed as text, or as JSON with `--json`).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub dpdk_version: String,
    pub spdk_version: String,
    pub hugepages_free: u64,
    pub frames_verified: u32,
    pub frame_bytes: u64,
    pub frame_exchange_ms: f64,
    pub bdevs: Vec<String>,
    pub pattern_bytes_verified: u64,
    pub malloc_randwrite_iops: f64,
    pub malloc_randwrite_p99_us: f64,
    pub malloc_randread_iops: f64,
    pub malloc_randread_p99_us: f64,
}

fn say(quiet: bool, msg: String) {
    if !quiet {
        println!("{msg}");
    }
}

pub fn run(quiet: bool, io_seconds: f64) -> Result<Report, SelfcheckError> {
    let mut r = Report::default();
    let sys = System::default();
    let errs = carmine_preflight::check_all(&sys, NEED_HUGEPAGES, &[]);
    if !errs.is_empty() {
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        return Err(SelfcheckError::Preflight(msgs.join("; ")));
    }
    let hp = sys
        .hugepages()
        .map_err(|e| SelfcheckError::Preflight(e.to_string()))?;
    r.hugepages_free = hp.free;
    say(
        quiet,
        format!(
            "preflight: ok (privileges; {} of {} hugepages of {} kB free)",
            hp.free, hp.total, hp.page_kib
        ),
    );

    netns::enter_private()?;
    netns::veth_pair("carmine-sc0", "carmine-sc1")?;
    say(
        quiet,
        "netns: private namespace with veth pair carmine-sc0 <-> carmine-sc1".into(),
    );

    let eal = Eal::init(&EalConfig {
        app: "carmine-selfcheck".into(),
        no_pci: true,
        in_memory: true,
        mem_mb: Some(256),
        vdevs: vec![
            "net_af_packet0,iface=carmine-sc0".into(),
            "net_af_packet1,iface=carmine-sc1".into(),
        ],
        log_level: Some("*:warning".into()),
        ..EalConfig::default()
    })?;
    r.dpdk_version = carmine_dpdk::version();
    say(
        quiet,
        format!(
            "dpdk: {} EAL up ({}), {} ports",
            r.dpdk_version,
            eal.args()[1..].join(" "),
            eal.port_count()
        ),
    );
    {
        let pool = PktMbufPool::new(eal, "selfcheck", 4095, 64, 2176, -1)?;
        let a = EthPort::start(
            eal,
            EthPort::id_by_name(eal, "net_af_packet0")?,
            &[&pool],
            512,
            false,
        )?;
        let b = EthPort::start(
            eal,
            EthPort::id_by_name(eal, "net_af_packet1")?,
            &[&pool],
            512,
            false,
        )?;
        let x = frame_exchange(&a, &b, &pool, 4000, Duration::from_secs(30))?;
        r.frames_verified = x.frames;
        r.frame_bytes = x.bytes;
        r.frame_exchange_ms = x.elapsed.as_secs_f64() * 1e3;
        say(quiet, format!(
            "dpdk: {} frames ({} bytes, 60..1460 B) sent on af_packet0, received on af_packet1, every byte verified, in {:.1} ms",
            x.frames, x.bytes, r.frame_exchange_ms
        ));
    }

    let spdk = Spdk::start(eal)?;
    r.spdk_version = Spdk::version();
    say(
        quiet,
        format!("spdk: {} on the same EAL, subsystems up", r.spdk_version),
    );
    spdk.create_bdev(
        "Malloc0",
        &BdevKind::Malloc {
            blocks: 16384,
            block_size: 4096,
        },
    )?;
    spdk.create_bdev(
        "Null0",
        &BdevKind::Null {
            blocks: 16384,
            block_size: 4096,
        },
    )?;
    let names: Vec<String> = spdk.bdevs().into_iter().map(|b| b.name).collect();
    for want in ["Malloc0", "Null0"] {
        carmine_preflight::check_bdev_exists(want, &names)
            .map_err(|e| SelfcheckError::Preflight(e.to_string()))?;
    }
    for b in spdk.bdevs() {
        say(
            quiet,
            format!(
                "spdk: bdev {} ({}, {} MiB, block {} B)",
                b.name,
                b.product,
                b.size_bytes() >> 20,
                b.block_size
            ),
        );
        r.bdevs.push(b.name);
    }
    {
        let m = Bdev::open("Malloc0", true)?;
        // 32 places spread over the 64 MiB bdev, each at a different 4 KiB phase.
        let offsets: Vec<u64> = (0..32u64).map(|i| i * (2 << 20) + i * 4096).collect();
        r.pattern_bytes_verified = pattern_roundtrip(&spdk, &m, &offsets, 4096, 0x5a)?;
        say(
            quiet,
            format!(
                "spdk: {} patterns of 4 KiB written to Malloc0 and read back equal",
                offsets.len()
            ),
        );
        let dur = Duration::from_secs_f64(io_seconds);
        let w = random_io(&spdk, &m, true, 4096, 32, 64 << 20, dur)?;
        let rd = random_io(&spdk, &m, false, 4096, 32, 64 << 20, dur)?;
        (r.malloc_randwrite_iops, r.malloc_randwrite_p99_us) = (w.iops, w.p99_us);
        (r.malloc_randread_iops, r.malloc_randread_p99_us) = (rd.iops, rd.p99_us);
        say(
            quiet,
            format!(
                "spdk: Malloc0 4 KiB random write qd32: {:.0} IOPS, p50 {:.1} us, p99 {:.1} us",
                w.iops, w.p50_us, w.p99_us
            ),
        );
        say(
            quiet,
            format!(
                "spdk: Malloc0 4 KiB random read  qd32: {:.0} IOPS, p50 {:.1} us, p99 {:.1} us",
                rd.iops, rd.p50_us, rd.p99_us
            ),
        );
        let n = Bdev::open("Null0", false)?;
        if n.info().keeps_data() {
            return Err(SelfcheckError::NullDurable);
        }
        say(
            quiet,
            "spdk: Null0 recognised as non-durable (benchmarks only)".into(),
        );
    }
    spdk.shutdown()?;
    say(quiet, "selfcheck: OK".into());
    Ok(r)
}
