//! `kvmfs menu`: the original control node's `dialog` menu, rebuilt over the mount. The
//! menu is a bash script (`mount/kvmfs-menu`) that only reads and writes the mount; the
//! binary carries it, checks the mount and runs it.

use std::convert::Infallible;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// The menu script, as `mount/kvmfs-menu` holds it.
pub const SCRIPT: &str = include_str!("../mount/kvmfs-menu");

/// Checks that `mountpoint` is a live kvmfs mount and that `dialog` and `jq` are there, then
/// replaces this process with the menu. Returns only to say why it cannot.
pub fn run(mountpoint: &Path) -> Result<Infallible, String> {
    let mp = crate::mount::live_kvmfs_at(mountpoint)?;
    for (program, package) in [("dialog", "dialog"), ("jq", "jq"), ("bash", "bash")] {
        if crate::mount::which(program).is_none() {
            return Err(format!(
                "the menu needs {program}, which is not installed (apt-get install {package})"
            ));
        }
    }
    let err = Command::new("bash")
        .arg("-c")
        .arg(SCRIPT)
        .arg("kvmfs-menu")
        .arg(&mp)
        .exec();
    Err(format!("cannot run bash: {err}"))
}
