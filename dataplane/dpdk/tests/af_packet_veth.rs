//! DPDK in the CI mode: EAL with hugepages and `--no-pci`, two `net_af_packet` ports on the two
//! ends of a veth pair; frames sent out of one port arrive on the other with their payload intact.

mod common;

use std::time::Duration;

use carmine_dpdk::selftest::{frame_exchange, ExchangeError};
use carmine_dpdk::{Eal, EalConfig, EthPort, PktMbufPool};

#[test]
fn frames_cross_a_veth_pair_between_two_af_packet_ports() {
    common::private_netns();
    common::veth_pair("cva", "cvb");
    let eal = Eal::init(&EalConfig {
        app: "carmine-test".into(),
        no_pci: true,
        in_memory: true,
        mem_mb: Some(128),
        vdevs: vec![
            "net_af_packet0,iface=cva".into(),
            "net_af_packet1,iface=cvb".into(),
        ],
        ..EalConfig::default()
    })
    .expect("EAL init (hugepages reserved? ci/test reserves them)");
    assert_eq!(eal.port_count(), 2, "both af_packet ports probed");

    let pool = PktMbufPool::new(eal, "test_pool", 2047, 32, 2176, -1).unwrap();
    let p0 = EthPort::start(
        eal,
        EthPort::id_by_name(eal, "net_af_packet0").unwrap(),
        &[&pool],
        512,
        false,
    )
    .unwrap();
    let p1 = EthPort::start(
        eal,
        EthPort::id_by_name(eal, "net_af_packet1").unwrap(),
        &[&pool],
        512,
        false,
    )
    .unwrap();
    assert_ne!(p0.mac().unwrap(), p1.mac().unwrap());

    let r = frame_exchange(&p0, &p1, &pool, 2000, Duration::from_secs(20)).unwrap();
    assert_eq!(r.frames, 2000);
    assert!(p0.stats().unwrap().tx_packets >= 2000);
    // And the other way round.
    let r = frame_exchange(&p1, &p0, &pool, 500, Duration::from_secs(20)).unwrap();
    assert_eq!(r.frames, 500);
    assert_eq!(pool.in_use(), 0, "every mbuf went back to the pool");

    // A port whose peer is down delivers nothing, and the exchange says so instead of hanging.
    common::ip(&["link", "set", "cvb", "down"]);
    let err = frame_exchange(&p0, &p1, &pool, 10, Duration::from_millis(500)).unwrap_err();
    assert!(
        matches!(
            err,
            ExchangeError::Lost {
                got: 0,
                want: 10,
                ..
            }
        ),
        "{err}"
    );
}
