//! The benchmark behind `b2fs-bench`: each scenario builds the whole read path itself (the B2 emulator
//! in-process with injected latency, a b2-proxy, a b2fs-shim mount on a temporary directory), measures, tears
//! it down, and the run ends with Markdown tables and JSON.
//!
//! Scenarios (see `--help` and README "Performance"): `micro`, `pos1-replay`, `tail`, `chiapos`, `pos2`,
//! `farm`, `farm-v2`, `eviction`, or `all`. Targets are measured and printed with met / not met, never asserted.
//!
//! Modules: [`floor`] (naive and Monte Carlo floors), [`pos1`] (the k=32 replay), [`micro`], [`farm`], [`farm_v2`],
//! [`chia_scen`] (real provers through the mount, using [`crate::chia`]), [`stack`] (emulator + proxy;
//! mounts come from [`crate::mount`]), [`report`], [`dist`].

pub mod chia_scen;
pub mod dist;
pub mod eviction;
pub mod farm;
pub mod farm_v2;
pub mod floor;
pub mod micro;
pub mod pos1;
pub mod report;
pub mod stack;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use bytesize::ByteSize;
use clap::{Parser, ValueEnum};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::emulator::{Emulator, EmulatorBuilder};
use crate::mount::{Mount, Shim};
use dist::Dist;
use floor::{Floor, LatencyModel};
use pos1::{Layout, Sample, Via};
use report::{FarmReport, LookupRow, NamedFloor, Problem, Report, Target};
use stack::{Binaries, ProxyMode, ProxySettings, Stack};

/// Size of the virtual k=32 plots.
pub const K32_SIZE: u64 = 108 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Scenario {
    /// Every scenario below, in this order.
    All,
    /// Cached 8191-byte reads: HTTP and FUSE vs a local pread, 1 and 32 readers.
    Micro,
    /// PoS1 k=32 lookup replay (quality check + parallel full proof) through the mount and the HTTP API.
    #[value(name = "pos1-replay")]
    Pos1Replay,
    /// The replay with 2% of upstream answers delayed by 1 s, hedging on vs off.
    Tail,
    /// Real chiapos quality checks and full proofs (parallel_read on and off) through the mount.
    Chiapos,
    /// Real chia-pos2 lookups through the mount, proofs solved and validated.
    Pos2,
    /// 10,000 virtual plots: catalog load, `ls`, proxy memory, a harvester loop.
    Farm,
    /// A proof-of-space v2 farm: k=28 plots in groups, harvesters with thread pools, restarts, a baseline.
    #[value(name = "farm-v2")]
    FarmV2,
    /// Memory-tier eviction policies replaying a harvester's block trace (no network).
    Eviction,
}

impl Scenario {
    pub const ORDER: [Scenario; 8] = [
        Scenario::Micro,
        Scenario::Pos1Replay,
        Scenario::Tail,
        Scenario::Chiapos,
        Scenario::Pos2,
        Scenario::Farm,
        Scenario::FarmV2,
        Scenario::Eviction,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::All => "all",
            Scenario::Micro => "micro",
            Scenario::Pos1Replay => "pos1-replay",
            Scenario::Tail => "tail",
            Scenario::Chiapos => "chiapos",
            Scenario::Pos2 => "pos2",
            Scenario::Farm => "farm",
            Scenario::FarmV2 => "farm-v2",
            Scenario::Eviction => "eviction",
        }
    }
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "b2fs-bench",
    about = "Benchmark b2fs against the B2 emulator with injected latency: Chia lookup replays, real provers, \
             cached-read micro-latency, tail latency with and without hedging, a 10,000-plot farm",
    long_about = "Benchmark b2fs against the B2 emulator with injected latency.\n\n\
        Each scenario starts everything itself (the emulator in-process, b2-proxy as a process or in-process, \
        b2fs-shim on a temporary mount point), measures, cleans up, and the run prints Markdown tables and \
        JSON. Run it through cargo so the proxy and shim binaries are (re)built in the same profile:\n\n  \
        cargo run --release -p b2fs-tests --bin b2fs-bench -- all\n\n\
        Targets are printed with met / not met; they are never asserted. The exit status is non-zero only \
        when a scenario could not run."
)]
pub struct Opts {
    /// Scenarios to run (`all` for every one).
    #[arg(value_enum, required = true)]
    pub scenarios: Vec<Scenario>,

    /// A short version of each scenario (few lookups, small plots, a short farm loop, 20 ms latency unless
    /// --latency-median is given), for CI.
    #[arg(long)]
    pub smoke: bool,

    /// Also write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Seed of everything random: plot layouts, lookup positions, challenges, the emulator's latency draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Median of the injected upstream latency (lognormal). Default 50ms (20ms with --smoke).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub latency_median: Option<Duration>,

    /// Sigma of the injected lognormal latency.
    #[arg(long, default_value_t = 0.3)]
    pub latency_sigma: f64,

    /// Lookups per pass of pos1-replay and tail (default 40; 3 with --smoke).
    #[arg(long)]
    pub lookups: Option<usize>,

    /// Virtual k=32 plots per replay pass; lookups cycle through them (default: one per lookup, so no lookup
    /// finds another's C1/C3 ranges cached).
    #[arg(long)]
    pub replay_plots: Option<usize>,

    /// Tail scenario: share of upstream answers delayed.
    #[arg(long, default_value_t = 0.02)]
    pub tail_probability: f64,

    /// Tail scenario: extra delay of a delayed answer.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub tail_delay: Duration,

    /// Challenges per chiapos pass (default 16; 2 with --smoke).
    #[arg(long)]
    pub chia_lookups: Option<usize>,

    /// chiapos plot size (default 22; 18 with --smoke).
    #[arg(long)]
    pub chia_k: Option<u8>,

    /// chia-pos2 lookups (default 60; 4 with --smoke).
    #[arg(long)]
    pub pos2_lookups: Option<usize>,

    /// chia-pos2 plot size, even (default 24; 18 with --smoke).
    #[arg(long)]
    pub pos2_k: Option<u8>,

    /// Proxy memory cache for chiapos and pos2, whose plots are small enough to end up entirely cached
    /// otherwise (a real k=32 plot never is); the disk tier is off for them.
    #[arg(long, value_name = "SIZE", default_value = "4MiB")]
    pub chia_cache: ByteSize,

    /// Reads by the single micro reader (default 3000; 100 with --smoke); each of the 32 readers makes a
    /// tenth of that.
    #[arg(long)]
    pub micro_reads: Option<usize>,

