//! A proof-of-space v2 farm as harvesters run it (CHIA-READS.md, "A v2 farm, as harvesters will run it"):
//! virtual k=28 plots of ~0.95 GiB, plot groups of `--group-size` that pass the filter together (a burst of
//! lookups at one signage point), one or more harvesters (each its own b2fs-shim mount of one proxy) that run at
//! most `--harvester-threads` lookups at once and queue the rest.
//!
//! A lookup reopens its plot and reads, each read after the one before:
//! - `pos2` shape (chia-pos2 1.0.0): the header (8191 B at 0), the whole chunk index (~3.65 MB, from its
//!   offset to EOF) in one `read()`, then 4 reads of 8191 B in the body;
//! - `chunks` shape (pos2-chip 0.6): the header, the 32 KiB chunk-offset table at the tail, then 4 reads of
//!   ~240 KB in the body.
//!
//! Phases: catalog load (and `ls`, `ls -l` of the mount), harvester start (every plot opened: 8191 B at 0 and at
//! 51), warm-up (every plot's header and index read as a lookup reads them, all queued at once: the hot set),
//! the signage-point loop, a harvester restart (new
//! mounts, every plot opened again) against the warm cache, a proxy restart (SIGTERM, start on the same disk
//! tier) and a signage-point loop after it. A baseline pass sends the loop's lookups straight to the emulator
//! (no proxy, no mount) with the header and index taken as held by a perfect cache, i.e. the 4 body reads only.
//! `--catalog-only` runs the catalog phase alone (the 1,000,000-file pass).
//!
//! `--proxies N` runs N proxy processes behind a real HAProxy (the shipped `deploy/haproxy.cfg`), each with 1/N
//! of the cache and the upstream rate limit off, and adds a capacity phase after the loop (every plot looked
//! up at once, so the harvesters' threads run back to back: lookups per second and p99 at saturation); a list
//! (`--proxies 1,3`) runs one pass per count in the same run, compared side by side ([`scaling_markdown`]).
//! The proxy restart is measured with one proxy only.
//!
//! Index refetches are counted by the emulator: every download touching the watched tail of a file (the index
//! or offset table) after warm-up is one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytesize::ByteSize;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::Semaphore;

use super::dist::{Dist, fmt_ms};
use super::pos1::{READ, Read};
use super::report::Target;
use super::stack::{ProxySettings, Stack, rss_of};
use super::{Ctx, progress, unmount};
use crate::emulator::{Emulator, FileInfo};
use crate::mount::{Mount, Shim};

/// A k=28 v2 plot file: ~0.95 GiB.
pub const PLOT_SIZE: u64 = (95 << 30) / 100;
/// chia-pos2 1.0.0's chunk index at k=28, read whole by every lookup.
pub const POS2_INDEX: u64 = 3_650_000;
/// pos2-chip 0.6's chunk-offset table.
pub const CHUNK_TABLE: u64 = 32 << 10;
/// pos2-chip 0.6's compressed chunk, about (jittered +-8 KB).
pub const CHUNK_READ: u64 = 240_000;
/// Dependent body reads per lookup.
pub const BODY_READS: usize = 4;
/// `Prover::new` reads 8191 B at 0 and at 51.
pub const OPEN_READS: [u64; 2] = [0, 51];
/// Downloads touching this many bytes at the start of a file count as header GETs.
pub const HEADER_WATCH: u64 = 51 + READ;
/// A lookup slower than this makes the harvester warn.
pub const SLOW_LOOKUP_MS: f64 = 8_000.0;
/// The phase name of the loop with the scheduler off (`--compare-unscheduled`).
pub const UNSCHEDULED: &str = "signage-point loop, scheduler off";
/// Body reads stay this far from the index (so a read-ahead never touches it).
const INDEX_MARGIN: u64 = 16 << 20;

/// Which prover generation's reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum V2Shape {
    /// chia-pos2 1.0.0: header, the whole 3.65 MB chunk index, 4 x 8191 B.
    Pos2,
    /// pos2-chip 0.6: header, a 32 KiB offset table, 4 x ~240 KB.
    Chunks,
}

impl V2Shape {
    pub fn name(self) -> &'static str {
        match self {
            V2Shape::Pos2 => "pos2",
            V2Shape::Chunks => "chunks",
        }
    }

    /// The bytes at the tail every lookup re-reads (index or offset table).
    pub fn tail_len(self) -> u64 {
        match self {
            V2Shape::Pos2 => POS2_INDEX,
            V2Shape::Chunks => CHUNK_TABLE,
        }
    }

    /// Bytes of the body reads of one lookup, about.
    pub fn body_bytes(self) -> u64 {
        BODY_READS as u64
            * match self {
                V2Shape::Pos2 => READ,
                V2Shape::Chunks => CHUNK_READ,
            }
    }

    /// Plots by default.
    pub fn default_plots(self) -> usize {
        match self {
            V2Shape::Pos2 => 2_000,
            V2Shape::Chunks => 200_000,
        }
    }

    /// The reads of plot `plot`'s lookup at signage point `sp`.
    pub fn lookup(self, seed: u64, plot: usize, sp: u64) -> Lookup {
        let mut rng = StdRng::seed_from_u64(
            seed ^ (plot as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ sp.wrapping_mul(0xc2b2_ae3d),
        );
        let tail = self.tail_len();
        let body = std::array::from_fn(|_| {
            let len = match self {
                V2Shape::Pos2 => READ,
                V2Shape::Chunks => CHUNK_READ - 8_000 + rng.random_range(0..16_000),
            };
            Read {
                off: rng.random_range((1 << 20)..PLOT_SIZE - tail - INDEX_MARGIN - len),
                len,
            }
        });
        Lookup {
            header: Read { off: 0, len: READ },
            index: Read {
                off: PLOT_SIZE - tail,
                len: tail,
            },
            body,
        }
    }
}

/// One lookup's reads, in order.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub header: Read,
    pub index: Read,
    pub body: [Read; BODY_READS],
}

/// One signage point of a phase: when (from the phase start) and which plots pass.
#[derive(Debug, Clone)]
pub struct SpPlan {
    pub at: Duration,
    /// Signage point number (different in every phase, so lookups differ).
    pub id: u64,
    pub plots: Vec<usize>,
}

/// The farm's shape.
#[derive(Debug, Clone)]
pub struct FarmShape {
    pub shape: V2Shape,
    pub plots: usize,
    pub group_size: usize,
    pub filter: u32,
    pub harvesters: usize,
    pub threads: usize,
    pub seed: u64,
}

impl FarmShape {
    pub fn groups(&self) -> usize {
        self.plots.div_ceil(self.group_size)
    }

    /// The harvester that farms `plot` (groups round-robin).
    pub fn harvester_of(&self, plot: usize) -> usize {
        (plot / self.group_size) % self.harvesters
    }

    /// Signage points every `interval` for `duration` (at least one), starting at id `first_id`; each group
    /// passes with probability 1/filter.
    pub fn schedule(&self, interval: Duration, duration: Duration, first_id: u64) -> Vec<SpPlan> {
        let n = ((duration.as_secs_f64() / interval.as_secs_f64().max(1e-6)).floor() as u64).max(1);
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x5e9a_1000 ^ first_id);
        (0..n)
            .map(|k| {
                let plots = (0..self.groups())
                    .filter(|_| rng.random_range(0..self.filter.max(1)) == 0)
                    .flat_map(|g| g * self.group_size..((g + 1) * self.group_size).min(self.plots))
                    .collect();
                SpPlan {
                    at: interval * k as u32,
                    id: first_id + k,
                    plots,
                }
            })
            .collect()
    }

    /// One signage point at which every plot passes.
    pub fn everything(&self, id: u64) -> Vec<SpPlan> {
        vec![SpPlan {
            at: Duration::ZERO,
            id,
            plots: (0..self.plots).collect(),
        }]
    }
}

/// Name of plot `i` in the bucket (and under the mount).
pub fn plot_name(i: usize) -> String {
    format!("{PREFIX}{i:06}.plot")
}

pub const PREFIX: &str = "farm-v2/plot-";

/// The loop during which plots are copied from the mount (`--v2-scan`).
pub const SCAN: &str = "loop during a cp of plots";

/// The phase that queues every plot's full lookup at once (with `--proxies`).
pub const CAPACITY: &str = "capacity (every plot at once)";

/// How a phase's lookups are made.
#[derive(Clone)]
pub enum Mode {
    /// Lookups through harvester `h`'s mount at `roots[h]`.
    Mount(Vec<PathBuf>),
    /// Harvester start through the mounts: open, 8191 B at 0 and at 51.
    Open(Vec<PathBuf>),
    /// Warm-up through the mounts: a lookup's header and index reads, not its body reads (those depend on the
    /// signage point's challenge and cannot be warmed; a farm's hot set is the headers and indexes).
    Warm(Vec<PathBuf>),
    /// The baseline: the 4 body reads straight from the emulator.
    Direct {
        client: reqwest::Client,
        url: String,
        token: String,
    },
}

