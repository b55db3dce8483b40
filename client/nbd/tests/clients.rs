//! The NBD clients of issue #14 against a real `carmine-nbd` serving images of a real cluster
//! (a monitor in this process, `carmine-osd` processes with memstore; see `gateway`):
//! nbdinfo, qemu-img convert / compare, nbdcopy, qemu-io, fio, and TRIM / WRITE_ZEROES.
//! Each test starts its own cluster and gateway and bounds every tool by a deadline. The
//! tools come from Debian packages (ci/apt-packages): qemu-utils, libnbd-bin, fio.

#[path = "../../lib/tests/common/mod.rs"]
mod common;
mod gateway;

use std::process::Command;
use std::time::{Duration, Instant};

use gateway::wire::{self, Conn};
use gateway::{run, run_ok, seed, show, Rng, Setup, FIO, MIB, NBDCOPY, NBDINFO, QEMU_IMG, QEMU_IO};
use serde_json::Value;

const OBJ: u32 = 4 << 20;
const TOOL_LIMIT: Duration = Duration::from_secs(120);

fn json(out: &std::process::Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {text}\nstderr: {}", show(out)))
}

/// `nbdinfo --json URI`: the one export's object.
fn nbdinfo(uri: &str) -> Value {
    let out = run_ok(NBDINFO.cmd(["--json", uri]), TOOL_LIMIT);
    let v = json(&out);
    let exports = v["exports"].as_array().expect("an exports array");
    assert_eq!(exports.len(), 1, "{v}");
    exports[0].clone()
}

fn flag(e: &Value, k: &str) -> bool {
    e[k].as_bool()
        .unwrap_or_else(|| panic!("{k} missing or not a bool in {e}"))
}

#[test]
fn nbdinfo_lists_the_exports_with_size_and_flags() {
    let s = Setup::start("nbd", 16, &[2]);
    let disk = 64 * MIB + 12 * 1024; // the last object is partial
    let small = 3 * MIB;
    s.create_image("nbd", "disk", disk, OBJ);
    s.create_image("nbd", "small", small, 1 << 20);
    let mut gw = s.gateway(&["nbd/disk", "nbd/small"], &[]);

    let e = nbdinfo(&gw.uri("nbd/disk"));
    eprintln!("nbdinfo nbd/disk: {e}");
    assert_eq!(e["export-name"], "nbd/disk");
    assert_eq!(e["export-size"].as_u64(), Some(disk), "{e}");
    assert!(!flag(&e, "is_read_only"), "{e}");
    for k in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_multi_conn",
    ] {
        assert!(flag(&e, k), "{k} in {e}");
    }
    // The first --image is the default export (the empty name).
    let d = nbdinfo(&format!("nbd://{}", gw.addr));
    assert_eq!(d["export-size"].as_u64(), Some(disk), "{d}");
    assert_eq!(
        nbdinfo(&gw.uri("nbd/small"))["export-size"].as_u64(),
        Some(small)
    );

    // NBD_OPT_LIST: both exports, with their sizes (nbdinfo asks NBD_OPT_INFO for each).
    let out = run_ok(
        NBDINFO.cmd(["--list", "--json", &format!("nbd://{}", gw.addr)]),
        TOOL_LIMIT,
    );
    let v = json(&out);
    assert_eq!(v["protocol"], "newstyle-fixed", "{v}");
    assert_eq!(v["structured"], true, "structured replies: {v}");
    let mut listed: Vec<(String, u64)> = v["exports"]
        .as_array()
        .expect("exports")
        .iter()
        .map(|e| {
            (
                e["export-name"].as_str().expect("a name").to_string(),
                e["export-size"].as_u64().expect("a size"),
            )
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![
            ("nbd/disk".to_string(), disk),
            ("nbd/small".to_string(), small)
        ]
    );

    // An export that is not served is refused, and the gateway keeps serving.
    let out = run(NBDINFO.cmd(["--json", &gw.uri("nbd/nope")]), TOOL_LIMIT);
    assert!(!out.status.success(), "an unknown export: {}", show(&out));
    assert_eq!(
        nbdinfo(&gw.uri("nbd/disk"))["export-size"].as_u64(),
        Some(disk)
    );

    // SIGTERM: a clean exit.
    let st = gw.stop(Duration::from_secs(10));
    assert!(st.success(), "carmine-nbd after SIGTERM: {st}");
}

