//! What the tree shows: the listings of `/`, `/nodes`, `/instances`, `/networks`, `/images`
//! and `/flavors`; the files of managed and unmanaged instances; sizes that match what a
//! read returns; modes and owners; status lines through an instance's life; the numbers of a
//! node's `info.json`; `/status`; the symlinks under `nodes/<n>/instances`; and how names
//! shared by domains on several nodes are shown. Each test asserts what docs/SEMANTICS.md
//! promises ("Paths", "Instances", "Status lines", "info.json", "Sizes, times, caching",
//! "Ownership and permissions").

use std::time::Duration;

use crate::hv::DomainState;
use crate::hv::mem::Call;
use crate::testing::Rig;
use crate::tree::{Attr, EntryKind, TreeError};

const SPEC: &str = r#"{"vcpus":1,"ram_mb":512,"disk_gb":1}"#;
const USER: u32 = 1000;

/// A directory's listing as `readdir` gives it, `.` and `..` included.
fn listing(rig: &Rig, path: &str) -> Vec<String> {
    let fh = rig.tree.opendir(rig.ino(path).unwrap()).unwrap();
    let names = rig
        .tree
        .dir_entries(fh)
        .unwrap()
        .iter()
        .map(|e| e.name.clone())
        .collect();
    rig.tree.release(fh);
    names
}

/// `.`, `..` and `names`, as a listing should read.
fn dots(names: &[&str]) -> Vec<String> {
    [".", ".."]
        .iter()
        .chain(names)
        .map(|s| s.to_string())
        .collect()
}

fn attr(rig: &Rig, path: &str) -> Attr {
    rig.tree.getattr(rig.ino(path).unwrap()).unwrap()
}