/// One lookup's outcome.
#[derive(Debug, Clone, Default)]
struct Done {
    queued_ms: f64,
    total_ms: f64,
    header_ms: f64,
    index_ms: f64,
    error: Option<String>,
}

/// What a phase's lookups measured.
#[derive(Debug, Default)]
pub struct PhaseRun {
    pub signage_points: usize,
    pub lookups: usize,
    pub failed: usize,
    pub lookup_ms: Vec<f64>,
    pub header_ms: Vec<f64>,
    pub index_ms: Vec<f64>,
    pub queued_ms: Vec<f64>,
    pub sp_ms: Vec<f64>,
    pub errors: Vec<String>,
}

thread_local! {
    static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn pread_exact(f: &std::fs::File, off: u64, len: u64, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    buf.resize(len as usize, 0);
    f.read_exact_at(&mut buf[..len as usize], off)
}

fn check(info: &FileInfo, r: Read, got: &[u8], sample: bool) -> anyhow::Result<()> {
    // Whole reads up to 256 KiB; larger ones (the index) at both ends.
    let spans: Vec<(u64, u64)> = if !sample || r.len <= 256 << 10 {
        vec![(0, r.len)]
    } else {
        vec![(0, 4096), (r.len - 4096, 4096)]
    };
    for (at, len) in spans {
        let mut want = vec![0u8; len as usize];
        info.read_at(r.off + at, &mut want)?;
        anyhow::ensure!(
            got[at as usize..(at + len) as usize] == want[..],
            "{}: wrong bytes at {}+{}",
            info.name,
            r.off + at,
            len
        );
    }
    Ok(())
}

/// One lookup (or open) through a mount, blocking. Returns (header, index) step times.
/// What a mount lookup reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reads {
    Open,
    HeaderAndIndex,
    Full,
}

fn mount_lookup(
    path: &Path,
    info: &FileInfo,
    lookup: &Lookup,
    what: Reads,
) -> anyhow::Result<(f64, f64)> {
    BUF.with(|b| {
        let buf = &mut b.borrow_mut();
        let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
        if what == Reads::Open {
            for off in OPEN_READS {
                pread_exact(&f, off, READ, buf).with_context(|| format!("read {off}"))?;
                check(info, Read { off, len: READ }, buf, false)?;
            }
            return Ok((0.0, 0.0));
        }
        let t = Instant::now();
        pread_exact(&f, lookup.header.off, lookup.header.len, buf).context("header read")?;
        let header_ms = t.elapsed().as_secs_f64() * 1e3;
        check(info, lookup.header, buf, false)?;
        // chia-pos2 seeks to the end for the size.
        let size = f.metadata()?.len();
        anyhow::ensure!(size == PLOT_SIZE, "size {size}");
        let t = Instant::now();
        pread_exact(&f, lookup.index.off, lookup.index.len, buf).context("index read")?;
        let index_ms = t.elapsed().as_secs_f64() * 1e3;
        check(info, lookup.index, buf, true)?;
        if what == Reads::HeaderAndIndex {
            return Ok((header_ms, index_ms));
        }
        for r in &lookup.body {
            pread_exact(&f, r.off, r.len, buf).with_context(|| format!("body read {}", r.off))?;
            check(info, *r, buf, false)?;
        }
        Ok((header_ms, index_ms))
    })
}

async fn direct_read(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    r: Read,
) -> anyhow::Result<()> {
    let resp = client
        .get(url)
        .header("Authorization", token)
        .header("Range", format!("bytes={}-{}", r.off, r.off + r.len - 1))
        .send()
        .await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    anyhow::ensure!(
        status == 206 && body.len() as u64 == r.len,
        "direct download: status {status}, {} bytes",
        body.len()
    );
    Ok(())
}

/// Runs a phase's signage points: each SP's lookups go to their harvesters' queues at the SP's time; a
/// harvester runs at most `threads` at once (a fair semaphore: first queued, first run).
pub async fn run_phase(
    farm: &FarmShape,
    infos: &Arc<Vec<FileInfo>>,
    sps: &[SpPlan],
    mode: &Mode,
) -> PhaseRun {
    let pools: Vec<Arc<Semaphore>> = (0..farm.harvesters)
        .map(|_| Arc::new(Semaphore::new(farm.threads.max(1))))
        .collect();
    let start = tokio::time::Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
    let mut sp_tasks = tokio::task::JoinSet::new();
    let mut run = PhaseRun::default();
    let mut sizes = Vec::with_capacity(sps.len());
    for sp in sps {
        sizes.push(sp.plots.len());
        if sp.plots.is_empty() {
            continue;
        }
        let sp = sp.clone();
        let pools = pools.clone();
        let infos = infos.clone();
        let mode = mode.clone();
        let tx = tx.clone();
        let farm = farm.clone();
        sp_tasks.spawn(async move {
            tokio::time::sleep_until(start + sp.at).await;
            let sp_start = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for plot in sp.plots.iter().copied() {
                let pool = pools[farm.harvester_of(plot)].clone();
                let infos = infos.clone();
                let mode = mode.clone();
                let lookup = farm.shape.lookup(farm.seed, plot, sp.id);
                let h = farm.harvester_of(plot);
                set.spawn(async move {
                    let Ok(_permit) = pool.acquire_owned().await else {
                        return Done::default();
                    };
                    let queued_ms = sp_start.elapsed().as_secs_f64() * 1e3;
                    let t = Instant::now();
                    let r: anyhow::Result<(f64, f64)> = match &mode {
                        Mode::Mount(roots) | Mode::Open(roots) | Mode::Warm(roots) => {
                            let path = roots[h].join(plot_name(plot));
                            let what = match mode {
                                Mode::Open(_) => Reads::Open,
                                Mode::Warm(_) => Reads::HeaderAndIndex,
                                _ => Reads::Full,
                            };
                            match tokio::task::spawn_blocking(move || {
                                mount_lookup(&path, &infos[plot], &lookup, what)
                            })
                            .await
                            {
                                Ok(r) => r,
                                Err(e) => Err(anyhow::anyhow!("lookup thread: {e}")),
                            }
                        }
                        Mode::Direct { client, url, token } => {
                            let url = format!(
                                "{url}{}",
                                crate::emulator::encode_file_name(&plot_name(plot))
                            );
                            let mut r = Ok((0.0, 0.0));
                            for b in &lookup.body {
                                if let Err(e) = direct_read(client, &url, token, *b).await {
                                    r = Err(e);
                                    break;
                                }
                            }
                            r
                        }
                    };
                    let total_ms = t.elapsed().as_secs_f64() * 1e3;
                    match r {
                        Ok((header_ms, index_ms)) => Done {
                            queued_ms,
                            total_ms,
                            header_ms,
                            index_ms,
                            error: None,
                        },
                        Err(e) => Done {
                            queued_ms,
                            total_ms,
                            error: Some(format!("{}: {e:#}", plot_name(plot))),
                            ..Done::default()
                        },
                    }
                });
            }
            while let Some(d) = set.join_next().await {
                if let Ok(d) = d {
                    let _ = tx.send(d);
                }
            }
            sp_start.elapsed().as_secs_f64() * 1e3
        });
    }
    drop(tx);
    let timed = !matches!(mode, Mode::Open(_) | Mode::Direct { .. });
    while let Some(d) = rx.recv().await {
        run.lookups += 1;
        if let Some(e) = d.error {
            run.failed += 1;
            if run.errors.len() < 5 {
                run.errors.push(e);
            }
            continue;
        }
        run.lookup_ms.push(d.total_ms);
        run.queued_ms.push(d.queued_ms);
        if timed {
            run.header_ms.push(d.header_ms);
            run.index_ms.push(d.index_ms);
        }
    }
    while let Some(r) = sp_tasks.join_next().await {
        if let Ok(ms) = r {
            run.sp_ms.push(ms);
        }
    }
    run.signage_points = sizes.len();
    run
}

/// Samples the emulator's download counter every 100 ms; the highest count over any 1 s window.
struct RateSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<f64>,
}

impl RateSampler {
    fn start(emu: &Arc<Emulator>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let emu = emu.clone();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut window = std::collections::VecDeque::new();
            let mut peak = 0.0f64;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                let now = (Instant::now(), emu.downloads());
                window.push_back(now);
                while window.len() > 11 {
                    window.pop_front();
                }
                if let Some(first) = window.front() {
                    let dt = now.0.duration_since(first.0).as_secs_f64();
                    if dt >= 0.95 {
                        peak = peak.max(now.1.saturating_sub(first.1) as f64 / dt);
                    }
                }
            }
            peak
        });
        Self { stop, task }
    }

    async fn finish(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or(0.0)
    }
}

