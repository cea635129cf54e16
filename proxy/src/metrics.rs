//! Prometheus metrics: one registry per proxy, every name prefixed `b2proxy_`.
//!
//! The struct holds typed handles so the hot path increments a counter without a name lookup. The Grafana
//! dashboard and `deploy/alerts.yml` query only names defined here, foyer's `foyer_*` series and the
//! `process_*` series of the prometheus crate's process collector (tests check that, and that README lists
//! every `b2proxy_` name).

use prometheus::{
    Counter, Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Class B transaction (download) price in dollars, before the daily free allowance.
pub const CLASS_B_PRICE: f64 = 0.004 / 10_000.0;
/// Class C transaction (authorize, list) price in dollars, before the daily free allowance.
pub const CLASS_C_PRICE: f64 = 0.004 / 1_000.0;

/// Request latency buckets: a cache hit is ~0.1-1 ms, a miss one upstream round trip (50-100 ms) or more.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

/// B2's transaction classes: B for downloads, C for authorize and list calls (class A calls are free).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxClass {
    B,
    C,
}

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub bytes_served: IntCounter,
    pub cache_hits: IntCounterVec,
    pub cache_hit_bytes: IntCounterVec,
    pub cache_misses: IntCounter,
    pub cache_inserted_bytes: IntCounter,
    pub cache_disk_admissions: IntCounterVec,
    pub cache_disk_rewritten_blocks: IntCounter,
    pub cache_disk_lost_blocks: IntCounterVec,
    pub cache_disk_rewritten_bytes: IntCounter,
    pub cache_disk_dropped_writes: IntCounter,
    pub cache_disk_write_retries: IntCounter,
    pub cache_errors: IntCounterVec,
    pub cache_disk_degraded: IntGauge,
    pub cache_hot_set_bytes: IntGauge,
    pub cache_hot_refetched_bytes: IntCounter,
    pub response_buffer_bytes: IntGauge,
    pub send_timeouts: IntCounter,
    pub upstream_requests: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub upstream_bytes: IntCounterVec,
    pub upstream_retries: IntCounterVec,
    pub upstream_inflight: IntGauge,
    pub upstream_circuit_state: IntGauge,
    pub upstream_concurrency_limit: IntGauge,
    pub upstream_rate_limit: Gauge,
    pub upstream_queued: IntGauge,
    pub upstream_queue_wait: HistogramVec,
    pub upstream_delayed: IntCounter,
    pub upstream_promoted: IntCounter,
    pub upstream_throttled: IntCounter,
    pub upstream_connections: IntCounter,
    pub hedges_issued: IntCounter,
    pub hedges_won: IntCounter,
    pub hedge_threshold: Gauge,
    pub singleflight_joins: IntCounter,
    pub readahead_blocks: IntCounterVec,
    pub b2_transactions: IntCounterVec,
    pub b2_cost: Counter,
    pub cache_memory_bytes: IntGauge,
    pub cache_disk_capacity_bytes: IntGauge,
    pub catalog_files: IntGauge,
    pub catalog_last_refresh: Gauge,
    pub catalog_refresh_errors: IntCounter,
    pub fetch_errors: IntCounterVec,
    pub build_info: IntGaugeVec,
}

fn counter(reg: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::with_opts(Opts::new(name, help).namespace("b2proxy"))?;
    reg.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter_vec(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help).namespace("b2proxy"), labels)?;
    reg.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(reg: &Registry, name: &str, help: &str) -> prometheus::Result<Gauge> {
    let g = Gauge::with_opts(Opts::new(name, help).namespace("b2proxy"))?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

fn int_gauge(reg: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::with_opts(Opts::new(name, help).namespace("b2proxy"))?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram_vec(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<HistogramVec> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help)
            .namespace("b2proxy")
            .buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )?;
    reg.register(Box::new(h.clone()))?;
    Ok(h)
}

