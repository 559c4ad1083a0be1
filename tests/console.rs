//! The operator's console: `kvmfs menu` (the original's dialog menu over the mount) driven
//! under tmux as a person would, with keys, against the embedded demo mounted through the
//! kernel. Every answer is checked through the mount, and nothing may be left behind: no
//! draft after a refusal or a cancel, no temporary file after the menu ends.

mod common;

use std::path::Path;
use std::process::Command;

use common::tmux::Tmux;
use common::users::User;
use common::*;

/// A menu on the demo's mount, with its own temporary folder (checked empty at the end).
struct Menu {
    m: Mounted,
    tmp: tempfile::TempDir,
    t: Tmux,
}

const MAIN: &str = "1  Instance list";

impl Menu {
    fn start() -> Menu {
        Self::start_with(&[])
    }

    fn start_with(env: &[(&str, &str)]) -> Menu {
        let m = Mounted::demo();
        wait_online(&m, &["kvm1", "kvm2", "kvm3"]);
        Self::on(m, env)
    }

    fn on(m: Mounted, env: &[(&str, &str)]) -> Menu {
        Self::as_user(m, env, None)
    }

    /// The menu run by `user` (root when `None`), through `setpriv`.
    fn as_user(m: Mounted, env: &[(&str, &str)], user: Option<&User>) -> Menu {
        let tmp = tempfile::tempdir().unwrap();
        let mut all = vec![("TMPDIR", tmp.path().to_str().unwrap())];
        all.extend_from_slice(env);
        let run_as = match user {
            Some(u) => {
                std::os::unix::fs::chown(tmp.path(), Some(u.uid), Some(u.gid)).unwrap();
                format!(
                    "setpriv --reuid={} --regid={} --clear-groups ",
                    u.uid, u.gid
                )
            }
            None => String::new(),
        };
        let t = Tmux::start(
            &format!("{run_as}{KVMFS} menu {}", m.mnt.path().display()),
            Path::new("/"),
            &all,
            110,
            40,
        );
        Menu { m, tmp, t }
    }

    /// Chooses item `n` of the main menu.
    fn item(&self, n: &str) {
        self.t.wait_for(MAIN);
        self.t.keys(&[n, "Enter"]);
    }

    fn instances(&self) -> Vec<String> {
        list(self.m.path("instances"))
    }

    /// Leaves the menu with 0 and checks it ended well and removed its temporary files;
    /// the mount stays.
    fn exit(self) -> Mounted {
        self.item("0");
        assert_eq!(self.t.wait_exit(), 0);
        assert!(
            list(self.tmp.path()).is_empty(),
            "the menu left {:?} behind",
            list(self.tmp.path())
        );
        self.m
    }
}

/// The node the menu should name for placement: the best score among online nodes, ties to
/// the name first, from the nodes' own info.json.
fn best_node(m: &Mounted) -> (String, serde_json::Value) {
    let mut best: Option<(String, serde_json::Value)> = None;
    for n in list(m.path("nodes")) {
        let info = read_json(m.path(&format!("nodes/{n}/info.json")));
        if info["online"] != true {
            continue;
        }
        let score = info["score"].as_f64().unwrap();
        if best
            .as_ref()
            .is_none_or(|(_, b)| score > b["score"].as_f64().unwrap())
        {
            best = Some((n, info));
        }
    }
    best.expect("an online node")
}

fn make(m: &Mounted, name: &str) {
    std::fs::create_dir(m.path(&format!("instances/{name}"))).unwrap();
    write_spec(m, name, r#"{"flavor":"m1.small"}"#).unwrap();
    wait_status(m, name, "running");
}

#[test]
fn the_menu_refuses_what_is_not_a_live_kvmfs_mount() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(KVMFS)
        .arg("menu")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a kvmfs mount"), "{err}");
    assert!(err.contains("kvmfs mount"), "says how: {err}");
}