/// One phase's row.
#[derive(Debug, Clone, Serialize, Default)]
pub struct V2Phase {
    pub name: String,
    pub wall_s: f64,
    /// Signage points in the phase (with or without passing groups).
    pub signage_points: usize,
    pub lookups: usize,
    pub failed: usize,
    /// Lookup time (open to last read; queueing excluded, as the harvester's own timer).
    pub lookup: Option<Dist>,
    pub header_read: Option<Dist>,
    pub index_read: Option<Dist>,
    /// Signage point start until the lookup got a harvester thread.
    pub queue_wait: Option<Dist>,
    /// Signage point start until its last lookup finished (signage points with lookups only).
    pub sp_response: Option<Dist>,
    pub over_8s: usize,
    pub upstream_requests: u64,
    /// Downloads the emulator refused with 429 (its rate limit; counted in `upstream_requests` too).
    pub rate_limited: u64,
    pub upstream_bytes: u64,
    pub requests_per_lookup: f64,
    pub bytes_per_lookup: f64,
    /// Downloads touching the tail (index / offset table).
    pub index_gets: u64,
    pub index_bytes: u64,
    /// Downloads touching the header.
    pub header_gets: u64,
    pub list_calls: u64,
    pub peak_upstream: u64,
    pub peak_requests_per_s: f64,
    pub proxy_rss: Option<u64>,
    pub shim_rss: Vec<u64>,
    /// Proxy metrics at the phase's end (counters since the proxy's start).
    pub memory_tier_bytes: Option<f64>,
    pub disk_tier_used_bytes: Option<f64>,
    pub dropped_disk_writes: Option<f64>,
    pub disk_rewritten_blocks: Option<f64>,
    /// Disk admissions (`b2proxy_cache_disk_admissions_total`): blocks first fetched after the log filled, kept
    /// in memory only, and blocks written because they were read before.
    pub disk_declined_blocks: Option<f64>,
    pub disk_admitted_read_before: Option<f64>,
    /// Blocks the disk tier held and lost (`b2proxy_cache_disk_lost_blocks_total`): let go at the tail,
    /// evicted ahead of the proxy's estimate, dropped writes.
    pub disk_lost_blocks: Option<[f64; 3]>,
    /// The proxy's hot-set estimate (`b2proxy_cache_hot_set_bytes`, summed over proxies) and its estimate of
    /// re-read blocks fetched again (`b2proxy_cache_hot_refetched_bytes_total`, since start).
    pub hot_set_estimate_bytes: Option<f64>,
    pub hot_refetched_bytes: Option<f64>,
    /// CPU seconds the proxy processes (together) and HAProxy used during the phase.
    pub proxy_cpu_s: Option<f64>,
    pub haproxy_cpu_s: Option<f64>,
    /// Share of the machine's CPU time busy during the phase (every process, other users' too).
    pub machine_busy: Option<f64>,
    pub errors: Vec<String>,
}

/// A start: the proxy's (catalog load), a harvester's (every plot opened), a restart.
#[derive(Debug, Clone, Serialize, Default)]
pub struct V2Start {
    pub name: String,
    pub ms: f64,
    pub upstream_downloads: u64,
    pub list_calls: u64,
    pub note: String,
}

/// The catalog phase: load, `ls`, `ls -l`, memory.
#[derive(Debug, Clone, Serialize, Default)]
pub struct V2Catalog {
    pub files: usize,
    pub load_ms: f64,
    pub list_calls: u64,
    pub ls_ms: f64,
    pub ls_l_ms: f64,
    pub entries: usize,
    /// Right after the catalog load.
    pub proxy_rss: Option<u64>,
    /// After `ls` and `ls -l` (the shim's tree paged from `GET /files`, every entry stat'ed).
    pub proxy_rss_after_ls: Option<u64>,
    pub shim_rss: Option<u64>,
    pub emulator_list_latency_ms: f64,
}

/// A farm-v2 pass.
#[derive(Debug, Clone, Serialize, Default)]
pub struct FarmV2Report {
    pub shape: String,
    pub catalog_only: bool,
    pub plots: usize,
    pub group_size: usize,
    pub groups: usize,
    pub filter: u32,
    pub harvesters: usize,
    pub harvester_threads: usize,
    pub sp_interval_s: f64,
    pub loop_s: f64,
    pub plot_size: u64,
    /// Bytes every lookup re-reads per plot: the header's and the tail's blocks.
    pub hot_set_bytes: u64,
    pub cache_memory: u64,
    pub cache_disk: u64,
    pub block_size: u64,
    /// The emulator's account rate limit in the proxy phases (`--rate-limit-rps`).
    pub rate_limit_rps: Option<f64>,
    /// The proxy's upstream scheduler settings, as `[fetch]` keys.
    pub schedule: String,
    /// Proxies (behind HAProxy when `haproxy`), sharing `cache_memory` and `cache_disk` evenly.
    pub proxies: usize,
    pub haproxy: bool,
    pub catalog: V2Catalog,
    pub starts: Vec<V2Start>,
    pub phases: Vec<V2Phase>,
    pub baseline: Option<V2Phase>,
    pub notes: Vec<String>,
}

impl FarmV2Report {
    pub fn phase(&self, name: &str) -> Option<&V2Phase> {
        self.phases.iter().find(|p| p.name == name)
    }
}

/// Blocks of `block` bytes that `[off, off+len)` touches.
fn blocks(off: u64, len: u64, block: u64) -> u64 {
    (off + len).div_ceil(block) - off / block
}

/// The per-plot hot set: the header's and the tail's blocks.
pub fn hot_set_per_plot(shape: V2Shape, block: u64) -> u64 {
    let tail = shape.tail_len();
    (blocks(0, HEADER_WATCH, block) + blocks(PLOT_SIZE - tail, tail, block)) * block
}

fn metric_sum(m: &[(String, f64)], name: &str, label: Option<&str>) -> Option<f64> {
    let v: Vec<f64> = m
        .iter()
        .filter(|(k, _)| {
            (k == name || k.starts_with(&format!("{name}{{")))
                && label.is_none_or(|l| k.contains(l))
        })
        .map(|(_, v)| *v)
        .collect();
    (!v.is_empty()).then(|| v.iter().sum())
}

/// Disk tier bytes in use: foyer's blocks that are not clean, times its block size.
fn disk_used(m: &[(String, f64)]) -> Option<f64> {
    let size = metric_sum(m, "foyer_storage_block_engine_block_size_bytes", None)?;
    let used: f64 = ["writing", "evictable", "reclaiming"]
        .iter()
        .filter_map(|t| {
            metric_sum(
                m,
                "foyer_storage_block_engine_block",
                Some(&format!("type=\"{t}\"")),
            )
        })
        .sum();
    Some(used * size)
}

/// Disk writes foyer dropped: its submit queue over the threshold, or a flusher's buffer full.
fn dropped_writes(m: &[(String, f64)]) -> Option<f64> {
    let a = metric_sum(
        m,
        "foyer_storage_inner_op_total",
        Some("op=\"channel_overflow\""),
    );
    let b = metric_sum(
        m,
        "foyer_storage_inner_op_total",
        Some("op=\"buffer_overflow\""),
    );
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
    }
}

