//! The fetcher: turns a byte-range read into cache lookups and as few upstream requests as possible.
//!
//! - Single-flight ([`inflight`]): a block being fetched is registered in the in-flight table; any read that
//!   needs it joins that fetch instead of starting another, also when two reads overlap only partly.
//! - Coalescing: the missing blocks of one read that are adjacent go upstream as one range GET, extended to at
//!   least `min_fetch` bytes from the read offset (a Chia k=32 table step is two adjacent 8191-byte reads; one
//!   GET must bring both).
//! - Read-ahead ([`readahead`]): sequential streams get a growing window fetched in background runs.
//! - Fetches run as their own tasks: a client that disconnects does not cancel a fetch other readers wait on, and
//!   blocks enter the cache before they leave the in-flight table, so no read can slip between the two and fetch
//!   again.
//!
//! How a run reaches upstream (retries, hedging, deadline, breaker) is [`crate::policy`]'s business: the fetcher
//! calls [`Upstream::read`] and nothing else.

pub mod inflight;
pub mod readahead;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use self::inflight::{InflightTable, Planner};
use self::readahead::{Prefetched, Streams};
use crate::cache::hotset::HotSet;
use crate::cache::{BlockCache, BlockKey, Inserted, Tier};
use crate::metrics::Metrics;
use crate::policy::{Purpose, Upstream};
use crate::sync::Mutex;
use crate::upstream::{ObjectInfo, UpstreamError};
use tokio::time::Instant;

/// Largest single background read-ahead GET: blocks become readable as each run lands.
const READAHEAD_RUN: u64 = 1 << 20;
/// Largest GET for blocks a reader waits on.
const MAX_RUN: u64 = 16 << 20;
/// Times a read looks in the cache again for a block that landed while it planned, before fetching it itself.
const MAX_REPLANS: usize = 3;
/// A file with a read answered this recently has a lookup in progress: its misses go upstream first.
pub const CONTINUE_WINDOW: std::time::Duration = std::time::Duration::from_millis(500);
/// Files remembered for that (a farm's lookups in flight are far fewer).
const MAX_ANSWERED: usize = 1 << 14;

#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("read {start}..{end} outside file of {size} bytes")]
    OutOfRange { start: u64, end: u64, size: u64 },
    #[error("fetch task failed: {0}")]
    Task(String),
}

impl FetchError {
    /// The error and its causes in one line.
    pub fn report(&self) -> String {
        match self {
            Self::Upstream(u) => u.report(),
            other => other.to_string(),
        }
    }
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

/// A block's share of a run: the run to await and the block's position in its result.
#[derive(Clone)]
struct Pending {
    run: RunFuture,
    slot: usize,
}

/// What planning decided for one missing block.
enum Plan {
    Wait(u64, Pending),
    /// It reached the cache while this read planned: look again.
    Cached(u64),
}

pub struct Fetcher {
    upstream: Arc<Upstream>,
    cache: Arc<dyn BlockCache>,
    settings: FetchSettings,
    inflight: Arc<InflightTable<BlockKey, Pending>>,
    streams: Streams,
    prefetched: Prefetched<BlockKey>,
    /// When each file last had a read answered: tells a lookup in progress from a new one.
    answered: Mutex<HashMap<Arc<str>, Instant>>,
    metrics: Arc<Metrics>,
    /// Every block a reader asks for is noted here, for the hot-set estimate.
    hot: Arc<HotSet>,
    on_changed: Box<dyn Fn() + Send + Sync>,
}

impl Fetcher {
    pub fn new(
        upstream: Arc<Upstream>,
        cache: Arc<dyn BlockCache>,
        settings: FetchSettings,
        metrics: Arc<Metrics>,
        hot: Arc<HotSet>,
        on_changed: Box<dyn Fn() + Send + Sync>,
    ) -> Self {
        Self {
            upstream,
            cache,
            streams: Streams::new(settings.block_size, settings.readahead_max),
            settings,
            inflight: Arc::default(),
            prefetched: Prefetched::default(),
            answered: Mutex::new(HashMap::new()),
            metrics,
            hot,
            on_changed,
        }
    }

    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    pub fn cache_memory_usage(&self) -> usize {
        self.cache.memory_usage()
    }

    pub fn block_size(&self) -> u64 {
        self.settings.block_size
    }

    /// The hot-set estimate the reads feed.
    pub fn hot_set(&self) -> &Arc<HotSet> {
        &self.hot
    }

    /// Blocks in flight now (a test and debugging aid: 0 when idle).
    pub fn inflight_blocks(&self) -> usize {
        self.inflight.len()
    }

    fn key(obj: &ObjectInfo, index: u64) -> BlockKey {
        BlockKey {
            file: obj.id.clone(),
            index,
        }
    }

