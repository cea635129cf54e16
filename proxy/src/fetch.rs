//! The fetcher: turns a byte-range read into cache lookups and as few upstream requests as possible.
//!
//! - Single-flight: a block being fetched is registered in the in-flight map; any read that needs it joins that
//!   fetch instead of starting another, also when two reads overlap only partly.
//! - Coalescing: the missing blocks of one read that are adjacent go upstream as one range GET, extended to at
//!   least `min_fetch` bytes from the read offset (a Chia k=32 table step is two adjacent 8191-byte reads; one
//!   GET must bring both).
//! - Read-ahead: a stream that has read a while sequentially on one file grows a window (up to `readahead_max`)
//!   fetched in background runs, so `cp` from the mount runs near the upstream bandwidth. Small random pairs never
//!   trigger it, so Chia lookups pay no extra transactions.
//! - Fetches run as their own tasks: a client that disconnects does not cancel a fetch other readers wait on, and
//!   blocks enter the cache before they leave the in-flight map, so no read can slip between the two and fetch
//!   again.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::breaker::{Breaker, Pass};
use crate::cache::{BlockCache, BlockKey, Tier};
use crate::hedge::Hedger;
use crate::metrics::Metrics;
use crate::upstream::{ObjectInfo, ObjectSource, UpstreamError};

/// Sequential bytes a stream must read before read-ahead starts (a Chia pair is 16 KiB: far below).
const SEQ_TRIGGER: u64 = 256 << 10;
/// Largest single background read-ahead GET: blocks become readable as each run lands.
const READAHEAD_RUN: u64 = 1 << 20;
/// Largest GET for blocks a reader waits on.
const MAX_RUN: u64 = 16 << 20;
/// Streams tracked for sequential detection, and read-ahead blocks tracked for used/wasted accounting.
const MAX_STREAMS: usize = 4096;
const MAX_PREFETCHED: usize = 1 << 16;

#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("internal fetch error: {0}")]
    Internal(String),
}

/// How a read was served: the slowest tier it needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    HitMemory,
    HitDisk,
    Miss,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::HitMemory => "hit_memory",
            Outcome::HitDisk => "hit_disk",
            Outcome::Miss => "miss",
        }
    }
}

#[derive(Debug, Clone)]
pub struct FetchSettings {
    pub block_size: u64,
    pub min_fetch: u64,
    pub readahead_max: u64,
}

type RunResult = Result<Arc<Vec<Bytes>>, FetchError>;
type RunFuture = Shared<BoxFuture<'static, RunResult>>;

#[derive(Clone)]
struct Pending {
    run_id: u64,
    run: RunFuture,
    /// Position of the block within its run's result.
    slot: usize,
}

#[derive(Default)]
struct StreamState {
    next: u64,
    seq_bytes: u64,
    window: u64,
}

pub struct Fetcher {
    source: Arc<dyn ObjectSource>,
    cache: Arc<dyn BlockCache>,
    hedger: Option<Arc<Hedger>>,
    settings: FetchSettings,
    inflight: Mutex<HashMap<BlockKey, Pending>>,
    streams: Mutex<HashMap<Arc<str>, StreamState>>,
    prefetched: Mutex<HashSet<BlockKey>>,
    /// Size of `prefetched`, readable without the lock: random (Chia) reads never fetch ahead, so every cache hit
    /// skips the lock when this is 0.
    prefetched_len: std::sync::atomic::AtomicUsize,
    next_run: AtomicU64,
    metrics: Arc<Metrics>,
    on_changed: Box<dyn Fn() + Send + Sync>,
    breaker: Breaker,
}

/// Removes a run's blocks from the in-flight map however the run ends.
struct InflightGuard {
    fetcher: Arc<Fetcher>,
    keys: Vec<BlockKey>,
    run_id: u64,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let mut map = self
            .fetcher
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            if map.get(k).is_some_and(|p| p.run_id == self.run_id) {
                map.remove(k);
            }
        }
    }
}

impl Fetcher {
    pub fn new(
        source: Arc<dyn ObjectSource>,
        cache: Arc<dyn BlockCache>,
        hedger: Option<Arc<Hedger>>,
        settings: FetchSettings,
        metrics: Arc<Metrics>,
        on_changed: Box<dyn Fn() + Send + Sync>,
    ) -> Self {
        Self {
            source,
            cache,
            hedger,
            settings,
            inflight: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            prefetched: Mutex::new(HashSet::new()),
            prefetched_len: std::sync::atomic::AtomicUsize::new(0),
            next_run: AtomicU64::new(1),
            metrics,
            on_changed,
            breaker: Breaker::new(3, std::time::Duration::from_secs(3)),
        }
    }

    /// Whether misses currently fail fast because upstream is down.
    pub fn upstream_circuit_open(&self) -> bool {
        self.breaker.is_open()
    }

