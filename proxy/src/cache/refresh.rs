//! Keeps blocks that are read again on the disk tier.
//!
//! foyer's disk engine is a log of regions evicted in FIFO order, so a block written once (a plot header, the v1
//! C2 table, the v2 chunk index) leaves the disk after about `disk` bytes of other fetches however often it is
//! read: a long run of cold lookups or one `cp` of a plot would push every header out, and after a crash, or with
//! a memory tier too small for all of them, each open would pay a round trip again. So a block read when its disk
//! copy is more than a quarter of the disk old is written again at the head of the log. Whatever is read at least
//! once per quarter disk of writes stays on disk for good; nothing here knows a plot format. A quarter, not a
//! half: foyer drops a disk write when its queue overflows (a loaded machine), and the margin leaves a block two
//! more reads to be rewritten before its old copy reaches the tail.
//!
//! (foyer's own reinsertion filter would do this at reclaim time, but it rewrites entries with their old sequence
//! numbers, and recovery stops scanning a region at the first sequence that goes backwards: every entry after a
//! reinsertion would be lost at restart. A rewrite here is an ordinary insertion with a new sequence.)
//!
//! Bounded twice: the ages live in a fixed table of 16-bit epochs (two slots per block the disk can hold, at
//! most 32 MiB: 4 MiB for the default 50 GiB of 64 KiB blocks; a collision only makes a block look younger or
//! older than it is, never serves a wrong one), and rewrites spend
//! tokens earned by new insertions (half their bytes), so they can never crowd out new fetches or feed on
//! themselves. Without new insertions nothing is evicted, and nothing needs rewriting.

use crate::sync::atomic::{AtomicI64, AtomicU16, AtomicU64, Ordering};

use prometheus::IntCounter;

/// Epochs per disk capacity written: the resolution of a block's age.
const EPOCHS_PER_DISK: u64 = 16;
/// A block this many epochs old (a quarter of the disk written since) is rewritten when read.
const REFRESH_AGE: u16 = (EPOCHS_PER_DISK / 4) as u16;

/// Two slots per block the disk can hold, within 2^10..2^24.
fn slots(disk_bytes: usize, block_size: usize) -> usize {
    (disk_bytes / block_size.max(1))
        .saturating_mul(2)
        .clamp(1 << 10, 1 << 24)
        .next_power_of_two()
}

/// Memory the age table takes for this disk tier (counted against `cache.memory`).
pub fn table_bytes(disk_bytes: usize, block_size: usize) -> usize {
    slots(disk_bytes, block_size) * std::mem::size_of::<AtomicU16>()
}

pub struct DiskRefresh {
    /// Epoch of each slot's last disk write.
    written: Box<[AtomicU16]>,
    mask: u64,
    /// Bytes written to the disk tier (insertions and rewrites).
    clock: AtomicU64,
    epoch_bytes: u64,
    /// Bytes that may still be spent on rewrites (earned by insertions, capped).
    tokens: AtomicI64,
    cap: i64,
    rewritten_blocks: IntCounter,
    rewritten_bytes: IntCounter,
}

impl DiskRefresh {
    /// `disk_bytes`/`block_size`: the disk tier; `burst`: the most bytes rewritten back to back before new
    /// insertions must earn more.
    pub fn new(
        disk_bytes: usize,
        block_size: usize,
        burst: usize,
        rewritten_blocks: IntCounter,
        rewritten_bytes: IntCounter,
    ) -> Self {
        let slots = slots(disk_bytes, block_size);
        let epoch_bytes = (disk_bytes as u64 / EPOCHS_PER_DISK).max(1);
        Self {
            written: (0..slots).map(|_| AtomicU16::new(0)).collect(),
            mask: slots as u64 - 1,
            // Blocks recovered from disk after a restart have no recorded age: starting the clock at the refresh
            // age makes them eligible at their first read, as the oldest they could be.
            clock: AtomicU64::new(u64::from(REFRESH_AGE) * epoch_bytes),
            epoch_bytes,
            tokens: AtomicI64::new(0),
            cap: i64::try_from(burst).unwrap_or(i64::MAX),
            rewritten_blocks,
            rewritten_bytes,
        }
    }

    fn slot(&self, hash: u64) -> &AtomicU16 {
        // foyer's key hash is xxHash64: its low bits are as good as any.
        &self.written[(hash & self.mask) as usize]
    }

