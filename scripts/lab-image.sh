#!/usr/bin/env bash
# Builds the lab's guest base image from Debian packages, once, and caches it.
#
#   scripts/lab-image.sh [--force]     prints the cache folder on its last line of stdout
#
# The image is Debian 12 (debootstrap minbase) with systemd, the cloud kernel, cloud-init,
# an SSH server, git and nginx; everything a web instance needs is already installed, so a
# guest needs no network beyond the lab's own bridges. It boots by direct kernel boot: the
# folder holds
#
#   debian-12-lab.qcow2   the root filesystem (ext4 on the whole disk, /dev/vda), qcow2
#   vmlinuz, initrd.img   the image's own kernel and initramfs (virtio drivers included)
#   cmdline               the kernel command line it expects
#
# The cache lives in .cache/guest-image/<key>/ of the repository (gitignored), where <key>
# is a hash of this script: changing the recipe builds a new image; an older folder is
# removed once the new one is complete. Needs root, debootstrap and a reachable Debian
# mirror (the one apt uses, or KVMFS_LAB_MIRROR). About 4 minutes on 2 cores.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
SELF="$REPO/scripts/lab-image.sh"
KEY=$(sha256sum "$SELF" | cut -c1-12)
CACHE="$REPO/.cache/guest-image"
OUT="$CACHE/$KEY"
SUITE=bookworm
PACKAGES=(
    systemd-sysv udev            # init, and module autoloading for the virtio devices
    dbus                         # for logind, which powers off on the ACPI power button
    linux-image-cloud-amd64      # brings initramfs-tools; virtio drivers are modules
    cloud-init ifupdown          # cloud-init renders network-config v2 for ifupdown
    openssh-server
    git nginx                    # what a `purpose: "web"` instance runs
    iproute2 netbase sudo
)

log() { echo "lab-image.sh: $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root (debootstrap, chroot)"
    exit 1
fi

force=0
[[ ${1:-} == --force ]] && force=1

if [[ $force -eq 0 && -f $OUT/complete ]]; then
    echo "$OUT"
    exit 0
fi

# The Debian archive apt already uses (first deb822 stanza or `deb` line for $SUITE).
apt_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        awk -v suite="$SUITE" '
            /^[[:space:]]*$/ { if (uri != "" && ok) { print uri; exit } uri = ""; ok = 0; next }
            tolower($1) == "uris:" { uri = $2 }
            tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
            END { if (uri != "" && ok) print uri }
        ' "$f" | head -n1
    done
    if [[ -f /etc/apt/sources.list ]]; then
        sed -E 's/\[[^]]*\]//' /etc/apt/sources.list |
            awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2; exit }'
    fi
}

MIRROR=${KVMFS_LAB_MIRROR:-$(apt_mirror | head -n1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
command -v debootstrap >/dev/null || { log "debootstrap is missing (scripts/install-deps.sh)"; exit 1; }

mkdir -p "$CACHE"
WORK=$(mktemp -d "$CACHE/build.XXXXXX")
cleanup() {
    # Mounts were made in a private mount namespace and are gone with it; only files remain.
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
ROOT="$WORK/root"

log "debootstrap $SUITE from $MIRROR (key $KEY)"
start=$SECONDS
# debootstrap mounts /proc and /sys in the new root; a private mount namespace makes sure
# none of that outlives it, even when it fails.
unshare -m --propagation private debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" \
    >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 30 "$WORK/debootstrap.log" >&2
    log "debootstrap failed"
    exit 1
}

# Services must not start inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"
cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
EOF

log "installing ${PACKAGES[*]}"
# In a private mount namespace, so /proc, /sys and /dev of the chroot vanish with it.
unshare -m --propagation private bash -euo pipefail -c '
    root=$1; shift
    mount -t proc proc "$root/proc"
    mount -t sysfs sysfs "$root/sys"
    mount --rbind /dev "$root/dev"
    export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
    chroot "$root" apt-get -q update
    chroot "$root" apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 "$@"
' _ "$ROOT" "${PACKAGES[@]}" >"$WORK/install.log" 2>&1 || {
    tail -n 40 "$WORK/install.log" >&2
    log "installing packages in the chroot failed"
    exit 1
}

log "configuring the guest"
rm -f "$ROOT/usr/sbin/policy-rc.d"
echo "/dev/vda / ext4 rw,relatime 0 1" >"$ROOT/etc/fstab"
echo debian >"$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
printf 'auto lo\niface lo inet loopback\nsource /etc/network/interfaces.d/*\n' \
    >"$ROOT/etc/network/interfaces"
mkdir -p "$ROOT/etc/cloud/cloud.cfg.d"
cat >"$ROOT/etc/cloud/cloud.cfg.d/90-kvmfs-lab.cfg" <<'EOF'
# kvmfs lab image: the seed is always a NoCloud cdrom; never probe cloud metadata servers.
datasource_list: [NoCloud, None]
# One host key type: key generation is slow under software emulation.
ssh_genkeytypes: [ed25519]
# The guest keeps C.UTF-8; generating another locale is slow and fails in a minimal system.
locale: false
# Name resolution of the own hostname (sudo asks), without any DNS server.
manage_etc_hosts: true
# No boot loader: the nodes boot the kernel directly.
grub_dpkg:
  enabled: false
EOF
# The web server starts only once cloud-init has cloned the site (kvmfs's user-data enables
# and restarts it), so the first answer on port 80 is the instance's own page.
chroot "$ROOT" systemctl disable nginx.service >/dev/null 2>&1 || true
# systemd-only: with a SysV script beside the unit, `systemctl enable nginx` also runs
# update-rc.d, which takes over ten seconds under software emulation.
rm -f "$ROOT/etc/init.d/nginx"
# Nothing in the guest may reach for a mirror or the clock on its own.
for unit in apt-daily.timer apt-daily-upgrade.timer systemd-timesyncd.service \
    e2scrub_all.timer e2scrub_reap.service; do
    chroot "$ROOT" systemctl mask "$unit" >/dev/null 2>&1 || true
done
rm -f "$ROOT"/etc/ssh/ssh_host_*
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
chroot "$ROOT" apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/log/*.log "$ROOT"/tmp/*

kernel=$(ls "$ROOT"/boot/vmlinuz-* | sort -V | tail -n1)
initrd=$(ls "$ROOT"/boot/initrd.img-* | sort -V | tail -n1)
[[ -f $kernel && -f $initrd ]] || { log "no kernel or initrd in the image"; exit 1; }

log "making the disk image"
mkfs.ext4 -q -L root -d "$ROOT" "$WORK/root.raw" 2G >&2
qemu-img convert -O qcow2 "$WORK/root.raw" "$WORK/debian-12-lab.qcow2"

NEW="$WORK/out"
mkdir "$NEW"
mv "$WORK/debian-12-lab.qcow2" "$NEW/"
cp "$kernel" "$NEW/vmlinuz"
cp "$initrd" "$NEW/initrd.img"
echo "console=ttyS0 root=/dev/vda rw net.ifnames=0" >"$NEW/cmdline"
date -u +%FT%TZ >"$NEW/complete"
rm -rf "$OUT"
mv "$NEW" "$OUT"
# Older recipes' images.
for d in "$CACHE"/*/; do
    d=${d%/}
    [[ $d == "$OUT" || $d == "$CACHE"/build.* ]] || rm -rf --one-file-system "$d"
done
log "built $OUT in $((SECONDS - start)) s ($(du -sh "$OUT/debian-12-lab.qcow2" | cut -f1))"
echo "$OUT"
