//! Makes sure the blocks sent to the disk tier reach it: foyer's write queue is sized for the fetch rate, and a
//! write it drops anyway is counted and written again.
//!
//! foyer's block engine drops a disk write, without telling its caller, when the bytes waiting for its flushers
//! exceed a threshold (`channel_overflow`) or a flusher's buffer is full (`buffer_overflow`). A dropped index
//! block is fetched again at its next read after it leaves the memory tier, and `refresh` (which assumes writes
//! happen) cannot help. So every block sent to the disk tier is noted here; every [`CHECK_EVERY`] a check waits
//! for foyer's flushers to write what was queued before it ([`foyer::Store::wait`]), then asks the disk index
//! whether each new block is there. A missing one is enqueued again from the memory tier (where a block fetched
//! a moment ago still is), in batches no larger than the queue's threshold, so the retry does not overflow the
//! queue itself; after [`MAX_ATTEMPTS`] it is left to `refresh`, which rewrites it at its next read. One already
//! gone from the memory tier cannot be written: its place in `refresh`'s order is voided, and its next read
//! fetches it again (a lost block, `dropped`).
//!
//! A rewrite (`refresh`) of a block already on disk cannot be checked that way (its old copy is still indexed),
//! so when foyer's drop count grew by more than the missing new blocks explain, the round's rewrites are marked
//! as not rewritten and the next read of each tries again.
//!
//! The count in `b2proxy_cache_disk_dropped_writes_total` is foyer's own (`foyer_storage_inner_op_total` with
//! `op` = `channel_overflow` or `buffer_overflow`), so it equals reality by construction; this module only copies
//! it next to the proxy's metrics and acts on it.
//!
//! Bounded: the pending list holds at most [`MAX_PENDING`] keys (about 10 MB); past that a block is not checked
//! (counted in the debug log; its drop, if any, is still counted by foyer's counter and repaired by `refresh`).

use std::time::Duration;

use foyer::HybridCache;
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
    /// Bytes waiting for the flushers past which foyer drops new writes.
    pub queue_threshold: usize,
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

/// The blocks sent to the disk tier and not yet checked.
pub struct WriteCheck {
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

    /// A block was handed to foyer's disk tier.
    pub fn sent(&self, key: BlockKey, hash: u64, len: usize, kind: Sent) {
        let mut p = self.pending.lock();
        if p.len() >= MAX_PENDING {
            tracing::debug!(file = %key.file, block = key.index, "disk write check queue full");
            return;
        }
        p.push(Pending {
            key,
            hash,
            len,
            kind,
            attempts: 1,
        });
    }

    /// One check: waits for the flushers, counts foyer's drops, writes missing new blocks again (until they are
    /// on disk or out of attempts) and marks the round's rewrites for another try if some of them were dropped.
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
        let (mut missing, rewrites): (Vec<Pending>, Vec<Pending>) = batch
            .into_iter()
            .filter(|w| w.kind == Sent::Rewrite || !cache.storage().may_contains(&w.key))
            .partition(|w| w.kind == Sent::New);
        let drops = self.count_drops();
        if drops > missing.len() as u64 {
            for w in &rewrites {
                refresh.forget(w.hash);
            }
        }
        while !missing.is_empty() {
            missing.retain(|w| {
                if w.attempts < MAX_ATTEMPTS {
                    return true;
                }
                tracing::debug!(file = %w.key.file, block = w.key.index,
                    "disk write dropped {MAX_ATTEMPTS} times; left for its next read to write");
                refresh.forget(w.hash);
                false
            });
            // No more than the queue holds, so the retries are not dropped for the same reason.
            let mut bytes = 0;
            let take = missing
                .iter()
                .take_while(|w| {
                    bytes += w.len;
                    bytes <= self.queue.queue_threshold.max(w.len)
                })
                .count()
                .max(1)
                .min(missing.len());
            let mut round: Vec<Pending> = missing.drain(..take).collect();
            round.retain(|w| match cache.memory().get(&w.key) {
                Some(entry) => {
                    cache.storage().enqueue(entry.piece(), false);
                    self.retries.inc();
                    true
                }
                // Gone from memory too: its place in the order is void, and its next read is a miss that
                // fetches it again (counted as a lost block, `dropped`).
                None => {
                    refresh.forget(w.hash);
                    false
                }
            });
            if round.is_empty() {
                continue;
            }
            if !self.flushed(cache).await {
                break;
            }
            self.count_drops();
            for mut w in round {
                if !cache.storage().may_contains(&w.key) {
                    w.attempts += 1;
                    missing.push(w);
                }
            }
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
