//! The block cache seam and its foyer implementation.
//!
//! Data is cached in aligned blocks keyed by (file id, block index): a file id names one immutable version, so a
//! re-uploaded name can never be answered from the old version's blocks. The memory tier is weighed in bytes
//! and evicts with S3-FIFO (scan-resistant: a block read once leaves through the small queue, so a stream of
//! cold reads cannot push out the plot headers and tables that every lookup reads again); the disk tier (foyer's
//! block engine on a directory) is written on insertion, so a crash loses at most the last moments of fetches,
//! and survives restarts. Its regions are evicted in FIFO order ([`picker`], kept across restarts); [`refresh`]
//! decides what is written once the log is full (blocks read again) and gives blocks read since their write a
//! second chance at the log's tail, so headers and indexes read at every lookup stay on disk through scans,
//! wraps of the log and restarts.
//! foyer checksums every disk entry; on top of that a block read back must have exactly the expected length, or
//! it is dropped and fetched again.
//!
//! The disk tier can fail without failing a read: at start a tier that cannot be set up (directory, space) is
//! refused or, with `cache.on_disk_error = "memory_only"`, left out; while running, the first disk fault
//! ([`disk`] says how they are found, foyer hands none to its caller) switches the cache to foyer's memory tier
//! for good, and the proxy does not call into the disk engine again, not even to close it (foyer's own drop
//! still tries that in a background task, where a panic is contained by tokio).

pub mod disk;
pub mod hotset;
pub(crate) mod picker;
pub(crate) mod refresh;
pub mod writes;

use std::io::{Read, Write};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use foyer::{
    Age, BlockEngineConfig, Code, DeviceBuilder, EvictionConfig, FifoConfig, FsDeviceBuilder,
    HybridCache, HybridCacheBuilder, HybridCacheEntry, HybridCachePolicy, LfuConfig, LruConfig,
    RecoverMode, S3FifoConfig, SieveConfig, Source,
};
use futures::FutureExt;
use futures::future::BoxFuture;

use disk::SetupProblem;
pub use disk::{DiskHealth, DiskTierState, FoyerFaultLayer};
use picker::RegionOrder;
use refresh::{DiskRefresh, RefreshMetrics};
pub use writes::WriteQueue;
use writes::{Sent, WriteCheck};

use crate::config::{Eviction, OnDiskError};

/// Largest block value accepted when decoding from disk (the largest configurable block size).
const MAX_BLOCK: usize = 16 << 20;
/// Memory-tier bookkeeping per entry beyond the data, counted against the budget.
const ENTRY_OVERHEAD: usize = 96;

/// Identity of one cached block.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub file: Arc<str>,
    pub index: u64,
}

/// Where a block was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Memory,
    Disk,
}

impl Tier {
    pub fn label(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Disk => "disk",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot open the disk cache: {0}")]
    Open(String),
    #[error("cache I/O: {0}")]
    Io(String),
    /// The disk tier cannot be set up and `cache.on_disk_error = "fail"`.
    #[error("config key `{key}`: {message}")]
    Disk { key: &'static str, message: String },
}

/// What [`BlockCache::insert`] says of a fetched block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    Cached,
    /// Written to the disk tier at its second fetch: the first went to the memory tier only (disk admission,
    /// see [`refresh`]), so this fetch is the price of admission, not a hot block the disk lost.
    SecondFetch,
}

/// A cache of file blocks. `get` never fails the read: a broken tier is a miss (and logged).
pub trait BlockCache: Send + Sync + 'static {
    /// The block, if cached; `expected_len` is checked so a short or foreign value is never returned.
    fn get(&self, key: &BlockKey, expected_len: usize) -> BoxFuture<'_, Option<(Bytes, Tier)>>;
    /// Cheap check (memory, and the disk index) used to decide read-ahead.
    fn contains(&self, key: &BlockKey) -> bool;
    /// Caches a fetched block.
    fn insert(&self, key: BlockKey, value: Bytes) -> Inserted;
    /// Bytes the memory tier holds now (weighed as for the budget).
    fn memory_usage(&self) -> usize;
    /// The disk tier's state, for /healthz.
    fn disk_state(&self) -> DiskTierState {
        DiskTierState::Off
    }
    /// Flushes what must persist and stops the tiers. Call once on shutdown.
    fn close(&self) -> BoxFuture<'_, Result<(), CacheError>>;
}

/// Block bytes as stored in foyer. Own type so decoding can bound the length it trusts.
#[derive(Debug, Clone)]
pub struct Block(pub Bytes);

fn io_err(e: std::io::Error) -> foyer::Error {
    foyer::Error::io_error(e)
}

impl Code for BlockKey {
    fn encode(&self, w: &mut impl Write) -> foyer::Result<()> {
        let id = self.file.as_bytes();
        let len = u16::try_from(id.len()).map_err(|_| {
            io_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "file id longer than 64 KiB",
            ))
        })?;
        w.write_all(&len.to_le_bytes()).map_err(io_err)?;
        w.write_all(id).map_err(io_err)?;
        w.write_all(&self.index.to_le_bytes()).map_err(io_err)
    }

    fn decode(r: &mut impl Read) -> foyer::Result<Self> {
        let mut len = [0u8; 2];
        r.read_exact(&mut len).map_err(io_err)?;
        let mut id = vec![0u8; u16::from_le_bytes(len) as usize];
        r.read_exact(&mut id).map_err(io_err)?;
        let file = String::from_utf8(id)
            .map_err(|e| io_err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        let mut idx = [0u8; 8];
        r.read_exact(&mut idx).map_err(io_err)?;
        Ok(BlockKey {
            file: file.into(),
            index: u64::from_le_bytes(idx),
        })
    }

    fn estimated_size(&self) -> usize {
        2 + self.file.len() + 8
    }
}

impl Code for Block {
    fn encode(&self, w: &mut impl Write) -> foyer::Result<()> {
        let len = u32::try_from(self.0.len()).map_err(|_| {
            io_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "block too large",
            ))
        })?;
        w.write_all(&len.to_le_bytes()).map_err(io_err)?;
        w.write_all(&self.0).map_err(io_err)
    }

    fn decode(r: &mut impl Read) -> foyer::Result<Self> {
        let mut len = [0u8; 4];
        r.read_exact(&mut len).map_err(io_err)?;
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_BLOCK {
            return Err(io_err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("stored block claims {len} bytes"),
            )));
        }
        let mut v = vec![0u8; len];
        r.read_exact(&mut v).map_err(io_err)?;
        Ok(Block(Bytes::from(v)))
    }

    fn estimated_size(&self) -> usize {
        4 + self.0.len()
    }
}

