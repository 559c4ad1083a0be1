//! Mounting: checks that turn the usual mount failures into clear messages, the background
//! daemon start-up (`kvmfs mount` returns once the mount answers, like sshfs), and the
//! session lifecycle (unmount on SIGTERM/SIGINT, exit when unmounted from outside).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variable naming the pipe on which a backgrounded daemon reports readiness.
pub const READY_FD_ENV: &str = "KVMFS_READY_FD";
/// How long `kvmfs mount` waits for the daemon to answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mountpoint {0} does not exist")]
    Missing(PathBuf),
    #[error("mountpoint {0} is not a directory")]
    NotDir(PathBuf),
    #[error(
        "mountpoint {0} is busy: something is already mounted there (unmount it with `fusermount3 -u {0}`)"
    )]
    Busy(PathBuf),
    #[error("FUSE is unavailable: {0}")]
    NoFuse(String),
    #[error("cannot start the daemon: {0}")]
    Spawn(String),
    #[error("{0}")]
    Daemon(String),
}

/// What /proc/self/mountinfo says of the topmost mount at `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    fstype: String,
    /// The mount's source (`kvmfs` for every kvmfs mount).
    source: String,
    /// The mount's id: tells it from a mount that later takes its place.
    id: u64,
    /// The device's major and minor numbers; a FUSE connection's number in fusectl
    /// (`/sys/fs/fuse/connections/N`) is its device number.
    major: u32,
    minor: u32,
}

/// The topmost mount at `path`, per /proc/self/mountinfo.
fn mount_at(path: &Path) -> Option<Mount> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_str()?;
    info.lines().rev().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let mp = fields.get(4)?;
        let sep = fields.iter().position(|f| *f == "-")?;
        let fstype = fields.get(sep + 1)?;
        let source = fields.get(sep + 2)?;
        let (major, minor) = fields.get(2)?.split_once(':')?;
        let (major, minor) = (major.parse().ok()?, minor.parse().ok()?);
        let id = fields.first()?.parse().ok()?;
        (unescape_mountinfo(mp) == want).then(|| Mount {
            fstype: fstype.to_string(),
            source: unescape_mountinfo(source),
            id,
            major,
            minor,
        })
    })
}

/// The file system type mounted at `path`, if `path` is a mount point.
fn mounted_at(path: &Path) -> Option<String> {
    mount_at(path).map(|m| m.fstype)
}

/// Whether a FUSE filesystem is mounted at `path` in this process's mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    mounted_at(path).is_some_and(|t| t.starts_with("fuse"))
}

/// Whether a dead FUSE mount is at `path`: one whose connection answers `ENOTCONN`.
pub fn dead_mount_at(path: &Path) -> bool {
    mounted_at(path).is_some_and(|t| t.starts_with("fuse"))
        && matches!(ask(path, ANSWER_WITHIN), Answer::Gone)
}

/// Checks that a live kvmfs mount is at `path` (for `kvmfs menu`), without waiting on a
/// mount that does not answer; the absolute path, or why not, in words for the user.
pub fn live_kvmfs_at(path: &Path) -> Result<PathBuf, String> {
    let abs = absolute(path);
    let shown = abs.display();
    let Some(m) = mount_at(&abs) else {
        return Err(format!(
            "{shown} is not a kvmfs mount: nothing is mounted there (mount it with `kvmfs mount \
             {shown}`)"
        ));
    };
    if !(m.fstype == "fuse.kvmfs" || m.fstype == "fuse" && m.source == "kvmfs") {
        return Err(format!(
            "{shown} is not a kvmfs mount: {} ({}) is mounted there",
            m.fstype, m.source
        ));
    }
    match ask(&abs, ANSWER_WITHIN) {
        Answer::Answered => Ok(abs),
        Answer::Gone => Err(format!(
            "the kvmfs mount at {shown} is stale: its daemon is gone (mount it again with \
             `kvmfs mount {shown}`)"
        )),
        Answer::Silent => Err(format!(
            "the kvmfs mount at {shown} does not answer within {}s",
            ANSWER_WITHIN.as_secs()
        )),
        Answer::Failed(e) => Err(format!("the kvmfs mount at {shown} answers: {e}")),
    }
}

