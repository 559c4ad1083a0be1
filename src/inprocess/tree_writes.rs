//! Writing through the tree: how `spec.json` takes a document (committed on the write that
//! completes it, or at close), what a refused write leaves behind (nothing), who may write,
//! how handles and inodes of a deleted or re-made instance answer (`ESTALE`), the scratch
//! files editors make beside `spec.json` (create, rename, quota), and `chmod`/`chown`.
//! Each test asserts what docs/SEMANTICS.md promises ("spec.json", "Scratch files",
//! "Errors", "Identity").

use std::ffi::OsStr;

use fuser::Errno;

use super::names_in;
use crate::fs::errno;
use crate::hv::mem::Call;
use crate::spec::MAX_SPEC_BYTES;
use crate::testing::Rig;
use crate::tree::{Ino, TreeError};

const SPEC: &str = r#"{"vcpus":1,"ram_mb":512,"disk_gb":1}"#;
/// `SPEC` cut in two: an unfinished document, and what completes it.
const HEAD: &str = r#"{"vcpus":1,"#;
const TAIL: &str = r#""ram_mb":512,"disk_gb":1}"#;
const OWNER: u32 = 1000;
const OTHER: u32 = 1001;
const ROOT: u32 = 0;

async fn rig() -> Rig {
    Rig::new(&[("n1", 4, 8192)], "").await
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// The errno of a call that must fail.
fn eno<T: std::fmt::Debug>(r: Result<T, TreeError>) -> Errno {
    errno(&r.expect_err("the call must fail"))
}

/// Opens `path` for writing as `uid`.
fn open_w(rig: &Rig, path: &str, uid: u32) -> Result<u64, TreeError> {
    let ino = rig.ino(path)?;
    rig.tree.open(ino, true, uid).map(|(fh, _)| fh)
}

/// What a handle reads from its start.
fn read_fh(rig: &Rig, fh: u64, ino: u64) -> Result<String, TreeError> {
    let data = rig.tree.read(fh, ino, 0, 1 << 20)?;
    Ok(String::from_utf8_lossy(&data).into_owned())
}

fn folder(rig: &Rig, name: &str) -> u64 {
    rig.ino(&format!("instances/{name}")).unwrap()
}

fn error_of(rig: &Rig, name: &str) -> String {
    rig.read(&format!("instances/{name}/error")).unwrap()
}

fn spec_of(rig: &Rig, name: &str) -> String {
    rig.read(&format!("instances/{name}/spec.json")).unwrap()
}

fn is_draft(rig: &Rig, name: &str) -> bool {
    rig.status(name).is_some_and(|s| s.starts_with("draft"))
}

/// Creates scratch file `name` in instance `inst`'s folder as `uid`, holding `data`; its inode.
async fn scratch(rig: &Rig, inst: &str, name: &str, uid: u32, data: &[u8]) -> u64 {
    let (attr, fh) = rig
        .tree
        .create(folder(rig, inst), os(name), 0o644, uid, uid)
        .unwrap();
    if !data.is_empty() {
        rig.tree.write(fh, 0, data, uid).await.unwrap();
    }
    rig.tree.release(fh);
    attr.ino
}

/// Renames `from` to `to` within instance `inst`'s folder.
async fn rename_in(
    rig: &Rig,
    inst: &str,
    from: &str,
    to: &str,
    no_replace: bool,
    uid: u32,
) -> Result<(), TreeError> {
    let dir = folder(rig, inst);
    rig.tree
        .rename(dir, os(from), dir, os(to), no_replace, uid)
        .await
}

// ---------------------------------------------------------------------------------------
// spec.json: how a write is committed
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_document_commits_on_the_write() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    let fh = open_w(&rig, "instances/web1/spec.json", OWNER).unwrap();
    let n = rig.tree.write(fh, 0, SPEC.as_bytes(), OWNER).await.unwrap();
    assert_eq!(n as usize, SPEC.len());
    // Committed by the write itself, before any flush or close.
    let status = rig.status("web1").unwrap();
    assert!(
        !status.starts_with("draft"),
        "still {status:?} after the write"
    );
    assert_eq!(spec_of(&rig, "web1"), SPEC);
    assert_eq!(rig.tree.flush(fh, OWNER).await, Ok(()));
    rig.tree.release(fh);
    rig.wait_status("web1", "running").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_document_waits_and_is_refused_at_flush() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    let fh = open_w(&rig, "instances/web1/spec.json", OWNER).unwrap();
    rig.tree.write(fh, 0, HEAD.as_bytes(), OWNER).await.unwrap();
    assert!(
        is_draft(&rig, "web1"),
        "an unfinished document commits nothing"
    );
    assert_eq!(error_of(&rig, "web1"), "");
    let e = rig
        .tree
        .flush(fh, OWNER)
        .await
        .expect_err("flush commits it");
    rig.tree.release(fh);
    assert_eq!(errno(&e), Errno::EINVAL);
    let reason = e.to_string();
    assert!(
        reason.starts_with("spec.json is not valid JSON: "),
        "the parser's reason: {reason}"
    );
    assert_eq!(error_of(&rig, "web1"), format!("{reason}\n"));
    assert!(is_draft(&rig, "web1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whitespace_only_buffer_is_ignored_at_close() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    let fh = open_w(&rig, "instances/web1/spec.json", OWNER).unwrap();
    rig.tree.write(fh, 0, b"  \n\t\n", OWNER).await.unwrap();
    assert_eq!(rig.tree.flush(fh, OWNER).await, Ok(()));
    rig.tree.release(fh);
    assert!(is_draft(&rig, "web1"));
    assert_eq!(
        error_of(&rig, "web1"),
        "",
        "nothing was committed or refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_written_in_order_complete_a_document() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    let fh = open_w(&rig, "instances/web1/spec.json", OWNER).unwrap();
    rig.tree.write(fh, 0, HEAD.as_bytes(), OWNER).await.unwrap();
    assert!(is_draft(&rig, "web1"));
    rig.tree
        .write(fh, HEAD.len() as u64, TAIL.as_bytes(), OWNER)
        .await
        .unwrap();
    assert!(
        !is_draft(&rig, "web1"),
        "the piece that completes it commits"
    );
    assert_eq!(spec_of(&rig, "web1"), SPEC);
    assert_eq!(rig.tree.flush(fh, OWNER).await, Ok(()));
    rig.tree.release(fh);
    rig.wait_status("web1", "running").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_commit_whitespace_is_accepted_and_other_writes_are_ebusy() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    let fh = open_w(&rig, "instances/web1/spec.json", OWNER).unwrap();
    let end = SPEC.len() as u64;
    rig.tree.write(fh, 0, SPEC.as_bytes(), OWNER).await.unwrap();
    assert_eq!(rig.tree.write(fh, end, b"\n", OWNER).await, Ok(1));
    assert_eq!(
        eno(rig.tree.write(fh, end + 1, b"{}", OWNER).await),
        Errno::EBUSY
    );
    assert_eq!(
        eno(rig.tree.write(fh, 0, SPEC.as_bytes(), OWNER).await),
        Errno::EBUSY
    );
    assert_eq!(rig.tree.flush(fh, OWNER).await, Ok(()));
    rig.tree.release(fh);
    assert_eq!(spec_of(&rig, "web1"), SPEC, "the committed text, unchanged");
    assert_eq!(
        error_of(&rig, "web1"),
        "",
        "EBUSY is only returned to the caller"
    );
    rig.wait_status("web1", "running").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_past_16_kib_is_efbig_and_keeps_nothing() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    let ino = rig.ino("instances/web1/spec.json").unwrap();
    let fh = open_w(&rig, "instances/web1/spec.json", OWNER).unwrap();
    rig.tree.write(fh, 0, HEAD.as_bytes(), OWNER).await.unwrap();
    // A document padded with spaces to one byte past the limit.
    let mut big = SPEC.as_bytes().to_vec();
    big.resize(MAX_SPEC_BYTES + 1, b' ');
    assert_eq!(eno(rig.tree.write(fh, 0, &big, OWNER).await), Errno::EFBIG);
    assert_eq!(
        read_fh(&rig, fh, ino).unwrap(),
        HEAD,
        "the refused write left nothing"
    );
    // Also one byte at a far offset.
    let far = MAX_SPEC_BYTES as u64;
    assert_eq!(
        eno(rig.tree.write(fh, far, b" ", OWNER).await),
        Errno::EFBIG
    );
    assert_eq!(read_fh(&rig, fh, ino).unwrap(), HEAD);
    rig.tree.release(fh);
    assert!(is_draft(&rig, "web1"));
    assert!(
        error_of(&rig, "web1").contains(&MAX_SPEC_BYTES.to_string()),
        "EFBIG is recorded: {:?}",
        error_of(&rig, "web1")
    );
    // Exactly 16 KiB is taken.
    big.truncate(MAX_SPEC_BYTES);
    let fh = open_w(&rig, "instances/web1/spec.json", OWNER).unwrap();
    rig.tree.write(fh, 0, &big, OWNER).await.unwrap();
    rig.tree.release(fh);
    assert_eq!(spec_of(&rig, "web1").len(), MAX_SPEC_BYTES);
    assert!(!is_draft(&rig, "web1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_leaving_a_gap_is_einval_and_keeps_nothing() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    let ino = rig.ino("instances/web1/spec.json").unwrap();
    let fh = open_w(&rig, "instances/web1/spec.json", OWNER).unwrap();
    rig.tree.write(fh, 0, HEAD.as_bytes(), OWNER).await.unwrap();
    let gap = rig
        .tree
        .write(fh, HEAD.len() as u64 + 1, TAIL.as_bytes(), OWNER)
        .await
        .expect_err("a gap is refused");
    assert_eq!(errno(&gap), Errno::EINVAL);
    assert!(gap.to_string().contains("leaves a gap"), "{gap}");
    assert_eq!(
        read_fh(&rig, fh, ino).unwrap(),
        HEAD,
        "nothing of it was kept"
    );
    assert!(is_draft(&rig, "web1"));
    assert!(error_of(&rig, "web1").contains("leaves a gap"));
    // Written where it belongs, the same bytes complete the document.
    rig.tree
        .write(fh, HEAD.len() as u64, TAIL.as_bytes(), OWNER)
        .await
        .unwrap();
    rig.tree.release(fh);
    assert_eq!(spec_of(&rig, "web1"), SPEC);
    assert_eq!(error_of(&rig, "web1"), "", "an accepted spec clears error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_document_then_a_shorter_valid_one_commits_the_shorter_one() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    let ino = rig.ino("instances/web1/spec.json").unwrap();
    let fh = open_w(&rig, "instances/web1/spec.json", OWNER).unwrap();
    let long = r#"{"vcpus":1,"ram_mb":512,"disk_gb":1,"colour":"a rather long blue"}"#;
    assert_eq!(
        eno(rig.tree.write(fh, 0, long.as_bytes(), OWNER).await),
        Errno::EINVAL
    );
    assert_eq!(read_fh(&rig, fh, ino).unwrap(), "");
    assert!(is_draft(&rig, "web1"));
    rig.tree.write(fh, 0, SPEC.as_bytes(), OWNER).await.unwrap();
    rig.tree.release(fh);
    assert_eq!(spec_of(&rig, "web1"), SPEC, "no tail of the refused one");
    rig.wait_status("web1", "running").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_open_for_writing_starts_empty() {
    let rig = rig().await;
    rig.node("n1").fail_nth(Call::DefineAndStart, 1);
    rig.create("web1", OWNER, SPEC).await.unwrap();
    rig.wait_status("web1", "failed").await;
    // A failed instance shows its spec, and takes a new one.
    assert_eq!(spec_of(&rig, "web1"), SPEC);
    let ino = rig.ino("instances/web1/spec.json").unwrap();
    let a = open_w(&rig, "instances/web1/spec.json", OWNER).unwrap();
    assert_eq!(read_fh(&rig, a, ino).unwrap(), "", "not the committed spec");
    rig.tree.write(a, 0, HEAD.as_bytes(), OWNER).await.unwrap();
    assert_eq!(
        read_fh(&rig, a, ino).unwrap(),
        HEAD,
        "what this handle wrote"
    );
    let b = open_w(&rig, "instances/web1/spec.json", OWNER).unwrap();
    assert_eq!(
        read_fh(&rig, b, ino).unwrap(),
        "",
        "not another handle's bytes"
    );
    rig.tree.release(a);
    rig.tree.release(b);
    assert_eq!(spec_of(&rig, "web1"), SPEC);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncating_through_the_handle_starts_the_document_again() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    let ino = rig.ino("instances/web1/spec.json").unwrap();
    let fh = open_w(&rig, "instances/web1/spec.json", OWNER).unwrap();
    rig.tree
        .write(fh, 0, br#"{"vcpus":2,"#, OWNER)
        .await
        .unwrap();
    assert_eq!(
        eno(rig.tree.truncate(ino, Some(fh), 0, OTHER)),
        Errno::EACCES
    );
    rig.tree.truncate(ino, Some(fh), 0, OWNER).unwrap();
    assert_eq!(read_fh(&rig, fh, ino).unwrap(), "");
    rig.tree.write(fh, 0, SPEC.as_bytes(), OWNER).await.unwrap();
    rig.tree.release(fh);
    assert_eq!(spec_of(&rig, "web1"), SPEC);
    let status = rig.ino("instances/web1/status").unwrap();
    assert_eq!(
        eno(rig.tree.truncate(status, None, 0, OWNER)),
        Errno::EACCES
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_open_of_a_built_spec_returns_the_committed_text() {
    let rig = rig().await;
    let text = "{ \"vcpus\" : 1,\n  \"ram_mb\":512,   \"disk_gb\": 1 }\n";
    rig.create("web1", OWNER, text).await.unwrap();
    rig.wait_status("web1", "running").await;
    assert_eq!(
        spec_of(&rig, "web1"),
        text,
        "byte for byte, not re-rendered"
    );
    let ino = rig.ino("instances/web1/spec.json").unwrap();
    assert_eq!(rig.tree.getattr(ino).unwrap().size, text.len() as u64);
    let (fh, _) = rig.tree.open(ino, false, OTHER).unwrap();
    assert_eq!(read_fh(&rig, fh, ino).unwrap(), text, "anyone may read it");
    rig.tree.release(fh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_a_built_instances_spec_for_writing_is_ebusy() {
    let rig = rig().await;
    rig.create("web1", OWNER, SPEC).await.unwrap();
    rig.wait_status("web1", "running").await;
    let spec = "instances/web1/spec.json";
    assert_eq!(eno(open_w(&rig, spec, OWNER)), Errno::EBUSY);
    assert_eq!(eno(open_w(&rig, spec, ROOT)), Errno::EBUSY);
    assert_eq!(
        rig.tree.getattr(rig.ino(spec).unwrap()).unwrap().perm,
        0o444
    );
    // ctl stays writable.
    let fh = open_w(&rig, "instances/web1/ctl", OWNER).unwrap();
    rig.tree.release(fh);
    assert_eq!(error_of(&rig, "web1"), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_uid_may_not_open_spec_or_ctl_for_writing() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    for f in ["spec.json", "ctl"] {
        let path = format!("instances/web1/{f}");
        assert_eq!(eno(open_w(&rig, &path, OTHER)), Errno::EACCES, "{f}");
        let (fh, _) = rig
            .tree
            .open(rig.ino(&path).unwrap(), false, OTHER)
            .unwrap();
        rig.tree.release(fh);
        let fh = open_w(&rig, &path, ROOT).unwrap();
        rig.tree.release(fh);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_specs_land_in_error_and_eacces_refusals_do_not() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    let spec = rig.ino("instances/web1/spec.json").unwrap();
    // Another user's attempts: each EACCES, none recorded.
    assert_eq!(
        eno(open_w(&rig, "instances/web1/spec.json", OTHER)),
        Errno::EACCES
    );
    assert_eq!(
        eno(open_w(&rig, "instances/web1/ctl", OTHER)),
        Errno::EACCES
    );
    assert_eq!(eno(rig.tree.truncate(spec, None, 0, OTHER)), Errno::EACCES);
    scratch(&rig, "web1", "spec.json.tmp", ROOT, br#"{"colour":1}"#).await;
    assert_eq!(
        eno(rename_in(&rig, "web1", "spec.json.tmp", "spec.json", false, OTHER).await),
        Errno::EACCES
    );
    assert_eq!(error_of(&rig, "web1"), "");
    assert!(is_draft(&rig, "web1"));
    // The owner's refused spec is recorded.
    let e = rig
        .write("instances/web1/spec.json", OWNER, r#"{"flavor":"m1.huge"}"#)
        .await
        .expect_err("unknown flavor");
    assert_eq!(errno(&e), Errno::EINVAL);
    let error = error_of(&rig, "web1");
    assert!(error.contains(r#"unknown flavor "m1.huge""#), "{error:?}");
    assert_eq!(error, format!("{e}\n"));
    assert!(is_draft(&rig, "web1"));
}

// ---------------------------------------------------------------------------------------
// Identity: handles and inodes of a deleted or re-made instance
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_handles_opened_before_the_name_was_made_again_answer_estale() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    let spec = open_w(&rig, "instances/web1/spec.json", OWNER).unwrap();
    let ctl = open_w(&rig, "instances/web1/ctl", OWNER).unwrap();
    rig.rmdir("web1", OWNER).await.unwrap();
    rig.mkdir("web1", OWNER).await.unwrap();
    assert_eq!(
        eno(rig.tree.write(spec, 0, SPEC.as_bytes(), OWNER).await),
        Errno::ESTALE
    );
    assert_eq!(
        eno(rig.tree.write(spec, 0, br#"{"colour":1}"#, OWNER).await),
        Errno::ESTALE
    );
    assert_eq!(
        eno(rig.tree.write(ctl, 0, b"start\n", OWNER).await),
        Errno::ESTALE
    );
    rig.tree.release(spec);
    rig.tree.release(ctl);
    assert!(is_draft(&rig, "web1"), "{:?}", rig.status("web1"));
    assert_eq!(error_of(&rig, "web1"), "");
    assert_eq!(spec_of(&rig, "web1"), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_through_an_old_handle_are_not_recorded_on_the_new_instance() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    let spec = open_w(&rig, "instances/web1/spec.json", OWNER).unwrap();
    let ctl = open_w(&rig, "instances/web1/ctl", OWNER).unwrap();
    rig.rmdir("web1", OWNER).await.unwrap();
    rig.mkdir("web1", OWNER).await.unwrap();
    assert!(
        rig.tree.write(spec, 5, b"{}", OWNER).await.is_err(),
        "a gap"
    );
    let far = MAX_SPEC_BYTES as u64;
    assert!(
        rig.tree.write(spec, far, b"x", OWNER).await.is_err(),
        "too big"
    );
    assert!(rig.tree.write(ctl, 0, b"explode", OWNER).await.is_err());
    rig.tree.release(spec);
    rig.tree.release(ctl);
    assert_eq!(error_of(&rig, "web1"), "");
    assert!(is_draft(&rig, "web1"));
}

/// "Identity": every operation through a handle opened on an incarnation that is gone
/// answers `ESTALE`. The close does; the write of an unfinished piece is taken (`Ok`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_write_through_an_old_handle_answers_estale() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    let spec = open_w(&rig, "instances/web1/spec.json", OWNER).unwrap();
    rig.rmdir("web1", OWNER).await.unwrap();
    rig.mkdir("web1", OWNER).await.unwrap();
    let far = MAX_SPEC_BYTES as u64;
    let gap = rig.tree.write(spec, 100, b"{}", OWNER).await;
    let big = rig.tree.write(spec, far, b"x", OWNER).await;
    let w = rig.tree.write(spec, 0, HEAD.as_bytes(), OWNER).await;
    let f = rig.tree.flush(spec, OWNER).await;
    rig.tree.release(spec);
    assert!(is_draft(&rig, "web1"));
    assert_eq!(error_of(&rig, "web1"), "");
    let stale = Some(Errno::ESTALE);
    assert_eq!(f.err().map(|e| errno(&e)), stale, "close");
    assert_eq!(w.err().map(|e| errno(&e)), stale, "an unfinished piece");
    assert_eq!(gap.err().map(|e| errno(&e)), stale, "a write with a gap");
    assert_eq!(big.err().map(|e| errno(&e)), stale, "a write past 16 KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_through_handles_of_a_deleted_instance_answer_estale() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    let status = rig.ino("instances/web1/status").unwrap();
    let spec = rig.ino("instances/web1/spec.json").unwrap();
    let (ro, _) = rig.tree.open(status, false, OWNER).unwrap();
    assert!(read_fh(&rig, ro, status).unwrap().starts_with("draft"));
    let rw = open_w(&rig, "instances/web1/spec.json", OWNER).unwrap();
    rig.tree.write(rw, 0, HEAD.as_bytes(), OWNER).await.unwrap();
    assert_eq!(read_fh(&rig, rw, spec).unwrap(), HEAD);
    rig.rmdir("web1", OWNER).await.unwrap();
    assert_eq!(eno(read_fh(&rig, ro, status)), Errno::ESTALE);
    assert_eq!(eno(read_fh(&rig, rw, spec)), Errno::ESTALE);
    // Nor the bytes of the new instance of the name.
    rig.mkdir("web1", OTHER).await.unwrap();
    assert_eq!(eno(read_fh(&rig, ro, status)), Errno::ESTALE);
    assert_eq!(eno(read_fh(&rig, rw, spec)), Errno::ESTALE);
    rig.tree.release(ro);
    rig.tree.release(rw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_made_again_has_new_inodes_and_old_ones_are_stale() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    let paths = [
        "instances/web1",
        "instances/web1/spec.json",
        "instances/web1/ctl",
        "instances/web1/status",
    ];
    let old: Vec<u64> = paths.iter().map(|p| rig.ino(p).unwrap()).collect();
    rig.rmdir("web1", OWNER).await.unwrap();
    for ino in &old {
        assert_eq!(eno(rig.tree.getattr(*ino)), Errno::ESTALE);
    }
    let dir = Ino::InstancesDir.encode();
    assert_eq!(eno(rig.tree.lookup(dir, os("web1"))), Errno::ENOENT);
    rig.mkdir("web1", OTHER).await.unwrap();
    let new: Vec<u64> = paths.iter().map(|p| rig.ino(p).unwrap()).collect();
    for (o, n) in old.iter().zip(&new) {
        assert_ne!(o, n);
        assert_eq!(eno(rig.tree.getattr(*o)), Errno::ESTALE);
    }
    let found = rig.tree.lookup(dir, os("web1")).unwrap();
    assert_eq!(found.ino, new[0]);
    assert_eq!(found.uid, OTHER, "the new incarnation's owner");
    assert_eq!(rig.tree.getattr(new[1]).unwrap().uid, OTHER);
}

// ---------------------------------------------------------------------------------------
// Scratch files
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editors_scratch_files_are_created_written_truncated_and_unlinked() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    let dir = folder(&rig, "web1");
    let (probe, fh) = rig
        .tree
        .create(dir, os("4913"), 0o100600, OWNER, 77)
        .unwrap();
    assert_eq!(
        (probe.uid, probe.gid, probe.perm, probe.size),
        (OWNER, 77, 0o600, 0)
    );
    rig.tree.release(fh);
    let (swp, fh) = rig
        .tree
        .create(dir, os(".spec.json.swp"), 0o644, OWNER, OWNER)
        .unwrap();
    assert_eq!(rig.tree.write(fh, 0, b"b0VIM 9.0", OWNER).await, Ok(9));
    assert_eq!(read_fh(&rig, fh, swp.ino).unwrap(), "b0VIM 9.0");
    rig.tree.write(fh, 5, b"8.2!", OWNER).await.unwrap();
    assert_eq!(read_fh(&rig, fh, swp.ino).unwrap(), "b0VIM8.2!");
    let attr = rig.tree.truncate(swp.ino, Some(fh), 3, OWNER).unwrap();
    assert_eq!(attr.size, 3);
    assert_eq!(read_fh(&rig, fh, swp.ino).unwrap(), "b0V");
    rig.tree.release(fh);
    assert_eq!(rig.read("instances/web1/.spec.json.swp").unwrap(), "b0V");
    let names = names_in(&rig, dir);
    assert!(names.contains(&"4913".to_string()), "{names:?}");
    assert!(names.contains(&".spec.json.swp".to_string()), "{names:?}");
    assert!(names.contains(&"spec.json".to_string()), "{names:?}");
    for n in ["4913", ".spec.json.swp"] {
        rig.tree.unlink(dir, os(n), OWNER).unwrap();
        assert_eq!(eno(rig.tree.lookup(dir, os(n))), Errno::ENOENT);
        assert_eq!(eno(rig.tree.unlink(dir, os(n), OWNER)), Errno::ENOENT);
    }
    assert_eq!(eno(rig.tree.getattr(probe.ino)), Errno::ESTALE);
    assert!(!names_in(&rig, dir).contains(&"4913".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserved_name_cannot_be_created_and_its_unlink_changes_nothing() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    let dir = folder(&rig, "web1");
    let before = names_in(&rig, dir);
    assert!(
        !before.contains(&"ssh_key".to_string()),
        "a draft has no key"
    );
    for n in ["status", "spec.json", "ctl", "ssh_key"] {
        assert_eq!(
            eno(rig.tree.create(dir, os(n), 0o644, OWNER, OWNER)),
            Errno::EACCES,
            "{n}"
        );
    }
    // The owner's unlink of kvmfs's own files succeeds and removes nothing (so that `rm -r`
    // reaches the folder's rmdir); a name the folder does not hold is ENOENT, and only the
    // owner and root may do it.
    for n in [
        "status",
        "spec.json",
        "error",
        "ctl",
        "info.json",
        "ip",
        "node",
    ] {
        assert_eq!(rig.tree.unlink(dir, os(n), OWNER), Ok(()), "{n}");
        assert_eq!(rig.tree.unlink(dir, os(n), 0), Ok(()), "{n} by root");
        assert_eq!(
            eno(rig.tree.unlink(dir, os(n), OTHER)),
            Errno::EACCES,
            "{n}"
        );
    }
    assert_eq!(
        eno(rig.tree.unlink(dir, os("ssh_key"), OWNER)),
        Errno::ENOENT
    );
    assert_eq!(
        eno(rig.tree.unlink(dir, os("nothing"), OWNER)),
        Errno::ENOENT
    );
    assert_eq!(names_in(&rig, dir), before);
    assert!(
        rig.read("instances/web1/status")
            .unwrap()
            .starts_with("draft")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_files_are_refused_outside_managed_instance_folders() {
    let rig = rig().await;
    rig.node("n1").add_foreign_domain("alien", 1, 512, true);
    rig.wait_for("the foreign domain", |r| r.status("alien").is_some())
        .await;
    let alien = folder(&rig, "alien");
    assert_eq!(
        eno(rig.tree.create(alien, os("4913"), 0o644, ROOT, ROOT)),
        Errno::EACCES
    );
    assert!(!names_in(&rig, alien).contains(&"4913".to_string()));
    let instances = Ino::InstancesDir.encode();
    assert_eq!(
        eno(rig
            .tree
            .create(instances, os("notes.txt"), 0o644, ROOT, ROOT)),
        Errno::EACCES
    );
    assert_eq!(
        eno(rig
            .tree
            .create(Ino::NodesDir.encode(), os("x"), 0o644, ROOT, ROOT)),
        Errno::EACCES
    );
    rig.mkdir("web1", OWNER).await.unwrap();
    let status = rig.ino("instances/web1/status").unwrap();
    assert_eq!(
        eno(rig.tree.create(status, os("x"), 0o644, OWNER, OWNER)),
        Errno::ENOTDIR
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_files_go_with_their_instance() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    let ino = scratch(&rig, "web1", "spec.json~", OWNER, b"old backup").await;
    let (fh, _) = rig.tree.open(ino, false, OWNER).unwrap();
    assert_eq!(read_fh(&rig, fh, ino).unwrap(), "old backup");
    rig.rmdir("web1", OWNER).await.unwrap();
    assert_eq!(eno(rig.tree.getattr(ino)), Errno::ESTALE);
    assert_eq!(eno(read_fh(&rig, fh, ino)), Errno::ESTALE);
    rig.mkdir("web1", OWNER).await.unwrap();
    let dir = folder(&rig, "web1");
    assert_eq!(eno(rig.tree.lookup(dir, os("spec.json~"))), Errno::ENOENT);
    assert!(
        !names_in(&rig, dir).contains(&"spec.json~".to_string()),
        "a new incarnation starts with no scratch files"
    );
    assert_eq!(eno(read_fh(&rig, fh, ino)), Errno::ESTALE);
    rig.tree.release(fh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_has_a_scratch_quota_and_root_has_none() {
    let rig = Rig::new(&[("n1", 4, 8192)], "[quotas]\nscratch_bytes = 8192\n").await;
    rig.mkdir("web1", OWNER).await.unwrap();
    let dir = folder(&rig, "web1");
    let (a, fa) = rig
        .tree
        .create(dir, os("4913"), 0o644, OWNER, OWNER)
        .unwrap();
    rig.tree.write(fa, 0, &[b'a'; 8192], OWNER).await.unwrap();
    assert_eq!(
        eno(rig.tree.write(fa, 8192, b"b", OWNER).await),
        Errno::EDQUOT
    );
    assert_eq!(rig.tree.getattr(a.ino).unwrap().size, 8192, "nothing kept");
    let (b, fb) = rig
        .tree
        .create(dir, os(".swp"), 0o644, OWNER, OWNER)
        .unwrap();
    assert_eq!(eno(rig.tree.write(fb, 0, b"b", OWNER).await), Errno::EDQUOT);
    assert_eq!(
        eno(rig.tree.truncate(b.ino, Some(fb), 1, OWNER)),
        Errno::EDQUOT
    );
    assert_eq!(rig.tree.getattr(b.ino).unwrap().size, 0);
    // Root is not limited.
    let (r, fr) = rig
        .tree
        .create(dir, os("root.tmp"), 0o644, ROOT, ROOT)
        .unwrap();
    rig.tree.write(fr, 0, &[b'r'; 20000], ROOT).await.unwrap();
    assert_eq!(rig.tree.getattr(r.ino).unwrap().size, 20000);
    // Shrinking a file gives its room back.
    rig.tree.truncate(a.ino, Some(fa), 8000, OWNER).unwrap();
    rig.tree.write(fb, 0, &[b'b'; 192], OWNER).await.unwrap();
    assert_eq!(
        eno(rig.tree.write(fb, 192, b"b", OWNER).await),
        Errno::EDQUOT
    );
    for fh in [fa, fb, fr] {
        rig.tree.release(fh);
    }
}

// ---------------------------------------------------------------------------------------
// rename
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_moves_a_scratch_file_and_replaces_another() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    let dir = folder(&rig, "web1");
    scratch(&rig, "web1", "a", OWNER, b"first").await;
    scratch(&rig, "web1", "c", OWNER, b"to be replaced").await;
    rename_in(&rig, "web1", "a", "b", false, OWNER)
        .await
        .unwrap();
    assert_eq!(eno(rig.tree.lookup(dir, os("a"))), Errno::ENOENT);
    assert_eq!(rig.read("instances/web1/b").unwrap(), "first");
    rename_in(&rig, "web1", "b", "c", false, OWNER)
        .await
        .unwrap();
    assert_eq!(eno(rig.tree.lookup(dir, os("b"))), Errno::ENOENT);
    assert_eq!(rig.read("instances/web1/c").unwrap(), "first");
    let names = names_in(&rig, dir);
    assert_eq!(
        names
            .iter()
            .filter(|n| ["a", "b", "c"].contains(&n.as_str()))
            .count(),
        1,
        "{names:?}"
    );
    assert_eq!(
        eno(rename_in(&rig, "web1", "nothing", "d", false, OWNER).await),
        Errno::ENOENT
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_noreplace_onto_an_existing_name_is_eexist() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    scratch(&rig, "web1", "a", OWNER, b"aaa").await;
    scratch(&rig, "web1", "b", OWNER, b"bbb").await;
    assert_eq!(
        eno(rename_in(&rig, "web1", "a", "b", true, OWNER).await),
        Errno::EEXIST
    );
    assert_eq!(rig.read("instances/web1/a").unwrap(), "aaa");
    assert_eq!(rig.read("instances/web1/b").unwrap(), "bbb");
    // Onto spec.json, which always exists; and spec.json onto an existing backup.
    scratch(&rig, "web1", "spec.json.tmp", OWNER, SPEC.as_bytes()).await;
    assert_eq!(
        eno(rename_in(&rig, "web1", "spec.json.tmp", "spec.json", true, OWNER).await),
        Errno::EEXIST
    );
    assert!(is_draft(&rig, "web1"));
    assert_eq!(
        eno(rename_in(&rig, "web1", "spec.json", "b", true, OWNER).await),
        Errno::EEXIST
    );
    assert_eq!(rig.read("instances/web1/b").unwrap(), "bbb");
    // Without the flag, the same rename moves it.
    rename_in(&rig, "web1", "a", "b", false, OWNER)
        .await
        .unwrap();
    assert_eq!(rig.read("instances/web1/b").unwrap(), "aaa");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_a_scratch_file_onto_spec_json_commits_it() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    let dir = folder(&rig, "web1");
    scratch(&rig, "web1", "spec.json.tmp", OWNER, SPEC.as_bytes()).await;
    rename_in(&rig, "web1", "spec.json.tmp", "spec.json", false, OWNER)
        .await
        .unwrap();
    assert!(!is_draft(&rig, "web1"), "committed by the rename");
    assert_eq!(spec_of(&rig, "web1"), SPEC);
    assert_eq!(
        eno(rig.tree.lookup(dir, os("spec.json.tmp"))),
        Errno::ENOENT
    );
    rig.wait_status("web1", "running").await;
    // A different document onto a built instance's spec.json: EBUSY, the file stays.
    scratch(&rig, "web1", "spec.json.tmp", OWNER, b"{}").await;
    assert_eq!(
        eno(rename_in(&rig, "web1", "spec.json.tmp", "spec.json", false, OWNER).await),
        Errno::EBUSY
    );
    assert_eq!(rig.read("instances/web1/spec.json.tmp").unwrap(), "{}");
    assert_eq!(spec_of(&rig, "web1"), SPEC);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_a_bad_document_onto_spec_json_is_einval_and_keeps_the_scratch_file() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    let bad = r#"{"vcpus":1}"#;
    scratch(&rig, "web1", "spec.json.tmp", OWNER, bad.as_bytes()).await;
    let e = rename_in(&rig, "web1", "spec.json.tmp", "spec.json", false, OWNER)
        .await
        .expect_err("vcpus without ram_mb");
    assert_eq!(errno(&e), Errno::EINVAL);
    assert_eq!(rig.read("instances/web1/spec.json.tmp").unwrap(), bad);
    assert!(is_draft(&rig, "web1"));
    assert_eq!(spec_of(&rig, "web1"), "");
    assert_eq!(error_of(&rig, "web1"), format!("{e}\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_spec_json_to_a_scratch_name_copies_it() {
    let rig = rig().await;
    rig.create("web1", OWNER, SPEC).await.unwrap();
    rig.wait_status("web1", "running").await;
    rename_in(&rig, "web1", "spec.json", "spec.json~", false, OWNER)
        .await
        .unwrap();
    assert_eq!(rig.read("instances/web1/spec.json~").unwrap(), SPEC);
    assert_eq!(spec_of(&rig, "web1"), SPEC, "spec.json stays");
    let backup = rig.ino("instances/web1/spec.json~").unwrap();
    assert_eq!(rig.tree.getattr(backup).unwrap().uid, OWNER);
    // Put back unchanged (an editor after a failed save): accepted, nothing changes.
    rename_in(&rig, "web1", "spec.json~", "spec.json", false, OWNER)
        .await
        .unwrap();
    let dir = folder(&rig, "web1");
    assert_eq!(eno(rig.tree.lookup(dir, os("spec.json~"))), Errno::ENOENT);
    assert!(rig.status("web1").unwrap().starts_with("running"));
    assert_eq!(spec_of(&rig, "web1"), SPEC);
    assert_eq!(error_of(&rig, "web1"), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renames_onto_or_from_kvmfs_files_are_eacces() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    scratch(&rig, "web1", "x", OWNER, b"data").await;
    for (from, to) in [
        ("x", "status"),
        ("x", "ctl"),
        ("x", "error"),
        ("status", "y"),
        ("info.json", "spec.json"),
        ("spec.json", "status"),
        ("ctl", "x"),
    ] {
        assert_eq!(
            eno(rename_in(&rig, "web1", from, to, false, OWNER).await),
            Errno::EACCES,
            "{from} -> {to}"
        );
    }
    assert_eq!(rig.read("instances/web1/x").unwrap(), "data");
    assert!(
        rig.read("instances/web1/status")
            .unwrap()
            .starts_with("draft")
    );
    let names = names_in(&rig, folder(&rig, "web1"));
    assert!(!names.contains(&"y".to_string()), "{names:?}");
    assert!(is_draft(&rig, "web1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_between_instance_folders_is_exdev() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    rig.mkdir("web2", OWNER).await.unwrap();
    scratch(&rig, "web1", "4913", OWNER, b"probe").await;
    scratch(&rig, "web1", "spec.json.tmp", OWNER, SPEC.as_bytes()).await;
    let (a, b) = (folder(&rig, "web1"), folder(&rig, "web2"));
    for (from, to) in [("4913", "4913"), ("spec.json.tmp", "spec.json")] {
        assert_eq!(
            eno(rig.tree.rename(a, os(from), b, os(to), false, OWNER).await),
            Errno::EXDEV,
            "{from}"
        );
    }
    assert_eq!(rig.read("instances/web1/4913").unwrap(), "probe");
    assert!(
        is_draft(&rig, "web2"),
        "nothing committed in the other folder"
    );
    // Out to /instances, or renaming instance folders: EACCES.
    let instances = Ino::InstancesDir.encode();
    assert_eq!(
        eno(rig
            .tree
            .rename(a, os("4913"), instances, os("4913"), false, OWNER)
            .await),
        Errno::EACCES
    );
    assert_eq!(
        eno(rig
            .tree
            .rename(instances, os("web1"), instances, os("web3"), false, OWNER)
            .await),
        Errno::EACCES
    );
    assert!(rig.status("web1").is_some() && rig.status("web3").is_none());
}

// ---------------------------------------------------------------------------------------
// chmod, chown
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvmfs_files_accept_their_own_owner_and_an_instances_files_any_mode_unchanged() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    let dir = folder(&rig, "web1");
    let spec = rig.ino("instances/web1/spec.json").unwrap();
    let gid = rig.tree.getattr(spec).unwrap().gid;
    // What they have (as the kernel passes it, with the file type bits).
    let a = rig
        .tree
        .set_attr(spec, Some(0o100644), Some(OWNER), Some(gid), OWNER)
        .unwrap();
    assert_eq!((a.perm, a.uid), (0o644, OWNER));
    rig.tree
        .set_attr(dir, Some(0o755), None, None, OWNER)
        .unwrap();
    for uid in [OWNER, ROOT] {
        // A mode for the instance's files is accepted from its owner and root, and changes
        // nothing (copy tools set the source's mode after writing spec.json).
        let a = rig
            .tree
            .set_attr(spec, Some(0o600), None, None, uid)
            .unwrap();
        assert_eq!(a.perm, 0o644);
        // Any other owner or group, and the folder's mode: EPERM.
        assert_eq!(
            eno(rig.tree.set_attr(spec, None, Some(OTHER), None, uid)),
            Errno::EPERM
        );
        assert_eq!(
            eno(rig.tree.set_attr(dir, Some(0o777), None, None, uid)),
            Errno::EPERM
        );
        assert_eq!(
            eno(rig.tree.set_attr(spec, None, None, Some(gid + 1), uid)),
            Errno::EPERM
        );
    }
    // Not from anyone else.
    assert_eq!(
        eno(rig.tree.set_attr(spec, Some(0o600), None, None, OTHER)),
        Errno::EPERM
    );
    let a = rig.tree.getattr(spec).unwrap();
    assert_eq!((a.perm, a.uid, a.gid), (0o644, OWNER, gid));
    // A built instance's spec.json stays 0444 whatever mode its owner sets.
    rig.write("instances/web1/spec.json", OWNER, SPEC)
        .await
        .unwrap();
    rig.wait_status("web1", "running").await;
    let spec = rig.ino("instances/web1/spec.json").unwrap();
    let a = rig
        .tree
        .set_attr(spec, Some(0o644), None, None, OWNER)
        .unwrap();
    assert_eq!(a.perm, 0o444);
    // Other kvmfs files keep the strict rule.
    let node_status = rig.ino("nodes/n1/status").unwrap();
    assert_eq!(
        eno(rig
            .tree
            .set_attr(node_status, Some(0o666), None, None, ROOT)),
        Errno::EPERM
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scratch_files_owner_may_chmod_and_only_root_may_chown() {
    let rig = rig().await;
    rig.mkdir("web1", OWNER).await.unwrap();
    let ino = scratch(&rig, "web1", ".spec.json.swp", OWNER, b"swap").await;
    let a = rig
        .tree
        .set_attr(ino, Some(0o600), None, None, OWNER)
        .unwrap();
    assert_eq!(a.perm, 0o600);
    assert_eq!(rig.tree.getattr(ino).unwrap().perm, 0o600);
    assert_eq!(
        eno(rig.tree.set_attr(ino, Some(0o644), None, None, OTHER)),
        Errno::EPERM,
        "not the owner"
    );
    assert_eq!(
        eno(rig.tree.set_attr(ino, None, Some(OTHER), None, OWNER)),
        Errno::EPERM,
        "only root gives files away"
    );
    assert_eq!(rig.tree.getattr(ino).unwrap().uid, OWNER);
    let a = rig
        .tree
        .set_attr(ino, None, Some(OTHER), None, ROOT)
        .unwrap();
    assert_eq!(a.uid, OTHER);
    assert_eq!(rig.tree.getattr(ino).unwrap().perm, 0o600);
}