/// Sizes of the two tiers.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub memory_bytes: usize,
    pub disk_bytes: usize,
    pub disk_dir: std::path::PathBuf,
    pub block_size: usize,
    pub eviction: Eviction,
    /// What a disk tier that cannot be set up at start does (`cache.on_disk_error`).
    pub on_disk_error: OnDiskError,
}

fn eviction_config(e: Eviction) -> EvictionConfig {
    match e {
        Eviction::S3fifo => S3FifoConfig::default().into(),
        Eviction::Lru => LruConfig::default().into(),
        Eviction::Lfu => LfuConfig::default().into(),
        Eviction::Sieve => SieveConfig {}.into(),
        Eviction::Fifo => FifoConfig::default().into(),
    }
}

/// Memory-tier shards: one per 64 MiB up to 16. Each shard runs its own eviction over its share of the budget,
/// and a shard of a few blocks cannot tell hot from cold.
fn shards(memory_bytes: usize) -> usize {
    (memory_bytes / (64 << 20)).clamp(1, 16)
}

/// How long shutdown waits for the disk tier to finish its writes.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct FoyerCache {
    inner: HybridCache<BlockKey, Block>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Present with a disk tier.
    refresh: Option<Arc<DiskRefresh>>,
    /// Present with a disk tier: checks that what was sent to it was written.
    writes: Option<Arc<WriteCheck>>,
    writes_task: Option<tokio::task::AbortHandle>,
    /// Present unless `cache.disk = 0`. Once degraded, only the memory tier is used.
    health: Option<Arc<DiskHealth>>,
    probe: Option<tokio::task::AbortHandle>,
    /// Where the disk tier's order is saved at shutdown.
    disk_dir: std::path::PathBuf,
    /// Present with a disk tier: foyer's eviction order of its regions.
    regions: Option<RegionOrder>,
}

/// Disk engine region ("block" in foyer's words): the unit of disk eviction. Smaller regions evict more finely
/// in small caches; 16 MiB (foyer's default) for large ones.
fn region_size(disk_bytes: usize) -> usize {
    (disk_bytes / 16)
        .clamp(1 << 20, 16 << 20)
        .next_power_of_two()
        .min(16 << 20)
}

type Builder = foyer::HybridCacheBuilderPhaseStorage<BlockKey, Block, foyer::DefaultHasher>;

