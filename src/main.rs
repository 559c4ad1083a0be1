//! `kvmfs`: arguments, logging, configuration, migrations and the mount — nothing else.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use kvmfs::cluster::Cluster;
use kvmfs::config::Config;
use kvmfs::db::Db;
use kvmfs::fs::{KvmFs, OwnMount};
use kvmfs::mount::{self, OnSilent, Readiness};
use kvmfs::secrets::KeyRing;
use kvmfs::statedir::StateDir;
use kvmfs::tree::{Owner, Tree};

#[derive(Parser)]
#[command(
    name = "kvmfs",
    version,
    about = "A small KVM cloud as a FUSE filesystem"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount the cluster at MOUNTPOINT (the embedded demo when no --config is given).
    Mount(MountArgs),
    /// The operator's dialog menu over a mount (the original's makeinstance.sh menu).
    Menu {
        /// A live kvmfs mount.
        #[arg(default_value = "/cloud")]
        mountpoint: PathBuf,
    },
}

#[derive(clap::Args, Clone)]
struct MountArgs {
    /// An existing, empty directory.
    mountpoint: PathBuf,
    /// TOML configuration file (see docs/CONFIGURATION.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Stay attached to the terminal instead of running in the background.
    #[arg(long)]
    foreground: bool,
    /// Where the database (SQLite), demo nodes and log live; overrides the file's state_dir.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Let other users use the mount (needs `user_allow_other` in /etc/fuse.conf for
    /// non-root mounts). Permissions are still enforced per instance.
    #[arg(long)]
    allow_other: bool,
    /// Log file of a backgrounded daemon (default: STATE_DIR/kvmfs.log).
    #[arg(long)]
    log: Option<PathBuf>,
}

