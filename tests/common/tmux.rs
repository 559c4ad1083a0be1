//! A terminal program driven as a person would: started in a tmux session of its own (a
//! private server socket per session), keys sent with `send-keys`, the screen read with
//! `capture-pane`. Every wait is for something on the screen, with a deadline.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a screen may take to show what a test waits for: generous, for a busy machine.
pub const SCREEN_WAIT: Duration = Duration::from_secs(60);

pub struct Tmux {
    socket: String,
}

/// What the pane shows once the program ended (see `Tmux::start`).
pub const EXITED: &str = "[exited ";

impl Tmux {
    /// Starts `command` (run by `sh -c`) in `dir` on a `width`×`height` terminal, with
    /// `env` added to tmux's environment. When the command ends, the pane shows
    /// `[exited N]` with its exit code and stays.
    pub fn start(command: &str, dir: &Path, env: &[(&str, &str)], width: u16, height: u16) -> Tmux {
        static N: AtomicU32 = AtomicU32::new(0);
        let socket = format!(
            "kvmfs-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let t = Tmux { socket };
        let mut cmd = t.tmux();
        cmd.args(["-u", "-f", "/dev/null", "new-session", "-d", "-s", "main"])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .arg("-c")
            .arg(dir);
        for (k, v) in env {
            cmd.arg("-e").arg(format!("{k}={v}"));
        }
        cmd.arg(format!("{command}; echo \"{EXITED}$?]\"; exec sleep 3600"));
        let out = cmd.output().expect("tmux");
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-L").arg(&self.socket).stdin(Stdio::null());
        c
    }

    /// Sends tmux key names (`Enter`, `Escape`, `Down`, `Space`, `F5`, `C-s`, `BSpace`, …).
    pub fn keys(&self, keys: &[&str]) {
        let out = self
            .tmux()
            .args(["send-keys", "-t", "main"])
            .args(keys)
            .output()
            .expect("tmux send-keys");
        assert!(out.status.success(), "tmux send-keys {keys:?}");
    }

    /// Types `text` as it is.
    pub fn type_text(&self, text: &str) {
        let out = self
            .tmux()
            .args(["send-keys", "-t", "main", "-l", text])
            .output()
            .expect("tmux send-keys -l");
        assert!(out.status.success(), "tmux send-keys -l {text:?}");
    }

    /// What the terminal shows now.
    pub fn screen(&self) -> String {
        let out = self
            .tmux()
            .args(["capture-pane", "-p", "-t", "main"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen shows `text`, and returns it.
    pub fn wait_for(&self, text: &str) -> String {
        self.wait_until(&format!("the screen to show {text:?}"), |s| {
            s.contains(text)
        })
    }

    /// Waits until the screen shows every one of `texts`, and returns it.
    pub fn wait_for_all(&self, texts: &[&str]) -> String {
        self.wait_until(&format!("the screen to show all of {texts:?}"), |s| {
            texts.iter().all(|t| s.contains(t))
        })
    }

    /// Waits until `cond` holds for the screen and the screen has settled (two captures
    /// 50 ms apart are the same: a program may be caught halfway through drawing a box),
    /// and returns it.
    pub fn wait_until(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            let s = self.screen();
            if cond(&s) && s == last {
                return s;
            }
            last = s.clone();
            if start.elapsed() > SCREEN_WAIT {
                panic!("timed out after {SCREEN_WAIT:?} waiting for {what}; the screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the program to end, and returns its exit code.
    pub fn wait_exit(&self) -> i32 {
        let s = self.wait_for(EXITED);
        let rest = &s[s.find(EXITED).unwrap() + EXITED.len()..];
        rest[..rest.find(']').unwrap()].parse().unwrap()
    }
}

impl Tmux {
    /// Closes the terminal, as closing its window does: the program gets SIGHUP.
    pub fn close(&self) {
        let _ = self
            .tmux()
            .args(["kill-session", "-t", "main"])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self
            .tmux()
            .arg("kill-server")
            .stderr(Stdio::null())
            .status();
    }
}
