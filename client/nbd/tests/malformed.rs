//! Malformed NBD input closes the connection that sent it, and nothing else: a connection
//! opened before keeps reading and writing, the gateway keeps running, and new clients
//! (qemu-io, nbdinfo) are served after. The bytes are built by hand (`gateway::wire`) from the
//! protocol document, not with the gateway's own encoders.

#[path = "../../lib/tests/common/mod.rs"]
mod common;
mod gateway;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use gateway::wire::{self, Conn};
use gateway::{run_ok, Gateway, Rng, Setup, MIB, NBDINFO, QEMU_IO};

/// How long the gateway may take to notice and close.
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

fn closed(what: &str, s: &mut TcpStream) {
    let t = Instant::now();
    match wire::wait_closed(s, CLOSE_WITHIN) {
        Ok(got) => eprintln!(
            "{what}: closed after {:.1?} ({} bytes sent back first)",
            t.elapsed(),
            got.len()
        ),
        Err(e) => panic!("{what}: the gateway did not close the connection: {e}"),
    }
}

/// The connection opened first still works: a write, then a read of it and of `check`.
fn still_serves(good: &mut Conn, round: u8, check: &[u8]) {
    let data = vec![round; 5000];
    let off = MIB + u64::from(round) * 8192 - 7;
    assert_eq!(good.write(off, &data), 0, "round {round}: WRITE");
    assert_eq!(good.read(off, 5000), Ok(data), "round {round}: READ back");
    assert_eq!(
        good.read(0, check.len() as u32).as_deref(),
        Ok(check),
        "round {round}: the first data"
    );
}

fn transmission(gw: &Gateway) -> Conn {
    Conn::open(gw.addr, "nbd/disk").expect("NBD_OPT_GO")
}

#[test]
fn malformed_requests_close_that_connection_and_nothing_else() {
    let s = Setup::start("nbd", 16, &[2]);
    s.create_image("nbd", "disk", 16 * MIB, 4 << 20);
    let mut gw = s.gateway(&["nbd/disk"], &[]);
    let mut first = vec![0u8; 64 << 10];
    Rng::new(7).fill(&mut first);
    let mut good = transmission(&gw);
    assert_eq!(good.size, 16 * MIB);
    assert_eq!(good.write(0, &first), 0);
    let mut round = 0u8;
    let mut check = |good: &mut Conn, gw: &mut Gateway| {
        round += 1;
        still_serves(good, round, &first);
        assert!(gw.is_running(), "the gateway exited");
    };

    // Transmission phase: a request with a bad magic.
    let mut c = transmission(&gw);
    let mut req = wire::request(0, wire::CMD_READ, 1, 0, 4096);
    req[0..4].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
    c.stream().write_all(&req).expect("send");
    closed("bad request magic", c.stream());
    check(&mut good, &mut gw);

    // A WRITE claiming 1 GiB of payload (over any sane request size): the gateway must not
    // wait for, or buffer, the gigabyte.
    let mut c = transmission(&gw);
    let req = wire::request(0, wire::CMD_WRITE, 2, 0, 1 << 30);
    c.stream().write_all(&req).expect("send");
    let _ = c.stream().write_all(&[0xab; 64 << 10]);
    closed("WRITE of 1 GiB", c.stream());
    check(&mut good, &mut gw);

    // A request header cut short, then the client goes quiet: the server reads no further
    // than the header and still must answer nothing wrong; we close our side and the server
    // must close too (no leaked half-read connection keeps it from serving).
    let mut c = transmission(&gw);
    c.stream()
        .write_all(&wire::request(0, wire::CMD_READ, 3, 0, 512)[..13])
        .expect("send");
    let _ = c.stream().shutdown(std::net::Shutdown::Write);
    closed("a truncated header then EOF", c.stream());
    check(&mut good, &mut gw);

    // Handshake phase: an option without the IHAVEOPT magic.
    let mut s1 = wire::greet(gw.addr).expect("greeting");
    let mut opt = wire::option(wire::OPT_GO, &[0, 0, 0, 0, 0, 0]);
    opt[0] ^= 0xff;
    s1.write_all(&opt).expect("send");
    closed("bad option magic", &mut s1);
    check(&mut good, &mut gw);

    // An option announcing 1 GiB of data.
    let mut s2 = wire::greet(gw.addr).expect("greeting");
    let mut opt = wire::option(wire::OPT_GO, &[]);
    opt[12..16].copy_from_slice(&(1u32 << 30).to_be_bytes());
    s2.write_all(&opt).expect("send");
    let _ = s2.write_all(&[0u8; 64 << 10]);
    closed("an option of 1 GiB", &mut s2);
    check(&mut good, &mut gw);

    // Garbage instead of the client flags and options.
    let mut s3 = TcpStream::connect(gw.addr).expect("connect");
    let _ = s3.write_all(&[0xff; 4096]);
    closed("garbage after the greeting", &mut s3);
    check(&mut good, &mut gw);

    // A READ past the end is not malformed: an error reply (EINVAL), and the connection
    // stays usable.
    let mut c = transmission(&gw);
    assert_eq!(
        c.read(16 * MIB - 512, 4096),
        Err(wire::EINVAL),
        "READ past the end"
    );
    assert_eq!(c.read(0, 4096).as_deref(), Ok(&first[..4096]));
    c.disconnect();
    check(&mut good, &mut gw);

    // New clients after all that.
    let uri = gw.uri("nbd/disk");
    let out = run_ok(
        QEMU_IO.cmd(["-f", "raw", &uri, "-c", "read -P 1 1056761 5000"]),
        Duration::from_secs(60),
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("failed"),
        "qemu-io read the first round's write: {}",
        gateway::show(&out)
    );
    run_ok(NBDINFO.cmd(["--json", &uri]), Duration::from_secs(60));
    good.disconnect();
    let st = gw.stop(Duration::from_secs(10));
    assert!(st.success(), "carmine-nbd after SIGTERM: {st}");
}