#[test]
fn qemu_img_convert_then_compare_then_nbdcopy_back() {
    // The 256 MiB.
    const SIZE: u64 = 256 * MIB;
    let seed = seed("qemu_img_convert");
    let s = Setup::start("nbd", 32, &[2]);
    s.create_image("nbd", "disk", SIZE, OBJ);
    let gw = s.gateway(&["nbd/disk"], &[]);
    let uri = gw.uri("nbd/disk");
    let dir = tempfile::tempdir().expect("a temp dir");
    let src = dir.path().join("src.raw");
    let back = dir.path().join("back.raw");
    gateway::random_file(&src, SIZE, seed);

    let t = Instant::now();
    // -n: the target exists (an NBD export cannot be created).
    let mut c = QEMU_IMG.cmd(["convert", "-n", "-f", "raw", "-O", "raw"]);
    c.arg(&src).arg(&uri);
    run_ok(c, Duration::from_secs(240));
    eprintln!(
        "qemu-img convert of {} MiB: {:.1?}",
        SIZE >> 20,
        t.elapsed()
    );

    let mut c = QEMU_IMG.cmd(["compare", "-f", "raw", "-F", "raw"]);
    c.arg(&src).arg(&uri);
    let out = run_ok(c, TOOL_LIMIT);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Images are identical"),
        "{}",
        show(&out)
    );

    let t = Instant::now();
    let mut c = NBDCOPY.cmd([uri.as_str()]);
    c.arg(&back);
    run_ok(c, TOOL_LIMIT);
    eprintln!("nbdcopy back: {:.1?}", t.elapsed());
    let mut c = Command::new(gateway::CMP.path());
    c.arg(&src).arg(&back);
    run_ok(c, TOOL_LIMIT);

    // The comparison can fail: one byte changed through the gateway is found, at its offset.
    let at = Rng::new(seed ^ 1).next_u64() % SIZE;
    let byte = std::fs::read(&src).expect("read src")[at as usize];
    run_ok(
        QEMU_IO.cmd([
            "-f",
            "raw",
            &uri,
            "-c",
            &format!("write -P {} {at} 1", !byte),
        ]),
        TOOL_LIMIT,
    );
    let mut c = QEMU_IMG.cmd(["compare", "-f", "raw", "-F", "raw"]);
    c.arg(&src).arg(&uri);
    let out = run(c, TOOL_LIMIT);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a changed image: {}",
        show(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // qemu-img names the first differing 512-byte sector.
    assert!(
        text.contains(&format!("Content mismatch at offset {}", at & !511)),
        "{}",
        show(&out)
    );
}

/// `qemu-io -f raw URI -c .. -c ..`; asserts it succeeded and that no command failed
/// (`read -P` prints "Pattern verification failed" and qemu-io then exits 1).
fn qemu_io(uri: &str, cmds: &[String]) -> String {
    let mut c = QEMU_IO.cmd(["-f", "raw", uri]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let out = run_ok(c, TOOL_LIMIT);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !text.contains("failed") && !String::from_utf8_lossy(&out.stderr).contains("failed"),
        "{}",
        show(&out)
    );
    text
}

/// `read -P` commands covering the whole model, one per run of equal bytes.
fn verify_cmds(model: &[u8]) -> Vec<String> {
    let mut cmds = Vec::new();
    let mut start = 0;
    for i in 1..=model.len() {
        if i == model.len() || model[i] != model[start] {
            cmds.push(format!("read -P {} {start} {}", model[start], i - start));
            start = i;
        }
    }
    cmds
}

