//! Estimates the cache's hot set, the bytes that reads come back to, and says when a tier is too small for it.
//!
//! A farm re-reads a fixed set of ranges (every plot's header and index) at every lookup, minutes to an hour
//! apart, and reads everything else once. The disk tier keeps what is re-read ([`super::refresh`]) only while
//! that set fits in it; past that, each re-read block has left the cache by the time it is read again and goes
//! upstream, which a farmer sees only as a slow, costly farm. So every block a reader gets is noted here:
//! a block read again at least [`MIN_GAP`] after an earlier read (so the pieces of one read, or one lookup,
//! count once) and within `window` of it is hot, and its bytes count once per window generation. The estimate is
//! the larger of the current generation's sum and the last complete one's. A hot block that was in no tier is a
//! *refetch*: the direct evidence that the cache lost part of its hot set.
//!
//! Bounded: one fixed table of 64-bit slots (8 MiB at most, 4-way set-associative), each holding a sampled
//! block's tag, last-read tick and the generation it was last counted in. A block stream larger than the table (a farm's cold chunk reads
//! over hours) would otherwise evict the hot blocks' history, so the table samples: only blocks whose hash has
//! its low `shift` tag bits zero are tracked, and their bytes count `2^shift` times. When a generation finds too
//! many live slots taken by other blocks, the next one samples half as many; when the table is mostly free, twice
//! as many. A collision of tags can only count a block as hot that is not, so the error is bounded by the tag
//! width (12 bits or more at the largest shift) and the sample's variance, both small for hot sets of thousands
//! of blocks; the estimate is a sizing aid, never used to decide what is served.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::time::Instant;

/// A read this soon after the block's last one is part of the same read (FUSE splits reads; one lookup reads a
/// block's neighbours): it does not make the block hot.
pub const MIN_GAP: Duration = Duration::from_secs(2);
/// The default window: Chia's plot filter passes each plot (or v2 plot group) once per ~80 minutes on
/// average, so a window of several times that sees nearly every plot's second lookup.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(6 * 3600);
/// Largest table: 2^20 slots of 8 bytes.
const MAX_SLOTS: usize = 1 << 20;
const MIN_SLOTS: usize = 1 << 12;
/// Tag bits kept per slot; the low `shift` of them also decide the sample.
const TAG_BITS: u32 = 20;
const TICK_BITS: u32 = 22;
const GEN_BITS: u32 = 22;
const MAX_SHIFT: u32 = 8;
/// Slots a block may take (adjacent, one cache line): with one, a table a fifth full would already lose a fifth
/// of new blocks to collisions; with four, 3% when it is half full and almost none below a quarter.
const WAYS: usize = 4;
/// A hot set this large against the tier is reported as not fitting: the refresh needs room beside it for the
/// blocks read once.
const FIT_SHARE: f64 = 0.9;
/// The disk tier advised for a hot set, in quarters of it: [`super::refresh`] writes blocks read once only while
/// the log has free space and keeps hot blocks through its turns, but at farm scale a hot set at 90% of the
/// log's space was still lost as it turned (README, Performance), while one at ~70% held: 6/4 of the estimate.
const ADVICE_QUARTERS: u64 = 6;
/// Checks without a refetch (and with the estimate under the tier) before a tier found too small is said to fit
/// again: a few refetches a minute must not flip the verdict, and the log, at every check.
const CLEAR_AFTER: u32 = 30;

/// What the estimate says about the tiers, for `/healthz` and the log.
#[derive(Debug, Clone, PartialEq)]
pub struct HotSetReport {
    pub estimated_bytes: u64,
    pub window: Duration,
    /// The tier that is meant to hold the hot set: the disk tier, or the memory tier without one.
    pub tier: &'static str,
    pub tier_bytes: u64,
    /// Estimated bytes of hot blocks that were in no tier and went upstream again (since start).
    pub refetched_bytes: u64,
    /// The tier is too small: the estimate is over 90% of it, or hot blocks were refetched in the last check.
    pub too_small: bool,
    /// The `cache.disk` that would hold the hot set with room for the rest (1.5 times the estimate, rounded up
    /// to a GiB, and at least a GiB more than the tier; see [`ADVICE_QUARTERS`]), when `too_small`.
    pub advice_disk_bytes: Option<u64>,
}

