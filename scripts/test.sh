#!/usr/bin/env bash
# Runs every test of kvmfs: unit tests, and integration tests that mount FUSE filesystems,
# start throwaway MariaDB servers and use libvirt's test driver. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "test.sh: the tests mount FUSE filesystems and start MariaDB servers; run as root (sudo $0)" >&2
    exit 1
fi

scripts/install-deps.sh

# rustup's cargo is often only in ~/.cargo/bin, which sudo's PATH leaves out.
if ! command -v cargo >/dev/null 2>&1 && [[ -x ${HOME:-/root}/.cargo/bin/cargo ]]; then
    PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo not found; install Rust with rustup, or run: sudo env \"PATH=\$PATH\" $0" >&2
    exit 1
fi

# --no-fail-fast: a failing test binary must not hide the results of the ones after it.
cargo test --all-targets --no-fail-fast -- --test-threads=4
