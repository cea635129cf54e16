//! The global bandwidth cap: one pacer shared by every download body, modelling the link.
//!
//! Each chunk reserves `len / rate` seconds on a shared virtual clock and is released when its
//! slot ends, so concurrent bodies share the rate fairly (first come, first served per chunk)
//! and the aggregate never exceeds it by more than a small burst allowance (`BURST`), which lets
//! the pacer catch up after the timer oversleeps (tokio timers have ~1 ms granularity).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How far the virtual clock may lag behind real time (burst allowance after idling).
const BURST: Duration = Duration::from_millis(5);

/// Largest body chunk.
pub(crate) const MAX_CHUNK: usize = 64 * 1024;
const MIN_CHUNK: usize = 1024;

pub(crate) struct Pacer {
    rate: AtomicU64,
    next: Mutex<Option<Instant>>,
}

impl Pacer {
    pub fn new(rate: u64) -> Self {
        Self {
            rate: AtomicU64::new(rate),
            next: Mutex::new(None),
        }
    }

    /// Bytes per second, 0 for unlimited.
    pub fn set_rate(&self, rate: u64) {
        self.rate.store(rate, Ordering::Relaxed);
    }

    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Chunk size for bodies at the current rate: about 5 ms worth of bytes, 1..64 KiB.
    pub fn chunk_size(&self) -> usize {
        match self.rate() {
            0 => MAX_CHUNK,
            r => usize::try_from(r / 200)
                .unwrap_or(MAX_CHUNK)
                .clamp(MIN_CHUNK, MAX_CHUNK),
        }
    }

    /// Reserves a slot for `len` bytes; returns when the chunk may be sent, or `None` to send now.
    pub fn reserve(&self, len: usize) -> Option<Instant> {
        let rate = self.rate();
        if rate == 0 {
            return None;
        }
        let now = Instant::now();
        let floor = now.checked_sub(BURST).unwrap_or(now);
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let start = next.map_or(now, |n| n.max(floor));
        let end = start + Duration::from_secs_f64(len as f64 / rate as f64);
        *next = Some(end);
        (end > now).then_some(end)
    }
}
