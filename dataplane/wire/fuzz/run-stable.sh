#!/usr/bin/env bash
# Runs a fuzz target without cargo-fuzz or nightly: libFuzzer (from libfuzzer-sys) plus
# LLVM's SanitizerCoverage instrumentation, which stable rustc enables with -Cpasses.
# No AddressSanitizer (that needs nightly); carmine-wire has no unsafe code to check anyway.
#   usage: dataplane/wire/fuzz/run-stable.sh [decode|stream|server|client|nbd_request|nbd_option] [seconds] [libFuzzer flags…]
#          dataplane/wire/fuzz/run-stable.sh <target> <input file>   (replays one input)
#          dataplane/wire/fuzz/run-stable.sh --build-only
# The run's corpus (which libFuzzer writes to) is $FUZZ_CORPUS, by default
# dataplane/wire/fuzz/corpus/<target>; crash artifacts go to $FUZZ_ARTIFACTS, by default
# dataplane/wire/fuzz/artifacts/<target>/ (both ignored by git). The committed seeds in
# dataplane/wire/fuzz/seeds/<target> are a second, read-only input: libFuzzer only writes
# to its first corpus directory. See README.md here.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
triple=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}

build() {
    # --target keeps these flags away from build scripts.
    RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks" \
        cargo build --locked --manifest-path "$here/Cargo.toml" --release --target "$triple" "$@"
}

if [ "${1:-}" = --build-only ]; then
    build --bins
    exit 0
fi

target=${1:-decode}
if [ -f "${2:-}" ]; then
    build --bin "$target"
    exec "$CARGO_TARGET_DIR/$triple/release/$target" "$2"
fi
secs=${2:-60}
shift $(( $# < 2 ? $# : 2 ))
build --bin "$target"
corpus=${FUZZ_CORPUS:-$here/corpus/$target}
artifacts=${FUZZ_ARTIFACTS:-$here/artifacts/$target}
mkdir -p "$corpus" "$artifacts"
inputs=("$corpus")
[ -d "$here/seeds/$target" ] && inputs+=("$here/seeds/$target")
# -timeout: one input running this long is a hang (the targets must never loop), reported as
# a crash with a timeout- artifact.
exec "$CARGO_TARGET_DIR/$triple/release/$target" "${inputs[@]}" \
    -artifact_prefix="$artifacts/" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 "$@"