fn json(rig: &Rig, path: &str) -> serde_json::Value {
    let text = rig.read(path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

fn online(rig: &Rig, node: &str) -> bool {
    rig.cluster.view().nodes.get(node).is_some_and(|n| n.online)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_lists_its_folders_and_status() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    assert_eq!(
        listing(&rig, ""),
        dots(&[
            "flavors",
            "images",
            "instances",
            "metrics",
            "networks",
            "nodes",
            "status"
        ])
    );
    for d in ["", "nodes", "networks", "images", "flavors", "metrics"] {
        let a = attr(&rig, d);
        assert_eq!((a.kind, a.perm), (EntryKind::Dir, 0o555), "/{d}");
    }
    let a = attr(&rig, "instances");
    assert_eq!((a.kind, a.perm), (EntryKind::Dir, 0o777));
    let a = attr(&rig, "status");
    assert_eq!((a.kind, a.perm), (EntryKind::File, 0o444));
    assert_eq!(rig.read("status").unwrap(), "ok\n");
    assert_eq!(rig.ino("nothing"), Err(TreeError::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_listed_by_name_with_their_files() {
    let rig = Rig::new(
        &[("kvm2", 4, 8192), ("kvm10", 4, 8192), ("kvm1", 4, 8192)],
        "",
    )
    .await;
    assert_eq!(listing(&rig, "nodes"), dots(&["kvm1", "kvm10", "kvm2"]));
    let mut files = listing(&rig, "nodes/kvm1");
    files.sort();
    assert_eq!(files, dots(&["ctl", "info.json", "instances", "status"]));
    assert_eq!(listing(&rig, "nodes/kvm1/instances"), dots(&[]));
    assert_eq!(rig.read("nodes/kvm1/ctl").unwrap(), "drain undrain\n");
    let ctl = attr(&rig, "nodes/kvm1/ctl");
    assert_eq!((ctl.perm, ctl.uid), (0o644, 0), "root writes a node's ctl");
    assert_eq!(rig.read("nodes/kvm1/status").unwrap(), "online\n");
    let info = json(&rig, "nodes/kvm10/info.json");
    assert_eq!(info["name"], "kvm10");
    assert_eq!(info["uri"], "mem://kvm10");
    assert_eq!(info["status"], "online");
    assert_eq!(info["online"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_listed_by_name_managed_and_unmanaged_alike() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    for n in ["web2", "app", "web10"] {
        rig.mkdir(n, USER).await.unwrap();
    }
    rig.node("n1").add_foreign_domain("db", 1, 512, true);
    rig.wait_for("the foreign domain", |r| r.status("db").is_some())
        .await;
    assert_eq!(
        listing(&rig, "instances"),
        dots(&["app", "db", "web10", "web2"])
    );
    let a = attr(&rig, "instances/web2");
    assert_eq!((a.kind, a.perm), (EntryKind::Dir, 0o755));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_images_and_flavors_are_listed_by_name() {
    let rig = Rig::new(&[("n1", 4, 8192), ("n2", 4, 8192)], "").await;
    rig.node("n2").add_network("lab", true);
    rig.node("n2").add_network("overlay", false);
    rig.node("n2").add_volume("alpine-3.qcow2", 1 << 30);
    rig.wait_for("lab, overlay and alpine", |r| {
        let v = r.cluster.view();
        v.networks.contains_key("lab")
            && v.networks["overlay"].status() != "active"
            && v.images.contains_key("alpine-3.qcow2")
    })
    .await;
    assert_eq!(
        listing(&rig, "networks"),
        dots(&["default", "lab", "overlay"])
    );
    assert_eq!(
        listing(&rig, "networks/default"),
        dots(&["info.json", "status"])
    );
    assert_eq!(rig.read("networks/default/status").unwrap(), "active\n");
    assert_eq!(
        rig.read("networks/overlay/status").unwrap(),
        "partial: inactive on n2\n"
    );
    assert_eq!(rig.read("networks/lab/status").unwrap(), "active\n");
    let lab = json(&rig, "networks/lab/info.json");
    assert_eq!(lab["nodes"].as_array().unwrap().len(), 1);
    assert_eq!(lab["nodes"][0]["node"], "n2");

    assert_eq!(
        listing(&rig, "images"),
        dots(&["alpine-3.qcow2", "debian-12.qcow2"])
    );
    let mut files = listing(&rig, "images/alpine-3.qcow2");
    files.sort();
    assert_eq!(files, dots(&["info.json", "nodes", "size"]));
    assert_eq!(rig.read("images/alpine-3.qcow2/nodes").unwrap(), "n2\n");
    assert_eq!(
        rig.read("images/debian-12.qcow2/nodes").unwrap(),
        "n1\nn2\n"
    );
    assert_eq!(
        rig.read("images/alpine-3.qcow2/size").unwrap(),
        format!("{}\n", 1u64 << 30)
    );

    assert_eq!(
        listing(&rig, "flavors"),
        dots(&["m1.large", "m1.medium", "m1.small"])
    );
    let mut files = listing(&rig, "flavors/m1.medium");
    files.sort();
    assert_eq!(files, dots(&["info.json", "ram_mb", "vcpus"]));
    assert_eq!(rig.read("flavors/m1.medium/vcpus").unwrap(), "2\n");
    assert_eq!(rig.read("flavors/m1.medium/ram_mb").unwrap(), "2048\n");
    let info = json(&rig, "flavors/m1.large/info.json");
    assert_eq!(info["name"], "m1.large");
    assert_eq!(info["vcpus"], 4);
    assert_eq!(info["ram_mb"], 8192);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_instance_has_its_files_and_ssh_key_once_built() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    rig.mkdir("web1", USER).await.unwrap();
    assert_eq!(
        listing(&rig, "instances/web1"),
        dots(&[
            "ctl",
            "error",
            "info.json",
            "ip",
            "node",
            "snapshots",
            "spec.json",
            "status"
        ])
    );
    assert_eq!(rig.ino("instances/web1/ssh_key"), Err(TreeError::NotFound));
    assert_eq!(rig.read("instances/web1/spec.json").unwrap(), "");
    assert_eq!(rig.read("instances/web1/node").unwrap(), "");
    assert_eq!(rig.read("instances/web1/ip").unwrap(), "");
    assert_eq!(rig.read("instances/web1/error").unwrap(), "");
    assert_eq!(
        rig.read("instances/web1/ctl").unwrap(),
        "start stop destroy reboot revert NAME\n"
    );
    rig.write("instances/web1/spec.json", USER, SPEC)
        .await
        .unwrap();
    rig.wait_status("web1", "running").await;
    assert_eq!(
        listing(&rig, "instances/web1"),
        dots(&[
            "ctl",
            "error",
            "info.json",
            "ip",
            "node",
            "snapshots",
            "spec.json",
            "ssh_key",
            "status"
        ])
    );
    assert_eq!(rig.read("instances/web1/spec.json").unwrap(), SPEC);
    assert_eq!(rig.read("instances/web1/node").unwrap(), "n1\n");
    assert_eq!(rig.read("instances/web1/ip").unwrap(), "192.168.122.10\n");
    let info = json(&rig, "instances/web1/info.json");
    assert_eq!(info["managed"], true);
    assert_eq!(info["node"], "n1");
    assert_eq!(info["status"], "running");
    assert_eq!(info["vcpus"], 1);
    assert_eq!(info["ram_mb"], 512);
    assert_eq!(info["owner_uid"], USER);
    assert_eq!(info["addresses"], serde_json::json!(["192.168.122.10"]));
    // Keys appear in alphabetical order, and the private key is never among them.
    let text = rig.read("instances/web1/info.json").unwrap();
    assert!(!text.contains("PRIVATE KEY"));
    let keys: Vec<&String> = info.as_object().unwrap().keys().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    let at = |k: &str| text.find(&format!("\"{k}\"")).unwrap();
    assert!(at("addresses") < at("disks") && at("disks") < at("vcpus"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmanaged_instance_has_only_info_ip_node_and_status() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    rig.node("n1").add_foreign_domain("legacy", 2, 1024, true);
    rig.wait_for("the foreign domain", |r| r.status("legacy").is_some())
        .await;
    assert_eq!(
        listing(&rig, "instances/legacy"),
        dots(&["info.json", "ip", "node", "status"])
    );
    for f in ["ctl", "error", "spec.json", "ssh_key"] {
        assert_eq!(
            rig.ino(&format!("instances/legacy/{f}")),
            Err(TreeError::NotFound),
            "{f}"
        );
    }
    assert_eq!(rig.read("instances/legacy/ip").unwrap(), "");
    assert_eq!(rig.read("instances/legacy/node").unwrap(), "n1\n");
    assert_eq!(rig.read("instances/legacy/status").unwrap(), "running\n");
    let info = json(&rig, "instances/legacy/info.json");
    assert_eq!(info["managed"], false);
    assert_eq!(info["vcpus"], 2);
    assert_eq!(info["ram_mb"], 1024);
    assert_eq!(info["owner_uid"], serde_json::Value::Null);
    assert_eq!(info["image"], serde_json::Value::Null);
    // Owned by the mount's owner, not by anyone who made it.
    let a = attr(&rig, "instances/legacy");
    assert_eq!((a.perm, a.uid), (0o755, 0));
    assert_eq!(attr(&rig, "instances/legacy/status").perm, 0o444);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_files_size_is_what_a_read_returns() {
    let rig = Rig::new(&[("n1", 4, 8192), ("n2", 4, 8192)], "").await;
    rig.create("web1", USER, SPEC).await.unwrap();
    rig.mkdir("draft1", USER).await.unwrap();
    rig.node("n2").add_foreign_domain("legacy", 1, 256, true);
    rig.wait_status("web1", "running").await;
    rig.wait_for("the foreign domain", |r| r.status("legacy").is_some())
        .await;
    let mut paths = vec!["status".to_string()];
    for dir in [
        "instances/web1",
        "instances/draft1",
        "instances/legacy",
        "nodes/n1",
        "nodes/n2",
        "networks/default",
        "images/debian-12.qcow2",
        "flavors/m1.small",
    ] {
        for f in listing(&rig, dir) {
            if f != "." && f != ".." && f != "instances" && f != "snapshots" {
                paths.push(format!("{dir}/{f}"));
            }
        }
    }
    // Including the empty ones and the private key.
    assert!(paths.contains(&"instances/web1/ssh_key".to_string()));
    assert!(paths.contains(&"instances/draft1/spec.json".to_string()));
    let mut nonempty = 0;
    for p in &paths {
        let a = attr(&rig, p);
        assert_eq!(a.kind, EntryKind::File, "{p}");
        let text = rig.read(p).unwrap();
        assert_eq!(a.size, text.len() as u64, "{p}: {text:?}");
        nonempty += usize::from(!text.is_empty());
    }
    assert!(
        nonempty > 20,
        "{nonempty} of {} files had content",
        paths.len()
    );
    // Folders are 0 bytes; a symlink's size is its target's length.
    assert_eq!(attr(&rig, "instances/web1").size, 0);
    let link = attr(&rig, "nodes/n1/instances/web1");
    assert_eq!(link.size, "../../../instances/web1".len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modes_and_owners_follow_the_instances_state() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    rig.mkdir("web1", USER).await.unwrap();
    let folder = attr(&rig, "instances/web1");
    assert_eq!((folder.perm, folder.uid), (0o755, USER));
    let spec = attr(&rig, "instances/web1/spec.json");
    assert_eq!((spec.perm, spec.uid), (0o644, USER));
    assert_eq!(attr(&rig, "instances/web1/ctl").perm, 0o644);
    // `node` takes the node it should move to.
    assert_eq!(attr(&rig, "instances/web1/node").perm, 0o644);
    for f in ["status", "error", "info.json", "ip"] {
        let a = attr(&rig, &format!("instances/web1/{f}"));
        assert_eq!((a.perm, a.uid), (0o444, USER), "{f}");
    }
    // Committed: spec.json is read-only, ssh_key private to its owner.
    rig.write("instances/web1/spec.json", USER, SPEC)
        .await
        .unwrap();
    assert_eq!(attr(&rig, "instances/web1/spec.json").perm, 0o444);
    rig.wait_status("web1", "running").await;
    assert_eq!(attr(&rig, "instances/web1/spec.json").perm, 0o444);
    let key = attr(&rig, "instances/web1/ssh_key");
    assert_eq!((key.perm, key.uid), (0o600, USER));
    assert_eq!(attr(&rig, "instances/web1/ctl").perm, 0o644);
    // The mount's own folders and links belong to the mount's owner.
    let link = attr(&rig, "nodes/n1/instances/web1");
    assert_eq!(
        (link.kind, link.perm, link.uid),
        (EntryKind::Symlink, 0o777, 0)
    );
    let node = attr(&rig, "nodes/n1");
    assert_eq!((node.perm, node.uid), (0o555, 0));
    // A failed build: spec.json is writable again.
    rig.node("n1").fail_nth(Call::DefineAndStart, 1);
    rig.create("web2", USER, SPEC).await.unwrap();
    rig.wait_status("web2", "failed").await;
    assert_eq!(attr(&rig, "instances/web2/spec.json").perm, 0o644);
    assert_eq!(attr(&rig, "instances/web2").uid, USER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lines_through_an_instances_life() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    let n1 = rig.node("n1");
    rig.mkdir("web1", USER).await.unwrap();
    assert_eq!(
        rig.read("instances/web1/status").unwrap(),
        "draft: waiting for spec.json\n"
    );
    // A slow node keeps the build going long enough to be seen.
    n1.set_delay(Duration::from_millis(300));
    rig.write("instances/web1/spec.json", USER, SPEC)
        .await
        .unwrap();
    let building = rig.read("instances/web1/status").unwrap();
    assert!(building.starts_with("building: "), "{building}");
    assert_eq!(rig.read("instances/web1/node").unwrap(), "n1\n");
    n1.set_delay(Duration::ZERO);
    rig.wait_status("web1", "running").await;
    assert_eq!(rig.read("instances/web1/status").unwrap(), "running\n");
    // The guest powers itself off.
    n1.set_domain_state("web1", DomainState::Shutoff);
    rig.wait_status("web1", "shutoff").await;
    assert_eq!(rig.read("instances/web1/status").unwrap(), "shutoff\n");
    let info = json(&rig, "instances/web1/info.json");
    assert_eq!(info["state"], "shutoff");
    // A failed build.
    n1.fail_nth(Call::DefineAndStart, 1);
    rig.create("web2", USER, SPEC).await.unwrap();
    rig.wait_status("web2", "failed: ").await;
    let failed = rig.read("instances/web2/status").unwrap();
    assert!(
        failed.contains("DefineAndStart failed (injected)"),
        "{failed}"
    );
    let error = rig.read("instances/web2/error").unwrap();
    assert_eq!(failed, format!("failed: {error}"));
    assert_eq!(rig.read("instances/web2/node").unwrap(), "");
    assert_eq!(rig.read("instances/web2/ip").unwrap(), "");
    assert_eq!(rig.ino("instances/web2/ssh_key"), Err(TreeError::NotFound));
    // The node goes away: what was on it is unknown.
    n1.add_foreign_domain("legacy", 1, 256, true);
    rig.wait_for("the foreign domain", |r| r.status("legacy").is_some())
        .await;
    n1.set_down(true);
    rig.wait_status("web1", "unknown").await;
    assert_eq!(
        rig.read("instances/web1/status").unwrap(),
        "unknown: node n1 is offline\n"
    );
    assert_eq!(
        rig.read("instances/legacy/status").unwrap(),
        "unknown: node n1 is offline\n"
    );
    // Drafts and failed instances have no node to lose.
    assert!(
        rig.read("instances/web2/status")
            .unwrap()
            .starts_with("failed: ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_info_json_counts_what_its_instances_hold() {
    let rig = Rig::new(&[("n1", 4, 8192), ("n2", 4, 8192)], "").await;
    let before = json(&rig, "nodes/n1/info.json");
    assert_eq!(before["committed_vcpus"], 0);
    assert_eq!(before["score"], 1.0);
    rig.create(
        "a",
        USER,
        r#"{"vcpus":1,"ram_mb":512,"node":"n1","disk_gb":1}"#,
    )
    .await
    .unwrap();
    rig.create(
        "b",
        USER,
        r#"{"vcpus":2,"ram_mb":2048,"node":"n1","disk_gb":1}"#,
    )
    .await
    .unwrap();
    // A draft holds nothing.
    rig.mkdir("c", USER).await.unwrap();
    rig.wait_status("a", "running").await;
    rig.wait_status("b", "running").await;
    let info = json(&rig, "nodes/n1/info.json");
    assert_eq!(info["status"], "online");
    assert_eq!(info["online"], true);
    assert_eq!(info["cpus"], 4);
    assert_eq!(info["memory_total_mb"], 8192);
    assert_eq!(info["committed_vcpus"], 3);
    assert_eq!(info["committed_ram_mb"], 2560);
    assert_eq!(info["capacity_vcpus"], 16);
    assert_eq!(info["capacity_ram_mb"], 8192);
    assert_eq!(info["instances"], 2);
    assert_eq!(info["active_instances"], 2);
    assert_eq!(info["free_cpu_share"], 0.8125);
    assert_eq!(info["free_ram_share"], 0.6875);
    // 0.7 × 0.8125 + 0.3 × 0.6875
    assert_eq!(info["score"], 0.775);
    assert_eq!(info["memory_source"], "committed");
    assert_eq!(info["memory_free_mb"], 8192 - 2560);
    assert_eq!(info["memory_used_mb"], 2560);
    let pool = info["pool_volumes"].as_array().unwrap();
    assert!(pool.contains(&"a.disk.qcow2".into()), "{pool:?}");
    assert!(pool.contains(&"debian-12.qcow2".into()), "{pool:?}");
    // A stopped instance still holds its room, but is not active.
    rig.node("n1").set_domain_state("a", DomainState::Shutoff);
    rig.wait_status("a", "shutoff").await;
    let info = json(&rig, "nodes/n1/info.json");
    assert_eq!(info["committed_vcpus"], 3);
    assert_eq!(info["active_instances"], 1);
    // The other node is untouched.
    let other = json(&rig, "nodes/n2/info.json");
    assert_eq!(other["committed_vcpus"], 0);
    assert_eq!(other["instances"], 0);
    assert_eq!(other["score"], 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_degraded_while_a_node_is_down() {
    let rig = Rig::new(&[("n1", 4, 8192), ("n2", 4, 8192), ("n3", 4, 8192)], "").await;
    assert_eq!(rig.read("status").unwrap(), "ok\n");
    rig.node("n2").set_down(true);
    rig.wait_for("n2 offline", |r| !online(r, "n2")).await;
    assert_eq!(
        rig.read("status").unwrap(),
        "degraded: 1 of 3 nodes offline (n2)\n"
    );
    assert_eq!(
        rig.read("nodes/n2/status").unwrap(),
        "offline: node n2: cannot connect to mem://n2: the node is down\n"
    );
    let info = json(&rig, "nodes/n2/info.json");
    assert_eq!(info["online"], false);
    assert_eq!(info["score"], 0.0);
    assert_eq!(
        info["last_error"],
        "node n2: cannot connect to mem://n2: the node is down"
    );
    // Its last numbers stay.
    assert_eq!(info["cpus"], 4);
    rig.node("n3").set_down(true);
    rig.wait_for("n3 offline", |r| !online(r, "n3")).await;
    assert_eq!(
        rig.read("status").unwrap(),
        "degraded: 2 of 3 nodes offline (n2, n3)\n"
    );
    rig.node("n2").set_down(false);
    rig.node("n3").set_down(false);
    rig.wait_for("n2, n3 back", |r| online(r, "n2") && online(r, "n3"))
        .await;
    assert_eq!(rig.read("status").unwrap(), "ok\n");
    assert_eq!(rig.read("nodes/n2/status").unwrap(), "online\n");
    // The last error is kept after the node is back.
    let info = json(&rig, "nodes/n2/info.json");
    assert_eq!(
        info["last_error"],
        "node n2: cannot connect to mem://n2: the node is down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_list_their_instances_as_symlinks_to_the_folders() {
    let rig = Rig::new(&[("n1", 4, 8192), ("n2", 4, 8192)], "").await;
    rig.create("zed", USER, r#"{"node":"n1","disk_gb":1}"#)
        .await
        .unwrap();
    rig.create("abe", USER, r#"{"node":"n1","disk_gb":1}"#)
        .await
        .unwrap();
    rig.create("mid", USER, r#"{"node":"n2","disk_gb":1}"#)
        .await
        .unwrap();
    rig.mkdir("draft", USER).await.unwrap();
    rig.node("n2").add_foreign_domain("legacy", 1, 256, false);
    rig.wait_for("the foreign domain", |r| r.status("legacy").is_some())
        .await;
    assert_eq!(listing(&rig, "nodes/n1/instances"), dots(&["abe", "zed"]));
    assert_eq!(
        listing(&rig, "nodes/n2/instances"),
        dots(&["legacy", "mid"])
    );
    let ino = rig.ino("nodes/n1/instances/zed").unwrap();
    let a = rig.tree.getattr(ino).unwrap();
    assert_eq!((a.kind, a.perm), (EntryKind::Symlink, 0o777));
    assert_eq!(
        rig.tree.readlink(ino).unwrap(),
        b"../../../instances/zed".to_vec()
    );
    assert_eq!(
        rig.tree
            .readlink(rig.ino("nodes/n2/instances/legacy").unwrap())
            .unwrap(),
        b"../../../instances/legacy".to_vec()
    );
    // Not listed under another node, and a file is no symlink.
    assert_eq!(rig.ino("nodes/n2/instances/zed"), Err(TreeError::NotFound));
    assert_eq!(
        rig.tree.readlink(rig.ino("instances/zed/status").unwrap()),
        Err(TreeError::NotSymlink)
    );
    // Deleted: the link goes with it.
    rig.rmdir("zed", USER).await.unwrap();
    assert_eq!(listing(&rig, "nodes/n1/instances"), dots(&["abe"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_pool_volumes_but_not_instances_own_volumes() {
    let rig = Rig::new(&[("n1", 4, 8192), ("n2", 4, 8192)], "").await;
    rig.node("n2").add_volume("centos-7.qcow2", 3 << 30);
    rig.wait_for("centos", |r| {
        r.cluster.view().images.contains_key("centos-7.qcow2")
    })
    .await;
    rig.create("web1", USER, r#"{"node":"n1","disk_gb":1}"#)
        .await
        .unwrap();
    rig.wait_status("web1", "running").await;
    let pool = json(&rig, "nodes/n1/info.json")["pool_volumes"].clone();
    assert_eq!(
        pool,
        serde_json::json!(["debian-12.qcow2", "web1.disk.qcow2", "web1.seed.iso"])
    );
    assert_eq!(
        listing(&rig, "images"),
        dots(&["centos-7.qcow2", "debian-12.qcow2"])
    );
    assert_eq!(rig.ino("images/web1.disk.qcow2"), Err(TreeError::NotFound));
    let info = json(&rig, "images/centos-7.qcow2/info.json");
    assert_eq!(info["name"], "centos-7.qcow2");
    assert_eq!(info["storage"], "node");
    assert_eq!(info["size_bytes"], 3u64 << 30);
    assert_eq!(info["size_gb"], 3.0);
    assert_eq!(info["nodes"][0]["node"], "n2");
    assert_eq!(info["nodes"][0]["path"], "/mem/n2/centos-7.qcow2");
    assert_eq!(
        rig.read("images/centos-7.qcow2/size").unwrap(),
        format!("{}\n", 3u64 << 30)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_taken_on_an_earlier_node_is_shown_as_name_at_node() {
    // Configuration order kvm2, kvm1: kvm2's domain keeps the plain name.
    let rig = Rig::new(&[("kvm2", 4, 8192), ("kvm1", 4, 8192)], "").await;
    rig.node("kvm1").add_foreign_domain("web", 1, 256, true);
    rig.node("kvm2").add_foreign_domain("web", 2, 512, false);
    rig.create("db", USER, r#"{"node":"kvm1","disk_gb":1}"#)
        .await
        .unwrap();
    rig.wait_status("db", "running").await;
    // A domain named like a managed instance, on another node than its row's.
    rig.node("kvm2").add_foreign_domain("db", 1, 256, true);
    rig.wait_for("web@kvm1 and db@kvm2", |r| {
        r.status("web@kvm1").is_some() && r.status("db@kvm2").is_some()
    })
    .await;
    assert_eq!(
        listing(&rig, "instances"),
        dots(&["db", "db@kvm2", "web", "web@kvm1"])
    );
    assert_eq!(rig.read("instances/web/node").unwrap(), "kvm2\n");
    assert_eq!(rig.read("instances/web/status").unwrap(), "shutoff\n");
    assert_eq!(rig.read("instances/web@kvm1/node").unwrap(), "kvm1\n");
    assert_eq!(rig.read("instances/web@kvm1/status").unwrap(), "running\n");
    let info = json(&rig, "instances/web@kvm1/info.json");
    assert_eq!(info["name"], "web@kvm1");
    assert_eq!(info["vcpus"], 1);
    assert_eq!(rig.read("instances/db/node").unwrap(), "kvm1\n");
    assert_eq!(rig.read("instances/db/status").unwrap(), "running\n");
    assert_eq!(rig.read("instances/db@kvm2/node").unwrap(), "kvm2\n");
    assert_eq!(
        listing(&rig, "instances/db@kvm2"),
        dots(&["info.json", "ip", "node", "status"])
    );
    assert_eq!(
        listing(&rig, "nodes/kvm1/instances"),
        dots(&["db", "web@kvm1"])
    );
    assert_eq!(
        listing(&rig, "nodes/kvm2/instances"),
        dots(&["db@kvm2", "web"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_whose_name_cannot_be_a_file_name_gets_its_node_appended_or_is_left_out() {
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    rig.node("n1").add_foreign_domain("..", 1, 256, true);
    rig.node("n1").add_foreign_domain("a/b", 1, 256, true);
    rig.node("n1").add_foreign_domain("plain", 1, 256, true);
    rig.wait_for("the foreign domains", |r| {
        r.status("plain").is_some() && r.status("..@n1").is_some()
    })
    .await;
    assert_eq!(listing(&rig, "instances"), dots(&["..@n1", "plain"]));
    assert_eq!(rig.read("instances/..@n1/node").unwrap(), "n1\n");
    assert_eq!(
        listing(&rig, "nodes/n1/instances"),
        dots(&["..@n1", "plain"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_built_instance_whose_domain_vanished_reads_missing() {
    use crate::hv::NodeBackend;
    let rig = Rig::new(&[("n1", 4, 8192)], "").await;
    rig.create("web1", USER, SPEC).await.unwrap();
    rig.wait_status("web1", "running").await;
    // Undefined behind kvmfs's back.
    rig.node("n1").remove_domain("web1").unwrap();
    rig.wait_status("web1", "missing").await;
    assert_eq!(
        rig.read("instances/web1/status").unwrap(),
        "missing: no domain on node n1\n"
    );
    // Still managed: all its files, still on its node.
    assert_eq!(rig.read("instances/web1/node").unwrap(), "n1\n");
    assert!(listing(&rig, "instances/web1").contains(&"ssh_key".to_string()));
    assert_eq!(listing(&rig, "nodes/n1/instances"), dots(&["web1"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_read_only_files_rendered_from_the_view() {
    let rig = Rig::new(&[("n1", 4, 8192), ("n2", 2, 4096)], "").await;
    rig.create("web", USER, SPEC).await.unwrap();
    rig.wait_status("web", "running").await;
    assert_eq!(listing(&rig, "metrics"), dots(&["kvmfs.prom", "zabbix"]));
    assert_eq!(
        listing(&rig, "metrics/zabbix"),
        dots(&["instances.json", "nodes.json"])
    );
    for f in [
        "metrics/kvmfs.prom",
        "metrics/zabbix/nodes.json",
        "metrics/zabbix/instances.json",
    ] {
        let a = attr(&rig, f);
        assert_eq!((a.kind, a.perm), (EntryKind::File, 0o444), "{f}");
        // Live counters: never cached by the kernel.
        assert!(!a.cacheable, "{f}");
        assert!(a.size > 0, "{f}");
    }
    let prom = rig.read("metrics/kvmfs.prom").unwrap();
    assert!(
        prom.contains("kvmfs_instance_state{instance=\"web\",node=\"n1\",state=\"running\"} 1\n")
            || prom.contains(
                "kvmfs_instance_state{instance=\"web\",node=\"n2\",state=\"running\"} 1\n"
            ),
        "{prom}"
    );
    assert!(prom.contains("kvmfs_instances_created_total 1\n"), "{prom}");
    assert!(prom.contains("kvmfs_node_up{node=\"n2\"} 1\n"));
    assert_eq!(
        json(&rig, "metrics/zabbix/nodes.json"),
        serde_json::json!([{"{#NODE}": "n1"}, {"{#NODE}": "n2"}])
    );
    let node = rig.read("instances/web/node").unwrap();
    assert_eq!(
        json(&rig, "metrics/zabbix/instances.json"),
        serde_json::json!([{"{#INSTANCE}": "web", "{#NODE}": node.trim(), "{#PURPOSE}": "custom"}])
    );

    // Nothing under /metrics can be written, made, removed or renamed: EACCES (the kernel's
    // mode bits refuse it first for everyone but root); chmod and chown are EPERM.
    let eacces = |r: Result<(), TreeError>| assert_eq!(r.map_err(|e| e.errno()), Err(libc::EACCES));
    let dir = rig.ino("metrics").unwrap();
    let zabbix = rig.ino("metrics/zabbix").unwrap();
    let prom_ino = rig.ino("metrics/kvmfs.prom").unwrap();
    eacces(rig.tree.open(prom_ino, true, 0).map(|_| ()));
    eacces(rig.tree.truncate(prom_ino, None, 0, 0).map(|_| ()));
    eacces(
        rig.tree
            .mkdir(dir, std::ffi::OsStr::new("x"), 0)
            .await
            .map(|_| ()),
    );
    eacces(rig.tree.rmdir(dir, std::ffi::OsStr::new("zabbix"), 0).await);
    eacces(rig.tree.unlink(dir, std::ffi::OsStr::new("kvmfs.prom"), 0));
    eacces(
        rig.tree
            .unlink(zabbix, std::ffi::OsStr::new("nodes.json"), 0),
    );
    eacces(
        rig.tree
            .create(dir, std::ffi::OsStr::new("other.prom"), 0o644, 0, 0)
            .map(|_| ()),
    );
    eacces(
        rig.tree
            .rename(
                dir,
                std::ffi::OsStr::new("kvmfs.prom"),
                dir,
                std::ffi::OsStr::new("x"),
                false,
                0,
            )
            .await,
    );
    assert_eq!(
        rig.tree
            .set_attr(prom_ino, Some(0o644), None, None, 0)
            .map_err(|e| e.errno()),
        Err(libc::EPERM)
    );
    assert_eq!(
        rig.tree.refuse_create(prom_ino).errno(),
        libc::ENOTDIR,
        "a file is no folder"
    );
}
