//! Build script: records the commit the binary is built from (`KVMFS_COMMIT`, shown in
//! `/metrics/kvmfs.prom` as `kvmfs_build_info{commit=…}`), or `unknown` outside a git
//! checkout. Runs `git` only here, at build time; the daemon never does for this.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    let commit = std::env::var("KVMFS_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=KVMFS_COMMIT={commit}");
    println!("cargo:rerun-if-env-changed=KVMFS_COMMIT");
    // Build again when HEAD moves: HEAD itself (a checkout) and the branch it points to (a
    // commit), wherever git keeps them (a worktree keeps HEAD apart from the refs).
    for path in [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])),
        git(&["rev-parse", "--git-path", "packed-refs"]),
    ]
    .into_iter()
    .flatten()
    {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
