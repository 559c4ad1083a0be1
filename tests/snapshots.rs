//! Instance snapshots through the kernel (docs/SEMANTICS.md, "Snapshots"), against a real
//! libvirtd serving the test driver, which implements domain snapshots: `mkdir` in
//! `instances/NAME/snapshots/` takes one (seen by `virsh snapshot-list`), `ls` and
//! `info.json` show it, `revert NAME` in `ctl` brings the domain's state back, `rmdir`
//! deletes it; another user may look but not touch; and an instance with snapshots is
//! removed whole by `rmdir` and by `rm -r`. The libvirt backend's snapshot calls are also
//! run on real QEMU (the same daemon's QEMU driver, a TCG guest shaped as kvmfs's).

mod common;

use std::path::Path;
use std::process::Command;

use common::libvirtd::Libvirtd;
use common::rig::{IMAGE, Rig, errno_of};
use common::users::{Op, User, as_user};
use common::*;

const SPEC: &str = r#"{"vcpus":1,"ram_mb":128,"disk_gb":1}"#;

/// The rig's configuration for these tests (polled every 200 ms).
fn config(rig: &Rig) -> String {
    rig.config("refresh_ms = 200", "")
}

fn domstate(rig: &Rig, name: &str) -> String {
    rig.node.virsh(&["domstate", name]).trim().to_string()
}

fn ctl(m: &Mounted, name: &str, cmd: &str) -> std::io::Result<()> {
    std::fs::write(m.path(&format!("instances/{name}/ctl")), cmd)
}

fn built(m: &Mounted, name: &str) {
    std::fs::create_dir(m.path(&format!("instances/{name}"))).unwrap();
    write_spec(m, name, SPEC).unwrap();
    wait_status(m, name, "running");
}