impl FoyerCache {
    pub async fn open(
        settings: &CacheSettings,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, CacheError> {
        Self::open_with(
            settings,
            metrics,
            WriteQueue::for_memory(settings.memory_bytes).with_disk(settings.disk_bytes),
            writes::CHECK_EVERY,
        )
        .await
    }

    /// [`FoyerCache::open`] with the disk tier's write queue and the period of its write check given.
    pub async fn open_with(
        settings: &CacheSettings,
        metrics: Arc<crate::metrics::Metrics>,
        queue: WriteQueue,
        check_every: Duration,
    ) -> Result<Self, CacheError> {
        // foyer's own metrics (op counts, latencies, disk I/O) land in the proxy's registry, under `foyer_*`.
        let registry = FoyerRegistry::new(metrics.registry.clone());
        let memory = memory_tier_bytes(settings, &queue);
        warn_if_memory_too_small(settings, &queue);
        if settings.disk_bytes == 0 {
            return Ok(Self {
                inner: builder(settings, &registry, memory)
                    .build()
                    .await
                    .map_err(|e| CacheError::Open(e.to_string()))?,
                metrics,
                refresh: None,
                writes: None,
                writes_task: None,
                health: None,
                probe: None,
                disk_dir: settings.disk_dir.clone(),
                regions: None,
            });
        }
        let health = DiskHealth::new(
            metrics.cache_disk_degraded.clone(),
            metrics.cache_errors.clone(),
        );
        disk::register(&health);
        match open_disk(settings, &registry, queue).await {
            Ok((inner, files, regions)) => {
                metrics
                    .cache_disk_capacity_bytes
                    .set(i64::try_from(settings.disk_bytes).unwrap_or(i64::MAX));
                let probe = disk::spawn_probe(Arc::downgrade(&health), files);
                let region = region_size(settings.disk_bytes);
                let refresh = Arc::new(DiskRefresh::new(
                    settings.disk_bytes,
                    settings.block_size,
                    region,
                    queue.flushers,
                    RefreshMetrics::from_metrics(&metrics),
                ));
                // A disk tier recovered full declines first fetches from the start.
                refresh.set_room(writes::disk_has_room(&metrics.registry));
                restore_order(&refresh, &inner, &settings.disk_dir).await;
                let writes = Arc::new(WriteCheck::new(
                    metrics.registry.clone(),
                    metrics.cache_disk_dropped_writes.clone(),
                    metrics.cache_disk_write_retries.clone(),
                    queue,
                ));
                let writes_task = spawn_upkeep(
                    writes.clone(),
                    inner.clone(),
                    refresh.clone(),
                    Arc::downgrade(&health),
                    check_every,
                );
                Ok(Self {
                    inner,
                    refresh: Some(refresh),
                    writes: Some(writes),
                    writes_task: Some(writes_task),
                    metrics,
                    health: Some(health),
                    probe: Some(probe),
                    disk_dir: settings.disk_dir.clone(),
                    regions: Some(regions),
                })
            }
            Err(p) if settings.on_disk_error == OnDiskError::Fail => Err(CacheError::Disk {
                key: p.key,
                message: format!(
                    "{} (or set cache.on_disk_error = \"memory_only\" to run without the disk tier)",
                    p.message
                ),
            }),
            Err(p) => {
                tracing::warn!(key = p.key, problem = %p.message,
                    "the disk cache tier cannot be used; running with the memory tier only \
                     (cache.on_disk_error = \"memory_only\")");
                health.fault("setup", &format!("{}: {}", p.key, p.message));
                let without_disk = CacheSettings {
                    disk_bytes: 0,
                    ..settings.clone()
                };
                Ok(Self {
                    inner: builder(
                        settings,
                        &registry,
                        memory_tier_bytes(&without_disk, &queue),
                    )
                    .build()
                    .await
                    .map_err(|e| CacheError::Open(e.to_string()))?,
                    metrics,
                    refresh: None,
                    writes: None,
                    writes_task: None,
                    health: Some(health),
                    probe: None,
                    disk_dir: settings.disk_dir.clone(),
                    regions: None,
                })
            }
        }
    }

    /// What /healthz reports about the disk tier.
    pub fn disk_state(&self) -> DiskTierState {
        match &self.health {
            None => DiskTierState::Off,
            Some(h) => h.state(),
        }
    }

    /// The disk tier is in use (configured and not failed).
    fn disk_ok(&self) -> bool {
        self.health.as_ref().is_some_and(|h| !h.is_degraded())
    }

    fn fault(&self, kind: &'static str, message: &str) {
        if let Some(h) = &self.health {
            h.fault(kind, message);
        }
    }

    fn memory_get(&self, key: &BlockKey, expected_len: usize) -> Option<(Bytes, Tier)> {
        let entry = self.inner.memory().get(key)?;
        let value = entry.value().0.clone();
        if value.len() != expected_len {
            self.wrong_length(key, value.len(), expected_len);
            self.inner.memory().remove(key);
            return None;
        }
        Some((value, Tier::Memory))
    }

    /// Sends a memory-tier entry to the disk tier: through the write feed (see `writes`), or straight to foyer
    /// if there is none.
    fn write(&self, entry: HybridCacheEntry<BlockKey, Block>, kind: Sent, refresh: &DiskRefresh) {
        match &self.writes {
            Some(w) => w.send(entry, kind, refresh),
            None => {
                if std::panic::catch_unwind(AssertUnwindSafe(|| {
                    self.inner.storage().enqueue(entry.piece(), false)
                }))
                .is_err()
                {
                    self.fault("panic", "foyer panicked in a disk write");
                }
            }
        }
    }

    fn wrong_length(&self, key: &BlockKey, got: usize, expected_len: usize) {
        self.metrics
            .cache_errors
            .with_label_values(&["bad_length"])
            .inc();
        tracing::warn!(file = %key.file, block = key.index, got, expected_len,
            "cached block has the wrong length; dropping it");
    }
}

type FoyerRegistry = mixtrics::registry::prometheus::PrometheusMetricsRegistry;

/// The memory tier's builder, ready for a storage phase. `registry` must be the same value (clones of it) for
/// every cache built on one Prometheus registry: mixtrics dedups registrations per value, and registering
/// foyer's metrics twice panics.
/// What the memory tier may hold: `cache.memory` is the whole cache's memory, so the disk tier's flush buffers,
/// the part of its write queue that may outlive the memory tier's copies (blocks evicted while still queued:
/// half of it, in a fast warm-up), and the refresh and hot-set tables come out of it first. Never below half of
/// `cache.memory` (tiny budgets: those fixed costs are then over it, and README says so).
pub fn memory_tier_bytes(settings: &CacheSettings, queue: &WriteQueue) -> usize {
    settings
        .memory_bytes
        .saturating_sub(fixed_bytes(settings, queue))
        .max(settings.memory_bytes / 2)
}

/// What the cache takes from `cache.memory` before the memory tier: the disk tier's buffers and the tables.
fn fixed_bytes(settings: &CacheSettings, queue: &WriteQueue) -> usize {
    let hot = hotset::table_bytes(
        settings.memory_bytes as u64,
        settings.disk_bytes as u64,
        settings.block_size as u64,
    );
    let disk = if settings.disk_bytes == 0 {
        0
    } else {
        2 * queue.buffer_pool
            + queue.queue_threshold / 2
            + refresh::table_bytes(settings.disk_bytes, settings.block_size)
    };
    hot + disk
}

/// Says so at start when `cache.memory` cannot hold what the cache needs beside the memory tier: the memory
/// tier keeps half of it anyway, so the proxy's RSS then goes over the budget.
fn warn_if_memory_too_small(settings: &CacheSettings, queue: &WriteQueue) {
    let fixed = fixed_bytes(settings, queue);
    if fixed > settings.memory_bytes / 2 {
        const MIB: usize = 1 << 20;
        tracing::warn!(
            memory_mib = settings.memory_bytes / MIB,
            disk_mib = settings.disk_bytes / MIB,
            tables_and_buffers_mib = fixed / MIB,
            "cache.memory is small for this cache.disk: the disk tier's buffers and bookkeeping take {} MiB of \
             it, more than half, and the memory tier keeps half anyway, so RSS will exceed cache.memory; set \
             cache.memory to at least {} MiB (README \"Sizing the cache\")",
            fixed / MIB,
            (2 * fixed).div_ceil(MIB)
        );
    }
}

fn builder(settings: &CacheSettings, registry: &FoyerRegistry, memory: usize) -> Builder {
    HybridCacheBuilder::new()
        .with_name("b2proxy")
        .with_metrics_registry(Box::new(registry.clone()))
        .with_policy(HybridCachePolicy::WriteOnInsertion)
        .with_flush_on_close(true)
        .memory(memory)
        .with_shards(shards(memory))
        .with_eviction_config(eviction_config(settings.eviction))
        .with_weighter(|k: &BlockKey, v: &Block| v.0.len() + k.file.len() + ENTRY_OVERHEAD)
        .storage()
}

/// Checks the directory and its space, opens the hybrid cache on it and reserves its files' space.
async fn open_disk(
    settings: &CacheSettings,
    registry: &FoyerRegistry,
    queue: WriteQueue,
) -> Result<
    (
        HybridCache<BlockKey, Block>,
        Vec<std::path::PathBuf>,
        RegionOrder,
    ),
    SetupProblem,
> {
    let dir = settings.disk_dir.clone();
    let disk_bytes = settings.disk_bytes as u64;
    let checked = tokio::task::spawn_blocking(move || {
        disk::check_dir(&dir)?;
        disk::check_space(&dir, disk_bytes)
    })
    .await;
    match checked {
        Ok(r) => r?,
        Err(e) => {
            return Err(SetupProblem {
                key: "cache.disk_dir",
                message: format!("checking the directory failed: {e}"),
            });
        }
    }
    let open_err = |message: String| SetupProblem {
        key: "cache.disk_dir",
        message: format!(
            "cannot open the disk cache in {}: {message}",
            settings.disk_dir.display()
        ),
    };
    let device = FsDeviceBuilder::new(&settings.disk_dir)
        .with_capacity(settings.disk_bytes)
        .build()
        .map_err(|e| open_err(e.to_string()))?;
    let region = region_size(settings.disk_bytes);
    let regions = match RegionOrder::load(&settings.disk_dir) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e,
                "cannot read the saved order of the disk tier's regions; recovered regions are evicted in foyer's order");
            RegionOrder::default()
        }
    };
    let inner = builder(settings, registry, memory_tier_bytes(settings, &queue))
        .with_engine_config(
            BlockEngineConfig::new(device)
                .with_block_size(region)
                // Bounded write buffers and queue, sized for the fetch rate (see `WriteQueue::for_memory`).
                .with_flushers(queue.flushers)
                .with_buffer_pool_size(queue.buffer_pool)
                .with_submit_queue_size_threshold(queue.queue_threshold)
                // Strict FIFO, also across restarts (no early eviction of mostly-invalid regions), so a
                // block's disk lifetime is the disk's capacity of writes, which is what `refresh` reckons with.
                .with_eviction_pickers(vec![regions.picker()]),
        )
        .with_recover_mode(RecoverMode::Quiet)
        .build()
        .await
        .map_err(|e| open_err(e.to_string()))?;
    let dir = settings.disk_dir.clone();
    let reserved = tokio::task::spawn_blocking(move || {
        let files = disk::cache_files(&dir);
        disk::preallocate(&files).map(|()| files)
    })
    .await;
    let problem = match reserved {
        Ok(Ok(files)) => {
            if files.is_empty() {
                tracing::warn!(dir = %settings.disk_dir.display(),
                    "cannot find the disk tier's files: they are neither preallocated nor probed");
            }
            return Ok((inner, files, regions));
        }
        Ok(Err(p)) => p,
        Err(e) => SetupProblem {
            key: "cache.disk_dir",
            message: format!("reserving the cache files failed: {e}"),
        },
    };
    if let Err(e) = inner.close().await {
        tracing::debug!(error = %e, "closing the unusable disk cache");
    }
    Err(problem)
}

