//! Local users for tests of what one user may see and do to another's instances: real
//! accounts (`useradd`), and file operations made as them in a forked child that drops to
//! their uid and gid.

use std::ffi::CString;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A local user made for one test (`useradd`), removed again when dropped.
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl User {
    pub fn create(tag: &str) -> User {
        let name = format!("kvmfsrel-{}-{tag}", std::process::id());
        let mut tries = 0;
        loop {
            let out = Command::new("useradd")
                .args([
                    "--no-create-home",
                    "--user-group",
                    "--shell",
                    "/usr/sbin/nologin",
                ])
                .arg(&name)
                .output()
                .expect("useradd");
            if out.status.success() {
                break;
            }
            // Another test (or helper) may hold the lock on /etc/passwd for a moment.
            tries += 1;
            assert!(
                tries < 50,
                "useradd {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .arg(flag)
                .arg(&name)
                .output()
                .expect("id");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("a numeric id")
        };
        User {
            uid: id("-u"),
            gid: id("-g"),
            name,
        }
    }
}

impl Drop for User {
    fn drop(&mut self) {
        for _ in 0..50 {
            let st = Command::new("userdel").arg(&self.name).status();
            if st.is_ok_and(|s| s.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One file operation, as a user would make it.
pub enum Op<'a> {
    Read(&'a Path),
    Write(&'a Path, &'a str),
    List(&'a Path),
    Mkdir(&'a Path),
    Rmdir(&'a Path),
    Create(&'a Path),
}

/// Runs `op` as `user` in a forked child that drops to the user's uid and gid (no extra
/// groups) before touching the mount; returns 0 or the errno the operation failed with.
pub fn as_user(user: &User, op: Op<'_>) -> i32 {
    let path = |p: &Path| CString::new(p.as_os_str().as_encoded_bytes()).expect("no NUL");
    let (kind, p, data) = match op {
        Op::Read(p) => (0, path(p), ""),
        Op::Write(p, d) => (1, path(p), d),
        Op::List(p) => (2, path(p), ""),
        Op::Mkdir(p) => (3, path(p), ""),
        Op::Rmdir(p) => (4, path(p), ""),
        Op::Create(p) => (5, path(p), ""),
    };
    let (uid, gid) = (user.uid, user.gid);
    // SAFETY: the child runs only async-signal-safe system calls on data prepared before
    // the fork (no allocation, no locks), then `_exit`s; the parent only waits for it.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let err = || *libc::__errno_location();
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(gid, gid, gid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                libc::_exit(250);
            }
            let mut buf = [0u8; 4096];
            let r = match kind {
                0 | 2 => {
                    let flags = if kind == 2 {
                        libc::O_RDONLY | libc::O_DIRECTORY
                    } else {
                        libc::O_RDONLY
                    };
                    let fd = libc::open(p.as_ptr(), flags);
                    if fd < 0 {
                        libc::_exit(err());
                    }
                    let n = if kind == 2 {
                        libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len())
                            as isize
                    } else {
                        libc::read(fd, buf.as_mut_ptr().cast(), buf.len())
                    };
                    if n < 0 { -1 } else { 0 }
                }
                1 => {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_TRUNC);
                    if fd < 0 {
                        libc::_exit(err());
                    }
                    if libc::write(fd, data.as_ptr().cast(), data.len()) < 0 {
                        -1
                    } else {
                        libc::close(fd)
                    }
                }
                3 => libc::mkdir(p.as_ptr(), 0o755),
                4 => libc::rmdir(p.as_ptr()),
                _ => {
                    let fd = libc::open(p.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
                    if fd < 0 { -1 } else { 0 }
                }
            };
            libc::_exit(if r < 0 { err() } else { 0 });
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        assert!(libc::WIFEXITED(status), "the child died: {status}");
        let code = libc::WEXITSTATUS(status);
        assert_ne!(code, 250, "cannot become uid {uid}");
        code
    }
}

/// A file opened by a user in a child process that keeps it open, so a test can read and
/// write through that very descriptor later (after the file's instance was deleted and made
/// again, say). Dropping it ends the child.
pub struct HeldOpen {
    pid: libc::pid_t,
    cmd: libc::c_int,
    res: libc::c_int,
}

impl HeldOpen {
    /// Opens `path` with `flags` as `user` (or as root with `None`); the errno if it fails.
    pub fn open(user: Option<&User>, path: &Path, flags: libc::c_int) -> Result<HeldOpen, i32> {
        let p = CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
        let ids = user.map(|u| (u.uid, u.gid));
        let (mut cmd, mut res) = ([0; 2], [0; 2]);
        // SAFETY: the child runs only async-signal-safe calls on data prepared before the
        // fork (stack buffers, no allocation, no locks) and `_exit`s; the parent keeps the
        // pipe ends it needs and closes the others.
        unsafe {
            assert_eq!(libc::pipe(cmd.as_mut_ptr()), 0);
            assert_eq!(libc::pipe(res.as_mut_ptr()), 0);
            let pid = libc::fork();
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                let (input, output) = (cmd[0], res[1]);
                let reply = |status: i32, data: &[u8]| {
                    let head = [status.to_le_bytes(), (data.len() as u32).to_le_bytes()];
                    libc::write(output, head.as_ptr().cast(), 8);
                    libc::write(output, data.as_ptr().cast(), data.len());
                };
                let errno = || *libc::__errno_location();
                if let Some((uid, gid)) = ids
                    && (libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setresgid(gid, gid, gid) != 0
                        || libc::setresuid(uid, uid, uid) != 0)
                {
                    reply(-250, &[]);
                    libc::_exit(1);
                }
                let fd = libc::open(p.as_ptr(), flags);
                if fd < 0 {
                    reply(errno(), &[]);
                    libc::_exit(1);
                }
                reply(0, &[]);
                let mut buf = [0u8; 4096];
                loop {
                    let mut op = [0u8; 5];
                    if libc::read(input, op.as_mut_ptr().cast(), 5) != 5 {
                        libc::_exit(0);
                    }
                    let len = u32::from_le_bytes([op[1], op[2], op[3], op[4]]) as usize;
                    match op[0] {
                        b'r' => {
                            let n = libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                            if n < 0 {
                                reply(errno(), &[]);
                            } else {
                                reply(0, &buf[..n as usize]);
                            }
                        }
                        _ => {
                            let len = len.min(buf.len());
                            if libc::read(input, buf.as_mut_ptr().cast(), len) != len as isize {
                                libc::_exit(0);
                            }
                            let n = libc::pwrite(fd, buf.as_ptr().cast(), len, 0);
                            if n < 0 {
                                reply(errno(), &[]);
                            } else {
                                reply(0, &[]);
                            }
                        }
                    }
                }
            }
            libc::close(cmd[0]);
            libc::close(res[1]);
            let h = HeldOpen {
                pid,
                cmd: cmd[1],
                res: res[0],
            };
            match h.answer() {
                (0, _) => Ok(h),
                (-250, _) => panic!("cannot become the user"),
                (e, _) => Err(e),
            }
        }
    }

    /// The child's answer: (errno or 0, bytes).
    fn answer(&self) -> (i32, Vec<u8>) {
        let mut head = [0u8; 8];
        // SAFETY: reading into buffers of the stated sizes from our own pipe.
        unsafe {
            assert_eq!(
                libc::read(self.res, head.as_mut_ptr().cast(), 8),
                8,
                "the child died"
            );
            let status = i32::from_le_bytes([head[0], head[1], head[2], head[3]]);
            let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
            let mut data = vec![0u8; len];
            let mut got = 0;
            while got < len {
                let n = libc::read(self.res, data[got..].as_mut_ptr().cast(), len - got);
                assert!(n > 0, "the child died");
                got += n as usize;
            }
            (status, data)
        }
    }

    fn send(&self, op: u8, data: &[u8]) {
        let mut msg = vec![op];
        msg.extend_from_slice(&(data.len() as u32).to_le_bytes());
        msg.extend_from_slice(data);
        // SAFETY: writing a buffer of its own length to our own pipe.
        let n = unsafe { libc::write(self.cmd, msg.as_ptr().cast(), msg.len()) };
        assert_eq!(n as usize, msg.len());
    }

    /// `pread` of up to 4 KiB at offset 0 through the held descriptor.
    pub fn pread(&self) -> Result<Vec<u8>, i32> {
        self.send(b'r', &[]);
        match self.answer() {
            (0, d) => Ok(d),
            (e, _) => Err(e),
        }
    }

    /// `pwrite` of `data` at offset 0 through the held descriptor.
    pub fn pwrite(&self, data: &[u8]) -> Result<(), i32> {
        self.send(b'w', data);
        match self.answer() {
            (0, _) => Ok(()),
            (e, _) => Err(e),
        }
    }
}

impl Drop for HeldOpen {
    fn drop(&mut self) {
        // SAFETY: closing our own pipe ends makes the child exit; then it is reaped.
        unsafe {
            libc::close(self.cmd);
            libc::close(self.res);
            libc::kill(self.pid, libc::SIGKILL);
            let mut st = 0;
            libc::waitpid(self.pid, &mut st, 0);
        }
    }
}