    fn block_len(&self, obj: &ObjectInfo, index: u64) -> usize {
        let bs = self.settings.block_size;
        let start = index * bs;
        ((start + bs).min(obj.size) - start) as usize
    }

    /// Looks blocks up in the cache, filling `blocks` and noting hits; returns the indices still missing.
    async fn lookup(
        &self,
        obj: &ObjectInfo,
        first: u64,
        indices: &[u64],
        blocks: &mut [Option<Bytes>],
        outcome: &mut Outcome,
    ) -> Vec<u64> {
        let lookups = futures::future::join_all(
            indices
                .iter()
                .map(|&i| self.cache.get(&Self::key(obj, i), self.block_len(obj, i))),
        )
        .await;
        let mut missing = Vec::new();
        for (&index, hit) in indices.iter().zip(lookups) {
            let key = Self::key(obj, index);
            match hit {
                Some((bytes, tier)) => {
                    self.note_read(&key, bytes.len(), true);
                    let label = [tier.label()];
                    self.metrics.cache_hits.with_label_values(&label).inc();
                    self.metrics
                        .cache_hit_bytes
                        .with_label_values(&label)
                        .inc_by(bytes.len() as u64);
                    if tier == Tier::Disk {
                        *outcome = (*outcome).max(Outcome::HitDisk);
                    }
                    if self.prefetched.used(&key) {
                        self.metrics
                            .readahead_blocks
                            .with_label_values(&["used"])
                            .inc();
                    }
                    blocks[(index - first) as usize] = Some(bytes);
                }
                None => missing.push(index),
            }
        }
        missing
    }

    /// Reads `range` (non-empty, within the file) of `obj`, through the cache, as one buffer (a zero-copy
    /// slice when the range is within one block).
    pub async fn read(
        self: &Arc<Self>,
        obj: &Arc<ObjectInfo>,
        range: Range<u64>,
    ) -> Result<(Bytes, Outcome), FetchError> {
        let (pieces, outcome) = self.read_pieces(obj, range).await?;
        Ok((concat(pieces), outcome))
    }

    /// Reads `range` as the cached blocks' own bytes, one slice per block, in order: nothing is copied, so a
    /// multi-MB cached read costs what the HTTP body's writes cost (the API answers with the pieces as they are).
    pub async fn read_pieces(
        self: &Arc<Self>,
        obj: &Arc<ObjectInfo>,
        range: Range<u64>,
    ) -> Result<(Vec<Bytes>, Outcome), FetchError> {
        if range.start >= range.end || range.end > obj.size {
            return Err(FetchError::OutOfRange {
                start: range.start,
                end: range.end,
                size: obj.size,
            });
        }
        let bs = self.settings.block_size;
        let first = range.start / bs;
        let last = (range.end - 1) / bs;
        let mut blocks: Vec<Option<Bytes>> = vec![None; (last - first + 1) as usize];
        let mut outcome = Outcome::HitMemory;
        let all: Vec<u64> = (first..=last).collect();
        let mut missing = self
            .lookup(obj, first, &all, &mut blocks, &mut outcome)
            .await;

        let readahead = self.streams.track(&obj.id, &range);

        if !missing.is_empty() {
            outcome = Outcome::Miss;
            self.metrics.cache_misses.inc_by(missing.len() as u64);
        }
        let mut replans = 0;
        while !missing.is_empty() {
            let mut again = Vec::new();
            for plan in self.plan_and_start(obj, &range, &missing, replans < MAX_REPLANS) {
                match plan {
                    Plan::Wait(index, pending) => {
                        let run = pending.run.await?;
                        let block = run.get(pending.slot).cloned().ok_or_else(|| {
                            FetchError::Task("run result shorter than planned".into())
                        })?;
                        // Noted once it arrived: a failed fetch (an outage) says nothing about the cache.
                        self.note_read(&Self::key(obj, index), block.len(), false);
                        blocks[(index - first) as usize] = Some(block);
                    }
                    Plan::Cached(index) => again.push(index),
                }
            }
            replans += 1;
            missing = self
                .lookup(obj, first, &again, &mut blocks, &mut outcome)
                .await;
        }

        if let Some(span) = readahead {
            self.start_readahead(obj, span);
        }

        let out = pieces(&blocks, first * bs, &range)?;
        self.note_answered(&obj.id);
        Ok((out, outcome))
    }

    /// Feeds the hot-set estimate: a reader got this block, from a tier (`cached`) or from upstream.
    fn note_read(&self, key: &BlockKey, bytes: usize, cached: bool) {
        let hash = std::hash::BuildHasher::hash_one(&foyer::DefaultHasher::default(), key);
        self.hot.note(hash, bytes, cached);
    }