    /// Farm: number of virtual plots in the bucket (farm: 10,000 k=32; farm-v2: 2,000 k=28 with the pos2
    /// shape, 200,000 with chunks, 1,000,000 with --catalog-only).
    #[arg(long)]
    pub farm_plots: Option<usize>,

    /// Farm: how long the harvester loop runs (farm: default 120s, 2s with --smoke; farm-v2: default 300s,
    /// 3s with --smoke), in real (compressed) time.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub farm_duration: Option<Duration>,

    /// Farm: signage point interval. Mainnet's is 9.375 s; a shorter one compresses time (more signage points,
    /// so more group bursts, in a run of a given length; bursts may then overlap more than on mainnet).
    #[arg(long, value_name = "DURATION", default_value = "9.375s", value_parser = humantime::parse_duration)]
    pub sp_interval: Duration,

    /// Farm: divide the signage point interval by this (default 1; 10 with --smoke).
    #[arg(long)]
    pub time_compress: Option<f64>,

    /// Farm: one plot (farm-v2: one group) in this many passes the plot filter at each signage point (farm: 256,
    /// farm-v2: 512; 2 with --smoke).
    #[arg(long)]
    pub filter: Option<u32>,

    /// farm-v2: the read shape of a lookup.
    #[arg(long, value_enum, default_value_t = farm_v2::V2Shape::Pos2)]
    pub v2_shape: farm_v2::V2Shape,

    /// farm-v2: plots per group (a group passes the filter as one; default 128, 8 with --smoke).
    #[arg(long)]
    pub group_size: Option<usize>,

    /// farm-v2: harvesters, each its own b2fs-shim mount of the one proxy (default 1, 2 with --smoke); groups
    /// are dealt to them round-robin.
    #[arg(long)]
    pub harvesters: Option<usize>,

    /// farm-v2: lookups a harvester runs at once (chia's num_threads; default 30, 4 with --smoke).
    #[arg(long)]
    pub harvester_threads: Option<usize>,

    /// farm-v2: only the catalog phase (load, `ls`, `ls -l`, RSS), default 1,000,000 files.
    #[arg(long)]
    pub catalog_only: bool,

    /// farm-v2: proxy cache.memory (default 1GiB; 256MiB with --smoke).
    #[arg(long, value_name = "SIZE")]
    pub v2_cache_memory: Option<ByteSize>,

    /// farm-v2: proxy cache.disk (default: the hot set + 25% + 1 GiB, in whole GiB).
    #[arg(long, value_name = "SIZE")]
    pub v2_cache_disk: Option<ByteSize>,

    /// farm-v2: run N b2-proxy processes behind a real HAProxy (the shipped deploy/haproxy.cfg) sharing the
    /// cache (cache.memory and cache.disk split evenly) with the upstream rate limit off, and add a capacity
    /// phase; a list (`1,3`) runs one pass per count in the same run, side by side. Needs haproxy (Debian
    /// package). Default: one proxy, no HAProxy.
    #[arg(long, value_name = "N,...", value_delimiter = ',')]
    pub proxies: Vec<usize>,

    /// farm-v2: how long the signage-point loop after the proxy restart runs (default 60s; 1.5s with --smoke).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub restart_duration: Option<Duration>,

    /// farm-v2: after the signage-point loop, a loop of --restart-duration during which a farmer copies this
    /// many bytes of plots from the first mount to nowhere (`cp` of whole plots, the last one cut short): a
    /// scan the disk tier must not lose its hot set to (default 0, none; 96MiB with --smoke).
    #[arg(long, value_name = "SIZE")]
    pub v2_scan: Option<ByteSize>,

    /// Proxy `fetch.hedge_quantile` for every scenario (default: the proxy's own default).
    #[arg(long, value_name = "Q")]
    pub hedge_quantile: Option<f64>,

    /// Proxy `cache.block_size` for every scenario, e.g. 16KiB (default: the proxy's own, 64KiB).
    #[arg(long, value_name = "SIZE")]
    pub block_size: Option<bytesize::ByteSize>,

    /// The emulator's account-wide rate limit: downloads per second, over which it answers 429 with
    /// `Retry-After` as B2 does (default: off). Every scenario's proxy runs under it; farm-v2's baseline pass
    /// (straight to the emulator, no proxy) runs without it.
    #[arg(long, value_name = "RPS")]
    pub rate_limit_rps: Option<f64>,

    /// The emulator's rate-limit bucket: downloads that may arrive back to back above the rate (default: one
    /// second's worth).
    #[arg(long, value_name = "N", default_value_t = 0.0)]
    pub rate_limit_burst: f64,

    /// Proxy `fetch.max_requests_per_second` for every scenario (0: no pace; default: the proxy's own).
    #[arg(long, value_name = "RPS")]
    pub max_rps: Option<f64>,

    /// Proxy `fetch.max_concurrency` for every scenario (default: the proxy's own).
    #[arg(long, value_name = "N")]
    pub max_concurrency: Option<usize>,

    /// Every scenario's proxy with the upstream scheduler off (no pacing, FIFO, a fixed 64 in flight: the proxy
    /// before it had a scheduler), to compare whole runs; --max-rps and --max-concurrency still apply.
    #[arg(long)]
    pub unscheduled: bool,

    /// farm and farm-v2: also run the harvester loop with the upstream scheduler off (no pacing, no priority
    /// for lookups in progress, a fixed 64 requests in flight: the proxy before it had a scheduler), side by
    /// side with the default in the same run. Both loops start on a freshly restarted proxy.
    #[arg(long)]
    pub compare_unscheduled: bool,

    /// Run b2-proxy as its own process (its RSS is then measured alone) or inside the bench.
    #[arg(long, value_enum, default_value_t = ProxyMode::Process)]
    pub proxy: ProxyMode,

    /// Do not run `cargo build` for b2-proxy and b2fs-shim first (they must exist next to the bench).
    #[arg(long)]
    pub no_build: bool,

    /// Monte Carlo trials per floor (default 200000; 20000 with --smoke).
    #[arg(long)]
    pub mc_trials: Option<usize>,
}