pub struct HotSet {
    slots: Box<[AtomicU64]>,
    mask: u64,
    shift: AtomicU32,
    start: Instant,
    window_ticks: u64,
    /// The generation the sums below belong to (`hot[g % 2]`).
    generation: AtomicU64,
    hot: [AtomicU64; 2],
    /// New blocks that found their slot taken by a live other block (since the sample last halved), and blocks
    /// newly tracked (this generation).
    conflicts: AtomicU64,
    tracked: AtomicU64,
    tier: &'static str,
    tier_bytes: u64,
    estimate_gauge: IntGauge,
    refetched: IntCounter,
    /// Refetched bytes seen at the last check, and whether that check found the tier too small.
    last_refetched: AtomicU64,
    too_small: std::sync::atomic::AtomicBool,
    /// Checks in a row without a refetch.
    quiet: AtomicU32,
}

const TICK: Duration = Duration::from_secs(1);

fn mask(bits: u32) -> u64 {
    (1u64 << bits) - 1
}

fn pack(tag: u64, tick: u64, counted: u64) -> u64 {
    (tag << (TICK_BITS + GEN_BITS))
        | ((tick & mask(TICK_BITS)) << GEN_BITS)
        | (counted & mask(GEN_BITS))
}

fn unpack(v: u64) -> (u64, u64, u64) {
    (
        v >> (TICK_BITS + GEN_BITS),
        (v >> GEN_BITS) & mask(TICK_BITS),
        v & mask(GEN_BITS),
    )
}

/// Slots for a tier: room for twice its blocks, so a hot set twice the tier is still measured, not just "too big".
fn slots(tier_bytes: u64, block_size: u64) -> usize {
    let blocks = (tier_bytes / block_size.max(1)).saturating_mul(2);
    usize::try_from(blocks)
        .unwrap_or(MAX_SLOTS)
        .clamp(MIN_SLOTS, MAX_SLOTS)
        .next_power_of_two()
}

/// Memory the estimate's table takes for these tiers (counted against `cache.memory`).
pub fn table_bytes(memory_bytes: u64, disk_bytes: u64, block_size: u64) -> usize {
    let tier = if disk_bytes > 0 {
        disk_bytes
    } else {
        memory_bytes
    };
    slots(tier, block_size) * std::mem::size_of::<AtomicU64>()
}

impl HotSet {
    /// `memory_bytes`/`disk_bytes`: the tiers; `window`: how far apart two reads of a block may be for it to be
    /// hot; the gauge and counter are the proxy's `b2proxy_cache_hot_set_bytes` and
    /// `b2proxy_cache_hot_refetched_bytes_total`.
    pub fn new(
        memory_bytes: u64,
        disk_bytes: u64,
        block_size: u64,
        window: Duration,
        estimate_gauge: IntGauge,
        refetched: IntCounter,
    ) -> Self {
        let (tier, tier_bytes) = if disk_bytes > 0 {
            ("disk", disk_bytes)
        } else {
            ("memory", memory_bytes)
        };
        let n = slots(tier_bytes, block_size);
        Self {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            mask: n as u64 - 1,
            shift: AtomicU32::new(0),
            start: Instant::now(),
            window_ticks: (window.as_secs() / TICK.as_secs()).clamp(MIN_GAP.as_secs() + 1, 1 << 20),
            generation: AtomicU64::new(0),
            hot: [AtomicU64::new(0), AtomicU64::new(0)],
            conflicts: AtomicU64::new(0),
            tracked: AtomicU64::new(0),
            tier,
            tier_bytes,
            estimate_gauge,
            refetched,
            last_refetched: AtomicU64::new(0),
            too_small: std::sync::atomic::AtomicBool::new(false),
            quiet: AtomicU32::new(0),
        }
    }

    /// [`HotSet::new`] reporting to the proxy's metrics.
    pub fn with_metrics(
        memory_bytes: u64,
        disk_bytes: u64,
        block_size: u64,
        window: Duration,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        Self::new(
            memory_bytes,
            disk_bytes,
            block_size,
            window,
            metrics.cache_hot_set_bytes.clone(),
            metrics.cache_hot_refetched_bytes.clone(),
        )
    }

    pub fn window(&self) -> Duration {
        TICK * self.window_ticks as u32
    }

    /// Ticks start at 1 so that an empty slot (0) is never a block.
    fn tick(&self) -> u64 {
        (self.start.elapsed().as_secs() / TICK.as_secs()) + 1
    }