/// Measures a phase: counters reset at its start, rate sampled, stats and proxy state read at its end.
async fn measured(
    name: &str,
    emu: &Arc<Emulator>,
    stack: Option<&Stack>,
    shims: &[Option<u32>],
    fut: impl std::future::Future<Output = PhaseRun>,
) -> V2Phase {
    emu.reset_stats();
    let sampler = RateSampler::start(emu);
    let cpu0 = stack.map(Stack::cpu_seconds);
    let machine0 = super::stack::machine_cpu_ticks();
    let t = Instant::now();
    let run = fut.await;
    let wall = t.elapsed();
    let cpu1 = stack.map(Stack::cpu_seconds);
    let machine = match (machine0, super::stack::machine_cpu_ticks()) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => Some((b1 - b0) as f64 / (t1 - t0) as f64),
        _ => None,
    };
    let spent = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    let mut peak_rate = sampler.finish().await;
    let stats = emu.stats();
    let requests = Stack::downloads(&stats);
    if peak_rate == 0.0 && wall.as_secs_f64() > 0.0 {
        // Shorter than the sampler's 1 s window: the phase's mean.
        peak_rate = requests as f64 / wall.as_secs_f64();
    }
    let ok = run.lookup_ms.len().max(1) as f64;
    let mut p = V2Phase {
        name: name.into(),
        wall_s: wall.as_secs_f64(),
        signage_points: run.signage_points,
        lookups: run.lookups,
        failed: run.failed,
        lookup: Dist::from_ms(&run.lookup_ms),
        header_read: Dist::from_ms(&run.header_ms),
        index_read: Dist::from_ms(&run.index_ms),
        queue_wait: Dist::from_ms(&run.queued_ms),
        sp_response: Dist::from_ms(&run.sp_ms),
        over_8s: run
            .lookup_ms
            .iter()
            .filter(|m| **m > SLOW_LOOKUP_MS)
            .count(),
        upstream_requests: requests,
        rate_limited: stats.rate_limited,
        upstream_bytes: stats.bytes_sent,
        requests_per_lookup: requests as f64 / ok,
        bytes_per_lookup: stats.bytes_sent as f64 / ok,
        index_gets: stats.watched.tail_downloads,
        index_bytes: stats.watched.tail_bytes,
        header_gets: stats.watched.head_downloads,
        list_calls: stats.requests.list_file_names,
        peak_upstream: stats.peak_downloads_in_flight,
        peak_requests_per_s: peak_rate,
        shim_rss: shims.iter().flatten().filter_map(|p| rss_of(*p)).collect(),
        errors: run.errors,
        ..V2Phase::default()
    };
    p.machine_busy = machine;
    if let (Some((p0, l0)), Some((p1, l1))) = (cpu0, cpu1) {
        p.proxy_cpu_s = spent(p0, p1);
        p.haproxy_cpu_s = spent(l0, l1);
    }
    if let Some(stack) = stack {
        p.proxy_rss = stack.proxy_rss().map(|r| r.bytes);
        let each = stack.metrics_each().await;
        // Per proxy, then summed: a disk tier's used bytes are its blocks times its own block size.
        p.disk_tier_used_bytes = each.iter().map(|m| disk_used(m)).sum();
        let m: Vec<(String, f64)> = each.into_iter().flatten().collect();
        p.memory_tier_bytes = metric_sum(&m, "b2proxy_cache_memory_bytes", None)
            .or_else(|| metric_sum(&m, "foyer_memory_usage", None));
        p.dropped_disk_writes = dropped_writes(&m);
        p.disk_rewritten_blocks = metric_sum(&m, "b2proxy_cache_disk_rewritten_blocks_total", None);
        p.disk_declined_blocks = metric_sum(
            &m,
            "b2proxy_cache_disk_admissions_total",
            Some("decision=\"declined\""),
        );
        p.disk_admitted_read_before = metric_sum(
            &m,
            "b2proxy_cache_disk_admissions_total",
            Some("decision=\"read_before\""),
        );
        let lost = |how: &str| {
            metric_sum(
                &m,
                "b2proxy_cache_disk_lost_blocks_total",
                Some(&format!("how=\"{how}\"")),
            )
        };
        p.disk_lost_blocks = match (lost("let_go"), lost("evicted"), lost("dropped")) {
            (Some(a), Some(b), Some(c)) => Some([a, b, c]),
            _ => None,
        };
        p.hot_set_estimate_bytes = metric_sum(&m, "b2proxy_cache_hot_set_bytes", None);
        p.hot_refetched_bytes = metric_sum(&m, "b2proxy_cache_hot_refetched_bytes_total", None);
    }
    p
}

/// Mounts harvester `h`'s shim on `<stack dir>/mnt-h`.
async fn mount_harvester(ctx: &Ctx, stack: &Stack, h: usize) -> anyhow::Result<Mount> {
    let mnt = stack.dir.path().join(format!("mnt-{h}"));
    std::fs::create_dir_all(&mnt)?;
    let shim = Shim::new(&mnt, stack.base.clone())
        .binary(ctx.bins.shim.clone())
        .log_file(stack.dir.path().join(format!("shim-{h}.log")))
        .mount_timeout(Duration::from_secs(300));
    tokio::task::spawn_blocking(move || shim.mount())
        .await?
        .context("mounting b2fs-shim")
}

async fn mount_all(ctx: &Ctx, stack: &Stack, n: usize) -> anyhow::Result<Vec<Mount>> {
    let mut v = Vec::with_capacity(n);
    for h in 0..n {
        match mount_harvester(ctx, stack, h).await {
            Ok(m) => v.push(m),
            Err(e) => {
                for m in v {
                    unmount(m).await;
                }
                return Err(e);
            }
        }
    }
    Ok(v)
}

/// `ls ARGS DIR`: time and lines listed.
async fn timed_ls(dir: PathBuf, args: &'static [&'static str]) -> anyhow::Result<(f64, usize)> {
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
        Ok((
            ms,
            out.stdout
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count(),
        ))
    })
    .await?
}

/// The bench's settings for a farm-v2 pass.
#[derive(Debug, Clone)]
pub struct V2Plan {
    pub farm: FarmShape,
    pub catalog_only: bool,
    pub interval: Duration,
    pub duration: Duration,
    pub after_restart: Duration,
    pub memory: ByteSize,
    pub disk: Option<ByteSize>,
    /// Bytes of plots copied from the mount during a loop of its own (0: no such phase).
    pub scan: u64,
    /// Proxies behind HAProxy (`--proxies`); `None`: one proxy, no HAProxy.
    pub proxies: Option<usize>,
}