    pub fn cache_memory_usage(&self) -> usize {
        self.cache.memory_usage()
    }

    pub fn block_size(&self) -> u64 {
        self.settings.block_size
    }

    fn key(obj: &ObjectInfo, index: u64) -> BlockKey {
        BlockKey {
            file: obj.id.clone(),
            index,
        }
    }

    fn block_range(&self, obj: &ObjectInfo, index: u64) -> Range<u64> {
        let bs = self.settings.block_size;
        let start = index * bs;
        start..(start + bs).min(obj.size)
    }

    /// Reads `range` (non-empty, within the file) of `obj`, through the cache.
    pub async fn read(
        self: &Arc<Self>,
        obj: &Arc<ObjectInfo>,
        range: Range<u64>,
    ) -> Result<(Bytes, Outcome), FetchError> {
        if range.start >= range.end || range.end > obj.size {
            return Err(FetchError::Internal(format!(
                "read {}..{} outside file of {} bytes",
                range.start, range.end, obj.size
            )));
        }
        let bs = self.settings.block_size;
        let first = range.start / bs;
        let last = (range.end - 1) / bs;
        let count = (last - first + 1) as usize;

        let lookups = futures::future::join_all((first..=last).map(|i| {
            let len = self.block_range(obj, i);
            self.cache
                .get(&Self::key(obj, i), (len.end - len.start) as usize)
        }))
        .await;

        let mut blocks: Vec<Option<Bytes>> = vec![None; count];
        let mut outcome = Outcome::HitMemory;
        let mut missing = Vec::new();
        for (slot, hit) in lookups.into_iter().enumerate() {
            let index = first + slot as u64;
            match hit {
                Some((bytes, tier)) => {
                    self.metrics
                        .cache_hits
                        .with_label_values(&[tier.label()])
                        .inc();
                    self.metrics
                        .cache_hit_bytes
                        .with_label_values(&[tier.label()])
                        .inc_by(bytes.len() as u64);
                    if tier == Tier::Disk {
                        outcome = outcome.max(Outcome::HitDisk);
                    }
                    self.note_prefetch_used(&Self::key(obj, index));
                    blocks[slot] = Some(bytes);
                }
                None => missing.push(index),
            }
        }

        let readahead = self.track_stream(obj, &range);

        if !missing.is_empty() {
            outcome = Outcome::Miss;
            self.metrics.cache_misses.inc_by(missing.len() as u64);
            let waits = self.plan_and_start(obj, &range, &missing);
            for (index, pending) in waits {
                let run = pending.run.await?;
                let block = run.get(pending.slot).cloned().ok_or_else(|| {
                    FetchError::Internal("run result shorter than planned".into())
                })?;
                blocks[(index - first) as usize] = Some(block);
            }
        }

        if let Some(window) = readahead {
            self.start_readahead(obj, window);
        }

        let out = assemble(&blocks, first * bs, &range)?;
        Ok((out, outcome))
    }

    /// Joins fetches in flight and starts runs for the rest; returns what to wait for, per missing block.
    fn plan_and_start(
        self: &Arc<Self>,
        obj: &Arc<ObjectInfo>,
        range: &Range<u64>,
        missing: &[u64],
    ) -> Vec<(u64, Pending)> {
        let bs = self.settings.block_size;
        let mut waits = Vec::with_capacity(missing.len());
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let mut to_fetch: Vec<u64> = Vec::new();
        for &index in missing {
            match map.get(&Self::key(obj, index)) {
                Some(p) => {
                    self.metrics.singleflight_joins.inc();
                    waits.push((index, p.clone()));
                }
                None => to_fetch.push(index),
            }
        }
        if to_fetch.is_empty() {
            return waits;
        }
        // min_fetch: extend the last run forward so that one GET covers the read offset + min_fetch.
        let want_end = (range.start + self.settings.min_fetch).min(obj.size);
        let mut extra = Vec::new();
        if let Some(&tail) = to_fetch.last() {
            let mut i = tail + 1;
            while i * bs < want_end {
                let k = Self::key(obj, i);
                if map.contains_key(&k) || self.cache.contains(&k) {
                    break;
                }
                extra.push(i);
                i += 1;
            }
        }
        let mut planned: Vec<u64> = to_fetch
            .iter()
            .copied()
            .chain(extra.iter().copied())
            .collect();
        planned.sort_unstable();
        let max_blocks = (MAX_RUN / bs).max(1) as usize;
        for run in contiguous_runs(&planned, max_blocks) {
            let pending = self.start_run(&mut map, obj, run[0], run.len(), false);
            for (slot, &index) in run.iter().enumerate() {
                if to_fetch.binary_search(&index).is_ok() {
                    waits.push((
                        index,
                        Pending {
                            slot,
                            ..pending.clone()
                        },
                    ));
                }
            }
        }
        waits
    }