#[test]
fn the_menu_lists_instances_networks_and_nodes_and_exits_cleanly() {
    let menu = Menu::start();
    let m = &menu.m;
    make(m, "mine");
    let t = &menu.t;

    // 1: instances per node, with state, addresses, vCPUs and RAM.
    menu.item("1");
    let s = t.wait_for_all(&[
        "Instances by node",
        "kvm1 (online)",
        "kvm2 (online)",
        "kvm3 (online)",
        "legacy-web",
        " mine ",
    ]);
    let node = read(m.path("instances/mine/node"));
    let ip = read(m.path("instances/mine/ip"));
    let first_ip = ip.lines().next().unwrap();
    for n in [
        "kvm1 (online)",
        "kvm2 (online)",
        "kvm3 (online)",
        "legacy-web",
        "mine",
    ] {
        assert!(s.contains(n), "{n} missing:\n{s}");
    }
    let row = s.lines().find(|l| l.contains(" mine ")).unwrap();
    assert!(
        row.contains("running") && row.contains(first_ip) && row.contains("1024"),
        "{row}"
    );
    // Under its node's heading.
    let heading = s.find(&format!("{} (online)", node.trim())).unwrap();
    let at = s.find(" mine ").unwrap();
    assert!(heading < at, "{s}");
    t.keys(&["Enter"]);

    // 2: networks per node.
    menu.item("2");
    let s = t.wait_for_all(&["Networks by node", "default", "active", "kvm3"]);
    assert!(s.contains("default") && s.contains("active"), "{s}");
    t.keys(&["Enter"]);

    // 6: nodes, with free CPU and RAM and the score.
    menu.item("6");
    let s = t.wait_for_all(&["FREE VCPUS", " kvm1 ", " kvm2 ", " kvm3 "]);
    for n in list(m.path("nodes")) {
        let info = read_json(m.path(&format!("nodes/{n}/info.json")));
        let row = s.lines().find(|l| l.contains(&format!(" {n} "))).unwrap();
        let free =
            info["capacity_vcpus"].as_u64().unwrap() - info["committed_vcpus"].as_u64().unwrap();
        assert!(
            row.contains(&format!("{free}/{}", info["capacity_vcpus"])),
            "{row}"
        );
        assert!(
            row.contains(&info["score"].to_string()),
            "{row} vs {}",
            info["score"]
        );
    }
    t.keys(&["Enter"]);
    let _ = menu.exit();
}

#[test]
fn the_menu_creates_two_instances_at_once() {
    let menu = Menu::start();
    let (m, t) = (&menu.m, &menu.t);
    let repo = tempfile::tempdir().unwrap();
    let url = git_repo(repo.path(), "<h1>menu</h1>");

    menu.item("3");
    let (best, info) = best_node(m);
    let s = t.wait_for_all(&[&format!("choose {best} now"), "vCPUs free"]);
    assert!(
        s.contains(&format!("of {} vCPUs free", info["capacity_vcpus"])),
        "{s}"
    );
    t.keys(&["Enter"]);
    // debian-12.qcow2, the second image: only kvm1 and kvm2 hold it, and kvm2 has room.
    t.wait_for("Base image");
    t.keys(&["Home", "Down", "Space", "Enter"]);
    t.wait_for("Instance name:");
    t.type_text("web");
    t.keys(&["Enter"]);
    t.wait_for("What is the instance for?");
    t.keys(&["Enter"]);
    t.wait_for("Git URL");
    t.type_text(&url);
    t.keys(&["Enter"]);
    let s = t.wait_for_all(&["Resources", "m1.large"]);
    // The smallest flavor first, selected, with its numbers.
    assert!(
        s.contains("(*) m1.small") && s.contains("1 vCPU(s), 1024 MB RAM"),
        "{s}"
    );
    t.keys(&["Enter"]);
    t.wait_for("Disk size in GB");
    t.type_text("12");
    t.keys(&["Enter"]);
    t.wait_for("How many instances");
    t.keys(&["BSpace", "2", "Enter"]);
    let s = t.wait_until("both instances' results", |s| {
        s.contains("Installation finished.") && s.matches("ssh -i").count() == 2
    });
    for name in ["web-1", "web-2"] {
        let status = read(m.path(&format!("instances/{name}/status")));
        assert!(status.starts_with("running"), "{name}: {status}");
        let ip = read(m.path(&format!("instances/{name}/ip")));
        let node = read(m.path(&format!("instances/{name}/node")));
        assert!(s.contains(&format!("{name}: running")), "{s}");
        assert!(s.contains(&format!("({})", node.trim())), "{s}");
        assert!(
            s.contains(&format!(
                "ssh -i {}/{name}/ssh_key debian@{}",
                m.path("instances").display(),
                ip.lines().next().unwrap()
            )),
            "{s}"
        );
        let spec = read_json(m.path(&format!("instances/{name}/spec.json")));
        assert_eq!(spec["flavor"], "m1.small");
        assert_eq!(spec["purpose"], "web");
        assert_eq!(spec["git"], url.as_str());
        assert_eq!(spec["disk_gb"], 12);
        assert_eq!(spec["image"], "debian-12.qcow2");
    }
    t.keys(&["Enter"]);
    let _ = menu.exit();
}

