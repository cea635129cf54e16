//! The block cache seam and its foyer implementation.
//!
//! Data is cached in aligned blocks keyed by (file id, block index): a file id names one immutable version, so a
//! re-uploaded name can never be answered from the old version's blocks. The memory tier is weighed in bytes
//! and evicts with S3-FIFO (scan-resistant: a block read once leaves through the small queue, so a stream of
//! cold reads cannot push out the plot headers and tables that every lookup reads again); the disk tier (foyer's
//! block engine on a directory) is written on insertion, so a crash loses at most the last moments of fetches,
//! and survives restarts. Its regions are evicted in FIFO order; a block read when its disk copy is a quarter of
//! the disk old is written again (`refresh`), so headers and indexes read at every open stay on disk through
//! scans and crashes.
//! foyer checksums every disk entry; on top of that a block read back must have exactly the expected length, or
//! it is dropped and fetched again.

pub(crate) mod refresh;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use foyer::{
    Age, BlockEngineConfig, Code, DeviceBuilder, EvictionConfig, FifoConfig, FifoPicker,
    FsDeviceBuilder, HybridCache, HybridCacheBuilder, HybridCachePolicy, LfuConfig, LruConfig,
    RecoverMode, S3FifoConfig, SieveConfig, Source,
};
use futures::FutureExt;
use futures::future::BoxFuture;

use refresh::DiskRefresh;

use crate::config::Eviction;

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
    #[error("cannot create cache directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the disk cache: {0}")]
    Open(String),
    #[error("cache I/O: {0}")]
    Io(String),
}

/// A cache of file blocks. `get` never fails the read: a broken tier is a miss (and logged).
pub trait BlockCache: Send + Sync + 'static {
    /// The block, if cached; `expected_len` is checked so a short or foreign value is never returned.
    fn get(&self, key: &BlockKey, expected_len: usize) -> BoxFuture<'_, Option<(Bytes, Tier)>>;
    /// Cheap check (memory, and the disk index) used to decide read-ahead.
    fn contains(&self, key: &BlockKey) -> bool;
    fn insert(&self, key: BlockKey, value: Bytes);
    /// Bytes the memory tier holds now (weighed as for the budget).
    fn memory_usage(&self) -> usize;
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

pub struct FoyerCache {
    inner: HybridCache<BlockKey, Block>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Present with a disk tier.
    refresh: Option<DiskRefresh>,
}

/// Disk engine region ("block" in foyer's words): the unit of disk eviction. Smaller regions evict more finely
/// in small caches; 16 MiB (foyer's default) for large ones.
fn region_size(disk_bytes: usize) -> usize {
    (disk_bytes / 16)
        .clamp(1 << 20, 16 << 20)
        .next_power_of_two()
        .min(16 << 20)
}