/// How long a stopping daemon waits for builds and deletes under way.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// How often the daemon checks that its mount is still there (see `Stop::MountGone`).
const MOUNT_WATCH: Duration = Duration::from_secs(1);
/// How often the daemon hands the memory it freed back to the system (see
/// `return_free_memory`).
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Returns the heap's free pages to the system. glibc keeps what is freed in the middle of
/// its heap; the pollers free and allocate whole tables and pool listings all the time, so
/// without this the daemon's resident memory holds that churn as well as what it uses.
fn return_free_memory() {
    // SAFETY: malloc_trim only releases free memory of the allocator; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Why the daemon stops.
enum Stop {
    /// The FUSE session ended: unmounted from outside, or the connection aborted.
    SessionEnded,
    /// The mount left this mount namespace, but the session goes on (a lazy unmount of a
    /// busy mount, or a copy of it held by another mount namespace).
    MountGone,
    Signal(&'static str),
}

/// How long a stopping daemon waits for the FUSE session to end after unmounting.
const SESSION_END_WAIT: Duration = Duration::from_secs(2);

fn main() {
    // Taken before any thread starts: it edits the environment.
    let mut readiness = Readiness::from_env();
    // glibc gives each thread that allocates an arena of its own (up to 8 per core) and keeps
    // what is freed in it; with a runtime, FUSE threads and libvirt's blocking calls that is
    // tens of MB of resident memory that nothing uses. Two arenas are plenty here.
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    // Everything kvmfs writes (the database, the key file, the log, the demo's nodes) is
    // its user's alone.
    // SAFETY: umask only sets this process's file creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    let argv: Vec<OsString> = std::env::args_os().collect();
    let args = match kvmfs::fstab::parse(&argv) {
        // mount(8) for an fstab line (`fuse.kvmfs`, or a `mount.kvmfs` helper).
        Some(Ok(h)) if h.fake => std::process::exit(0),
        Some(Ok(h)) => MountArgs {
            mountpoint: h.mountpoint,
            config: h.config,
            foreground: false,
            state_dir: h.state_dir,
            allow_other: h.allow_other,
            log: h.log,
        },
        Some(Err(e)) => {
            eprintln!("kvmfs: {e}");
            std::process::exit(1);
        }
        None => match Cli::parse_from(argv).cmd {
            Cmd::Mount(args) => args,
            Cmd::Menu { mountpoint } => {
                let Err(e) = kvmfs::menu::run(&mountpoint);
                eprintln!("kvmfs menu: {e}");
                std::process::exit(1);
            }
        },
    };
    let code = if args.foreground {
        init_logging();
        match run_daemon(&args, &mut readiness) {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!("{e:#}");
                readiness.failed(&format!("{e:#}"));
                1
            }
        }
    } else {
        match start_background(&args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("kvmfs: {e:#}");
                1
            }
        }
    };
    std::process::exit(code);
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KVMFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fuser=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

fn load_config(args: &MountArgs) -> anyhow::Result<Config> {
    Ok(match &args.config {
        Some(path) => Config::load(path, args.state_dir.clone())?,
        None => kvmfs::demo::config(args.state_dir.clone())?,
    })
}

/// Checks what can be checked here, then starts the daemon and waits for its mount.
fn start_background(args: &MountArgs) -> anyhow::Result<()> {
    // A mount whose daemon does not answer is left to the daemon, which aborts it once it
    // holds its state dir.
    let mp = mount::preflight(&args.mountpoint, OnSilent::Leave)?;
    let cfg = load_config(args)?;
    StateDir::check_free(&cfg.state_dir)?;
    let log = args
        .log
        .clone()
        .unwrap_or_else(|| cfg.state_dir.join("kvmfs.log"));
    let mut daemon_args: Vec<OsString> =
        vec!["mount".into(), mp.into_os_string(), "--foreground".into()];
    if let Some(c) = &args.config {
        daemon_args.push("--config".into());
        daemon_args.push(std::fs::canonicalize(c)?.into_os_string());
    }
    daemon_args.push("--state-dir".into());
    daemon_args.push(std::path::absolute(&cfg.state_dir)?.into_os_string());
    if args.allow_other {
        daemon_args.push("--allow-other".into());
    }
    mount::spawn_daemon(&daemon_args, &log)?;
    Ok(())
}

/// Refuses to start with a key that opens none of the database's private keys while it
/// holds some sealed under keys this daemon lacks (a new control node given no key file:
/// its new key is removed again), warns about rows it cannot open, and seals what is
/// stored in the clear or under a key being rotated out.
async fn check_keys(
    cluster: &Cluster,
    key_file: &std::path::Path,
    made: bool,
) -> anyhow::Result<()> {
    let foreign = cluster.foreign_key_ids().await?;
    if !foreign.is_empty() {
        let list = foreign
            .iter()
            .map(|(id, n)| format!("{id} ({n} rows)"))
            .collect::<Vec<_>>()
            .join(", ");
        if made {
            let _ = std::fs::remove_file(key_file);
            anyhow::bail!(
                "the database holds private keys sealed with key {list}, and there was no key \
                 file at {}: copy the key file of the other control nodes there (mode 0600), \
                 or name it in [secrets] key_file",
                key_file.display()
            );
        }
        tracing::error!(keys = %list, "private keys sealed with keys this kvmfs does not hold cannot be read (ssh_key answers EIO); see [secrets] in CONFIGURATION.md");
    }
    if let Err(e) = cluster.seal_keys_at_rest().await {
        tracing::warn!(error = %e, "cannot seal the private keys stored in the clear yet");
    }
    Ok(())
}

fn run_daemon(args: &MountArgs, readiness: &mut Readiness) -> anyhow::Result<()> {
    mount::preflight(&args.mountpoint, OnSilent::Leave)?;
    let cfg = Arc::new(load_config(args)?);
    let state = StateDir::lock(&cfg.state_dir)?;
    // Only now, holding the state dir: a mount is never torn down for a daemon that could
    // not start.
    let mp = mount::preflight(&args.mountpoint, OnSilent::Abort)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .enable_all()
        .build()?;
    let cluster = rt.block_on(async {
        let db = match &cfg.database.replica_url {
            None if !cfg.database.urls.is_empty() => {
                Db::connect_cluster(
                    &cfg.database.urls,
                    cfg.timing.db_timeout(),
                    cfg.timing.refresh(),
                )
                .await
            }
            None => Db::connect(&cfg.database.url, cfg.timing.db_timeout()).await,
            Some(replica) => {
                Db::connect_with_replica(
                    &cfg.database.url,
                    replica,
                    cfg.timing.db_timeout(),
                    cfg.timing.refresh(),
                )
                .await
            }
        }
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        tracing::info!(database = db.display_url(), "database connected");
        db.migrate().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let key_file = cfg.key_file();
        let (keys, made) =
            KeyRing::load(&key_file, &cfg.secrets.previous_key_files, true)?;
        if made {
            tracing::info!(key_file = %key_file.display(), key = keys.current_id(), "made a new key file for the private keys");
        }
        let cluster = Cluster::new(
            cfg.clone(),
            db,
            state.worker_id().to_string(),
            Arc::new(keys),
        );
        check_keys(&cluster, &key_file, made).await?;
        cluster.start().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::Ok(cluster)
    })?;

    // SAFETY: geteuid/getegid have no preconditions.
    let owner = unsafe {
        Owner {
            uid: libc::geteuid(),
            gid: libc::getegid(),
        }
    };
    let tree = Arc::new(Tree::new(cluster.clone(), owner));
    let mut fuse_cfg = fuser::Config::default();
    fuse_cfg.mount_options = vec![
        fuser::MountOption::FSName("kvmfs".into()),
        fuser::MountOption::Subtype("kvmfs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
    ];
    if args.allow_other {
        fuse_cfg.acl = fuser::SessionACL::All;
    }
    fuse_cfg.n_threads = Some(4);
    fuse_cfg.clone_fd = true;
    // Handlers go in before the mount appears: a SIGTERM right after mounting must unmount,
    // not kill the daemon and leave a dead mount behind.
    let (mut term, mut int) = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        anyhow::Ok((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    let own = OwnMount::new(mp.clone());
    let fs = KvmFs::new(
        tree.clone(),
        own.clone(),
        rt.handle().clone(),
        cfg.timing.op_timeout(),
    );
    let mut session = fuser::Session::new(fs, &mp, &fuse_cfg)
        .map_err(|e| anyhow::anyhow!("cannot mount {}: {e}", mp.display()))?;
    // Before the session serves anything, so the kernel never caches an unfollowed view.
    kvmfs::fs::follow_views(tree, session.notifier(), rt.handle().clone());
    let mut unmounter = session.unmount_callable();
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    // Never joined: when the session ends, `KvmFs::destroy` may park this thread for good
    // (see there); the daemon then hears of it through `OwnMount::session_over`.
    std::thread::Builder::new()
        .name("fuse".into())
        .spawn(move || {
            let r = session.run();
            let _ = done_tx.send(r);
        })?;
    if !mount::wait_until_mounted(&mp, Duration::from_secs(10)) {
        anyhow::bail!("the mount at {} did not answer", mp.display());
    }
    tracing::info!(mountpoint = %mp.display(), nodes = cfg.nodes.len(), "mounted");
    readiness.ready();

    let stop = rt.block_on(async {
        let mut watch = tokio::time::interval(MOUNT_WATCH);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut trim = tokio::time::interval(TRIM_EVERY);
        trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut done_rx => return Stop::SessionEnded,
                _ = own.session_over.notified() => return Stop::SessionEnded,
                _ = term.recv() => return Stop::Signal("SIGTERM"),
                _ = int.recv() => return Stop::Signal("SIGINT"),
                _ = watch.tick() => {
                    if !mount::is_mounted(&mp) {
                        return Stop::MountGone;
                    }
                }
                _ = trim.tick() => return_free_memory(),
            }
        }
    });
    let mut session_ended = false;
    match stop {
        Stop::SessionEnded => {
            tracing::info!("unmounted from outside (or the connection was aborted); exiting");
            session_ended = true;
        }
        Stop::MountGone => {
            // Detached from outside (`-z`) while in use, or unmounted here while another
            // mount namespace still holds a copy: the session would run on unseen.
            tracing::info!("the mount is gone from this namespace; exiting");
        }
        Stop::Signal(sig) => {
            tracing::info!("{sig}: unmounting");
            if let Err(e) = unmounter.unmount() {
                // Something still uses the mount (a shell's working directory, an open
                // file): detach it so no dead mount outlives the daemon; users of it get
                // ENOTCONN.
                tracing::warn!(error = %e, "the mount is busy; detaching it (lazy unmount)");
                mount::detach(&mp)?;
            }
        }
    }
    if !session_ended {
        session_ended = rt
            .block_on(async {
                tokio::time::timeout(SESSION_END_WAIT, async {
                    tokio::select! {
                        _ = &mut done_rx => {}
                        _ = own.session_over.notified() => {}
                    }
                })
                .await
            })
            .is_ok();
    }
    if !session_ended {
        // Processes still hold the detached mount; the connection closes when we exit.
        tracing::info!("the detached mount is still held open; closing it at exit");
    }
    // Builds and deletes run on past the FUSE call that started them: let them end.
    let busy = cluster.claimed();
    if !busy.is_empty() {
        tracing::info!(instances = ?busy, "waiting for operations under way");
        let left = rt.block_on(cluster.drain(SHUTDOWN_GRACE));
        if !left.is_empty() {
            tracing::warn!(instances = ?left, "operations cut off at shutdown; the next start reconciles them");
        }
    }
    // Closing waits for connections in use to come back: bounded, like every wait here.
    let closed =
        rt.block_on(async { tokio::time::timeout(SESSION_END_WAIT, cluster.db().close()).await });
    if closed.is_err() {
        tracing::warn!("database connections still busy at exit; closing them with the process");
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    // Dropping the unmounter would unmount the mountpoint by its path, which may hold
    // another daemon's mount by now: what was this daemon's to unmount is unmounted above.
    std::mem::forget(unmounter);
    tracing::info!("stopped");
    Ok(())
}