/// Runs a farm-v2 pass.
pub async fn run(ctx: &Ctx, plan: &V2Plan) -> anyhow::Result<FarmV2Report> {
    let farm = &plan.farm;
    let settings0 = ctx.proxy_settings();
    let block = settings0
        .block_size
        .map(|b| b.as_u64())
        .unwrap_or_else(|| b2_proxy::config::CacheConfig::default().block_size.as_u64());
    let per_plot = hot_set_per_plot(farm.shape, block);
    let hot = per_plot * farm.plots as u64;
    // Default disk tier: the hot set, plus a quarter, plus 1 GiB for body blocks, in whole GiB.
    let disk = plan.disk.unwrap_or_else(|| {
        if plan.catalog_only {
            ByteSize::mib(64)
        } else {
            ByteSize::gib((hot + hot / 4 + (1 << 30)).div_ceil(1 << 30))
        }
    });
    let settings = ProxySettings {
        memory: plan.memory,
        disk,
        ..settings0
    };
    let mut rep = FarmV2Report {
        shape: farm.shape.name().into(),
        catalog_only: plan.catalog_only,
        plots: farm.plots,
        group_size: farm.group_size,
        groups: farm.groups(),
        filter: farm.filter,
        harvesters: farm.harvesters,
        harvester_threads: farm.threads,
        sp_interval_s: plan.interval.as_secs_f64(),
        loop_s: plan.duration.as_secs_f64(),
        plot_size: PLOT_SIZE,
        hot_set_bytes: hot,
        cache_memory: settings.memory.as_u64(),
        cache_disk: settings.disk.as_u64(),
        block_size: block,
        rate_limit_rps: ctx.opts.rate_limit_rps,
        schedule: schedule_keys(&settings),
        proxies: plan.proxies.unwrap_or(1),
        haproxy: plan.proxies.is_some(),
        ..FarmV2Report::default()
    };
    progress(format!(
        "farm-v2 ({}): {} plots, {}, catalog load",
        farm.shape.name(),
        farm.plots,
        match plan.proxies {
            Some(n) => format!("{n} proxies behind HAProxy"),
            None => "one proxy".into(),
        }
    ));
    let builder = ctx
        .emulator(&ctx.model)
        .virtual_files(PREFIX, farm.plots, PLOT_SIZE);
    let mut stack = match plan.proxies {
        Some(n) => Stack::start_behind_haproxy(builder, &settings, n, &ctx.bins).await?,
        None => ctx.stack(builder, &settings).await?,
    };
    if let Some(n) = plan.proxies {
        rep.notes.push(format!(
            "{n} b2-proxy process(es) behind HAProxy (deploy/haproxy.cfg), each with cache.memory {} and \
             cache.disk {} (1/{n} of the totals above) and fetch.max_requests_per_second = 0; proxy RSS is \
             their sum; HAProxy's own CPU and memory are not counted",
            mib(settings.memory.as_u64() / n as u64),
            mib(settings.disk.as_u64() / n as u64),
        ));
    }
    stack.emu.watch(HEADER_WATCH, farm.shape.tail_len());
    let list_calls = stack.emu.stats().requests.list_file_names;
    rep.catalog = V2Catalog {
        files: farm.plots,
        load_ms: stack.proxy_ready.as_secs_f64() * 1e3,
        list_calls,
        proxy_rss: stack.proxy_rss().map(|r| r.bytes),
        emulator_list_latency_ms: ctx.model.median_ms,
        ..V2Catalog::default()
    };
    rep.starts.push(V2Start {
        name: "proxy start (catalog load)".into(),
        ms: rep.catalog.load_ms,
        upstream_downloads: Stack::downloads(&stack.emu.stats()),
        list_calls,
        note: String::new(),
    });
    if stack.proxy_pid().is_none() {
        rep.notes
            .push("proxy in-process: its RSS is the bench's (emulator included)".into());
    }
    let harvesters = if plan.catalog_only {
        1
    } else {
        farm.harvesters
    };
    let t = Instant::now();
    let mut mounts = match mount_all(ctx, &stack, harvesters).await {
        Ok(m) => m,
        Err(e) => {
            stack.shutdown().await;
            return Err(e);
        }
    };
    rep.notes.push(format!(
        "{harvesters} b2fs-shim mount(s) up in {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    ));
    let result = phases(ctx, plan, &settings, &mut stack, &mut mounts, &mut rep).await;
    for m in mounts {
        unmount(m).await;
    }
    stack.shutdown().await;
    result?;
    Ok(rep)
}

/// The scheduler settings the proxy runs with, as its `[fetch]` keys.
fn schedule_keys(s: &ProxySettings) -> String {
    let d = b2_proxy::config::FetchConfig::default();
    let sch = s.schedule;
    format!(
        "max_requests_per_second {}, max_concurrency {}, adaptive_concurrency {}, prioritize {}",
        sch.max_rps.unwrap_or(d.max_requests_per_second),
        sch.max_concurrency.unwrap_or(d.max_concurrency),
        sch.adaptive.unwrap_or(d.adaptive_concurrency),
        sch.prioritize.unwrap_or(d.prioritize)
    )
}

fn roots(mounts: &[Mount]) -> Vec<PathBuf> {
    mounts.iter().map(|m| m.path().to_path_buf()).collect()
}

fn pids(mounts: &[Mount]) -> Vec<Option<u32>> {
    mounts.iter().map(Mount::pid).collect()
}

async fn phases(
    ctx: &Ctx,
    plan: &V2Plan,
    settings: &ProxySettings,
    stack: &mut Stack,
    mounts: &mut Vec<Mount>,
    rep: &mut FarmV2Report,
) -> anyhow::Result<()> {
    let farm = &plan.farm;
    let dir = mounts[0].join("farm-v2");
    progress("farm-v2: ls, ls -l");
    let (ls_ms, entries) = timed_ls(dir.clone(), &["-1"]).await?;
    let (ls_l_ms, _) = timed_ls(dir, &["-l"]).await?;
    rep.catalog.ls_ms = ls_ms;
    rep.catalog.ls_l_ms = ls_l_ms;
    rep.catalog.entries = entries;
    rep.catalog.shim_rss = mounts[0].pid().and_then(rss_of);
    anyhow::ensure!(
        entries == farm.plots,
        "ls listed {entries} plots, the bucket has {}",
        farm.plots
    );
    rep.catalog.proxy_rss_after_ls = stack.proxy_rss().map(|r| r.bytes);
    if plan.catalog_only {
        return Ok(());
    }
    let emu = stack.emu_arc();
    let infos: Arc<Vec<FileInfo>> = Arc::new(
        (0..farm.plots)
            .map(|i| {
                emu.file(&plot_name(i))
                    .with_context(|| format!("no {}", plot_name(i)))
            })
            .collect::<anyhow::Result<_>>()?,
    );
    let mut next_id = 1u64 << 32;
    let mut ids = |n: usize| {
        let id = next_id;
        next_id += n as u64 + 1;
        id
    };

    // Harvester start: every plot opened.
    progress(format!(
        "farm-v2: harvester start, {} plots opened",
        farm.plots
    ));
    let sps = farm.everything(ids(1));
    let mode = Mode::Open(roots(mounts));
    let p = measured(
        "harvester start",
        &emu,
        Some(&*stack),
        &pids(mounts),
        run_phase(farm, &infos, &sps, &mode),
    )
    .await;
    rep.starts
        .push(start_row("harvester start (every plot opened)", &p));
    rep.phases.push(p);

    // Warm-up: every plot's header and index read once, all queued at once.
    progress(format!(
        "farm-v2: warm-up, {} header + index reads",
        farm.plots
    ));
    let sps = farm.everything(ids(1));
    let mode = Mode::Warm(roots(mounts));
    let p = measured(
        "warm-up",
        &emu,
        Some(&*stack),
        &pids(mounts),
        run_phase(farm, &infos, &sps, &mode),
    )
    .await;
    rep.phases.push(p);

    // With --compare-unscheduled both loops start on a freshly restarted proxy (the warm disk tier, an empty
    // memory tier), so the one run second inherits nothing from the first.
    let compare =
        ctx.opts.compare_unscheduled && stack.proxy_pid().is_some() && !stack.behind_haproxy();
    if ctx.opts.compare_unscheduled && !compare {
        rep.notes.push(
            "--compare-unscheduled skipped: it needs one proxy (--proxy process, no --proxies)"
                .into(),
        );
    }
    if compare {
        progress("farm-v2: proxy restart before the signage-point loop");
        stack.restart_proxy_with(&ctx.bins, Some(settings)).await?;
    }

    // The signage-point loop.
    let mode = Mode::Mount(roots(mounts));
    let sps = farm.schedule(plan.interval, plan.duration, ids(1 << 20));
    progress(format!(
        "farm-v2: signage-point loop, {} signage points every {:?}, {} lookups",
        sps.len(),
        plan.interval,
        sps.iter().map(|s| s.plots.len()).sum::<usize>()
    ));
    let p = measured(
        "signage-point loop",
        &emu,
        Some(&*stack),
        &pids(mounts),
        run_phase(farm, &infos, &sps, &mode),
    )
    .await;
    rep.phases.push(p);

    if compare {
        let off = ProxySettings {
            schedule: super::stack::Schedule::off(),
            ..settings.clone()
        };
        progress("farm-v2: proxy restart with the scheduler off");
        stack.restart_proxy_with(&ctx.bins, Some(&off)).await?;
        // The same signage points with the same passing groups (the same bursts), at new ids so the body reads
        // fall elsewhere (the first loop's blocks would be cached).
        let first = ids(1 << 20);
        let sps_off: Vec<SpPlan> = sps
            .iter()
            .zip(first..)
            .map(|(sp, id)| SpPlan { id, ..sp.clone() })
            .collect();
        progress(format!(
            "farm-v2: signage-point loop with the scheduler off, {} lookups",
            sps_off.iter().map(|s| s.plots.len()).sum::<usize>()
        ));
        let p = measured(
            UNSCHEDULED,
            &emu,
            Some(&*stack),
            &pids(mounts),
            run_phase(farm, &infos, &sps_off, &mode),
        )
        .await;
        rep.phases.push(p);
    }

    // A scan: plots copied from the mount while the harvester farms.
    if plan.scan > 0 && !stack.behind_haproxy() {
        let sps = farm.schedule(plan.interval, plan.after_restart, ids(1 << 20));
        let dir = mounts[0].path().to_path_buf();
        let names: Vec<String> = (0..farm.plots).rev().map(plot_name).collect();
        let bytes = plan.scan;
        progress(format!(
            "farm-v2: signage-point loop during a cp of {:.2} GiB of plots, {} lookups",
            bytes as f64 / (1u64 << 30) as f64,
            sps.iter().map(|s| s.plots.len()).sum::<usize>()
        ));
        let copied = std::sync::Mutex::new(None);
        let p = measured(SCAN, &emu, Some(&*stack), &pids(mounts), async {
            let t = Instant::now();
            let copy = tokio::task::spawn_blocking(move || copy_plots(&dir, &names, bytes));
            let (run, c) = tokio::join!(run_phase(farm, &infos, &sps, &mode), copy);
            if let Ok(mut g) = copied.lock() {
                *g = Some((c, t.elapsed()));
            }
            run
        })
        .await;
        match copied.into_inner().ok().flatten() {
            Some((Ok(Ok((n, files))), took)) => rep.notes.push(format!(
                "{SCAN}: {:.2} GiB of {files} plot(s) copied from the mount in {:.1} s ({:.0} MiB/s), \
                 the loop's lookups beside it; its upstream requests and bytes are in the phase's",
                n as f64 / (1u64 << 30) as f64,
                took.as_secs_f64(),
                n as f64 / (1u64 << 20) as f64 / took.as_secs_f64().max(1e-9)
            )),
            Some((Ok(Err(e)), _)) => anyhow::bail!("copying plots from the mount: {e}"),
            Some((Err(e), _)) => anyhow::bail!("the copy task: {e}"),
            None => anyhow::bail!("the copy did not report"),
        }
        rep.phases.push(p);
    }

    // Capacity: every plot looked up at once, so each harvester's threads run lookups back to back.
    if plan.proxies.is_some() {
        progress(format!(
            "farm-v2: capacity, {} lookups queued at once",
            farm.plots
        ));
        let sps = farm.everything(ids(1));
        let p = measured(
            CAPACITY,
            &emu,
            Some(&*stack),
            &pids(mounts),
            run_phase(farm, &infos, &sps, &mode),
        )
        .await;
        rep.phases.push(p);
    }

    // The baseline: the same lookups straight to the emulator, without its rate limit (there is no proxy to
    // pace them: the baseline is what the lookups cost with every request answered at once).
    progress("farm-v2: baseline, the loop's lookups straight to the emulator");
    let limit = emu.knobs().rate_limit;
    emu.update_knobs(|k| k.rate_limit = Default::default())?;
    let client = super::stack::http_client()?;
    let (token, url) = super::pos1::direct_base(&emu, &client).await?;
    let direct = Mode::Direct { client, url, token };
    let mut b = measured(
        "baseline (no proxy, no mount)",
        &emu,
        None,
        &[],
        run_phase(farm, &infos, &sps, &direct),
    )
    .await;
    emu.update_knobs(|k| k.rate_limit = limit)?;
    b.index_read = None;
    b.header_read = None;
    rep.baseline = Some(b);

    // Harvester restart: new mounts, every plot opened again.
    progress("farm-v2: harvester restart");
    let t = Instant::now();
    for m in mounts.drain(..) {
        unmount(m).await;
    }
    *mounts = mount_all(ctx, stack, farm.harvesters).await?;
    let remount_ms = t.elapsed().as_secs_f64() * 1e3;
    let sps = farm.everything(ids(1));
    let mode = Mode::Open(roots(mounts));
    let p = measured(
        "harvester restart",
        &emu,
        Some(&*stack),
        &pids(mounts),
        run_phase(farm, &infos, &sps, &mode),
    )
    .await;
    let mut s = start_row("harvester restart (remount, every plot opened)", &p);
    s.note = format!("unmount + mount {remount_ms:.0} ms before the opens");
    rep.starts.push(s);
    rep.phases.push(p);

    // Proxy restart on the same disk tier, then a signage-point loop.
    if stack.behind_haproxy() {
        rep.notes
            .push("proxy restart skipped: it is measured with one proxy, without --proxies".into());
        return Ok(());
    }
    if stack.proxy_pid().is_none() {
        rep.notes
            .push("proxy restart skipped: it needs --proxy process".into());
        return Ok(());
    }
    progress("farm-v2: proxy restart");
    emu.reset_stats();
    let r = stack
        .restart_proxy_with(&ctx.bins, compare.then_some(settings))
        .await?;
    let stats = emu.stats();
    rep.starts.push(V2Start {
        name: "proxy restart (SIGTERM, start on the same disk tier)".into(),
        ms: r.start.as_secs_f64() * 1e3,
        upstream_downloads: Stack::downloads(&stats),
        list_calls: stats.requests.list_file_names,
        note: format!(
            "stop took {:.0} ms ({})",
            r.stop.as_secs_f64() * 1e3,
            if r.clean {
                "clean exit"
            } else {
                "KILLED after 120 s"
            }
        ),
    });
    let sps = farm.schedule(plan.interval, plan.after_restart, ids(1 << 20));
    let mode = Mode::Mount(roots(mounts));
    progress(format!(
        "farm-v2: signage-point loop after the proxy restart, {} lookups",
        sps.iter().map(|s| s.plots.len()).sum::<usize>()
    ));
    let p = measured(
        "after proxy restart",
        &emu,
        Some(&*stack),
        &pids(mounts),
        run_phase(farm, &infos, &sps, &mode),
    )
    .await;
    rep.phases.push(p);
    Ok(())
}

/// `cp` of `names` (in order, under `dir`) to nowhere until `bytes` are read: bytes read and files opened.
fn copy_plots(dir: &Path, names: &[String], bytes: u64) -> std::io::Result<(u64, usize)> {
    use std::io::Read;
    let mut buf = vec![0u8; 1 << 20];
    let (mut done, mut files) = (0u64, 0usize);
    for name in names {
        if done >= bytes {
            break;
        }
        let mut f = std::fs::File::open(dir.join(name))?;
        files += 1;
        while done < bytes {
            let want = buf
                .len()
                .min(usize::try_from(bytes - done).unwrap_or(usize::MAX));
            let n = f.read(&mut buf[..want])?;
            if n == 0 {
                break;
            }
            done += n as u64;
        }
    }
    Ok((done, files))
}

fn start_row(name: &str, p: &V2Phase) -> V2Start {
    V2Start {
        name: name.into(),
        ms: p.wall_s * 1e3,
        upstream_downloads: p.upstream_requests,
        list_calls: p.list_calls,
        note: String::new(),
    }
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1 << 20) as f64)
}

