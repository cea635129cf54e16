//! `b2-emulator`: a local Backblaze B2 (native API) emulator for trying and testing b2fs.
//!
//! Prints, on start, one summary line and then one `key=value` line per fact on stdout, e.g.
//! ```text
//! b2-emulator listening on http://127.0.0.1:8180 bucket=b2fs-test bucket_id=... key_id=... application_key=...
//! endpoint=http://127.0.0.1:8180
//! ...
//! ```
//! and runs until SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use b2fs_tests::emulator::{
    DEFAULT_APPLICATION_KEY, DEFAULT_BUCKET, DEFAULT_KEY_ID, Emulator, Fault, Knobs,
    parse_bandwidth, parse_duration, parse_size,
};
use clap::Parser;

/// A local Backblaze B2 emulator (native API v2/v3/v4: authorize, list buckets, list file
/// names, download by name/id with Range) serving a directory and virtual files, with latency,
/// bandwidth and fault injection.
///
/// Control and counters over HTTP: GET /_emu/stats, POST /_emu/reset, GET|POST /_emu/config
/// (JSON merge, e.g. {"offline":true} or {"faults":{"reset":0.1}}), POST /_emu/expire-tokens,
/// GET|POST /_emu/files, POST /_emu/files/replace, POST /_emu/files/remove.
#[derive(Debug, Parser)]
#[command(name = "b2-emulator", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8180")]
    listen: SocketAddr,

    /// Bucket name.
    #[arg(long, default_value = DEFAULT_BUCKET)]
    bucket: String,

    /// Application key id clients authorize with.
    #[arg(long, default_value = DEFAULT_KEY_ID)]
    key_id: String,

    /// Application key clients authorize with.
    #[arg(long, default_value = DEFAULT_APPLICATION_KEY)]
    application_key: String,

    /// Serve every regular file under DIR (recursively), named by its relative path.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Add a virtual file NAME of SIZE (bytes, or with a unit: 108GiB, 4MB); repeatable.
    /// Its bytes are a deterministic function of the name and offset; no disk is used.
    #[arg(long = "virtual", value_name = "NAME=SIZE", value_parser = parse_virtual)]
    virtual_files: Vec<(String, u64)>,

    /// Add COUNT virtual files of SIZE named PREFIX000000.plot, PREFIX000001.plot, ...
    #[arg(long = "virtual-bulk", value_name = "PREFIX:COUNT:SIZE", value_parser = parse_bulk)]
    virtual_bulk: Vec<(String, usize, u64)>,

    /// Median of the lognormal latency added before each response head (e.g. 50ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "0s")]
    latency_median: Duration,

    /// Sigma (spread) of the lognormal latency; 0 gives exactly the median.
    #[arg(long, value_name = "SIGMA", default_value_t = 0.0)]
    latency_sigma: f64,

    /// Probability that a request gets the extra --tail-delay.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    tail_probability: f64,

    /// Extra delay of tail requests (e.g. 500ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "0s")]
    tail_delay: Duration,

    /// Seed of the latency and fault RNG (default: random).
    #[arg(long)]
    seed: Option<u64>,

    /// Global bandwidth cap shared by all downloads (e.g. 100MB/s, 1GiB, or bytes/s); 0 = unlimited.
    #[arg(long, value_name = "RATE", value_parser = parse_bandwidth, default_value = "0")]
    bandwidth: u64,

    /// Lifetime of authorization tokens (e.g. 24h, 10m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "24h")]
    token_lifetime: Duration,

    /// Probability of a 503 service_unavailable per download.
    #[arg(long = "fault-503", value_name = "P", default_value_t = 0.0)]
    fault_503: f64,

    /// Probability of a 429 too_many_requests (with Retry-After) per download.
    #[arg(long = "fault-429", value_name = "P", default_value_t = 0.0)]
    fault_429: f64,

    /// Retry-After seconds of injected 429s.
    #[arg(long, value_name = "SECS", default_value_t = 1)]
    retry_after: u64,

    /// Probability of a 500 internal_error per download.
    #[arg(long = "fault-500", value_name = "P", default_value_t = 0.0)]
    fault_500: f64,

    /// Probability that a download body is cut after half and the connection aborted.
    #[arg(long = "fault-reset", value_name = "P", default_value_t = 0.0)]
    fault_reset: f64,

    /// Probability that a download body ends early despite its Content-Length.
    #[arg(long = "fault-truncated", value_name = "P", default_value_t = 0.0)]
    fault_truncated: f64,

    /// Probability that a ranged download answers a shifted range (Content-Range and bytes).
    #[arg(long = "fault-wrong-range", value_name = "P", default_value_t = 0.0)]
    fault_wrong_range: f64,

    /// Also inject 503/429/500 into API calls (authorize, list).
    #[arg(long)]
    faults_on_api: bool,

    /// Account-wide download rate limit, as B2 enforces one (about 500/s by default): downloads per second
    /// above which the emulator answers 429 with B2's JSON error and Retry-After. 0 = off.
    #[arg(long, value_name = "RPS", default_value_t = 0.0)]
    rate_limit_rps: f64,

    /// Downloads that may arrive back to back above the rate limit (the token bucket's size; 0 = one
    /// second's worth).
    #[arg(long, value_name = "N", default_value_t = 0.0)]
    rate_limit_burst: f64,

    /// Stall the first download of each distinct (file, range) by this long (e.g. 2s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    first_attempt_delay: Option<Duration>,

    /// The key is valid for all buckets (authorize answers allowed.buckets = null) instead of
    /// being restricted to the bucket.
    #[arg(long)]
    unrestricted_key: bool,

    /// Restrict the key to file names starting with this prefix.
    #[arg(long, value_name = "PREFIX")]
    name_prefix: Option<String>,

    /// Start offline: every B2 request answers 503 (toggle with POST /_emu/config).
    #[arg(long)]
    offline: bool,
}