impl Opts {
    fn pick<T: Copy>(&self, given: Option<T>, full: T, smoke: T) -> T {
        given.unwrap_or(if self.smoke { smoke } else { full })
    }
    pub fn lookups(&self) -> usize {
        self.pick(self.lookups, 40, 3).max(1)
    }
    pub fn median(&self) -> Duration {
        self.pick(
            self.latency_median,
            Duration::from_millis(50),
            Duration::from_millis(20),
        )
    }
    pub fn mc_trials(&self) -> usize {
        self.pick(self.mc_trials, 200_000, 20_000).max(1)
    }
    pub fn selected(&self) -> Vec<Scenario> {
        let mut v: Vec<Scenario> = if self.scenarios.contains(&Scenario::All) {
            Scenario::ORDER.to_vec()
        } else {
            self.scenarios.clone()
        };
        v.sort();
        v.dedup();
        v
    }
}

/// What every scenario gets.
pub struct Ctx {
    pub opts: Opts,
    pub bins: Binaries,
    pub model: LatencyModel,
}

/// The floors every lookup row refers to.
pub struct Floors {
    pub quality: Floor,
    pub proof: Floor,
    pub pos2: Floor,
    pub tail_quality: Floor,
    pub tail_proof: Floor,
}

impl Ctx {
    pub fn tail_model(&self) -> LatencyModel {
        self.model.with_tail(
            self.opts.tail_probability,
            self.opts.tail_delay.as_secs_f64() * 1e3,
        )
    }

    /// An emulator with the latency `model` and the run's seed.
    pub fn emulator(&self, model: &LatencyModel) -> EmulatorBuilder {
        let mut b = Emulator::builder()
            .bucket("b2fs-bench")
            .latency(Duration::from_secs_f64(model.median_ms / 1e3), model.sigma)
            .seed(self.opts.seed);
        if let Some(rps) = self.opts.rate_limit_rps {
            b = b.rate_limit(rps, self.opts.rate_limit_burst);
        }
        if model.has_tail() {
            b = b.tail(
                model.tail_probability,
                Duration::from_secs_f64(model.tail_delay_ms / 1e3),
            );
        }
        b
    }

    /// The proxy settings every scenario starts from (the proxy's defaults but for the bench's flags).
    pub fn proxy_settings(&self) -> ProxySettings {
        ProxySettings {
            hedge_quantile: self.opts.hedge_quantile,
            block_size: self.opts.block_size,
            schedule: {
                let base = if self.opts.unscheduled {
                    stack::Schedule::off()
                } else {
                    stack::Schedule::default()
                };
                stack::Schedule {
                    max_rps: self.opts.max_rps.or(base.max_rps),
                    max_concurrency: self.opts.max_concurrency.or(base.max_concurrency),
                    ..base
                }
            },
            ..ProxySettings::default()
        }
    }

    pub async fn stack(
        &self,
        builder: EmulatorBuilder,
        settings: &ProxySettings,
    ) -> anyhow::Result<Stack> {
        Stack::start(builder, settings, self.opts.proxy, &self.bins).await
    }

    /// Mounts the stack's proxy with b2fs-shim (its defaults: direct I/O) on `<stack dir>/mnt`.
    pub async fn mount(&self, stack: &Stack) -> anyhow::Result<Mount> {
        let mnt = stack.dir.path().join("mnt");
        std::fs::create_dir_all(&mnt)?;
        let shim = Shim::new(&mnt, stack.base.clone())
            .binary(self.bins.shim.clone())
            .log_file(stack.dir.path().join("shim.log"))
            .mount_timeout(Duration::from_secs(60));
        tokio::task::spawn_blocking(move || shim.mount())
            .await?
            .context("mounting b2fs-shim")
    }
}

/// Stops a shim (SIGTERM, checks the mount is gone) off the async threads.
pub async fn unmount(m: Mount) {
    let r = tokio::task::spawn_blocking(move || m.terminate(Duration::from_secs(15))).await;
    match r {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => eprintln!("b2fs-bench: unmount: {e:#}"),
        Err(e) => eprintln!("b2fs-bench: unmount: {e}"),
    }
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("b2fs-bench: {}", msg.as_ref());
}

/// A PoS1 replay pass: fresh emulator (one virtual 108 GiB plot per lookup by default), proxy, and mount when
/// `path` is `mount`; every plot opened first (header and C2, untimed, as a harvester does at start), then
/// `lookups` sequential lookups (quality check, then its full proof), each checked byte for byte.
pub async fn pos1_pass(
    ctx: &Ctx,
    scenario: &str,
    path: &str,
    hedge: bool,
    model: &LatencyModel,
    floors: (&Floor, &Floor),
) -> anyhow::Result<LookupRow> {
    let n = ctx.opts.lookups();
    let nplots = ctx.opts.replay_plots.unwrap_or(n).max(1);
    let prefix = "replay/k32-";
    let builder = ctx.emulator(model).virtual_files(prefix, nplots, K32_SIZE);
    let stack = ctx
        .stack(
            builder,
            &ProxySettings {
                hedge,
                ..ctx.proxy_settings()
            },
        )
        .await?;
    let mount = match path {
        "mount" => Some(ctx.mount(&stack).await?),
        _ => None,
    };
    let via = match &mount {
        Some(m) => Via::Dir(m.path().to_path_buf()),
        None => Via::Http {
            client: stack.http.clone(),
            base: stack.base.clone(),
        },
    };
    let result = pos1_lookups(ctx, &stack, &via, prefix, nplots, n).await;
    let rss = stack.proxy_rss();
    let peak = stack.emu.stats().peak_downloads_in_flight;
    let hedges = if hedge {
        Some(report::HedgeStats {
            issued: stack.metric("b2proxy_hedges_issued_total").await,
            won: stack.metric("b2proxy_hedges_won_total").await,
            threshold_ms: stack
                .metric("b2proxy_hedge_threshold_seconds")
                .await
                .map(|s| s * 1e3),
        })
    } else {
        None
    };
    if let Some(m) = mount {
        unmount(m).await;
    }
    stack.shutdown().await;
    let samples = result?;
    let mut row = pos1_row(scenario, path, hedge, &samples, peak, rss, floors, nplots);
    if let Some(h) = &hedges {
        let show = |v: Option<f64>, unit: &str| {
            v.map(|v| format!("{v:.0}{unit}"))
                .unwrap_or_else(|| "?".into())
        };
        row.notes.push(format!(
            "hedges: {} issued, {} won (the proxy's counters over the pass, opens included); \
             hedge threshold at the end {}",
            show(h.issued, ""),
            show(h.won, ""),
            show(h.threshold_ms, " ms")
        ));
    }
    row.hedges = hedges;
    Ok(row)
}