fn gib(b: f64) -> String {
    format!("{:.2} GiB", b / (1u64 << 30) as f64)
}

fn d3(d: &Option<Dist>) -> String {
    match d {
        Some(d) => format!(
            "{} / {} / {}",
            fmt_ms(d.p50_ms).trim_end_matches(" ms"),
            fmt_ms(d.p99_ms).trim_end_matches(" ms"),
            fmt_ms(d.max_ms)
        ),
        None => "-".into(),
    }
}

fn d2(d: &Option<Dist>) -> String {
    match d {
        Some(d) => format!(
            "{} / {}",
            fmt_ms(d.p50_ms).trim_end_matches(" ms"),
            fmt_ms(d.p99_ms)
        ),
        None => "-".into(),
    }
}

/// The pass as Markdown tables.
pub fn markdown(r: &FarmV2Report, o: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        o,
        "\n### Farm v2: {} shape, {} plots{}{}\n",
        r.shape,
        r.plots,
        if r.catalog_only {
            " (catalog only)"
        } else {
            ""
        },
        if r.haproxy {
            format!(", {} proxies behind HAProxy", r.proxies)
        } else {
            String::new()
        }
    );
    if !r.catalog_only {
        let _ = writeln!(
            o,
            "{} groups of {}, filter 1/{}, {} harvester(s) x {} threads, signage point every {:.3} s for {:.0} s; \
             plot {:.2} GiB, hot set {} ({} a plot); proxy cache.memory {}, cache.disk {}, block {} KiB\n",
            r.groups,
            r.group_size,
            r.filter,
            r.harvesters,
            r.harvester_threads,
            r.sp_interval_s,
            r.loop_s,
            r.plot_size as f64 / (1u64 << 30) as f64,
            gib(r.hot_set_bytes as f64),
            if r.plots > 0 {
                format!(
                    "{:.0} KiB",
                    r.hot_set_bytes as f64 / r.plots as f64 / 1024.0
                )
            } else {
                "-".into()
            },
            mib(r.cache_memory),
            mib(r.cache_disk),
            r.block_size / 1024
        );
        let _ = writeln!(
            o,
            "Upstream scheduler: {}; emulator rate limit: {}.\n",
            r.schedule,
            r.rate_limit_rps
                .map(|l| format!("{l:.0} downloads/s (off for the baseline)"))
                .unwrap_or_else(|| "off".into())
        );
    }
    let c = &r.catalog;
    let _ = writeln!(
        o,
        "| scenario | files | catalog load | list calls | `ls` | `ls -l` | proxy RSS (catalog / after `ls -l`) | shim RSS |"
    );
    let _ = writeln!(
        o,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let _ = writeln!(
        o,
        "| farm-v2 | {} | {} | {} ({} ms each) | {} | {} | {} / {} | {} |",
        c.files,
        fmt_ms(c.load_ms),
        c.list_calls,
        c.emulator_list_latency_ms,
        fmt_ms(c.ls_ms),
        fmt_ms(c.ls_l_ms),
        c.proxy_rss.map(mib).unwrap_or("-".into()),
        c.proxy_rss_after_ls.map(mib).unwrap_or("-".into()),
        c.shim_rss.map(mib).unwrap_or("-".into()),
    );
    if !r.starts.is_empty() {
        let _ = writeln!(
            o,
            "\n| start | time | upstream downloads | list calls | note |"
        );
        let _ = writeln!(o, "| --- | ---: | ---: | ---: | --- |");
        for s in &r.starts {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} |",
                s.name,
                fmt_ms(s.ms),
                s.upstream_downloads,
                s.list_calls,
                s.note
            );
        }
    }
    if !r.phases.is_empty() {
        let _ = writeln!(
            o,
            "\n| scenario | phase | time | SPs | lookups | failed | lookup p50 / p99 / max | SP response p50 / p99 / max | > 8 s | header read p50 / p99 | index read p50 / p99 | upstream req / lookup | 429s | upstream KiB / lookup | index GETs | peak upstream | peak req/s | proxy RSS | shim RSS | memory tier | disk tier | dropped disk writes | disk declined / read-before / rewritten | disk lost: let go / evicted / dropped | hot-set estimate | hot refetched |"
        );
        let _ = writeln!(
            o,
            "| --- | --- | ---: | ---: | ---: | ---: | --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for p in r.phases.iter().chain(r.baseline.iter()) {
            let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map(f).unwrap_or("-".into());
            let _ = writeln!(
                o,
                "| farm-v2 | {} | {:.1} s | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {:.0} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p.name,
                p.wall_s,
                p.signage_points,
                p.lookups,
                p.failed,
                d3(&p.lookup),
                d3(&p.sp_response),
                p.over_8s,
                d2(&p.header_read),
                d2(&p.index_read),
                p.requests_per_lookup,
                p.rate_limited,
                p.bytes_per_lookup / 1024.0,
                p.index_gets,
                p.peak_upstream,
                p.peak_requests_per_s,
                p.proxy_rss.map(mib).unwrap_or("-".into()),
                if p.shim_rss.is_empty() {
                    "-".into()
                } else {
                    p.shim_rss
                        .iter()
                        .map(|b| mib(*b))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                opt(p.memory_tier_bytes, &|b| mib(b as u64)),
                opt(p.disk_tier_used_bytes, &gib),
                opt(p.dropped_disk_writes, &|v| format!("{v:.0}")),
                match (
                    p.disk_declined_blocks,
                    p.disk_admitted_read_before,
                    p.disk_rewritten_blocks,
                ) {
                    (Some(d), Some(a), Some(w)) => format!("{d:.0} / {a:.0} / {w:.0}"),
                    _ => "-".into(),
                },
                p.disk_lost_blocks
                    .map(|[a, b, c]| format!("{a:.0} / {b:.0} / {c:.0}"))
                    .unwrap_or_else(|| "-".into()),
                opt(p.hot_set_estimate_bytes, &gib),
                opt(p.hot_refetched_bytes, &gib),
            );
        }
        for p in &r.phases {
            for e in &p.errors {
                let _ = writeln!(o, "- {}: failed lookup: {e}", p.name);
            }
        }
        let _ = writeln!(
            o,
            "\n- lookup time is the harvester's (open to last read, queueing excluded); SP response runs from the \
             signage point to its last lookup (queueing included), over signage points with lookups; index GETs are \
             downloads that touched the last {} of a plot; memory/disk tier and dropped writes are the proxy's \
             gauges and counters since its (re)start; the baseline makes the loop's lookups as 4 body reads straight \
             to the emulator (header and index as held by a perfect cache)",
            if r.shape == "pos2" {
                format!("{POS2_INDEX} B (the chunk index)")
            } else {
                format!("{CHUNK_TABLE} B (the offset table)")
            }
        );
    }
    for n in &r.notes {
        let _ = writeln!(o, "- {n}");
    }
}