    /// Registers a run of `len` blocks from `first` and spawns its fetch. Caller holds the in-flight lock.
    fn start_run(
        self: &Arc<Self>,
        map: &mut HashMap<BlockKey, Pending>,
        obj: &Arc<ObjectInfo>,
        first: u64,
        len: usize,
        readahead: bool,
    ) -> Pending {
        let run_id = self.next_run.fetch_add(1, Ordering::Relaxed);
        let keys: Vec<BlockKey> = (first..first + len as u64)
            .map(|i| Self::key(obj, i))
            .collect();
        let guard = InflightGuard {
            fetcher: self.clone(),
            keys: keys.clone(),
            run_id,
        };
        let this = self.clone();
        let obj = obj.clone();
        let handle = tokio::spawn(async move {
            let _guard = guard;
            this.fetch_run(&obj, first, len, readahead).await
        });
        let run: RunFuture = async move {
            handle
                .await
                .unwrap_or_else(|e| Err(FetchError::Internal(format!("fetch task failed: {e}"))))
        }
        .boxed()
        .shared();
        let pending = Pending {
            run_id,
            run,
            slot: 0,
        };
        for (slot, k) in keys.into_iter().enumerate() {
            map.insert(
                k,
                Pending {
                    slot,
                    ..pending.clone()
                },
            );
        }
        pending
    }

    async fn fetch_run(
        &self,
        obj: &ObjectInfo,
        first: u64,
        len: usize,
        readahead: bool,
    ) -> RunResult {
        let bs = self.settings.block_size;
        let start = first * bs;
        let end = ((first + len as u64) * bs).min(obj.size);
        let pass = match self.breaker.check() {
            Ok(p) => p,
            Err(e) => {
                self.metrics
                    .fetch_errors
                    .with_label_values(&[e.reason()])
                    .inc();
                return Err(e.into());
            }
        };
        let result = match (&self.hedger, pass) {
            // A probe of a broken upstream makes one attempt: its caller should not wait out a retry loop.
            (_, Pass::Probe) => self.source.read_once(obj, start..end).await,
            // Read-ahead nobody waits on is bandwidth-bound: hedging it would spend budget and skew the window.
            (Some(h), Pass::Normal) if !readahead => h.read(&*self.source, obj, start..end).await,
            (_, Pass::Normal) => self.source.read(obj, start..end).await,
        };
        match &result {
            Ok(_) => self.breaker.success(),
            Err(e) => self.breaker.failure(e),
        }
        let data = match result {
            Ok(d) => d,
            Err(e) => {
                if matches!(
                    e.root(),
                    UpstreamError::Changed(_) | UpstreamError::NotFound(_)
                ) {
                    (self.on_changed)();
                }
                self.metrics
                    .fetch_errors
                    .with_label_values(&[e.root().reason()])
                    .inc();
                tracing::warn!(file = %obj.name, start, end, error = %e, "upstream fetch failed");
                return Err(e.into());
            }
        };
        if data.len() as u64 != end - start {
            return Err(FetchError::Internal(
                "source returned a wrong length".into(),
            ));
        }
        let mut blocks = Vec::with_capacity(len);
        for i in 0..len as u64 {
            let lo = (i * bs) as usize;
            let hi = (((i + 1) * bs) as usize).min(data.len());
            // A copy per block: a slice would pin the whole run buffer in memory as long as any block is cached,
            // and the cache's byte accounting would be wrong.
            let block = Bytes::copy_from_slice(&data[lo..hi]);
            let key = Self::key(obj, first + i);
            if readahead {
                self.note_prefetched(key.clone());
            }
            self.cache.insert(key, block.clone());
            blocks.push(block);
        }
        if readahead {
            self.metrics
                .readahead_blocks
                .with_label_values(&["fetched"])
                .inc_by(len as u64);
        }
        Ok(Arc::new(blocks))
    }

    /// Updates sequential-stream detection; returns the read-ahead window to schedule past `range.end`, if any.
    fn track_stream(&self, obj: &ObjectInfo, range: &Range<u64>) -> Option<u64> {
        if self.settings.readahead_max == 0 {
            return None;
        }
        let bs = self.settings.block_size;
        let len = range.end - range.start;
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if streams.len() >= MAX_STREAMS && !streams.contains_key(&obj.id) {
            streams.clear();
        }
        let st = streams.entry(obj.id.clone()).or_default();
        // Continues where the last read ended (a little overlap allowed, no gap): strided or random reads that
        // happen to land near each other are not a stream.
        let sequential = st.next != 0 && range.start <= st.next && range.start + bs >= st.next;
        st.next = range.end;
        if !sequential {
            // A lone large read is not a stream: no read-ahead until the next read continues it.
            st.seq_bytes = len;
            st.window = 0;
            return None;
        }
        st.seq_bytes = st.seq_bytes.saturating_add(len);
        if st.seq_bytes >= SEQ_TRIGGER {
            st.window = (st.window * 2).clamp(SEQ_TRIGGER, self.settings.readahead_max);
            Some(st.window)
        } else {
            None
        }
    }

