//! Bad input through the kernel, from the corpus in `tests/corpus/` (see its README): every
//! malformed spec, bad name and unknown `ctl` command gets its documented errno and a
//! readable reason, the daemon stays up, and nothing is created — checked through the mount
//! and in the database.

mod common;

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::os::fd::IntoRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

fn errno_named(name: &str) -> i32 {
    match name {
        "OK" => 0,
        "EINVAL" => libc::EINVAL,
        "ENOSPC" => libc::ENOSPC,
        "EFBIG" => libc::EFBIG,
        "EEXIST" => libc::EEXIST,
        "ENAMETOOLONG" => libc::ENAMETOOLONG,
        "EBUSY" => libc::EBUSY,
        other => panic!("the corpus names an errno this test does not know: {other}"),
    }
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// (case, errno, body, why) for every spec of the corpus.
fn spec_cases() -> Vec<(String, i32, Vec<u8>, String)> {
    let mut cases = Vec::new();
    for dir in std::fs::read_dir(corpus().join("specs")).unwrap() {
        let dir = dir.unwrap().path();
        let errno = errno_named(&dir.file_name().unwrap().to_string_lossy());
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "json") {
                let why = std::fs::read_to_string(f.with_extension("why"))
                    .unwrap_or_else(|_| panic!("{} has no .why", f.display()));
                let case = format!(
                    "{}/{}",
                    dir.file_name().unwrap().to_string_lossy(),
                    f.file_stem().unwrap().to_string_lossy()
                );
                cases.push((
                    case,
                    errno,
                    std::fs::read(&f).unwrap(),
                    why.trim_end().to_string(),
                ));
            }
        }
    }
    cases.sort();
    cases
}