#[test]
fn the_menu_deletes_the_chosen_instances() {
    let menu = Menu::start();
    let (m, t) = (&menu.m, &menu.t);
    make(m, "d1");
    make(m, "d2");
    menu.item("4");
    let s = t.wait_for_all(&["Instances to delete", "d1", "d2"]);
    // Only kvmfs's instances: the demo's own domains are not offered.
    assert!(s.contains("d1") && s.contains("d2"), "{s}");
    assert!(!s.contains("legacy-web"), "{s}");
    t.keys(&["Space", "Enter"]);
    let s = t.wait_for_all(&["Delete these instances?", "d1", "Yes"]);
    assert!(!s.contains("d2"), "{s}");
    t.keys(&["Enter"]);
    t.wait_for("Deleted: d1");
    let names = menu.instances();
    assert!(
        !names.contains(&"d1".into()) && names.contains(&"d2".into()),
        "{names:?}"
    );
    t.keys(&["Enter"]);

    // Answering No deletes nothing.
    menu.item("4");
    t.wait_for("Instances to delete");
    t.keys(&["Space", "Enter"]);
    t.wait_for("Delete these instances?");
    t.keys(&["Tab", "Enter"]);
    t.wait_for(MAIN);
    assert!(menu.instances().contains(&"d2".into()));
    let _ = menu.exit();
}