fn met(name: String, goal: &str, measured: String, met: Option<bool>) -> Target {
    Target {
        name,
        goal: goal.into(),
        measured,
        met,
    }
}

/// Issue 17's targets: the loop under the emulator's rate limit, and against the scheduler switched off.
fn schedule_targets(r: &FarmV2Report, label: &str) -> Vec<Target> {
    let mut t = Vec::new();
    let Some(on) = r.phase("signage-point loop") else {
        return t;
    };
    let limited = r.rate_limit_rps.is_some();
    let off = r.phase(UNSCHEDULED);
    if !limited && off.is_none() {
        return t;
    }
    let cond = if limited {
        format!("emulator limit {:.0}/s", r.rate_limit_rps.unwrap_or(0.0))
    } else {
        "no emulator limit".into()
    };
    t.push(met(
        format!("{label} ({cond}): failed lookups in the loop"),
        "0",
        format!("{} of {}", on.failed, on.lookups),
        Some(on.failed == 0),
    ));
    let under = on.lookups.saturating_sub(on.failed + on.over_8s);
    let share = under as f64 / on.lookups.max(1) as f64;
    t.push(met(
        format!("{label} ({cond}): lookups under 8 s"),
        ">= 95%",
        format!("{:.1}% ({under} of {})", share * 100.0, on.lookups),
        Some(share >= 0.95),
    ));
    let ratio_429 = on.rate_limited as f64 / on.upstream_requests.max(1) as f64;
    t.push(met(
        format!("{label} ({cond}): 429s"),
        "<= 1% of upstream requests",
        format!(
            "{} of {} = {:.2}%",
            on.rate_limited,
            on.upstream_requests,
            ratio_429 * 100.0
        ),
        Some(ratio_429 <= 0.01),
    ));
    if let Some(off) = off {
        let (a, b) = (on.sp_response, off.sp_response);
        t.push(met(
            format!("{label} ({cond}): SP response p99 vs the scheduler off"),
            ">= 2 x better",
            match (a, b) {
                (Some(a), Some(b)) => format!(
                    "{:.0} ms vs {:.0} ms = {:.2} x better (429s {} vs {}, failed {} vs {})",
                    a.p99_ms,
                    b.p99_ms,
                    b.p99_ms / a.p99_ms,
                    on.rate_limited,
                    off.rate_limited,
                    on.failed,
                    off.failed
                ),
                _ => "-".into(),
            },
            a.zip(b).map(|(a, b)| b.p99_ms >= 2.0 * a.p99_ms),
        ));
    }
    t
}

