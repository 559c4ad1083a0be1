//! The instance lifecycle through the kernel, against a real MariaDB and several simulated
//! nodes: placement, every spec field and error, ctl, rmdir, concurrency, two mounts.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::*;

struct Lab {
    db: MariaDb,
    _nodes: tempfile::TempDir,
    m: Mounted,
}

/// Three lopsided nodes: `big` (16 CPUs, empty), `busy` (8 CPUs, mostly committed) and
/// `small` (2 CPUs); only `big` and `busy` carry the `centos-7.qcow2` image.
fn lab() -> Lab {
    let db = MariaDb::start();
    let nodes = tempfile::tempdir().unwrap();
    let big = sim_node(
        nodes.path(),
        "big",
        &SimNode::new(16, 8192).volume("centos-7.qcow2", 8),
    );
    let busy = sim_node(
        nodes.path(),
        "busy",
        &SimNode::new(8, 8192)
            .domain("hog", 24, 6144, true)
            .volume("centos-7.qcow2", 8),
    );
    let small = sim_node(nodes.path(), "small", &SimNode::new(2, 4096));
    let m = Mounted::with_config(&format!(
        "[database]\nurl = '{}'\n[timing]\nrefresh_ms = 200\n\
         [[node]]\nname = 'big'\nuri = '{big}'\n\
         [[node]]\nname = 'busy'\nuri = '{busy}'\n\
         [[node]]\nname = 'small'\nuri = '{small}'\n",
        db.url()
    ));
    Lab {
        db,
        _nodes: nodes,
        m,
    }
}

