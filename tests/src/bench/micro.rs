//! Latency and throughput of a cached 8191-byte read: through the proxy's HTTP API, through the FUSE mount, and
//! a `pread` of a page-cached local file (the floor), with 1 and 32 concurrent readers.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::dist::Dist;
use super::pos1::{READ, Read, http_read};
use super::report::MicroRow;

/// Distinct ranges the readers cycle through (all cached before the measurement).
pub const RANGES: usize = 64;
/// Size of the virtual file read through the proxy, and of the local file.
pub const FILE_SIZE: u64 = 1 << 30;
const LOCAL_SIZE: u64 = 16 << 20;

/// Random 8191-byte ranges (unaligned, like a harvester's) within `size`.
pub fn ranges(seed: u64, size: u64) -> Vec<Read> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..RANGES)
        .map(|_| Read {
            off: rng.random_range(0..size - READ),
            len: READ,
        })
        .collect()
}

fn row(path: &str, readers: usize, lat: &[Duration], wall: Duration, upstream: u64) -> MicroRow {
    let n = lat.len();
    let secs = wall.as_secs_f64().max(1e-9);
    MicroRow {
        path: path.into(),
        readers,
        reads: n,
        latency: Dist::from_durations(lat).unwrap_or(Dist {
            n: 0,
            p50_ms: f64::NAN,
            p95_ms: f64::NAN,
            p99_ms: f64::NAN,
            max_ms: f64::NAN,
            mean_ms: f64::NAN,
        }),
        reads_per_sec: n as f64 / secs,
        mib_per_sec: n as f64 * READ as f64 / secs / (1 << 20) as f64,
        upstream_requests: upstream,
        read_bytes: READ,
        proxy_cpu_ms_per_read: None,
        shim_cpu_ms_per_read: None,
    }
}

/// Blocking readers on a file: `readers` threads, each opening the file once and reading `per_reader`
/// ranges (after `warmup` unmeasured reads). Returns per-read latencies and the wall time.
fn file_readers(
    path: &Path,
    ranges: &[Read],
    readers: usize,
    per_reader: usize,
    warmup: usize,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let barrier = std::sync::Barrier::new(readers);
    let started = std::sync::OnceLock::new();
    let results: Vec<anyhow::Result<Vec<Duration>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..readers)
            .map(|t| {
                let barrier = &barrier;
                let started = &started;
                s.spawn(move || -> anyhow::Result<Vec<Duration>> {
                    let f = File::open(path).with_context(|| format!("open {}", path.display()))?;
                    let longest = ranges.iter().map(|r| r.len).max().unwrap_or(READ);
                    let mut buf = vec![0u8; longest as usize];
                    for i in 0..warmup {
                        let r = ranges[(t * 7 + i) % ranges.len()];
                        f.read_exact_at(&mut buf[..r.len as usize], r.off)?;
                    }
                    barrier.wait();
                    started.get_or_init(Instant::now);
                    let mut lat = Vec::with_capacity(per_reader);
                    for i in 0..per_reader {
                        let r = ranges[(t * 13 + i) % ranges.len()];
                        let t0 = Instant::now();
                        f.read_exact_at(&mut buf[..r.len as usize], r.off)?;
                        lat.push(t0.elapsed());
                    }
                    Ok(lat)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("reader panicked")))
            .collect()
    });
    let wall = started.get().map(Instant::elapsed).unwrap_or_default();
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    Ok((all, wall))
}

/// Async HTTP readers: `readers` tasks, each making `per_reader` GETs.
async fn http_readers(
    client: &reqwest::Client,
    url: &str,
    ranges: &[Read],
    readers: usize,
    per_reader: usize,
    warmup: usize,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let ranges: Arc<Vec<Read>> = Arc::new(ranges.to_vec());
    // Warm the connection pool to `readers` connections first.
    futures::future::try_join_all((0..readers).map(|t| {
        let ranges = ranges.clone();
        async move {
            for i in 0..warmup {
                http_read(client, url, ranges[(t * 7 + i) % ranges.len()]).await?;
            }
            anyhow::Ok(())
        }
    }))
    .await?;
    let started = Instant::now();
    let per: Vec<Vec<Duration>> = futures::future::try_join_all((0..readers).map(|t| {
        let ranges = ranges.clone();
        let client = client.clone();
        let url = url.to_string();
        // Spawned: the readers run on every runtime worker, like independent clients.
        async move {
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_reader);
                for i in 0..per_reader {
                    let r = ranges[(t * 13 + i) % ranges.len()];
                    let t0 = Instant::now();
                    http_read(&client, &url, r).await?;
                    lat.push(t0.elapsed());
                }
                anyhow::Ok(lat)
            })
            .await?
        }
    }))
    .await?;
    let wall = started.elapsed();
    Ok((per.into_iter().flatten().collect(), wall))
}

/// A local file with the same access pattern, page-cached.
pub fn local_file(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("local.bin");
    let mut f = File::create(&path)?;
    let mut rng = StdRng::seed_from_u64(3);
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..LOCAL_SIZE >> 20 {
        rng.fill(&mut chunk[..]);
        f.write_all(&chunk)?;
    }
    f.sync_all()?;
    Ok(path)
}

/// Measurement sizes.
#[derive(Debug, Clone, Copy)]
pub struct MicroPlan {
    /// Reads by the single reader.
    pub single: usize,
    /// Reads by each of the 32 readers.
    pub per_reader: usize,
}

pub const CONCURRENT: usize = 32;