/// Issue 16's targets for a pass.
pub fn targets(r: &FarmV2Report) -> Vec<Target> {
    let mut t = Vec::new();
    let label = format!("farm-v2 {} {} plots", r.shape, r.plots);
    if r.catalog_only || r.plots >= 1_000_000 {
        let c = &r.catalog;
        t.push(met(
            format!("{label}: catalog load"),
            "<= 60 s at 50 ms per list call",
            format!(
                "{:.1} s, {} list calls at {} ms",
                c.load_ms / 1e3,
                c.list_calls,
                c.emulator_list_latency_ms
            ),
            (r.plots >= 1_000_000).then_some(c.load_ms <= 60_000.0),
        ));
        t.push(met(
            format!("{label}: `ls -l` of the mount"),
            "<= 10 s",
            format!("{:.1} s", c.ls_l_ms / 1e3),
            (r.plots >= 1_000_000).then_some(c.ls_l_ms <= 10_000.0),
        ));
        t.push(met(
            format!("{label}: proxy RSS for the catalog"),
            "<= 300 MiB",
            format!(
                "{} after the load, {} after `ls -l`",
                c.proxy_rss.map(mib).unwrap_or("-".into()),
                c.proxy_rss_after_ls.map(mib).unwrap_or("-".into())
            ),
            c.proxy_rss
                .max(c.proxy_rss_after_ls)
                .filter(|_| r.plots >= 1_000_000)
                .map(|b| b <= 300 << 20),
        ));
        t.push(met(
            format!("{label}: shim RSS for the catalog"),
            "<= 400 MiB",
            c.shim_rss.map(mib).unwrap_or("-".into()),
            c.shim_rss
                .filter(|_| r.plots >= 1_000_000)
                .map(|b| b <= 400 << 20),
        ));
        return t;
    }
    let sp_loop = r.phase("signage-point loop");
    t.extend(schedule_targets(r, &label));
    let restart = r.phase("harvester restart");
    let after = r.phase("after proxy restart");
    let warm = r.phase("warm-up");
    let after_warmup: Vec<&V2Phase> = r
        .phases
        .iter()
        .filter(|p| {
            matches!(
                p.name.as_str(),
                "signage-point loop" | SCAN | "harvester restart" | "after proxy restart"
            )
        })
        .collect();
    let refetches: u64 = after_warmup.iter().map(|p| p.index_gets).sum();
    t.push(met(
        format!("{label}: harvester restart upstream requests"),
        "0",
        restart
            .map(|p| p.upstream_requests.to_string())
            .unwrap_or("-".into()),
        restart.map(|p| p.upstream_requests == 0),
    ));
    if r.shape == "pos2" {
        let base = r.baseline.as_ref().and_then(|b| b.lookup);
        let lookup = sp_loop.and_then(|p| p.lookup);
        if let (Some(l), Some(b)) = (lookup, base) {
            t.push(met(
                format!("{label}: lookup p50 after warm-up vs baseline"),
                "<= 1.1 x",
                format!(
                    "{:.0} ms vs {:.0} ms = {:.2} x",
                    l.p50_ms,
                    b.p50_ms,
                    l.p50_ms / b.p50_ms
                ),
                Some(l.p50_ms <= 1.1 * b.p50_ms),
            ));
            t.push(met(
                format!("{label}: lookup p99 after warm-up vs baseline"),
                "<= 1.2 x",
                format!(
                    "{:.0} ms vs {:.0} ms = {:.2} x",
                    l.p99_ms,
                    b.p99_ms,
                    l.p99_ms / b.p99_ms
                ),
                Some(l.p99_ms <= 1.2 * b.p99_ms),
            ));
        }
        t.push(met(
            format!("{label}: index refetches after warm-up"),
            "0",
            format!(
                "{refetches} ({})",
                after_warmup
                    .iter()
                    .map(|p| format!("{} {}", p.name, p.index_gets))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (!after_warmup.is_empty()).then_some(refetches == 0),
        ));
        let last_before_restart = restart.or(sp_loop);
        let drops: Option<f64> = match (
            last_before_restart.and_then(|p| p.dropped_disk_writes),
            after.and_then(|p| p.dropped_disk_writes),
        ) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
        t.push(met(
            format!("{label}: dropped disk writes"),
            "0",
            drops
                .map(|d| format!("{d:.0} (foyer channel/buffer overflows)"))
                .unwrap_or("-".into()),
            drops.map(|d| d == 0.0),
        ));
        let limit = 2.0 * V2Shape::Pos2.body_bytes() as f64;
        t.push(met(
            format!("{label}: upstream bytes per lookup after warm-up"),
            "<= 2 x the 4 chunk reads (64 KiB)",
            sp_loop
                .map(|p| format!("{:.1} KiB", p.bytes_per_lookup / 1024.0))
                .unwrap_or("-".into()),
            sp_loop.map(|p| p.bytes_per_lookup <= limit),
        ));
        t.push(met(
            format!("{label}: cold index read in one upstream round trip"),
            "1 GET per cold index read",
            warm.map(|p| {
                format!(
                    "{:.2} index GETs per plot; cold index read p50 {:.0} ms",
                    p.index_gets as f64 / r.plots.max(1) as f64,
                    p.index_read.map(|d| d.p50_ms).unwrap_or(f64::NAN)
                )
            })
            .unwrap_or("-".into()),
            warm.map(|p| p.index_gets as f64 / r.plots.max(1) as f64 <= 1.0),
        ));
        let ix = sp_loop.and_then(|p| p.index_read);
        t.push(met(
            format!("{label}: cached index read during bursts"),
            "p50 <= 3 ms, p99 <= 15 ms",
            ix.map(|d| format!("p50 {:.1} ms, p99 {:.1} ms", d.p50_ms, d.p99_ms))
                .unwrap_or("-".into()),
            ix.map(|d| d.p50_ms <= 3.0 && d.p99_ms <= 15.0),
        ));
    } else {
        let lookup = sp_loop.and_then(|p| p.lookup);
        t.push(met(
            format!("{label}: lookup p99 (signage-point loop)"),
            "<= 1 s",
            lookup
                .map(|d| format!("{:.0} ms", d.p99_ms))
                .unwrap_or("-".into()),
            lookup.map(|d| d.p99_ms <= 1000.0),
        ));
        let sp = sp_loop.and_then(|p| p.sp_response);
        t.push(met(
            format!("{label}: every signage point answered"),
            "<= 3 s",
            sp.map(|d| format!("max {:.0} ms", d.max_ms))
                .unwrap_or("-".into()),
            sp.map(|d| d.max_ms <= 3000.0),
        ));
        let failed: usize = r.phases.iter().map(|p| p.failed).sum();
        t.push(met(
            format!("{label}: failed lookups"),
            "0",
            failed.to_string(),
            Some(failed == 0),
        ));
        let a = after.and_then(|p| p.lookup);
        t.push(met(
            format!("{label}: lookup p99 in the first minute after a proxy restart"),
            "<= 1 s",
            a.map(|d| format!("{:.0} ms", d.p99_ms))
                .unwrap_or("-".into()),
            a.map(|d| d.p99_ms <= 1000.0),
        ));
    }
    t
}

/// A `--proxies` pass's capacity phase: proxies, lookups per second, lookup times.
fn capacity(r: &FarmV2Report) -> Option<(usize, f64, Dist)> {
    let p = r.phase(CAPACITY)?;
    let d = p.lookup?;
    (p.wall_s > 0.0).then(|| (r.proxies, (p.lookups - p.failed) as f64 / p.wall_s, d))
}

/// The machine the bench runs on: CPUs the process may use and their model.
pub fn cpu_note() -> String {
    let n = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown model".into());
    format!("{n} CPU(s), {model}")
}

/// The `--proxies` passes side by side: capacity (lookups per second and latency at saturation) and the
/// signage-point loop, with each pass's ratio to the first (fewest proxies).
pub fn scaling_markdown(rs: &[FarmV2Report], o: &mut String) {
    use std::fmt::Write as _;
    let rows: Vec<(&FarmV2Report, (usize, f64, Dist))> = rs
        .iter()
        .filter(|r| r.haproxy && !r.catalog_only)
        .filter_map(|r| Some((r, capacity(r)?)))
        .collect();
    let Some((_, (_, base_rate, base_d))) = rows.first().copied() else {
        return;
    };
    let _ = writeln!(
        o,
        "\n### Farm v2: proxies behind HAProxy, side by side\n\n\
         | proxies | capacity lookups | lookups/s | x first | lookup p50 / p99 / max | p99 x first | upstream req / lookup | peak upstream | proxy CPU | HAProxy CPU | machine busy | loop lookup p50 / p99 / max | failed |\n\
         | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
    );
    for (r, (n, rate, d)) in &rows {
        let cap = r.phase(CAPACITY);
        let sp = r.phase("signage-point loop");
        let failed: usize = r.phases.iter().map(|p| p.failed).sum();
        let _ = writeln!(
            o,
            "| {n} | {} | {rate:.1} | {:.2} | {} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {failed} |",
            cap.map_or(0, |p| p.lookups),
            rate / base_rate,
            d3(&Some(*d)),
            d.p99_ms / base_d.p99_ms,
            cap.map_or(0.0, |p| p.requests_per_lookup),
            cap.map_or(0, |p| p.peak_upstream),
            cap.and_then(|p| p.proxy_cpu_s)
                .map_or("-".into(), |c| format!("{c:.1} s")),
            cap.and_then(|p| p.haproxy_cpu_s)
                .map_or("-".into(), |c| format!("{c:.1} s")),
            cap.and_then(|p| p.machine_busy)
                .map_or("-".into(), |b| format!("{:.0}%", b * 100.0)),
            d3(&sp.and_then(|p| p.lookup)),
        );
    }
    let _ = writeln!(
        o,
        "\n- same total cache split evenly, upstream rate limit off; capacity queues every plot's lookup at \
         once (each harvester runs its threads back to back); proxy and HAProxy CPU are the seconds their \
         processes used during the capacity phase, machine busy the share of all CPUs busy then (the bench, \
         emulator and shims included, and anything else running on the machine); machine: {}",
        cpu_note()
    );
}

/// Issue 12's scaling target over the `--proxies` passes of one run: 3 proxies (the most run) carry 2.5 x
/// the lookup rate of 1 at the same p99.
pub fn scaling_targets(rs: &[FarmV2Report]) -> Vec<Target> {
    let caps: Vec<(usize, f64, Dist)> = rs
        .iter()
        .filter(|r| r.haproxy && !r.catalog_only)
        .filter_map(capacity)
        .collect();
    let (Some(one), Some(most)) = (
        caps.iter().find(|c| c.0 == 1),
        caps.iter().max_by_key(|c| c.0),
    ) else {
        return Vec::new();
    };
    if most.0 <= 1 {
        return Vec::new();
    }
    let ratio = most.1 / one.1;
    let p99 = most.2.p99_ms / one.2.p99_ms;
    vec![met(
        format!("farm-v2: {} proxies vs 1 behind HAProxy, capacity", most.0),
        ">= 2.5 x the lookups/s at the same p99 (<= 1.1 x)",
        format!(
            "{:.1} vs {:.1} lookups/s = {ratio:.2} x; p99 {:.0} vs {:.0} ms = {p99:.2} x ({})",
            most.1,
            one.1,
            most.2.p99_ms,
            one.2.p99_ms,
            cpu_note()
        ),
        Some(ratio >= 2.5 && p99 <= 1.1),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_are_deterministic_and_in_bounds() {
        for shape in [V2Shape::Pos2, V2Shape::Chunks] {
            let a = shape.lookup(1, 7, 3);
            let b = shape.lookup(1, 7, 3);
            assert_eq!(a.body, b.body);
            assert_ne!(a.body, shape.lookup(1, 7, 4).body);
            assert_eq!(a.index.off + a.index.len, PLOT_SIZE);
            for r in a.body {
                assert!(r.off >= 1 << 20 && r.off + r.len + INDEX_MARGIN <= a.index.off);
            }
        }
        assert_eq!(V2Shape::Pos2.tail_len(), POS2_INDEX);
    }

    #[test]
    fn groups_pass_together() {
        let f = FarmShape {
            shape: V2Shape::Pos2,
            plots: 1000,
            group_size: 128,
            filter: 4,
            harvesters: 3,
            threads: 30,
            seed: 1,
        };
        assert_eq!(f.groups(), 8);
        let sps = f.schedule(Duration::from_secs(1), Duration::from_secs(200), 0);
        assert_eq!(sps.len(), 200);
        let passed: usize = sps.iter().map(|s| s.plots.len()).sum();
        // 1000 plots / 4 per SP on average.
        assert!((40_000..60_000).contains(&passed), "{passed}");
        for s in &sps {
            assert!(s.plots.len() % 128 == 0 || s.plots.contains(&999));
        }
        assert_eq!(f.harvester_of(0), 0);
        assert_eq!(f.harvester_of(128), 1);
        assert_eq!(f.harvester_of(3 * 128), 0);
    }

    #[test]
    fn hot_set_counts_blocks() {
        let b = 64 << 10;
        // Header: 1 block; the 3.65 MB index: 56 or 57 blocks.
        let h = hot_set_per_plot(V2Shape::Pos2, b) / b;
        assert!((57..=58).contains(&h), "{h}");
        assert!(hot_set_per_plot(V2Shape::Chunks, b) / b <= 3);
    }

    #[test]
    fn metric_parsing() {
        let m = vec![
            (
                "foyer_storage_block_engine_block_size_bytes{name=\"c\"}".to_string(),
                100.0,
            ),
            (
                "foyer_storage_block_engine_block{name=\"c\",type=\"clean\"}".to_string(),
                5.0,
            ),
            (
                "foyer_storage_block_engine_block{name=\"c\",type=\"evictable\"}".to_string(),
                3.0,
            ),
            (
                "foyer_storage_block_engine_block{name=\"c\",type=\"writing\"}".to_string(),
                1.0,
            ),
            (
                "foyer_storage_inner_op_total{name=\"c\",op=\"channel_overflow\"}".to_string(),
                2.0,
            ),
        ];
        assert_eq!(disk_used(&m), Some(400.0));
        assert_eq!(dropped_writes(&m), Some(2.0));
        assert_eq!(
            metric_sum(&m, "foyer_storage_block_engine_block", None),
            Some(9.0)
        );
    }
}
