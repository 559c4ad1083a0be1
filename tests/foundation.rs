//! The read side through the kernel: the demo, a MariaDB-backed config, nodes that are down
//! or never answer, mount errors, and clean unmounts.

mod common;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn demo_shows_nodes_instances_and_networks() {
    let m = Mounted::demo();
    assert_eq!(
        list(m.path("")),
        vec![
            "flavors",
            "images",
            "instances",
            "metrics",
            "networks",
            "nodes",
            "status"
        ]
    );
    assert_eq!(list(m.path("nodes")), vec!["kvm1", "kvm2", "kvm3"]);
    assert_eq!(
        list(m.path("instances")),
        vec!["legacy-build", "legacy-db", "legacy-web", "monitor"]
    );
    assert_eq!(list(m.path("networks")), vec!["default", "overlay"]);
    assert_eq!(
        list(m.path("nodes/kvm1")),
        vec!["ctl", "info.json", "instances", "status"]
    );

    let kvm1 = read_json(m.path("nodes/kvm1/info.json"));
    assert_eq!(kvm1["cpus"], 4);
    assert_eq!(kvm1["memory_total_mb"], 4096);
    assert_eq!(kvm1["online"], true);
    assert_eq!(kvm1["instances"], 2);
    assert_eq!(kvm1["committed_vcpus"], 3);
    assert!(kvm1["score"].as_f64().is_some());
    assert_eq!(read_json(m.path("nodes/kvm2/info.json"))["cpus"], 2);
    assert_eq!(read(m.path("nodes/kvm3/status")), "online\n");

    assert_eq!(read(m.path("instances/legacy-build/status")), "shutoff\n");
    assert_eq!(read(m.path("instances/legacy-db/status")), "running\n");
    assert_eq!(read(m.path("instances/legacy-db/node")), "kvm1\n");
    assert_eq!(read(m.path("instances/legacy-db/ip")), "");
    let info = read_json(m.path("instances/legacy-db/info.json"));
    assert_eq!(info["managed"], false);
    assert_eq!(info["vcpus"], 2);
    assert_eq!(info["ram_mb"], 2048);
    assert_eq!(info["disks"][0]["target"], "vda");

    // nodes/<n>/instances holds symlinks into /instances.
    assert_eq!(
        list(m.path("nodes/kvm1/instances")),
        vec!["legacy-db", "legacy-web"]
    );
    let link = m.path("nodes/kvm1/instances/legacy-db");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(read(link.join("status")), "running\n");

    let overlay = read_json(m.path("networks/overlay/info.json"));
    let nodes: Vec<&str> = overlay["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, vec!["kvm1", "kvm2"]);
    assert_eq!(overlay["bridge"], "vswitch02");
    assert_eq!(read(m.path("networks/default/status")), "active\n");
}

#[test]
fn stat_size_equals_bytes_read_for_every_file() {
    let m = Mounted::demo();
    let mut files = 0;
    let mut stack = vec![m.path("")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() {
                let data = std::fs::read(e.path()).unwrap();
                if e.path() == m.path("metrics/kvmfs.prom") {
                    // Live counters (this walk's own operations among them) move between
                    // the stat and the read: the length is the stat's moment's, give or
                    // take a few digits.
                    assert!(
                        meta.len().abs_diff(data.len() as u64) < 256 && !data.is_empty(),
                        "kvmfs.prom: stat {} vs read {}",
                        meta.len(),
                        data.len()
                    );
                } else {
                    assert_eq!(meta.len(), data.len() as u64, "{}", e.path().display());
                }
                if e.path().extension().is_some_and(|x| x == "json") {
                    serde_json::from_slice::<serde_json::Value>(&data)
                        .unwrap_or_else(|err| panic!("{}: {err}", e.path().display()));
                }
                files += 1;
            }
        }
    }
    assert!(files > 20, "walked only {files} files");
    // Plain tools agree.
    let out = Command::new("find").arg(m.path("")).output().unwrap();
    assert!(out.status.success());
    let out = Command::new("du")
        .arg("-s")
        .arg(m.path(""))
        .output()
        .unwrap();
    assert!(out.status.success());
    let copy = tempfile::tempdir().unwrap();
    let st = Command::new("cp")
        .arg("-r")
        .arg(m.path("nodes"))
        .arg(copy.path())
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(read(copy.path().join("nodes/kvm1/status")), "online\n");
}

