//! `b2-proxy` daemon entry point: command line, logging, signals, systemd readiness.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use b2_proxy::catalog::Catalog;
use b2_proxy::config::{Config, ProcessEnv};
use b2_proxy::server::Proxy;
use clap::{CommandFactory, Parser, ValueEnum};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// `--version`: the crate version and the git commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("B2FS_GIT_COMMIT"),
    ")"
);

/// Caching range-read proxy in front of a Backblaze B2 bucket, for Chia harvesters and other
/// latency-critical random readers. Serves GET/HEAD /files/{name} with Range, GET /files, /metrics, /healthz.
///
/// Under systemd (Type=notify) it reports ready once the catalog is loaded, or once its first load has failed
/// (then /healthz says why and the load is retried). SIGHUP reloads the catalog now; SIGTERM or SIGINT stop it
/// cleanly (open requests drain, the memory cache is flushed to the disk tier). Logs go to stderr.
#[derive(Parser, Debug)]
#[command(name = "b2-proxy", version = VERSION, about, long_about)]
struct Args {
    /// Path of the TOML configuration file (see deploy/config.example.toml for every key).
    /// B2_APPLICATION_KEY_ID and B2_APPLICATION_KEY in the environment override the file's [b2] secrets;
    /// B2PROXY_AUTH_TOKEN overrides [server] auth_token.
    #[arg(
        short,
        long,
        default_value = "/etc/b2-proxy/config.toml",
        env = "B2PROXY_CONFIG"
    )]
    config: PathBuf,

    /// Validate the configuration, print it with secrets redacted, and exit (0 when valid).
    #[arg(long)]
    check_config: bool,

    /// Log filter, e.g. `info`, `debug`, `b2_proxy=debug,info` (RUST_LOG syntax; RUST_LOG also works).
    /// An invalid filter is an error (exit 2).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,

    /// Log format on stderr: `text` (one line per event) or `json` (one JSON object per line, for log
    /// collectors).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,

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
    let mut cmd = Args::command();
    let mut out = std::io::stdout().lock();
    let shell = match what {
        Generate::Man => return clap_mangen::Man::new(cmd).render(&mut out),
        Generate::Bash => clap_complete::Shell::Bash,
        Generate::Zsh => clap_complete::Shell::Zsh,
        Generate::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, "b2-proxy", &mut out);
    Ok(())
}

fn init_logging(filter: &str, format: LogFormat) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| format!("invalid --log filter {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // foyer reports disk I/O failures only in its log: FoyerFaultLayer turns them into a degraded disk tier.
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .with(b2_proxy::cache::FoyerFaultLayer)
            .try_init(),
        LogFormat::Json => builder
            .json()
            .finish()
            .with(b2_proxy::cache::FoyerFaultLayer)
            .try_init(),
    }
    .map_err(|e| format!("cannot set up logging: {e}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(what) = args.generate {
        return match generate(what) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("b2-proxy: cannot write the {what:?} output: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = init_logging(&args.log, args.log_format) {
        eprintln!("b2-proxy: {e}");
        return ExitCode::from(2);
    }

    let config = match Config::load(&args.config, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("b2-proxy: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(w) = Config::permission_warning(&args.config) {
        tracing::warn!("{w}");
    }
    if args.check_config {
        println!("# {}: valid", args.config.display());
        print!("{}", config.redacted_toml());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("b2-proxy: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("b2-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The signals the daemon handles. Installed before anything is reported to systemd, so a SIGHUP sent as soon
/// as the unit is up never finds the default action (exit).
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let proxy = Proxy::start(&config).await.context("starting b2-proxy")?;
    let ready = tokio::spawn(notify_ready_when_settled(proxy.catalog.clone()));
    loop {
        tokio::select! {
            _ = signals.term.recv() => break,
            _ = signals.int.recv() => break,
            _ = signals.hup.recv() => {
                // Logs go to stderr (the journal under systemd): there is no log file to reopen.
                tracing::info!("SIGHUP: reloading the catalog");
                proxy.catalog.request_refresh();
            }
        }
    }
    ready.abort();
    notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("shutting down");
    proxy.shutdown().await;
    Ok(())
}

/// Tells systemd (Type=notify) we are ready once the catalog has loaded, or once the first load has failed:
/// the API is up and `/healthz` says what is wrong, and the load is retried in the background.
async fn notify_ready_when_settled(catalog: std::sync::Arc<Catalog>) {
    let status = loop {
        let s = catalog.status();
        if s.loaded {
            break format!("serving: catalog of {} files loaded", s.files);
        }
        if let Some(e) = s.last_error {
            tracing::warn!(
                "ready without a catalog: the first load failed ({e}); retrying, /healthz reports it"
            );
            break format!("catalog not loaded, retrying: {e}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status),
    ]);
}

/// A notification to systemd; a no-op when not started by it (no NOTIFY_SOCKET).
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}