#[test]
fn snapshots_are_taken_listed_reverted_and_deleted_on_a_libvirt_node() {
    let rig = Rig::new();
    let m = Mounted::with_config(&config(&rig));
    wait_online(&m, &["n1"]);
    built(&m, "web1");
    let snaps = m.path("instances/web1/snapshots");
    assert!(list(m.path("instances/web1")).contains(&"snapshots".to_string()));
    assert!(list(&snaps).is_empty());

    std::fs::create_dir(snaps.join("before")).unwrap();
    assert_eq!(list(&snaps), ["before"]);
    assert_eq!(rig.node.snapshots("web1"), ["before"]);
    assert_eq!(list(snaps.join("before")), ["info.json"]);
    let info = read_json(snaps.join("before/info.json"));
    assert_eq!(info["name"], "before");
    assert_eq!(info["instance"], "web1");
    assert_eq!(info["state"], "running");
    assert_eq!(info["current"], true);
    assert!(info["parent"].is_null(), "{info}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let created = info["created_at"].as_i64().unwrap();
    assert!((now - created).abs() < 120, "{info}");
    // `ls -l` shows the time it was taken.
    let mtime = std::fs::metadata(snaps.join("before"))
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert_eq!(mtime, created);

    // Stopped, a second snapshot records that state, with the first as its parent.
    ctl(&m, "web1", "destroy\n").unwrap();
    wait_status(&m, "web1", "shutoff");
    std::fs::create_dir(snaps.join("off")).unwrap();
    let off = read_json(snaps.join("off/info.json"));
    assert_eq!(off["state"], "shutoff");
    assert_eq!(off["parent"], "before");
    assert_eq!(off["current"], true);
    assert_eq!(read_json(snaps.join("before/info.json"))["current"], false);

    // Refusals: a taken name, a bad name, an unknown snapshot to revert to.
    assert_eq!(
        errno_of(std::fs::create_dir(snaps.join("before"))),
        libc::EEXIST
    );
    assert_eq!(
        errno_of(std::fs::create_dir(snaps.join("Bad_Name"))),
        libc::EINVAL
    );
    assert_eq!(errno_of(ctl(&m, "web1", "revert nope\n")), libc::EINVAL);
    assert_eq!(
        read(m.path("instances/web1/error")),
        "instance web1 has no snapshot nope to revert to\n"
    );
    assert_eq!(rig.node.snapshots("web1"), ["before", "off"]);

    // Revert brings the state of the snapshot back.
    ctl(&m, "web1", "revert before\n").unwrap();
    assert!(read(m.path("instances/web1/status")).starts_with("running"));
    assert_eq!(domstate(&rig, "web1"), "running");
    assert_eq!(read_json(snaps.join("before/info.json"))["current"], true);
    ctl(&m, "web1", "revert off\n").unwrap();
    assert!(read(m.path("instances/web1/status")).starts_with("shutoff"));
    assert_eq!(domstate(&rig, "web1"), "shut off");

    // rmdir deletes one.
    std::fs::remove_dir(snaps.join("off")).unwrap();
    assert_eq!(list(&snaps), ["before"]);
    assert_eq!(rig.node.snapshots("web1"), ["before"]);
    assert_eq!(
        errno_of(std::fs::remove_dir(snaps.join("off"))),
        libc::ENOENT
    );
}

#[test]
fn another_user_may_list_snapshots_but_not_take_delete_or_revert_them() {
    let rig = Rig::new();
    let m = Mounted::with_config_args(&config(&rig), &["--allow-other"]);
    wait_online(&m, &["n1"]);
    let (alice, bob) = (User::create("sa"), User::create("sb"));
    let web = m.path("instances/web2");
    assert_eq!(as_user(&alice, Op::Mkdir(&web)), 0);
    assert_eq!(as_user(&alice, Op::Write(&web.join("spec.json"), SPEC)), 0);
    wait_status(&m, "web2", "running");
    let snaps = web.join("snapshots");
    assert_eq!(as_user(&alice, Op::Mkdir(&snaps.join("a1"))), 0);
    assert_eq!(rig.node.snapshots("web2"), ["a1"]);

    assert_eq!(as_user(&bob, Op::List(&snaps)), 0);
    assert_eq!(as_user(&bob, Op::Read(&snaps.join("a1/info.json"))), 0);
    assert_eq!(as_user(&bob, Op::Mkdir(&snaps.join("b1"))), libc::EACCES);
    assert_eq!(as_user(&bob, Op::Rmdir(&snaps.join("a1"))), libc::EACCES);
    assert_eq!(
        as_user(&bob, Op::Write(&web.join("ctl"), "revert a1\n")),
        libc::EACCES
    );
    assert_eq!(rig.node.snapshots("web2"), ["a1"]);
    // Alice may do all three.
    assert_eq!(
        as_user(&alice, Op::Write(&web.join("ctl"), "revert a1\n")),
        0
    );
    assert_eq!(as_user(&alice, Op::Rmdir(&snaps.join("a1"))), 0);
    assert!(rig.node.snapshots("web2").is_empty());
}

#[test]
fn an_instance_with_snapshots_is_removed_whole_by_rmdir_and_by_rm_r() {
    let rig = Rig::new();
    let m = Mounted::with_config(&config(&rig));
    wait_online(&m, &["n1"]);
    for name in ["gone1", "gone2"] {
        built(&m, name);
        let snaps = m.path(&format!("instances/{name}/snapshots"));
        std::fs::create_dir(snaps.join("s1")).unwrap();
        // Stopped with snapshots: libvirt refuses a plain undefine of such a domain.
        ctl(&m, name, "destroy\n").unwrap();
        wait_status(&m, name, "shutoff");
        std::fs::create_dir(snaps.join("s2")).unwrap();
        assert_eq!(rig.node.snapshots(name), ["s1", "s2"]);
    }
    std::fs::remove_dir(m.path("instances/gone1")).unwrap();
    assert!(
        rig.leftovers("gone1").is_empty(),
        "{:?}",
        rig.leftovers("gone1")
    );
    assert!(!Path::new(&m.path("instances/gone1")).exists());

    run_ok(Command::new("rm").arg("-r").arg(m.path("instances/gone2")));
    assert!(
        rig.leftovers("gone2").is_empty(),
        "{:?}",
        rig.leftovers("gone2")
    );
    assert!(!list(m.path("instances")).contains(&"gone2".to_string()));

    // The names are free again, and the new instances have no snapshots.
    built(&m, "gone1");
    assert!(list(m.path("instances/gone1/snapshots")).is_empty());
    assert!(rig.node.snapshots("gone1").is_empty());
}

/// The libvirt backend on real QEMU (the QEMU driver of the same daemon, a TCG guest with a
/// qcow2 disk and no network, booting nothing): internal snapshots of a running and of a
/// stopped domain, revert to each brings its state back, delete, and removing a stopped
/// domain that has snapshots (libvirt refuses a plain undefine of one).
#[test]
fn the_libvirt_backend_takes_reverts_and_deletes_snapshots_on_real_qemu() {
    use kvmfs::hv::libvirt::LibvirtNode;
    use kvmfs::hv::{DomainOp, DomainState, NodeBackend};

    let node = Libvirtd::start(IMAGE);
    let uri = format!(
        "qemu+unix:///system?socket={}",
        node.dir.path().join("libvirt-sock").display()
    );
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("snapq.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("64M")
        .status()
        .unwrap();
    assert!(st.success());
    // A NoCloud-like seed as a raw cdrom, as kvmfs attaches one: read-only, left out of
    // internal snapshots.
    std::fs::write(dir.path().join("meta-data"), "instance-id: snapq\n").unwrap();
    let seed = dir.path().join("seed.iso");
    let st = Command::new("genisoimage")
        .args(["-quiet", "-volid", "cidata", "-o"])
        .arg(&seed)
        .arg(dir.path().join("meta-data"))
        .status()
        .unwrap();
    assert!(st.success());
    let xml = format!(
        "<domain type='qemu'><name>snapq</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <metadata><kvmfs:instance xmlns:kvmfs='{}' owner='0'/></metadata>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os>\
         <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{}'/><target dev='vda' bus='virtio'/></disk>\
         <disk type='file' device='cdrom'><driver name='qemu' type='raw'/>\
         <source file='{}'/><target dev='hdc' bus='ide'/><readonly/></disk>\
         <memballoon model='none'/></devices></domain>",
        kvmfs::hv::xml::METADATA_NS,
        disk.display(),
        seed.display()
    );
    kvmfs::hv::libvirt::quiet_libvirt_errors();
    let n = LibvirtNode::new("q", &uri, "none");
    n.define_and_start(&xml).unwrap();
    let state = |n: &LibvirtNode| {
        n.probe_named(&["snapq".into()]).unwrap()[0]
            .1
            .as_ref()
            .map(|d| (d.state, d.snapshots.len()))
    };
    assert_eq!(state(&n), Some((DomainState::Running, 0)));

    n.create_snapshot("snapq", "up").unwrap();
    n.domain_op("snapq", DomainOp::Destroy).unwrap();
    n.create_snapshot("snapq", "down").unwrap();
    let l = n.list_snapshots("snapq").unwrap();
    let names: Vec<(&str, DomainState, bool)> = l
        .iter()
        .map(|s| (s.name.as_str(), s.state, s.current))
        .collect();
    assert_eq!(
        names,
        [
            ("down", DomainState::Shutoff, true),
            ("up", DomainState::Running, false)
        ]
    );
    assert_eq!(l[0].parent.as_deref(), Some("up"));
    assert_eq!(state(&n), Some((DomainState::Shutoff, 2)));

    n.revert_snapshot("snapq", "up").unwrap();
    assert_eq!(state(&n), Some((DomainState::Running, 2)));
    n.revert_snapshot("snapq", "down").unwrap();
    assert_eq!(state(&n), Some((DomainState::Shutoff, 2)));
    assert!(n.delete_snapshot("snapq", "down").unwrap());
    assert_eq!(state(&n), Some((DomainState::Shutoff, 1)));

    // Stopped, with a snapshot left: removed whole.
    assert!(n.remove_domain("snapq").unwrap());
    assert!(
        !node
            .virsh(&["-c", &uri, "list", "--all", "--name"])
            .contains("snapq")
    );
}

/// A domain whose disk is a network disk (`<disk type='network'>`, here NFS; the test driver
/// reaches nothing) is snapshotted while it runs, as libvirt does on QEMU (savevm); shut off,
/// taking and deleting are refused with EOPNOTSUPP and the reason in `error`, before libvirt
/// is asked, and a revert to a snapshot taken running starts it again.
#[test]
fn a_network_disk_is_snapshotted_running_and_refused_shut_off() {
    let rig = Rig::new();
    let m = Mounted::with_config(&config(&rig));
    wait_online(&m, &["n1"]);
    built(&m, "nfs1");
    // Its definition changed behind kvmfs's back, as a domain on shared NFS storage has it;
    // the device list is read again when the domain starts.
    ctl(&m, "nfs1", "destroy\n").unwrap();
    wait_status(&m, "nfs1", "shutoff");
    let xml = rig.node.virsh(&["dumpxml", "nfs1"]);
    let start = xml.find("<disk type='file' device='disk'>").unwrap();
    let end = start + xml[start..].find("</disk>").unwrap() + "</disk>".len();
    let net = "<disk type='network' device='disk'><driver name='qemu' type='qcow2'/>\
               <source protocol='nfs' name='/cloud/nfs1.qcow2'><host name='127.0.0.1'/>\
               <identity user='root' group='root'/></source>\
               <target dev='vda' bus='virtio'/></disk>";
    let changed = format!("{}{net}{}", &xml[..start], &xml[end..]);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), changed).unwrap();
    rig.node.virsh(&["define", file.path().to_str().unwrap()]);
    ctl(&m, "nfs1", "start\n").unwrap();
    wait_status(&m, "nfs1", "running");

    std::fs::create_dir(m.path("instances/nfs1/snapshots/s1")).unwrap();
    assert_eq!(rig.node.snapshots("nfs1"), ["s1"]);

    ctl(&m, "nfs1", "destroy\n").unwrap();
    wait_status(&m, "nfs1", "shutoff");
    let r = std::fs::create_dir(m.path("instances/nfs1/snapshots/s2"));
    assert_eq!(errno_of(r), libc::EOPNOTSUPP);
    let err = read(m.path("instances/nfs1/error"));
    assert!(
        err.starts_with(
            "instance nfs1 is shutoff and its disk vda is a network disk (nfs on 127.0.0.1)"
        ) && err.contains("start it first"),
        "{err}"
    );
    let r = std::fs::remove_dir(m.path("instances/nfs1/snapshots/s1"));
    assert_eq!(errno_of(r), libc::EOPNOTSUPP);
    assert_eq!(rig.node.snapshots("nfs1"), ["s1"]);
    assert_eq!(list(m.path("instances/nfs1/snapshots")), ["s1"]);

    ctl(&m, "nfs1", "revert s1\n").unwrap();
    wait_status(&m, "nfs1", "running");
    std::fs::remove_dir(m.path("instances/nfs1/snapshots/s1")).unwrap();
    assert!(rig.node.snapshots("nfs1").is_empty());
    assert!(list(m.path("instances/nfs1/snapshots")).is_empty());
}