/// How long a mount's daemon may take to answer `statfs` before `kvmfs mount` takes it for
/// dead. A live kvmfs answers from a FUSE thread at once (they never wait on a backend).
const ANSWER_WITHIN: Duration = Duration::from_secs(3);

/// What a FUSE mount's daemon did when asked `statfs`.
#[derive(Debug)]
enum Answer {
    Answered,
    /// The daemon is gone and its connection closed (`ENOTCONN`).
    Gone,
    Failed(std::io::Error),
    /// No answer in time: the daemon is frozen, or dead with its connection still open
    /// (a thread of the killed process stuck in the kernel).
    Silent,
}

/// Asks the mount at `path` for `statfs` on a thread of its own, waiting at most `limit`
/// (the call itself cannot be cut short; it returns once the connection is aborted).
fn ask(path: &Path, limit: Duration) -> Answer {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("kvmfs-statfs".into())
        .spawn(move || {
            let _ = tx.send(statfs(&p));
        });
    if spawned.is_err() {
        return Answer::Failed(std::io::Error::other("cannot start a thread"));
    }
    match rx.recv_timeout(limit) {
        Ok(Ok(())) => Answer::Answered,
        Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOTCONN) => Answer::Gone,
        Ok(Err(e)) => Answer::Failed(e),
        Err(_) => Answer::Silent,
    }
}

/// Aborts FUSE connection `n` through fusectl (mounting it if needed): every request
/// waiting on it fails with `ENOTCONN`, and the processes stuck in them are freed.
fn abort_connection(n: u32) -> Result<(), MountError> {
    let dir = Path::new("/sys/fs/fuse/connections");
    let conn = dir.join(n.to_string());
    if !conn.exists() {
        // fusectl is not mounted on this machine yet.
        // SAFETY: mount(2) with NUL-terminated literals and no data; it has no other
        // preconditions.
        let r = unsafe {
            libc::mount(
                c"fusectl".as_ptr(),
                c"/sys/fs/fuse/connections".as_ptr(),
                c"fusectl".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot mount fusectl");
        }
    }
    std::fs::write(conn.join("abort"), "1").map_err(|e| {
        MountError::Daemon(format!(
            "cannot abort FUSE connection {n} through {}: {e}",
            conn.display()
        ))
    })
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Checks the mountpoint and FUSE before anything is started. A kvmfs mount left by a dead
/// daemon is cleared and reused: one whose connection is closed (`ENOTCONN`) is lazily
/// unmounted; one whose daemon does not answer `statfs` within `ANSWER_WITHIN` (a killed
/// daemon whose connection stays open, or a frozen one) has its connection aborted through
/// fusectl first, which also frees every process stuck in it. Nothing here touches the
/// mountpoint before it is known to answer, so a wedged mount cannot hang it.
pub fn preflight(mountpoint: &Path, on_silent: OnSilent) -> Result<PathBuf, MountError> {
    // Lexically first: resolving a path walks into the mount, which may not answer.
    let lexical = absolute(mountpoint);
    if clear_dead_mount(&lexical, on_silent)? == Found::LeftSilent {
        return Ok(lexical);
    }
    let abs = match std::fs::canonicalize(mountpoint) {
        Ok(p) => p,
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => lexical,
        Err(_) => return Err(MountError::Missing(mountpoint.to_path_buf())),
    };
    clear_dead_mount(&abs, on_silent)?;
    match std::fs::metadata(&abs) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(MountError::NotDir(abs)),
        Err(_) => return Err(MountError::Missing(abs)),
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(MountError::NoFuse(
            "/dev/fuse is missing (load the fuse module: modprobe fuse)".into(),
        ));
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_err()
        && which("fusermount3").is_none()
    {
        return Err(MountError::NoFuse(
            "cannot open /dev/fuse and fusermount3 is not installed (apt-get install fuse3)".into(),
        ));
    }
    Ok(abs)
}

/// What `preflight` does with a mount whose daemon does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSilent {
    /// Abort its connection and clear it: only once this daemon holds its state dir, so a
    /// mount is never torn down for a daemon that then cannot start.
    Abort,
    /// Leave it for the daemon to abort (`kvmfs mount` before it starts the daemon).
    Leave,
}

/// What `clear_dead_mount` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Nothing,
    Cleared,
    LeftSilent,
}