#[test]
fn create_places_builds_and_deletes() {
    let lab = lab();
    let m = &lab.m;
    let repo = tempfile::tempdir().unwrap();
    let url = git_repo(repo.path(), "<h1>hello from web1</h1>");
    std::fs::create_dir(m.path("instances/web1")).unwrap();
    assert_eq!(
        read(m.path("instances/web1/status")),
        "draft: waiting for spec.json\n"
    );
    assert_eq!(
        lab.db.sql("SELECT vmname, state FROM kvmfs.vm"),
        "web1\tdraft\n"
    );

    let spec = format!(r#"{{"flavor":"m1.medium","purpose":"web","git":"{url}","disk_gb":12}}"#);
    write_spec(m, "web1", &spec).unwrap();
    wait_status(m, "web1", "running");
    // The emptiest node wins: big scores 0.7 × 1 + 0.3 × 1 before anything lands.
    assert_eq!(read(m.path("instances/web1/node")), "big\n");
    let ips = read(m.path("instances/web1/ip"));
    assert_eq!(ips, "192.168.122.10\n");
    let info = read_json(m.path("instances/web1/info.json"));
    assert_eq!(info["managed"], true);
    assert_eq!(info["vcpus"], 2);
    assert_eq!(info["ram_mb"], 2048);
    assert_eq!(info["purpose"], "web");
    assert_eq!(info["disk_gb"], 12);
    let disks: Vec<&str> = info["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device"].as_str().unwrap())
        .collect();
    assert_eq!(disks, vec!["disk", "cdrom"]);
    assert_eq!(
        lab.db
            .sql("SELECT vmname, hostname, vmip, ram, vcpus, state FROM kvmfs.vm"),
        "web1\tbig\t192.168.122.10\t2048\t2\tready\n"
    );
    assert_eq!(
        lab.db
            .sql("SELECT pool, address, vmname FROM kvmfs.ip_alloc"),
        "default\t192.168.122.10\tweb1\n"
    );
    let node = read_json(m.path("nodes/big/info.json"));
    let vols: Vec<&str> = node["pool_volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        vols.contains(&"web1.disk.qcow2") && vols.contains(&"web1.seed.iso"),
        "{vols:?}"
    );
    assert_eq!(node["committed_vcpus"], 2);

    // The key is the owner's alone, in OpenSSH format.
    let key = m.path("instances/web1/ssh_key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(read(&key).starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    // The committed spec reads back and is now read-only.
    assert_eq!(read(m.path("instances/web1/spec.json")), spec);
    let e = write_spec(m, "web1", "{}").unwrap_err();
    assert_eq!(errno(&e), libc::EBUSY);

    std::fs::remove_dir(m.path("instances/web1")).unwrap();
    assert!(!list(m.path("instances")).contains(&"web1".to_string()));
    assert_eq!(lab.db.sql("SELECT COUNT(*) FROM kvmfs.vm"), "0\n");
    assert_eq!(lab.db.sql("SELECT COUNT(*) FROM kvmfs.ip_alloc"), "0\n");
    let node = read_json(m.path("nodes/big/info.json"));
    assert!(!node["pool_volumes"].to_string().contains("web1"), "{node}");
    assert_eq!(node["committed_vcpus"], 0);
    // Deleting again is a clean ENOENT.
    let e = std::fs::remove_dir(m.path("instances/web1")).unwrap_err();
    assert_eq!(errno(&e), libc::ENOENT);
}

#[test]
fn placement_follows_score_filters_and_forced_nodes() {
    let lab = lab();
    let m = &lab.m;
    let score = |n: &str| {
        read_json(m.path(&format!("nodes/{n}/info.json")))["score"]
            .as_f64()
            .unwrap()
    };
    assert!(score("big") >= score("small") && score("small") > score("busy"));

    // The centos image exists only on big and busy; a large flavor fits only big.
    std::fs::create_dir(m.path("instances/c1")).unwrap();
    write_spec(m, "c1", r#"{"image":"centos-7.qcow2","flavor":"m1.large"}"#).unwrap();
    wait_status(m, "c1", "running");
    assert_eq!(read(m.path("instances/c1/node")), "big\n");

    // Forcing a node that has room works; one without the image is refused with ENOSPC.
    std::fs::create_dir(m.path("instances/f1")).unwrap();
    write_spec(m, "f1", r#"{"node":"small","vcpus":1,"ram_mb":512}"#).unwrap();
    wait_status(m, "f1", "running");
    assert_eq!(read(m.path("instances/f1/node")), "small\n");
    std::fs::create_dir(m.path("instances/f2")).unwrap();
    let e = write_spec(m, "f2", r#"{"node":"small","image":"centos-7.qcow2"}"#).unwrap_err();
    assert_eq!(errno(&e), libc::ENOSPC);
    assert!(read(m.path("instances/f2/error")).contains("small has no image centos-7.qcow2"));
    let e = write_spec(m, "f2", r#"{"node":"nowhere"}"#).unwrap_err();
    assert_eq!(errno(&e), libc::EINVAL);

    // Room is counted: busy has 24 of 32 vCPUs and 6 of 8 GiB committed.
    std::fs::create_dir(m.path("instances/big2")).unwrap();
    let e = write_spec(m, "big2", r#"{"vcpus":40,"ram_mb":1024}"#).unwrap_err();
    assert_eq!(errno(&e), libc::ENOSPC);
    assert_eq!(lab.db.sql("SELECT COUNT(*) FROM kvmfs.ip_alloc"), "2\n");
}

#[test]
fn bad_names_and_specs_get_errnos_reasons_and_leave_nothing() {
    let lab = lab();
    let m = &lab.m;
    for bad in [
        "Web",
        "a_b",
        "-x",
        "x-",
        "a.b",
        "with space",
        &"x".repeat(64),
    ] {
        let e = std::fs::create_dir(m.path(&format!("instances/{bad}"))).unwrap_err();
        assert_eq!(errno(&e), libc::EINVAL, "{bad:?}");
    }
    let e = std::fs::create_dir(m.path("nodes/big/x")).unwrap_err();
    assert_eq!(errno(&e), libc::EACCES);
    std::fs::create_dir(m.path("instances/s1")).unwrap();
    let e = std::fs::create_dir(m.path("instances/s1")).unwrap_err();
    assert_eq!(errno(&e), libc::EEXIST);
    // An unmanaged domain's name is taken too.
    let e = std::fs::create_dir(m.path("instances/hog")).unwrap_err();
    assert_eq!(errno(&e), libc::EEXIST);

    for (spec, why) in [
        ("{not json", "not valid JSON"),
        (r#"{"flavor":"m1.huge"}"#, "unknown flavor"),
        (r#"{"flavour":"m1.small"}"#, "unknown field"),
        (r#"{"vcpus":-1,"ram_mb":512}"#, "invalid value"),
        (r#"{"purpose":"web"}"#, "needs a git"),
        (r#"{"purpose":"web","git":"ext::sh"}"#, "remote helpers"),
        (
            r#"{"purpose":"web","git":"--upload-pack=id"}"#,
            "must not start with '-'",
        ),
        (r#"{"disk_gb":100000}"#, "disk_gb"),
    ] {
        let e = write_spec(m, "s1", spec).unwrap_err();
        assert_eq!(errno(&e), libc::EINVAL, "{spec}");
        let err = read(m.path("instances/s1/error"));
        assert!(err.contains(why), "{spec}: {err}");
        assert_eq!(
            read(m.path("instances/s1/status")),
            "draft: waiting for spec.json\n"
        );
    }
    // Oversized specs are refused before they are buffered.
    let big = format!(r#"{{"image":"{}"}}"#, "a".repeat(20_000));
    let e = write_spec(m, "s1", &big).unwrap_err();
    assert_eq!(errno(&e), libc::EFBIG);
    // Unknown ctl commands, and ctl on a draft.
    let e = std::fs::write(m.path("instances/s1/ctl"), "explode\n").unwrap_err();
    assert_eq!(errno(&e), libc::EINVAL);
    let e = std::fs::write(m.path("instances/s1/ctl"), "start\n").unwrap_err();
    assert_eq!(errno(&e), libc::EBUSY);
    // Unmanaged domains are left alone.
    let e = std::fs::remove_dir(m.path("instances/hog")).unwrap_err();
    assert_eq!(errno(&e), libc::EACCES);

    // Nothing was made: one draft row, no addresses, no volumes.
    assert_eq!(
        lab.db.sql("SELECT vmname, state FROM kvmfs.vm"),
        "s1\tdraft\n"
    );
    assert_eq!(lab.db.sql("SELECT COUNT(*) FROM kvmfs.ip_alloc"), "0\n");
    for n in ["big", "busy", "small"] {
        let v = read_json(m.path(&format!("nodes/{n}/info.json")))["pool_volumes"].to_string();
        assert!(!v.contains("s1"), "{n}: {v}");
    }
    // A good spec after the bad ones still works, written the way cp writes.
    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), r#"{"flavor":"m1.small"}"#).unwrap();
    let st = Command::new("cp")
        .arg(src.path())
        .arg(m.path("instances/s1/spec.json"))
        .status()
        .unwrap();
    assert!(st.success());
    wait_status(m, "s1", "running");
    assert_eq!(read(m.path("instances/s1/error")), "");
}

#[test]
fn an_unreachable_git_repository_fails_the_build_and_undoes_it() {
    let lab = lab();
    let m = &lab.m;
    std::fs::create_dir(m.path("instances/w")).unwrap();
    write_spec(
        m,
        "w",
        r#"{"purpose":"web","git":"file:///nonexistent/repo.git"}"#,
    )
    .unwrap();
    let st = wait_status(m, "w", "failed");
    assert!(st.contains("not reachable"), "{st}");
    assert!(read(m.path("instances/w/error")).contains("/nonexistent/repo.git"));
    assert_eq!(
        lab.db.sql("SELECT state, hostname FROM kvmfs.vm"),
        "failed\tNULL\n"
    );
    assert_eq!(lab.db.sql("SELECT COUNT(*) FROM kvmfs.ip_alloc"), "0\n");
    // A failed instance takes a new spec.
    write_spec(m, "w", r#"{"flavor":"m1.small"}"#).unwrap();
    wait_status(m, "w", "running");
}

#[test]
fn ctl_changes_the_domain_and_refuses_the_wrong_state() {
    let lab = lab();
    let m = &lab.m;
    std::fs::create_dir(m.path("instances/c")).unwrap();
    write_spec(m, "c", "{}").unwrap();
    wait_status(m, "c", "running");
    let ctl = m.path("instances/c/ctl");
    assert_eq!(read(&ctl), "start stop destroy reboot revert NAME\n");
    let e = std::fs::write(&ctl, "start").unwrap_err();
    assert_eq!(errno(&e), libc::EBUSY);
    std::fs::write(&ctl, "reboot\n").unwrap();
    std::fs::write(&ctl, "stop\n").unwrap();
    wait_status(m, "c", "shutoff");
    let e = std::fs::write(&ctl, "stop").unwrap_err();
    assert_eq!(errno(&e), libc::EBUSY);
    let e = std::fs::write(&ctl, "destroy").unwrap_err();
    assert_eq!(errno(&e), libc::EBUSY);
    std::fs::write(&ctl, "start").unwrap();
    wait_status(m, "c", "running");
    std::fs::write(&ctl, "destroy").unwrap();
    wait_status(m, "c", "shutoff");
    // A stopped instance still holds its room and deletes cleanly.
    std::fs::remove_dir(m.path("instances/c")).unwrap();
    assert_eq!(lab.db.sql("SELECT COUNT(*) FROM kvmfs.vm"), "0\n");
}

#[test]
fn fifty_concurrent_creates_and_deletes_leave_nothing_behind() {
    let lab = lab();
    let root = lab.m.mnt.path().to_path_buf();
    let names: Vec<String> = (0..50).map(|i| format!("c{i:02}")).collect();
    let threads: Vec<_> = names
        .iter()
        .cloned()
        .map(|n| {
            let root = root.clone();
            std::thread::spawn(move || {
                // On a loaded machine an operation may outlast op_timeout_ms: it then answers
                // EINPROGRESS and finishes in the background.
                let dir = root.join("instances").join(&n);
                match std::fs::create_dir(&dir) {
                    Err(e) if errno(&e) == libc::EINPROGRESS => {
                        wait_for(Duration::from_secs(30), "the draft", || dir.exists())
                    }
                    r => r.unwrap(),
                }
                match std::fs::write(
                    dir.join("spec.json"),
                    r#"{"vcpus":1,"ram_mb":128,"disk_gb":1}"#,
                ) {
                    Err(e) if errno(&e) == libc::EINPROGRESS => Ok(()),
                    r => r,
                }
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (n, r) in names.iter().zip(&results) {
        assert!(r.is_ok(), "{n}: {r:?}");
    }
    for n in &names {
        wait_status(&lab.m, n, "running");
    }
    let addrs = lab.db.sql("SELECT address FROM kvmfs.ip_alloc");
    let mut uniq: Vec<&str> = addrs.lines().collect();
    assert_eq!(uniq.len(), 50);
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 50, "duplicate addresses");
    // No node is overbooked.
    for node in ["big", "busy", "small"] {
        let i = read_json(lab.m.path(&format!("nodes/{node}/info.json")));
        assert!(
            i["committed_vcpus"].as_u64() <= i["capacity_vcpus"].as_u64(),
            "{i}"
        );
        assert!(
            i["committed_ram_mb"].as_u64() <= i["capacity_ram_mb"].as_u64(),
            "{i}"
        );
    }
    let threads: Vec<_> = names
        .iter()
        .cloned()
        .map(|n| {
            let root = root.clone();
            std::thread::spawn(move || std::fs::remove_dir(root.join("instances").join(&n)))
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    assert_eq!(lab.db.sql("SELECT COUNT(*) FROM kvmfs.vm"), "0\n");
    assert_eq!(lab.db.sql("SELECT COUNT(*) FROM kvmfs.ip_alloc"), "0\n");
    assert_eq!(list(root.join("instances")), vec!["hog"]);
    for node in ["big", "busy", "small"] {
        let v =
            read_json(lab.m.path(&format!("nodes/{node}/info.json")))["pool_volumes"].to_string();
        assert!(!v.contains("c0") && !v.contains("c1"), "{node}: {v}");
    }
}

#[test]
fn two_mounts_on_one_database_race_for_a_name() {
    let lab = lab();
    let nodes = tempfile::tempdir().unwrap();
    let other = sim_node(nodes.path(), "other", &SimNode::new(4, 4096));
    let m2 = Mounted::with_config(&format!(
        "[database]\nurl = '{}'\n[timing]\nrefresh_ms = 200\n[[node]]\nname = 'other'\nuri = '{other}'\n",
        lab.db.url()
    ));
    for round in 0..5 {
        let name = format!("race{round}");
        let (a, b) = (
            lab.m.path(&format!("instances/{name}")),
            m2.path(&format!("instances/{name}")),
        );
        let ta = std::thread::spawn(move || std::fs::create_dir(a));
        let tb = std::thread::spawn(move || std::fs::create_dir(b));
        let (ra, rb) = (ta.join().unwrap(), tb.join().unwrap());
        assert!(
            ra.is_ok() != rb.is_ok(),
            "exactly one mkdir wins: {ra:?} {rb:?}"
        );
        let loser = ra.err().or(rb.err()).unwrap();
        assert_eq!(errno(&loser), libc::EEXIST);
    }
    assert_eq!(lab.db.sql("SELECT COUNT(*) FROM kvmfs.vm"), "5\n");
    // Each mount sees the other's drafts.
    wait_for(Duration::from_secs(5), "the drafts on both mounts", || {
        list(m2.path("instances")).len() == 5 && list(lab.m.path("instances")).len() == 6
    });
}

#[test]
fn demo_creates_on_sqlite() {
    let m = Mounted::demo();
    std::fs::create_dir(m.path("instances/web1")).unwrap();
    // Written the way Python writes.
    run_ok(Command::new("python3").arg("-c").arg(format!(
        "open('{}','w').write('{{\"flavor\":\"m1.small\"}}')",
        m.path("instances/web1/spec.json").display()
    )));
    wait_status(&m, "web1", "running");
    // The shell's way: the document, then its newline in a write of its own.
    std::fs::create_dir(m.path("instances/sh1")).unwrap();
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{{ printf '%s' '{{\"flavor\":\"m1.small\"}}'; echo; }} > {}",
            m.path("instances/sh1/spec.json").display()
        ))
        .status()
        .unwrap();
    assert!(st.success());
    wait_status(&m, "sh1", "running");
    // kvm3 has the best score but no overlay network, so it is filtered out.
    assert_eq!(read(m.path("instances/web1/node")), "kvm2\n");
    assert_eq!(
        read(m.path("instances/web1/ip")),
        "192.168.122.10\n172.16.123.10\n"
    );
    assert!(list(m.path("nodes/kvm2/instances")).contains(&"web1".to_string()));
    std::fs::remove_dir(m.path("instances/web1")).unwrap();
    assert!(!list(m.path("instances")).contains(&"web1".to_string()));
}

/// An instance whose build failed (its git repository does not answer): its `spec.json`
/// holds that document and takes a new one.
fn failed_instance(m: &Mounted, name: &str) {
    std::fs::create_dir(m.path(&format!("instances/{name}"))).unwrap();
    write_spec(
        m,
        name,
        r#"{"purpose":"web","git":"http://127.0.0.1:1/none.git"}"#,
    )
    .unwrap();
    wait_status(m, name, "failed: git repository");
}

#[test]
fn editors_and_tools_save_spec_json() {
    let m = Mounted::demo();
    let small = r#"{"flavor":"m1.small"}"#;

    // vim, with its `4913` probe, its swap file, and the backup it makes by renaming
    // spec.json to spec.json~ (backupskip would skip it under /tmp).
    failed_instance(&m, "vim1");
    run_ok(
        Command::new("vim")
            .args(["-u", "NONE", "-N", "-es", "--cmd", "set backupskip="])
            .args(["-c", "%d", "-c"])
            .arg(format!("call setline(1, '{small}')"))
            .args(["-c", "wq", "spec.json"])
            .current_dir(m.path("instances/vim1")),
    );
    wait_status(&m, "vim1", "running");
    assert_eq!(
        read(m.path("instances/vim1/spec.json")),
        format!("{small}\n")
    );

    // nano at a real terminal, with a backup file and a lock file.
    std::fs::create_dir(m.path("instances/nano1")).unwrap();
    let nano = tmux::Tmux::start(
        "nano -B --locking spec.json",
        &m.path("instances/nano1"),
        &[],
        100,
        20,
    );
    // Keys go to nano once it shows its screen, and Enter once it asks for the file name.
    nano.wait_for("^X");
    nano.type_text(small);
    nano.wait_for("m1.small");
    nano.keys(&["C-o"]);
    nano.wait_for("File Name to Write");
    nano.keys(&["Enter"]);
    wait_status(&m, "nano1", "running");
    nano.keys(&["C-x"]);
    drop(nano);
    assert_eq!(read(m.path("instances/nano1/spec.json")).trim_end(), small);

    // A script's atomic save: a temporary file renamed over spec.json.
    std::fs::create_dir(m.path("instances/py1")).unwrap();
    run_ok(Command::new("python3").arg("-c").arg(format!(
        "import os\nopen('.spec.json.tmp','w').write('{small}')\nos.replace('.spec.json.tmp','spec.json')"
    ))
    .current_dir(m.path("instances/py1")));
    wait_status(&m, "py1", "running");
    assert!(
        !list(m.path("instances/py1")).contains(&".spec.json.tmp".to_string()),
        "the renamed file is the spec now"
    );

    // cp and tee.
    let src = m.state.path().join("spec.json");
    std::fs::write(&src, small).unwrap();
    std::fs::create_dir(m.path("instances/cp1")).unwrap();
    run_ok(
        Command::new("cp")
            .arg(&src)
            .arg(m.path("instances/cp1/spec.json")),
    );
    std::fs::create_dir(m.path("instances/tee1")).unwrap();
    run_ok(Command::new("sh").arg("-c").arg(format!(
        "echo '{small}' | tee {} >/dev/null",
        m.path("instances/tee1/spec.json").display()
    )));
    wait_status(&m, "cp1", "running");
    wait_status(&m, "tee1", "running");
}

#[test]
fn scratch_files_live_beside_the_spec_and_go_with_the_instance() {
    let m = Mounted::demo();
    std::fs::create_dir(m.path("instances/s1")).unwrap();
    let p = |f: &str| m.path(&format!("instances/s1/{f}"));
    std::fs::write(p("notes.txt"), "first\n").unwrap();
    std::fs::write(p("notes.txt"), "second\n").unwrap();
    assert_eq!(read(p("notes.txt")), "second\n");
    assert_eq!(std::fs::metadata(p("notes.txt")).unwrap().len(), 7);
    std::fs::rename(p("notes.txt"), p("notes.old")).unwrap();
    assert!(list(m.path("instances/s1")).contains(&"notes.old".to_string()));
    std::fs::set_permissions(p("notes.old"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        std::fs::metadata(p("notes.old"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // kvmfs's own names are not for scratch files, and its files stay.
    let e = std::fs::rename(p("notes.old"), p("status")).unwrap_err();
    assert_eq!(errno(&e), libc::EACCES);
    // Their unlink succeeds and removes nothing (so that `rm -r` reaches the rmdir).
    std::fs::remove_file(p("status")).unwrap();
    assert!(read(p("status")).starts_with("draft"));
    let e = std::fs::rename(p("status"), p("status.bak")).unwrap_err();
    assert_eq!(errno(&e), libc::EACCES);
    // A scratch file renamed onto spec.json is checked like a write.
    std::fs::write(p("bad.json"), r#"{"flavor":"m9.huge"}"#).unwrap();
    let e = std::fs::rename(p("bad.json"), p("spec.json")).unwrap_err();
    assert_eq!(errno(&e), libc::EINVAL);
    assert!(read(p("error")).contains("m9.huge"), "{}", read(p("error")));
    assert!(read(p("status")).starts_with("draft"));
    // Too big.
    let big = vec![b'x'; (1 << 20) + 1];
    let e = std::fs::write(p("big"), &big).unwrap_err();
    assert_eq!(errno(&e), libc::EFBIG);
    // Not between folders, and not in folders of domains kvmfs does not manage.
    std::fs::create_dir(m.path("instances/s2")).unwrap();
    let e = std::fs::rename(p("notes.old"), m.path("instances/s2/notes.old")).unwrap_err();
    assert_eq!(errno(&e), libc::EXDEV);
    let e = std::fs::write(m.path("instances/monitor/x"), "x").unwrap_err();
    assert_eq!(errno(&e), libc::EACCES);
    // rmdir takes the scratch files with it; a new instance of the name starts empty.
    std::fs::remove_dir(m.path("instances/s1")).unwrap();
    std::fs::create_dir(m.path("instances/s1")).unwrap();
    assert!(!list(m.path("instances/s1")).contains(&"notes.old".to_string()));
}

#[test]
fn images_flavors_and_the_status_of_the_whole_cloud() {
    let m = Mounted::demo();
    assert_eq!(read(m.path("status")), "ok\n");
    assert_eq!(
        list(m.path("flavors")),
        vec!["m1.large", "m1.medium", "m1.small"]
    );
    assert_eq!(read(m.path("flavors/m1.large/vcpus")), "4\n");
    assert_eq!(read(m.path("flavors/m1.large/ram_mb")), "8192\n");
    assert_eq!(
        read_json(m.path("flavors/m1.small/info.json"))["ram_mb"],
        1024
    );
    let images = list(m.path("images"));
    assert!(
        images.contains(&"debian-12.qcow2".to_string()),
        "{images:?}"
    );
    assert!(images.contains(&"centos-7.qcow2".to_string()), "{images:?}");
    // The legacy domains' disks are theirs, not images.
    assert!(
        !images.iter().any(|i| i.starts_with("legacy")),
        "{images:?}"
    );
    let nodes = read(m.path("images/debian-12.qcow2/nodes"));
    assert_eq!(nodes, "kvm1\nkvm2\nkvm3\n");
    let info = read_json(m.path("images/debian-12.qcow2/info.json"));
    assert_eq!(
        info["size_bytes"],
        read(m.path("images/debian-12.qcow2/size"))
            .trim()
            .parse::<u64>()
            .unwrap()
    );
    // An instance's own volumes do not show as images.
    std::fs::create_dir(m.path("instances/img1")).unwrap();
    write_spec(&m, "img1", r#"{"flavor":"m1.small"}"#).unwrap();
    wait_status(&m, "img1", "running");
    assert!(!list(m.path("images")).iter().any(|i| i.starts_with("img1")));
}

#[test]
fn two_mounts_never_overbook_a_node_between_them() {
    let db = MariaDb::start();
    let nodes = tempfile::tempdir().unwrap();
    // 4096 MB of RAM: room for exactly four m1.small instances.
    let one = sim_node(nodes.path(), "one", &SimNode::new(2, 4096));
    let cfg = format!(
        "[database]\nurl = '{}'\n[timing]\nrefresh_ms = 60000\n[[node]]\nname = 'one'\nuri = '{one}'\n",
        db.url()
    );
    let (a, b) = (Mounted::with_config(&cfg), Mounted::with_config(&cfg));
    let mounts = [a.mnt.path().to_path_buf(), b.mnt.path().to_path_buf()];
    let names: Vec<String> = (0..10).map(|i| format!("ob{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        std::fs::create_dir(mounts[i % 2].join("instances").join(n)).unwrap();
    }
    let handles: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let p = mounts[i % 2].join("instances").join(n).join("spec.json");
            std::thread::spawn(move || std::fs::write(p, r#"{"flavor":"m1.small"}"#))
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let placed = results.iter().filter(|r| r.is_ok()).count();
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(errno(r), libc::ENOSPC, "{r}");
    }
    assert_eq!(placed, 4, "{results:?}");
    assert_eq!(
        db.sql("SELECT COUNT(*), SUM(ram) FROM kvmfs.vm WHERE hostname = 'one'"),
        "4\t4096\n"
    );
}

#[test]
fn a_volume_kvmfs_did_not_make_is_never_deleted() {
    let db = MariaDb::start();
    let nodes = tempfile::tempdir().unwrap();
    // Someone's volume already has the name kvmfs would give the disk of `clash`.
    let n1 = sim_node(
        nodes.path(),
        "n1",
        &SimNode::new(4, 8192).volume("clash.disk.qcow2", 1),
    );
    let m = Mounted::with_config(&format!(
        "[database]\nurl = '{}'\n[timing]\nrefresh_ms = 200\n[[node]]\nname = 'n1'\nuri = '{n1}'\n",
        db.url()
    ));
    std::fs::create_dir(m.path("instances/clash")).unwrap();
    write_spec(&m, "clash", r#"{"flavor":"m1.small"}"#).unwrap();
    let status = wait_status(&m, "clash", "failed");
    assert!(
        status.contains("creating") || status.contains("exist"),
        "{status}"
    );
    let vols = || read_json(m.path("nodes/n1/info.json"))["pool_volumes"].clone();
    assert!(
        vols()
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "clash.disk.qcow2")
    );
    assert!(
        !vols()
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "clash.seed.iso")
    );
    assert_eq!(
        db.sql("SELECT made FROM kvmfs.vm WHERE vmname = 'clash'"),
        "\n"
    );
    std::fs::remove_dir(m.path("instances/clash")).unwrap();
    assert!(
        vols()
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "clash.disk.qcow2")
    );
    assert_eq!(db.sql("SELECT COUNT(*) FROM kvmfs.ip_alloc"), "0\n");
}

#[test]
fn a_dead_database_fails_changes_with_eio_and_loses_nothing() {
    let mut db = MariaDb::start();
    let nodes = tempfile::tempdir().unwrap();
    let n1 = sim_node(nodes.path(), "n1", &SimNode::new(4, 8192));
    let m = Mounted::with_config(&format!(
        "[database]\nurl = '{}'\n[timing]\nrefresh_ms = 200\n[[node]]\nname = 'n1'\nuri = '{n1}'\n",
        db.url()
    ));
    std::fs::create_dir(m.path("instances/keep")).unwrap();
    write_spec(&m, "keep", r#"{"flavor":"m1.small"}"#).unwrap();
    wait_status(&m, "keep", "running");
    std::fs::create_dir(m.path("instances/d1")).unwrap();
    let ips_before = db.sql("SELECT pool, address, vmname FROM kvmfs.ip_alloc ORDER BY 1, 2");

    db.kill();
    let mp = m.mnt.path().to_path_buf();
    let bound = Duration::from_secs(10);
    let e = within(bound, "mkdir", {
        let p = mp.join("instances/x1");
        move || std::fs::create_dir(p)
    })
    .unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "{e}");
    let e = within(bound, "writing spec.json", {
        let p = mp.join("instances/d1/spec.json");
        move || std::fs::write(p, r#"{"flavor":"m1.small"}"#)
    })
    .unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "{e}");
    assert!(
        read(m.path("instances/d1/error")).contains("database"),
        "{}",
        read(m.path("instances/d1/error"))
    );
    let e = within(bound, "rmdir", {
        let p = mp.join("instances/keep");
        move || std::fs::remove_dir(p)
    })
    .unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "{e}");
    wait_for(Duration::from_secs(5), "the reason in keep's error", || {
        read(m.path("instances/keep/error")).contains("database")
    });
    // Nothing was half-done: the refused rmdir removed nothing from the node.
    let vols = read_json(m.path("nodes/n1/info.json"))["pool_volumes"].to_string();
    assert!(
        vols.contains("keep.disk.qcow2") && vols.contains("keep.seed.iso"),
        "{vols}"
    );
    // Reads go on from libvirt and the last rows.
    assert!(read(m.path("instances/keep/status")).starts_with("running"));
    assert!(list(m.path("instances")).contains(&"d1".to_string()));
    wait_for(Duration::from_secs(10), "/status to say degraded", || {
        read(m.path("status")).starts_with("degraded: database")
    });

    db.restart();
    wait_for(Duration::from_secs(10), "/status to say ok", || {
        read(m.path("status")) == "ok\n"
    });
    assert_eq!(
        db.sql("SELECT vmname, state FROM kvmfs.vm ORDER BY vmname"),
        "d1\tdraft\nkeep\tready\n"
    );
    assert_eq!(
        db.sql("SELECT pool, address, vmname FROM kvmfs.ip_alloc ORDER BY 1, 2"),
        ips_before
    );
    assert!(read(m.path("instances/keep/status")).starts_with("running"));
    std::fs::remove_dir(m.path("instances/keep")).unwrap();
    write_spec(&m, "d1", r#"{"flavor":"m1.small"}"#).unwrap();
    wait_status(&m, "d1", "running");
}

#[test]
fn a_dead_node_fails_ctl_and_rmdir_with_eio_and_keeps_the_instance() {
    let db = MariaDb::start();
    let nodes = tempfile::tempdir().unwrap();
    let good = sim_node(nodes.path(), "good", &SimNode::new(4, 8192));
    let silent = SilentServer::start();
    let m = Mounted::with_config(&format!(
        "[database]\nurl = '{}'\n[timing]\nrefresh_ms = 200\n\
         [[node]]\nname = 'good'\nuri = '{good}'\n\
         [[node]]\nname = 'dead'\nuri = 'qemu+tcp://127.0.0.1:{}/system'\n",
        db.url(),
        silent.port
    ));
    // An instance kvmfs built on `dead` before it stopped answering.
    db.sql(
        "INSERT INTO kvmfs.vm (vmname, hostname, state, vcpus, ram, owner_uid, made) \
         VALUES ('stuck', 'dead', 'ready', 1, 512, 0, 'domain,disk,seed')",
    );
    wait_for(Duration::from_secs(10), "the row to show", || {
        std::fs::read_to_string(m.path("instances/stuck/status"))
            .unwrap_or_default()
            .starts_with("unknown: node dead is offline")
    });
    let mp = m.mnt.path().to_path_buf();
    let e = within(Duration::from_secs(10), "ctl", {
        let p = mp.join("instances/stuck/ctl");
        move || std::fs::write(p, "start")
    })
    .unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "{e}");
    let e = within(Duration::from_secs(10), "rmdir", {
        let p = mp.join("instances/stuck");
        move || std::fs::remove_dir(p)
    })
    .unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "{e}");
    wait_for(Duration::from_secs(5), "the reason in error", || {
        read(m.path("instances/stuck/error")).contains("node dead is offline")
    });
    assert_eq!(
        db.sql("SELECT state, made FROM kvmfs.vm WHERE vmname = 'stuck'"),
        "ready\tdomain,disk,seed\n"
    );
    assert!(
        read(m.path("status")).contains("1 of 2 nodes offline (dead)"),
        "{}",
        read(m.path("status"))
    );
}

#[test]
fn disks_go_to_the_configured_pool_also_an_nfs_one() {
    // The original mounted the storage node's /cloud export on every KVM node; kvmfs makes
    // volumes through libvirt's storage API, whatever the pool's type.
    let nodes = tempfile::tempdir().unwrap();
    let shared = sim_node(
        nodes.path(),
        "shared",
        &SimNode::new(4, 4096).nfs_pool("cloud", "storage", "/cloud"),
    );
    let m = Mounted::with_config(&format!(
        "[timing]\nrefresh_ms = 200\n\
         [[node]]\nname = 'shared'\nuri = '{shared}'\npool = 'cloud'\n"
    ));
    std::fs::create_dir(m.path("instances/n1")).unwrap();
    write_spec(&m, "n1", r#"{"flavor":"m1.small","disk_gb":3}"#).unwrap();
    wait_status(&m, "n1", "running");
    let info = read_json(m.path("nodes/shared/info.json"));
    let vols: Vec<&str> = info["pool_volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(vols.contains(&"n1.disk.qcow2"), "{vols:?}");
    assert!(vols.contains(&"n1.seed.iso"), "{vols:?}");
    let disks = read_json(m.path("instances/n1/info.json"))["disks"].clone();
    assert!(
        disks
            .to_string()
            .contains("/var/lib/libvirt/cloud/n1.disk.qcow2"),
        "{disks}"
    );
    std::fs::remove_dir(m.path("instances/n1")).unwrap();
    let info = read_json(m.path("nodes/shared/info.json"));
    assert_eq!(info["pool_volumes"], serde_json::json!(["debian-12.qcow2"]));
}
