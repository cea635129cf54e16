//! `b2fs-shim`: mounts the plots a b2-proxy serves as a read-only directory, for Chia harvesters.
//!
//! This file is the command line, startup (mount point checks, first file list), the mount itself, and
//! clean shutdown on SIGTERM/SIGINT, a file list refresh on SIGHUP, and readiness for systemd (Type=notify). The filesystem is in [`fs`], the directory tree in [`tree`], the HTTP
//! client in [`client`].

mod client;
mod fs;
mod metrics;
mod mountpoint;
mod tree;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::{CommandFactory, Parser, ValueEnum};
use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::client::{ClientConfig, ClientError, ProxyClient};
use crate::fs::{B2Fs, CacheMode, FsConfig, Refresher, Shared};
use crate::metrics::Metrics;
use crate::tree::Tree;

/// How long the session loop may take to end after the unmount before we exit anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long the fresh mount may take to answer its first statfs before the start counts as failed.
const MOUNT_ANSWER_LIMIT: Duration = Duration::from_secs(10);

/// `--version`: the crate version and the git commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("B2FS_GIT_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "b2fs-shim",
    version = VERSION,
    about = "Mount the plots served by b2-proxy as a read-only directory (FUSE)",
    long_about = "Mount the plots served by b2-proxy as a read-only directory (FUSE), for Chia harvesters.\n\n\
        Every read() becomes one HTTP range request to the proxy, which caches and fetches from Backblaze B2; \
        the shim keeps no data of its own. Names with '/' in B2 appear as directories. The file list is \
        refreshed every --attr-ttl, so new plots appear without a remount.\n\n\
        Runs in the foreground and logs to stderr; SIGTERM or SIGINT unmounts cleanly, SIGHUP refreshes the file \
        list now. Under systemd (Type=notify) it reports ready once the mount answers. A stale mount left by a \
        crashed shim is detected and detached at start; a non-empty mount point is refused unless \
        --allow-non-empty. If the proxy is not reachable at start, the shim waits \
        up to --startup-wait for it, then mounts an empty directory and keeps retrying in the background: plots \
        appear as soon as the proxy answers."
)]
struct Cli {
    /// Directory to mount on (must exist, and be empty unless --allow-non-empty).
    #[arg(required_unless_present = "generate")]
    mountpoint: Option<PathBuf>,

    /// Base URL of the b2-proxy HTTP API. Plain http:// needs no CA certificates.
    #[arg(
        long,
        value_name = "URL",
        env = "B2FS_PROXY",
        default_value = "http://127.0.0.1:8642"
    )]
    proxy: String,

    /// Bearer token for the proxy (its `server.auth_token`). Prefer the B2FS_TOKEN environment variable:
    /// command-line arguments are visible to every user in `ps`.
    #[arg(long, value_name = "TOKEN", env = "B2FS_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// Let users other than the one running the shim (e.g. a harvester running as `chia`) access the mount.
    /// When the shim does not run as root this needs `user_allow_other` in /etc/fuse.conf.
    #[arg(long)]
    allow_other: bool,

    /// Mount even if the mount point holds files or directories (they are hidden while mounted).
    #[arg(long)]
    allow_non_empty: bool,

    /// How often the file list is refreshed from the proxy, and how long the kernel may cache names and
    /// attributes. New plots appear (and removed ones vanish) within this time. Examples: 60s, 5m.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    attr_ttl: Duration,

    /// How file data reaches the shim.
    ///
    /// `direct` (default): direct I/O (FOPEN_DIRECT_IO). Each read() the harvester makes arrives with its
    /// exact offset and size (Chia reads 8191 bytes at a time) and all of a proof's 32 parallel reads can
    /// be in flight at once; nothing is cached in the kernel, the proxy's cache serves repeats. Measured
    /// best for Chia lookups. mmap works only on kernels with FUSE_DIRECT_IO_ALLOW_MMAP (6.6+).
    ///
    /// `page`: the kernel page cache. Reads arrive page-aligned and rounded up (an 8191-byte read becomes
    /// 12 KiB or more), fewer are in flight at once, but repeated reads of the same bytes (plot headers) are
    /// answered by the kernel without a request. Useful for sequential copies.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = CacheMode::Direct)]
    cache_mode: CacheMode,

    /// Upper bound on one request to the proxy, body included. A read that takes longer fails with EIO
    /// instead of hanging the harvester.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    /// Upper bound on opening a TCP connection to the proxy: a proxy that is down fails reads this fast.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,

    /// How long to wait at start for the proxy to list the files before mounting an empty directory (the
    /// list is then retried in the background). 0s mounts at once.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    startup_wait: Duration,

    /// Stay in the foreground. This is always the case (run it under systemd to daemonize); the flag is
    /// accepted for compatibility with mount helpers and scripts.
    #[arg(short = 'f', long = "foreground", id = "foreground")]
    _foreground: bool,

    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives such as
    /// `b2fs_shim=debug,fuser=info`. Falls back to RUST_LOG, then `info`. An invalid filter is an error (exit 2).
    #[arg(
        long,
        alias = "log",
        value_name = "FILTER",
        env = "RUST_LOG",
        default_value = "info"
    )]
    log_level: String,

    /// Log format on stderr: `text` (one line per event) or `json` (one JSON object per line, for log
    /// collectors).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Serve Prometheus metrics (reads, bytes, errors, latency histogram, tree size) at
    /// http://ADDR/metrics, e.g. 127.0.0.1:9643. Off by default.
    #[arg(long, value_name = "ADDR", env = "B2FS_METRICS")]
    metrics: Option<SocketAddr>,

    /// Print a man page (`man`) or a shell completion script (`bash`, `zsh`, `fish`) for this command
    /// line and exit. Used to build the package.
    #[arg(long, value_enum, value_name = "WHAT", hide = true)]
    generate: Option<Generate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Generate {
    Man,
    Bash,
    Zsh,
    Fish,
}