#[test]
fn refusals_show_the_reason_and_go_back_to_their_step_leaving_nothing() {
    let menu = Menu::start();
    let (m, t) = (&menu.m, &menu.t);
    let before = menu.instances();
    let repo = tempfile::tempdir().unwrap();
    let url = git_repo(repo.path(), "<h1>ok</h1>");

    menu.item("3");
    t.wait_for("Placement would choose");
    t.keys(&["Enter"]);
    t.wait_for("Base image");
    t.keys(&["Enter"]);
    // A bad name, then one taken: said, and asked again.
    t.wait_for("Instance name:");
    t.type_text("Bad_Name");
    t.keys(&["Enter"]);
    t.wait_for("is not a valid name");
    t.keys(&["Enter"]);
    t.wait_for("Instance name:");
    t.keys(&["BSpace"; 8]);
    t.type_text("legacy-web");
    t.keys(&["Enter"]);
    t.wait_for("legacy-web exists already");
    t.keys(&["Enter"]);
    t.wait_for("Instance name:");
    t.keys(&["BSpace"; 10]);
    t.type_text("ok1");
    t.keys(&["Enter"]);
    t.wait_for("What is the instance for?");
    t.keys(&["Enter"]);
    // A git URL kvmfs refuses, with a flavor no node has room for.
    t.wait_for("Git URL");
    t.type_text("ext::sh");
    t.keys(&["Enter"]);
    t.wait_for("Resources");
    t.keys(&["Home", "Down", "Down", "Space", "Enter"]);
    t.wait_for("Disk size in GB");
    t.keys(&["Enter"]);
    t.wait_for("How many instances");
    t.keys(&["Enter"]);
    // The instance's error, as kvmfs wrote it; back at the git step; no draft left.
    t.wait_for_all(&["Refused", "remote helpers"]);
    assert_eq!(menu.instances(), before);
    t.keys(&["Enter"]);
    t.wait_for("Git URL");
    t.keys(&["BSpace"; 10]);
    t.type_text("file:///nonexistent/site.git");
    t.keys(&["Enter"]);
    // m1.large is still chosen: no node has 8 GB free.
    t.wait_for_all(&["Resources", "(*) m1.large"]);
    t.keys(&["Enter"]);
    t.wait_for("Disk size in GB");
    t.keys(&["Enter"]);
    t.wait_for("How many instances");
    t.keys(&["Enter"]);
    t.wait_for_all(&["Refused", "no node can take this instance"]);
    assert_eq!(menu.instances(), before);
    t.keys(&["Enter"]);
    // Back at the flavor: the smallest fits, and the build fails on the repository that is
    // not there; that is shown too, and the failed instance removed.
    t.wait_for("Resources");
    t.keys(&["Home", "Space", "Enter"]);
    t.wait_for("Disk size in GB");
    t.keys(&["Enter"]);
    t.wait_for("How many instances");
    t.keys(&["Enter"]);
    t.wait_for_all(&["Refused", "is not reachable"]);
    assert_eq!(menu.instances(), before);
    t.keys(&["Enter"]);
    t.wait_for("Git URL");
    t.keys(&["BSpace"; 40]);
    t.type_text(&url);
    t.keys(&["Enter"]);
    t.wait_for("Resources");
    t.keys(&["Enter"]);
    t.wait_for("Disk size in GB");
    t.keys(&["Enter"]);
    t.wait_for("How many instances");
    t.keys(&["Enter"]);
    t.wait_for("Installation finished.");
    assert!(read(m.path("instances/ok1/status")).starts_with("running"));
    assert_eq!(
        read_json(m.path("instances/ok1/spec.json"))["flavor"],
        "m1.small"
    );
    t.keys(&["Enter"]);
    let _ = menu.exit();
}

#[test]
fn cancel_at_each_step_of_a_create_leaves_nothing() {
    let menu = Menu::start();
    let t = &menu.t;
    let before = menu.instances();
    // The screens of a create in order, what moves past each, and what leaves it: ESC, or
    // the Cancel button (Tab moves to it: once from a list, twice from an input field).
    let steps: &[(&str, &[&str], &[&str])] = &[
        ("Placement would choose", &["Enter"], &["Escape"]),
        ("Base image", &["Enter"], &["Tab", "Enter"]),
        ("Instance name:", &["c", "1", "Enter"], &["Escape"]),
        ("What is the instance for?", &["Enter"], &["Tab", "Enter"]),
        ("Git URL", &["x", "Enter"], &["Tab", "Tab", "Enter"]),
        ("Resources", &["Enter"], &["Escape"]),
        ("Disk size in GB", &["Enter"], &["Tab", "Tab", "Enter"]),
        ("How many instances", &[], &["Escape"]),
    ];
    for (k, (screen, _, cancel)) in steps.iter().enumerate() {
        menu.item("3");
        for (earlier, forward, _) in &steps[..k] {
            t.wait_for(earlier);
            t.keys(forward);
        }
        t.wait_for(screen);
        t.keys(cancel);
        t.wait_for(MAIN);
        assert_eq!(menu.instances(), before, "after leaving at {screen:?}");
    }
    let _ = menu.exit();
}