#[test]
fn qemu_io_patterns_at_unaligned_offsets_and_across_objects() {
    const SIZE: u64 = 24 * MIB;
    const M4: u64 = 4 * MIB;
    let seed = seed("qemu_io_patterns");
    let s = Setup::start("nbd", 16, &[2]);
    s.create_image("nbd", "disk", SIZE, OBJ);
    let gw = s.gateway(&["nbd/disk"], &[]);
    let uri = gw.uri("nbd/disk");
    let mut model = vec![0u8; SIZE as usize];
    let mut cmds = Vec::new();
    let mut write = |cmds: &mut Vec<String>, verb: &str, off: u64, len: u64, p: u8| {
        model[off as usize..(off + len) as usize].fill(p);
        cmds.push(format!("{verb} -P {p} {off} {len}"));
    };
    // Fixed cases: across one boundary, one byte each side of one, spanning three objects
    // (two whole ones in the middle), an overwrite across a boundary inside that, the first
    // and the last bytes of the image.
    write(&mut cmds, "write", M4 - 1000, 5000, 0x11);
    write(&mut cmds, "write", 2 * M4 - 1, 2, 0x22);
    write(&mut cmds, "write", 3 * M4 - 513, 2 * M4 + 1025, 0x33);
    write(&mut cmds, "write", 4 * M4 - 7, 14, 0x55);
    write(&mut cmds, "write", 0, 1, 0x44);
    write(&mut cmds, "write", SIZE - 5, 5, 0x66);
    // Seeded unaligned writes, overlapping each other and the cases above.
    let mut rng = Rng::new(seed);
    for _ in 0..10 {
        let len = 1 + rng.next_u64() % (5 * MIB);
        let off = rng.next_u64() % (SIZE - len);
        let p = 1 + (rng.next_u64() % 255) as u8;
        write(&mut cmds, "write", off, len, p);
    }
    // Many requests in flight at once (answered in any order): adjacent, disjoint, unaligned
    // aio writes across the boundary at 20 MiB.
    let mut off = 5 * M4 - 3 * 65536 - 333;
    for i in 0..8u64 {
        let len = 65536 + 4097 * i;
        write(&mut cmds, "aio_write", off, len, 0x80 + i as u8);
        off += len;
    }
    cmds.push("aio_flush".into());
    let t = Instant::now();
    qemu_io(&uri, &cmds);
    eprintln!("qemu-io: {} writes in {:.1?}", cmds.len() - 1, t.elapsed());

    // Read back by another process over a new connection.
    let reads = verify_cmds(&model);
    let t = Instant::now();
    let text = qemu_io(&uri, &reads);
    assert_eq!(
        text.matches("read ").count(),
        reads.len(),
        "every read ran: {text}"
    );
    eprintln!(
        "qemu-io: {} pattern reads in {:.1?}",
        reads.len(),
        t.elapsed()
    );

    // The check can fail: a wrong pattern over written bytes is reported.
    let i = model.iter().position(|&b| b != 0).expect("bytes written") as u64;
    let wrong = model[i as usize].wrapping_add(1);
    let c = QEMU_IO.cmd(["-f", "raw", &uri, "-c", &format!("read -P {wrong} {i} 1")]);
    let out = run(c, TOOL_LIMIT);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("Pattern verification failed"),
        "{}",
        show(&out)
    );
}

/// fio with the nbd engine; its JSON report.
fn fio(uri: &str, args: &[&str], json_out: &std::path::Path) -> (std::process::Output, Value) {
    let mut c = FIO.cmd([
        "--name=carmine",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--output-format=json",
    ]);
    c.args(args).arg(format!("--output={}", json_out.display()));
    // fio saves a verify state file into its working directory when a verification fails.
    c.current_dir(json_out.parent().expect("the report's directory"));
    let out = run(c, Duration::from_secs(240));
    let text = std::fs::read_to_string(json_out).unwrap_or_default();
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("fio wrote no JSON report ({e}): {text}\n{}", show(&out)));
    (out, v)
}

#[test]
fn fio_random_writes_verify_crc32c_at_qd16() {
    // 8192 blocks: ~3K IOPS each way through a debug build, a few seconds per pass.
    const SIZE: u64 = 32 * MIB;
    let s = Setup::start("nbd", 16, &[2]);
    s.create_image("nbd", "disk", SIZE, OBJ);
    let gw = s.gateway(&["nbd/disk"], &[]);
    let uri = gw.uri("nbd/disk");
    let dir = tempfile::tempdir().expect("a temp dir");
    let job = [
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=16",
        "--size=32M",
        "--verify=crc32c",
        "--verify_fatal=1",
        // Fixed offsets (fio's default) so that --verify_only replays the same blocks.
        "--randrepeat=1",
    ];

    // Every block written at QD 16, then read back and checked.
    let t = Instant::now();
    let (out, v) = fio(&uri, &job, &dir.path().join("write.json"));
    let j = &v["jobs"][0];
    eprintln!(
        "fio randwrite 4k QD16 + verify: {:.1?}, write iops {}, read iops {}",
        t.elapsed(),
        j["write"]["iops"],
        j["read"]["iops"]
    );
    assert!(out.status.success(), "fio: {}", show(&out));
    assert_eq!(j["error"].as_u64(), Some(0), "{j}");
    assert_eq!(j["write"]["io_bytes"].as_u64(), Some(SIZE), "{j}");
    assert_eq!(j["read"]["io_bytes"].as_u64(), Some(SIZE), "verified: {j}");

    // Again from a new connection: the blocks persisted.
    let mut verify: Vec<&str> = job.to_vec();
    verify.push("--verify_only");
    let (out, v) = fio(&uri, &verify, &dir.path().join("verify.json"));
    assert!(out.status.success(), "fio --verify_only: {}", show(&out));
    assert_eq!(v["jobs"][0]["error"].as_u64(), Some(0), "{v}");

    // The verification can fail: zero one MiB through the gateway and it is found.
    qemu_io(&uri, &["write -z 8M 1M".to_string()]);
    let (out, v) = fio(&uri, &verify, &dir.path().join("bad.json"));
    assert!(!out.status.success(), "a zeroed MiB went unnoticed: {v}");
    assert_ne!(v["jobs"][0]["error"].as_u64(), Some(0), "{v}");
}