fn generate(what: Generate) -> std::io::Result<()> {
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    let shell = match what {
        Generate::Man => return clap_mangen::Man::new(cmd).render(&mut out),
        Generate::Bash => clap_complete::Shell::Bash,
        Generate::Zsh => clap_complete::Shell::Zsh,
        Generate::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, "b2fs-shim", &mut out);
    Ok(())
}

/// FUSE pages per request this shim wants the kernel to allow (4 MiB: a v2 chunk index in one read).
const WANTED_MAX_PAGES: u64 = 1024;

/// Warns when the kernel splits large reads into 1 MiB requests (`fs.fuse.max_pages_limit`, Linux 6.13+):
/// each piece is then a request of its own, one after the other, so a cold 3.6 MB read costs four upstream
/// rounds instead of one. Older kernels have no such setting (and always split at 1 MiB).
fn warn_small_fuse_requests() {
    let path = "/proc/sys/fs/fuse/max_pages_limit";
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    if let Ok(limit) = text.trim().parse::<u64>()
        && limit < WANTED_MAX_PAGES
    {
        warn!(
            "fs.fuse.max_pages_limit is {limit} pages per FUSE read: larger reads reach b2fs as several \
             sequential requests; set it to {WANTED_MAX_PAGES} (the package ships \
             /usr/lib/sysctl.d/60-b2fs-fuse.conf: `sysctl -p /usr/lib/sysctl.d/60-b2fs-fuse.conf`) and remount"
        );
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(what) = cli.generate {
        return match generate(what) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("b2fs-shim: cannot write the {what:?} output: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let filter = match tracing_subscriber::EnvFilter::try_new(&cli.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("b2fs-shim: invalid --log-level {:?}: {e}", cli.log_level);
            return ExitCode::from(2);
        }
    };
    // fuser logs through the `log` crate; tracing-subscriber's default `tracing-log` feature forwards it.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let init = match cli.log_format {
        // Colours only on a terminal: under systemd the log goes to the journal as plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Err(e) = init {
        eprintln!("b2fs-shim: cannot set up logging: {e}");
        return ExitCode::from(2);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let requested = cli
        .mountpoint
        .as_deref()
        .context("the MOUNTPOINT argument is missing")?;
    let mountpoint = mountpoint::prepare(requested, cli.allow_non_empty)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("b2fs-io")
        .build()
        .context("cannot start the async runtime")?;
    // Before anything can take long: a SIGHUP or SIGTERM during the start must not find the default action.
    let mut signals = {
        let _guard = rt.enter();
        Signals::install()?
    };

    let client = ProxyClient::new(&ClientConfig {
        base_url: cli.proxy.clone(),
        token: cli.token.clone(),
        timeout: cli.timeout,
        connect_timeout: cli.connect_timeout,
    })?;
    let metrics = Arc::new(Metrics::new().context("cannot register metrics")?);
    let metrics_listener = match cli.metrics {
        Some(addr) => Some(
            rt.block_on(metrics::bind(addr))
                .with_context(|| format!("cannot listen on --metrics {addr}"))?,
        ),
        None => None,
    };

    // SAFETY: geteuid/getegid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let shared = Arc::new(Shared::new(
        client,
        metrics.clone(),
        FsConfig {
            attr_ttl: cli.attr_ttl,
            cache_mode: cli.cache_mode,
            uid,
            gid,
        },
        Tree::empty(SystemTime::now()),
    ));

    let mut refresher = Refresher::new(shared.clone());
    rt.block_on(initial_load(&mut refresher, &cli))?;

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("b2fs".to_owned()),
        MountOption::Subtype("b2fs".to_owned()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    if cli.allow_other {
        config.acl = SessionACL::All;
    }
    // One request loop is enough: everything it does is in memory, reads are handed to tasks.
    config.n_threads = Some(1);

    let fs = B2Fs::new(shared.clone(), rt.handle().clone());
    let mut session = Session::new(fs, &mountpoint, &config)
        .map_err(|e| explain_mount_error(e, &mountpoint, cli.allow_other, uid))?;
    info!(
        "mounted {} (proxy {}, cache mode {:?}, attr ttl {:?}, timeout {:?})",
        mountpoint.display(),
        cli.proxy,
        cli.cache_mode,
        cli.attr_ttl,
        cli.timeout
    );
    warn_small_fuse_requests();
    refresher.set_notifier(session.notifier());
    let mut unmounter = session.unmount_callable();

    let wake = Arc::new(Notify::new());
    rt.spawn(refresher.run(cli.attr_ttl.max(Duration::from_secs(1)), wake.clone()));
    if let Some(listener) = metrics_listener {
        let addr = listener.local_addr().ok();
        rt.spawn(async move {
            if let Err(e) = metrics::serve(listener, metrics).await {
                error!("metrics endpoint {addr:?} stopped: {e}");
            }
        });
        info!(
            "metrics at http://{}/metrics",
            cli.metrics.map(|a| a.to_string()).unwrap_or_default()
        );
    }

    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("fuse-loop".to_owned())
        .spawn(move || {
            let _ = done_tx.send(session.run());
        })
        .context("cannot start the FUSE request loop")?;

    if let Err(e) = mountpoint::wait_answering(&mountpoint, MOUNT_ANSWER_LIMIT) {
        if let Err(u) = unmounter.unmount() {
            warn!("unmounting after the failed start: {u}");
        }
        return Err(e);
    }
    let files = shared.tree().file_count();
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!(
            "mounted {} ({files} files)",
            mountpoint.display()
        )),
    ]);

    rt.block_on(wait_and_unmount(
        done_rx,
        &mut unmounter,
        &mountpoint,
        &mut signals,
        &wake,
    ))
}

