#!/usr/bin/env bash
# Runs the whole test suite (scripts/test.sh) RUNS times in a row (default 3) while every CPU
# is kept busy by a spinning process, as a shared CI machine may be: tests must wait for the
# conditions they need, never for luck. Prints one line per run (result, time, failures) and
# exits non-zero if any run failed. Logs are kept in target/under-load/. Needs root, like
# scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${1:-3}
logs=target/under-load
mkdir -p "$logs"

hogs=()
stop_hogs() {
    for p in "${hogs[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap stop_hogs EXIT
for _ in $(seq "$(nproc)"); do
    (while :; do :; done) &
    hogs+=("$!")
done

failed=0
for i in $(seq "$runs"); do
    log="$logs/run-$i.log"
    start=$(date +%s)
    if scripts/test.sh >"$log" 2>&1; then result=ok; else result=FAILED; failed=1; fi
    secs=$(( $(date +%s) - start ))
    tests=$(grep -E '^test result:' "$log" | awk '{p+=$4; f+=$6} END {print p " passed, " f " failed"}')
    echo "run $i: $result in ${secs}s ($tests) with $(nproc) CPUs busy; log $log"
    grep -E '^test .* FAILED$' "$log" | sed 's/^/    /' || true
done
exit "$failed"