/// Opens `path` for writing, writes all of `body` and closes it, the way a program saving
/// a file does; returns 0 or the first errno (of the open, a write, or the close).
fn write_and_close(path: &Path, body: &[u8]) -> i32 {
    let f = match OpenOptions::new().write(true).truncate(true).open(path) {
        Ok(f) => f,
        Err(e) => return errno(&e),
    };
    let fd = f.into_raw_fd();
    let mut done = 0;
    // SAFETY: `fd` is open and owned here; the buffer outlives every call.
    unsafe {
        while done < body.len() {
            let n = libc::write(fd, body[done..].as_ptr().cast(), body.len() - done);
            if n <= 0 {
                let e = *libc::__errno_location();
                libc::close(fd);
                return e;
            }
            done += n as usize;
        }
        if libc::close(fd) != 0 {
            return *libc::__errno_location();
        }
    }
    0
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

#[test]
fn the_corpus_is_refused_with_errnos_and_reasons_and_nothing_is_made() {
    let db = MariaDb::start();
    let nodes = tempfile::tempdir().unwrap();
    let n1 = sim_node(nodes.path(), "n1", &SimNode::new(4, 8192));
    let m = Mounted::with_config(&format!(
        "[database]\nurl = '{}'\n[timing]\nrefresh_ms = 200\n[[node]]\nname = 'n1'\nuri = '{n1}'\n",
        db.url()
    ));
    let pid = m.pid();
    std::fs::create_dir(m.path("instances/bad")).unwrap();
    let draft = "draft: waiting for spec.json\n";

    // Specs.
    let cases = spec_cases();
    assert!(cases.len() > 60, "the corpus is missing: {}", cases.len());
    for (case, want, body, why) in &cases {
        let got = within(Duration::from_secs(10), case, {
            let (p, b) = (m.path("instances/bad/spec.json"), body.clone());
            move || write_and_close(&p, &b)
        });
        assert_eq!(got, *want, "{case}: errno {got}, not {want}");
        let err = read(m.path("instances/bad/error"));
        assert!(
            err.contains(why.as_str()),
            "{case}: error file says {err:?}, not {why:?}"
        );
        assert!(
            err.ends_with('\n') && err.matches('\n').count() == 1,
            "{case}: the reason is not one line: {err:?}"
        );
        assert_eq!(read(m.path("instances/bad/status")), draft, "{case}");
        assert!(alive(pid), "{case}: the daemon died");
    }
    // Past the cap at any offset, or by growing the file: refused or ignored, never buffered.
    let f = OpenOptions::new()
        .write(true)
        .open(m.path("instances/bad/spec.json"))
        .unwrap();
    let e = f.write_at(b"{}", 1 << 40).unwrap_err();
    assert_eq!(errno(&e), libc::EFBIG);
    f.set_len(1 << 40).unwrap();
    drop(f);
    assert_eq!(read(m.path("instances/bad/status")), draft);

    // ctl.
    let ctl: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(corpus().join("ctl.json")).unwrap()).unwrap();
    for c in ctl.as_array().unwrap() {
        let body = match c["write"].as_str() {
            Some(w) => w.to_string(),
            None => c["repeat"]
                .as_str()
                .unwrap()
                .repeat(c["times"].as_u64().unwrap() as usize),
        };
        let what: String = body.chars().take(20).collect();
        let want = errno_named(c["errno"].as_str().unwrap());
        let got = write_and_close(&m.path("instances/bad/ctl"), body.as_bytes());
        assert_eq!(got, want, "ctl {what:?}");
        let err = read(m.path("instances/bad/error"));
        let why = c["why"].as_str().unwrap();
        assert!(err.contains(why), "ctl {what:?}: {err:?}");
        assert_eq!(err.matches('\n').count(), 1, "ctl {what:?}: {err:?}");
    }

    // Names.
    let names: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(corpus().join("names.json")).unwrap())
            .unwrap();
    for n in names.as_array().unwrap() {
        let bytes = match n["name"].as_str() {
            Some(s) => s.as_bytes().to_vec(),
            None => (0..n["hex"].as_str().unwrap().len() / 2)
                .map(|i| {
                    u8::from_str_radix(&n["hex"].as_str().unwrap()[2 * i..2 * i + 2], 16).unwrap()
                })
                .collect(),
        };
        let path = m.path("instances").join(OsStr::from_bytes(&bytes));
        let want = errno_named(n["errno"].as_str().unwrap());
        let got = match std::fs::create_dir(&path) {
            Ok(()) => 0,
            Err(e) => errno(&e),
        };
        assert_eq!(got, want, "mkdir {:?}", String::from_utf8_lossy(&bytes));
        if want == 0 {
            std::fs::remove_dir(&path).unwrap();
        }
    }
    assert!(
        m.log()
            .contains(r#"invalid name "a_b": only lowercase letters"#),
        "a refused mkdir is logged with its reason"
    );

    // Read-only files and folders.
    for f in [
        "instances/bad/status",
        "instances/bad/info.json",
        "instances/bad/ip",
        "instances/bad/error",
        "nodes/n1/status",
        "nodes/n1/info.json",
        "networks/default/status",
        "status",
    ] {
        let e = OpenOptions::new().write(true).open(m.path(f)).unwrap_err();
        assert_eq!(errno(&e), libc::EACCES, "{f}");
    }
    // `node` takes a node to move to, but only a built instance moves; garbage is EINVAL.
    for (text, want) in [
        ("n1\n", libc::EBUSY),
        ("../n1\n", libc::EINVAL),
        ("\u{0}", libc::EINVAL),
    ] {
        let e = std::fs::write(m.path("instances/bad/node"), text).unwrap_err();
        assert_eq!(errno(&e), want, "{text:?}");
    }
    assert!(
        read(m.path("instances/bad/error")).contains("only a built instance moves")
            || read(m.path("instances/bad/error")).contains("node:"),
        "{}",
        read(m.path("instances/bad/error"))
    );
    for (what, r) in [
        (
            "a file in /instances",
            std::fs::write(m.path("instances/x.txt"), "x"),
        ),
        ("a file in /nodes", std::fs::write(m.path("nodes/x"), "x")),
        ("mkdir in /nodes", std::fs::create_dir(m.path("nodes/x"))),
        ("rmdir of a node", std::fs::remove_dir(m.path("nodes/n1"))),
    ] {
        assert_eq!(errno(&r.unwrap_err()), libc::EACCES, "{what}");
    }

    // The daemon is up and nothing was made: one draft row, no address, nothing on n1.
    assert!(alive(pid));
    assert_eq!(read(m.path("nodes/n1/status")), "online\n");
    assert_eq!(list(m.path("instances")), ["bad"]);
    assert_eq!(db.sql("SELECT vmname, state FROM kvmfs.vm"), "bad\tdraft\n");
    assert_eq!(db.sql("SELECT COUNT(*) FROM kvmfs.ip_alloc"), "0\n");
    let info = read_json(m.path("nodes/n1/info.json"));
    assert_eq!(info["pool_volumes"], serde_json::json!(["debian-12.qcow2"]));
    assert_eq!(info["instances"], 0);
    // And it still takes a good spec.
    std::fs::write(
        m.path("instances/bad/spec.json"),
        r#"{"flavor":"m1.small"}"#,
    )
    .unwrap();
    wait_for(Duration::from_secs(20), "the build", || {
        read(m.path("instances/bad/status")).starts_with("running")
    });
    assert_eq!(read(m.path("instances/bad/error")), "");
}