/// Runs the lookups of a replay pass (shared with the rclone comparison).
async fn pos1_lookups(
    ctx: &Ctx,
    stack: &Stack,
    via: &Via,
    prefix: &str,
    nplots: usize,
    n: usize,
) -> anyhow::Result<Vec<Sample>> {
    let seed = ctx.opts.seed;
    let names: Vec<String> = (0..nplots)
        .map(|i| format!("{prefix}{i:06}.plot"))
        .collect();
    let layouts: Vec<Layout> = (0..nplots)
        .map(|i| Layout::k32(K32_SIZE, seed ^ ((i as u64) << 20)))
        .collect();
    let opens: Vec<Vec<pos1::Step>> = layouts.iter().map(|l| vec![l.open_reads()]).collect();
    futures::future::try_join_all(
        names
            .iter()
            .zip(&opens)
            .map(|(name, steps)| pos1::run_chain(via, name, steps)),
    )
    .await
    .context("opening the plots")?;
    stack.emu.reset_stats();
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(7));
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let p = i % nplots;
        let plan = layouts[p].plan(&mut rng);
        let s0 = stack.emu.stats();
        let (quality, got_q) = pos1::run_chain(via, &names[p], &plan.quality).await?;
        let s1 = stack.emu.stats();
        let (proof, got_p) = pos1::run_rounds(via, &names[p], &plan.proof).await?;
        let s2 = stack.emu.stats();
        pos1::verify(&stack.emu, &names[p], &got_q)?;
        pos1::verify(&stack.emu, &names[p], &got_p)?;
        samples.push(Sample {
            quality,
            proof,
            quality_requests: Stack::downloads(&s1) - Stack::downloads(&s0),
            requests: Stack::downloads(&s2) - Stack::downloads(&s0),
            bytes: s2.bytes_sent - s0.bytes_sent,
        });
    }
    Ok(samples)
}

#[allow(clippy::too_many_arguments)]
fn pos1_row(
    scenario: &str,
    path: &str,
    hedge: bool,
    samples: &[Sample],
    peak: u64,
    rss: Option<stack::Rss>,
    floors: (&Floor, &Floor),
    nplots: usize,
) -> LookupRow {
    let n = samples.len().max(1) as f64;
    let q: Vec<Duration> = samples.iter().map(|s| s.quality).collect();
    let p: Vec<Duration> = samples.iter().map(|s| s.proof).collect();
    let mut notes = Vec::new();
    if nplots < samples.len() {
        notes.push(format!(
            "{} lookups over {nplots} plots: later lookups may find C1/C3 ranges cached",
            samples.len()
        ));
    }
    let quality = Dist::from_durations(&q);
    let proof = Dist::from_durations(&p);
    // Per-round overhead only means something against a floor without a tail.
    if let (Some(qd), Some(pd), Some(_)) = (quality, proof, floors.0.analytic_ms) {
        let per_round =
            |d: Dist, f: &Floor| (d.mean_ms - f.statistical_ms) / f.dependent_rounds as f64;
        notes.push(format!(
            "means: quality check {:.1} ms ({:+.1} ms per dependent round over the floor), proof {:.1} ms \
             ({:+.1} ms per round)",
            qd.mean_ms,
            per_round(qd, floors.0),
            pd.mean_ms,
            per_round(pd, floors.1)
        ));
    }
    LookupRow {
        scenario: scenario.into(),
        path: path.into(),
        hedge,
        variant: String::new(),
        lookups: samples.len(),
        quality,
        proof,
        requests_per_lookup: samples.iter().map(|s| s.requests).sum::<u64>() as f64 / n,
        quality_requests_per_lookup: Some(
            samples.iter().map(|s| s.quality_requests).sum::<u64>() as f64 / n,
        ),
        bytes_per_lookup: samples.iter().map(|s| s.bytes).sum::<u64>() as f64 / n,
        peak_upstream: peak,
        rss,
        quality_floor: Some(floors.0.clone()),
        proof_floor: Some(floors.1.clone()),
        hedges: None,
        notes,
    }
}

/// `rclone` on PATH, if any.
pub fn rclone() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("rclone"))
        .find(|p| p.is_file())
}

/// rclone tuned for small random reads, as a farmer would run it. Its defaults (16 MiB `--buffer-size` per open
/// file, read chunks from 128 MiB doubling without limit) fetch hundreds of MiB per lookup and, with
/// `--vfs-cache-mode full`, write them all to the cache directory (a 40-lookup pass filled tens of GiB).
pub const RCLONE_RANDOM_READ_FLAGS: [&str; 8] = [
    "--buffer-size",
    "0",
    "--vfs-read-chunk-size",
    "64Ki",
    "--vfs-read-chunk-size-limit",
    "1Mi",
    "--vfs-cache-max-size",
    "1Gi",
];