/// Blocks given a second chance per batch of the upkeep (each is a memory lookup or a disk read, then a write).
const TAIL_BATCH: usize = 64;

/// Every `every`, until the cache is dropped or its disk tier degrades: reads foyer's free regions, gives the
/// read blocks near the log's tail a second chance (`refresh`), then checks the writes (`writes`); and all the
/// while hands the blocks sent to the disk tier to foyer (`writes`' feed).
fn spawn_upkeep(
    check: Arc<WriteCheck>,
    cache: HybridCache<BlockKey, Block>,
    refresh: Arc<DiskRefresh>,
    health: std::sync::Weak<DiskHealth>,
    every: Duration,
) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        let upkeep = async {
            loop {
                tokio::time::sleep(every).await;
                match health.upgrade() {
                    Some(h) if !h.is_degraded() => {}
                    _ => return,
                }
                upkeep(&check, &cache, &refresh).await;
            }
        };
        // The feed stops with the upkeep: a degraded disk tier takes no more writes.
        tokio::select! {
            () = upkeep => {}
            () = check.feed(&cache) => {}
        }
    })
    .abort_handle()
}

async fn upkeep(check: &WriteCheck, cache: &HybridCache<BlockKey, Block>, refresh: &DiskRefresh) {
    refresh.set_room(writes::disk_has_room(check.registry()));
    keep_tail(cache, refresh, check).await;
    check.check(cache, refresh).await;
}

/// Writes again the blocks `refresh` finds read near the tail, from the memory tier or read back from disk.
async fn keep_tail(
    cache: &HybridCache<BlockKey, Block>,
    refresh: &DiskRefresh,
    check: &WriteCheck,
) {
    loop {
        let due = refresh.due(TAIL_BATCH);
        if due.is_empty() {
            return;
        }
        for w in due {
            let entry = match cache.memory().get(&w.key) {
                Some(e) => Some(e),
                None => match AssertUnwindSafe(cache.get(&w.key)).catch_unwind().await {
                    Ok(Ok(e)) => e,
                    Ok(Err(e)) => {
                        tracing::debug!(file = %w.key.file, block = w.key.index, error = %e,
                            "reading a block back for its second chance failed");
                        None
                    }
                    Err(_) => {
                        tracing::warn!("foyer panicked reading a block back for its second chance");
                        None
                    }
                },
            };
            let Some(entry) = entry.filter(|e| e.value().0.len() == w.bytes as usize) else {
                // Gone from both tiers already (the estimate of the tail was late): fetched at its next read.
                refresh.not_rewritten(&w);
                continue;
            };
            let entry = if entry.properties().age() == Age::Young {
                // Loaded from disk: foyer skips enqueueing such an entry, so it goes to memory anew.
                match std::panic::catch_unwind(AssertUnwindSafe(|| {
                    cache.memory().insert(w.key.clone(), entry.value().clone())
                })) {
                    Ok(e) => e,
                    Err(_) => {
                        tracing::warn!("foyer panicked writing a block again");
                        refresh.not_rewritten(&w);
                        return;
                    }
                }
            } else {
                entry
            };
            refresh.rewrote(&w);
            check.send(entry, Sent::Rewrite, refresh);
        }
        // Other tasks (the flushers among them) run between batches.
        tokio::task::yield_now().await;
    }
}

/// Loads the log's order saved at the last clean shutdown, keeping what foyer recovered.
async fn restore_order(
    refresh: &DiskRefresh,
    cache: &HybridCache<BlockKey, Block>,
    dir: &std::path::Path,
) {
    let hasher = foyer::DefaultHasher::default();
    match refresh.load(
        dir,
        |k| cache.storage().may_contains(k),
        |k| std::hash::BuildHasher::hash_one(&hasher, k),
    ) {
        Ok(0) => {
            tracing::debug!("no saved disk order: blocks recovered are placed at their first read")
        }
        Ok(n) => tracing::info!(blocks = n, "restored the disk tier's order"),
        Err(e) => tracing::warn!(error = %e,
            "cannot read the saved disk order; blocks recovered are placed at their first read"),
    }
}