/// The local `pread` floor.
pub fn local_rows(dir: &Path, plan: MicroPlan, seed: u64) -> anyhow::Result<Vec<MicroRow>> {
    let path = local_file(dir)?;
    let ranges = ranges(seed, LOCAL_SIZE);
    let mut rows = Vec::new();
    let (lat, wall) = file_readers(&path, &ranges, 1, plan.single, 200)?;
    rows.push(row("local pread", 1, &lat, wall, 0));
    let (lat, wall) = file_readers(&path, &ranges, CONCURRENT, plan.per_reader, 20)?;
    rows.push(row("local pread", CONCURRENT, &lat, wall, 0));
    Ok(rows)
}

/// Through the proxy's HTTP API; `upstream` reads the emulator's download counter.
pub async fn http_rows(
    client: &reqwest::Client,
    url: &str,
    ranges: &[Read],
    plan: MicroPlan,
    upstream: impl Fn() -> u64,
) -> anyhow::Result<Vec<MicroRow>> {
    let mut rows = Vec::new();
    let before = upstream();
    let (lat, wall) = http_readers(client, url, ranges, 1, plan.single, 200).await?;
    rows.push(row("http", 1, &lat, wall, upstream() - before));
    let before = upstream();
    let (lat, wall) = http_readers(client, url, ranges, CONCURRENT, plan.per_reader, 20).await?;
    rows.push(row("http", CONCURRENT, &lat, wall, upstream() - before));
    Ok(rows)
}

/// Through the FUSE mount (`path` is the file on the mount).
pub async fn fuse_rows(
    path: PathBuf,
    ranges: Vec<Read>,
    plan: MicroPlan,
    label: &str,
    upstream: impl Fn() -> u64,
) -> anyhow::Result<Vec<MicroRow>> {
    let mut rows = Vec::new();
    for (readers, per, warm) in [(1, plan.single, 200), (CONCURRENT, plan.per_reader, 20)] {
        let before = upstream();
        let (p, r) = (path.clone(), ranges.clone());
        let (lat, wall) =
            tokio::task::spawn_blocking(move || file_readers(&p, &r, readers, per, warm)).await??;
        rows.push(row(label, readers, &lat, wall, upstream() - before));
    }
    Ok(rows)
}

/// A cached v2 chunk index: chia-pos2 1.0.0 reads its whole 3.65 MB index in one `read()` at every lookup.
pub const LARGE_READ: u64 = 3_650_000;
/// Distinct large ranges (58 MB: all in the memory tier).
pub const LARGE_RANGES: usize = 16;
/// Concurrent readers of the large-read rows (a burst's lookups reading their indexes at once).
pub const LARGE_CONCURRENT: usize = 8;

/// Random `LARGE_READ`-byte ranges within `size`.
pub fn large_ranges(seed: u64, size: u64) -> Vec<Read> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x1a5e);
    (0..LARGE_RANGES)
        .map(|_| Read {
            off: rng.random_range(0..size - LARGE_READ),
            len: LARGE_READ,
        })
        .collect()
}

/// CPU seconds (user + system) of the processes, summed; `None` if one cannot be read.
fn cpu_of(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|p| super::stack::cpu_seconds_of(*p)).sum()
}

/// A large-read row: latencies, throughput and the CPU per read of the proxy and the shim.
#[allow(clippy::too_many_arguments)]
fn large_row(
    path: &str,
    readers: usize,
    lat: &[Duration],
    wall: Duration,
    upstream: u64,
    proxy_cpu: Option<f64>,
    shim_cpu: Option<f64>,
) -> MicroRow {
    let mut r = row(path, readers, lat, wall, upstream);
    let n = lat.len().max(1) as f64;
    r.read_bytes = LARGE_READ;
    r.mib_per_sec =
        lat.len() as f64 * LARGE_READ as f64 / wall.as_secs_f64().max(1e-9) / (1 << 20) as f64;
    r.proxy_cpu_ms_per_read = proxy_cpu.map(|s| s * 1e3 / n);
    r.shim_cpu_ms_per_read = shim_cpu.map(|s| s * 1e3 / n);
    r
}

/// Large cached reads through the HTTP API and through the mount, with 1 and [`LARGE_CONCURRENT`] readers,
/// and the CPU the proxy (`proxy_pid`) and the shim (`shim_pid`) spent on them.
#[allow(clippy::too_many_arguments)]
pub async fn large_rows(
    client: &reqwest::Client,
    url: &str,
    mounted: PathBuf,
    ranges: Vec<Read>,
    reads: usize,
    proxy_pid: Option<u32>,
    shim_pid: Option<u32>,
    upstream: impl Fn() -> u64,
) -> anyhow::Result<Vec<MicroRow>> {
    let proxy: Vec<u32> = proxy_pid.into_iter().collect();
    let shim: Vec<u32> = shim_pid.into_iter().collect();
    let delta = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    let mut rows = Vec::new();
    for readers in [1, LARGE_CONCURRENT] {
        let per = (reads / readers).max(2);
        let before = upstream();
        let p0 = cpu_of(&proxy);
        let (lat, wall) = http_readers(client, url, &ranges, readers, per, 2).await?;
        let p1 = cpu_of(&proxy);
        rows.push(large_row(
            "http",
            readers,
            &lat,
            wall,
            upstream() - before,
            delta(p0, p1),
            None,
        ));
    }
    for readers in [1, LARGE_CONCURRENT] {
        let per = (reads / readers).max(2);
        let before = upstream();
        let (p0, s0) = (cpu_of(&proxy), cpu_of(&shim));
        let (p, r) = (mounted.clone(), ranges.clone());
        let (lat, wall) =
            tokio::task::spawn_blocking(move || file_readers(&p, &r, readers, per, 2)).await??;
        let (p1, s1) = (cpu_of(&proxy), cpu_of(&shim));
        rows.push(large_row(
            "fuse",
            readers,
            &lat,
            wall,
            upstream() - before,
            delta(p0, p1),
            delta(s0, s1),
        ));
    }
    Ok(rows)
}
