//! Finds SPDK (a built source tree through `SPDK_DIR`, or the vendored build in Carmine's cache),
//! generates the bindings, compiles the shim, and links every archive whole so the bdev modules
//! and subsystems that register from constructors survive the static link.

use std::env;
use std::path::PathBuf;

use carmine_sys_build as sb;

/// SPDK archives Carmine links (ordering does not matter with whole-archive).
const SPDK_LIBS: &[&str] = &[
    "spdk_event_bdev",
    "spdk_event_accel",
    "spdk_event_vmd",
    "spdk_event_sock",
    "spdk_bdev_malloc",
    "spdk_bdev_null",
    "spdk_bdev_aio",
    "spdk_bdev_virtio",
    "spdk_bdev_nvme",
    "spdk_sock_posix",
    "spdk_event",
    "spdk_bdev",
    "spdk_accel",
    "spdk_nvme",
    "spdk_virtio",
    "spdk_vmd",
    "spdk_sock",
    "spdk_notify",
    "spdk_trace",
    "spdk_rpc",
    "spdk_jsonrpc",
    "spdk_json",
    "spdk_conf",
    "spdk_thread",
    "spdk_util",
    "spdk_log",
    "spdk_env_dpdk",
];

/// Bdev modules whose (internal) headers the shim includes.
const MODULE_HEADERS: &[&str] = &["malloc", "null", "aio", "virtio"];

fn first_existing(cands: &[PathBuf]) -> Option<PathBuf> {
    cands.iter().find(|p| p.exists()).cloned()
}

fn main() {
    println!("cargo:rerun-if-env-changed=SPDK_DIR");
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=shim.h");
    println!("cargo:rerun-if-changed=shim.c");

    let (root, march) = match env::var_os("SPDK_DIR") {
        Some(dir) => (PathBuf::from(dir), "corei7".to_owned()),
        None => {
            let build = sb::vendored_build_dir();
            let march = sb::vendored_march(&build);
            (build.join("spdk"), march)
        }
    };
    let include = root.join("include");
    // A built source tree keeps its archives in build/lib; Carmine's cache in lib.
    let libdir = first_existing(&[root.join("build/lib"), root.join("lib")])
        .filter(|d| d.join("libspdk_bdev.a").exists())
        .unwrap_or_else(|| panic!("no libspdk_bdev.a under {}", root.display()));
    let module_dirs: Vec<PathBuf> = MODULE_HEADERS
        .iter()
        .map(|m| {
            first_existing(&[
                root.join("module/bdev").join(m),
                root.join("module-include"),
            ])
            .unwrap_or_else(|| panic!("no header dir for bdev module {m} in {}", root.display()))
        })
        .collect();
    let dpdk_include = PathBuf::from(env::var("DEP_DPDK_INCLUDE").expect("DEP_DPDK_INCLUDE"));

    sb::link_whole_archives(&libdir, SPDK_LIBS);
    sb::link_system(&[
        "aio", "uuid", "numa", "ssl", "crypto", "rt", "dl", "pthread",
    ]);

    let march_flag = format!("-march={march}");
    let mut shim = cc::Build::new();
    shim.file("shim.c")
        .include(&include)
        .include(&dpdk_include)
        .flag(&march_flag)
        .warnings(false);
    for d in &module_dirs {
        shim.include(d);
    }
    shim.compile("carmine_spdk_shim");

    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_arg(format!("-I{}", include.display()))
        .clang_arg(format!("-I{}", dpdk_include.display()))
        .clang_arg(&march_flag)
        .allowlist_function("carmine_.*")
        .allowlist_function("spdk_env_dpdk_post_init|spdk_env_dpdk_post_fini")
        .allowlist_function("spdk_thread_.*|spdk_set_thread|spdk_get_thread")
        .allowlist_function("spdk_bdev_.*|spdk_put_io_channel")
        .allowlist_function("spdk_dma_.*|spdk_zmalloc|spdk_malloc|spdk_free")
        .allowlist_function("spdk_log_set_print_level|spdk_log_set_level")
        .allowlist_var("SPDK_VERSION_.*|SPDK_ENV_SOCKET_ID_ANY|SPDK_MALLOC_DMA")
        .opaque_type("spdk_bdev|spdk_bdev_io|spdk_bdev_desc|spdk_io_channel|spdk_thread")
        // NVMe passthrough pulls in packed NVMe structures Rust cannot represent; unused.
        .blocklist_function("spdk_bdev_nvme_.*|spdk_bdev_.*_ext_.*|spdk_bdev_get_.*_opts")
        .opaque_type("spdk_nvme_.*")
        .layout_tests(false)
        .generate_comments(false)
        .generate()
        .expect("bindgen failed on the SPDK headers");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings");
}