impl BlockCache for FoyerCache {
    fn get(&self, key: &BlockKey, expected_len: usize) -> BoxFuture<'_, Option<(Bytes, Tier)>> {
        if !self.disk_ok() {
            return futures::future::ready(self.memory_get(key, expected_len)).boxed();
        }
        // Fast path: a memory hit needs no future machinery beyond this.
        let fut = match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.get(key))) {
            Ok(f) => f,
            Err(_) => {
                self.fault("panic", "foyer panicked in a lookup");
                return futures::future::ready(self.memory_get(key, expected_len)).boxed();
            }
        };
        let key = key.clone();
        async move {
            match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(Ok(Some(entry))) => {
                    let tier = match entry.source() {
                        Source::Disk => Tier::Disk,
                        _ => Tier::Memory,
                    };
                    let value = entry.value().0.clone();
                    if value.len() != expected_len {
                        self.wrong_length(&key, value.len(), expected_len);
                        self.inner.remove(&key);
                        return None;
                    }
                    if let Some(refresh) = &self.refresh
                        && self.disk_ok()
                        && let Some(why) = refresh.on_read(&key, entry.hash(), value.len())
                    {
                            let kind = match why {
                                refresh::ReadWrite::Admitted => Sent::New,
                                refresh::ReadWrite::Rewritten => Sent::Rewrite,
                            };
                            let entry = if entry.properties().age() == Age::Young {
                                // Loaded from disk: foyer skips enqueueing such an entry, so insert it anew.
                                self.inner.memory().insert(key.clone(), Block(value.clone()))
                            } else {
                                // To the disk log only (a new sequence, at its head): a memory-tier insert
                                // would restart the block's S3-FIFO standing.
                                entry
                            };
                            self.write(entry, kind, refresh);
                        }
                    Some((value, tier))
                }
                Ok(Ok(None)) => None,
                Ok(Err(e)) => {
                    use foyer::ErrorKind as K;
                    match e.kind() {
                        K::Io | K::Join | K::ChannelClosed => {
                            self.fault("io", &format!("disk cache read failed: {e}"))
                        }
                        _ => {
                            self.metrics.cache_errors.with_label_values(&["read"]).inc();
                            tracing::warn!(error = %e, "disk cache read failed; treating as a miss");
                        }
                    }
                    None
                }
                Err(_) => {
                    self.fault("panic", "foyer panicked in a disk lookup");
                    None
                }
            }
        }
        .boxed()
    }

    fn contains(&self, key: &BlockKey) -> bool {
        if self.disk_ok() {
            self.inner.contains(key)
        } else {
            self.inner.memory().contains(key)
        }
    }

    fn insert(&self, key: BlockKey, value: Bytes) -> Inserted {
        self.metrics.cache_inserted_bytes.inc_by(value.len() as u64);
        let len = value.len();
        let mut inserted = Inserted::Cached;
        if self.disk_ok()
            && let Some(refresh) = &self.refresh
        {
            let hash = std::hash::BuildHasher::hash_one(&foyer::DefaultHasher::default(), &key);
            let admission = refresh.admit(&key, hash, len);
            if admission.to_disk() {
                if admission == (refresh::Admission::ReadBefore { second_fetch: true }) {
                    inserted = Inserted::SecondFetch;
                }
                let k = key.clone();
                let v = value.clone();
                match std::panic::catch_unwind(AssertUnwindSafe(|| {
                    self.inner.memory().insert(k, Block(v))
                })) {
                    Ok(entry) => {
                        debug_assert_eq!(entry.hash(), hash, "foyer hashes keys as the proxy does");
                        self.write(entry, Sent::New, refresh);
                        return inserted;
                    }
                    Err(_) => self.fault("panic", "foyer panicked in an insertion"),
                }
            }
        }
        self.inner.memory().insert(key, Block(value));
        inserted
    }

    fn memory_usage(&self) -> usize {
        self.inner.memory().usage()
    }

    fn disk_state(&self) -> DiskTierState {
        FoyerCache::disk_state(self)
    }

    fn close(&self) -> BoxFuture<'_, Result<(), CacheError>> {
        async move {
            if let Some(p) = &self.probe {
                p.abort();
            }
            if let Some(t) = &self.writes_task {
                t.abort();
            }
            if self.health.as_ref().is_some_and(|h| h.is_degraded()) {
                // foyer's disk engine may be wedged (a dead flusher, a poisoned lock): closing it could panic or
                // hang. What it wrote before the fault is on disk and is recovered at the next start; the rest
                // was never going to persist.
                tracing::warn!(
                    "disk cache tier degraded: not flushing it; blocks written before the fault \
                    are kept for the next start"
                );
                return Ok(());
            }
            // In a task of its own: a panic inside foyer becomes an error here instead of unwinding through
            // the shutdown path, and a wedged engine cannot hold the exit forever. The blocks still in the
            // write feed go first (the feed's task was stopped with the upkeep).
            let inner = self.inner.clone();
            let writes = self.writes.clone();
            let closed = match tokio::time::timeout(
                CLOSE_TIMEOUT,
                tokio::spawn(async move {
                    if let Some(w) = writes {
                        w.drain(&inner).await;
                    }
                    inner.close().await
                }),
            )
            .await
            {
                Ok(Ok(r)) => r.map_err(|e| CacheError::Io(e.to_string())),
                Ok(Err(join)) => Err(CacheError::Io(format!(
                    "the disk tier panicked while closing: {join}"
                ))),
                Err(_) => Err(CacheError::Io(format!(
                    "the disk tier did not close within {CLOSE_TIMEOUT:?}"
                ))),
            };
            // Only after foyer flushed: the order then describes exactly what the next start recovers.
            if closed.is_ok()
                && let (Some(refresh), Some(regions)) = (self.refresh.clone(), self.regions.clone())
            {
                let dir = self.disk_dir.clone();
                let saved = tokio::task::spawn_blocking(move || {
                    regions.save(&dir)?;
                    refresh.save(&dir)
                });
                match saved.await {
                    Ok(Ok(n)) => tracing::debug!(blocks = n, "saved the disk tier's order"),
                    Ok(Err(e)) => tracing::warn!(error = %e,
                        "cannot save the disk tier's order; after the restart, blocks are placed at their first read"),
                    Err(e) => tracing::warn!(error = %e, "saving the disk tier's order failed"),
                }
            }
            closed
        }
        .boxed()
    }
}