#[test]
fn the_menu_stops_and_starts_several_instances() {
    let menu = Menu::start();
    let (m, t) = (&menu.m, &menu.t);
    make(m, "p1");
    make(m, "p2");
    menu.item("5");
    t.wait_for("shut running instances down");
    t.keys(&["Down", "Enter"]);
    t.wait_for_all(&["Instances to shut down", "p1", "p2"]);
    t.keys(&["Space", "Down", "Space", "Enter"]);
    t.wait_for("Done: p1 p2");
    for n in ["p1", "p2"] {
        assert!(read(m.path(&format!("instances/{n}/status"))).starts_with("shutoff"));
    }
    t.keys(&["Enter"]);
    menu.item("5");
    t.wait_for("start stopped instances");
    t.keys(&["Enter"]);
    t.wait_for("Instances to start");
    t.keys(&["Space", "Enter"]);
    t.wait_for("Done: p1");
    assert!(read(m.path("instances/p1/status")).starts_with("running"));
    assert!(read(m.path("instances/p2/status")).starts_with("shutoff"));
    t.keys(&["Enter"]);
    let _ = menu.exit();
}

#[test]
fn the_menu_moves_instances_to_another_node_and_shows_refusals() {
    let menu = Menu::start();
    let (m, t) = (&menu.m, &menu.t);
    for name in ["v1", "v2"] {
        std::fs::create_dir(m.path(&format!("instances/{name}"))).unwrap();
        write_spec(
            m,
            name,
            r#"{"vcpus":1,"ram_mb":256,"disk_gb":1,"node":"kvm1"}"#,
        )
        .unwrap();
        wait_status(m, name, "running");
    }
    menu.item("7");
    t.wait_for_all(&["Instances to move", "v1", "v2"]);
    t.keys(&["Space", "Enter"]);
    // The nodes that take instances, in name order: kvm1, kvm2, kvm3.
    t.wait_for_all(&["Move them to", "kvm2", "kvm3"]);
    t.keys(&["Down", "Enter"]);
    t.wait_for("Moved: v1");
    assert_eq!(read(m.path("instances/v1/node")), "kvm2\n");
    assert!(read(m.path("instances/v1/status")).starts_with("running"));
    t.keys(&["Enter"]);
    // kvm3 has no network `overlay`: the refusal and its reason are shown, v2 stays.
    menu.item("7");
    t.wait_for("Instances to move");
    t.keys(&["Down", "Space", "Enter"]);
    t.wait_for("Move them to");
    t.keys(&["Down", "Down", "Enter"]);
    t.wait_for_all(&["Failed:", "v2:", "overlay"]);
    assert_eq!(read(m.path("instances/v2/node")), "kvm1\n");
    t.keys(&["Enter"]);
    let _ = menu.exit();
}

#[test]
fn the_menu_speaks_korean_where_the_locale_does() {
    let menu = Menu::start_with(&[("LANG", "ko_KR.UTF-8")]);
    let t = &menu.t;
    t.wait_for_all(&[
        "KVM 관리 시스템",
        "가상머신 리스트",
        "가상 네트워크 리스트",
        "가상머신 생성",
        "가상머신 삭제",
        "종료",
    ]);
    t.keys(&["3", "Enter"]);
    t.wait_for("에 설치합니다");
    t.keys(&["Enter"]);
    t.wait_for("베이스 이미지 선택");
    t.keys(&["Escape"]);
    t.wait_for("가상머신 리스트");
    t.keys(&["0", "Enter"]);
    assert_eq!(t.wait_exit(), 0);
    assert!(list(menu.tmp.path()).is_empty());
}