/// The replay through `rclone mount` of the emulator bucket (no b2-proxy), as a comparison column.
async fn rclone_pass(
    ctx: &Ctx,
    rclone: &Path,
    cache_mode: &str,
    floors: (&Floor, &Floor),
) -> anyhow::Result<LookupRow> {
    let n = ctx.opts.lookups();
    let nplots = ctx.opts.replay_plots.unwrap_or(n).max(1);
    let prefix = "replay/k32-";
    let emu = ctx
        .emulator(&ctx.model)
        .virtual_files(prefix, nplots, K32_SIZE)
        .start()
        .await?;
    let dir = tempfile::tempdir()?;
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt)?;
    // The backend's settings go in the environment: an endpoint URL's colons would break a connection string.
    let mut child = std::process::Command::new(rclone)
        .arg("mount")
        .arg(format!(":b2:{}", emu.bucket_name()))
        .arg(&mnt)
        .env("RCLONE_B2_ACCOUNT", emu.key_id())
        .env("RCLONE_B2_KEY", emu.application_key())
        .env("RCLONE_B2_ENDPOINT", emu.endpoint())
        .env("RCLONE_CONFIG", dir.path().join("rclone.conf"))
        .args(["--read-only", "--vfs-cache-mode", cache_mode])
        .args(RCLONE_RANDOM_READ_FLAGS)
        .args(["--dir-cache-time", "1h", "--cache-dir"])
        .arg(dir.path().join("rclone-cache"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("rclone.log"))?)
        .spawn()
        .context("cannot start rclone mount")?;
    let first = mnt.join(format!("{prefix}{:06}.plot", 0));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !first.exists() {
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.path().join("rclone.log")).unwrap_or_default();
            anyhow::bail!("rclone mount did not come up: {}", log.trim());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A Stack-less pass: the emulator's counters, no proxy.
    let via = Via::Dir(mnt.clone());
    let seed = ctx.opts.seed;
    let names: Vec<String> = (0..nplots)
        .map(|i| format!("{prefix}{i:06}.plot"))
        .collect();
    let layouts: Vec<Layout> = (0..nplots)
        .map(|i| Layout::k32(K32_SIZE, seed ^ ((i as u64) << 20)))
        .collect();
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(7));
    emu.reset_stats();
    let mut samples = Vec::new();
    let mut failure = None;
    for i in 0..n {
        let p = i % nplots;
        let plan = layouts[p].plan(&mut rng);
        let s0 = emu.stats();
        let q = pos1::run_chain(&via, &names[p], &plan.quality).await;
        let s1 = emu.stats();
        let pr = pos1::run_rounds(&via, &names[p], &plan.proof).await;
        let s2 = emu.stats();
        match (q, pr) {
            (Ok((quality, _)), Ok((proof, _))) => samples.push(Sample {
                quality,
                proof,
                quality_requests: Stack::downloads(&s1) - Stack::downloads(&s0),
                requests: Stack::downloads(&s2) - Stack::downloads(&s0),
                bytes: s2.bytes_sent - s0.bytes_sent,
            }),
            (Err(e), _) | (_, Err(e)) => {
                failure = Some(e);
                break;
            }
        }
    }
    let peak = emu.stats().peak_downloads_in_flight;
    let _ = crate::mount::lazy_unmount(&mnt);
    let _ = child.kill();
    let _ = child.wait();
    emu.shutdown().await;
    if let Some(e) = failure {
        return Err(e);
    }
    let mut row = pos1_row(
        "pos1-replay",
        "rclone",
        false,
        &samples,
        peak,
        None,
        floors,
        nplots,
    );
    row.variant = format!("--vfs-cache-mode {cache_mode}");
    Ok(row)
}

async fn scenario_pos1(ctx: &Ctx, floors: &Floors, report: &mut Report) -> anyhow::Result<()> {
    let f = (&floors.quality, &floors.proof);
    let n = ctx.opts.pick(None, 100, 10);
    progress(format!(
        "pos1-replay: emulator calibration, {n} direct downloads"
    ));
    let fixed = LatencyModel::new(ctx.model.median_ms, 0.0);
    let emu = ctx
        .emulator(&fixed)
        .virtual_file("calibration.bin", K32_SIZE)
        .start()
        .await?;
    let client = stack::http_client()?;
    let calibration = pos1::calibrate(
        &emu,
        &client,
        "calibration.bin",
        K32_SIZE,
        n,
        fixed.median_ms,
        ctx.opts.seed,
    )
    .await;
    emu.shutdown().await;
    report.calibration = Some(calibration?);
    for (path, hedge) in [("mount", true), ("http", true), ("mount", false)] {
        progress(format!(
            "pos1-replay: {path}, hedge {}: {} lookups",
            if hedge { "on" } else { "off" },
            ctx.opts.lookups()
        ));
        let row = pos1_pass(ctx, "pos1-replay", path, hedge, &ctx.model, f).await?;
        report.lookups.push(row);
    }
    match rclone() {
        None => report
            .notes
            .push("rclone is not on PATH: the `rclone mount` comparison column was skipped".into()),
        Some(r) => {
            for cache_mode in ["off", "full"] {
                progress(format!(
                    "pos1-replay: rclone mount comparison, --vfs-cache-mode {cache_mode}"
                ));
                match rclone_pass(ctx, &r, cache_mode, f).await {
                    Ok(row) => report.lookups.push(row),
                    Err(e) => report.notes.push(format!(
                        "rclone comparison (--vfs-cache-mode {cache_mode}) failed (not counted as an error): {e:#}"
                    )),
                }
            }
        }
    }
    Ok(())
}

async fn scenario_farm_v2(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let o = &ctx.opts;
    let shape = o.v2_shape;
    let default_plots = if o.catalog_only {
        1_000_000
    } else {
        shape.default_plots()
    };
    let plan = farm_v2::V2Plan {
        farm: farm_v2::FarmShape {
            shape,
            plots: o.pick(o.farm_plots, default_plots, 24).max(1),
            group_size: o.pick(o.group_size, 128, 8).max(1),
            filter: o.pick(o.filter, 512, 2).max(1),
            harvesters: o.pick(o.harvesters, 1, 2).max(1),
            threads: o.pick(o.harvester_threads, 30, 4).max(1),
            seed: o.seed,
        },
        catalog_only: o.catalog_only,
        interval: o
            .sp_interval
            .div_f64(o.pick(o.time_compress, 1.0, 10.0).max(0.001)),
        duration: o.pick(
            o.farm_duration,
            Duration::from_secs(300),
            Duration::from_secs(3),
        ),
        after_restart: o.pick(
            o.restart_duration,
            Duration::from_secs(60),
            Duration::from_millis(1500),
        ),
        memory: o.pick(o.v2_cache_memory, ByteSize::gib(1), ByteSize::mib(256)),
        disk: o.v2_cache_disk,
        scan: o
            .pick(o.v2_scan, ByteSize::b(0), ByteSize::mib(96))
            .as_u64(),
        proxies: None,
    };
    if o.proxies.is_empty() {
        report.farm_v2.push(farm_v2::run(ctx, &plan).await?);
    }
    for n in &o.proxies {
        let mut p = plan.clone();
        p.proxies = Some((*n).max(1));
        report.farm_v2.push(farm_v2::run(ctx, &p).await?);
    }
    // The smoke run also runs the catalog-only pass, small.
    if o.smoke && !o.catalog_only {
        let mut small = plan.clone();
        small.catalog_only = true;
        small.farm.plots = o.farm_plots.unwrap_or(500);
        report.farm_v2.push(farm_v2::run(ctx, &small).await?);
    }
    Ok(())
}

async fn scenario_eviction(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let trace = eviction::Trace::new(ctx.opts.smoke, ctx.opts.seed);
    for policy in b2_proxy::config::Eviction::ALL {
        progress(format!(
            "eviction: {} over {} lookups of {} plots",
            policy.name(),
            trace.lookups,
            trace.plots
        ));
        report.eviction.push(eviction::replay(policy, trace).await?);
    }
    report.notes.push(format!(
        "eviction: each lookup opens a random plot (header and C2 blocks), reads one of its {} C1 blocks, a C3 park \
         and 7 cold blocks per proof (Poisson(1)); every {} lookups a scan streams the memory tier's size of new \
         blocks through the cache",
        eviction::C1_BLOCKS, trace.scan_every
    ));
    Ok(())
}