    fn note_answered(&self, id: &Arc<str>) {
        let mut m = self.answered.lock();
        if m.len() >= MAX_ANSWERED && !m.contains_key(id) {
            let now = Instant::now();
            m.retain(|_, t| now.duration_since(*t) < CONTINUE_WINDOW);
            if m.len() >= MAX_ANSWERED {
                m.clear();
            }
        }
        m.insert(id.clone(), Instant::now());
    }

    /// How urgent a miss of `obj` is: a lookup in progress on it goes first.
    fn demand(&self, obj: &ObjectInfo) -> Purpose {
        match self.answered.lock().get(&obj.id) {
            Some(t) if t.elapsed() < CONTINUE_WINDOW => Purpose::Continuing,
            _ => Purpose::New,
        }
    }

    /// Joins fetches in flight and starts runs for the rest; says what to wait for, per missing block.
    /// `recheck`: a block neither in flight nor (when the read looked) cached may have landed since: look again
    /// rather than fetch it twice.
    fn plan_and_start(
        self: &Arc<Self>,
        obj: &Arc<ObjectInfo>,
        range: &Range<u64>,
        missing: &[u64],
        recheck: bool,
    ) -> Vec<Plan> {
        let bs = self.settings.block_size;
        let mut plans = Vec::with_capacity(missing.len());
        let mut table = self.inflight.plan();
        let mut to_fetch: Vec<u64> = Vec::new();
        for &index in missing {
            let key = Self::key(obj, index);
            match table.get(&key) {
                Some(p) => {
                    self.metrics.singleflight_joins.inc();
                    plans.push(Plan::Wait(index, p));
                }
                None if recheck && self.cache.contains(&key) => plans.push(Plan::Cached(index)),
                None => to_fetch.push(index),
            }
        }
        let Some(&tail) = to_fetch.last() else {
            return plans;
        };
        // min_fetch: extend the last run forward so that one GET covers the read offset + min_fetch.
        let want_end = (range.start + self.settings.min_fetch).min(obj.size);
        let mut planned = to_fetch.clone();
        let mut i = tail + 1;
        while i * bs < want_end {
            let k = Self::key(obj, i);
            if table.contains(&k) || self.cache.contains(&k) {
                break;
            }
            planned.push(i);
            i += 1;
        }
        planned.sort_unstable();
        let max_blocks = (MAX_RUN / bs).max(1) as usize;
        let purpose = self.demand(obj);
        for run in contiguous_runs(&planned, max_blocks) {
            let pending = self.start_run(&mut table, obj, run[0], run.len(), purpose);
            for (slot, &index) in run.iter().enumerate() {
                if to_fetch.binary_search(&index).is_ok() {
                    plans.push(Plan::Wait(
                        index,
                        Pending {
                            slot,
                            ..pending.clone()
                        },
                    ));
                }
            }
        }
        plans
    }

    /// Registers a run of `len` blocks from `first` and spawns its fetch.
    fn start_run(
        self: &Arc<Self>,
        table: &mut Planner<'_, BlockKey, Pending>,
        obj: &Arc<ObjectInfo>,
        first: u64,
        len: usize,
        purpose: Purpose,
    ) -> Pending {
        let keys: Vec<BlockKey> = (first..first + len as u64)
            .map(|i| Self::key(obj, i))
            .collect();
        let (tx, rx) = tokio::sync::oneshot::channel::<RunResult>();
        let run: RunFuture = async move {
            rx.await.unwrap_or_else(|_| {
                Err(FetchError::Task("fetch task ended without a result".into()))
            })
        }
        .boxed()
        .shared();
        let guard = table.register(keys, |_, slot| Pending {
            run: run.clone(),
            slot,
        });
        let this = self.clone();
        let obj = obj.clone();
        tokio::spawn(async move {
            let result = this.fetch_run(&obj, first, len, purpose).await;
            // Blocks are cached (in fetch_run) before the guard leaves the table, then waiters wake.
            drop(guard);
            let _ = tx.send(result);
        });
        Pending { run, slot: 0 }
    }