    fn epoch(&self) -> u16 {
        // Wraps after 65,536 epochs (4,096 disk capacities of writes): a block unread for that long may then
        // look young once and miss one rewrite.
        (self.clock.load(Ordering::Relaxed) / self.epoch_bytes) as u16
    }

    /// A new block of `bytes` went to the disk tier.
    pub fn inserted(&self, hash: u64, bytes: usize) {
        self.clock.fetch_add(bytes as u64, Ordering::Relaxed);
        self.slot(hash).store(self.epoch(), Ordering::Relaxed);
        let add = i64::try_from(bytes / 2).unwrap_or(i64::MAX);
        let cap = self.cap;
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_add(add).min(cap))
            });
    }

    /// The block's last disk write was dropped: its next read rewrites it (when tokens allow), as if its disk copy
    /// were old.
    pub fn forget(&self, hash: u64) {
        self.slot(hash)
            .store(self.epoch().wrapping_sub(REFRESH_AGE), Ordering::Relaxed);
    }

    /// A cached block of `bytes` was read: true if it must be written again (and is then accounted as such).
    pub fn should_rewrite(&self, hash: u64, bytes: usize) -> bool {
        let slot = self.slot(hash);
        let now = self.epoch();
        if now.wrapping_sub(slot.load(Ordering::Relaxed)) < REFRESH_AGE {
            return false;
        }
        let size = i64::try_from(bytes).unwrap_or(i64::MAX);
        let paid = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t >= size).then_some(t - size)
            })
            .is_ok();
        if !paid {
            return false;
        }
        // Concurrent readers of the same block: only the one that moves its epoch rewrites it.
        let old = slot.load(Ordering::Relaxed);
        if now.wrapping_sub(old) < REFRESH_AGE
            || slot
                .compare_exchange(old, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.tokens.fetch_add(size, Ordering::Relaxed);
            return false;
        }
        self.clock.fetch_add(bytes as u64, Ordering::Relaxed);
        self.rewritten_blocks.inc();
        self.rewritten_bytes.inc_by(bytes as u64);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISK: usize = 16 << 20;
    const BLOCK: usize = 64 << 10;

    fn refresh(burst: usize) -> DiskRefresh {
        DiskRefresh::new(
            DISK,
            BLOCK,
            burst,
            IntCounter::new("b", "b").expect("counter"),
            IntCounter::new("y", "y").expect("counter"),
        )
    }

    /// Inserts `n` cold blocks, in slots (600..1000) apart from the blocks under test.
    fn churn(r: &DiskRefresh, from: u64, n: u64) {
        for h in from..from + n {
            r.inserted(600 + h % 400, BLOCK);
        }
    }

    #[test]
    fn a_block_is_rewritten_once_per_quarter_disk_of_writes() {
        let r = refresh(4 * BLOCK);
        r.inserted(42, BLOCK);
        assert!(!r.should_rewrite(42, BLOCK), "just written");
        // An eighth of the disk later: still young.
        churn(&r, 0, (DISK / BLOCK / 8) as u64);
        assert!(!r.should_rewrite(42, BLOCK));
        // Past a quarter of the disk: rewritten, once.
        churn(&r, 1000, (DISK / BLOCK / 8 + 2) as u64);
        assert!(r.should_rewrite(42, BLOCK));
        assert!(
            !r.should_rewrite(42, BLOCK),
            "the rewrite made it young again"
        );
        assert_eq!(r.rewritten_blocks.get(), 1);
        assert_eq!(r.rewritten_bytes.get(), BLOCK as u64);
    }

    #[test]
    fn blocks_of_unknown_age_are_refreshed_at_first_read() {
        // As after a restart: recovered blocks were never seen by this process.
        let r = refresh(4 * BLOCK);
        churn(&r, 0, 4);
        assert!(r.should_rewrite(7, BLOCK));
        assert!(!r.should_rewrite(7, BLOCK));
    }

    #[test]
    fn rewrites_are_paid_by_insertions_and_capped() {
        let r = refresh(2 * BLOCK);
        assert!(
            !r.should_rewrite(7, BLOCK),
            "nothing inserted: nothing to spend"
        );
        // Earned tokens are capped at the burst, however much was inserted.
        churn(&r, 0, 100);
        let rewritten = (0..10u64).filter(|&h| r.should_rewrite(h, BLOCK)).count();
        assert_eq!(rewritten, 2);
        // Two more insertions earn one more rewrite.
        churn(&r, 200, 2);
        let rewritten = (10..20u64).filter(|&h| r.should_rewrite(h, BLOCK)).count();
        assert_eq!(rewritten, 1);
    }
}