async fn scenario_tail(ctx: &Ctx, floors: &Floors, report: &mut Report) -> anyhow::Result<()> {
    let model = ctx.tail_model();
    let f = (&floors.tail_quality, &floors.tail_proof);
    for hedge in [true, false] {
        progress(format!(
            "tail: mount, hedge {}: {} lookups, {}% of answers +{:?}",
            if hedge { "on" } else { "off" },
            ctx.opts.lookups(),
            ctx.opts.tail_probability * 100.0,
            ctx.opts.tail_delay
        ));
        let row = pos1_pass(ctx, "tail", "mount", hedge, &model, f).await?;
        report.lookups.push(row);
    }
    Ok(())
}

async fn scenario_micro(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let single = ctx.opts.pick(ctx.opts.micro_reads, 3000, 100).max(10);
    let plan = micro::MicroPlan {
        single,
        per_reader: (single / 10).max(5),
    };
    let name = "micro/data.bin";
    let stack = ctx
        .stack(
            ctx.emulator(&ctx.model)
                .virtual_file(name, micro::FILE_SIZE),
            &ctx.proxy_settings(),
        )
        .await?;
    let mount = ctx.mount(&stack).await?;
    let result = async {
        let ranges = micro::ranges(ctx.opts.seed, micro::FILE_SIZE);
        let url = stack.url(name);
        // Fill the cache: one upstream fetch per range.
        futures::future::try_join_all(
            ranges
                .iter()
                .map(|r| pos1::http_read(&stack.http, &url, *r)),
        )
        .await?;
        progress("micro: local pread");
        let mut rows = micro::local_rows(stack.dir.path(), plan, ctx.opts.seed)?;
        let upstream = || Stack::downloads(&stack.emu.stats());
        progress("micro: http");
        rows.extend(micro::http_rows(&stack.http, &url, &ranges, plan, upstream).await?);
        progress("micro: fuse");
        rows.extend(
            micro::fuse_rows(mount.join(name), ranges.clone(), plan, "fuse", upstream).await?,
        );
        progress("micro: large reads (a 3.65 MB chunk index)");
        let large = micro::large_ranges(ctx.opts.seed, micro::FILE_SIZE);
        futures::future::try_join_all(large.iter().map(|r| pos1::http_read(&stack.http, &url, *r)))
            .await?;
        rows.extend(
            micro::large_rows(
                &stack.http,
                &url,
                mount.join(name),
                large,
                (single / 10).max(16),
                stack.proxy_pid(),
                mount.pid(),
                upstream,
            )
            .await?,
        );
        anyhow::Ok(rows)
    }
    .await;
    unmount(mount).await;
    stack.shutdown().await;
    report.micro.extend(result?);
    Ok(())
}

async fn scenario_farm(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let o = &ctx.opts;
    let plots = o.farm_plots.unwrap_or(10_000).max(1);
    let compress = o.pick(o.time_compress, 1.0, 10.0).max(0.001);
    let interval = o.sp_interval.div_f64(compress);
    let duration = o.pick(
        o.farm_duration,
        Duration::from_secs(120),
        Duration::from_secs(2),
    );
    let prefix = "farm/plot-";
    progress(format!("farm: {plots} plots, catalog load"));
    let mut stack = ctx
        .stack(
            ctx.emulator(&ctx.model)
                .virtual_files(prefix, plots, K32_SIZE),
            &ctx.proxy_settings(),
        )
        .await?;
    let mut farm = FarmReport {
        plots,
        catalog_load_ms: stack.proxy_ready.as_secs_f64() * 1e3,
        list_file_names_calls: stack.emu.stats().requests.list_file_names,
        rss_after_catalog: stack.proxy_rss(),
        duration_s: duration.as_secs_f64(),
        sp_interval_s: interval.as_secs_f64(),
        filter: o.filter.unwrap_or(256),
        ..FarmReport::default()
    };
    if stack.proxy_pid().is_none() {
        farm.notes.push(
            "proxy in-process: RSS is the bench's (emulator with 10,000 files included)".into(),
        );
    }
    let mount = match ctx.mount(&stack).await {
        Ok(m) => m,
        Err(e) => {
            stack.shutdown().await;
            return Err(e);
        }
    };
    let result = async {
        let dir = mount.join("farm");
        let timed = |args: &'static [&'static str]| {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<(f64, usize)> {
                let t = Instant::now();
                let out = std::process::Command::new("ls")
                    .args(args)
                    .arg(&dir)
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .context("cannot run ls")?;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                anyhow::ensure!(out.status.success(), "ls {args:?} failed");
                Ok((ms, out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count()))
            })
        };
        progress("farm: ls");
        let (ls_ms, entries) = timed(&["-1"]).await??;
        let (ls_l_ms, _) = timed(&["-l"]).await??;
        farm.ls_ms = ls_ms;
        farm.ls_l_ms = ls_l_ms;
        farm.entries_listed = entries;
        anyhow::ensure!(
            entries == plots,
            "ls listed {entries} plots, the bucket has {plots}"
        );
        farm.shim_rss_bytes = mount.pid().and_then(stack::rss_of);
        if let Some(b) = farm.shim_rss_bytes {
            farm.notes.push(format!(
                "b2fs-shim RSS after listing {plots} plots: {:.0} MiB",
                b as f64 / (1 << 20) as f64
            ));
        }
        // The loops to run: the proxy as configured, and with --compare-unscheduled the same loop with the
        // scheduler off, each on a freshly restarted proxy so neither inherits the other's cache or limits.
        let base_settings = ctx.proxy_settings();
        let off = ProxySettings {
            schedule: stack::Schedule::off(),
            ..base_settings.clone()
        };
        let variants: Vec<(&str, Option<&ProxySettings>)> = if o.compare_unscheduled {
            vec![
                ("scheduler on", Some(&base_settings)),
                ("scheduler off", Some(&off)),
            ]
        } else {
            vec![("", None)]
        };
        for (k, (variant, restart)) in variants.into_iter().enumerate() {
            if let Some(settings) = restart {
                stack.restart_proxy_with(&ctx.bins, Some(settings)).await?;
            }
            progress(format!(
                "farm: harvester loop{} for {duration:?}, signage point every {interval:?}",
                if variant.is_empty() { String::new() } else { format!(" ({variant})") }
            ));
            stack.emu.reset_stats();
            let result = farm::harvest(
                mount.path().to_path_buf(),
                &farm::LoopPlan {
                    plots,
                    plot_size: K32_SIZE,
                    filter: o.filter.unwrap_or(256).max(1),
                    interval,
                    duration,
                    seed: o.seed,
                    variant: k as u64,
                    block: base_settings.block_size.map_or_else(
                        || b2_proxy::config::CacheConfig::default().block_size.as_u64(),
                        |b| b.as_u64(),
                    ),
                },
                |i| format!("{prefix}{i:06}.plot"),
            )
            .await?;
            let stats = stack.emu.stats();
            let requests = Stack::downloads(&stats);
            let mut f = farm.clone();
            f.variant = variant.to_string();
            f.signage_points = result.signage_points;
            f.plots_passed = result.passed;
            f.quality = Dist::from_ms(&result.quality_ms);
            f.quality_floor_p50_ms = farm::floor_p50(&result.check_reads, &ctx.model, o.seed);
            f.sp_response = Dist::from_ms(&result.sp_ms);
            f.requests_per_sp = requests as f64 / result.signage_points.max(1) as f64;
            f.requests_per_quality = requests as f64 / result.passed.max(1) as f64;
            f.peak_upstream = stats.peak_downloads_in_flight;
            f.rate_limited = stats.rate_limited;
            f.rss_after_loop = stack.proxy_rss();
            f.notes.insert(
                0,
                format!(
                    "{}{} quality checks made {} reads and {requests} upstream requests ({:.1} per check); \
                     a check reads C1 and C3, then P7 and 6 table steps per proof found (Poisson(1) proofs)",
                    if variant.is_empty() { String::new() } else { format!("{variant}: ") },
                    result.passed,
                    result.reads,
                    f.requests_per_quality
                ),
            );
            report.farm.push(f);
        }
        anyhow::Ok(())
    }
    .await;
    unmount(mount).await;
    stack.shutdown().await;
    result?;
    Ok(())
}