impl Drop for FoyerCache {
    fn drop(&mut self) {
        if let Some(p) = &self.probe {
            p.abort();
        }
        if let Some(t) = &self.writes_task {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> BlockKey {
        BlockKey {
            file: "4_zfile".into(),
            index: i,
        }
    }

    #[test]
    fn codec_roundtrip_and_bounds() {
        let mut buf = Vec::new();
        key(7).encode(&mut buf).expect("encode");
        assert_eq!(
            BlockKey::decode(&mut buf.as_slice()).expect("decode"),
            key(7)
        );
        let mut buf = Vec::new();
        Block(Bytes::from_static(b"hello"))
            .encode(&mut buf)
            .expect("encode");
        assert_eq!(
            &Block::decode(&mut buf.as_slice()).expect("decode").0[..],
            b"hello"
        );
        // A corrupt length is refused rather than allocated.
        let bad = (u32::MAX).to_le_bytes();
        assert!(Block::decode(&mut bad.as_slice()).is_err());
    }

    #[tokio::test]
    async fn the_memory_only_fallback_can_rebuild_on_the_same_registry() {
        // The fallback after a failed disk setup builds a second cache on the same metrics: with one
        // `FoyerRegistry` value that must not register foyer's metrics twice (which panics).
        let settings = CacheSettings {
            memory_bytes: 1 << 20,
            disk_bytes: 0,
            disk_dir: std::path::PathBuf::new(),
            block_size: 4096,
            eviction: Eviction::default(),
            on_disk_error: OnDiskError::MemoryOnly,
        };
        let metrics = crate::metrics::Metrics::new().expect("metrics");
        let registry = FoyerRegistry::new(metrics.registry.clone());
        let first = builder(&settings, &registry, 1 << 20)
            .build()
            .await
            .expect("first");
        first.close().await.expect("close");
        let second = builder(&settings, &registry, 1 << 20)
            .build()
            .await
            .expect("second");
        second.insert(key(1), Block(Bytes::from_static(b"x")));
        assert!(second.memory().contains(&key(1)));
    }

    /// 1 MiB of memory over 16 MiB of disk in `dir`, 4 KiB blocks: a disk tier a test fills in microseconds.
    fn tiny_disk(dir: &std::path::Path) -> CacheSettings {
        CacheSettings {
            memory_bytes: 1 << 20,
            disk_bytes: 16 << 20,
            disk_dir: dir.to_path_buf(),
            block_size: 4096,
            eviction: Eviction::default(),
            on_disk_error: OnDiskError::Fail,
        }
    }

    /// A lookup that reaches the disk tier while the runtime shuts down (the process exiting, a test's runtime
    /// dropped with the proxy still serving) returns instead of hanging the thread. foyer-memory 0.22.6 spawned
    /// its fetch while holding the in-flight lock, and a closed runtime drops the new task at once, whose drop
    /// takes that lock again (third_party/README.md): CI hung 80 minutes in such a runtime shutdown.
    #[test]
    fn a_lookup_while_the_runtime_shuts_down_returns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = tiny_disk(dir.path());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let metrics = Arc::new(crate::metrics::Metrics::new().expect("metrics"));
        let cache = rt
            .block_on(FoyerCache::open(&settings, metrics))
            .expect("open");
        let handle = rt.handle().clone();
        // Closed: from now on a task spawned on it is cancelled, and dropped, inside `spawn`.
        rt.shutdown_background();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let got = handle.block_on(cache.get(&key(9), 4096));
            let _ = done.send(got.is_some());
        });
        // Generous for a loaded machine: the lookup itself takes microseconds; a deadlock never ends.
        match finished.recv_timeout(Duration::from_secs(60)) {
            Ok(found) => assert!(!found, "a block never inserted was found"),
            Err(_) => panic!("a disk-tier lookup on a closed runtime deadlocked"),
        }
    }

    #[tokio::test]
    async fn memory_and_disk_tiers_persist_across_close() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = tiny_disk(dir.path());
        let metrics = Arc::new(crate::metrics::Metrics::new().expect("metrics"));
        let cache = FoyerCache::open(&settings, metrics.clone())
            .await
            .expect("open");
        cache.insert(key(1), Bytes::from(vec![1u8; 4096]));
        let (v, tier) = cache.get(&key(1), 4096).await.expect("hit");
        assert_eq!(tier, Tier::Memory);
        assert_eq!(v.len(), 4096);
        // Wrong expected length: never returned.
        assert!(cache.get(&key(1), 100).await.is_none());
        cache.insert(key(2), Bytes::from(vec![2u8; 4096]));
        cache.close().await.expect("close");
        drop(cache);

        // A fresh registry, as a restarted process has (foyer's metrics register once per registry).
        let metrics = Arc::new(crate::metrics::Metrics::new().expect("metrics"));
        let cache = FoyerCache::open(&settings, metrics).await.expect("reopen");
        let (v, tier) = cache.get(&key(2), 4096).await.expect("hit after reopen");
        assert_eq!(tier, Tier::Disk);
        assert!(v.iter().all(|&b| b == 2));
        cache.close().await.expect("close");
    }

    const BLOCK: usize = 64 << 10;

    #[test]
    fn the_memory_tier_gets_what_the_disk_tiers_buffers_and_tables_leave() {
        const MIB: usize = 1 << 20;
        let defaults = CacheSettings {
            memory_bytes: 1 << 30,
            disk_bytes: 50 << 30,
            disk_dir: std::path::PathBuf::new(),
            block_size: BLOCK,
            eviction: Eviction::default(),
            on_disk_error: OnDiskError::Fail,
        };
        let queue = WriteQueue::for_memory(defaults.memory_bytes);
        // The disk tier's order: 1,024,064 places of 48 bytes, an index of 2^21 buckets of 17 bytes, 8 MiB of
        // ghost table (89 MiB for 50 GiB of disk).
        let order = refresh::table_bytes(defaults.disk_bytes, BLOCK);
        assert_eq!(order, 1_024_064 * 48 + (1 << 21) * 17 + 8 * MIB);
        // 2 x 32 MiB of flush buffers, half the 128 MiB queue, the order, 8 MiB of hot-set table.
        assert_eq!(
            memory_tier_bytes(&defaults, &queue),
            1024 * MIB - 64 * MIB - 64 * MIB - order - 8 * MIB
        );
        let memory_only = CacheSettings {
            disk_bytes: 0,
            ..defaults.clone()
        };
        // The hot-set table then covers the memory tier: 32,768 slots.
        assert_eq!(
            memory_tier_bytes(&memory_only, &queue),
            1024 * MIB - 256 * 1024
        );
        let tiny = CacheSettings {
            memory_bytes: 8 * MIB,
            disk_bytes: 64 * MIB,
            ..defaults.clone()
        };
        let q = WriteQueue::for_memory(tiny.memory_bytes);
        assert_eq!(memory_tier_bytes(&tiny, &q), 4 * MIB, "never below half");
        // ...which is what the start-up warning is about; the defaults do not warn.
        assert!(fixed_bytes(&tiny, &q) > tiny.memory_bytes / 2);
        assert!(fixed_bytes(&defaults, &queue) < defaults.memory_bytes / 2);
        // And the warning is logged, naming the sizes and what to set; not for the defaults.
        assert!(start_warnings(&defaults, &queue).is_empty());
        let warned = start_warnings(&tiny, &q);
        assert_eq!(warned.len(), 1, "{warned:?}");
        for part in [
            "cache.memory is small",
            "set cache.memory to at least",
            "disk_mib=64",
        ] {
            assert!(warned[0].contains(part), "{part:?} not in {:?}", warned[0]);
        }
    }

    /// The WARN lines [`warn_if_memory_too_small`] logs, each as its message and fields.
    fn start_warnings(settings: &CacheSettings, queue: &WriteQueue) -> Vec<String> {
        use tracing_subscriber::layer::SubscriberExt;

        #[derive(Clone, Default)]
        struct Lines(Arc<std::sync::Mutex<Vec<String>>>);
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                use std::fmt::Write as _;
                let _ = write!(self.0, " {}={v:?}", f.name());
            }
        }
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Lines {
            fn on_event(
                &self,
                e: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                if *e.metadata().level() == tracing::Level::WARN {
                    let mut f = Fields(String::new());
                    e.record(&mut f);
                    self.0.lock().expect("lines").push(f.0);
                }
            }
        }
        let lines = Lines::default();
        let subscriber = tracing_subscriber::registry().with(lines.clone());
        tracing::subscriber::with_default(subscriber, || warn_if_memory_too_small(settings, queue));
        lines.0.lock().expect("lines").clone()
    }

    fn small_disk(dir: &std::path::Path) -> CacheSettings {
        CacheSettings {
            // Both tiers hold every block of the tests below: nothing is evicted, so a block missing from the disk
            // index was dropped, and a dropped one can be retried from memory.
            memory_bytes: 64 << 20,
            disk_bytes: 64 << 20,
            disk_dir: dir.to_path_buf(),
            block_size: BLOCK,
            eviction: Eviction::default(),
            on_disk_error: OnDiskError::Fail,
        }
    }

    /// A write feed that holds three blocks (each takes 68 KiB on disk): inserts sent back to back overflow it.
    /// Its one flusher's buffer (1 MiB) takes a whole window (512 KiB).
    const TINY_QUEUE: WriteQueue = WriteQueue {
        flushers: 1,
        buffer_pool: 1 << 20,
        queue_threshold: 4 * BLOCK,
    };

    fn block(i: u64) -> Bytes {
        Bytes::from(vec![i as u8; BLOCK])
    }

    /// foyer's own count of dropped disk writes.
    fn foyer_dropped(m: &crate::metrics::Metrics) -> u64 {
        m.registry
            .gather()
            .iter()
            .filter(|f| f.name() == "foyer_storage_inner_op_total")
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| {
                m.get_label().iter().any(|l| {
                    l.name() == "op"
                        && (l.value() == "channel_overflow" || l.value() == "buffer_overflow")
                })
            })
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    /// Blocks `0..n` in the disk index.
    fn on_disk(cache: &FoyerCache, n: u64) -> u64 {
        (0..n)
            .filter(|&i| cache.inner.storage().may_contains(&key(i)))
            .count() as u64
    }

    /// Waits until the write feed handed everything to foyer and foyer's flushers wrote it. Bounded: the feed
    /// moves 512 KiB per flush; 60 s is far more than a loaded machine needs for the few MiB of these tests.
    async fn settle(cache: &FoyerCache) {
        let writes = cache.writes.clone().expect("disk tier");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        // The feed takes a window out and hands it to foyer without an await between: an empty feed has
        // handed everything over.
        while writes.queued_bytes() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the write feed does not drain"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cache.inner.storage().wait().await;
    }

    async fn all_served_from_disk_after_restart(settings: &CacheSettings, n: u64) {
        let metrics = Arc::new(crate::metrics::Metrics::new().expect("metrics"));
        let cache = FoyerCache::open(settings, metrics).await.expect("reopen");
        for i in 0..n {
            let (v, tier) = cache.get(&key(i), BLOCK).await.unwrap_or_else(|| {
                panic!("block {i} is not on disk after the restart: it would be fetched again")
            });
            assert_eq!(tier, Tier::Disk);
            assert!(v.iter().all(|&b| b == i as u8), "block {i} content");
        }
        cache.close().await.expect("close");
    }

    /// What dropped writes foyer's flusher buffers used to cause: a burst far larger than a flusher's buffer
    /// (13.6 MiB into 1 MiB), all queued before the flusher runs, as a warm-up on a loaded machine does. The
    /// feed hands it over a window at a time, so nothing is dropped and nothing needs repair.
    #[tokio::test]
    async fn a_burst_larger_than_the_flush_buffers_reaches_the_disk_whole() {
        const N: u64 = 200;
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = small_disk(dir.path());
        let metrics = Arc::new(crate::metrics::Metrics::new().expect("metrics"));
        let queue = WriteQueue {
            queue_threshold: 32 << 20,
            ..TINY_QUEUE
        };
        // No check runs during the test: whatever is on disk got there the first time.
        let cache =
            FoyerCache::open_with(&settings, metrics.clone(), queue, Duration::from_secs(3600))
                .await
                .expect("open");
        // Back to back on this current-thread runtime: no flusher runs until the test awaits.
        for i in 0..N {
            cache.insert(key(i), block(i));
        }
        settle(&cache).await;
        assert_eq!(foyer_dropped(&metrics), 0, "foyer dropped writes");
        assert_eq!(metrics.cache_disk_dropped_writes.get(), 0);
        assert_eq!(
            on_disk(&cache, N),
            N,
            "every block was written the first time"
        );
        cache.close().await.expect("close");
        drop(cache);
        all_served_from_disk_after_restart(&settings, N).await;
    }

    #[tokio::test]
    async fn dropped_disk_writes_are_counted_exactly_and_written_again() {
        const N: u64 = 200;
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = small_disk(dir.path());
        let metrics = Arc::new(crate::metrics::Metrics::new().expect("metrics"));
        // The check runs when the test says, so the drops can be counted before it repairs them.
        let cache = FoyerCache::open_with(
            &settings,
            metrics.clone(),
            TINY_QUEUE,
            Duration::from_secs(3600),
        )
        .await
        .expect("open");
        // Back to back: the feed takes three, the rest overflow it, as a warm-up outrunning the disk does.
        for i in 0..N {
            cache.insert(key(i), block(i));
        }
        settle(&cache).await;
        let dropped = N - on_disk(&cache, N);
        assert!(
            dropped > N / 2,
            "the tiny feed must drop writes: {dropped} dropped"
        );
        assert_eq!(
            metrics.cache_disk_dropped_writes.get(),
            dropped,
            "the counter is the blocks missing on disk"
        );

        let writes = cache.writes.clone().expect("disk tier");
        let refresh = cache.refresh.clone().expect("disk tier");
        // Each check sends again what fits in the feed (three blocks) and keeps the rest for the next one.
        let mut checks = 0;
        while on_disk(&cache, N) < N {
            checks += 1;
            assert!(
                checks <= N,
                "dropped writes not repaired after {checks} checks"
            );
            writes.check(&cache.inner, &refresh).await;
            settle(&cache).await;
        }
        assert_eq!(metrics.cache_disk_write_retries.get(), dropped);
        assert_eq!(
            metrics.cache_disk_dropped_writes.get(),
            dropped,
            "retries are sent no faster than the feed takes them"
        );
        assert_eq!(foyer_dropped(&metrics), 0, "foyer dropped writes");
        cache.close().await.expect("close");
        drop(cache);
        all_served_from_disk_after_restart(&settings, N).await;
    }

    #[tokio::test]
    async fn the_background_check_repairs_drops_and_counts_them() {
        const N: u64 = 150;
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = small_disk(dir.path());
        let metrics = Arc::new(crate::metrics::Metrics::new().expect("metrics"));
        let cache = FoyerCache::open_with(
            &settings,
            metrics.clone(),
            TINY_QUEUE,
            Duration::from_millis(50),
        )
        .await
        .expect("open");
        // Back to back without an await, as above: the feed overflows before it hands anything over.
        for i in 0..N {
            cache.insert(key(i), block(i));
        }
        // Bounded: each check sends three blocks again, ~50 checks of 50 ms; 60 s is far more than a loaded
        // machine needs.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while on_disk(&cache, N) < N {
            assert!(
                std::time::Instant::now() < deadline,
                "dropped writes not repaired"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let dropped = metrics.cache_disk_dropped_writes.get();
        assert!(dropped > N / 2, "the tiny feed must drop writes: {dropped}");
        // Every drop (the feed's and foyer's alike) was written again exactly once.
        assert_eq!(metrics.cache_disk_write_retries.get(), dropped);
        cache.close().await.expect("close");
        drop(cache);
        all_served_from_disk_after_restart(&settings, N).await;
    }

    /// A farm on the real disk engine: a hot set of half the disk tier, read every round from disk (the memory
    /// tier holds a few dozen blocks), among cold blocks fetched once or twice, through turns of the log and a
    /// restart. The upkeep runs when the test says, after foyer flushed, so the test is deterministic.
    #[tokio::test]
    async fn the_hot_set_stays_on_disk_through_turns_of_the_log_and_a_restart() {
        const HOT: u64 = 480;
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = CacheSettings {
            memory_bytes: 4 << 20,
            disk_bytes: 64 << 20,
            disk_dir: dir.path().to_path_buf(),
            block_size: BLOCK,
            eviction: Eviction::default(),
            on_disk_error: OnDiskError::Fail,
        };
        let open = |metrics: Arc<crate::metrics::Metrics>| {
            let settings = settings.clone();
            async move {
                FoyerCache::open_with(
                    &settings,
                    metrics,
                    WriteQueue::for_memory(settings.memory_bytes),
                    Duration::from_secs(3600),
                )
                .await
                .expect("open")
            }
        };
        let upkeep_now = |c: &FoyerCache| {
            let (check, refresh) = (
                c.writes.clone().expect("disk tier"),
                c.refresh.clone().expect("disk tier"),
            );
            let inner = c.inner.clone();
            async move {
                inner.storage().wait().await;
                upkeep(&check, &inner, &refresh).await;
                inner.storage().wait().await;
            }
        };
        let hot_block = |i: u64| Bytes::from(vec![i as u8; BLOCK]);
        let mut cold = 1u64 << 20;
        // One round: every hot block read (a miss is fetched and inserted), 200 cold blocks, every other one
        // fetched twice. Returns the hot blocks that were fetched.
        async fn round(
            cache: &FoyerCache,
            cold: &mut u64,
            upkeep_now: &(impl AsyncFn(&FoyerCache) + ?Sized),
            hot_block: &impl Fn(u64) -> Bytes,
        ) -> u64 {
            let mut fetched = 0;
            for n in 0..HOT {
                match cache.get(&key(n), BLOCK).await {
                    Some((v, _)) => assert_eq!(v, hot_block(n), "hot block {n}"),
                    None => {
                        fetched += 1;
                        cache.insert(key(n), hot_block(n));
                    }
                }
                if n % 12 == 0 {
                    for _ in 0..5 {
                        *cold += 1;
                        cache.insert(key(*cold), block(*cold));
                        if cold.is_multiple_of(2) {
                            cache.insert(key(*cold), block(*cold));
                        }
                    }
                }
                if n % 32 == 0 {
                    upkeep_now(cache).await;
                }
            }
            fetched
        }

        let metrics = Arc::new(crate::metrics::Metrics::new().expect("metrics"));
        let cache = open(metrics.clone()).await;
        let (mut settling, mut refetched) = (0, 0);
        for r in 0..24 {
            let fetched = round(&cache, &mut cold, &upkeep_now, &hot_block).await;
            match r {
                // The warm-up (with its cold blocks, about as much as the log holds) and the first turn of its
                // blocks, which were written unread: a few may be let go before their next read.
                0 | 1 => {}
                2 => settling += fetched,
                _ => refetched += fetched,
            }
        }
        assert!(
            settling <= HOT / 20,
            "{settling} fetched again in the first turn"
        );
        let written = metrics.cache_inserted_bytes.get() + metrics.cache_disk_rewritten_bytes.get();
        assert!(
            written >= 2 * settings.disk_bytes as u64,
            "the log must turn at least twice: {written} bytes written"
        );
        let declined = metrics
            .cache_disk_admissions
            .with_label_values(&["declined"])
            .get();
        assert!(declined > 0, "a full log declines first fetches");
        assert!(metrics.cache_disk_rewritten_blocks.get() > 0);
        assert_eq!(refetched, 0, "hot blocks fetched again after the warm-up");
        cache.close().await.expect("close");
        drop(cache);

        // After a clean restart the order is back: every hot block is on disk, and stays there.
        let metrics = Arc::new(crate::metrics::Metrics::new().expect("metrics"));
        let cache = open(metrics.clone()).await;
        assert!(
            !dir.path().join(refresh::ORDER_FILE).exists(),
            "the saved order is consumed at start"
        );
        for i in 0..HOT {
            let (_, tier) = cache
                .get(&key(i), BLOCK)
                .await
                .unwrap_or_else(|| panic!("hot block {i} is not on disk after the restart"));
            assert_eq!(tier, Tier::Disk);
        }
        assert_eq!(
            metrics.cache_disk_rewritten_blocks.get(),
            0,
            "the restored order places every recovered hot block: none needs a rewrite to get one"
        );
        let mut refetched = 0;
        for _ in 0..12 {
            refetched += round(&cache, &mut cold, &upkeep_now, &hot_block).await;
        }
        assert_eq!(refetched, 0, "hot blocks fetched again after the restart");
        cache.close().await.expect("close");
    }
}
