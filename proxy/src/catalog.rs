//! The catalog: the bucket's file list, held in memory and refreshed in the background.
//!
//! Requests look names up here and never go upstream to list. Only names in the catalog are served, which is
//! also what confines the proxy to its bucket and prefix. A failed refresh keeps the previous list; a read that
//! finds its file gone or changed upstream asks for an early refresh (rate-limited: every listing is a billed
//! Class C call).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::sync::Mutex;
use crate::upstream::{ObjectInfo, ObjectSource, UpstreamError};

/// Early refreshes (after a file changed upstream) happen at most this often.
const MIN_EARLY_REFRESH_GAP: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Default)]
pub struct CatalogStatus {
    pub loaded: bool,
    pub files: usize,
    pub last_refresh: Option<SystemTime>,
    pub last_error: Option<String>,
}

pub struct Catalog {
    source: Arc<dyn ObjectSource>,
    /// Swapped whole on refresh; readers clone the Arc under the lock (nanoseconds) and iterate outside it.
    files: Mutex<Arc<BTreeMap<String, Arc<ObjectInfo>>>>,
    status: Mutex<CatalogStatus>,
    wake: Notify,
    metrics: Arc<Metrics>,
}

impl Catalog {
    pub fn new(source: Arc<dyn ObjectSource>, metrics: Arc<Metrics>) -> Self {
        Self {
            source,
            files: Mutex::new(Arc::new(BTreeMap::new())),
            status: Mutex::new(CatalogStatus::default()),
            wake: Notify::new(),
            metrics,
        }
    }

    /// The current file list (shared, not copied): what a listing iterates over without holding a lock.
    pub fn snapshot(&self) -> Arc<BTreeMap<String, Arc<ObjectInfo>>> {
        self.files.lock().clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<ObjectInfo>> {
        self.snapshot().get(name).cloned()
    }

    /// Files whose name starts with `prefix`, in name order.
    pub fn list(&self, prefix: &str) -> Vec<Arc<ObjectInfo>> {
        self.snapshot()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn status(&self) -> CatalogStatus {
        self.status.lock().clone()
    }

    /// Loads the list from upstream now and swaps it in.
    pub async fn refresh(&self) -> Result<usize, UpstreamError> {
        let result = self.source.list().await;
        let mut status = self.status.lock();
        match result {
            Ok(list) => {
                let n = list.len();
                let map: BTreeMap<_, _> = list
                    .into_iter()
                    .map(|o| (o.name.clone(), Arc::new(o)))
                    .collect();
                *self.files.lock() = Arc::new(map);
                let now = SystemTime::now();
                status.loaded = true;
                status.files = n;
                status.last_refresh = Some(now);
                status.last_error = None;
                self.metrics.catalog_files.set(n as i64);
                self.metrics.catalog_last_refresh.set(
                    now.duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0),
                );
                Ok(n)
            }
            Err(e) => {
                status.last_error = Some(e.to_string());
                self.metrics.catalog_refresh_errors.inc();
                Err(e)
            }
        }
    }

    /// Asks the background loop for an early refresh (e.g. a file was replaced upstream).
    pub fn request_refresh(&self) {
        self.wake.notify_one();
    }

    /// Refreshes every `interval` until cancelled; after a failure retries sooner, backing off to `interval`.
    pub async fn run(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        let mut failures = 0u32;
        let mut last_attempt: Option<Instant> = None;
        loop {
            if let Some(t) = last_attempt {
                let gap = MIN_EARLY_REFRESH_GAP.saturating_sub(t.elapsed());
                if !gap.is_zero() {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(gap) => {}
                    }
                }
            }
            last_attempt = Some(Instant::now());
            let wait = match self.refresh().await {
                Ok(n) => {
                    if failures > 0 {
                        tracing::info!(
                            files = n,
                            "catalog loaded after {failures} failed attempts"
                        );
                    } else {
                        tracing::debug!(files = n, "catalog refreshed");
                    }
                    failures = 0;
                    interval
                }
                Err(e) => {
                    failures += 1;
                    let wait = Duration::from_secs(1u64 << failures.min(6)).min(interval);
                    tracing::warn!(error = %e, retry_in = ?wait, "catalog refresh failed");
                    wait
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}