impl FoyerCache {
    pub async fn open(
        settings: &CacheSettings,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, CacheError> {
        // foyer's own metrics (op counts, latencies, disk I/O) land in the proxy's registry, under `foyer_*`.
        let registry = mixtrics::registry::prometheus::PrometheusMetricsRegistry::new(
            metrics.registry.clone(),
        );
        let builder = HybridCacheBuilder::new()
            .with_name("b2proxy")
            .with_metrics_registry(Box::new(registry))
            .with_policy(HybridCachePolicy::WriteOnInsertion)
            .with_flush_on_close(true)
            .memory(settings.memory_bytes)
            .with_shards(shards(settings.memory_bytes))
            .with_eviction_config(eviction_config(settings.eviction))
            .with_weighter(|k: &BlockKey, v: &Block| v.0.len() + k.file.len() + ENTRY_OVERHEAD)
            .storage();
        let mut refresh = None;
        let inner = if settings.disk_bytes > 0 {
            create_dir(&settings.disk_dir)?;
            let device = FsDeviceBuilder::new(&settings.disk_dir)
                .with_capacity(settings.disk_bytes)
                .build()
                .map_err(|e| CacheError::Open(format!("{}: {e}", settings.disk_dir.display())))?;
            let region = region_size(settings.disk_bytes);
            refresh = Some(DiskRefresh::new(
                settings.disk_bytes,
                settings.block_size,
                2 * region,
                metrics.cache_disk_rewritten_blocks.clone(),
                metrics.cache_disk_rewritten_bytes.clone(),
            ));
            builder
                .with_engine_config(
                    BlockEngineConfig::new(device)
                        .with_block_size(region)
                        // Bounded write buffer: counts toward the "small constant" above the memory budget.
                        .with_buffer_pool_size(8 << 20)
                        .with_submit_queue_size_threshold(16 << 20)
                        // Strict FIFO (no early eviction of mostly-invalid regions), so a block's disk lifetime
                        // is the disk's capacity of writes, which is what `refresh` reckons with.
                        .with_eviction_pickers(vec![Box::new(FifoPicker::default())]),
                )
                .with_recover_mode(RecoverMode::Quiet)
                .build()
                .await
        } else {
            builder.build().await
        }
        .map_err(|e| CacheError::Open(e.to_string()))?;
        Ok(Self {
            inner,
            metrics,
            refresh,
        })
    }
}

fn create_dir(path: &Path) -> Result<(), CacheError> {
    std::fs::create_dir_all(path).map_err(|source| CacheError::Dir {
        path: path.display().to_string(),
        source,
    })
}

impl BlockCache for FoyerCache {
    fn get(&self, key: &BlockKey, expected_len: usize) -> BoxFuture<'_, Option<(Bytes, Tier)>> {
        // Fast path: a memory hit needs no future machinery beyond this.
        let fut = self.inner.get(key);
        let key = key.clone();
        async move {
            match fut.await {
                Ok(Some(entry)) => {
                    let tier = match entry.source() {
                        Source::Disk => Tier::Disk,
                        _ => Tier::Memory,
                    };
                    let value = entry.value().0.clone();
                    if value.len() != expected_len {
                        self.metrics.cache_errors.with_label_values(&["bad_length"]).inc();
                        tracing::warn!(file = %key.file, block = key.index, got = value.len(), expected_len,
                            "cached block has the wrong length; dropping it");
                        self.inner.remove(&key);
                        return None;
                    }
                    if let Some(refresh) = &self.refresh
                        && refresh.should_rewrite(entry.hash(), value.len())
                    {
                        if entry.properties().age() == Age::Young {
                            // Loaded from disk: foyer skips enqueueing such an entry, so insert it anew.
                            self.inner.insert(key, Block(value.clone()));
                        } else {
                            // To the disk log only (a new sequence, at its head): a memory-tier insert would
                            // restart the block's S3-FIFO standing.
                            self.inner.storage().enqueue(entry.piece(), false);
                        }
                    }
                    Some((value, tier))
                }
                Ok(None) => None,
                Err(e) => {
                    self.metrics.cache_errors.with_label_values(&["read"]).inc();
                    tracing::warn!(error = %e, "disk cache read failed; treating as a miss");
                    None
                }
            }
        }
        .boxed()
    }

    fn contains(&self, key: &BlockKey) -> bool {
        self.inner.contains(key)
    }

    fn insert(&self, key: BlockKey, value: Bytes) {
        self.metrics.cache_inserted_bytes.inc_by(value.len() as u64);
        let len = value.len();
        let entry = self.inner.insert(key, Block(value));
        if let Some(refresh) = &self.refresh {
            refresh.inserted(entry.hash(), len);
        }
    }

    fn memory_usage(&self) -> usize {
        self.inner.memory().usage()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), CacheError>> {
        async move {
            self.inner
                .close()
                .await
                .map_err(|e| CacheError::Io(e.to_string()))
        }
        .boxed()
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
    async fn memory_and_disk_tiers_persist_across_close() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = CacheSettings {
            memory_bytes: 1 << 20,
            disk_bytes: 16 << 20,
            disk_dir: dir.path().to_path_buf(),
            block_size: 4096,
            eviction: Eviction::default(),
        };
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
}