fn parse_virtual(text: &str) -> Result<(String, u64), String> {
    let (name, size) = text
        .rsplit_once('=')
        .ok_or_else(|| format!("expected NAME=SIZE, got {text:?}"))?;
    if name.is_empty() {
        return Err("the file name is empty".into());
    }
    Ok((name.to_string(), parse_size(size)?))
}

fn parse_bulk(text: &str) -> Result<(String, usize, u64), String> {
    let mut parts = text.rsplitn(3, ':');
    let (Some(size), Some(count), Some(prefix)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("expected PREFIX:COUNT:SIZE, got {text:?}"));
    };
    let count = count
        .parse::<usize>()
        .map_err(|e| format!("bad count {count:?}: {e}"))?;
    Ok((prefix.to_string(), count, parse_size(size)?))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();

    let mut knobs = Knobs::default();
    knobs.latency.median = args.latency_median;
    knobs.latency.sigma = args.latency_sigma;
    knobs.latency.tail_probability = args.tail_probability;
    knobs.latency.tail_delay = args.tail_delay;
    knobs.seed = args.seed;
    knobs.bandwidth = (args.bandwidth > 0).then_some(args.bandwidth);
    knobs.token_lifetime = args.token_lifetime;
    knobs.first_attempt_delay = args.first_attempt_delay;
    knobs.offline = args.offline;
    knobs.faults.retry_after_secs = args.retry_after;
    knobs.faults.on_api = args.faults_on_api;
    knobs.rate_limit = b2fs_tests::emulator::ratelimit::RateLimit {
        rps: args.rate_limit_rps,
        burst: args.rate_limit_burst,
    };
    for (fault, p) in [
        (Fault::ServiceUnavailable, args.fault_503),
        (Fault::TooManyRequests, args.fault_429),
        (Fault::InternalError, args.fault_500),
        (Fault::Reset, args.fault_reset),
        (Fault::Truncated, args.fault_truncated),
        (Fault::WrongRange, args.fault_wrong_range),
    ] {
        knobs.faults.set(fault, p);
    }
    knobs.validate()?;
    if let Some(dir) = &args.dir
        && !dir.is_dir()
    {
        bail!("--dir {}: not a directory", dir.display());
    }

    let mut builder = Emulator::builder()
        .listen(args.listen)
        .bucket(&args.bucket)
        .credentials(&args.key_id, &args.application_key)
        .unrestricted_key(args.unrestricted_key)
        .knobs(knobs);
    if let Some(prefix) = &args.name_prefix {
        builder = builder.name_prefix(prefix);
    }
    if let Some(dir) = &args.dir {
        builder = builder.dir(dir);
    }
    for (prefix, count, size) in &args.virtual_bulk {
        builder = builder.virtual_files(prefix, *count, *size);
    }
    for (name, size) in &args.virtual_files {
        builder = builder.virtual_file(name, *size);
    }
    let emu = builder.start().await.context("starting the emulator")?;

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "b2-emulator listening on {} bucket={} bucket_id={} key_id={} application_key={} files={}",
        emu.endpoint(),
        emu.bucket_name(),
        emu.bucket_id(),
        emu.key_id(),
        emu.application_key(),
        emu.file_count()
    )?;
    writeln!(out, "endpoint={}", emu.endpoint())?;
    writeln!(out, "bucket={}", emu.bucket_name())?;
    writeln!(out, "bucket_id={}", emu.bucket_id())?;
    writeln!(out, "account_id={}", emu.account_id())?;
    writeln!(out, "key_id={}", emu.key_id())?;
    writeln!(out, "application_key={}", emu.application_key())?;
    writeln!(out, "files={}", emu.file_count())?;
    out.flush()?;
    drop(out);

    shutdown_signal().await;
    tracing::info!("shutting down");
    emu.shutdown().await;
    Ok(())
}