    /// Starts background runs for the blocks of [end, end + window) that are neither cached nor in flight.
    fn start_readahead(self: &Arc<Self>, obj: &Arc<ObjectInfo>, window: u64) {
        let bs = self.settings.block_size;
        let Some(end) = self
            .streams
            .lock()
            .ok()
            .and_then(|s| s.get(&obj.id).map(|s| s.next))
        else {
            return;
        };
        let stop = end.saturating_add(window).min(obj.size);
        if end >= stop {
            return;
        }
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let mut wanted = Vec::new();
        for i in end / bs..stop.div_ceil(bs) {
            let k = Self::key(obj, i);
            if !map.contains_key(&k) && !self.cache.contains(&k) {
                wanted.push(i);
            }
        }
        let max_blocks = (READAHEAD_RUN / bs).max(1) as usize;
        for run in contiguous_runs(&wanted, max_blocks) {
            // Detached: the result lands in the cache; nobody awaits it here.
            let _ = self.start_run(&mut map, obj, run[0], run.len(), true);
        }
    }

    fn note_prefetched(&self, key: BlockKey) {
        let mut set = self.prefetched.lock().unwrap_or_else(|p| p.into_inner());
        if set.len() >= MAX_PREFETCHED {
            self.metrics
                .readahead_blocks
                .with_label_values(&["wasted"])
                .inc_by(set.len() as u64);
            set.clear();
        }
        set.insert(key);
        self.prefetched_len.store(set.len(), Ordering::Relaxed);
    }

    fn note_prefetch_used(&self, key: &BlockKey) {
        if self.prefetched_len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut set = self.prefetched.lock().unwrap_or_else(|p| p.into_inner());
        let removed = set.remove(key);
        self.prefetched_len.store(set.len(), Ordering::Relaxed);
        if removed {
            self.metrics
                .readahead_blocks
                .with_label_values(&["used"])
                .inc();
        }
    }
}

/// Splits sorted block indices into runs of adjacent indices, each at most `max` long.
fn contiguous_runs(sorted: &[u64], max: usize) -> Vec<Vec<u64>> {
    let mut runs: Vec<Vec<u64>> = Vec::new();
    for &i in sorted {
        match runs.last_mut() {
            Some(r) if r.last().is_some_and(|&l| l + 1 == i) && r.len() < max => r.push(i),
            _ => runs.push(vec![i]),
        }
    }
    runs
}

/// Cuts `range` out of consecutive blocks starting at byte `base`. One block: a zero-copy slice.
fn assemble(blocks: &[Option<Bytes>], base: u64, range: &Range<u64>) -> Result<Bytes, FetchError> {
    let missing = || FetchError::Internal("block missing after fetch".into());
    let len = (range.end - range.start) as usize;
    let mut off = (range.start - base) as usize;
    if let [Some(only)] = blocks {
        return only
            .get(off..off + len)
            .map(|_| only.slice(off..off + len))
            .ok_or_else(|| FetchError::Internal("block shorter than the read".into()));
    }
    let mut out = BytesMut::with_capacity(len);
    for b in blocks {
        let b = b.as_ref().ok_or_else(missing)?;
        if off >= b.len() {
            off -= b.len();
            continue;
        }
        let take = (b.len() - off).min(len - out.len());
        out.extend_from_slice(&b[off..off + take]);
        off = 0;
        if out.len() == len {
            break;
        }
    }
    if out.len() != len {
        return Err(FetchError::Internal("blocks shorter than the read".into()));
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_on_gaps_and_length() {
        assert_eq!(
            contiguous_runs(&[1, 2, 3, 5, 6, 9], 10),
            vec![vec![1, 2, 3], vec![5, 6], vec![9]]
        );
        assert_eq!(
            contiguous_runs(&[1, 2, 3, 4], 3),
            vec![vec![1, 2, 3], vec![4]]
        );
        assert!(contiguous_runs(&[], 3).is_empty());
    }

    #[test]
    fn assemble_across_blocks() {
        let b = |v: u8, n: usize| Some(Bytes::from(vec![v; n]));
        let blocks = vec![b(1, 4), b(2, 4), b(3, 2)];
        let out = assemble(&blocks, 8, &(10..17)).expect("assemble");
        assert_eq!(&out[..], &[1, 1, 2, 2, 2, 2, 3]);
        let one = assemble(&blocks[1..2], 12, &(13..15)).expect("slice");
        assert_eq!(&one[..], &[2, 2]);
        assert!(assemble(&[None], 0, &(0..1)).is_err());
    }
}