#[test]
fn a_folder_of_many_entries_lists_each_once_with_its_attributes() {
    // 2,000 entries take dozens of READDIRPLUS replies: each must start where the last one
    // ended, so every name comes once, with the attributes of its own folder.
    let nodes = tempfile::tempdir().unwrap();
    let mut node = SimNode::new(64, 1 << 20);
    for i in 0..2000 {
        node = node.domain(&format!("vm{i:04}"), 1, 64, i % 2 == 0);
    }
    let uri = sim_node(nodes.path(), "big", &node);
    let m = Mounted::with_config(&format!("[[node]]\nname = 'big'\nuri = '{uri}'\n"));
    // On a loaded machine the node's first poll of 2,000 domains can miss its deadline: the
    // node then reads `offline: not read yet: …` until a later poll answers.
    wait_online(&m, &["big"]);
    let mut names = Vec::new();
    for e in std::fs::read_dir(m.path("instances")).unwrap() {
        let e = e.unwrap();
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        assert!(meta.is_dir(), "{}", e.path().display());
        names.push(e.file_name().into_string().unwrap());
    }
    let want: Vec<String> = (0..2000).map(|i| format!("vm{i:04}")).collect();
    assert_eq!(names, want);
    // `ls -l` through the kernel agrees: one line per instance plus the total.
    let out = Command::new("ls")
        .arg("-l")
        .arg(m.path("instances"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2001);
    assert_eq!(read(m.path("instances/vm1999/status")), "shutoff\n");
}

#[test]
fn read_only_files_and_folders_refuse_changes() {
    let m = Mounted::demo();
    let status = m.path("nodes/kvm1/status");
    let meta = std::fs::metadata(&status).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o444);
    assert_eq!(
        std::fs::metadata(m.path("instances")).unwrap().mode() & 0o7777,
        0o777
    );

    let e = OpenOptions::new().write(true).open(&status).unwrap_err();
    assert_eq!(errno(&e), libc::EACCES);
    let e = OpenOptions::new()
        .append(true)
        .open(m.path("instances/monitor/status"))
        .unwrap_err();
    assert_eq!(errno(&e), libc::EACCES);
    let e = File::create(m.path("instances/monitor/new-file")).unwrap_err();
    assert_eq!(errno(&e), libc::EACCES);
    let e = std::fs::create_dir(m.path("nodes/kvm9")).unwrap_err();
    assert_eq!(errno(&e), libc::EACCES);
    let e = std::fs::create_dir(m.path("networks/x")).unwrap_err();
    assert_eq!(errno(&e), libc::EACCES);
    let e = std::fs::remove_file(m.path("nodes/kvm1/info.json")).unwrap_err();
    assert_eq!(errno(&e), libc::EACCES);
    let e = std::fs::remove_dir(m.path("nodes/kvm1")).unwrap_err();
    assert!(matches!(errno(&e), libc::EACCES | libc::ENOTEMPTY), "{e}");
    let e = std::fs::set_permissions(&status, std::fs::Permissions::from_mode(0o666)).unwrap_err();
    assert_eq!(errno(&e), libc::EPERM);
    // The mode it already has is accepted (editors restore it after saving).
    std::fs::set_permissions(&status, std::fs::Permissions::from_mode(0o444)).unwrap();
    let e = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&status)
        .unwrap_err();
    assert_eq!(errno(&e), libc::EACCES);

    let e = std::fs::read_dir(&status).unwrap_err();
    assert_eq!(errno(&e), libc::ENOTDIR);
    let e = std::fs::read(m.path("nodes")).unwrap_err();
    assert_eq!(errno(&e), libc::EISDIR);
    let e = std::fs::metadata(m.path("instances/nope")).unwrap_err();
    assert_eq!(errno(&e), libc::ENOENT);
    let e = std::fs::metadata(m.path("nodes/kvm1/nope")).unwrap_err();
    assert_eq!(errno(&e), libc::ENOENT);
    // The daemon is still fine.
    assert_eq!(read(&status), "online\n");
}

#[test]
fn unmount_stops_the_daemon_cleanly() {
    let m = Mounted::demo();
    assert_eq!(read(m.path("nodes/kvm1/status")), "online\n");
    let mnt = m.mnt.path().to_path_buf();
    let status = m.unmount();
    assert!(status.success(), "daemon exit status {status}");
    assert!(!is_kvmfs_mount(&mnt));
}

#[test]
fn sigterm_unmounts_and_exits() {
    let m = Mounted::demo();
    let mnt = m.mnt.path().to_path_buf();
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(m.pid() as i32, libc::SIGTERM) };
    wait_for(Duration::from_secs(10), "the mount to go away", || {
        !is_kvmfs_mount(&mnt)
    });
    let log = m.log();
    assert!(log.contains("SIGTERM"), "{log}");
}