/// Adds the `process_*` series (CPU seconds, resident and virtual memory, open and max file descriptors,
/// start time, threads) of this process: what a farmer checks first when a proxy misbehaves.
fn with_process_collector(r: Registry) -> prometheus::Result<Registry> {
    #[cfg(target_os = "linux")]
    r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    Ok(r)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        Ok(Self {
            requests: counter_vec(
                &r,
                "requests_total",
                "HTTP requests answered, by route and cache outcome",
                &["route", "outcome"],
            )?,
            request_duration: histogram_vec(
                &r,
                "request_duration_seconds",
                "HTTP request latency to the last byte, by route and cache outcome",
                &["route", "outcome"],
            )?,
            bytes_served: counter(
                &r,
                "bytes_served_total",
                "Response body bytes served from /files",
            )?,
            cache_hits: counter_vec(
                &r,
                "cache_hits_total",
                "Blocks found in the cache, by tier",
                &["tier"],
            )?,
            cache_hit_bytes: counter_vec(
                &r,
                "cache_hit_bytes_total",
                "Bytes of blocks found in the cache, by tier",
                &["tier"],
            )?,
            cache_misses: counter(&r, "cache_misses_total", "Blocks not in any cache tier")?,
            cache_inserted_bytes: counter(
                &r,
                "cache_inserted_bytes_total",
                "Bytes of blocks inserted into the cache",
            )?,
            cache_disk_admissions: counter_vec(
                &r,
                "cache_disk_admissions_total",
                "Fetched blocks by what the disk tier did with them: free_space (written: the log had free \
                 regions), read_before (written: on disk before, or declined at an earlier fetch and read again at \
                 least 2 s later), declined (memory tier only: first fetch since the log filled up)",
                &["decision"],
            )?,
            cache_disk_lost_blocks: counter_vec(
                &r,
                "cache_disk_lost_blocks_total",
                "Blocks the disk tier held and lost, by how: let_go (unread when the log's tail came, let go by \
                 the second chance; counted when fetched again), evicted (foyer evicted them ahead of the proxy's \
                 estimate of the tail: their second chance found them gone, or they were still placed in the \
                 proxy's order; counted when fetched again), dropped (their last disk write was dropped and \
                 they left the memory tier before it was repaired; counted when fetched again)",
                &["how"],
            )?,
            cache_disk_rewritten_blocks: counter(
                &r,
                "cache_disk_rewritten_blocks_total",
                "Blocks read since they were written and come near the tail of the log, written again so they \
                 stay on disk (and blocks found on disk without a place in the order, at their first read)",
            )?,
            cache_disk_rewritten_bytes: counter(
                &r,
                "cache_disk_rewritten_bytes_total",
                "Bytes of blocks written again to keep them on disk",
            )?,
            cache_disk_dropped_writes: counter(
                &r,
                "cache_disk_dropped_writes_total",
                "Block writes the disk tier dropped because its write queue was full (the proxy's write feed's \
                 drops plus foyer's own count); a dropped new block is written again \
                 (b2proxy_cache_disk_write_retries_total)",
            )?,
            cache_disk_write_retries: counter(
                &r,
                "cache_disk_write_retries_total",
                "Blocks written to the disk tier again because their first write was dropped",
            )?,
            cache_errors: counter_vec(
                &r,
                "cache_errors_total",
                "Cache tier errors by kind: io, panic, probe (disk tier faults: it degrades to memory-only), \
                 corrupt, bad_length (an entry read back wrong: dropped and fetched again), read",
                &["kind"],
            )?,
            cache_disk_degraded: int_gauge(
                &r,
                "cache_disk_degraded",
                "1 while the disk tier has failed (or could not be set up) and the cache runs from memory only",
            )?,
            cache_hot_set_bytes: int_gauge(
                &r,
                "cache_hot_set_bytes",
                "Estimated hot set: bytes of blocks read again within cache.hot_set_window (sampled); the disk \
                 tier (or the memory tier without one) should be 1.5 times larger",
            )?,
            cache_hot_refetched_bytes: counter(
                &r,
                "cache_hot_refetched_bytes_total",
                "Estimated bytes of blocks read again within cache.hot_set_window that were in no tier and went \
                 upstream again: the cache is too small for its hot set",
            )?,
            response_buffer_bytes: int_gauge(
                &r,
                "response_buffer_bytes",
                "Response body bytes held in memory, waiting to be taken by the clients' sockets \
                 (bounded by server.max_response_buffer)",
            )?,
            send_timeouts: counter(
                &r,
                "send_timeouts_total",
                "Connections closed because a response write made no progress for server.send_timeout",
            )?,
            upstream_requests: counter_vec(
                &r,
                "upstream_requests_total",
                "Upstream requests by operation and outcome: the HTTP status, an error kind, or `cancelled` (dropped before an answer: a hedge loser, an attempt past its timeout or the read deadline)",
                &["op", "status"],
            )?,
            upstream_duration: histogram_vec(
                &r,
                "upstream_request_duration_seconds",
                "Upstream request latency to the last byte, by operation",
                &["op"],
            )?,
            upstream_bytes: counter_vec(
                &r,
                "upstream_bytes_total",
                "Body bytes of successful (2xx) upstream answers by operation, counted as they arrive \
                 (a body cut short counts what arrived; error bodies are not counted)",
                &["op"],
            )?,
            upstream_retries: counter_vec(
                &r,
                "upstream_retries_total",
                "Upstream attempts retried, by reason",
                &["reason"],
            )?,
            upstream_inflight: int_gauge(&r, "upstream_inflight", "Upstream requests in flight")?,
            upstream_concurrency_limit: int_gauge(
                &r,
                "upstream_concurrency_limit",
                "Upstream requests allowed in flight now (adapts between fetch.min_concurrency and fetch.max_concurrency)",
            )?,
            upstream_rate_limit: gauge(
                &r,
                "upstream_rate_limit_rps",
                "Upstream requests allowed to start per second now (0: no pace); cut when B2 throttles, given back after",
            )?,
            upstream_queued: int_gauge(
                &r,
                "upstream_queued",
                "Upstream requests waiting for a concurrency slot or the pace",
            )?,
            upstream_queue_wait: histogram_vec(
                &r,
                "upstream_queue_wait_seconds",
                "Time upstream requests waited for admission, by class (continuing lookups, new reads, background read-ahead)",
                &["class"],
            )?,
            upstream_delayed: counter(
                &r,
                "upstream_delayed_total",
                "Upstream requests that waited for admission (concurrency or pace) before they were sent",
            )?,
            upstream_promoted: counter(
                &r,
                "upstream_promoted_total",
                "Waiting upstream requests sent ahead of their class because they had waited too long",
            )?,
            upstream_throttled: counter(
                &r,
                "upstream_throttled_total",
                "Upstream answers that throttled (429, or 503 with Retry-After)",
            )?,
            upstream_circuit_state: int_gauge(
                &r,
                "upstream_circuit_state",
                "Upstream circuit breaker: 0 closed (misses go upstream), 1 open (misses fail fast until a background probe succeeds)",
            )?,
            upstream_connections: counter(
                &r,
                "upstream_connections_opened_total",
                "TCP connections opened to upstream (steady state should open none: the pool stays warm)",
            )?,
            hedges_issued: counter(
                &r,
                "hedges_issued_total",
                "Hedged (duplicate) upstream requests sent",
            )?,
            hedges_won: counter(
                &r,
                "hedges_won_total",
                "Hedged upstream requests that answered before the original",
            )?,
            hedge_threshold: gauge(
                &r,
                "hedge_threshold_seconds",
                "Current latency after which an upstream request is hedged",
            )?,
            singleflight_joins: counter(
                &r,
                "singleflight_joins_total",
                "Block reads that joined an upstream fetch already in flight",
            )?,
            readahead_blocks: counter_vec(
                &r,
                "readahead_blocks_total",
                "Blocks fetched ahead of the reader: fetched, then used or wasted (evicted or never read)",
                &["outcome"],
            )?,
            b2_transactions: counter_vec(
                &r,
                "b2_transactions_total",
                "Billable B2 transactions, by class (B: downloads, C: authorize/list)",
                &["class"],
            )?,
            b2_cost: {
                let c = Counter::with_opts(
                    Opts::new(
                        "b2_estimated_cost_dollars_total",
                        "Estimated B2 transaction cost in dollars, before the daily free allowance",
                    )
                    .namespace("b2proxy"),
                )?;
                r.register(Box::new(c.clone()))?;
                c
            },
            cache_memory_bytes: int_gauge(
                &r,
                "cache_memory_bytes",
                "Bytes held by the memory tier (data plus per-entry overhead)",
            )?,
            cache_disk_capacity_bytes: int_gauge(
                &r,
                "cache_disk_capacity_bytes",
                "Size of the disk tier (cache.disk; 0 without one, or when it could not be set up)",
            )?,
            catalog_files: int_gauge(&r, "catalog_files", "Files in the catalog")?,
            catalog_last_refresh: gauge(
                &r,
                "catalog_last_refresh_timestamp_seconds",
                "Unix time of the last successful catalog refresh",
            )?,
            catalog_refresh_errors: counter(
                &r,
                "catalog_refresh_errors_total",
                "Catalog refreshes that failed",
            )?,
            fetch_errors: counter_vec(
                &r,
                "fetch_errors_total",
                "Upstream reads that failed, by reason: the last attempt's cause, or `deadline` (fetch.read_deadline passed), or `circuit_open` (failed fast)",
                &["reason"],
            )?,
            build_info: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "build_info",
                        "Always 1; the labels say which build runs (version, git commit)",
                    )
                    .namespace("b2proxy"),
                    &["version", "commit"],
                )?;
                r.register(Box::new(g.clone()))?;
                g.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("B2FS_GIT_COMMIT")])
                    .set(1);
                g
            },
            registry: with_process_collector(r)?,
        }
        .with_known_labels())
    }

    /// Creates the label sets the dashboard queries, so every series exists (at 0) from the start.
    fn with_known_labels(self) -> Self {
        for tier in ["memory", "disk"] {
            self.cache_hits.with_label_values(&[tier]);
            self.cache_hit_bytes.with_label_values(&[tier]);
        }
        for decision in ["free_space", "read_before", "declined"] {
            self.cache_disk_admissions.with_label_values(&[decision]);
        }
        for how in ["let_go", "evicted", "dropped"] {
            self.cache_disk_lost_blocks.with_label_values(&[how]);
        }
        for class in ["B", "C"] {
            self.b2_transactions.with_label_values(&[class]);
        }
        for outcome in ["fetched", "used", "wasted"] {
            self.readahead_blocks.with_label_values(&[outcome]);
        }
        for reason in [
            "timeout",
            "connect",
            "429",
            "5xx",
            "body",
            "bad_response",
            "token_expired",
        ] {
            self.upstream_retries.with_label_values(&[reason]);
        }
        for op in ["download", "list_file_names", "authorize"] {
            self.upstream_duration.with_label_values(&[op]);
        }
        for outcome in ["206", "cancelled"] {
            self.upstream_requests
                .with_label_values(&["download", outcome]);
        }
        self.upstream_bytes.with_label_values(&["download"]);
        for reason in [
            "timeout",
            "connect",
            "5xx",
            "deadline",
            "circuit_open",
            "not_found",
        ] {
            self.fetch_errors.with_label_values(&[reason]);
        }
        for class in ["continuing", "new", "background"] {
            self.upstream_queue_wait.with_label_values(&[class]);
        }
        for kind in [
            "read",
            "io",
            "panic",
            "probe",
            "setup",
            "corrupt",
            "bad_length",
        ] {
            self.cache_errors.with_label_values(&[kind]);
        }
        for outcome in ["hit_memory", "hit_disk", "miss", "error", "cancelled"] {
            self.requests.with_label_values(&["file", outcome]);
            self.request_duration.with_label_values(&["file", outcome]);
        }
        self
    }

    /// Counts one billable B2 transaction and its estimated price.
    pub fn b2_transaction(&self, class: TxClass) {
        let (label, price) = match class {
            TxClass::B => ("B", CLASS_B_PRICE),
            TxClass::C => ("C", CLASS_C_PRICE),
        };
        self.b2_transactions.with_label_values(&[label]).inc();
        self.b2_cost.inc_by(price);
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README's metrics table is the users' reference: every family the proxy exports is in it.
    #[test]
    fn readme_lists_every_metric() {
        let readme = include_str!("../../README.md");
        let m = Metrics::new().expect("metrics");
        let missing: Vec<String> = m
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .filter(|n| n.starts_with("b2proxy_") && !readme.contains(&format!("`{n}`")))
            .collect();
        assert!(missing.is_empty(), "README does not list {missing:?}");
    }

    #[test]
    fn build_info_and_process_series_are_exported() {
        let text = Metrics::new().expect("metrics").render();
        let want = format!(
            "b2proxy_build_info{{commit=\"{}\",version=\"{}\"}} 1",
            env!("B2FS_GIT_COMMIT"),
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&want), "{text}");
        #[cfg(target_os = "linux")]
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(name), "no {name}in {text}");
        }
    }
}
