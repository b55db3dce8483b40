//! DPDK in the CI mode: EAL with hugepages and `--no-pci`, two `net_af_packet` ports on the two
//! ends of a veth pair; frames sent out of one port arrive on the other with their payload intact.

mod common;

use std::time::Duration;

use carmine_dpdk::selftest::{frame_exchange, ExchangeError};
use carmine_dpdk::{Eal, EalConfig, EthPort, PktMbufPool, RxBatch, TxBatch};

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

    // The RX queue's socket (our af_packet patch) turns readable when a frame lands in the
    // ring: what an adaptive-idle shard sleeps on.
    let fd = p1
        .af_packet_rx_fd(0)
        .expect("an af_packet port has an RX socket");
    assert_eq!(p1.af_packet_rx_fd(1), None, "no such queue");
    let readable = |ms| {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, owned by this frame.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        n == 1 && pfd.revents & libc::POLLIN != 0
    };
    let mut rx = RxBatch::default();
    // Not readable once the ring is drained (the kernel's own IPv6 chatter may land in between:
    // drain and look again, a few times).
    let idle = (0..20).any(|_| {
        while p1.rx_burst(0, &mut rx) > 0 {
            rx.drain().for_each(drop);
        }
        let empty = !readable(0);
        if !empty {
            std::thread::sleep(Duration::from_millis(50));
        }
        empty
    });
    assert!(idle, "the socket stays readable with an empty ring");
    let mut m = pool.alloc().unwrap();
    let frame = m.append(60).unwrap();
    frame.fill(0);
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&p0.mac().unwrap());
    frame[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    let mut tx = TxBatch::default();
    tx.push(m).unwrap();
    assert_eq!(p0.tx_burst(0, &mut tx), 1);
    assert!(
        readable(2000),
        "a frame arrived but the socket did not wake"
    );
    let got = p1.rx_burst(0, &mut rx);
    assert!(got >= 1);
    rx.drain().for_each(drop);

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
