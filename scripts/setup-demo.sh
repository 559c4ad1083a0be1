#!/usr/bin/env bash
# The one command for a fresh Debian 12 machine: installs the dependencies, builds kvmfs and
# mounts the embedded demo (three simulated nodes on libvirt's test driver, SQLite; no
# daemon to set up) at MOUNTPOINT, /cloud by default. Needs root.
#
#   sudo scripts/setup-demo.sh [MOUNTPOINT] [more `kvmfs mount` options, e.g. --state-dir DIR]
set -euo pipefail

MP=${1:-/cloud}
shift || true
# Relative to where the command was typed, before moving to the repository.
[[ $MP == /* ]] || MP="$PWD/$MP"
MP=${MP%/}
[[ -n $MP ]] || MP=/
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "setup-demo.sh: installs packages and mounts a filesystem; run as root (sudo $0)" >&2
    exit 1
fi

# "FSTYPE SOURCE" of whatever is mounted exactly at $MP, per /proc/self/mountinfo (which
# writes a space in a path as \040). A kvmfs mount reads "fuse kvmfs" (or "fuse.kvmfs kvmfs").
mounted_at() {
    local want=${MP// /\\040}
    awk -v mp="$want" '$5 == mp { for (i = 7; i <= NF; i++) if ($i == "-") { print $(i + 1), $(i + 2); exit } }' \
        /proc/self/mountinfo
}

# A live kvmfs mount: nothing to do. (A stale one, left by a crashed daemon, answers
# "Transport endpoint is not connected"; `kvmfs mount` clears it itself.)
case $(mounted_at) in
    "fuse kvmfs" | "fuse.kvmfs kvmfs")
        if stat "$MP" >/dev/null 2>&1; then
            echo "setup-demo.sh: kvmfs is already mounted at $MP"
            echo "  unmount it with: fusermount3 -u $MP"
            exit 0
        fi
        ;;
esac

scripts/install-deps.sh

# rustup's cargo is often only in ~/.cargo/bin, which sudo's PATH leaves out.
if ! command -v cargo >/dev/null 2>&1 && [[ -x ${HOME:-/root}/.cargo/bin/cargo ]]; then
    PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup-demo.sh: cargo not found; install Rust with rustup, or run: sudo env \"PATH=\$PATH\" $0" >&2
    exit 1
fi

echo "setup-demo.sh: building (cargo build --release)"
cargo build --release --quiet

mkdir -p -- "$MP"
# Returns once the mount answers; the daemon keeps running in the background.
target/release/kvmfs mount "$MP" "$@"

cat <<MSG
kvmfs is mounted at $MP (the demo: nodes kvm1, kvm2, kvm3 on libvirt's test driver).
Try:
  ls $MP $MP/nodes $MP/instances $MP/networks
  cat $MP/nodes/kvm1/info.json
  cat $MP/instances/legacy-web/status
  target/release/kvmfs menu $MP          (the dialog menu)
  ls -l $MP/nodes/kvm1/instances
Unmount (the daemon then exits):
  fusermount3 -u $MP
MSG
