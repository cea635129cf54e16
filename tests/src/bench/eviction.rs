//! Memory-tier eviction policies compared on a harvester's block trace (the measurement behind the default).
//!
//! The trace is replayed against the proxy's own `FoyerCache` (memory tier only, so the policy alone decides),
//! once per policy, with the same seed. A farm of plots is looked up at random: every lookup opens its plot
//! (the header block and the C2 block, the same two at every open), reads one block of the plot's C1 table
//! (a few dozen blocks per plot, so reused now and then), a C3 park, and for each proof found (Poisson(1))
//! P7 and six table parks, all cold. Now and then a sequential scan (a `cp` of a plot, a backup) streams as
//! many blocks as the memory tier holds through the cache. The memory tier holds the opens' hot set about twice
//! over, not the C1 tables nor the cold parks.
//!
//! Each miss of a lookup is one dependent round trip upstream (~50-100 ms and a B2 transaction), so misses per
//! lookup is the figure that matters; the opens' hit ratio shows whether the hot set survives.

use std::sync::Arc;
use std::time::Instant;

use b2_proxy::cache::{BlockCache, BlockKey, CacheSettings, FoyerCache};
use b2_proxy::config::Eviction;
use b2_proxy::metrics::Metrics;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::report::EvictionRow;

const BLOCK: usize = 64 << 10;
/// C1 blocks per plot (a k=32 C1 table is about 1.7 MB).
pub const C1_BLOCKS: u64 = 27;
/// Blocks in a plot (108 GiB of 64 KiB).
const PLOT_BLOCKS: u64 = (108 << 30) / BLOCK as u64;

/// Sizes of one replay.
#[derive(Debug, Clone, Copy)]
pub struct Trace {
    pub plots: u64,
    pub lookups: usize,
    /// A scan every this many lookups.
    pub scan_every: usize,
    pub memory: usize,
    pub seed: u64,
}

impl Trace {
    pub fn new(smoke: bool, seed: u64) -> Self {
        let plots = if smoke { 64 } else { 256 };
        Self {
            plots,
            lookups: if smoke { 2_000 } else { 40_000 },
            scan_every: 500,
            // The opens' hot set (2 blocks per plot) about twice over.
            memory: (plots as usize) * 2 * BLOCK * 2,
            seed,
        }
    }
}

struct Counts {
    reads: u64,
    misses: u64,
    open_reads: u64,
    open_hits: u64,
    scan_blocks: u64,
}

/// Replays the trace against a memory-only cache with `policy`.
pub async fn replay(policy: Eviction, t: Trace) -> anyhow::Result<EvictionRow> {
    let dir = tempfile::tempdir()?;
    let metrics = Arc::new(Metrics::new()?);
    let cache = FoyerCache::open(
        &CacheSettings {
            memory_bytes: t.memory,
            disk_bytes: 0,
            disk_dir: dir.path().join("unused"),
            block_size: BLOCK,
            eviction: policy,
            on_disk_error: Default::default(),
        },
        metrics,
    )
    .await?;
    let data = Bytes::from(vec![0u8; BLOCK]);
    let files: Vec<Arc<str>> = (0..t.plots)
        .map(|i| Arc::from(format!("plot-{i}").as_str()))
        .collect();
    let mut rng = StdRng::seed_from_u64(t.seed);
    let mut c = Counts {
        reads: 0,
        misses: 0,
        open_reads: 0,
        open_hits: 0,
        scan_blocks: 0,
    };
    // Returns whether the block was cached; a miss inserts it, as a fetch would.
    let read = |file: &Arc<str>, index: u64| {
        let key = BlockKey {
            file: file.clone(),
            index,
        };
        let cache = &cache;
        let data = data.clone();
        async move {
            if cache.get(&key, BLOCK).await.is_some() {
                true
            } else {
                cache.insert(key, data);
                false
            }
        }
    };
    let scan_file: Arc<str> = Arc::from("scan");
    let mut scan_next = 0u64;
    let started = Instant::now();
    for i in 0..t.lookups {
        if i > 0 && i % t.scan_every == 0 {
            for _ in 0..t.memory / BLOCK {
                read(&scan_file, scan_next).await;
                scan_next += 1;
                c.scan_blocks += 1;
            }
        }
        let p = rng.random_range(0..t.plots);
        let f = &files[p as usize];
        // Open: the header and the C2 table.
        for index in [0, PLOT_BLOCKS - 2_000] {
            c.reads += 1;
            c.open_reads += 1;
            if read(f, index).await {
                c.open_hits += 1;
            } else {
                c.misses += 1;
            }
        }
        // C1 (warm), C3 and, per proof, P7 + 6 table parks (cold: random over the plot).
        let proofs = super::farm::poisson1(&mut rng) as u64;
        let mut blocks = vec![1_000 + rng.random_range(0..C1_BLOCKS)];
        for _ in 0..1 + 7 * proofs {
            blocks.push(rng.random_range(10_000..PLOT_BLOCKS - 3_000));
        }
        for index in blocks {
            c.reads += 1;
            if !read(f, index).await {
                c.misses += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    cache.close().await?;
    let lookups = t.lookups as f64;
    Ok(EvictionRow {
        policy: policy.name().into(),
        memory_mib: t.memory as f64 / f64::from(1u32 << 20),
        plots: t.plots,
        lookups: t.lookups,
        reads_per_lookup: c.reads as f64 / lookups,
        misses_per_lookup: c.misses as f64 / lookups,
        open_hit_ratio: c.open_hits as f64 / c.open_reads.max(1) as f64,
        scan_blocks: c.scan_blocks,
        replay_ms: elapsed.as_secs_f64() * 1000.0,
    })
}