/// Clears a kvmfs mount at `path` whose daemon is dead (see `preflight`); any other mount
/// there is `Busy`.
fn clear_dead_mount(path: &Path, on_silent: OnSilent) -> Result<Found, MountError> {
    let Some(m) = mount_at(path) else {
        return Ok(Found::Nothing);
    };
    let ours = m.fstype == "fuse.kvmfs" || m.fstype == "fuse";
    if !ours {
        return Err(MountError::Busy(path.to_path_buf()));
    }
    match ask(path, ANSWER_WITHIN) {
        Answer::Answered => return Err(MountError::Busy(path.to_path_buf())),
        Answer::Failed(e) => {
            tracing::warn!(mountpoint = %path.display(), error = %e, "the mount there answers statfs with an error; leaving it");
            return Err(MountError::Busy(path.to_path_buf()));
        }
        Answer::Gone => {
            tracing::warn!(mountpoint = %path.display(), "clearing a stale FUSE mount left by a crashed daemon");
        }
        Answer::Silent if on_silent == OnSilent::Leave => {
            eprintln!(
                "kvmfs: the daemon of the mount at {} does not answer; the new daemon aborts \
                 its FUSE connection once it holds its state dir, and mounts anew",
                path.display()
            );
            return Ok(Found::LeftSilent);
        }
        Answer::Silent => {
            let conn = (m.major << 20) | m.minor;
            tracing::warn!(mountpoint = %path.display(), connection = conn, "the mount's daemon does not answer: aborting its FUSE connection");
            eprintln!(
                "kvmfs: the daemon of the mount at {} does not answer; aborting its FUSE \
                 connection ({conn}) and mounting anew",
                path.display()
            );
            abort_connection(conn)?;
        }
    }
    let _ = detach(path);
    if mount_at(path).is_some_and(|after| after == m) {
        return Err(MountError::Busy(path.to_path_buf()));
    }
    Ok(Found::Cleared)
}

/// `statfs` of a path: unlike `stat`, which the kernel may answer from its attribute cache
/// even after the daemon behind a FUSE mount died, it always reaches the filesystem.
fn statfs(p: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a NUL-terminated path and `buf` a properly sized, writable struct.
    let rc = unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut buf)
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Where `cmd` is on `PATH`, if it is.
pub fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(cmd))
            .find(|p| p.is_file())
    })
}

/// Detaches the mount at `mountpoint` even while it is in use (`fusermount3 -u -z`).
pub fn detach(mountpoint: &Path) -> Result<(), MountError> {
    let st = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg("--")
        .arg(mountpoint)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| MountError::NoFuse(format!("fusermount3: {e}")))?;
    if st.success() {
        Ok(())
    } else {
        Err(MountError::Daemon(format!(
            "cannot detach the mount at {}: fusermount3 -u -z failed ({st})",
            mountpoint.display()
        )))
    }
}

