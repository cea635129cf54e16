//! Makes sure the blocks sent to the disk tier reach it: the proxy hands them to foyer's flushers no faster than
//! their buffers take them, and a write dropped anyway is counted and written again.
//!
//! foyer's block engine drops a disk write, without telling its caller, when the bytes waiting for its flushers
//! exceed a threshold (`channel_overflow`) or a flusher's buffer is full (`buffer_overflow`). The second is the
//! one that happens: a flusher moves everything queued for it into its buffer (a `buffer_pool / flushers` slice)
//! while its previous write is in flight, so when a flusher waits for a core on a loaded machine, what arrived
//! meanwhile past that slice is dropped, whatever the queue threshold (measured: 14,269 of 115,000 blocks in a
//! farm-v2 warm-up with 4 flushers of 8 MiB and a 128 MiB threshold). A dropped index block is fetched again at
//! its next read after it leaves the memory tier, and `refresh` (which assumes writes happen) cannot help.
//!
//! **The feed.** So blocks are not enqueued in foyer as they are fetched: they wait in the proxy's own queue,
//! bounded by the threshold ([`WriteQueue::queue_threshold`], disk bytes), and one task hands them to foyer a
//! window at a time ([`WriteQueue::window`]: half the flush buffers, so each flusher gets about an eighth of its
//! buffer's worth with 4 of them and a burst of hashes to one flusher still fits), then waits until foyer's
//! flushers wrote it ([`foyer::Store::wait`]) before the next. The queue holds the cache entries (the bytes are
//! the memory tier's, shared), so a block evicted from memory before its turn is still written. Past the bound,
//! a new block is dropped here instead (counted with foyer's drops) and repaired as below.
//!
//! **The check.** Every block handed to foyer is noted; every [`CHECK_EVERY`] a check waits for the flushers,
//! then asks the disk index whether each new block is there. A missing one is sent again from the memory tier
//! (where a block fetched a moment ago still is) through the feed; after [`MAX_ATTEMPTS`] it is left to
//! `refresh`, which rewrites it at its next read. One already gone from the memory tier cannot be written: its
//! place in `refresh`'s order is voided, and its next read fetches it again (a lost block, `dropped`).
//!
//! A rewrite (`refresh`) of a block already on disk cannot be checked that way (its old copy is still indexed),
//! so when foyer's drop count grew by more than the missing new blocks explain, the round's rewrites are marked
//! as not rewritten and the next read of each tries again; a rewrite dropped by the feed is marked at once.
//!
//! `b2proxy_cache_disk_dropped_writes_total` is foyer's own count (`foyer_storage_inner_op_total` with `op` =
//! `channel_overflow` or `buffer_overflow`) plus the feed's drops, so it equals reality by construction.
//!
//! Bounded: the feed holds at most `queue_threshold` disk bytes of blocks; the pending list at most
//! [`MAX_PENDING`] keys (about 10 MB); past that a block is not checked (counted in the debug log; its drop, if
//! any, is still counted by foyer's counter and repaired by `refresh`).

use std::collections::VecDeque;
use std::time::Duration;

use foyer::{HybridCache, HybridCacheEntry};
use prometheus::IntCounter;

use super::refresh::DiskRefresh;
use super::{Block, BlockKey};
use crate::sync::Mutex;

/// How often the blocks sent to the disk tier are checked.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);
/// Longest wait for foyer's flushers in one check (a wedged disk is found by `disk`'s probe, not here).
const FLUSH_WAIT: Duration = Duration::from_secs(30);
/// Writes of one block before it is left to `refresh`.
const MAX_ATTEMPTS: u8 = 3;
/// Keys waiting for a check. At 64 KiB blocks, 5.9 GiB of writes per half second: far above any fetch rate.
const MAX_PENDING: usize = 1 << 17;

/// foyer's region writers for a disk tier of at least [`MANY_FLUSHERS_FROM`]. A flusher's buffer fills while
/// its previous write waits for a core, and foyer drops what does not fit: measured on a loaded 2-core machine
/// (farm-v2 warm-up, 7 GB of indexes in 28 s, the same 32 MiB of buffers in all), 2 flushers dropped 8,904
/// writes, 4 dropped 132 in one run and 0 in the next. Each holds a region open, so the log keeps
/// `1 + flushers` regions out of use:
/// smaller disk tiers (16 regions and up) keep 2.
pub const FLUSHERS: usize = 4;
/// The disk tier from which [`FLUSHERS`] write it (64 regions of 16 MiB).
pub const MANY_FLUSHERS_FROM: usize = 1 << 30;

