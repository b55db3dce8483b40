//! The static link keeps DPDK's constructor-registered parts: the vdev bus and its PMDs and the
//! ring mempool handler. A link without `--whole-archive` drops them silently, and the EAL then
//! fails with "failed to parse device" (or no mempool ops) at run time instead of at build time.

mod common;

use carmine_dpdk::{Eal, EalConfig, EthPort, PktMbufPool};

#[test]
fn vdev_pmds_and_mempool_handler_are_linked() {
    common::private_netns();
    let memif_sock = format!("/tmp/carmine-memif-{}.sock", std::process::id());
    let vdevs = [
        ("net_null0", String::new()),
        ("net_ring0", String::new()),
        ("net_af_packet0", "iface=lo".to_owned()),
        // DPDK 20.05 still calls the roles master/slave.
        ("net_memif0", format!("role=master,socket={memif_sock}")),
        ("net_tap0", "iface=ctap0".to_owned()),
    ];
    let eal = Eal::init(&EalConfig {
        app: "carmine-test".into(),
        no_pci: true,
        // net_memif needs DPDK's multi-process channel, which --in-memory switches off.
        file_prefix: Some(format!("carmine-drv-{}", std::process::id())),
        mem_mb: Some(64),
        ..EalConfig::default()
    })
    .expect("EAL init");
    for (name, args) in &vdevs {
        eal.vdev_init(name, args)
            .unwrap_or_else(|e| panic!("{name} not usable (PMD not linked?): {e}"));
        EthPort::id_by_name(eal, name).unwrap();
    }
    assert_eq!(eal.port_count() as usize, vdevs.len());
    // The pktmbuf pool uses the "ring_mp_mc" handler from librte_mempool_ring.
    let pool = PktMbufPool::new(eal, "drv_pool", 511, 0, 2048, -1).expect("ring mempool handler");
    let m = pool.alloc().unwrap();
    assert_eq!(pool.in_use(), 1);
    drop(m);
    assert_eq!(pool.in_use(), 0);
    // An unknown driver is refused (the check above could fail).
    assert!(eal.vdev_init("net_nonexistent0", "").is_err());
    let _ = std::fs::remove_file(&memif_sock);
    // Its hugepage files and its runtime directory (/var/run/dpdk/<prefix>).
    eal.remove_shared_files(std::path::Path::new("/dev/hugepages"));
}
