//! Mounting from `/etc/fstab`: the command lines `mount(8)` runs for a kvmfs line, turned
//! into what `kvmfs mount` takes.
//!
//! A line `kvmfs /cloud fuse.kvmfs config=/etc/kvmfs/kvmfs.toml,allow_other 0 0` makes
//! `mount /cloud` run `mount.fuse3`, which runs `kvmfs kvmfs /cloud -o rw,config=…,allow_other,…`
//! (the type after `fuse.` is the program, found in the standard `PATH`). With type `kvmfs`
//! instead, `mount(8)` runs a helper `/sbin/mount.kvmfs SOURCE MOUNTPOINT [-sfnv] [-o …]`,
//! which can be a link to the kvmfs binary. Both forms come here.

use std::ffi::OsString;
use std::path::PathBuf;

/// What a mount helper's command line asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HelperMount {
    pub mountpoint: PathBuf,
    pub config: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub log: Option<PathBuf>,
    pub allow_other: bool,
    /// `-f`: do everything but mount (`mount --fake`).
    pub fake: bool,
}

/// The options of a filesystem that `mount(8)` and `mount.fuse3` pass on and kvmfs has no
/// use for: every kvmfs mount is read-write, `nosuid` and `nodev` whatever they say.
const IGNORED: &[&str] = &[
    "rw",
    "defaults",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "diratime",
    "nodiratime",
    "lazytime",
    "nolazytime",
    "async",
    "silent",
    "loud",
];

/// The command line of a mount helper, if `argv` is one: the program called as
/// `mount.kvmfs`/`mount.fuse.kvmfs`, or called with a source and a mountpoint instead of a
/// subcommand. `None` for the usual `kvmfs SUBCOMMAND …`.
pub fn parse(argv: &[OsString]) -> Option<Result<HelperMount, String>> {
    let program = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let first = argv.get(1).and_then(|a| a.to_str()).unwrap_or("");
    let as_helper = program.starts_with("mount.")
        || (argv.len() >= 3
            && !first.is_empty()
            && !first.starts_with('-')
            && !matches!(first, "mount" | "menu" | "help"));
    as_helper.then(|| parse_helper(&argv[1..]))
}

fn parse_helper(args: &[OsString]) -> Result<HelperMount, String> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut m = HelperMount::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_str();
        match s {
            Some("-o") => {
                let v = it.next().ok_or("-o needs a list of options")?;
                options.push(v.to_str().ok_or("options must be UTF-8")?.to_string());
            }
            Some(o) if o.starts_with("-o") => options.push(o[2..].to_string()),
            // The type (`-t fuse.kvmfs`) and a mount namespace (`-N`) are mount(8)'s.
            Some("-t" | "-N") => {
                it.next();
            }
            Some(flags) if flags.starts_with('-') && flags.len() > 1 => {
                for f in flags[1..].chars() {
                    match f {
                        'f' => m.fake = true,
                        // sloppy, no mtab, verbose
                        's' | 'n' | 'v' => {}
                        _ => return Err(format!("unknown flag -{f}")),
                    }
                }
            }
            _ => positional.push(a.clone()),
        }
    }
    let [_source, mountpoint] = positional.as_slice() else {
        return Err(format!(
            "expected SOURCE MOUNTPOINT [-o OPTIONS], got {} argument(s) besides options",
            positional.len()
        ));
    };
    m.mountpoint = PathBuf::from(mountpoint);
    for opt in options.iter().flat_map(|o| o.split(',')) {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let path = || -> Result<PathBuf, String> {
            match value {
                Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
                _ => Err(format!("option {key} needs a path ({key}=PATH)")),
            }
        };
        match key {
            "" => {}
            "config" => m.config = Some(path()?),
            "state_dir" | "state-dir" => m.state_dir = Some(path()?),
            "log" => m.log = Some(path()?),
            "allow_other" => m.allow_other = true,
            "ro" => return Err("kvmfs mounts are read-write: drop the option ro".into()),
            k if IGNORED.contains(&k) || k.starts_with("x-") || k == "comment" => {}
            k => {
                return Err(format!(
                    "unknown option {k} (kvmfs takes config=PATH, state_dir=PATH, log=PATH \
                     and allow_other)"
                ));
            }
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn subcommands_are_not_helper_lines() {
        for a in [
            &["kvmfs", "mount", "/cloud"][..],
            &["kvmfs", "menu"],
            &["kvmfs", "--version"],
            &["kvmfs"],
            &["/usr/local/bin/kvmfs", "help", "mount"],
        ] {
            assert_eq!(parse(&argv(a)), None, "{a:?}");
        }
    }

    #[test]
    fn mount_fuse3_lines_are_read() {
        // What mount.fuse3 runs for `kvmfs /cloud fuse.kvmfs config=…,allow_other,noauto`.
        let m = parse(&argv(&[
            "kvmfs",
            "kvmfs",
            "/cloud",
            "-o",
            "rw,config=/etc/kvmfs/kvmfs.toml,allow_other,dev,suid",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            m,
            HelperMount {
                mountpoint: "/cloud".into(),
                config: Some("/etc/kvmfs/kvmfs.toml".into()),
                allow_other: true,
                ..Default::default()
            }
        );
    }

    #[test]
    fn mount_helper_lines_are_read() {
        let m = parse(&argv(&[
            "/sbin/mount.kvmfs",
            "kvmfs",
            "/cloud",
            "-sn",
            "-o",
            "state_dir=/var/lib/kvmfs,x-systemd.automount",
            "-olog=/var/log/kvmfs.log",
            "-t",
            "kvmfs",
            "-f",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(m.state_dir, Some("/var/lib/kvmfs".into()));
        assert_eq!(m.log, Some("/var/log/kvmfs.log".into()));
        assert!(m.fake && !m.allow_other && m.config.is_none());
    }

    #[test]
    fn bad_lines_are_refused_with_the_reason() {
        let err = |a: &[&str]| parse(&argv(a)).unwrap().unwrap_err();
        assert!(err(&["kvmfs", "kvmfs", "/c", "-o", "ro"]).contains("read-write"));
        assert!(
            err(&["kvmfs", "kvmfs", "/c", "-o", "colour=red"]).contains("unknown option colour")
        );
        assert!(err(&["kvmfs", "kvmfs", "/c", "-o", "config="]).contains("config=PATH"));
        assert!(err(&["mount.kvmfs", "/c"]).contains("SOURCE MOUNTPOINT"));
        assert!(err(&["kvmfs", "kvmfs", "/c", "-o"]).contains("-o needs"));
        assert!(err(&["kvmfs", "kvmfs", "/c", "-x"]).contains("-x"));
    }
}
