//! The mount as shell habits and file managers expect, with the real tools: `rm -r`,
//! `rm -rf`, `find -delete`, Midnight Commander (under tmux: F7, F5, F8) and `gio` delete
//! and copy instances as `rmdir` and `spec.json` do; `rm` of one file deletes nothing; a
//! line in an fstab mounts kvmfs with `mount`; the systemd unit verifies.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::tmux::Tmux;
use common::users::User;
use common::*;

const SPEC: &str = r#"{"flavor":"m1.small"}"#;

/// One node with room, the default image, and a domain kvmfs did not make (`alien`).
fn mounted(args: &[&str]) -> (tempfile::TempDir, Mounted) {
    let nodes = tempfile::tempdir().unwrap();
    let n1 = sim_node(
        nodes.path(),
        "n1",
        &SimNode::new(16, 32768).domain("alien", 1, 512, true),
    );
    let m = Mounted::with_config_args(
        &format!("[timing]\nrefresh_ms = 200\n[[node]]\nname = 'n1'\nuri = '{n1}'\n"),
        args,
    );
    wait_online(&m, &["n1"]);
    (nodes, m)
}

fn built(m: &Mounted, name: &str) {
    std::fs::create_dir(m.path(&format!("instances/{name}"))).unwrap();
    write_spec(m, name, SPEC).unwrap();
    wait_status(m, name, "running");
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn ok(out: &Output) -> bool {
    out.status.success()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Checks that instance `name` is gone with everything kvmfs made for it: not listed (not
/// even as a domain kvmfs does not manage), and neither of its volumes in the pool.
fn gone(m: &Mounted, name: &str) {
    wait_for(
        std::time::Duration::from_secs(30),
        &format!("{name} to be gone"),
        || !list(m.path("instances")).contains(&name.to_string()),
    );
    let pool = read_json(m.path("nodes/n1/info.json"))["pool_volumes"].to_string();
    assert!(
        !pool.contains(&format!("\"{name}.")),
        "{name} left volumes: {pool}"
    );
}

#[test]
fn rm_rf_find_delete_and_gio_remove_delete_an_instance_like_rmdir() {
    let (_nodes, m) = mounted(&[]);
    for n in ["r1", "r2", "r3", "r4", "keep"] {
        built(&m, n);
    }
    let ip_r1 = read(m.path("instances/r1/ip"));

    // rm of one file: success, and nothing changes.
    let keep = m.path("instances/keep");
    for f in ["status", "spec.json", "ssh_key", "ctl"] {
        let out = run(Command::new("rm").arg("-f").arg(keep.join(f)));
        assert!(ok(&out), "rm {f}: {}", text(&out));
        assert!(keep.join(f).exists(), "{f} is still there");
    }
    assert!(read(keep.join("status")).starts_with("running"));
    assert_eq!(read(keep.join("spec.json")), SPEC);
    let out = run(Command::new("rm").arg(keep.join("no-such-file")));
    assert!(
        !ok(&out) && text(&out).contains("No such file"),
        "{}",
        text(&out)
    );

    let out = run(Command::new("rm").arg("-rf").arg(m.path("instances/r1")));
    assert!(ok(&out), "rm -rf: {}", text(&out));
    gone(&m, "r1");
    // Its address is free again: the next instance takes it.
    built(&m, "again");
    assert_eq!(read(m.path("instances/again/ip")), ip_r1);

    // rm -r without -f (no terminal, so no questions).
    let out = run(Command::new("rm").arg("-r").arg(m.path("instances/r2")));
    assert!(ok(&out), "rm -r: {}", text(&out));
    gone(&m, "r2");

    let out = run(Command::new("find")
        .arg(m.path("instances/r3"))
        .arg("-delete"));
    assert!(ok(&out), "find -delete: {}", text(&out));
    gone(&m, "r3");

    let out = run(Command::new("gio")
        .arg("remove")
        .arg(m.path("instances/r4")));
    assert!(ok(&out), "gio remove: {}", text(&out));
    gone(&m, "r4");

    // A domain kvmfs did not make is not deleted, and rm says so.
    let out = run(Command::new("rm").arg("-rf").arg(m.path("instances/alien")));
    assert!(
        !ok(&out) && text(&out).contains("Permission denied"),
        "{}",
        text(&out)
    );
    assert!(read(m.path("instances/alien/status")).starts_with("running"));
    // Nothing else was touched.
    assert!(read(keep.join("status")).starts_with("running"));
}

#[test]
fn another_users_rm_rf_deletes_nothing() {
    let (_nodes, m) = mounted(&["--allow-other"]);
    let alice = User::create("rma");
    let bob = User::create("rmb");
    let as_ = |u: &User, args: &[&str], path: &Path| -> Output {
        run(Command::new("setpriv")
            .arg(format!("--reuid={}", u.uid))
            .arg(format!("--regid={}", u.gid))
            .arg("--clear-groups")
            .args(args)
            .arg(path))
    };
    let dir = m.path("instances/hers");
    let out = as_(&alice, &["mkdir"], &dir);
    assert!(ok(&out), "{}", text(&out));
    let out = run(Command::new("setpriv")
        .arg(format!("--reuid={}", alice.uid))
        .arg(format!("--regid={}", alice.gid))
        .arg("--clear-groups")
        .args(["sh", "-c"])
        .arg(format!(
            "printf '%s' '{SPEC}' > {}/spec.json",
            dir.display()
        )));
    assert!(ok(&out), "{}", text(&out));
    wait_status(&m, "hers", "running");

    let out = as_(&bob, &["rm", "-rf"], &dir);
    assert!(
        !ok(&out) && text(&out).contains("Permission denied"),
        "{}",
        text(&out)
    );
    let out = as_(&bob, &["rm", "-f"], &dir.join("status"));
    assert!(!ok(&out), "{}", text(&out));
    let out = run(Command::new("setpriv")
        .arg(format!("--reuid={}", bob.uid))
        .arg(format!("--regid={}", bob.gid))
        .arg("--clear-groups")
        .arg("find")
        .arg(&dir)
        .arg("-delete"));
    assert!(!ok(&out), "{}", text(&out));
    assert!(read(dir.join("status")).starts_with("running"));
    assert!(dir.join("spec.json").exists());

    // Hers to delete.
    let out = as_(&alice, &["rm", "-rf"], &dir);
    assert!(ok(&out), "{}", text(&out));
    gone(&m, "hers");
}

#[test]
fn midnight_commander_makes_copies_into_and_deletes_instance_folders() {
    let (_nodes, m) = mounted(&[]);
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("spec.json"), SPEC).unwrap();
    let home = tempfile::tempdir().unwrap();
    let mc = Tmux::start(
        &format!(
            "mc -u --nocolor {} {}",
            src.path().display(),
            m.path("instances").display()
        ),
        src.path(),
        &[("HOME", home.path().to_str().unwrap())],
        140,
        40,
    );
    mc.wait_for("spec.json");
    // F7 in the right panel makes the folder.
    mc.keys(&["Tab", "F7"]);
    mc.wait_for("Create a new Directory");
    mc.type_text("mc1");
    mc.keys(&["Enter"]);
    wait_for(std::time::Duration::from_secs(30), "mkdir from mc", || {
        m.path("instances/mc1/status").exists()
    });
    // Into it, and F5 from the left panel copies spec.json there (over the empty one).
    mc.wait_for("/mc1");
    mc.keys(&["C-s"]);
    mc.type_text("mc1");
    mc.keys(&["Enter"]);
    mc.wait_for("instances/mc1");
    mc.keys(&["Tab", "Down", "F5"]);
    mc.wait_for("Copy file \"spec.json\"");
    mc.keys(&["Enter"]);
    mc.wait_for("Overwrite this file?");
    mc.keys(&["Enter"]);
    wait_status(&m, "mc1", "running");
    assert_eq!(read(m.path("instances/mc1/spec.json")), SPEC);
    // The copy ends without an error (mc sets the source's mode, which kvmfs accepts).
    let s = mc.wait_until("the copy to end", |s| !s.contains("Overwrite"));
    assert!(!s.contains("Error") && !s.contains("Cannot"), "{s}");

    // F8 on the folder deletes the instance, files and all.
    mc.keys(&["Tab", "Home", "Enter"]);
    mc.wait_until("the right panel to show the instances", |s| {
        s.contains("/mc1") && s.contains("/alien")
    });
    mc.keys(&["C-s"]);
    mc.type_text("mc1");
    mc.keys(&["F8"]);
    mc.wait_for("Delete directory");
    mc.keys(&["Enter"]);
    mc.wait_for("Delete it recursively?");
    mc.keys(&["Enter"]);
    gone(&m, "mc1");
    let s = mc.wait_until("the delete to end", |s| !s.contains("recursively"));
    assert!(!s.contains("Error") && !s.contains("Cannot"), "{s}");
    mc.keys(&["F10"]);
    assert_eq!(mc.wait_exit(), 0);
}

#[test]
fn gio_saves_and_copies_specs_and_trash_is_refused_clearly() {
    let (_nodes, m) = mounted(&[]);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("spec.json");
    std::fs::write(&file, SPEC).unwrap();

    std::fs::create_dir(m.path("instances/g1")).unwrap();
    let out = run(Command::new("sh").arg("-c").arg(format!(
        "gio save {} < {}",
        m.path("instances/g1/spec.json").display(),
        file.display()
    )));
    assert!(ok(&out), "gio save: {}", text(&out));
    wait_status(&m, "g1", "running");

    std::fs::create_dir(m.path("instances/g2")).unwrap();
    let out = run(Command::new("gio")
        .arg("copy")
        .arg(&file)
        .arg(m.path("instances/g2/spec.json")));
    assert!(ok(&out), "gio copy: {}", text(&out));
    wait_status(&m, "g2", "running");
    assert_eq!(read(m.path("instances/g2/spec.json")), SPEC);

    let out = run(Command::new("gio").arg("trash").arg(m.path("instances/g2")));
    assert!(!ok(&out), "gio trash: {}", text(&out));
    assert!(text(&out).contains("trash"), "{}", text(&out));
    assert!(read(m.path("instances/g2/status")).starts_with("running"));

    let out = run(Command::new("gio")
        .arg("remove")
        .arg(m.path("instances/g2/status")));
    assert!(ok(&out), "gio remove of a file: {}", text(&out));
    assert!(read(m.path("instances/g2/status")).starts_with("running"));
}

/// A private mount namespace in which `/usr/local/bin` holds only kvmfs: `mount(8)` runs
/// helpers with a fixed PATH, so this is where an installed kvmfs is found.
fn in_namespace_with_kvmfs(script: &str) -> Output {
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(KVMFS, bin.path().join("kvmfs")).unwrap();
    run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-ec"])
        .arg(format!(
            "mount --bind {} /usr/local/bin\n{script}",
            bin.path().display()
        )))
}

#[test]
fn an_fstab_line_mounts_kvmfs_with_mount() {
    let nodes = tempfile::tempdir().unwrap();
    let n1 = sim_node(nodes.path(), "n1", &SimNode::new(4, 8192));
    let dir = tempfile::tempdir().unwrap();
    let (mp, state, cfg) = (
        dir.path().join("cloud"),
        dir.path().join("state"),
        dir.path().join("kvmfs.toml"),
    );
    std::fs::create_dir(&mp).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "state_dir = '{}'\n[[node]]\nname = 'n1'\nuri = '{n1}'\n",
            state.display()
        ),
    )
    .unwrap();
    let fstab = dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# kvmfs at boot, as sshfs users write it\n\
             kvmfs {} fuse.kvmfs config={},allow_other,noauto,_netdev,x-systemd.automount 0 0\n",
            mp.display(),
            cfg.display()
        ),
    )
    .unwrap();
    let out = in_namespace_with_kvmfs(&format!(
        "mount --fstab {fstab} {mp}\n\
         grep -F ' {mp} ' /proc/self/mountinfo\n\
         cat {mp}/status\n\
         ls {mp}/nodes\n\
         if mount --fstab {fstab} {mp} 2>&1; then echo MOUNTED-TWICE; fi\n\
         umount {mp}\n\
         if grep -qF ' {mp} ' /proc/self/mountinfo; then echo STILL-MOUNTED; fi\n",
        fstab = fstab.display(),
        mp = mp.display()
    ));
    let t = text(&out);
    assert!(ok(&out), "{t}");
    assert!(
        t.contains("fuse.kvmfs kvmfs") || t.contains(" - fuse kvmfs"),
        "{t}"
    );
    assert!(t.contains("allow_other"), "{t}");
    assert!(t.contains("ok\n") && t.contains("n1\n"), "{t}");
    assert!(t.contains("is busy"), "a second mount says why: {t}");
    assert!(
        !t.contains("MOUNTED-TWICE") && !t.contains("STILL-MOUNTED"),
        "{t}"
    );
    // The daemon, backgrounded by mount, logged to its state dir and ended with the mount.
    let log = read(state.join("kvmfs.log"));
    assert!(log.contains("mounted"), "{log}");
    wait_for(
        std::time::Duration::from_secs(30),
        "the daemon to end",
        || {
            !Command::new("pgrep")
                .arg("-f")
                .arg(format!("--config {}", cfg.display()))
                .status()
                .unwrap()
                .success()
        },
    );

    // A bad option is refused by kvmfs with the reason, through mount.
    std::fs::write(
        &fstab,
        format!("kvmfs {} fuse.kvmfs colour=red 0 0\n", mp.display()),
    )
    .unwrap();
    let out = in_namespace_with_kvmfs(&format!(
        "mount --fstab {} {} 2>&1 || echo REFUSED",
        fstab.display(),
        mp.display()
    ));
    let t = text(&out);
    assert!(
        t.contains("unknown option colour") && t.contains("REFUSED"),
        "{t}"
    );
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/mount/kvmfs.service");
    let out = in_namespace_with_kvmfs(&format!("systemd-analyze verify {unit}"));
    assert!(ok(&out), "{}", text(&out));
    assert!(!text(&out).contains("kvmfs.service:"), "{}", text(&out));
}
