#!/usr/bin/env bash
# The benchmark command: builds the release binary and runs benches/kvmfs.rs, which mounts
# kvmfs on simulated nodes, compares it with tmpfs and virsh in the same run, and writes
# docs/BENCHMARKS.md (machine, date, commit and every number). Needs root.
#
#   sudo scripts/bench.sh [--quick] [--only SECTIONS] [--profile [--perf-dir DIR]] [--creates N] [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "bench.sh: mounts filesystems and starts libvirtd and MariaDB; run as root (sudo $0)" >&2
    exit 1
fi

scripts/install-deps.sh
# The profile needs perf; nothing else beyond what the tests use.
if [[ " $* " == *" --profile "* ]] && ! command -v perf >/dev/null 2>&1; then
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-perf >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1 && [[ -x ${HOME:-/root}/.cargo/bin/cargo ]]; then
    PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi

cargo build --release --quiet
cargo bench --quiet --bench kvmfs -- "$@"
