//! Placement and quotas: which node a commit of `spec.json` chooses (the best score, ties to
//! the first name), why each filter refuses a node and how the `ENOSPC` reason lists them,
//! a forced `node`, what counts as committed (unmanaged domains only while active), that
//! concurrent commits never overbook a node, and the per-user limits of `[quotas]`
//! (`EDQUOT`). Each test asserts what docs/SEMANTICS.md promises ("Placement", "What counts
//! as committed", "Quotas").

use std::sync::Arc;

use crate::cluster::actions::ActionError;
use crate::cluster::view::NodeView;
use crate::hv::DomainState;
use crate::testing::Rig;
use crate::tree::TreeError;

const USER: u32 = 1000;
const OTHER: u32 = 1001;
const ROOT: u32 = 0;

/// A spec of `vcpus` vCPUs and `ram_mb` MiB, on the default image.
fn spec(vcpus: u32, ram_mb: u64) -> String {
    format!(r#"{{"vcpus":{vcpus},"ram_mb":{ram_mb},"disk_gb":1}}"#)
}

/// The same, forced onto `node`.
fn spec_on(vcpus: u32, ram_mb: u64, node: &str) -> String {
    format!(r#"{{"vcpus":{vcpus},"ram_mb":{ram_mb},"disk_gb":1,"node":"{node}"}}"#)
}

/// The same, on image `image`.
fn spec_with_image(image: &str) -> String {
    format!(r#"{{"vcpus":1,"ram_mb":512,"disk_gb":1,"image":"{image}"}}"#)
}

/// The action error of a call that must fail.
fn refused(r: Result<(), TreeError>) -> ActionError {
    match r {
        Err(TreeError::Action(a)) => a,
        other => panic!("expected an action's refusal, got {other:?}"),
    }
}

/// The `ENOSPC` reason of a call that must fail with it.
fn no_room(r: Result<(), TreeError>) -> String {
    match refused(r) {
        ActionError::NoCapacity(m) => m,
        other => panic!("expected ENOSPC, got {other:?}"),
    }
}

/// The `EDQUOT` reason of a call that must fail with it.
fn quota(r: Result<(), TreeError>) -> String {
    match refused(r) {
        ActionError::Quota(m) => m,
        other => panic!("expected EDQUOT, got {other:?}"),
    }
}

/// The node file of an instance, without its newline.
fn node_of(rig: &Rig, name: &str) -> String {
    rig.read(&format!("instances/{name}/node"))
        .unwrap()
        .trim_end()
        .to_string()
}

fn error_of(rig: &Rig, name: &str) -> String {
    rig.read(&format!("instances/{name}/error")).unwrap()
}

fn node_view(rig: &Rig, node: &str) -> Arc<NodeView> {
    rig.cluster.view().nodes.get(node).cloned().expect("a node")
}

/// A node's `info.json`, parsed.
fn node_info(rig: &Rig, node: &str) -> serde_json::Value {
    serde_json::from_str(&rig.read(&format!("nodes/{node}/info.json")).unwrap()).unwrap()
}

async fn wait_offline(rig: &Rig, node: &str) {
    rig.wait_for(&format!("{node} offline"), |r| !node_view(r, node).online)
        .await;
}

/// Waits until `node`'s pool, as the picture has it, holds `volume`.
async fn wait_volume(rig: &Rig, node: &str, volume: &str) {
    rig.wait_for(&format!("{volume} in the pool of {node}"), |r| {
        node_view(r, node)
            .volumes
            .as_ref()
            .is_some_and(|v| v.iter().any(|v| v.name == volume))
    })
    .await;
}

/// Waits until the picture shows `node` holding (vCPUs, RAM MB).
async fn wait_committed(rig: &Rig, node: &str, held: (u64, u64)) {
    rig.wait_for(&format!("{node} holding {held:?}"), |r| {
        let n = node_view(r, node);
        (n.committed_vcpus, n.committed_ram_mb) == held
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_best_score_wins_with_cpu_weighing_more_than_ram() {
    let rig = Rig::new(&[("a", 4, 8192), ("b", 4, 8192)], "").await;
    // a: few vCPUs but most of its RAM held; b: half its vCPUs held, nearly all RAM free.
    rig.node("a").add_foreign_domain("ram-hog", 2, 7168, true);
    rig.node("b").add_foreign_domain("cpu-hog", 8, 128, true);
    wait_committed(&rig, "a", (2, 7168)).await;
    wait_committed(&rig, "b", (8, 128)).await;
    // a: 0.7 × 14/16 + 0.3 × 1024/8192 = 0.65; b: 0.7 × 8/16 + 0.3 × 8064/8192 = 0.6453.
    // With the weights swapped, or equal, b would win.
    assert_eq!(node_info(&rig, "a")["score"], 0.65);
    assert_eq!(node_info(&rig, "b")["score"], 0.6453);
    rig.create("first", USER, &spec(1, 512)).await.unwrap();
    assert_eq!(node_of(&rig, "first"), "a");
    // a now scores 0.7 × 13/16 + 0.3 × 512/8192 = 0.5875 < 0.6453: the next goes to b.
    wait_committed(&rig, "a", (3, 7680)).await;
    assert_eq!(node_info(&rig, "a")["score"], 0.5875);
    rig.create("second", USER, &spec(1, 512)).await.unwrap();
    assert_eq!(node_of(&rig, "second"), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ties_go_to_the_first_node_by_name_not_by_configuration_order() {
    let rig = Rig::new(&[("zeta", 4, 8192), ("alpha", 4, 8192)], "").await;
    rig.create("one", USER, &spec(1, 512)).await.unwrap();
    assert_eq!(node_of(&rig, "one"), "alpha");
    // alpha holds something now: zeta scores higher.
    rig.create("two", USER, &spec(1, 512)).await.unwrap();
    assert_eq!(node_of(&rig, "two"), "zeta");
    // Even again: alpha first.
    rig.create("three", USER, &spec(1, 512)).await.unwrap();
    assert_eq!(node_of(&rig, "three"), "alpha");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_node_is_refused() {
    let rig = Rig::new(&[("n1", 4, 8192), ("n2", 4, 8192)], "").await;
    rig.node("n1").set_down(true);
    wait_offline(&rig, "n1").await;
    // n1 would win the tie: being offline, it is passed over.
    rig.create("web1", USER, &spec(1, 512)).await.unwrap();
    assert_eq!(node_of(&rig, "web1"), "n2");
    rig.mkdir("web2", USER).await.unwrap();
    let why = no_room(
        rig.write("instances/web2/spec.json", USER, &spec_on(1, 512, "n1"))
            .await,
    );
    assert_eq!(why, "no node can take this instance: n1 is offline");
    assert_eq!(rig.status("web2").unwrap(), "draft: waiting for spec.json");
    assert!(rig.node("n1").domains().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_pool_lacks_the_image_is_refused() {
    let rig = Rig::new(&[("n1", 4, 8192), ("n2", 4, 8192)], "").await;
    rig.node("n2").add_volume("centos-7.qcow2", 1 << 30);
    wait_volume(&rig, "n2", "centos-7.qcow2").await;
    rig.create("c1", USER, &spec_with_image("centos-7.qcow2"))
        .await
        .unwrap();
    assert_eq!(node_of(&rig, "c1"), "n2");
    rig.mkdir("c2", USER).await.unwrap();
    let forced = r#"{"vcpus":1,"ram_mb":512,"disk_gb":1,"image":"centos-7.qcow2","node":"n1"}"#;
    let why = no_room(rig.write("instances/c2/spec.json", USER, forced).await);
    assert_eq!(
        why,
        "no node can take this instance: n1 has no image centos-7.qcow2"
    );
    // An image no node holds: every node says so.
    rig.mkdir("c3", USER).await.unwrap();
    let why = no_room(
        rig.write(
            "instances/c3/spec.json",
            USER,
            &spec_with_image("nowhere.qcow2"),
        )
        .await,
    );
    assert_eq!(
        why,
        "no node can take this instance: n1 has no image nowhere.qcow2; \
         n2 has no image nowhere.qcow2"
    );
}

const TWO_NETWORKS: &str = "[[network]]\nname = 'default'\ncidr = '192.168.122.0/24'\n\
                            first = '192.168.122.10'\nlast = '192.168.122.250'\n\
                            [[network]]\nname = 'lab'\ncidr = '10.9.0.0/24'\n\
                            first = '10.9.0.10'\nlast = '10.9.0.20'\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_configured_network_is_refused() {
    let rig = Rig::new(&[("n1", 4, 8192), ("n2", 4, 8192)], TWO_NETWORKS).await;
    // Before any node has `lab`, nobody can take an instance.
    rig.mkdir("early", USER).await.unwrap();
    let why = no_room(
        rig.write("instances/early/spec.json", USER, &spec(1, 512))
            .await,
    );
    assert_eq!(
        why,
        "no node can take this instance: n1 has no network lab; n2 has no network lab"
    );
    rig.node("n2").add_network("lab", true);
    rig.wait_for("network lab", |r| {
        r.cluster.view().networks.contains_key("lab")
    })
    .await;
    rig.create("l1", USER, &spec(1, 512)).await.unwrap();
    assert_eq!(node_of(&rig, "l1"), "n2");
    rig.mkdir("l2", USER).await.unwrap();
    let why = no_room(
        rig.write("instances/l2/spec.json", USER, &spec_on(1, 512, "n1"))
            .await,
    );
    assert_eq!(why, "no node can take this instance: n1 has no network lab");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_network_is_inactive_is_refused() {
    let rig = Rig::new(&[("n1", 4, 8192), ("n2", 4, 8192)], "").await;
    rig.node("n1").add_network("default", false);
    rig.wait_for("default inactive on n1", |r| {
        r.cluster
            .view()
            .networks
            .get("default")
            .is_some_and(|n| n.status() == "partial: inactive on n1")
    })
    .await;
    rig.create("w1", USER, &spec(1, 512)).await.unwrap();
    assert_eq!(node_of(&rig, "w1"), "n2");
    rig.mkdir("w2", USER).await.unwrap();
    let why = no_room(
        rig.write("instances/w2/spec.json", USER, &spec_on(1, 512, "n1"))
            .await,
    );
    assert_eq!(
        why,
        "no node can take this instance: n1: network default is inactive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcpus_past_the_overcommitted_capacity_are_refused() {
    // floor(4 × 1.5) = 6 vCPUs.
    let rig = Rig::new(&[("n1", 4, 8192)], "[placement]\ncpu_overcommit = 1.5\n").await;
    assert_eq!(node_info(&rig, "n1")["capacity_vcpus"], 6);
    rig.create("big", USER, &spec(4, 512)).await.unwrap();
    rig.mkdir("more", USER).await.unwrap();
    let why = no_room(
        rig.write("instances/more/spec.json", USER, &spec(3, 512))
            .await,
    );
    assert_eq!(
        why,
        "no node can take this instance: n1 has 2 of 6 vCPUs free, 3 needed"
    );
    assert_eq!(error_of(&rig, "more"), format!("{why}\n"));
    // Exactly what is left fits.
    rig.write("instances/more/spec.json", USER, &spec(2, 512))
        .await
        .unwrap();
    assert_eq!(node_of(&rig, "more"), "n1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ram_past_the_overcommitted_capacity_is_refused() {
    // floor(8192 × 0.5) = 4096 MB.
    let rig = Rig::new(&[("n1", 4, 8192)], "[placement]\nram_overcommit = 0.5\n").await;
    assert_eq!(node_info(&rig, "n1")["capacity_ram_mb"], 4096);
    rig.create("big", USER, &spec(1, 3072)).await.unwrap();
    rig.mkdir("more", USER).await.unwrap();
    let why = no_room(
        rig.write("instances/more/spec.json", USER, &spec(1, 2048))
            .await,
    );
    assert_eq!(
        why,
        "no node can take this instance: n1 has 1024 of 4096 MB RAM free, 2048 needed"
    );
    rig.write("instances/more/spec.json", USER, &spec(1, 1024))
        .await
        .unwrap();
    assert_eq!(node_of(&rig, "more"), "n1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_gives_every_nodes_reason_in_name_order() {
    let rig = Rig::new(&[("c3", 4, 8192), ("a1", 4, 8192), ("b2", 4, 8192)], "").await;
    rig.node("c3").add_volume("centos-7.qcow2", 1 << 30);
    rig.node("a1").set_down(true);
    wait_volume(&rig, "c3", "centos-7.qcow2").await;
    wait_offline(&rig, "a1").await;
    rig.mkdir("huge", USER).await.unwrap();
    let text = r#"{"vcpus":20,"ram_mb":512,"disk_gb":1,"image":"centos-7.qcow2"}"#;
    let why = no_room(rig.write("instances/huge/spec.json", USER, text).await);
    assert_eq!(
        why,
        "no node can take this instance: a1 is offline; b2 has no image centos-7.qcow2; \
         c3 has 16 of 16 vCPUs free, 20 needed"
    );
    assert_eq!(error_of(&rig, "huge"), format!("{why}\n"));
    assert_eq!(rig.status("huge").unwrap(), "draft: waiting for spec.json");
    assert_eq!(node_of(&rig, "huge"), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_node_must_be_configured_and_pass_the_filters() {
    let rig = Rig::new(
        &[("n1", 2, 8192), ("n2", 2, 8192)],
        "[placement]\ncpu_overcommit = 1\n",
    )
    .await;
    rig.mkdir("f1", USER).await.unwrap();
    match refused(
        rig.write("instances/f1/spec.json", USER, &spec_on(1, 512, "zz"))
            .await,
    ) {
        ActionError::Invalid(m) => assert_eq!(m, "node zz is not configured"),
        other => panic!("expected EINVAL, got {other:?}"),
    }
    assert_eq!(rig.status("f1").unwrap(), "draft: waiting for spec.json");
    // n1 would win the tie; the spec takes n2.
    rig.write("instances/f1/spec.json", USER, &spec_on(1, 512, "n2"))
        .await
        .unwrap();
    assert_eq!(node_of(&rig, "f1"), "n2");
    // n2 has one vCPU left: forcing two onto it fails, though n1 has room.
    rig.mkdir("f2", USER).await.unwrap();
    let why = no_room(
        rig.write("instances/f2/spec.json", USER, &spec_on(2, 512, "n2"))
            .await,
    );
    assert_eq!(
        why,
        "no node can take this instance: n2 has 1 of 2 vCPUs free, 2 needed"
    );
    rig.write("instances/f2/spec.json", USER, &spec(2, 512))
        .await
        .unwrap();
    assert_eq!(node_of(&rig, "f2"), "n1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_unmanaged_domains_count_against_a_node_stopped_ones_do_not() {
    let rig = Rig::new(&[("n1", 4, 8192)], "[placement]\ncpu_overcommit = 1\n").await;
    rig.node("n1").add_foreign_domain("idle", 4, 4096, false);
    rig.node("n1").add_foreign_domain("busy", 3, 1024, true);
    rig.wait_for("both foreign domains", |r| {
        r.status("idle").is_some() && r.status("busy").is_some()
    })
    .await;
    wait_committed(&rig, "n1", (3, 1024)).await;
    rig.mkdir("mine", USER).await.unwrap();
    let why = no_room(
        rig.write("instances/mine/spec.json", USER, &spec(2, 512))
            .await,
    );
    assert_eq!(
        why,
        "no node can take this instance: n1 has 1 of 4 vCPUs free, 2 needed"
    );
    // Once it stops, it holds nothing.
    rig.node("n1")
        .set_domain_state("busy", DomainState::Shutoff);
    wait_committed(&rig, "n1", (0, 0)).await;
    rig.write("instances/mine/spec.json", USER, &spec(2, 512))
        .await
        .unwrap();
    assert_eq!(node_of(&rig, "mine"), "n1");
    // And when it starts again it counts again: 2 + 3 > 4.
    rig.node("n1")
        .set_domain_state("busy", DomainState::Running);
    wait_committed(&rig, "n1", (5, 1536)).await;
    rig.mkdir("again", USER).await.unwrap();
    let why = no_room(
        rig.write("instances/again/spec.json", USER, &spec(1, 128))
            .await,
    );
    assert!(why.contains("n1 has 0 of 4 vCPUs free, 1 needed"), "{why}");
    // Paused is still active: it keeps holding its room.
    rig.node("n1").set_domain_state("busy", DomainState::Paused);
    rig.wait_status("busy", "paused").await;
    assert_eq!(node_info(&rig, "n1")["committed_vcpus"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_never_overbook_a_node() {
    // Two vCPUs on each node, ten one-vCPU instances at once: four fit.
    let rig = Arc::new(
        Rig::new(
            &[("n1", 2, 8192), ("n2", 2, 8192)],
            "[placement]\ncpu_overcommit = 1\n",
        )
        .await,
    );
    let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    for n in &names {
        rig.mkdir(n, USER).await.unwrap();
    }
    let mut tasks = Vec::new();
    for n in &names {
        let (rig, n) = (rig.clone(), n.clone());
        tasks.push(tokio::spawn(async move {
            rig.write(&format!("instances/{n}/spec.json"), USER, &spec(1, 256))
                .await
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => accepted += 1,
            Err(TreeError::Action(ActionError::NoCapacity(_))) | Err(TreeError::InProgress) => {}
            Err(e) => panic!("unexpected answer: {e:?}"),
        }
    }
    assert!(accepted <= 4, "{accepted} accepted");
    // Every one ends placed and running, or refused as a draft.
    rig.wait_for("every commit settled", |r| {
        names.iter().all(|n| {
            let s = r.status(n).unwrap_or_default();
            s == "running"
                || s.starts_with("draft")
                    && r.read(&format!("instances/{n}/error"))
                        .unwrap_or_default()
                        .starts_with("no node can take this instance")
        })
    })
    .await;
    let running = names
        .iter()
        .filter(|n| rig.status(n).as_deref() == Some("running"))
        .count();
    assert_eq!(running, 4);
    for node in ["n1", "n2"] {
        assert_eq!(rig.node(node).domains().len(), 2, "{node}");
        let n = node_view(&rig, node);
        assert_eq!((n.committed_vcpus, n.capacity_vcpus), (2, 2), "{node}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drafts_quota_refuses_mkdir_for_a_user() {
    let rig = Rig::new(&[("n1", 4, 8192)], "[quotas]\ndrafts = 2\n").await;
    rig.mkdir("d1", USER).await.unwrap();
    rig.mkdir("d2", USER).await.unwrap();
    let why = quota(rig.mkdir("d3", USER).await);
    assert_eq!(
        why,
        "uid 1000 holds 2 drafts and failed instances; the limit is 2 ([quotas] drafts): \
         build or delete some first"
    );
    assert!(rig.status("d3").is_none());
    // Another user is not held back, and root is not limited.
    rig.mkdir("e1", OTHER).await.unwrap();
    for n in ["r1", "r2", "r3"] {
        rig.mkdir(n, ROOT).await.unwrap();
    }
    // A draft that is built no longer counts.
    rig.write("instances/d1/spec.json", USER, &spec(1, 512))
        .await
        .unwrap();
    rig.mkdir("d3", USER).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instances_quota_refuses_a_commit() {
    let rig = Rig::new(&[("n1", 4, 8192)], "[quotas]\ninstances = 1\n").await;
    rig.create("i1", USER, &spec(1, 512)).await.unwrap();
    rig.mkdir("i2", USER).await.unwrap();
    let why = quota(
        rig.write("instances/i2/spec.json", USER, &spec(1, 512))
            .await,
    );
    assert_eq!(
        why,
        "uid 1000 would hold 2 instances (holds 1); the limit is 1 ([quotas] instances)"
    );
    assert_eq!(error_of(&rig, "i2"), format!("{why}\n"));
    assert_eq!(rig.status("i2").unwrap(), "draft: waiting for spec.json");
    // Another user and root are not held back by it.
    rig.create("o1", OTHER, &spec(1, 512)).await.unwrap();
    rig.create("r1", ROOT, &spec(1, 512)).await.unwrap();
    rig.create("r2", ROOT, &spec(1, 512)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vcpus_and_ram_quotas_refuse_a_commit() {
    let rig = Rig::new(&[("n1", 8, 16384)], "[quotas]\nvcpus = 2\nram_mb = 1024\n").await;
    rig.mkdir("q1", USER).await.unwrap();
    let why = quota(
        rig.write("instances/q1/spec.json", USER, &spec(3, 512))
            .await,
    );
    assert_eq!(
        why,
        "uid 1000 would hold 3 vcpus (holds 0); the limit is 2 ([quotas] vcpus)"
    );
    let why = quota(
        rig.write("instances/q1/spec.json", USER, &spec(1, 1536))
            .await,
    );
    assert!(why.contains("[quotas] ram_mb"), "{why}");
    assert!(why.contains("uid 1000 would hold 1536"), "{why}");
    assert_eq!(error_of(&rig, "q1"), format!("{why}\n"));
    // Exactly the limit is allowed; then nothing more.
    rig.write("instances/q1/spec.json", USER, &spec(2, 1024))
        .await
        .unwrap();
    rig.mkdir("q2", USER).await.unwrap();
    let why = quota(
        rig.write("instances/q2/spec.json", USER, &spec(1, 128))
            .await,
    );
    assert_eq!(
        why,
        "uid 1000 would hold 3 vcpus (holds 2); the limit is 2 ([quotas] vcpus)"
    );
    // Root is not limited.
    rig.create("rootbig", ROOT, &spec(4, 4096)).await.unwrap();
    // Another user has the whole quota to themselves.
    rig.create("other", OTHER, &spec(2, 1024)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_committing_a_users_spec_counts_against_that_user() {
    let rig = Rig::new(&[("n1", 4, 8192)], "[quotas]\ninstances = 1\n").await;
    rig.create("u1", USER, &spec(1, 512)).await.unwrap();
    rig.mkdir("u2", USER).await.unwrap();
    let why = quota(
        rig.write("instances/u2/spec.json", ROOT, &spec(1, 512))
            .await,
    );
    assert_eq!(
        why,
        "uid 1000 would hold 2 instances (holds 1); the limit is 1 ([quotas] instances)"
    );
    assert_eq!(rig.status("u2").unwrap(), "draft: waiting for spec.json");
    // Root committing another user's first instance is fine, and counts for that user.
    rig.mkdir("o1", OTHER).await.unwrap();
    rig.write("instances/o1/spec.json", ROOT, &spec(1, 512))
        .await
        .unwrap();
    let info: serde_json::Value =
        serde_json::from_str(&rig.read("instances/o1/info.json").unwrap()).unwrap();
    assert_eq!(info["owner_uid"], OTHER);
    rig.mkdir("o2", OTHER).await.unwrap();
    let why = quota(
        rig.write("instances/o2/spec.json", OTHER, &spec(1, 512))
            .await,
    );
    assert!(why.starts_with("uid 1001 would hold 2 instances"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_domain_whose_fallback_name_is_taken_still_counts() {
    let rig = Rig::new(
        &[("kvm1", 4, 8192), ("kvm2", 4, 8192)],
        "[placement]\ncpu_overcommit = 1\n",
    )
    .await;
    // kvm1 (first in configuration order) takes `web`, and has a domain named `web@kvm2`
    // (libvirt allows `@`): kvm2's `web` can have neither name.
    rig.node("kvm1").add_foreign_domain("web", 1, 256, true);
    rig.node("kvm1")
        .add_foreign_domain("web@kvm2", 1, 256, true);
    rig.node("kvm2").add_foreign_domain("web", 3, 1024, true);
    // Seen in the same poll as kvm2's `web`.
    rig.node("kvm2").add_foreign_domain("marker", 1, 256, false);
    rig.wait_for("the foreign domains", |r| {
        r.status("web").is_some() && r.status("web@kvm2").is_some() && r.status("marker").is_some()
    })
    .await;
    // Running on kvm2: it holds 3 of kvm2's 4 vCPUs.
    wait_committed(&rig, "kvm2", (3, 1024)).await;
    rig.mkdir("mine", USER).await.unwrap();
    let why = no_room(
        rig.write("instances/mine/spec.json", USER, &spec_on(2, 512, "kvm2"))
            .await,
    );
    assert_eq!(
        why,
        "no node can take this instance: kvm2 has 1 of 4 vCPUs free, 2 needed"
    );
}
