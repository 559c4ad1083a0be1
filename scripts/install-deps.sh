#!/usr/bin/env bash
# Installs the Debian 12 packages kvmfs needs to build, run and test, and only those that
# are missing. Safe to run again: with everything present it changes nothing and touches
# no network. Runs as root. Rust is not installed here (use rustup; cargo may already be
# in ~/.cargo/bin).
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps.sh: must run as root (try: sudo $0)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive

# Everything but qemu-utils, which is handled on its own below.
PACKAGES=(
    libvirt-dev                 # links the `virt` crate
    libvirt-clients             # virsh
    libvirt-daemon              # libvirt's drivers, including the test driver
    libvirt-daemon-driver-qemu
    qemu-system-x86
    fuse3                       # fusermount3
    mariadb-server              # tests start throwaway MariaDB servers
    mariadb-client
    galera-4                    # tests/galera.rs starts a three-server Galera cluster
    rsync                       # its joining servers copy their state with rsync
    genisoimage                 # isoinfo: the tests read kvmfs's seed images back
    pkg-config
    vim                         # the editor tests edit spec.json with vim and nano
    nano
    tmux                        # drives nano, the menu and mc at a terminal in the tests
    dialog                      # kvmfs menu
    jq                          # kvmfs menu reads the tree's JSON with it
    mc                          # the tests copy and delete instances with Midnight Commander
    libglib2.0-bin              # gio: the tests copy and delete instances as file managers do
    shellcheck                  # a test checks the menu script
    systemd                     # systemd-analyze verify checks mount/kvmfs.service
    procps                      # pgrep
    debootstrap                 # the lab's guest image (scripts/lab-image.sh)
    e2fsprogs                   # mkfs.ext4 -d for it; debugfs reads guest logs in the e2e test
    iproute2                    # the lab's network namespaces, bridges and veths
    util-linux                  # unshare, nsenter
    curl                        # the e2e test fetches the guests' pages
    openssh-client              # and logs in to them
    zabbix-agent                # tests/monitoring.rs: zabbix_agentd reads the mount (template keys)
    prometheus                  # promtool: checks kvmfs.prom and the alert rules, runs their tests
    prometheus-node-exporter    # its textfile collector serves /metrics/kvmfs.prom in the tests
    qemu-block-extra            # QEMU's libnfs driver: guests' disks on [storage] nfs, and
                                # qemu-img making them there (no kernel NFS client needed)
    libnfs-utils                # nfs-cp, nfs-rm: kvmfs uploads seeds and deletes files on the share
    nfs-ganesha                 # the lab's storage node: a userspace NFS server (the kernel here
    nfs-ganesha-vfs             # has no nfsd), exporting one folder through its VFS backend
    rpcbind                     # NFSv3, which QEMU speaks, needs a portmapper beside ganesha
)

# Packages whose Debian service would start at install and keep running (the agent on port
# 10050, node_exporter on 9100, a Prometheus server on 9090, an NFS server and rpcbind on
# 2049 and 111). The tests start these programs
# themselves, with their own configuration on free loopback ports, so the packaged services
# are neither started at install nor enabled.
SERVICES=(zabbix-agent prometheus prometheus-node-exporter nfs-ganesha rpcbind)

installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

updated=0
# Runs one quiet `apt-get install`; its output is shown only if it fails.
apt_install() {
    echo "install-deps.sh: installing $*"
    local log
    log=$(mktemp)
    if [[ $updated -eq 0 ]]; then
        if ! apt-get -q update >"$log" 2>&1; then
            cat "$log" >&2
            rm -f "$log"
            echo "install-deps.sh: apt-get update failed" >&2
            exit 1
        fi
        updated=1
    fi
    if ! apt-get install -y -q -o Dpkg::Use-Pty=0 "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "install-deps.sh: apt-get install $* failed" >&2
        exit 1
    fi
    rm -f "$log"
}

missing=()
for p in "${PACKAGES[@]}"; do
    installed "$p" || missing+=("$p")
done
# Commands kvmfs and its tests run, wherever they came from (a git under /usr/local counts).
for cmd_pkg in git:git python3:python3; do
    command -v "${cmd_pkg%%:*}" >/dev/null 2>&1 || missing+=("${cmd_pkg#*:}")
done
# While installing, refuse every service start (invoke-rc.d asks policy-rc.d; 101 = not
# allowed), unless the machine already has a policy of its own (containers often do).
policy=/usr/sbin/policy-rc.d
own_policy=0
if [[ ${#missing[@]} -gt 0 && ! -e $policy ]]; then
    printf '#!/bin/sh\n# installed by kvmfs scripts/install-deps.sh for one apt-get run\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
    trap 'rm -f "$policy"' EXIT
fi

if [[ ${#missing[@]} -gt 0 ]]; then
    # Never together with qemu-utils: the machine may carry a newer qemu-utils from
    # backports, and asking for both in one call fails with "held broken packages".
    # This call removes that qemu-utils if it has to; the next step brings back the
    # version that matches qemu-system-x86.
    apt_install "${missing[@]}"
fi

if ! installed qemu-utils; then
    apt_install qemu-utils
elif ! command -v qemu-img >/dev/null 2>&1; then
    # Marked installed but its qemu-img is gone: put the files back.
    apt_install --reinstall qemu-utils
fi

if [[ $own_policy -eq 1 ]]; then
    rm -f "$policy"
    trap - EXIT
fi

# The monitoring services this run installed stay off (a package may enable or start its
# service when no policy stopped it): stopped, and not started at boot. Services that were
# there before are the machine's own business and left alone; the tests never use them.
for s in "${SERVICES[@]}"; do
    [[ " ${missing[*]} " == *" $s "* ]] || continue
    if [[ -d /run/systemd/system ]]; then
        systemctl disable --now --quiet "$s" 2>/dev/null || true
    elif [[ -x /etc/init.d/$s ]]; then
        /etc/init.d/"$s" stop >/dev/null 2>&1 || true
        update-rc.d "$s" disable >/dev/null 2>&1 || true
    fi
done

if [[ ${#missing[@]} -eq 0 && $updated -eq 0 ]]; then
    echo "install-deps.sh: all packages present; nothing to install"
fi