/// foyer's write queue: what the proxy configures its block engine with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteQueue {
    /// Concurrent region writers.
    pub flushers: usize,
    /// Flush buffers, over all flushers (each has two of `buffer_pool / flushers`: one filling, one writing).
    pub buffer_pool: usize,
    /// Disk bytes waiting for the flushers past which new writes are dropped (the proxy's feed, and foyer's).
    pub queue_threshold: usize,
}

impl WriteQueue {
    /// Disk bytes handed to foyer's flushers at once: half their buffers, at least one block.
    pub fn window(&self) -> usize {
        (self.buffer_pool / 2).max(1)
    }
}

impl WriteQueue {
    /// Sized for the memory tier. The fetch rate can reach hundreds of MB/s (many 64 KiB blocks in flight at once
    /// on a fast link), and on a loaded 2-core machine a flusher task may wait a few hundred milliseconds for a
    /// core, so the queue must hold that long of fetches: measured with foyer's default-ish 8 MiB buffers and a
    /// 16 MiB threshold, a fast warm-up dropped 70,902 of ~110,000 blocks. A queued write holds a block that is
    /// also in the memory tier (the bytes are shared), so the threshold costs little memory; the flush buffers
    /// are real memory (twice `buffer_pool`), hence a sixteenth of `cache.memory` at most, within the 15% over
    /// `cache.memory` that README allows the process.
    pub fn for_memory(memory_bytes: usize) -> Self {
        let buffer_pool = (memory_bytes / 32).clamp(8 << 20, 32 << 20);
        Self {
            flushers: 2,
            buffer_pool,
            queue_threshold: 4 * buffer_pool,
        }
    }
}

impl WriteQueue {
    /// More flushers for a large disk tier ([`FLUSHERS`]), the same buffers over them.
    pub fn with_disk(self, disk_bytes: usize) -> Self {
        Self {
            flushers: if disk_bytes >= MANY_FLUSHERS_FROM {
                FLUSHERS
            } else {
                self.flushers
            },
            ..self
        }
    }
}

/// Why a block was sent to the disk tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// A block the disk tier did not hold: it can be looked up after the flush.
    New,
    /// A `refresh` rewrite of a block already on disk.
    Rewrite,
}

struct Pending {
    key: BlockKey,
    hash: u64,
    len: usize,
    kind: Sent,
    attempts: u8,
}

/// A block waiting in the feed for its turn to be handed to foyer.
struct Queued {
    entry: HybridCacheEntry<BlockKey, Block>,
    kind: Sent,
    attempts: u8,
    disk_bytes: usize,
}

#[derive(Default)]
struct Feed {
    queue: VecDeque<Queued>,
    /// Disk bytes queued.
    bytes: usize,
}

/// Disk bytes foyer spends on an entry: its value, key and header, in whole 4 KiB pages.
fn disk_bytes(key: &BlockKey, len: usize) -> usize {
    (len + key.file.len() + 96).next_multiple_of(4096)
}

/// The blocks on their way to the disk tier: the feed, and those handed to foyer and not yet checked.
pub struct WriteCheck {
    feed: Mutex<Feed>,
    fed: tokio::sync::Notify,
    pending: Mutex<Vec<Pending>>,
    registry: prometheus::Registry,
    /// foyer's drop count at the last check.
    seen_drops: Mutex<u64>,
    dropped: IntCounter,
    retries: IntCounter,
    queue: WriteQueue,
}

impl WriteCheck {
    pub fn new(
        registry: prometheus::Registry,
        dropped: IntCounter,
        retries: IntCounter,
        queue: WriteQueue,
    ) -> Self {
        Self {
            feed: Mutex::new(Feed::default()),
            fed: tokio::sync::Notify::new(),
            pending: Mutex::new(Vec::new()),
            seen_drops: Mutex::new(foyer_drops(&registry)),
            registry,
            dropped,
            retries,
            queue,
        }
    }

    /// The registry holding foyer's metrics.
    pub fn registry(&self) -> &prometheus::Registry {
        &self.registry
    }