#[test]
fn trim_and_write_zeroes_read_back_as_zeros() {
    const SIZE: u64 = 16 * MIB;
    const M4: u64 = 4 * MIB;
    let seed = seed("trim_and_write_zeroes");
    let s = Setup::start("nbd", 16, &[2]);
    let image = s.create_image("nbd", "disk", SIZE, OBJ);
    let gw = s.gateway(&["nbd/disk"], &[]);
    let uri = gw.uri("nbd/disk");
    let exists = |n: u64| match s
        .rt
        .block_on(s.client.stat("nbd", &image.info().data_object(n)))
    {
        Ok(_) => true,
        Err(e) if e.is_not_found() => false,
        Err(e) => panic!("stat data object {n}: {e}"),
    };

    let mut model = vec![0u8; SIZE as usize];
    Rng::new(seed).fill(&mut model);
    let mut c = Conn::open(gw.addr, "nbd/disk").expect("NBD_OPT_GO");
    assert_eq!(c.size, SIZE);
    assert_ne!(c.flags & wire::FLAG_SEND_TRIM, 0, "TRIM advertised");
    assert_ne!(
        c.flags & wire::FLAG_SEND_WRITE_ZEROES,
        0,
        "WRITE_ZEROES advertised"
    );
    for (i, chunk) in model.chunks(MIB as usize).enumerate() {
        assert_eq!(c.write(i as u64 * MIB, chunk), 0, "write MiB {i}");
    }

    // The commands themselves, on the wire: TRIM of a whole object and of an unaligned piece,
    // WRITE_ZEROES across a boundary, of a whole object, and with FUA.
    let mut zero = |c: &mut Conn, cmd: u16, flags: u16, off: u64, len: u64| {
        assert_eq!(
            c.call(flags, cmd, off, len as u32, &[]),
            0,
            "cmd {cmd} {off}+{len}"
        );
        model[off as usize..(off + len) as usize].fill(0);
    };
    zero(&mut c, wire::CMD_TRIM, 0, M4, M4);
    zero(&mut c, wire::CMD_TRIM, 0, MIB + 3, 5000);
    zero(&mut c, wire::CMD_WRITE_ZEROES, 0, 2 * M4 - 100, 200);
    zero(&mut c, wire::CMD_WRITE_ZEROES, 0, 3 * M4, M4);
    zero(&mut c, wire::CMD_WRITE_ZEROES, wire::CMD_FLAG_FUA, 77, 4000);
    assert_eq!(c.call(0, wire::CMD_FLUSH, 0, 0, &[]), 0, "FLUSH");
    check_all(&mut c, &model, "after TRIM and WRITE_ZEROES");
    // Sparse: the objects zeroed whole are gone, the others are still there.
    let present: Vec<bool> = (0..SIZE / M4).map(exists).collect();
    assert_eq!(
        present,
        [true, false, true, false],
        "data objects 0..4 exist"
    );

    // And as qemu sends them: discard, write -z, write -z -u (may unmap), unaligned.
    let q = [
        (2 * M4 + 12345, 3 * MIB, "discard"),
        (M4 - 4097, 8193, "write -z"),
        (2 * MIB + 1, MIB, "write -z -u"),
    ];
    let mut cmds = Vec::new();
    for &(off, len, verb) in &q {
        cmds.push(format!("{verb} {off} {len}"));
        cmds.push(format!("read -P 0 {off} {len}"));
        model[off as usize..(off + len) as usize].fill(0);
    }
    qemu_io(&uri, &cmds);

    // Everything, on this connection and on a new one: zeros where zeroed, the data elsewhere.
    check_all(&mut c, &model, "the first connection");
    let mut fresh = Conn::open(gw.addr, "nbd/disk").expect("NBD_OPT_GO");
    check_all(&mut fresh, &model, "a new connection");
    fresh.disconnect();
    c.disconnect();
}

/// Reads the whole export (1 MiB READs, all in flight) and compares it with `model`.
fn check_all(conn: &mut Conn, model: &[u8], who: &str) {
    let ranges: Vec<(u64, u32)> = (0..model.len() as u64 / MIB)
        .map(|i| (i * MIB, MIB as u32))
        .collect();
    for (i, r) in conn.read_many(&ranges).into_iter().enumerate() {
        let got = r.unwrap_or_else(|e| panic!("{who}: READ of MiB {i}: error {e}"));
        let want = &model[i * MIB as usize..(i + 1) * MIB as usize];
        if got != want {
            let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            panic!(
                "{who}: MiB {i} differs at byte {} (got {:#x}, want {:#x})",
                i as u64 * MIB + at as u64,
                got[at],
                want[at]
            );
        }
    }
}
