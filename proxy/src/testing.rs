//! Doubles for tests of the layers above the upstream and the cache: an in-memory [`BlockCache`] and a
//! harness that wires [`MockSource`] -> [`Upstream`] -> [`Fetcher`] the way the server does, with settings a
//! test can change. Built for this crate's tests and, with the `testing` feature, for the tests crate.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;

use crate::cache::{BlockCache, BlockKey, CacheError, Inserted, Tier};
use crate::fetch::{FetchSettings, Fetcher};
use crate::metrics::Metrics;
use crate::policy::breaker::BreakerSettings;
use crate::policy::hedge::HedgeSettings;
use crate::policy::{PolicySettings, Upstream, schedule};
use crate::sync::Mutex;
use crate::upstream::mock::MockSource;

/// A memory-only block cache without eviction, counting what it is asked.
#[derive(Default)]
pub struct MapCache {
    blocks: Mutex<HashMap<BlockKey, Bytes>>,
    pub inserts: AtomicU64,
}

impl MapCache {
    pub fn len(&self) -> usize {
        self.blocks.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn remove(&self, key: &BlockKey) {
        self.blocks.lock().remove(key);
    }
}

impl BlockCache for MapCache {
    fn get(&self, key: &BlockKey, expected_len: usize) -> BoxFuture<'_, Option<(Bytes, Tier)>> {
        let hit = self
            .blocks
            .lock()
            .get(key)
            .filter(|b| b.len() == expected_len)
            .cloned();
        async move { hit.map(|b| (b, Tier::Memory)) }.boxed()
    }

    fn contains(&self, key: &BlockKey) -> bool {
        self.blocks.lock().contains_key(key)
    }

    fn insert(&self, key: BlockKey, value: Bytes) -> Inserted {
        self.inserts.fetch_add(1, Ordering::Relaxed);
        self.blocks.lock().insert(key, value);
        Inserted::Cached
    }

    fn memory_usage(&self) -> usize {
        self.blocks.lock().values().map(Bytes::len).sum()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), CacheError>> {
        async { Ok(()) }.boxed()
    }
}

/// Settings of a test stack: small blocks so a few KiB exercise every path.
pub fn policy_settings() -> PolicySettings {
    PolicySettings {
        schedule: schedule::Settings {
            max_concurrency: 64,
            min_concurrency: 4,
            initial_concurrency: 64,
            max_rps: 0.0,
            promote_after: Duration::from_millis(750),
            adaptive: false,
            prioritize: true,
        },
        attempt_timeout: Duration::from_secs(2),
        read_deadline: Duration::from_secs(5),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        breaker: BreakerSettings {
            threshold: 5,
            cooldown: Duration::from_secs(1),
        },
        hedge: None,
    }
}

pub fn hedge_settings() -> HedgeSettings {
    HedgeSettings {
        quantile: 0.9,
        floor: Duration::from_millis(30),
        ceiling: Duration::from_secs(2),
        budget: 0.5,
    }
}

pub fn fetch_settings() -> FetchSettings {
    FetchSettings {
        block_size: 4096,
        min_fetch: 4096,
        readahead_max: 64 << 10,
    }
}

/// A mock upstream, the policy over it, and a fetcher over both with a [`MapCache`].
pub struct Stack {
    pub source: Arc<MockSource>,
    pub upstream: Arc<Upstream>,
    pub cache: Arc<MapCache>,
    pub fetcher: Arc<Fetcher>,
    pub metrics: Arc<Metrics>,
    pub changed: Arc<AtomicU64>,
}

impl Stack {
    pub fn new(policy: PolicySettings, fetch: FetchSettings) -> Self {
        let metrics = Arc::new(Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}")));
        let source = MockSource::new();
        let upstream = Upstream::new(source.clone(), policy, metrics.clone());
        let cache = Arc::new(MapCache::default());
        let changed = Arc::new(AtomicU64::new(0));
        let c = changed.clone();
        let hot = Arc::new(crate::cache::hotset::HotSet::with_metrics(
            1 << 30,
            0,
            fetch.block_size,
            crate::cache::hotset::DEFAULT_WINDOW,
            &metrics,
        ));
        let fetcher = Arc::new(Fetcher::new(
            upstream.clone(),
            cache.clone(),
            fetch,
            metrics.clone(),
            hot,
            Box::new(move || {
                c.fetch_add(1, Ordering::Relaxed);
            }),
        ));
        Self {
            source,
            upstream,
            cache,
            fetcher,
            metrics,
            changed,
        }
    }

    pub fn default_stack() -> Self {
        Self::new(policy_settings(), fetch_settings())
    }

    /// A counter's value (summed over labels) from the proxy's own registry.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metrics
            .registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
            // A family is one type: the other accessor reads a default 0.
            .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
            .sum()
    }
}

/// Deterministic file contents: byte `i` is a function of `i` and `seed`, so any wrong offset shows.
pub fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(2_654_435_761).rotate_right(13) as u8 ^ seed)
        .collect::<Vec<u8>>()
        .into()
}
