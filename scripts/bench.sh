#!/usr/bin/env bash
# The benchmark command: builds the release binary and runs benches/kvmfs.rs, which mounts
# kvmfs on simulated nodes, compares it with tmpfs and virsh in the same run, and writes
# docs/BENCHMARKS.md (machine, date, commit and every number); then, on a full run, measures
# the real path on the lab (scripts/bench-e2e.sh: two libvirtd + QEMU nodes, `mkdir` to the
# first HTTP 200 of a booted guest), which writes its own section of the same file. Needs
# root.
#
#   sudo scripts/bench.sh [--quick] [--only SECTIONS] [--profile [--perf-dir DIR]]
#                         [--creates N] [--out FILE] [--no-e2e]
#
# --quick and --only (listing, virsh, scale, creates, micro, metrics, events) leave the lab out, as --no-e2e
# does.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "bench.sh: mounts filesystems and starts libvirtd and MariaDB; run as root (sudo $0)" >&2
    exit 1
fi

e2e=1
args=()
for a in "$@"; do
    case "$a" in
        --no-e2e) e2e=0 ;;
        --quick | --only | --out) e2e=0; args+=("$a") ;;
        *) args+=("$a") ;;
    esac
done

scripts/install-deps.sh
# The profile needs perf; nothing else beyond what the tests use.
if [[ " $* " == *" --profile "* ]] && ! command -v perf >/dev/null 2>&1; then
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-perf >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1 && [[ -x ${HOME:-/root}/.cargo/bin/cargo ]]; then
    PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi

cargo build --release --quiet
cargo bench --quiet --bench kvmfs -- "${args[@]}"

if [[ $e2e -eq 1 ]]; then
    if ! scripts/bench-e2e.sh; then
        echo "bench.sh: the lab's end-to-end measurement failed; its section of docs/BENCHMARKS.md is unchanged" >&2
        exit 1
    fi
fi
