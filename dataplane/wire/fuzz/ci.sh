#!/usr/bin/env bash
# Every wire fuzz target for a bounded time, as ci/test runs them: each starts from the
# committed seeds (seeds/<target>, read-only) and grows a corpus in a temporary directory that
# is thrown away. Any crash, hang (-timeout) or out-of-memory fails the run, and the input that
# caused it is printed (base64 and hex) with the command that replays it.
#   usage: dataplane/wire/fuzz/ci.sh [seconds per target]   (default $CARMINE_FUZZ_SECONDS, 30)
# A longer run by hand, e.g. before a release: CARMINE_FUZZ_SECONDS=600 dataplane/wire/fuzz/ci.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-${CARMINE_FUZZ_SECONDS:-30}}
targets=(decode stream server client nbd_request nbd_option)

"$here/run-stable.sh" --build-only

work=$(mktemp -d "${TMPDIR:-/tmp}/carmine-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
failed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
    echo "--- fuzz $t: ${secs} s from $(find "$here/seeds/$t" -type f | wc -l) seeds"
    rc=0
    FUZZ_CORPUS="$work/$t/corpus" FUZZ_ARTIFACTS="$work/$t/artifacts" \
        "$here/run-stable.sh" "$t" "$secs" -print_final_stats=1 >"$work/$t/log" 2>&1 || rc=$?
    # libFuzzer's own summary lines: coverage and corpus at the end, executions, exec/s.
    grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::(number_of_executed_units|average_exec_per_sec)' \
        "$work/$t/log" || true
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t/log")
    corpus=$(find "$work/$t/corpus" -type f | wc -l)
    summary+=("$t: ${execs:-?} execs (limit $secs s), $corpus new corpus entries, exit $rc")
    shopt -s nullglob
    artifacts=("$work/$t/artifacts"/*)
    shopt -u nullglob
    if [ "$rc" -ne 0 ] || [ "${#artifacts[@]}" -gt 0 ]; then
        failed+=("$t")
        echo "=== fuzz $t FAILED (exit $rc); libFuzzer's output (last 60 lines):"
        tail -n 60 "$work/$t/log"
        for a in "${artifacts[@]}"; do
            echo "=== artifact $(basename "$a") ($(stat -c %s "$a") bytes), base64:"
            base64 -w 76 "$a"
            echo "=== hex:"
            od -An -tx1 -v "$a" | head -n 64
            echo "=== replay: decode the base64 above into a file F, then"
            echo "    dataplane/wire/fuzz/run-stable.sh $t F"
        done
    fi
done

echo "--- fuzz summary"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: failing target(s): ${failed[*]}" >&2
    exit 1
fi