    /// Sends a block (a memory-tier entry that is not one just loaded from disk: foyer skips those) to the disk
    /// tier: it waits in the feed for [`WriteCheck::feed`]. Its place in `refresh`'s order must be taken first:
    /// if the feed is full, the write is dropped here, a new block is left to the check (written again from
    /// memory) and a rewrite's place is voided.
    pub fn send(
        &self,
        entry: HybridCacheEntry<BlockKey, Block>,
        kind: Sent,
        refresh: &DiskRefresh,
    ) {
        self.enqueue(entry, kind, 1, refresh);
    }

    fn enqueue(
        &self,
        entry: HybridCacheEntry<BlockKey, Block>,
        kind: Sent,
        attempts: u8,
        refresh: &DiskRefresh,
    ) {
        let Err(entry) = self.push(entry, kind, attempts) else {
            return;
        };
        self.dropped.inc();
        match kind {
            Sent::New => self.note(&entry, kind, attempts),
            Sent::Rewrite => refresh.forget(entry.hash()),
        }
    }

    /// Queues a block in the feed if it has room (one block always fits, so a block larger than the bound is
    /// not refused for good); gives it back if not.
    fn push(
        &self,
        entry: HybridCacheEntry<BlockKey, Block>,
        kind: Sent,
        attempts: u8,
    ) -> Result<(), HybridCacheEntry<BlockKey, Block>> {
        let size = disk_bytes(entry.key(), entry.value().0.len());
        let mut feed = self.feed.lock();
        if feed.bytes != 0 && feed.bytes + size > self.queue.queue_threshold {
            return Err(entry);
        }
        feed.bytes += size;
        feed.queue.push_back(Queued {
            entry,
            kind,
            attempts,
            disk_bytes: size,
        });
        drop(feed);
        self.fed.notify_one();
        Ok(())
    }

    /// Disk bytes waiting in the feed.
    pub fn queued_bytes(&self) -> usize {
        self.feed.lock().bytes
    }

    /// The feed's next window: at least one block, at most [`WriteQueue::window`] disk bytes.
    fn next_window(&self) -> Vec<Queued> {
        let mut feed = self.feed.lock();
        let mut out = Vec::new();
        let mut bytes = 0;
        while let Some(q) = feed.queue.front() {
            if !out.is_empty() && bytes + q.disk_bytes > self.queue.window() {
                break;
            }
            bytes += q.disk_bytes;
            if let Some(q) = feed.queue.pop_front() {
                out.push(q);
            }
        }
        feed.bytes -= bytes;
        out
    }

    /// Hands one window to foyer and waits for its flushers to write it; false if the feed was empty.
    async fn feed_window(&self, cache: &HybridCache<BlockKey, Block>) -> bool {
        let window = self.next_window();
        if window.is_empty() {
            return false;
        }
        for q in window {
            cache.storage().enqueue(q.entry.piece(), false);
            self.note(&q.entry, q.kind, q.attempts);
        }
        self.flushed(cache).await;
        true
    }

    /// Feeds foyer from the queue for as long as the cache lives (its own task).
    pub async fn feed(&self, cache: &HybridCache<BlockKey, Block>) {
        loop {
            if !self.feed_window(cache).await {
                // A send since the last window left a permit: no wake-up is missed.
                self.fed.notified().await;
            }
        }
    }

    /// Hands everything queued to foyer, a window at a time (at a clean shutdown, before foyer closes).
    pub async fn drain(&self, cache: &HybridCache<BlockKey, Block>) {
        while self.feed_window(cache).await {}
    }

    /// A block was handed to foyer's disk tier: checked at the next round.
    fn note(&self, entry: &HybridCacheEntry<BlockKey, Block>, kind: Sent, attempts: u8) {
        let mut p = self.pending.lock();
        if p.len() >= MAX_PENDING {
            tracing::debug!(file = %entry.key().file, block = entry.key().index, "disk write check queue full");
            return;
        }
        p.push(Pending {
            key: entry.key().clone(),
            hash: entry.hash(),
            len: entry.value().0.len(),
            kind,
            attempts,
        });
    }