    /// Moves to generation `g` if it is new: its sum starts at zero, and the sample adapts to the last one.
    fn advance(&self, g: u64) {
        let cur = self.generation.load(Ordering::Relaxed);
        if g <= cur
            || self
                .generation
                .compare_exchange(cur, g, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.hot[(g % 2) as usize].store(0, Ordering::Relaxed);
        if g > cur + 1 {
            self.hot[((g + 1) % 2) as usize].store(0, Ordering::Relaxed);
        }
        let conflicts = self.conflicts.swap(0, Ordering::Relaxed);
        let tracked = self.tracked.swap(0, Ordering::Relaxed);
        let shift = self.shift.load(Ordering::Relaxed);
        if conflicts == 0 && tracked < self.slots.len() as u64 / 8 && shift > 0 {
            self.shift.store(shift - 1, Ordering::Relaxed);
        }
    }

    /// A block found its slot taken by a live other one: past a sixteenth of the table, sample half as many.
    /// (The sums stay unbiased: the blocks that leave the sample and the weight the others gain cancel out in
    /// expectation.)
    fn conflict(&self) {
        let n = self.slots.len() as u64;
        if self.conflicts.fetch_add(1, Ordering::Relaxed) + 1 > n / 16 {
            self.conflicts.store(0, Ordering::Relaxed);
            let _ = self
                .shift
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                    (s < MAX_SHIFT).then_some(s + 1)
                });
        }
    }

    /// A reader got the block with key hash `hash`, of `bytes`; `cached`: a tier had it (else it came from
    /// upstream; a failed fetch is not noted).
    pub fn note(&self, hash: u64, bytes: usize, cached: bool) {
        let shift = self.shift.load(Ordering::Relaxed);
        let tag = (hash >> (64 - TAG_BITS)) & mask(TAG_BITS);
        if tag & mask(shift) != 0 {
            return;
        }
        let now = self.tick();
        let g = now / self.window_ticks;
        self.advance(g);
        let counted_mark = (g + 1) & mask(GEN_BITS);
        let age = |then: u64| (now.wrapping_sub(then)) & mask(TICK_BITS);
        let base = (hash & self.mask) as usize & !(WAYS - 1);
        let ways = &self.slots[base..base + WAYS];
        // Compare-and-swap on the slot chosen; a lost race looks again (bounded: a few readers of one set).
        for _ in 0..4 {
            let mut free = None;
            let mut found = None;
            for slot in ways {
                let v = slot.load(Ordering::Relaxed);
                let (t, last, _) = unpack(v);
                if v != 0 && t == tag {
                    found = Some((slot, v));
                    break;
                }
                // Empty, or another block out of the window or of the sample: free to take.
                let live = v != 0 && age(last) <= self.window_ticks && t & mask(shift) == 0;
                if !live && free.is_none() {
                    free = Some((slot, v));
                }
            }
            if let Some((slot, v)) = found {
                let (_, last, counted) = unpack(v);
                let gap = age(last);
                if gap < MIN_GAP.as_secs() / TICK.as_secs() {
                    return;
                }
                let again = gap <= self.window_ticks;
                let hot = again && counted != counted_mark;
                let next = pack(tag, now, if hot { counted_mark } else { counted });
                if slot
                    .compare_exchange(v, next, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                let weighted = (bytes as u64) << shift;
                if hot {
                    self.hot[(g % 2) as usize].fetch_add(weighted, Ordering::Relaxed);
                }
                // Every refetch counts, not only the first re-read of the window: a header counted hot at its
                // second read and evicted later is refetched at every read after that.
                if again && !cached {
                    self.refetched.inc_by(weighted);
                }
                return;
            }
            let Some((slot, v)) = free else {
                self.conflict();
                return;
            };
            if slot
                .compare_exchange(v, pack(tag, now, 0), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                self.tracked.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }

    /// The estimated hot set now, in bytes.
    pub fn estimate(&self) -> u64 {
        let g = self.tick() / self.window_ticks;
        let stored = self.generation.load(Ordering::Relaxed);
        let cur = self.hot[(stored % 2) as usize].load(Ordering::Relaxed);
        let prev = self.hot[((stored + 1) % 2) as usize].load(Ordering::Relaxed);
        match g.saturating_sub(stored) {
            // `prev` is the complete generation before `stored` (zero in the first one).
            0 => cur.max(prev),
            // No read since the generation ended: what it counted is the last complete one.
            1 => cur,
            _ => 0,
        }
    }

    /// Compares the estimate with the tier, updates the gauge, and logs when the verdict changes (and every
    /// `repeat` checks while the tier stays too small).
    pub fn check(&self) -> HotSetReport {
        let estimated = self.estimate();
        self.estimate_gauge
            .set(i64::try_from(estimated).unwrap_or(i64::MAX));
        let refetched = self.refetched.get();
        let new_refetches =
            refetched.saturating_sub(self.last_refetched.swap(refetched, Ordering::Relaxed));
        let over = estimated as f64 > FIT_SHARE * self.tier_bytes as f64;
        let quiet = if new_refetches > 0 {
            self.quiet.store(0, Ordering::Relaxed);
            0
        } else {
            self.quiet.fetch_add(1, Ordering::Relaxed).saturating_add(1)
        };
        let was = self.too_small.load(Ordering::Relaxed);
        let too_small = over || new_refetches > 0 || (was && quiet < CLEAR_AFTER);
        self.too_small.store(too_small, Ordering::Relaxed);
        let report = self.report(estimated, refetched, too_small);
        if too_small && !was {
            tracing::warn!(
                hot_set = %bytesize::ByteSize(estimated),
                window = %humantime::format_duration(self.window()),
                tier = self.tier,
                tier_size = %bytesize::ByteSize(self.tier_bytes),
                refetched = %bytesize::ByteSize(new_refetches),
                advice = %bytesize::ByteSize(report.advice_disk_bytes.unwrap_or(0)),
                "the cache is too small for what reads come back to: blocks read again within the window \
                 are being fetched from upstream again (each a B2 transaction and a round trip); set \
                 cache.disk to at least the advised size"
            );
        } else if !too_small && was {
            tracing::info!(
                hot_set = %bytesize::ByteSize(estimated),
                tier = self.tier,
                tier_size = %bytesize::ByteSize(self.tier_bytes),
                "the cache holds its hot set again"
            );
        }
        report
    }

    /// The verdict now, without logging (for `/healthz`): the last check's, or the estimate's if it is over the
    /// tier since.
    pub fn report_now(&self) -> HotSetReport {
        let estimated = self.estimate();
        let over = estimated as f64 > FIT_SHARE * self.tier_bytes as f64;
        self.report(
            estimated,
            self.refetched.get(),
            over || self.too_small.load(Ordering::Relaxed),
        )
    }

    fn report(&self, estimated: u64, refetched: u64, too_small: bool) -> HotSetReport {
        const GIB: u64 = 1 << 30;
        HotSetReport {
            estimated_bytes: estimated,
            window: self.window(),
            tier: self.tier,
            tier_bytes: self.tier_bytes,
            refetched_bytes: refetched,
            too_small,
            advice_disk_bytes: too_small.then(|| {
                let want = (estimated / 4)
                    .saturating_mul(ADVICE_QUARTERS)
                    .max(self.tier_bytes.saturating_add(GIB));
                want.div_ceil(GIB).saturating_mul(GIB)
            }),
        }
    }
}

/// Checks the estimate every `every` until the proxy stops.
pub fn spawn_check(
    hot: std::sync::Arc<HotSet>,
    every: Duration,
    cancel: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => { hot.check(); }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: usize = 64 << 10;

    fn hotset(disk: u64, window: Duration) -> HotSet {
        HotSet::new(
            1 << 30,
            disk,
            BLOCK as u64,
            window,
            IntGauge::new("g", "g").expect("gauge"),
            IntCounter::new("c", "c").expect("counter"),
        )
    }

    /// Well-mixed hashes for block `i` (as foyer's xxHash gives).
    fn h(i: u64) -> u64 {
        let mut x = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }

    #[tokio::test(start_paused = true)]
    async fn blocks_read_again_count_once_and_reads_close_together_do_not() {
        let hot = hotset(1 << 30, Duration::from_secs(600));
        for i in 0..100 {
            hot.note(h(i), BLOCK, false);
            // The pieces of one read: no re-read.
            hot.note(h(i), BLOCK, true);
        }
        assert_eq!(hot.estimate(), 0);
        tokio::time::advance(Duration::from_secs(60)).await;
        for i in 0..50 {
            hot.note(h(i), BLOCK, true);
        }
        assert_eq!(hot.estimate(), 50 * BLOCK as u64);
        tokio::time::advance(Duration::from_secs(60)).await;
        for i in 0..50 {
            hot.note(h(i), BLOCK, true);
        }
        assert_eq!(hot.estimate(), 50 * BLOCK as u64, "counted once per window");
        assert_eq!(hot.refetched.get(), 0, "every re-read was cached");
    }

    #[tokio::test(start_paused = true)]
    async fn reads_further_apart_than_the_window_are_not_hot_and_the_estimate_lapses() {
        let hot = hotset(1 << 30, Duration::from_secs(60));
        for i in 0..10 {
            hot.note(h(i), BLOCK, false);
        }
        tokio::time::advance(Duration::from_secs(90)).await;
        for i in 0..10 {
            hot.note(h(i), BLOCK, false);
        }
        assert_eq!(hot.estimate(), 0);
        tokio::time::advance(Duration::from_secs(30)).await;
        for i in 0..10 {
            hot.note(h(i), BLOCK, false);
        }
        assert_eq!(hot.estimate(), 10 * BLOCK as u64);
        assert_eq!(
            hot.refetched.get(),
            10 * BLOCK as u64,
            "re-read blocks that missed"
        );
        // Nothing read for two windows: nothing is known to be hot.
        tokio::time::advance(Duration::from_secs(200)).await;
        assert_eq!(hot.estimate(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn every_refetch_of_a_hot_block_counts_not_only_the_first_re_read() {
        let hot = hotset(1 << 30, Duration::from_secs(600));
        hot.note(h(1), BLOCK, false);
        tokio::time::advance(Duration::from_secs(10)).await;
        // Counted hot here, from a tier.
        hot.note(h(1), BLOCK, true);
        assert_eq!(hot.refetched.get(), 0);
        // Then evicted: each later read goes upstream again, in the same window.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(10)).await;
            hot.note(h(1), BLOCK, false);
        }
        assert_eq!(hot.refetched.get(), 3 * BLOCK as u64);
        assert_eq!(
            hot.estimate(),
            BLOCK as u64,
            "the hot set still counts it once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_table_half_full_still_counts_nearly_every_hot_block() {
        // A 64 MiB tier: 2,048 blocks, 4,096 slots; 2,000 blocks read twice.
        let hot = hotset(64 << 20, Duration::from_secs(600));
        assert_eq!(hot.slots.len(), 4096);
        for _ in 0..2 {
            for i in 0..2_000 {
                hot.note(h(i), BLOCK, true);
            }
            tokio::time::advance(Duration::from_secs(10)).await;
        }
        let counted = hot.estimate() / BLOCK as u64;
        // One slot per block would lose about a fifth of them.
        assert!(counted >= 1_900, "{counted} of 2,000 hot blocks counted");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cold_stream_larger_than_the_table_does_not_hide_the_hot_set() {
        // A 256 MiB tier: 8,192 slots. Hot set: 2,000 blocks (125 MiB), each read every 100 s; between their
        // reads, 20,000 cold blocks a round, read once.
        let hot = hotset(256 << 20, Duration::from_secs(3600));
        let mut cold = 1_000_000u64;
        for _round in 0..12 {
            for i in 0..2_000 {
                hot.note(h(i), BLOCK, true);
            }
            for _ in 0..20_000 {
                hot.note(h(cold), BLOCK, false);
                cold += 1;
            }
            tokio::time::advance(Duration::from_secs(100)).await;
        }
        let est = hot.estimate() as f64;
        let truth = 2_000.0 * BLOCK as f64;
        assert!(
            (est / truth - 1.0).abs() < 0.25,
            "estimate {est} against {truth} (shift {})",
            hot.shift.load(Ordering::Relaxed)
        );
        assert!(hot.shift.load(Ordering::Relaxed) > 0, "the table sampled");
    }

    #[tokio::test(start_paused = true)]
    async fn a_tier_smaller_than_the_hot_set_is_reported_with_the_size_to_set() {
        let hot = hotset(64 << 20, Duration::from_secs(600));
        let r = hot.check();
        assert!(!r.too_small);
        for i in 0..2_000 {
            hot.note(h(i), BLOCK, true);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        for i in 0..2_000 {
            hot.note(h(i), BLOCK, true);
        }
        let r = hot.check();
        assert!(r.too_small, "{r:?}");
        assert_eq!(r.tier, "disk");
        let est = r.estimated_bytes;
        assert!(est > 100 << 20, "{est}");
        let advice = r.advice_disk_bytes.expect("advice");
        assert!(
            advice >= est / 4 * 6 && advice.is_multiple_of(1 << 30),
            "{advice}"
        );
        assert_eq!(hot.estimate_gauge.get() as u64, est);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refetch_of_a_hot_block_reports_the_tier_too_small_until_refetches_stop() {
        let hot = hotset(1 << 30, Duration::from_secs(600));
        hot.note(h(1), BLOCK, false);
        tokio::time::advance(Duration::from_secs(10)).await;
        hot.note(h(1), BLOCK, false);
        let r = hot.check();
        assert!(r.too_small && r.refetched_bytes == BLOCK as u64, "{r:?}");
        for _ in 1..CLEAR_AFTER {
            assert!(
                hot.check().too_small,
                "a verdict does not flip at every check"
            );
        }
        assert!(
            !hot.check().too_small,
            "no refetch for {CLEAR_AFTER} checks"
        );
    }
}
