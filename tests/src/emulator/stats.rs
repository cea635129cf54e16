//! Counters: requests per B2 call, responses per status, bytes and ranges served, faults,
//! concurrent downloads (current and peak) and TCP connections accepted.
//!
//! [`Stats`] is the snapshot returned by `Emulator::stats()` and `GET /_emu/stats`; the `/_emu/*`
//! control routes are not counted. A download is "in flight" from the moment its GET request
//! reaches the handler (so time spent in injected latency counts) until its body has been sent
//! or dropped; HEAD requests are not downloads.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::config::Fault;

/// How many recent download ranges are kept in [`Stats::recent_ranges`].
pub const RECENT_RANGES: usize = 4096;

/// The B2 call a request was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    Authorize,
    ListBuckets,
    ListFileNames,
    DownloadByName,
    DownloadById,
    Head,
    Other,
}

/// Requests received, per call.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// `b2_authorize_account`.
    pub authorize: u64,
    /// `b2_list_buckets`.
    pub list_buckets: u64,
    /// `b2_list_file_names`.
    pub list_file_names: u64,
    /// GET `/file/{bucket}/{name}`.
    pub download_by_name: u64,
    /// GET `b2_download_file_by_id`.
    pub download_by_id: u64,
    /// HEAD by name or by id.
    pub head: u64,
    /// Anything else (unknown paths and calls, wrong methods).
    pub other: u64,
}

/// Faults injected, per kind (`offline` counts requests refused while offline).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultCounts {
    /// 503 answers.
    pub service_unavailable: u64,
    /// 429 answers.
    pub too_many_requests: u64,
    /// 500 answers.
    pub internal_error: u64,
    /// Bodies aborted mid-way.
    pub reset: u64,
    /// Bodies ended early.
    pub truncated: u64,
    /// 206 answers for a shifted range.
    pub wrong_range: u64,
    /// Requests answered 503 because the emulator was offline.
    pub offline: u64,
}

impl FaultCounts {
    /// Injected faults of every kind (outage answers excluded).
    pub fn injected(&self) -> u64 {
        self.service_unavailable
            + self.too_many_requests
            + self.internal_error
            + self.reset
            + self.truncated
            + self.wrong_range
    }
}

/// One download served (GET with a body; faults included).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRecord {
    /// File name.
    pub name: String,
    /// File id.
    pub file_id: String,
    /// First byte requested (resolved against the size; 0 for a whole-file request).
    pub start: u64,
    /// Last byte requested, inclusive.
    pub end: u64,
    /// Status code sent (200 or 206).
    pub status: u16,
    /// Fault injected into this download, if any.
    pub fault: Option<Fault>,
}

/// Downloads that touched the watched ranges of a file: its first `head` bytes and its last `tail` bytes (set
/// with `Emulator::watch`; the benchmark watches plot headers and the v2 chunk index at the tail, so "index
/// refetches" are counted exactly rather than read from the bounded [`Stats::recent_ranges`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchCounts {
    /// Watched head length (0: not watched).
    pub head: u64,
    /// Watched tail length (0: not watched).
    pub tail: u64,
    /// Downloads whose range overlaps the head.
    pub head_downloads: u64,
    /// Downloads whose range overlaps the tail.
    pub tail_downloads: u64,
    /// Bytes of those downloads inside the tail.
    pub tail_bytes: u64,
}

/// A snapshot of the counters (`GET /_emu/stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Requests per call.
    pub requests: RequestCounts,
    /// Responses per HTTP status code.
    pub responses_by_status: BTreeMap<u16, u64>,
    /// GET downloads that got a 200/206 head and a body (faulted bodies included).
    pub ranges_served: u64,
    /// Body bytes sent by downloads.
    pub bytes_sent: u64,
    /// Faults injected per kind.
    pub faults: FaultCounts,
    /// Downloads that got the `first_attempt_delay` stall.
    pub first_attempt_delays: u64,
    /// Downloads refused with 429 by the account rate limit (not an injected fault).
    #[serde(default)]
    pub rate_limited: u64,
    /// GET downloads in flight now.
    pub downloads_in_flight: u64,
    /// Highest `downloads_in_flight` since start or the last reset.
    pub peak_downloads_in_flight: u64,
    /// TCP connections accepted.
    pub connections_opened: u64,
    /// The most recent downloads, oldest first (at most [`RECENT_RANGES`]).
    pub recent_ranges: Vec<RangeRecord>,
    /// Downloads of the watched head and tail ranges.
    #[serde(default)]
    pub watched: WatchCounts,
}

