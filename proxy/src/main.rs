//! `b2-proxy` daemon entry point: command line, logging, signals.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use b2_proxy::config::{Config, ProcessEnv};
use b2_proxy::server::Proxy;
use clap::Parser;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Caching range-read proxy in front of a Backblaze B2 bucket, for Chia harvesters and other
/// latency-critical random readers. Serves GET/HEAD /files/{name} with Range, GET /files, /metrics, /healthz.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
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
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .finish()
        // foyer reports disk I/O failures only in its log: this turns them into a degraded disk tier.
        .with(b2_proxy::cache::FoyerFaultLayer)
        .init();

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

async fn run(config: Config) -> anyhow::Result<()> {
    let proxy = Proxy::start(&config).await.context("starting b2-proxy")?;
    wait_for_signal().await?;
    tracing::info!("shutting down");
    proxy.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