#[test]
fn background_mount_returns_once_mounted_and_exits_on_unmount() {
    let mnt = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let out = within(Duration::from_secs(60), "kvmfs mount", {
        let (mnt, state) = (mnt.path().to_path_buf(), state.path().to_path_buf());
        move || {
            Command::new(KVMFS)
                .arg("mount")
                .arg(&mnt)
                .arg("--state-dir")
                .arg(&state)
                .output()
                .unwrap()
        }
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It returned only once the mount answers.
    assert!(is_kvmfs_mount(mnt.path()));
    assert_eq!(list(mnt.path().join("nodes")), vec!["kvm1", "kvm2", "kvm3"]);
    let pids = || {
        let out = Command::new("pgrep")
            .arg("-f")
            .arg(format!("kvmfs mount {} ", mnt.path().display()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert!(!pids().is_empty(), "no daemon process");
    assert!(
        Command::new("fusermount3")
            .arg("-u")
            .arg(mnt.path())
            .status()
            .unwrap()
            .success()
    );
    wait_for(Duration::from_secs(10), "the daemon to exit", || {
        // A reaped or zombie process no longer matches a live cmdline.
        pids().split_whitespace().all(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
        })
    });
    assert!(
        std::fs::read_to_string(state.path().join("kvmfs.log"))
            .unwrap()
            .contains("mounted")
    );
}

fn mount_cmd(mnt: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let state = tempfile::tempdir().unwrap();
    Command::new(KVMFS)
        .arg("mount")
        .arg(mnt)
        .arg("--state-dir")
        .arg(state.path())
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn mount_errors_are_clear_and_immediate() {
    let tmp = tempfile::tempdir().unwrap();
    let out = mount_cmd(&tmp.path().join("missing"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));

    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let out = mount_cmd(&file, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));

    let m = Mounted::demo();
    let out = mount_cmd(m.mnt.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("busy"),
        "{out:?}"
    );
    assert_eq!(read(m.path("nodes/kvm1/status")), "online\n");

    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[node]]\nname = 'Bad Name'\nuri = 'test:///default'\n",
    )
    .unwrap();
    let dir = tmp.path().join("mnt");
    std::fs::create_dir(&dir).unwrap();
    let out = mount_cmd(&dir, &["--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("lowercase"),
        "{err}"
    );

    // An unreachable database fails the mount with the reason, not a hang.
    let nodes = tempfile::tempdir().unwrap();
    let uri = sim_node(nodes.path(), "a", &SimNode::new(2, 4096));
    let cfg = tmp.path().join("nodb.toml");
    let port = free_port();
    std::fs::write(
        &cfg,
        format!(
            "[database]\nurl = 'mysql://u:secretpw@127.0.0.1:{port}/x'\n\
             [[node]]\nname = 'a'\nuri = '{uri}'\n"
        ),
    )
    .unwrap();
    // Private, as a file holding a password must be.
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = within(
        Duration::from_secs(30),
        "mount with a dead database",
        move || mount_cmd(&dir, &["--config", cfg.to_str().unwrap()]),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("database"), "{err}");
    assert!(!err.contains("secretpw"), "password leaked: {err}");
}

#[test]
fn mariadb_config_registers_hosts_and_reads_vm_rows() {
    let db = MariaDb::start();
    let nodes = tempfile::tempdir().unwrap();
    let a = sim_node(
        nodes.path(),
        "kvm-a",
        &SimNode::new(4, 4096).domain("old-web", 1, 1024, true),
    );
    let b = sim_node(nodes.path(), "kvm-b", &SimNode::new(2, 4096));
    let m = Mounted::with_config(&format!(
        "[database]\nurl = '{}'\n\
         [timing]\nrefresh_ms = 200\nfull_poll_ms = 2000\n\
         [[node]]\nname = 'kvm-a'\nuri = '{a}'\nip = '10.0.0.11'\n\
         [[node]]\nname = 'kvm-b'\nuri = '{b}'\n",
        db.url()
    ));
    assert_eq!(list(m.path("nodes")), vec!["kvm-a", "kvm-b"]);
    assert_eq!(
        db.sql("SELECT hostname, ip FROM kvmfs.host ORDER BY hostname"),
        "kvm-a\t10.0.0.11\nkvm-b\tlocalhost\n"
    );
    assert_eq!(read(m.path("instances/old-web/status")), "running\n");
    assert_eq!(
        read_json(m.path("instances/old-web/info.json"))["managed"],
        false
    );

    // The original system's own insert still works, and the row shows up live.
    db.sql(
        "INSERT INTO kvmfs.vm (vmname, hostname, vmip, ram, ip_eth1) \
         VALUES ('old-web', 'kvm-a', '211.183.3.7', 1024, '172.16.123.7')",
    );
    wait_for(Duration::from_secs(5), "the vm row to appear", || {
        read_json(m.path("instances/old-web/info.json"))["managed"] == true
    });
    assert_eq!(
        read(m.path("instances/old-web/ip")),
        "211.183.3.7\n172.16.123.7\n"
    );
    assert_eq!(
        db.sql("SELECT vmname, hostname, vmip, ram, ip_eth1 FROM kvmfs.vm"),
        "old-web\tkvm-a\t211.183.3.7\t1024\t172.16.123.7\n"
    );
    // An update by hand moves no stamp of kvmfs's: it shows at the next whole read, at most
    // `full_poll_ms` (2 s here) later.
    db.sql("UPDATE kvmfs.vm SET vmip = '211.183.3.8' WHERE vmname = 'old-web'");
    wait_for(Duration::from_secs(5), "the changed row to show", || {
        read(m.path("instances/old-web/ip")) == "211.183.3.8\n172.16.123.7\n"
    });
    // The migration table says what ran.
    assert!(
        db.sql("SELECT version FROM kvmfs._sqlx_migrations")
            .contains('1')
    );
    let st = m.unmount();
    assert!(st.success());
}

#[test]
fn a_node_that_never_answers_reads_offline_and_blocks_nothing() {
    let silent = SilentServer::start();
    let nodes = tempfile::tempdir().unwrap();
    let ok = sim_node(
        nodes.path(),
        "ok",
        &SimNode::new(2, 4096).domain("vm1", 1, 512, true),
    );
    let cfg = format!(
        "[timing]\nrefresh_ms = 200\nlibvirt_timeout_ms = 800\n\
         [[node]]\nname = 'ok'\nuri = '{ok}'\n\
         [[node]]\nname = 'stuck'\nuri = 'qemu+tcp://127.0.0.1:{}/system'\n",
        silent.port
    );
    let m = within(
        Duration::from_secs(30),
        "mounting with a silent node",
        move || Mounted::with_config(&cfg),
    );
    let root = m.mnt.path().to_path_buf();
    // Every read keeps answering while the node stays silent, again and again.
    for _ in 0..5 {
        let r = root.clone();
        let (status, ok_status, names) = within(Duration::from_secs(5), "reads", move || {
            (
                read(r.join("nodes/stuck/status")),
                read(r.join("nodes/ok/status")),
                list(r.join("instances")),
            )
        });
        assert!(status.starts_with("offline: "), "{status}");
        assert_eq!(ok_status, "online\n");
        assert_eq!(names, vec!["vm1"]);
        std::thread::sleep(Duration::from_millis(300));
    }
    let info = read_json(m.path("nodes/stuck/info.json"));
    assert_eq!(info["online"], false);
    assert_eq!(info["score"], 0.0);
    assert!(
        info["last_error"].as_str().unwrap().contains("no answer"),
        "{info}"
    );
    let st = within(
        Duration::from_secs(15),
        "unmount with a stuck call",
        move || m.unmount(),
    );
    assert!(st.success());
}

#[test]
fn a_node_that_comes_back_reads_online_again() {
    let nodes = tempfile::tempdir().unwrap();
    let ok = sim_node(nodes.path(), "ok", &SimNode::new(2, 4096));
    let later = nodes.path().join("later.xml");
    let cfg = format!(
        "[timing]\nrefresh_ms = 200\n\
         [[node]]\nname = 'ok'\nuri = '{ok}'\n\
         [[node]]\nname = 'later'\nuri = 'test://{}'\n",
        later.display()
    );
    let m = Mounted::with_config(&cfg);
    let status = read(m.path("nodes/later/status"));
    assert!(status.starts_with("offline: "), "{status}");
    SimNode::new(8, 8192)
        .domain("back", 1, 256, true)
        .write(&later)
        .unwrap();
    wait_for(Duration::from_secs(10), "the node to come back", || {
        read(m.path("nodes/later/status")) == "online\n"
    });
    assert_eq!(read_json(m.path("nodes/later/info.json"))["cpus"], 8);
    assert_eq!(read(m.path("instances/back/node")), "later\n");
}