    async fn fetch_run(
        &self,
        obj: &ObjectInfo,
        first: u64,
        len: usize,
        purpose: Purpose,
    ) -> RunResult {
        let bs = self.settings.block_size;
        let start = first * bs;
        let end = ((first + len as u64) * bs).min(obj.size);
        let data = match self.upstream.read(obj, start..end, purpose).await {
            Ok(d) => d,
            Err(e) => {
                if matches!(
                    e.root(),
                    UpstreamError::Changed(_) | UpstreamError::NotFound(_)
                ) {
                    (self.on_changed)();
                }
                tracing::warn!(file = %obj.name, start, end, error = %e.report(), "upstream fetch failed");
                return Err(e.into());
            }
        };
        let mut blocks = Vec::with_capacity(len);
        for i in 0..len as u64 {
            let lo = (i * bs) as usize;
            let hi = (((i + 1) * bs) as usize).min(data.len());
            // A copy per block: a slice would pin the whole run buffer in memory as long as any block is cached,
            // and the cache's byte accounting would be wrong.
            let block = Bytes::copy_from_slice(&data[lo..hi]);
            let key = Self::key(obj, first + i);
            if purpose == Purpose::ReadAhead {
                let wasted = self.prefetched.fetched(key.clone());
                if wasted > 0 {
                    self.metrics
                        .readahead_blocks
                        .with_label_values(&["wasted"])
                        .inc_by(wasted);
                }
            }
            if self.cache.insert(key.clone(), block.clone()) == Inserted::SecondFetch
                && purpose != Purpose::ReadAhead
            {
                // The disk tier declined this block at its first fetch: this one is the cost of its admission,
                // not a hot block lost. Noted as read now, so the reader's own note (moments later) is not
                // counted as a refetch.
                self.note_read(&key, block.len(), true);
            }
            blocks.push(block);
        }
        if purpose == Purpose::ReadAhead {
            self.metrics
                .readahead_blocks
                .with_label_values(&["fetched"])
                .inc_by(len as u64);
        }
        Ok(Arc::new(blocks))
    }

    /// Starts background runs for the blocks of `span` that are neither cached nor in flight.
    fn start_readahead(self: &Arc<Self>, obj: &Arc<ObjectInfo>, span: Range<u64>) {
        let bs = self.settings.block_size;
        let stop = span.end.min(obj.size);
        if span.start >= stop {
            return;
        }
        let mut table = self.inflight.plan();
        let wanted: Vec<u64> = (span.start / bs..stop.div_ceil(bs))
            .filter(|&i| {
                let k = Self::key(obj, i);
                !table.contains(&k) && !self.cache.contains(&k)
            })
            .collect();
        // Refill by halves: while the reader still has data ahead, top up only once half the window is gone,
        // so a stream of small reads costs a request per half window, not one per read.
        let window_blocks = (stop - span.start).div_ceil(bs) as usize;
        let next_ready = wanted.first() != Some(&(span.start / bs));
        if next_ready && wanted.len() * 2 < window_blocks {
            return;
        }
        let max_blocks = (READAHEAD_RUN / bs).max(1) as usize;
        for run in contiguous_runs(&wanted, max_blocks) {
            // Detached: the result lands in the cache; nobody awaits it here.
            let _ = self.start_run(&mut table, obj, run[0], run.len(), Purpose::ReadAhead);
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

/// Cuts `range` out of consecutive blocks starting at byte `base`: one zero-copy slice per block it covers.
fn pieces(
    blocks: &[Option<Bytes>],
    base: u64,
    range: &Range<u64>,
) -> Result<Vec<Bytes>, FetchError> {
    let len = (range.end - range.start) as usize;
    let mut off = (range.start - base) as usize;
    let mut out = Vec::with_capacity(blocks.len());
    let mut got = 0;
    for b in blocks {
        let b = b
            .as_ref()
            .ok_or_else(|| FetchError::Task("block missing after fetch".into()))?;
        if off >= b.len() {
            off -= b.len();
            continue;
        }
        let take = (b.len() - off).min(len - got);
        out.push(b.slice(off..off + take));
        got += take;
        off = 0;
        if got == len {
            break;
        }
    }
    if got != len {
        return Err(FetchError::Task("blocks shorter than the read".into()));
    }
    Ok(out)
}

/// The pieces as one buffer (copied only when there are several).
fn concat(mut pieces: Vec<Bytes>) -> Bytes {
    match pieces.len() {
        0 => Bytes::new(),
        1 => pieces.swap_remove(0),
        _ => {
            let mut out = BytesMut::with_capacity(pieces.iter().map(Bytes::len).sum());
            for p in &pieces {
                out.extend_from_slice(p);
            }
            out.freeze()
        }
    }
}

#[cfg(test)]
mod unit {
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
    fn pieces_across_blocks() {
        let b = |v: u8, n: usize| Some(Bytes::from(vec![v; n]));
        let blocks = vec![b(1, 4), b(2, 4), b(3, 2)];
        let out = pieces(&blocks, 8, &(10..17)).expect("pieces");
        assert_eq!(out.len(), 3, "one slice per block");
        assert_eq!(&concat(out)[..], &[1, 1, 2, 2, 2, 2, 3]);
        let one = pieces(&blocks[1..2], 12, &(13..15)).expect("slice");
        assert_eq!(&concat(one)[..], &[2, 2]);
        assert!(pieces(&[None], 0, &(0..1)).is_err());
        assert!(
            pieces(&blocks, 8, &(10..19)).is_err(),
            "blocks shorter than the read"
        );
    }
}

#[cfg(test)]
mod tests;
