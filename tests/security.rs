//! Security through the kernel: instances belong to the uid that made them (checked with
//! real second and third local users on an `--allow-other` mount), a config file holding a
//! password must be private, and audits of the code: SQL only with bound parameters, only
//! known programs started, no default passwords.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::users::{Op, User, as_user};
use common::*;

fn wait_status(m: &Mounted, name: &str, prefix: &str) {
    let p = m.path(&format!("instances/{name}/status"));
    wait_for(
        Duration::from_secs(20),
        &format!("{name} to be {prefix}"),
        || std::fs::read_to_string(&p).is_ok_and(|s| s.starts_with(prefix)),
    );
}

#[test]
fn instances_belong_to_their_creator_and_others_only_look() {
    let db = MariaDb::start();
    let nodes = tempfile::tempdir().unwrap();
    let n1 = sim_node(nodes.path(), "n1", &SimNode::new(16, 32768));
    let m = Mounted::with_config_args(
        &format!(
            "[database]\nurl = '{}'\n[timing]\nrefresh_ms = 200\n\
             [[node]]\nname = 'n1'\nuri = '{n1}'\n",
            db.url()
        ),
        &["--allow-other"],
    );
    let alice = User::create("a");
    let bob = User::create("b");
    let p = |rel: &str| -> PathBuf { m.path(rel) };
    const SPEC: &str = r#"{"flavor":"m1.small"}"#;

    // Alice makes and builds an instance, and a draft; both are hers.
    assert_eq!(as_user(&alice, Op::Mkdir(&p("instances/ali"))), 0);
    assert_eq!(as_user(&alice, Op::Mkdir(&p("instances/ali2"))), 0);
    assert_eq!(
        std::fs::metadata(p("instances/ali")).unwrap().uid(),
        alice.uid
    );
    assert_eq!(
        db.sql("SELECT vmname, owner_uid FROM kvmfs.vm ORDER BY vmname"),
        format!("ali\t{0}\nali2\t{0}\n", alice.uid)
    );
    assert_eq!(
        as_user(&alice, Op::Write(&p("instances/ali/spec.json"), SPEC)),
        0
    );
    wait_status(&m, "ali", "running");
    assert_eq!(as_user(&alice, Op::Read(&p("instances/ali/ssh_key"))), 0);
    // Root makes one too.
    std::fs::create_dir(p("instances/rooty")).unwrap();

    // Bob may list and read what is public…
    for dir in ["instances", "instances/ali", "instances/rooty"] {
        assert_eq!(as_user(&bob, Op::List(&p(dir))), 0, "{dir}");
    }
    for f in [
        "status",
        "info.json",
        "node",
        "ip",
        "error",
        "spec.json",
        "ctl",
    ] {
        assert_eq!(
            as_user(&bob, Op::Read(&p(&format!("instances/ali/{f}")))),
            0,
            "{f}"
        );
    }
    // …but not the key, and he changes nothing of Alice's or root's.
    let eacces = libc::EACCES;
    assert_eq!(as_user(&bob, Op::Read(&p("instances/ali/ssh_key"))), eacces);
    assert_eq!(
        as_user(&bob, Op::Write(&p("instances/ali/ctl"), "destroy")),
        eacces
    );
    assert_eq!(
        as_user(&bob, Op::Write(&p("instances/ali2/spec.json"), SPEC)),
        eacces
    );
    assert_eq!(
        as_user(&bob, Op::Write(&p("instances/rooty/spec.json"), SPEC)),
        eacces
    );
    assert_eq!(as_user(&bob, Op::Rmdir(&p("instances/ali"))), eacces);
    assert_eq!(as_user(&bob, Op::Rmdir(&p("instances/ali2"))), eacces);
    assert_eq!(as_user(&bob, Op::Rmdir(&p("instances/rooty"))), eacces);
    assert_eq!(
        as_user(&bob, Op::Create(&p("instances/ali2/x.swp"))),
        eacces
    );
    assert_eq!(as_user(&alice, Op::Rmdir(&p("instances/rooty"))), eacces);
    assert_eq!(
        as_user(&alice, Op::Write(&p("instances/rooty/ctl"), "start")),
        eacces
    );
    // Nothing changed, and nobody's error file holds Bob's attempts.
    assert!(read(p("instances/ali/status")).starts_with("running"));
    assert_eq!(
        db.sql("SELECT vmname, state FROM kvmfs.vm ORDER BY vmname"),
        "ali\tready\nali2\tdraft\nrooty\tdraft\n"
    );
    assert_eq!(read(p("instances/ali/error")), "");
    // Bob may make his own.
    assert_eq!(as_user(&bob, Op::Mkdir(&p("instances/bobs"))), 0);
    assert_eq!(
        as_user(&bob, Op::Write(&p("instances/bobs/spec.json"), SPEC)),
        0
    );
    wait_status(&m, "bobs", "running");
    assert_eq!(
        as_user(&alice, Op::Read(&p("instances/bobs/ssh_key"))),
        eacces
    );

    // Root may do all of it.
    assert!(read(p("instances/ali/ssh_key")).contains("OPENSSH PRIVATE KEY"));
    std::fs::write(p("instances/ali/ctl"), "destroy").unwrap();
    wait_status(&m, "ali", "shutoff");
    std::fs::write(p("instances/ali2/spec.json"), SPEC).unwrap();
    wait_status(&m, "ali2", "running");
    std::fs::remove_dir(p("instances/bobs")).unwrap();
    // The owners may delete their own.
    assert_eq!(as_user(&alice, Op::Rmdir(&p("instances/ali"))), 0);
    // Without --allow-other, nobody but the mount's owner gets in at all.
    let private = Mounted::demo();
    assert_eq!(as_user(&bob, Op::List(&private.path("instances"))), eacces);
    assert_eq!(
        db.sql("SELECT vmname, state, owner_uid FROM kvmfs.vm ORDER BY vmname"),
        format!("ali2\tready\t{}\nrooty\tdraft\t0\n", alice.uid)
    );
}

