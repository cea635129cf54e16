//! The catalog: the bucket's file list, held in memory and refreshed in the background.
//!
//! Requests look names up here and never go upstream to list. Only names in the catalog are served, which is
//! also what confines the proxy to its bucket and prefix. A failed refresh keeps the previous list; a read that
//! finds its file gone or changed upstream asks for an early refresh (rate-limited: every listing is a billed
//! Class C call).
//!
//! Memory: a million-file bucket is most of the proxy's memory. The index is a vector of `Arc<ObjectInfo>`
//! sorted by name (8 bytes a file beside the file itself; each name is stored once, in its `ObjectInfo`), and a
//! refresh builds the new vector as the listing's pages arrive, reusing the current catalog's `Arc<ObjectInfo>`
//! for every file that did not change. So a refresh of an unchanged bucket adds the new vector (8 MB for a
//! million files) and one listing page to the memory in use, not a second copy of the list; readers keep using
//! the current snapshot until the new one is swapped in whole.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::sync::Mutex;
use crate::upstream::{ObjectInfo, ObjectSource, UpstreamError};

/// Early refreshes (after a file changed upstream) happen at most this often.
const MIN_EARLY_REFRESH_GAP: Duration = Duration::from_secs(5);

/// The catalog's files, sorted by name, each name once: one snapshot, shared by readers and replaced whole by a
/// refresh. Lookups and listing pages are binary searches.
#[derive(Debug, Default)]
pub struct Files(Vec<Arc<ObjectInfo>>);

impl Files {
    /// Sorts `files` by name; of a name listed twice (no store does) the last one listed is kept, as a map
    /// would keep it.
    pub fn from_listing(mut files: Vec<Arc<ObjectInfo>>) -> Self {
        // A store's listing is sorted already; checking first spares the sort's scratch buffer.
        if !files.is_sorted_by(|a, b| a.name <= b.name) {
            files.sort_by(|a, b| a.name.cmp(&b.name));
        }
        // `dedup_by` keeps the first of a run; swapping makes the kept slot hold the later listing.
        files.dedup_by(|later, kept| {
            let same = later.name == kept.name;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        files.shrink_to_fit();
        Self(files)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ObjectInfo>> {
        self.0
            .binary_search_by(|o| o.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.0[i])
    }

    /// Every file, in name order.
    pub fn iter(&self) -> std::slice::Iter<'_, Arc<ObjectInfo>> {
        self.0.iter()
    }

    /// The files whose name starts with `prefix` and, with `after`, comes strictly after it, in name order: a
    /// listing page's files, found by binary search from the bound rather than by skipping.
    pub fn page<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&str>,
    ) -> impl Iterator<Item = &'a Arc<ObjectInfo>> + use<'a> {
        let from = match after {
            Some(a) if a >= prefix => self.0.partition_point(|o| o.name.as_str() <= a),
            _ => self.0.partition_point(|o| o.name.as_str() < prefix),
        };
        self.0[from..]
            .iter()
            .take_while(move |o| o.name.starts_with(prefix))
    }
}

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
    files: Mutex<Arc<Files>>,
    status: Mutex<CatalogStatus>,
    wake: Notify,
    metrics: Arc<Metrics>,
}

impl Catalog {
    pub fn new(source: Arc<dyn ObjectSource>, metrics: Arc<Metrics>) -> Self {
        Self {
            source,
            files: Mutex::new(Arc::new(Files::default())),
            status: Mutex::new(CatalogStatus::default()),
            wake: Notify::new(),
            metrics,
        }
    }