/// The targets of the issue, from the rows.
pub fn targets(report: &Report) -> Vec<Target> {
    let row = |scenario: &str, path: &str, hedge: bool| {
        report.lookups.iter().find(|r| {
            r.scenario == scenario && r.path == path && r.hedge == hedge && r.variant.is_empty()
        })
    };
    let mut t = Vec::new();
    let ratio_target =
        |name: &str, goal: &str, d: Option<Dist>, f: Option<&Floor>, limit: f64, strict: bool| {
            let (measured, met) = match (d, f) {
                (Some(d), Some(f)) => {
                    let r = d.p50_ms / f.statistical_ms;
                    (
                        format!(
                            "p50 {:.0} ms = {r:.3} x {:.0} ms",
                            d.p50_ms, f.statistical_ms
                        ),
                        Some(if strict { r < limit } else { r <= limit }),
                    )
                }
                _ => ("-".into(), None),
            };
            Target {
                name: name.into(),
                goal: goal.into(),
                measured,
                met,
            }
        };
    let pos1_off = row("pos1-replay", "mount", false);
    let pos1_on = row("pos1-replay", "mount", true);
    t.push(ratio_target(
        "PoS1 replay quality check (mount, hedge off)",
        "p50 <= 1.05 x statistical floor",
        pos1_off.and_then(|r| r.quality),
        pos1_off.and_then(|r| r.quality_floor.as_ref()),
        1.05,
        false,
    ));
    t.push(ratio_target(
        "PoS1 replay full proof (mount, hedge off)",
        "p50 <= 1.05 x statistical floor",
        pos1_off.and_then(|r| r.proof),
        pos1_off.and_then(|r| r.proof_floor.as_ref()),
        1.05,
        false,
    ));
    t.push(ratio_target(
        "PoS1 replay quality check (mount, hedge on)",
        "p50 < statistical floor",
        pos1_on.and_then(|r| r.quality),
        pos1_on.and_then(|r| r.quality_floor.as_ref()),
        1.0,
        true,
    ));
    t.push(ratio_target(
        "PoS1 replay full proof (mount, hedge on)",
        "p50 < statistical floor",
        pos1_on.and_then(|r| r.proof),
        pos1_on.and_then(|r| r.proof_floor.as_ref()),
        1.0,
        true,
    ));
    for (label, r) in [("hedge off", pos1_off), ("hedge on", pos1_on)] {
        t.push(Target {
            name: format!("PoS1 upstream requests per lookup with proof (mount, {label})"),
            goal: "<= 66".into(),
            measured: r
                .map(|r| format!("{:.1}", r.requests_per_lookup))
                .unwrap_or_else(|| "-".into()),
            met: r.map(|r| r.requests_per_lookup <= 66.0),
        });
    }
    let pos2 = report
        .lookups
        .iter()
        .find(|r| r.scenario == "pos2" && r.path == "mount");
    t.push(ratio_target(
        "PoS2 lookup (mount)",
        "p50 <= 1.05 x statistical floor",
        pos2.and_then(|r| r.quality),
        pos2.and_then(|r| r.quality_floor.as_ref()),
        1.05,
        false,
    ));
    let fuse = report
        .micro
        .iter()
        .find(|m| m.path == "fuse" && m.readers == 1);
    t.push(Target {
        name: "cached 8191-byte read through FUSE (1 reader)".into(),
        goal: "p50 <= 300 us".into(),
        measured: fuse
            .map(|m| format!("p50 {:.0} us", m.latency.p50_ms * 1e3))
            .unwrap_or_else(|| "-".into()),
        met: fuse.map(|m| m.latency.p50_ms <= 0.300),
    });
    let tail = row("tail", "mount", true);
    let tail_proof = tail.and_then(|r| r.proof);
    t.push(Target {
        name: "tail: full proof (mount, hedge on)".into(),
        goal: "p95 <= 1.5 x p50".into(),
        measured: tail_proof
            .map(|d| {
                format!(
                    "p95 {:.0} ms = {:.2} x p50 {:.0} ms",
                    d.p95_ms,
                    d.p95_ms / d.p50_ms,
                    d.p50_ms
                )
            })
            .unwrap_or_else(|| "-".into()),
        met: tail_proof.map(|d| d.p95_ms <= 1.5 * d.p50_ms),
    });
    // Issue 17: the farm's quality checks near their floor (the proxy as configured).
    if let Some(f) = report
        .farm
        .iter()
        .find(|f| f.variant.is_empty() || f.variant == "scheduler on")
    {
        let ratio = f
            .quality
            .zip(f.quality_floor_p50_ms)
            .filter(|(_, fl)| *fl > 0.0)
            .map(|(q, fl)| (q.p50_ms, fl, q.p50_ms / fl));
        t.push(Target {
            name: format!("farm: quality check ({} plots)", f.plots),
            goal: "p50 <= 1.3 x the checks' statistical floor".into(),
            measured: ratio
                .map(|(p, fl, r)| format!("p50 {p:.0} ms = {r:.2} x {fl:.0} ms"))
                .unwrap_or_else(|| "-".into()),
            met: ratio.map(|(_, _, r)| r <= 1.3),
        });
    }
    t
}

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.0} GiB RAM", kb as f64 / (1 << 20) as f64))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem}, Linux {kernel}")
}

