//! Sequential-stream detection and read-ahead accounting.
//!
//! A stream that has read [`SEQ_TRIGGER`] bytes sequentially on one file grows a window (doubling, up to
//! `readahead_max`) that the fetcher fetches ahead in the background, so `cp` from the mount runs near the
//! upstream bandwidth. Small random pairs never trigger it, so Chia lookups pay no extra transactions. Blocks
//! fetched ahead are remembered until read ("used") or forgotten ("wasted"), both bounded.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::sync::Mutex;

/// Sequential bytes a stream must read before read-ahead starts (a Chia pair is 16 KiB: far below).
pub const SEQ_TRIGGER: u64 = 256 << 10;
/// Streams tracked for sequential detection, and read-ahead blocks tracked for used/wasted accounting.
const MAX_STREAMS: usize = 4096;
const MAX_PREFETCHED: usize = 1 << 16;

#[derive(Default)]
struct StreamState {
    next: u64,
    seq_bytes: u64,
    window: u64,
}

pub struct Streams {
    block_size: u64,
    max_window: u64,
    streams: Mutex<HashMap<Arc<str>, StreamState>>,
}

impl Streams {
    pub fn new(block_size: u64, max_window: u64) -> Self {
        Self {
            block_size,
            max_window,
            streams: Mutex::new(HashMap::new()),
        }
    }

    /// Notes a read of `range` of file `id`; returns the span to fetch ahead, if any.
    pub fn track(&self, id: &Arc<str>, range: &Range<u64>) -> Option<Range<u64>> {
        if self.max_window == 0 {
            return None;
        }
        let len = range.end - range.start;
        let mut streams = self.streams.lock();
        if streams.len() >= MAX_STREAMS && !streams.contains_key(id) {
            streams.clear();
        }
        let st = streams.entry(id.clone()).or_default();
        // Continues where the last read ended (a little overlap allowed, no gap): strided or random reads that
        // happen to land near each other are not a stream.
        let sequential =
            st.next != 0 && range.start <= st.next && range.start + self.block_size >= st.next;
        st.next = range.end;
        if !sequential {
            // A lone large read is not a stream: no read-ahead until the next read continues it.
            st.seq_bytes = len;
            st.window = 0;
            return None;
        }
        st.seq_bytes = st.seq_bytes.saturating_add(len);
        if st.seq_bytes < SEQ_TRIGGER {
            return None;
        }
        // Not `clamp`: a `readahead_max` below the trigger is a valid setting (a small window), not a panic.
        st.window = (st.window * 2).max(SEQ_TRIGGER).min(self.max_window);
        Some(range.end..range.end.saturating_add(st.window))
    }
}

/// Blocks fetched ahead and not read yet.
pub struct Prefetched<K> {
    set: Mutex<HashSet<K>>,
    /// Size of `set`, readable without the lock: random (Chia) reads never fetch ahead, so every cache hit
    /// skips the lock when this is 0.
    len: AtomicUsize,
}

impl<K: Eq + Hash> Default for Prefetched<K> {
    fn default() -> Self {
        Self {
            set: Mutex::new(HashSet::new()),
            len: AtomicUsize::new(0),
        }
    }
}

impl<K: Eq + Hash> Prefetched<K> {
    /// Remembers a block fetched ahead; returns how many were forgotten unread to stay bounded.
    pub fn fetched(&self, key: K) -> u64 {
        let mut set = self.set.lock();
        let mut wasted = 0;
        if set.len() >= MAX_PREFETCHED {
            wasted = set.len() as u64;
            set.clear();
        }
        set.insert(key);
        self.len.store(set.len(), Ordering::Relaxed);
        wasted
    }

    /// A block was read: true if it had been fetched ahead (and is now accounted as used).
    pub fn used(&self, key: &K) -> bool {
        if self.len.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let mut set = self.set.lock();
        let removed = set.remove(key);
        self.len.store(set.len(), Ordering::Relaxed);
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_grows_its_window_and_random_reads_never_start_one() {
        let s = Streams::new(64 << 10, 1 << 20);
        let id: Arc<str> = "f".into();
        let mut pos = 0;
        let mut windows = Vec::new();
        for _ in 0..12 {
            let r = pos..pos + (64 << 10);
            if let Some(w) = s.track(&id, &r) {
                windows.push(w.end - w.start);
            }
            pos = r.end;
        }
        assert_eq!(
            windows,
            vec![
                256 << 10,
                512 << 10,
                1 << 20,
                1 << 20,
                1 << 20,
                1 << 20,
                1 << 20,
                1 << 20,
                1 << 20
            ]
        );
        // A window smaller than the trigger is honoured.
        let small = Streams::new(4096, 8192);
        let mut last = None;
        for i in 0..100u64 {
            last = small.track(&id, &(i * 4096..(i + 1) * 4096)).or(last);
        }
        assert_eq!(last.map(|w| w.end - w.start), Some(8192));
        // Random pairs: never.
        let other: Arc<str> = "g".into();
        for i in 0..50u64 {
            let at = (i * 7919 % 1000) << 20;
            assert!(s.track(&other, &(at..at + 8191)).is_none());
        }
    }
}
