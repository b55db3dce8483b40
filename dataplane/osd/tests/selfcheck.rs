//! The self-check binary end to end: it must succeed on a prepared machine and report figures
//! that show the I/O really happened.

use std::process::Command;

#[test]
fn selfcheck_passes_and_reports_real_io() {
    let out = Command::new(env!("CARGO_BIN_EXE_carmine-osd"))
        .args(["selfcheck", "--json", "--io-seconds", "0.3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "selfcheck failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["frames_verified"], 4000);
    assert_eq!(v["pattern_bytes_verified"], 32 * 4096);
    assert!(v["malloc_randwrite_iops"].as_f64().unwrap() > 0.0);
    assert!(v["malloc_randread_iops"].as_f64().unwrap() > 0.0);
    let bdevs: Vec<&str> = v["bdevs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b.as_str())
        .collect();
    assert!(
        bdevs.contains(&"Malloc0") && bdevs.contains(&"Null0"),
        "{bdevs:?}"
    );
    assert!(v["spdk_version"].as_str().unwrap().contains("20.07"));
    assert!(v["dpdk_version"].as_str().unwrap().contains("20.05"));
}