    /// The current file list (shared, not copied): what a listing iterates over without holding a lock.
    pub fn snapshot(&self) -> Arc<Files> {
        self.files.lock().clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<ObjectInfo>> {
        self.snapshot().get(name).cloned()
    }

    /// Files whose name starts with `prefix`, in name order.
    pub fn list(&self, prefix: &str) -> Vec<Arc<ObjectInfo>> {
        self.snapshot().page(prefix, None).cloned().collect()
    }

    pub fn status(&self) -> CatalogStatus {
        self.status.lock().clone()
    }

    /// Loads the list from upstream now and swaps it in; returns how many files the catalog holds.
    ///
    /// The new set is built as the pages arrive, beside the current one, which readers keep using meanwhile
    /// (no lock is held while listing). A file whose name, id, size and time are unchanged keeps its current
    /// `Arc<ObjectInfo>`, so an unchanged bucket costs the new set's nodes, not a second copy of the list. A
    /// failed listing drops what it built and leaves the current catalog as it was.
    pub async fn refresh(&self) -> Result<usize, UpstreamError> {
        let current = self.snapshot();
        // Sized for a bucket that did not grow, so the vector is not reallocated (and copied) as it fills.
        let mut next = Vec::with_capacity(current.len());
        let result = self
            .source
            .list_into(&mut |info: ObjectInfo| {
                next.push(match current.get(&info.name) {
                    Some(o) if **o == info => o.clone(),
                    _ => Arc::new(info),
                });
            })
            .await;
        drop(current);
        match result {
            Ok(_) => {
                let next = Files::from_listing(next);
                let n = next.len();
                let replaced = {
                    let mut status = self.status.lock();
                    let replaced = std::mem::replace(&mut *self.files.lock(), Arc::new(next));
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
                    replaced
                };
                // Freeing a big replaced catalog (a million files, all changed) takes tens of milliseconds: not
                // under the locks readers take, and not on a runtime worker that serves reads.
                tokio::task::spawn_blocking(move || drop(replaced));
                Ok(n)
            }
            Err(e) => {
                self.status.lock().last_error = Some(e.to_string());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::mock::MockSource;

    fn catalog(src: &Arc<MockSource>) -> Catalog {
        Catalog::new(src.clone(), Arc::new(Metrics::new().expect("metrics")))
    }

    fn names(files: &Files) -> Vec<&str> {
        files.iter().map(|o| o.name.as_str()).collect()
    }

    fn entry<'a>(files: &'a Files, name: &str) -> &'a Arc<ObjectInfo> {
        files.get(name).unwrap_or_else(|| panic!("{name} missing"))
    }

    #[tokio::test]
    async fn a_refresh_shares_unchanged_files_replaces_changed_ones_and_drops_removed_ones() {
        let src = MockSource::new();
        src.set_list_page(2);
        for n in ["a", "b", "c", "d", "e"] {
            src.add_file(n, vec![0u8; 10]);
        }
        let cat = catalog(&src);
        assert_eq!(cat.refresh().await.expect("load"), 5);
        let before = cat.snapshot();

        let b2 = src.add_file("b", vec![1u8; 20]);
        assert!(src.remove_file("d"));
        let f = src.add_file("f", vec![2u8; 5]);
        assert_eq!(cat.refresh().await.expect("refresh"), 5);
        let after = cat.snapshot();

        assert_eq!(names(&after), ["a", "b", "c", "e", "f"]);
        for n in ["a", "c", "e"] {
            assert!(
                Arc::ptr_eq(entry(&before, n), entry(&after, n)),
                "{n} is unchanged but was copied"
            );
        }
        assert_eq!(**entry(&after, "b"), b2);
        assert_ne!(entry(&before, "b").id, b2.id);
        assert_eq!(**entry(&after, "f"), f);
        assert!(cat.get("d").is_none());
        assert_eq!(cat.list(""), after.iter().cloned().collect::<Vec<_>>());
        assert_eq!(cat.status().files, 5);
        assert_eq!(cat.metrics.catalog_files.get(), 5);
        // A snapshot taken before the refresh still reads the old list (a listing in progress finishes on it).
        assert_eq!(names(&before), ["a", "b", "c", "d", "e"]);
    }

    #[tokio::test]
    async fn a_refresh_failing_on_page_two_keeps_the_old_catalog_whole() {
        let src = MockSource::new();
        src.set_list_page(2);
        for n in ["a", "b", "c", "d", "e"] {
            src.add_file(n, vec![0u8; 10]);
        }
        let cat = catalog(&src);
        cat.refresh().await.expect("load");
        let before = cat.snapshot();
        let old_a = entry(&before, "a").clone();

        // Changes on the page that is handed over (a), on the page that fails (d) and after it (z).
        let new_a = src.add_file("a", vec![1u8; 10]);
        assert!(src.remove_file("d"));
        src.add_file("z", vec![1u8; 10]);
        src.fail_listing_at_page(
            1,
            UpstreamError::Status {
                status: 503,
                code: "service_unavailable".into(),
                message: "busy".into(),
                retry_after: None,
            },
        );
        let pages = src.list_pages();
        let e = cat.refresh().await.expect_err("page 2 fails");
        assert!(
            matches!(e, UpstreamError::Status { status: 503, .. }),
            "{e}"
        );
        assert_eq!(src.list_pages(), pages + 1, "page 1 was handed over first");

        assert!(
            Arc::ptr_eq(&before, &cat.snapshot()),
            "the catalog was swapped"
        );
        assert!(Arc::ptr_eq(&cat.get("a").expect("a"), &old_a));
        assert!(cat.get("d").is_some() && cat.get("z").is_none());
        let st = cat.status();
        assert!(
            st.loaded && st.files == 5 && st.last_error.is_some(),
            "{st:?}"
        );
        assert_eq!(cat.metrics.catalog_refresh_errors.get(), 1);
        assert_eq!(cat.metrics.catalog_files.get(), 5);

        // The next refresh takes every change.
        assert_eq!(cat.refresh().await.expect("refresh"), 5);
        assert_eq!(names(&cat.snapshot()), ["a", "b", "c", "e", "z"]);
        assert_eq!(*cat.get("a").expect("a"), new_a);
        assert!(cat.status().last_error.is_none());
    }

    fn files(names: &[&str]) -> Files {
        Files::from_listing(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    Arc::new(ObjectInfo {
                        name: n.to_string(),
                        id: format!("id_{i}").into(),
                        size: 1,
                        modified_ms: 0,
                    })
                })
                .collect(),
        )
    }

    #[test]
    fn pages_start_strictly_after_the_bound_within_the_prefix() {
        let files = files(&["a", "p/1", "p/2", "p/3", "q"]);
        let page = |prefix: &str, after: Option<&str>| -> Vec<String> {
            files.page(prefix, after).map(|o| o.name.clone()).collect()
        };
        assert_eq!(page("p/", None), ["p/1", "p/2", "p/3"]);
        assert_eq!(page("p/", Some("p/1")), ["p/2", "p/3"]);
        // A bound between names, before the prefix, and past it.
        assert_eq!(page("p/", Some("p/15")), ["p/2", "p/3"]);
        assert_eq!(page("p/", Some("a")), ["p/1", "p/2", "p/3"]);
        assert!(page("p/", Some("p/3")).is_empty());
        assert_eq!(page("", Some("p/3")), ["q"]);
        assert_eq!(page("", None).len(), 5);
        assert!(page("r", None).is_empty());
    }

    #[test]
    fn a_listing_in_any_order_is_sorted_and_a_name_listed_twice_keeps_its_last_version() {
        let f = files(&["c", "a", "b", "a", "c", "a"]);
        assert_eq!(names(&f), ["a", "b", "c"]);
        assert_eq!(&*f.get("a").expect("a").id, "id_5");
        assert_eq!(&*f.get("c").expect("c").id, "id_4");
        assert!(f.get("d").is_none() && f.get("").is_none());
    }
}
