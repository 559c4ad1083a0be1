#!/usr/bin/env bash
# A local lab of real parts for kvmfs, on one machine, inside network namespaces of its own:
# two KVM nodes (each a real libvirtd with the QEMU driver, reached over qemu+tcp), a storage
# node (a userspace NFS server, nfs-ganesha, holding the guest base image and exporting it
# to both nodes), the bridges of the external and overlay networks, a MariaDB server and a
# git server. Needs root.
#
#   scripts/lab.sh up   [--prefix P]     build the image if missing, (re)create the lab
#   scripts/lab.sh down [--prefix P]     stop everything of the lab and delete it
#   scripts/lab.sh status [--prefix P]   what is running
#   scripts/lab.sh exec [--prefix P] CMD...
#                                        run CMD in the lab's control namespace (network
#                                        only: a FUSE mount made there is visible outside)
#
# The prefix (default $KVMFS_LAB_PREFIX, else "kvmfslab") names everything global the lab
# makes: the network namespaces P-ctl, P-n1, P-n2, P-st and the folder
# DIR=/var/tmp/kvmfs-lab-P. One exception, which rpcbind imposes: its socket and lock
# (/run/rpcbind.sock, /run/rpcbind.lock) are host-wide whatever the namespace, so one lab
# runs on a machine at a time, and `up` refuses while another rpcbind answers.
# Nothing else on the machine is changed: bridges, veths, addresses and guests' taps live
# only in those namespaces, each libvirtd sees private /etc/libvirt, /run/libvirt,
# /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt (bind mounts in a mount
# namespace of its own, which also gives it the `libvirt-qemu` user and `kvm` group that
# the QEMU driver insists on, without adding them to the machine), and `down` kills only
# processes that live in the lab's network namespaces. `up` runs `down` first, so a lab
# left over by a killed run is replaced.
#
# Layout (addresses inside the namespaces):
#
#   P-ctl   bridge mgmt 10.99.0.1/24    MariaDB on 127.0.0.1:3306, kvmfs runs here
#           bridge ext  10.77.0.1/24    git daemon on 10.77.0.1:9418, serving DIR/git
#           bridge ovl  10.78.0.1/24
#   P-n1    mgmt 10.99.0.11 (libvirtd qemu+tcp :16509), br-ext, br-ovl (veths to P-ctl)
#   P-n2    mgmt 10.99.0.12, likewise
#   P-st    mgmt 10.99.0.5: rpcbind (:111) and nfs-ganesha (NFSv3 and v4 on :2049, MOUNT on
#           :20048) exporting DIR/st/cloud as 10.99.0.5:/cloud, read-write, no root squash
#
# Guests on both nodes share one L2 segment per network with P-ctl: libvirt networks
# `external` (eth0, 10.77.0.0/24) and `overlay` (eth1, 10.78.0.0/24) are bridges in
# forward mode `bridge`. The export holds a copy of the base image as `debian-12.qcow2`,
# and kvmfs's configuration names it as `[storage]`: instances' disks and seeds are made
# there and QEMU on the nodes opens them over NFS itself (nothing is mounted anywhere).
# Each node's storage pool `default` is its own folder (DIR/n1/pool, DIR/n2/pool), empty.
# Both nodes also have a pool `shared`: a `dir` pool at the same path, DIR/shared, holding a
# copy of the base image — the form a `netfs` pool of one export mounted on every node takes
# (this kernel has no NFS client to mount one), for kvmfs's `pool_shared`.
# The kernel and initramfs for direct kernel boot are in DIR/boot. `up` writes
# DIR/kvmfs.toml (a kvmfs configuration for this lab) and DIR/lab.env (the facts above as
# shell variables, for scripts and tests).
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD

log() { echo "lab.sh: $*" >&2; }
die() {
    log "$*"
    exit 1
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

CMD=${1:-}
[[ -n $CMD ]] || usage
shift
PREFIX=${KVMFS_LAB_PREFIX:-kvmfslab}
if [[ ${1:-} == --prefix ]]; then
    [[ $# -ge 2 ]] || usage
    PREFIX=$2
    shift 2
fi
[[ $PREFIX =~ ^[a-z][a-z0-9]{0,11}$ ]] ||
    die "prefix must be 1-12 lowercase letters and digits, starting with a letter: $PREFIX"

CTL=$PREFIX-ctl
ST=$PREFIX-st
ST_IP=10.99.0.5
NODES=(n1 n2)
DIR=/var/tmp/kvmfs-lab-$PREFIX
# A new database password for every lab; it is written only to DIR/kvmfs.toml (mode 0600).
DB_PASSWORD=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
LIBVIRT_DIRS=(/etc/libvirt /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt)

[[ $(id -u) -eq 0 ]] || die "must run as root (network namespaces, libvirtd)"

netns_exists() { [[ -e /run/netns/$1 ]]; }

# Kills every process in network namespace $1: TERM, up to 30 s (a kvmfs daemon lets its
# builds and deletes end first), then KILL.
kill_netns() {
    local ns=$1 pids i
    netns_exists "$ns" || return 0
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [[ -n $pids ]] || return 0
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [[ -n $pids ]] || return 0
        sleep 0.1
    done
    log "killing what is left in $ns: $pids"
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        [[ -z $(ip netns pids "$ns" 2>/dev/null || true) ]] && return 0
        sleep 0.1
    done
    log "processes still alive in $ns"
}

down() {
    local ns had_storage=0
    netns_exists "$ST" && had_storage=1
    # The control namespace first: a kvmfs daemon there unmounts itself on SIGTERM; the
    # storage last, once no guest uses its files.
    for ns in "$CTL" "${NODES[@]/#/$PREFIX-}" "$ST"; do
        kill_netns "$ns"
    done
    for ns in "$CTL" "${NODES[@]/#/$PREFIX-}" "$ST"; do
        if netns_exists "$ns"; then
            ip netns del "$ns"
        fi
    done
    # The lab's rpcbind is gone with its namespace; its host-wide files stay behind.
    if [[ $had_storage -eq 1 ]]; then
        rm -f /run/rpcbind.sock /run/rpcbind.lock
    fi
    if [[ -d $DIR ]]; then
        rm -rf --one-file-system "$DIR"
    fi
}

# Runs a command in the control namespace, with its network only (see the header).
in_ctl() { nsenter --net="/run/netns/$CTL" "$@"; }

# The node's address on the management bridge.
node_ip() { echo "10.99.0.1${1#n}"; }

# /etc/passwd and /etc/group for a node's mount namespace: the machine's, plus the user and
# groups libvirt's QEMU driver looks up when it loads (it runs guests as root here).
node_accounts() {
    local d=$1
    cp /etc/passwd "$d/passwd"
    cp /etc/group "$d/group"
    getent group kvm >/dev/null || echo "kvm:x:64054:" >>"$d/group"
    getent group libvirt-qemu >/dev/null || echo "libvirt-qemu:x:64055:libvirt-qemu" >>"$d/group"
    getent passwd libvirt-qemu >/dev/null ||
        echo "libvirt-qemu:x:64055:64055:libvirt qemu:/var/lib/libvirt:/usr/sbin/nologin" >>"$d/passwd"
}

node_config() {
    local n=$1 d=$DIR/$1
    mkdir -p "$d"/{etc,run,lib,cache,log,pool}
    node_accounts "$d"
    cat >"$d/etc/libvirtd.conf" <<EOF
listen_tls = 0
listen_tcp = 1
listen_addr = "$(node_ip "$n")"
auth_tcp = "none"
log_outputs = "3:file:$d/libvirtd.log"
EOF
    # Guests run as root without a security driver, cgroups or per-guest mount namespaces:
    # the lab changes nothing outside its own namespaces and folder.
    cat >"$d/etc/qemu.conf" <<'EOF'
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
EOF
    for net in external:br-ext overlay:br-ovl; do
        cat >"$d/net-${net%%:*}.xml" <<EOF
<network><name>${net%%:*}</name><forward mode='bridge'/><bridge name='${net#*:}'/></network>
EOF
    done
}

# Starts node $1's virtlogd and libvirtd in its namespaces and defines its networks and pool.
node_start() {
    local n=$1 d=$DIR/$1
    ip netns exec "$PREFIX-$n" unshare -m --propagation private bash -euo pipefail -c '
        d=$1 shared=$2; shift 2
        mount --bind "$d/etc" /etc/libvirt
        mount --bind "$d/run" /run/libvirt
        mount --bind "$d/lib" /var/lib/libvirt
        mount --bind "$d/cache" /var/cache/libvirt
        mount --bind "$d/log" /var/log/libvirt
        mount --bind "$d/passwd" /etc/passwd
        mount --bind "$d/group" /etc/group
        virtlogd -d -p "$d/virtlogd.pid"
        libvirtd -d --listen -p "$d/libvirtd.pid"
        for ((i = 0; i < 300; i++)); do
            virsh -q -c qemu:///system version >/dev/null 2>&1 && break
            sleep 0.1
        done
        virsh -q -c qemu:///system version >/dev/null
        for net in external overlay; do
            virsh -q -c qemu:///system net-define "$d/net-$net.xml" >/dev/null
            virsh -q -c qemu:///system net-start "$net" >/dev/null
        done
        virsh -q -c qemu:///system pool-define-as default dir --target "$d/pool" >/dev/null
        virsh -q -c qemu:///system pool-start default >/dev/null
        virsh -q -c qemu:///system pool-define-as shared dir --target "$shared" >/dev/null
        virsh -q -c qemu:///system pool-start shared >/dev/null
    ' _ "$d" "$DIR/shared" >"$d/start.log" 2>&1 || {
        cat "$d/start.log" >&2
        [[ -f $d/libvirtd.log ]] && tail -n 20 "$d/libvirtd.log" >&2
        die "node $n: libvirtd did not start"
    }
}

network() {
    local n i
    ip netns add "$CTL"
    ip -n "$CTL" link set lo up
    for br in mgmt:10.99.0.1 ext:10.77.0.1 ovl:10.78.0.1; do
        ip -n "$CTL" link add "${br%%:*}" type bridge
        ip -n "$CTL" addr add "${br#*:}/24" dev "${br%%:*}"
        ip -n "$CTL" link set "${br%%:*}" up
    done
    for n in "${NODES[@]}"; do
        i=${n#n}
        ip netns add "$PREFIX-$n"
        ip -n "$PREFIX-$n" link set lo up
        ip -n "$CTL" link add "m$i" type veth peer name mgmt netns "$PREFIX-$n"
        ip -n "$CTL" link set "m$i" master mgmt up
        ip -n "$PREFIX-$n" addr add "$(node_ip "$n")/24" dev mgmt
        ip -n "$PREFIX-$n" link set mgmt up
        for net in ext ovl; do
            ip -n "$PREFIX-$n" link add "br-$net" type bridge
            ip -n "$PREFIX-$n" link set "br-$net" up
            ip -n "$CTL" link add "$net$i" type veth peer name "up-$net" netns "$PREFIX-$n"
            ip -n "$CTL" link set "$net$i" master "$net" up
            ip -n "$PREFIX-$n" link set "up-$net" master "br-$net" up
        done
    done
}

# The storage node: its namespace on the management bridge, rpcbind (NFSv3 needs a
# portmapper; QEMU speaks NFSv3 only) and nfs-ganesha exporting DIR/st/cloud as /cloud.
storage_start() {
    local d=$DIR/st i
    if [[ -S /run/rpcbind.sock ]] && rpcinfo -p >/dev/null 2>&1; then
        die "an rpcbind already runs on this machine (another lab?); rpcbind is host-wide, so the lab's storage node cannot start beside it"
    fi
    rm -f /run/rpcbind.sock /run/rpcbind.lock
    mkdir -p "$d/cloud" "$d/recovery"
    ip netns add "$ST"
    ip -n "$ST" link set lo up
    ip -n "$CTL" link add m0 type veth peer name mgmt netns "$ST"
    ip -n "$CTL" link set m0 master mgmt up
    ip -n "$ST" addr add "$ST_IP/24" dev mgmt
    ip -n "$ST" link set mgmt up
    cat >"$d/ganesha.conf" <<GANESHA
NFS_CORE_PARAM {
    Protocols = 3, 4; NFS_Port = 2049; MNT_Port = 20048;
    # Without it a v3 mount of the pseudo path /cloud fails (MNT3ERR_ACCES).
    Mount_Path_Pseudo = true;
    Enable_NLM = false; Enable_RQUOTA = false; Enable_UDP = false;
    Plugins_Dir = "/usr/lib/x86_64-linux-gnu/ganesha";
}
NFS_KRB5 { Active_krb5 = false; }
NFSv4 { Graceless = true; RecoveryBackend = fs; RecoveryRoot = "$d/recovery"; }
EXPORT {
    Export_Id = 1; Path = "$d/cloud"; Pseudo = "/cloud";
    Access_Type = RW; Squash = No_Root_Squash; SecType = sys;
    Protocols = 3, 4; Transports = TCP;
    FSAL { Name = VFS; }
}
GANESHA
    ip netns exec "$ST" setsid rpcbind -f </dev/null >"$d/rpcbind.log" 2>&1 &
    for ((i = 0; i < 100; i++)); do
        [[ -S /run/rpcbind.sock ]] && break
        sleep 0.1
    done
    ip netns exec "$ST" setsid ganesha.nfsd -F -f "$d/ganesha.conf" -L "$d/ganesha.log" \
        -p "$d/ganesha.pid" </dev/null >"$d/ganesha.out" 2>&1 &
    # Ready when its MOUNT and NFS services are registered and the export answers.
    for ((i = 0; i < 300; i++)); do
        if in_ctl rpcinfo -p "$ST_IP" 2>/dev/null | grep -q mountd &&
            in_ctl nfs-ls "nfs://$ST_IP/cloud/" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$d/ganesha.log" >&2 || true
    die "the storage node's NFS server did not start"
}

mariadb_start() {
    local d=$DIR/db
    mkdir -p "$d/data" "$d/tmp"
    mariadb-install-db --user=root --datadir="$d/data" --auth-root-authentication-method=normal \
        --skip-test-db --tmpdir="$d/tmp" >"$d/install.log" 2>&1 ||
        { cat "$d/install.log" >&2; die "mariadb-install-db failed"; }
    in_ctl setsid mariadbd --no-defaults --user=root --datadir="$d/data" --socket="$d/sock" \
        --port=3306 --bind-address=127.0.0.1 --pid-file="$d/pid" --tmpdir="$d/tmp" \
        --innodb-buffer-pool-size=32M --skip-log-bin </dev/null >"$d/server.log" 2>&1 &
    local i
    for ((i = 0; i < 300; i++)); do
        mariadb --no-defaults -uroot --socket="$d/sock" -e 'SELECT 1' >/dev/null 2>&1 && break
        sleep 0.1
    done
    mariadb --no-defaults -uroot --socket="$d/sock" <<EOF || die "MariaDB did not start"
CREATE DATABASE kvmfs;
CREATE USER 'kvmfs'@'127.0.0.1';
SET PASSWORD FOR 'kvmfs'@'127.0.0.1' = PASSWORD('$DB_PASSWORD');
GRANT ALL ON kvmfs.* TO 'kvmfs'@'127.0.0.1';
EOF
}

git_start() {
    mkdir -p "$DIR/git"
    in_ctl git daemon --detach --reuseaddr --export-all --listen=10.77.0.1 \
        --base-path="$DIR/git" --pid-file="$DIR/git.pid" "$DIR/git"
}

write_config() {
    local img=$1
    # It holds the database password: only root may read it (kvmfs refuses it otherwise).
    (umask 077 && : >"$DIR/kvmfs.toml")
    cat >"$DIR/kvmfs.toml" <<EOF
# kvmfs on the lab of scripts/lab.sh (prefix $PREFIX). Mount it from the lab's control
# namespace: scripts/lab.sh exec kvmfs mount MOUNTPOINT --config $DIR/kvmfs.toml
state_dir = "$DIR/kvmfs"

[database]
url = "mysql://kvmfs:$DB_PASSWORD@127.0.0.1:3306/kvmfs"

[[node]]
name = "kvm1"
uri = "qemu+tcp://$(node_ip n1)/system"

[[node]]
name = "kvm2"
uri = "qemu+tcp://$(node_ip n2)/system"

# The storage node: disks and seeds go there, QEMU on the nodes opens them over NFS.
[storage]
nfs = "$ST_IP:/cloud"

[instances]
default_image = "debian-12.qcow2"
default_disk_gb = 4
domain_type = "qemu"
kernel = "$DIR/boot/vmlinuz"
initrd = "$DIR/boot/initrd.img"
kernel_cmdline = "$(cat "$img/cmdline")"
# The image already carries nginx and git, and guests have no mirror to install from.
install_web_packages = false

[[network]]
name = "external"
cidr = "10.77.0.0/24"
first = "10.77.0.10"
last = "10.77.0.99"
gateway = "10.77.0.1"

[[network]]
name = "overlay"
cidr = "10.78.0.0/24"
first = "10.78.0.10"
last = "10.78.0.99"
EOF
    cat >"$DIR/lab.env" <<EOF
LAB_PREFIX=$PREFIX
LAB_DIR=$DIR
LAB_CTL_NETNS=$CTL
LAB_NODE_NETNS="$PREFIX-n1 $PREFIX-n2"
LAB_STORAGE_NETNS=$ST
LAB_STORAGE=$ST_IP:/cloud
LAB_SHARE_DIR=$DIR/st/cloud
LAB_CONFIG=$DIR/kvmfs.toml
LAB_DB_SOCKET=$DIR/db/sock
LAB_GIT_DIR=$DIR/git
LAB_GIT_URL=git://10.77.0.1
LAB_NODE_URIS="kvm1=qemu+tcp://$(node_ip n1)/system kvm2=qemu+tcp://$(node_ip n2)/system"
LAB_POOLS="kvm1=$DIR/n1/pool kvm2=$DIR/n2/pool"
LAB_SHARED_POOL=$DIR/shared
EOF
}

up() {
    local img n start=$SECONDS
    down
    img=$(scripts/lab-image.sh | tail -n1)
    [[ -f $img/complete ]] || die "no guest image"
    for d in "${LIBVIRT_DIRS[@]}"; do
        # Mount points for the nodes' private copies (empty folders where libvirt would
        # have them anyway).
        [[ -d $d ]] || mkdir -p "$d"
    done
    mkdir -p "$DIR/boot"
    cp "$img/vmlinuz" "$img/initrd.img" "$DIR/boot/"
    network
    for n in "${NODES[@]}"; do
        node_config "$n"
    done
    # Once, on the storage node. A copy, not a link: nothing a guest or libvirt does may
    # reach the cache.
    mkdir -p "$DIR/st/cloud"
    cp --sparse=always "$img/debian-12-lab.qcow2" "$DIR/st/cloud/debian-12.qcow2"
    mkdir -p "$DIR/shared"
    cp --sparse=always "$img/debian-12-lab.qcow2" "$DIR/shared/debian-12.qcow2"
    log "image copied ($((SECONDS - start)) s)"
    storage_start
    log "storage node up ($((SECONDS - start)) s)"
    # The daemons start side by side: libvirtd probes QEMU's capabilities for seconds.
    local pids=()
    for n in "${NODES[@]}"; do
        node_start "$n" &
        pids+=($!)
    done
    mariadb_start
    for pid in "${pids[@]}"; do
        wait "$pid" || die "a node did not start"
    done
    log "nodes and MariaDB up ($((SECONDS - start)) s)"
    git_start
    write_config "$img"
    log "lab $PREFIX is up in $((SECONDS - start)) s: nodes kvm1, kvm2, storage $ST_IP:/cloud; config $DIR/kvmfs.toml"
}

status() {
    local ns
    for ns in "$CTL" "${NODES[@]/#/$PREFIX-}" "$ST"; do
        if netns_exists "$ns"; then
            echo "$ns: $(ip netns pids "$ns" | wc -l) processes"
        else
            echo "$ns: absent"
        fi
    done
    if netns_exists "$CTL"; then
        for n in "${NODES[@]}"; do
            echo "--- $n (qemu+tcp://$(node_ip "$n")/system)"
            in_ctl virsh -c "qemu+tcp://$(node_ip "$n")/system" list --all 2>&1 || true
        done
    fi
}

case $CMD in
    up) up ;;
    down) down ;;
    status) status ;;
    exec)
        [[ $# -gt 0 ]] || usage
        netns_exists "$CTL" || die "lab $PREFIX is not up (scripts/lab.sh up)"
        exec nsenter --net="/run/netns/$CTL" "$@"
        ;;
    *) usage ;;
esac