/// `kvmfs mount` in the background, as a user runs it; returns (exit code, stderr).
fn mount_cmd(mnt: &Path, config: &Path) -> (Option<i32>, String) {
    let out = Command::new(KVMFS)
        .arg("mount")
        .arg(mnt)
        .arg("--config")
        .arg(config)
        .arg("--state-dir")
        .arg(mnt.parent().unwrap().join("state"))
        .output()
        .expect("run kvmfs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_config_file_holding_a_password_must_be_private() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let nodes = tempfile::tempdir().unwrap();
    let uri = sim_node(nodes.path(), "a", &SimNode::new(2, 4096));
    let cfg = tmp.path().join("kvmfs.toml");
    let port = free_port();
    std::fs::write(
        &cfg,
        format!(
            "[database]\nurl = 'mysql://kvmfs:hunter2pw@127.0.0.1:{port}/kvmfs'\n\
             [[node]]\nname = 'a'\nuri = '{uri}'\n"
        ),
    )
    .unwrap();
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(mode)).unwrap();
        let (code, err) = mount_cmd(&mnt, &cfg);
        assert_eq!(code, Some(1), "{mode:o}: {err}");
        assert!(
            err.contains("holds a database password")
                && err.contains("other users can read it")
                && err.contains("chmod 600"),
            "{mode:o}: {err}"
        );
        assert!(!err.contains("hunter2pw"), "the password leaked: {err}");
        assert!(!is_kvmfs_mount(&mnt));
    }
    // A private file passes this check (and then fails on the dead database, in time).
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, err) = within(Duration::from_secs(30), "mount", {
        let (mnt, cfg) = (mnt.clone(), cfg.clone());
        move || mount_cmd(&mnt, &cfg)
    });
    assert_eq!(code, Some(1), "{err}");
    assert!(!err.contains("password"), "{err}");
    assert!(err.contains("database"), "{err}");
    assert!(!err.contains("hunter2pw"), "the password leaked: {err}");
}

/// Every Rust file under `dir`, with its text.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                out.push((p, text));
            }
        }
    }
    out.sort();
    out
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn sql_is_only_in_the_db_layer_and_always_parameterized() {
    let mut statements = 0;
    for (path, text) in sources(&root().join("src")) {
        let in_db = path.starts_with(root().join("src/db"));
        assert!(
            in_db || !(text.contains("sqlx::") || text.contains("use sqlx")),
            "{} uses sqlx outside the db layer",
            path.display()
        );
        // Every statement is a string literal (or the literal-only `select_vm!`), so no
        // value can be spliced into SQL: values go through `.bind`.
        // The one exception is `Db::stamp_vm`, which takes its statement as a
        // `&'static str`; every call of it must then pass a literal.
        let stamp = path.ends_with("src/db/vm.rs")
            && text
                .contains("sql: &'static str,\n        bind: impl FnOnce(AnyQuery) -> AnyQuery,");
        for (i, _) in text.match_indices("sqlx::query(") {
            let arg = text[i + "sqlx::query(".len()..].trim_start();
            assert!(
                arg.starts_with('"')
                    || arg.starts_with("select_vm!(\"")
                    || (stamp && arg.starts_with("sql).bind(rev)")),
                "{}: a statement that is not a literal: {}",
                path.display(),
                &arg[..arg.len().min(80)]
            );
            statements += 1;
        }
        for (i, _) in text.match_indices("stamp_vm(") {
            let arg = text[i + "stamp_vm(".len()..].trim_start();
            assert!(
                arg.starts_with('"') || arg.starts_with("&self,"),
                "{}: stamp_vm with a statement that is not a literal: {}",
                path.display(),
                &arg[..arg.len().min(80)]
            );
        }
        assert!(
            !text.contains("query_with(") && !text.contains("raw_sql("),
            "{}: unchecked SQL entry point",
            path.display()
        );
    }
    assert!(
        statements > 20,
        "the audit found only {statements} statements"
    );
}