/// Runs the selected scenarios and prints the report. Exit status: 0 when every scenario ran (targets met
/// or not), 1 when one failed, 2 when the bench could not start.
pub async fn run(opts: Opts) -> ExitCode {
    let bins = match stack::binaries(!opts.no_build) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("b2fs-bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    let model = LatencyModel::new(opts.median().as_secs_f64() * 1e3, opts.latency_sigma);
    let ctx = Ctx {
        opts: opts.clone(),
        bins,
        model,
    };
    let trials = opts.mc_trials();
    let seed = opts.seed;
    let tail = ctx.tail_model();
    let floors = tokio::task::spawn_blocking(move || Floors {
        quality: floor::floor(&floor::POS1_QUALITY_ROUNDS, &model, trials, seed),
        proof: floor::floor(&floor::POS1_PROOF_ROUNDS, &model, trials, seed + 1),
        pos2: floor::floor(&floor::POS2_LOOKUP_ROUNDS, &model, trials, seed + 2),
        tail_quality: floor::floor(&floor::POS1_QUALITY_ROUNDS, &tail, trials, seed + 3),
        tail_proof: floor::floor(&floor::POS1_PROOF_ROUNDS, &tail, trials, seed + 4),
    })
    .await;
    let floors = match floors {
        Ok(f) => f,
        Err(e) => {
            eprintln!("b2fs-bench: the floor computation failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let selected = opts.selected();
    let mut report = Report {
        date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        machine: machine(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        smoke: opts.smoke,
        proxy_mode: format!(
            "{}, fetch.hedge_quantile {}{}",
            match opts.proxy {
                ProxyMode::Process => "b2-proxy process",
                ProxyMode::Inproc => "in-process",
            },
            opts.hedge_quantile
                .unwrap_or(b2_proxy::config::FetchConfig::default().hedge_quantile),
            if opts.hedge_quantile.is_some() {
                ""
            } else {
                " (default)"
            }
        ),
        latency: Some(model),
        seed,
        ..Report::default()
    };
    let mut add_floor = |lookup: String, floor: &Floor| {
        report.floors.push(NamedFloor {
            lookup,
            floor: floor.clone(),
        })
    };
    add_floor("PoS1 k=32 quality check".into(), &floors.quality);
    add_floor(
        "PoS1 k=32 full proof after its quality check".into(),
        &floors.proof,
    );
    add_floor("PoS2 lookup (header + index cached)".into(), &floors.pos2);
    if selected.contains(&Scenario::Tail) {
        add_floor(
            format!(
                "tail: PoS1 quality check (+{:?} on {}% of requests)",
                opts.tail_delay,
                opts.tail_probability * 100.0
            ),
            &floors.tail_quality,
        );
        add_floor(
            "tail: PoS1 full proof after its quality check".into(),
            &floors.tail_proof,
        );
    }
    if (model.median_ms - 50.0).abs() > 1e-9 || (model.sigma - 0.3).abs() > 1e-9 {
        let reference = LatencyModel::new(50.0, 0.3);
        report.notes.push(format!(
            "statistical floors at the reference latency (median 50 ms, sigma 0.3): quality check {:.1} ms, \
             proof after quality check {:.1} ms, PoS2 lookup {:.1} ms",
            floor::monte_carlo(&floor::POS1_QUALITY_ROUNDS, &reference, trials, seed),
            floor::monte_carlo(&floor::POS1_PROOF_ROUNDS, &reference, trials, seed),
            floor::monte_carlo(&floor::POS2_LOOKUP_ROUNDS, &reference, trials, seed),
        ));
    }
    let started = Instant::now();
    for s in &selected {
        let t = Instant::now();
        progress(format!("scenario {}", s.name()));
        let result = match s {
            Scenario::Micro => scenario_micro(&ctx, &mut report).await,
            Scenario::Pos1Replay => scenario_pos1(&ctx, &floors, &mut report).await,
            Scenario::Tail => scenario_tail(&ctx, &floors, &mut report).await,
            Scenario::Chiapos => chia_scen::chiapos(&ctx, &mut report).await,
            Scenario::Pos2 => chia_scen::pos2(&ctx, &floors, &mut report).await,
            Scenario::Farm => scenario_farm(&ctx, &mut report).await,
            Scenario::FarmV2 => scenario_farm_v2(&ctx, &mut report).await,
            Scenario::Eviction => scenario_eviction(&ctx, &mut report).await,
            Scenario::All => Ok(()),
        };
        match result {
            Ok(()) => progress(format!("scenario {} done in {:.1?}", s.name(), t.elapsed())),
            Err(e) => {
                progress(format!("scenario {} FAILED: {e:#}", s.name()));
                report.errors.push(Problem {
                    scenario: s.name().into(),
                    reason: format!("{e:#}"),
                });
            }
        }
    }
    report.targets = targets(&report);
    for f in &report.farm_v2 {
        report.targets.extend(farm_v2::targets(f));
    }
    if opts.unscheduled {
        report.notes.push(
            "--unscheduled: every proxy ran with its upstream scheduler off (max_requests_per_second 0, \
             max_concurrency 64 fixed, prioritize false)"
                .into(),
        );
    }
    report
        .targets
        .extend(farm_v2::scaling_targets(&report.farm_v2));
    report
        .notes
        .push(format!("total run time {:.0?}", started.elapsed()));
    println!("{}", report.markdown());
    let json = match serde_json::to_string_pretty(&report) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("b2fs-bench: cannot serialize the report: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("```json\n{json}\n```");
    if let Some(path) = &opts.json
        && let Err(e) = std::fs::write(path, &json)
    {
        eprintln!("b2fs-bench: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Entry point of the `b2fs-bench` binary.
pub fn main() -> ExitCode {
    let opts = Opts::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(1024)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("b2fs-bench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(run(opts))
}