#[test]
fn the_menu_script_passes_shellcheck() {
    let out = Command::new("shellcheck")
        .args(["-s", "bash", "-e", "SC2129"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/mount/kvmfs-menu"))
        .output()
        .expect("shellcheck (apt-get install shellcheck)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn each_user_is_offered_only_their_own_instances() {
    let m = Mounted::demo_with_args(&["--allow-other"]);
    wait_online(&m, &["kvm1", "kvm2", "kvm3"]);
    make(&m, "roots");
    let alice = User::create("mena");
    let bob = User::create("menb");
    let dir = m.path("instances/hers");
    let run = |u: &User, script: &str| {
        run_ok(
            Command::new("setpriv")
                .arg(format!("--reuid={}", u.uid))
                .arg(format!("--regid={}", u.gid))
                .args(["--clear-groups", "sh", "-c", script]),
        );
    };
    run(
        &alice,
        &format!("mkdir {0} && printf '{{}}' > {0}/spec.json", dir.display()),
    );
    wait_status(&m, "hers", "running");

    // Bob has nothing to delete or stop, though he sees every instance in the lists.
    let menu = Menu::as_user(m, &[], Some(&bob));
    menu.item("4");
    menu.t.wait_for("You have no kvmfs instances.");
    menu.t.keys(&["Enter"]);
    menu.item("1");
    menu.t.wait_for_all(&["Instances by node", "hers", "roots"]);
    menu.t.keys(&["Enter"]);
    // He makes one of his own.
    let t = &menu.t;
    menu.item("3");
    t.wait_for("Placement would choose");
    t.keys(&["Enter"]);
    t.wait_for("Base image");
    t.keys(&["Home", "Down", "Space", "Enter"]);
    t.wait_for("Instance name:");
    t.type_text("his");
    t.keys(&["Enter"]);
    t.wait_for("What is the instance for?");
    t.keys(&["Home", "Down", "Space", "Enter"]);
    t.wait_for("Resources");
    t.keys(&["Enter"]);
    t.wait_for("Disk size in GB");
    t.keys(&["Enter"]);
    t.wait_for("How many instances");
    t.keys(&["Enter"]);
    t.wait_for("Installation finished.");
    t.keys(&["Enter"]);
    let info = read_json(menu.m.path("instances/his/info.json"));
    assert_eq!(info["owner_uid"], bob.uid);
    assert_eq!(info["purpose"], "custom");
    let m = menu.exit();

    // Alice is offered hers and not root's, and deletes it.
    let menu = Menu::as_user(m, &[], Some(&alice));
    menu.item("4");
    let s = menu.t.wait_for_all(&["Instances to delete", "hers"]);
    assert!(
        s.contains("hers") && !s.contains("roots") && !s.contains("his"),
        "{s}"
    );
    menu.t.keys(&["Space", "Enter"]);
    menu.t.wait_for("Delete these instances?");
    menu.t.keys(&["Enter"]);
    menu.t.wait_for("Deleted: hers");
    menu.t.keys(&["Enter"]);
    let m = menu.exit();
    assert!(!list(m.path("instances")).contains(&"hers".to_string()));
    assert!(list(m.path("instances")).contains(&"roots".to_string()));
}

#[test]
fn leaving_by_esc_or_a_closed_terminal_removes_the_temporary_files() {
    // ESC at the main menu leaves it.
    let menu = Menu::start();
    menu.t.wait_for(MAIN);
    menu.t.keys(&["Escape"]);
    assert_eq!(menu.t.wait_exit(), 0);
    assert!(list(menu.tmp.path()).is_empty());

    // The terminal closed in the middle of a list: the menu's files go with it.
    let menu = Menu::on(menu.m, &[]);
    menu.item("1");
    menu.t.wait_for("Instances by node");
    assert!(
        !list(menu.tmp.path()).is_empty(),
        "the list is in a temporary file"
    );
    menu.t.close();
    wait_for(
        std::time::Duration::from_secs(30),
        "the menu to remove its temporary folder",
        || list(menu.tmp.path()).is_empty(),
    );
}