#[test]
fn only_known_programs_are_started_and_user_values_come_after_a_double_dash() {
    // Each program kvmfs runs, where, and why no user input can be read as an option:
    // - fusermount3: the mountpoint, after `--`;
    // - the kvmfs executable itself (the background daemon): paths it resolved itself;
    // - git: the URL after `--`, and `GitUrl` refuses a leading `-` and `::` helpers;
    // - bash (`kvmfs menu`): the script the binary carries, with the mountpoint as `$1`
    //   (after `-c SCRIPT NAME`, so never read as an option);
    // - qemu-img (the shared storage, `storage::nfs`): fixed subcommands and options, then
    //   `--`, then `nfs://` URLs composed from the validated `[storage]` host and export and
    //   file names `storage::check_name` accepts (no `/`, no leading `-` or `.`), and the
    //   path of kvmfs's own temporary file; the backing URL is composed the same way.
    let allowed = [
        ("src/menu.rs", "Command::new(\"bash\")"),
        ("src/mount.rs", "Command::new(\"fusermount3\")"),
        ("src/mount.rs", "Command::new(exe)"),
        ("src/cluster/actions/build.rs", "Command::new(\"git\")"),
        ("src/storage/nfs.rs", "Command::new(\"qemu-img\")"),
    ];
    let mut found = Vec::new();
    for (path, text) in sources(&root().join("src")) {
        let rel = path
            .strip_prefix(root())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        // What the daemon runs; unit tests (`mod tests`, not built into it) may run tools.
        let shipped = text.split("\n#[cfg(test)]\nmod tests").next().unwrap_or("");
        for (i, _) in shipped.match_indices("Command::new(") {
            let call: String = shipped[i..].chars().take_while(|c| *c != '\n').collect();
            let call = call.split_inclusive(')').next().unwrap_or("").to_string();
            assert!(
                allowed.iter().any(|(f, c)| *f == rel && *c == call),
                "{rel}: a new program is started ({call}); audit it and add it here"
            );
            found.push((rel.clone(), call));
        }
    }
    assert_eq!(found.len(), allowed.len(), "{found:?}");
    let actions = std::fs::read_to_string(root().join("src/cluster/actions/build.rs")).unwrap();
    assert!(actions.contains(
        r#""--exit-code",
            "--",
            url,"#
    ));
    let menu = std::fs::read_to_string(root().join("src/menu.rs")).unwrap();
    assert!(menu.contains(
        ".arg(\"-c\")\n        .arg(SCRIPT)\n        .arg(\"kvmfs-menu\")\n        .arg(&mp)"
    ));
    let nfs = std::fs::read_to_string(root().join("src/storage/nfs.rs")).unwrap();
    assert!(nfs.contains(".args(args)\n            .arg(\"--\")\n            .args(files)"));
    assert!(nfs.contains("check_name(name)?;\n            check_name(base)?;"));
    let mount = std::fs::read_to_string(root().join("src/mount.rs")).unwrap();
    assert!(mount.contains(".arg(\"--\")\n        .arg(mountpoint)"));
}

#[test]
fn no_default_passwords_anywhere() {
    // Spelt in pieces so that this file does not match itself.
    let original = ["test", "123"].concat();
    let needles = [
        original.as_str(),
        "chpasswd",
        "plain_text_passwd",
        "lock_passwd: false",
        "ssh_pwauth: true",
        "IDENTIFIED BY",
    ];
    let mut files = Vec::new();
    for dir in ["src", "migrations", "scripts", "docs"] {
        let mut stack = vec![root().join(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    files.push(p);
                }
            }
        }
    }
    files.extend(["README.md", "Cargo.toml"].map(|f| root().join(f)));
    for f in &files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for n in needles {
            assert!(!text.contains(n), "{} contains {n:?}", f.display());
        }
    }
    assert!(files.len() > 20);
}
