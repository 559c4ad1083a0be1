#!/usr/bin/env bash
# Measures the real end-to-end path once: runs the end-to-end test (tests/e2e.rs, on the lab
# of scripts/lab.sh) and writes the time from `mkdir` to the instance's first HTTP 200 into
# docs/BENCHMARKS.md, with the machine, the date and the commit. Needs root.
#
#   scripts/bench-e2e.sh
#
# It replaces the section between the `e2e:begin` and `e2e:end` markers of
# docs/BENCHMARKS.md; the rest of the file is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "bench-e2e.sh: the lab needs root (sudo $0)" >&2
    exit 1
fi
scripts/install-deps.sh
if ! command -v cargo >/dev/null 2>&1 && [[ -x ${HOME:-/root}/.cargo/bin/cargo ]]; then
    PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi

# The image is built first, so that its build is not part of what is measured.
scripts/lab-image.sh >/dev/null

# What else ran on the machine matters: guests under TCG compete for the same CPUs.
load=$(cut -d' ' -f1-3 /proc/loadavg)
timings=$(mktemp)
trap 'rm -f "$timings"' EXIT
KVMFS_E2E_TIMINGS=$timings cargo test --release --test e2e -- --nocapture

commit=$(git rev-parse --short HEAD)
git diff --quiet HEAD -- src tests scripts Cargo.toml Cargo.lock || commit="$commit (with uncommitted changes)"
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
mem=$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
qemu=$(qemu-system-x86_64 --version | awk 'NR == 1 { print $4 }')
libvirt=$(libvirtd --version | awk '{ print $NF }')
machine="$(nproc) × $cpu, $mem RAM, Linux $(uname -r), QEMU $qemu (TCG), libvirt $libvirt"

python3 - "$timings" "$machine" "$commit" "$load" <<'EOF'
import json, sys, datetime, re
timings, machine, commit, load = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3], sys.argv[4]
date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
mig = timings.pop("migration", None)
rows = "\n".join(
    f"| `{name}` | `{t['node']}` | {t['running_s']:.1f} s | {t['http_200_s']:.1f} s |"
    for name, t in sorted(timings.items())
)
migration = "" if mig is None else f"""

Live migration of `web1` (`echo {mig['to']} > instances/web1/node`, disks on the NFS share,
guest running under TCG) while a client in the control namespace requested its page every
50 ms (each request bounded at 1 s):

| From → to | write → status `running` on the target | longest gap between answered requests | requests answered |
|---|---|---|---|
| `{mig['from']}` → `{mig['to']}` | {mig['migrate_s']:.1f} s | {mig['longest_gap_s']:.2f} s | {mig['answered']} of {mig['sent']} |"""
section = f"""<!-- e2e:begin (written by scripts/bench-e2e.sh; edits here are overwritten) -->
Measured {date} on commit {commit}; {machine}; load average {load} before the run.
One run of `scripts/bench-e2e.sh`; times are polled every 0.2 s.

| Instance | Node | `mkdir` → status `running` | `mkdir` → HTTP 200 with its page |
|---|---|---|---|
{rows}{migration}
<!-- e2e:end -->"""
path = "docs/BENCHMARKS.md"
doc = open(path).read()
pattern = re.compile(r"<!-- e2e:begin.*?<!-- e2e:end -->", re.S)
if not pattern.search(doc):
    sys.exit("bench-e2e.sh: docs/BENCHMARKS.md has no e2e:begin/e2e:end markers")
open(path, "w").write(pattern.sub(lambda _: section, doc))
print(section)
EOF