#[derive(Default)]
pub(crate) struct StatsCollector {
    authorize: AtomicU64,
    list_buckets: AtomicU64,
    list_file_names: AtomicU64,
    download_by_name: AtomicU64,
    download_by_id: AtomicU64,
    head: AtomicU64,
    other: AtomicU64,
    ranges_served: AtomicU64,
    bytes_sent: AtomicU64,
    fault_503: AtomicU64,
    fault_429: AtomicU64,
    fault_500: AtomicU64,
    fault_reset: AtomicU64,
    fault_truncated: AtomicU64,
    fault_wrong_range: AtomicU64,
    fault_offline: AtomicU64,
    first_attempt_delays: AtomicU64,
    rate_limited: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
    connections: AtomicU64,
    watch_head: AtomicU64,
    watch_tail: AtomicU64,
    head_downloads: AtomicU64,
    tail_downloads: AtomicU64,
    tail_bytes: AtomicU64,
    statuses: Mutex<BTreeMap<u16, u64>>,
    recent: Mutex<VecDeque<RangeRecord>>,
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

impl StatsCollector {
    pub fn request(&self, call: Call) {
        bump(match call {
            Call::Authorize => &self.authorize,
            Call::ListBuckets => &self.list_buckets,
            Call::ListFileNames => &self.list_file_names,
            Call::DownloadByName => &self.download_by_name,
            Call::DownloadById => &self.download_by_id,
            Call::Head => &self.head,
            Call::Other => &self.other,
        });
    }

    pub fn status(&self, status: u16) {
        let mut m = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(status).or_insert(0) += 1;
    }

    pub fn fault(&self, fault: Fault) {
        bump(match fault {
            Fault::ServiceUnavailable => &self.fault_503,
            Fault::TooManyRequests => &self.fault_429,
            Fault::InternalError => &self.fault_500,
            Fault::Reset => &self.fault_reset,
            Fault::Truncated => &self.fault_truncated,
            Fault::WrongRange => &self.fault_wrong_range,
        });
    }

    pub fn offline(&self) {
        bump(&self.fault_offline);
    }

    pub fn rate_limited(&self) {
        bump(&self.rate_limited);
    }

    pub fn first_attempt_delay(&self) {
        bump(&self.first_attempt_delays);
    }

    pub fn connection_opened(&self) {
        bump(&self.connections);
    }

    pub fn bytes_sent(&self, n: u64) {
        self.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets the watched head and tail lengths (0 turns one off); the counts are kept.
    pub fn set_watch(&self, head: u64, tail: u64) {
        self.watch_head.store(head, Ordering::Relaxed);
        self.watch_tail.store(tail, Ordering::Relaxed);
    }

    /// Counts a download of `start..=end` of a file of `size` bytes against the watched ranges.
    pub fn watch(&self, start: u64, end: u64, size: u64) {
        let head = load(&self.watch_head);
        if head > 0 && start < head {
            bump(&self.head_downloads);
        }
        let tail = load(&self.watch_tail).min(size);
        let tail_start = size - tail;
        if tail > 0 && end >= tail_start && start < size {
            bump(&self.tail_downloads);
            let overlap = end.min(size - 1) + 1 - start.max(tail_start);
            self.tail_bytes.fetch_add(overlap, Ordering::Relaxed);
        }
    }

    /// Download GETs so far (by name and by id), without a full snapshot.
    pub fn downloads(&self) -> u64 {
        load(&self.download_by_name) + load(&self.download_by_id)
    }

    pub fn range_served(&self, record: RangeRecord) {
        bump(&self.ranges_served);
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() >= RECENT_RANGES {
            recent.pop_front();
        }
        recent.push_back(record);
    }

    fn download_started(&self) {
        let now = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::AcqRel);
    }

