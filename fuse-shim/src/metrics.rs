//! Prometheus metrics of the shim (prefix `b2fs_shim_`), and the optional `--metrics ADDR` endpoint.
//!
//! The counters are always kept (an atomic add per read is free next to an HTTP round trip); the endpoint
//! only exists when asked for. It answers `GET /metrics` in the Prometheus text format, with the `process_*`
//! series of the prometheus crate's process collector and `b2fs_shim_build_info` beside the shim's own.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The operations `b2fs_shim_metadata_requests_total` counts (each series exists from the start at 0).
const METADATA_OPS: [&str; 4] = ["lookup", "getattr", "readdir", "readdirplus"];

/// All metrics of one shim process.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub reads: IntCounter,
    pub read_bytes: IntCounter,
    pub read_errors: IntCounterVec,
    pub read_seconds: Histogram,
    pub reads_in_flight: IntGauge,
    pub opens: IntCounter,
    pub tree_files: IntGauge,
    pub tree_refreshes: IntCounterVec,
    pub tree_last_success: IntGauge,
    /// Metadata requests from the kernel, by operation (`lookup`, `getattr`, `readdir`, `readdirplus`).
    pub metadata_ops: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reads = IntCounter::new("b2fs_shim_reads_total", "read() calls answered")?;
        let read_bytes = IntCounter::new(
            "b2fs_shim_read_bytes_total",
            "Bytes returned by read() calls",
        )?;
        let read_errors = IntCounterVec::new(
            Opts::new(
                "b2fs_shim_read_errors_total",
                "read() calls that failed, by errno name",
            ),
            &["errno"],
        )?;
        // From a memory-cache hit on the proxy (sub-millisecond) to the request timeout.
        let read_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "b2fs_shim_read_duration_seconds",
                "Latency of read() calls that went to the proxy",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
                30.0,
            ]),
        )?;
        let reads_in_flight = IntGauge::new(
            "b2fs_shim_reads_in_flight",
            "read() calls waiting for the proxy",
        )?;
        let opens = IntCounter::new("b2fs_shim_opens_total", "open() calls on files")?;
        let tree_files = IntGauge::new("b2fs_shim_tree_files", "Files in the mounted tree")?;
        let tree_refreshes = IntCounterVec::new(
            Opts::new(
                "b2fs_shim_tree_refreshes_total",
                "Refreshes of the file list from the proxy, by result (ok, error)",
            ),
            &["result"],
        )?;
        let tree_last_success = IntGauge::new(
            "b2fs_shim_tree_last_success_timestamp_seconds",
            "Unix time of the last successful refresh of the file list",
        )?;
        registry.register(Box::new(reads.clone()))?;
        registry.register(Box::new(read_bytes.clone()))?;
        registry.register(Box::new(read_errors.clone()))?;
        registry.register(Box::new(read_seconds.clone()))?;
        registry.register(Box::new(reads_in_flight.clone()))?;
        registry.register(Box::new(opens.clone()))?;
        registry.register(Box::new(tree_files.clone()))?;
        registry.register(Box::new(tree_refreshes.clone()))?;
        registry.register(Box::new(tree_last_success.clone()))?;
        let metadata_ops = IntCounterVec::new(
            Opts::new(
                "b2fs_shim_metadata_requests_total",
                "Metadata requests from the kernel, by operation (lookup, getattr, readdir, readdirplus)",
            ),
            &["op"],
        )?;
        for op in METADATA_OPS {
            metadata_ops.with_label_values(&[op]);
        }
        registry.register(Box::new(metadata_ops.clone()))?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "b2fs_shim_build_info",
                "Always 1; the labels say which build runs (version, git commit)",
            ),
            &["version", "commit"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("B2FS_GIT_COMMIT")])
            .set(1);
        registry.register(Box::new(build_info))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            registry,
            reads,
            read_bytes,
            read_errors,
            read_seconds,
            reads_in_flight,
            opens,
            tree_files,
            tree_refreshes,
            tree_last_success,
            metadata_ops,
        })
    }

    /// Count one metadata request from the kernel.
    pub fn metadata_op(&self, op: &'static str) {
        self.metadata_ops.with_label_values(&[op]).inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# error encoding metrics: {e}\n"))
    }
}

/// A short name for an errno, for the `errno` label.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::ENOENT => "ENOENT",
        libc::EACCES => "EACCES",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        _ => "other",
    }
}

/// Serve `GET /metrics` on `addr` until the process exits.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    axum::serve(listener, app).await
}

/// Bind the metrics listener (done before mounting, so a bad address fails the start, not later).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format() {
        let m = Metrics::new().expect("metrics");
        m.reads.inc();
        m.read_bytes.inc_by(8191);
        m.read_errors
            .with_label_values(&[errno_name(libc::EIO)])
            .inc();
        m.read_seconds.observe(0.003);
        m.metadata_op("readdirplus");
        let text = m.render();
        assert!(text.contains("b2fs_shim_reads_total 1"), "{text}");
        assert!(text.contains("b2fs_shim_metadata_requests_total{op=\"readdirplus\"} 1"));
        assert!(text.contains("b2fs_shim_metadata_requests_total{op=\"lookup\"} 0"));
        assert!(text.contains("b2fs_shim_read_bytes_total 8191"));
        assert!(text.contains("b2fs_shim_read_errors_total{errno=\"EIO\"} 1"));
        assert!(text.contains("b2fs_shim_read_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("b2fs_shim_build_info{commit=\""), "{text}");
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
    }
}