    /// One check: waits for the flushers, counts foyer's drops, sends missing new blocks again through the feed
    /// (until they are on disk or out of attempts) and marks the round's rewrites for another try if some of
    /// them were dropped.
    pub async fn check(&self, cache: &HybridCache<BlockKey, Block>, refresh: &DiskRefresh) {
        let batch = std::mem::take(&mut *self.pending.lock());
        if batch.is_empty() {
            return;
        }
        if !self.flushed(cache).await {
            // Checked in the next round instead (what was sent meanwhile joins it; the list stays bounded).
            let mut p = self.pending.lock();
            let room = MAX_PENDING.saturating_sub(p.len());
            p.extend(batch.into_iter().take(room));
            return;
        }
        let (missing, rewrites): (Vec<Pending>, Vec<Pending>) = batch
            .into_iter()
            .filter(|w| w.kind == Sent::Rewrite || !cache.storage().may_contains(&w.key))
            .partition(|w| w.kind == Sent::New);
        let drops = self.count_drops();
        if drops > missing.len() as u64 {
            for w in &rewrites {
                refresh.forget(w.hash);
            }
        }
        for w in missing {
            if w.attempts >= MAX_ATTEMPTS {
                tracing::debug!(file = %w.key.file, block = w.key.index,
                    "disk write dropped {MAX_ATTEMPTS} times; left for its next read to write");
                refresh.forget(w.hash);
                continue;
            }
            match cache.memory().get(&w.key) {
                Some(entry) if entry.value().0.len() == w.len => {
                    // Sent again only as the feed has room (a retry is not dropped again): the rest wait for
                    // the next check, with the same attempts.
                    match self.push(entry, Sent::New, w.attempts + 1) {
                        Ok(()) => self.retries.inc(),
                        Err(_) => self.note_pending(w),
                    }
                }
                // Gone from memory too: its place in the order is void, and its next read is a miss that
                // fetches it again (counted as a lost block, `dropped`).
                _ => refresh.forget(w.hash),
            }
        }
    }

    /// Keeps a block for the next check (bounded as [`WriteCheck::note`]).
    fn note_pending(&self, w: Pending) {
        let mut p = self.pending.lock();
        if p.len() < MAX_PENDING {
            p.push(w);
        } else {
            tracing::debug!(file = %w.key.file, block = w.key.index, "disk write check queue full");
        }
    }

    async fn flushed(&self, cache: &HybridCache<BlockKey, Block>) -> bool {
        let flushed = tokio::time::timeout(FLUSH_WAIT, cache.storage().wait())
            .await
            .is_ok();
        if !flushed {
            tracing::debug!("the disk tier did not flush within {FLUSH_WAIT:?}; checking later");
        }
        flushed
    }

    /// Adds foyer's drops since the last call to the proxy's counter; returns how many.
    fn count_drops(&self) -> u64 {
        let now = foyer_drops(&self.registry);
        let mut seen = self.seen_drops.lock();
        let new = now.saturating_sub(*seen);
        *seen = now.max(*seen);
        self.dropped.inc_by(new);
        new
    }
}

/// Clean regions past which the disk log still has room: foyer's reclaimer keeps one clean (its threshold) and
/// each flusher holds one, so a full log shows 0-3.
const ROOM_REGIONS: f64 = 4.0;

/// Whether foyer's block engine still has never-used (clean) regions, from its gauge in the proxy's registry
/// (`foyer_storage_block_engine_block{type="clean"}`). Without the gauge: room, as a new log has.
pub fn disk_has_room(registry: &prometheus::Registry) -> bool {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "foyer_storage_block_engine_block")
        .flat_map(|f| f.get_metric().iter())
        .find(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "type" && l.value() == "clean")
        })
        .is_none_or(|m| m.get_gauge().get_value() >= ROOM_REGIONS)
}

/// foyer's count of dropped disk writes, as registered in the proxy's registry.
fn foyer_drops(registry: &prometheus::Registry) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "foyer_storage_inner_op_total")
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            m.get_label().iter().any(|l| {
                l.name() == "op" && matches!(l.value(), "channel_overflow" | "buffer_overflow")
            })
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_disk_tier_gets_more_flushers_and_the_same_buffers() {
        let q = WriteQueue::for_memory(1 << 30);
        assert_eq!(q.flushers, 2);
        assert_eq!(q.with_disk(256 << 20), q, "a small disk tier keeps 2");
        let large = q.with_disk(MANY_FLUSHERS_FROM);
        assert_eq!(large.flushers, FLUSHERS);
        assert_eq!(
            (large.buffer_pool, large.queue_threshold),
            (q.buffer_pool, q.queue_threshold)
        );
    }
}