/// Starts this program again in the foreground as a detached daemon and waits until it
/// reports that the mount answers (or why it could not). `args` are the daemon's arguments.
pub fn spawn_daemon(args: &[std::ffi::OsString], log: &Path) -> Result<u32, MountError> {
    let exe = std::env::current_exe().map_err(|e| MountError::Spawn(e.to_string()))?;
    let (read_end, write_end) = pipe().map_err(|e| MountError::Spawn(format!("pipe: {e}")))?;
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let logf = {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            // Never through a link someone planted: the daemon would write where it points.
            .custom_flags(libc::O_NOFOLLOW)
            .open(log)
            .map_err(|e| MountError::Spawn(format!("cannot open log {}: {e}", log.display())))?;
        // The log names instances, users and nodes: its user's alone, also if it existed.
        let _ = f.set_permissions(std::fs::Permissions::from_mode(0o600));
        f
    };
    let logf2 = logf
        .try_clone()
        .map_err(|e| MountError::Spawn(e.to_string()))?;
    let write_fd = write_end.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env(READY_FD_ENV, write_fd.to_string())
        .stdin(Stdio::null())
        .stdout(logf)
        .stderr(logf2);
    // SAFETY: setsid is async-signal-safe and the closure touches no other state; it detaches
    // the daemon from the caller's terminal and process group.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| MountError::Spawn(e.to_string()))?;
    drop(write_end);
    let pid = child.id();
    let mut reader = BufReader::new(std::fs::File::from(read_end));
    let started = Instant::now();
    let mut line = String::new();
    // A reader thread keeps the wait bounded even if the daemon never writes.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = reader.read_line(&mut line).map(|_| line);
        let _ = tx.send(r);
    });
    let msg = loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(l)) => break l,
            Ok(Err(e)) => break format!("error: {e}"),
            Err(_) if started.elapsed() > START_TIMEOUT => {
                let _ = child.kill();
                return Err(MountError::Daemon(format!(
                    "the daemon did not answer within {START_TIMEOUT:?}; see {}",
                    log.display()
                )));
            }
            Err(_) => continue,
        }
    };
    let msg = msg.trim();
    if msg == "ready" {
        return Ok(pid);
    }
    let _ = child.wait();
    let reason = msg.strip_prefix("error: ").unwrap_or(msg);
    if reason.is_empty() {
        return Err(MountError::Daemon(format!(
            "the daemon exited before mounting; see {}",
            log.display()
        )));
    }
    Err(MountError::Daemon(reason.to_string()))
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-element array for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The write end must survive exec in the child: clear its close-on-exec flag.
    // SAFETY: `w` is an open descriptor.
    unsafe {
        let flags = libc::fcntl(w.as_raw_fd(), libc::F_GETFD);
        libc::fcntl(w.as_raw_fd(), libc::F_SETFD, flags & !libc::FD_CLOEXEC);
    }
    Ok((r, w))
}

/// The daemon side of the readiness pipe: reports one line to the waiting `kvmfs mount`.
pub struct Readiness(Option<std::fs::File>);

impl Readiness {
    pub fn from_env() -> Readiness {
        let fd = std::env::var(READY_FD_ENV)
            .ok()
            .and_then(|s| s.parse::<i32>().ok());
        // SAFETY: the variable is set only by `spawn_daemon`, which passes the write end of
        // a pipe it created for this process; nothing else owns that descriptor.
        let f = fd.map(|fd| unsafe { std::fs::File::from_raw_fd(fd) });
        // SAFETY: removing our own variable before any thread reads the environment.
        unsafe { std::env::remove_var(READY_FD_ENV) };
        Readiness(f)
    }

    pub fn ready(&mut self) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(b"ready\n");
        }
    }

    pub fn failed(&mut self, reason: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = writeln!(f, "error: {}", reason.replace('\n', " "));
        }
    }
}

/// Waits until `path` is served by a mount (its root answers `stat` with a new device).
pub fn wait_until_mounted(path: &Path, timeout: Duration) -> bool {
    use std::os::unix::fs::MetadataExt;
    let before = path
        .parent()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.dev());
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Ok(m) = std::fs::metadata(path)
            && Some(m.dev()) != before
            && mounted_at(path).is_some()
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
