//! `carmine-storebench --json` end to end on both devices (small run): one JSON object with
//! every figure the issue asks for, store and raw measured on the same device. Speed is not
//! asserted (that is what the binary prints); that the I/O happened is. The malloc run needs
//! root and hugepages.

use std::process::Command;

fn bench(device: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_carmine-storebench"))
        .args([
            "--device",
            device,
            "--size-mib",
            "96",
            "--working-set-mib",
            "8",
            "--seg-blocks",
            "128",
            "--ops",
            "3000",
            "--json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "storebench --device {device}: {stderr}"
    );
    // DPDK's EAL logs to stdout too: the figures are the line holding the JSON object.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("a JSON object");
    serde_json::from_str(line).unwrap()
}

#[test]
fn storebench_json_on_malloc_and_file() {
    for (device, prefix) in [("malloc", "spdk-malloc:"), ("file", "file:")] {
        let v = bench(device);
        assert!(v["device"].as_str().unwrap().starts_with(prefix), "{v}");
        for k in [
            "store_write_iops",
            "raw_write_iops",
            "store_read_iops",
            "raw_read_iops",
            "write_ratio",
            "read_ratio",
            "store_write_p99_us",
            "raw_write_p99_us",
            "store_read_p99_us",
            "raw_read_p99_us",
        ] {
            let x = v[k].as_f64().unwrap_or(0.0);
            assert!(x.is_finite() && x > 0.0, "{device}: {k} = {x} in {v}");
        }
        // Every caller byte reached the device at least once, plus headers.
        let wa = v["write_amplification"].as_f64().unwrap();
        assert!(
            (1.0..10.0).contains(&wa),
            "{device}: write amplification {wa}"
        );
        assert!(v["records"].as_u64().unwrap() > 0);
        // The store's cost (#16): CPU per op beside the raw device's, allocations per op, the
        // longest cleaner pause, and the targets they are read against.
        for k in [
            "write_cpu_us",
            "read_cpu_us",
            "read_copied_cpu_us",
            "raw_write_cpu_us",
            "raw_read_cpu_us",
        ] {
            let x = v[k].as_f64().unwrap_or(0.0);
            assert!(x.is_finite() && x > 0.0, "{device}: {k} = {x} in {v}");
        }
        for k in [
            "write_mallocs_per_op",
            "read_mallocs_per_op",
            "cleaner_pause_max_us",
        ] {
            let x = v[k].as_f64().unwrap_or(-1.0);
            assert!(x.is_finite() && x >= 0.0, "{device}: {k} = {x} in {v}");
        }
        for k in [
            "write_cpu_us",
            "read_cpu_us",
            "write_mallocs_per_op",
            "read_mallocs_per_op",
            "write_amplification",
        ] {
            assert!(v["targets"][k].is_number(), "{device}: no target for {k}");
        }
        // One figure per timed write round (the default is 3).
        let rounds = v["write_store_mallocs_by_round"].as_array().unwrap();
        assert_eq!(rounds.len(), 3, "{device}: {v}");
        assert!(rounds.iter().all(|x| x.as_f64().is_some_and(|x| x >= 0.0)));
    }
}
