//! Finds DPDK (installed via `DPDK_DIR`, or the vendored build in Carmine's cache), generates the
//! bindings, compiles the shim, and links every archive whole so constructor-registered drivers
//! and mempool handlers survive the static link.

use std::env;
use std::path::PathBuf;

use carmine_sys_build as sb;

/// Core DPDK libraries Carmine links (DPDK 20.05 names; ordering does not matter with
/// whole-archive).
const CORE_LIBS: &[&str] = &[
    "rte_eal",
    "rte_kvargs",
    "rte_telemetry",
    "rte_ring",
    "rte_mempool",
    "rte_mbuf",
    "rte_net",
    "rte_meter",
    "rte_ethdev",
    "rte_pci",
    "rte_hash",
    "rte_gso",
    "rte_cryptodev",
    "rte_security",
];

/// Drivers (registered from constructors). Each entry lists the archive names it has had across
/// DPDK releases (20.05 `rte_pmd_*`, 20.11+ `rte_net_*`).
const DRIVERS: &[&[&str]] = &[
    &["rte_bus_pci"],
    &["rte_bus_vdev"],
    &["rte_mempool_ring"],
    &["rte_common_iavf"],
    &["rte_pmd_af_packet", "rte_net_af_packet"],
    &["rte_pmd_memif", "rte_net_memif"],
    &["rte_pmd_ring", "rte_net_ring"],
    &["rte_pmd_null", "rte_net_null"],
    &["rte_pmd_virtio", "rte_net_virtio"],
    &["rte_pmd_tap", "rte_net_tap"],
    &["rte_pmd_e1000", "rte_net_e1000"],
    &["rte_pmd_ixgbe", "rte_net_ixgbe"],
    &["rte_pmd_i40e", "rte_net_i40e"],
    &["rte_pmd_ice", "rte_net_ice"],
];

fn main() {
    println!("cargo:rerun-if-env-changed=DPDK_DIR");
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=shim.h");
    println!("cargo:rerun-if-changed=shim.c");

    let (prefix, march) = match env::var_os("DPDK_DIR") {
        Some(dir) => (PathBuf::from(dir), "corei7".to_owned()),
        None => {
            let build = sb::vendored_build_dir();
            let march = sb::vendored_march(&build);
            (build.join("dpdk"), march)
        }
    };
    let include = prefix.join("include");
    let libdir = [prefix.join("lib"), prefix.join("lib/x86_64-linux-gnu")]
        .into_iter()
        .find(|d| d.join("librte_eal.a").exists())
        .unwrap_or_else(|| panic!("no librte_eal.a under {}/lib", prefix.display()));

    let mut libs: Vec<&str> = CORE_LIBS.to_vec();
    for names in DRIVERS {
        match names
            .iter()
            .find(|n| libdir.join(format!("lib{n}.a")).exists())
        {
            Some(n) => libs.push(n),
            None => panic!(
                "DPDK driver archive {names:?} missing in {}",
                libdir.display()
            ),
        }
    }
    // rte_common_iavf only exists where net/ice needs it; everything else is required.
    sb::link_whole_archives(&libdir, &libs);
    sb::link_system(&["numa", "dl", "pthread", "m"]);

    let march_flag = format!("-march={march}");
    cc::Build::new()
        .file("shim.c")
        .include(&include)
        .flag(&march_flag)
        .flag("-include")
        .flag("rte_config.h")
        .warnings(false)
        .compile("carmine_dpdk_shim");

    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_arg(format!("-I{}", include.display()))
        .clang_arg(&march_flag)
        .allowlist_function("carmine_.*")
        .allowlist_function("rte_eal_init|rte_eal_cleanup|rte_eal_process_type")
        .allowlist_function("rte_strerror|rte_lcore_count|rte_socket_id")
        .allowlist_function("rte_eth_dev_count_avail|rte_eth_dev_get_port_by_name")
        .allowlist_function("rte_eth_dev_stop|rte_eth_dev_close|rte_eth_dev_socket_id")
        .allowlist_function("rte_eth_promiscuous_enable|rte_eth_dev_set_mtu")
        .allowlist_function("rte_pktmbuf_pool_create|rte_mempool_free|rte_mempool_lookup")
        .allowlist_function("rte_vdev_init|rte_vdev_uninit")
        .allowlist_var("RTE_MAX_ETHPORTS|RTE_PKTMBUF_HEADROOM|RTE_MBUF_DEFAULT_BUF_SIZE")
        // Accessed only through the shim: their layouts change between releases.
        .opaque_type("rte_mbuf|rte_mempool")
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .generate()
        .expect("bindgen failed on the DPDK headers");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings");
    println!("cargo:include={}", include.display());
    println!("cargo:march={march}");
}