    fn download_ended(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn snapshot(&self) -> Stats {
        Stats {
            requests: RequestCounts {
                authorize: load(&self.authorize),
                list_buckets: load(&self.list_buckets),
                list_file_names: load(&self.list_file_names),
                download_by_name: load(&self.download_by_name),
                download_by_id: load(&self.download_by_id),
                head: load(&self.head),
                other: load(&self.other),
            },
            responses_by_status: self
                .statuses
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            ranges_served: load(&self.ranges_served),
            bytes_sent: load(&self.bytes_sent),
            faults: FaultCounts {
                service_unavailable: load(&self.fault_503),
                too_many_requests: load(&self.fault_429),
                internal_error: load(&self.fault_500),
                reset: load(&self.fault_reset),
                truncated: load(&self.fault_truncated),
                wrong_range: load(&self.fault_wrong_range),
                offline: load(&self.fault_offline),
            },
            first_attempt_delays: load(&self.first_attempt_delays),
            rate_limited: load(&self.rate_limited),
            downloads_in_flight: load(&self.in_flight),
            peak_downloads_in_flight: load(&self.peak_in_flight),
            connections_opened: load(&self.connections),
            recent_ranges: self
                .recent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect(),
            watched: WatchCounts {
                head: load(&self.watch_head),
                tail: load(&self.watch_tail),
                head_downloads: load(&self.head_downloads),
                tail_downloads: load(&self.tail_downloads),
                tail_bytes: load(&self.tail_bytes),
            },
        }
    }

    /// Zeroes every counter; the peak restarts from the downloads in flight now.
    pub fn reset(&self) {
        for a in [
            &self.authorize,
            &self.list_buckets,
            &self.list_file_names,
            &self.download_by_name,
            &self.download_by_id,
            &self.head,
            &self.other,
            &self.ranges_served,
            &self.bytes_sent,
            &self.fault_503,
            &self.fault_429,
            &self.fault_500,
            &self.fault_reset,
            &self.fault_truncated,
            &self.fault_wrong_range,
            &self.fault_offline,
            &self.first_attempt_delays,
            &self.rate_limited,
            &self.connections,
            &self.head_downloads,
            &self.tail_downloads,
            &self.tail_bytes,
        ] {
            a.store(0, Ordering::Relaxed);
        }
        self.peak_in_flight
            .store(self.in_flight.load(Ordering::Acquire), Ordering::Release);
        self.statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// Counts one download in flight until dropped.
pub(crate) struct InFlightGuard {
    stats: std::sync::Arc<StatsCollector>,
}

impl InFlightGuard {
    pub fn new(stats: &std::sync::Arc<StatsCollector>) -> Self {
        stats.download_started();
        Self {
            stats: stats.clone(),
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.stats.download_ended();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_head_and_tail() {
        let s = StatsCollector::default();
        s.watch(0, 8190, 1000);
        assert_eq!(s.snapshot().watched.head_downloads, 0, "not watched yet");
        s.set_watch(100, 300);
        s.watch(0, 8, 1000); // head
        s.watch(500, 699, 1000); // neither
        s.watch(650, 799, 1000); // 100 bytes of the tail
        s.watch(900, 5000, 1000); // 100 bytes, end past EOF
        let w = s.snapshot().watched;
        assert_eq!(
            (w.head_downloads, w.tail_downloads, w.tail_bytes),
            (1, 2, 200)
        );
        s.reset();
        let w = s.snapshot().watched;
        assert_eq!((w.head, w.tail, w.tail_downloads), (100, 300, 0));
    }
}
