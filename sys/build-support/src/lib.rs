//! Build-script helpers shared by `dpdk-sys` and `spdk-sys`.
//!
//! Where the libraries come from, in order:
//! 1. `DPDK_DIR` / `SPDK_DIR`: an installed DPDK / SPDK (prefix with `include/` and `lib/`, or for
//!    SPDK a built source tree with `build/lib/`), linked as is.
//! 2. The vendored build in Carmine's cache (`$CARMINE_CACHE`, default `/var/cache/carmine`),
//!    `current/{dpdk,spdk}`, made by `scripts/build-spdk` from the source that
//!    `scripts/fetch-spdk-source` fetched. If the cache holds no build for this recipe, the build
//!    script runs `scripts/build-spdk` (which never installs packages); if the *source* is
//!    missing it stops with a message naming `scripts/setup`.
//!
//! Linking: DPDK drivers, mempool handlers, SPDK bdev modules and subsystems register themselves
//! from ELF constructors. A plain static link drops every object nobody references, so they
//! would vanish silently ("failed to parse device"). Every archive is therefore linked with
//! `+whole-archive` (and `-bundle`, so the final binary's link sees the archive itself).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The root of the Carmine repository, found from the calling crate's manifest directory
/// (`sys/<crate>`).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|p| p.join("scripts/build-spdk").exists())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| {
            panic!(
                "cannot find scripts/build-spdk above {}",
                manifest.display()
            )
        })
}

/// The directory of the vendored build for the current recipe, building it if needed.
pub fn vendored_build_dir() -> PathBuf {
    let root = repo_root();
    let script = root.join("scripts/build-spdk");
    println!("cargo:rerun-if-changed={}", script.display());
    println!(
        "cargo:rerun-if-changed={}",
        root.join("sys/patches").display()
    );
    println!("cargo:rerun-if-env-changed=CARMINE_CACHE");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--print-dir")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !dir.join(".complete").exists() {
        // Builds DPDK and SPDK (a few minutes, once per recipe). Fails with a message naming
        // the setup script when the source tarball has not been fetched.
        let status = Command::new("bash")
            .arg(&script)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        if !status.success() {
            panic!(
                "\n\nThe vendored SPDK/DPDK could not be built (see the messages above).\n\
                 Run `scripts/setup` once (as root): it installs the build packages and fetches the\n\
                 pinned source; or point SPDK_DIR/DPDK_DIR at an installed SPDK/DPDK.\n"
            );
        }
    }
    dir
}

/// Link each archive `lib<name>.a` found in `dir` with `+whole-archive`; panics naming any that
/// is missing (a missing driver archive must fail the build, not the first run).
pub fn link_whole_archives(dir: &Path, names: &[&str]) {
    println!("cargo:rustc-link-search=native={}", dir.display());
    for name in names {
        let file = dir.join(format!("lib{name}.a"));
        if !file.exists() {
            panic!("missing static library {}", file.display());
        }
        println!("cargo:rustc-link-lib=static:+whole-archive,-bundle={name}");
    }
}

/// Link system libraries dynamically.
pub fn link_system(names: &[&str]) {
    for name in names {
        println!("cargo:rustc-link-lib=dylib={name}");
    }
}

/// The `-march` the vendored build used (read from its build-info), so the C shim's inline DPDK
/// code matches the libraries.
pub fn vendored_march(build_dir: &Path) -> String {
    std::fs::read_to_string(build_dir.join("build-info"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("march=").map(str::to_owned))
        })
        .unwrap_or_else(|| "corei7".to_owned())
}