/// A notification to systemd; a no-op when not started by it (no NOTIFY_SOCKET).
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        warn!("cannot notify systemd: {e}");
    }
}

/// The signals the shim handles.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
        })
    }
}

/// Load the file list before mounting, so the harvester's first scan sees the plots. Retries for up to
/// `--startup-wait` while the proxy is unreachable (it may be starting next to us); after that, mounts an empty
/// tree and leaves the retrying to the background refresher. A rejected token is a configuration error and
/// stops the start at once.
async fn initial_load(refresher: &mut Refresher, cli: &Cli) -> anyhow::Result<()> {
    let deadline = Instant::now() + cli.startup_wait;
    let mut delay = Duration::from_millis(250);
    loop {
        match refresher.refresh_once().await {
            Ok(()) => return Ok(()),
            Err(e @ ClientError::Unauthorized(_)) => {
                bail!("the proxy at {} rejected us: {e}", cli.proxy)
            }
            Err(e) => {
                if Instant::now() + delay > deadline {
                    warn!(
                        "cannot list files from the proxy at {} ({e}); mounting an EMPTY directory for now. \
                         The list is retried in the background and the plots appear as soon as the proxy \
                         answers",
                        cli.proxy
                    );
                    return Ok(());
                }
                info!("waiting for the proxy at {}: {e}", cli.proxy);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Wait for SIGTERM/SIGINT (then unmount) or for the mount to go away by itself (someone ran `umount`); a
/// SIGHUP refreshes the file list and keeps waiting.
async fn wait_and_unmount(
    mut done: tokio::sync::oneshot::Receiver<std::io::Result<()>>,
    unmounter: &mut SessionUnmounter,
    mountpoint: &Path,
    signals: &mut Signals,
    wake: &Notify,
) -> anyhow::Result<()> {
    let shown = mountpoint.display();
    let signal_name = loop {
        tokio::select! {
            _ = signals.term.recv() => break "SIGTERM",
            _ = signals.int.recv() => break "SIGINT",
            _ = signals.hup.recv() => wake.notify_one(),
            ended = &mut done => {
                return match ended {
                    Ok(Ok(())) => {
                        info!("{shown} was unmounted; exiting");
                        Ok(())
                    }
                    Ok(Err(e)) => Err(e).context("the FUSE session ended with an error"),
                    Err(_) => bail!("the FUSE request loop stopped unexpectedly"),
                };
            }
        }
    };
    notify(&[sd_notify::NotifyState::Stopping]);
    info!("{signal_name}: unmounting {shown}");
    // A plain unmount fails with EBUSY while files are open (a harvester holding plots); then detach lazily:
    // the mount disappears from the namespace now, and the open files fail once we exit.
    // (Blocking calls are fine here: this is the main thread, not a runtime worker.)
    if let Err(e) = unmounter.unmount() {
        warn!("unmounting {shown} failed ({e}), probably files are open; detaching it lazily");
        if let Err(e) = mountpoint::lazy_unmount(mountpoint) {
            warn!("lazy unmount of {shown} failed too: {e:#}");
        }
    }
    tokio::select! {
        ended = &mut done => match ended {
            Ok(Ok(())) => info!("unmounted {shown}"),
            // After a lazy detach the kernel ends the connection with ECONNABORTED once the last file closes.
            Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNABORTED) => info!("unmounted {shown}"),
            Ok(Err(e)) => warn!("the FUSE session ended with an error: {e}"),
            Err(_) => warn!("the FUSE request loop stopped unexpectedly"),
        },
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
            warn!("the FUSE session did not end within {SHUTDOWN_GRACE:?} (files still open?); exiting anyway");
        }
        _ = signals.term.recv() => warn!("second signal: exiting now"),
        _ = signals.int.recv() => warn!("second signal: exiting now"),
    }
    Ok(())
}

/// Add the likely cause to a mount failure.
fn explain_mount_error(
    e: std::io::Error,
    mountpoint: &Path,
    allow_other: bool,
    uid: u32,
) -> anyhow::Error {
    let mut hints = Vec::new();
    if allow_other && uid != 0 {
        hints.push(
            "--allow-other as a non-root user needs `user_allow_other` in /etc/fuse.conf"
                .to_owned(),
        );
    }
    match e.kind() {
        std::io::ErrorKind::NotFound => hints.push(
            "FUSE needs /dev/fuse (`modprobe fuse`) and, when not root, fusermount3 (package fuse3)".to_owned(),
        ),
        std::io::ErrorKind::PermissionDenied => hints.push(
            "run as root, or install fusermount3 (package fuse3) so a normal user can mount".to_owned(),
        ),
        _ => {}
    }
    let mut msg = format!("cannot mount on {}: {e}", mountpoint.display());
    if !hints.is_empty() {
        msg.push_str(" (");
        msg.push_str(&hints.join("; "));
        msg.push(')');
    }
    anyhow::anyhow!(msg)
}
