#!/usr/bin/env bash
# Runs a fuzz target without cargo-fuzz or nightly: libFuzzer (from libfuzzer-sys) plus
# LLVM's SanitizerCoverage instrumentation, which stable rustc enables with -Cpasses.
# No AddressSanitizer (that needs nightly); carmine-wire has no unsafe code to check anyway.
#   usage: dataplane/wire/fuzz/run-stable.sh [decode|stream] [seconds]
# Corpus and crash artifacts go to dataplane/wire/fuzz/{corpus,artifacts}/<target> (ignored by git).
set -euo pipefail
target=${1:-decode}
secs=${2:-60}
here=$(cd "$(dirname "$0")" && pwd)
triple=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
# --target keeps these flags away from build scripts.
RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks" \
    cargo build --manifest-path "$here/Cargo.toml" --release --target "$triple" --bin "$target"
mkdir -p "$here/corpus/$target" "$here/artifacts/$target"
exec "$CARGO_TARGET_DIR/$triple/release/$target" "$here/corpus/$target" \
    -artifact_prefix="$here/artifacts/$target/" -max_total_time="$secs" -rss_limit_mb=2048
