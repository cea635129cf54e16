//! Health of the disk tier: checks before it is opened, fault detection while it runs, and the switch to
//! memory-only when it fails.
//!
//! foyer 0.22 does not hand disk I/O errors to its caller: a failed write is logged (`tracing` ERROR) and
//! dropped, and the block engine then reuses a region it already handed on, which trips `assert!(inserted)` in
//! its block manager, poisons the manager's lock and takes the flusher down with it (its I/O engine and device
//! traits take types foyer does not export, so they cannot be wrapped). So faults are learnt from four places,
//! any of which marks the tier degraded, after which the cache uses foyer's memory tier only and never touches
//! the disk engine again (until a restart):
//! 1. foyer's own ERROR events, through [`FoyerFaultLayer`] (the daemon installs it next to its log output);
//! 2. panics raised in foyer code, through a panic hook (chained to the previous one) that [`register`] installs;
//! 3. errors and panics that reach the cache's own calls (`catch_unwind` around them);
//! 4. a probe every [`PROBE_EVERY`] that opens each cache file for writing (an immutable file, a read-only
//!    remount or a deleted directory fail it before foyer's next write does).
//!
//! A full disk is prevented rather than detected: the cache files are preallocated (`fallocate`) when the tier
//! opens, so a filesystem filled by someone else cannot make a cache write fail with ENOSPC, and a `cache.disk`
//! larger than the filesystem can hold is found at start.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::{Duration, SystemTime};

use prometheus::{IntCounterVec, IntGauge};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// How often the cache files are checked for writability.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);
/// The names foyer's filesystem device gives its files (one per region).
const FOYER_FILE_PREFIX: &str = "foyer-storage-direct-fs-";
/// Longest fault message kept for /healthz.
const MAX_REASON: usize = 400;

/// What /healthz and the metrics say about the disk tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskTierState {
    /// `cache.disk = 0`.
    Off,
    Ok,
    /// Serving from memory only.
    Degraded {
        since: SystemTime,
        reason: String,
    },
}

/// The disk tier's health, shared by the cache, its probe and the process-wide fault signals.
pub struct DiskHealth {
    degraded: AtomicBool,
    reason: Mutex<Option<(SystemTime, String)>>,
    gauge: IntGauge,
    errors: IntCounterVec,
}

impl DiskHealth {
    pub fn new(gauge: IntGauge, errors: IntCounterVec) -> Arc<Self> {
        Arc::new(Self {
            degraded: AtomicBool::new(false),
            reason: Mutex::new(None),
            gauge,
            errors,
        })
    }

    /// True once the tier has failed: use the memory tier only.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Records a disk fault of `kind` (a `b2proxy_cache_errors_total` label); the first one degrades the tier.
    pub fn fault(&self, kind: &'static str, message: &str) {
        self.errors.with_label_values(&[kind]).inc();
        if self.degraded.swap(true, Ordering::AcqRel) {
            tracing::debug!(kind, message, "further disk cache fault");
            return;
        }
        let mut reason = message.to_string();
        truncate(&mut reason, MAX_REASON);
        self.gauge.set(1);
        // A tier unusable at start has been reported by the caller, with the key to fix.
        if kind != "setup" {
            tracing::warn!(
            kind,
            reason = %reason,
            "disk cache tier failed: serving from the memory tier only until restart (reads stay exact; \
             misses go upstream). Fix the disk, then restart b2-proxy"
            );
        }
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = Some((SystemTime::now(), reason));
    }

    /// A disk entry failed its checksum (foyer drops it; the block is fetched again).
    pub fn corrupt(&self) {
        self.errors.with_label_values(&["corrupt"]).inc();
    }

    pub fn state(&self) -> DiskTierState {
        if !self.is_degraded() {
            return DiskTierState::Ok;
        }
        let guard = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        let (since, reason) = guard
            .clone()
            .unwrap_or_else(|| (SystemTime::now(), "failing".into()));
        DiskTierState::Degraded { since, reason }
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
}

/// Disk tiers open in this process. A fault signal without an owner (a foyer log line or panic) goes to all of
/// them: one per process in production; tests running several proxies accept the over-reach.
static LIVE: Mutex<Vec<Weak<DiskHealth>>> = Mutex::new(Vec::new());
static PANIC_HOOK: Once = Once::new();

/// Makes `health` receive foyer's fault signals; installs the panic hook on first use.
pub fn register(health: &Arc<DiskHealth>) {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(loc) = info.location()
                && loc.file().contains("foyer")
            {
                let what = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                broadcast(|h| {
                    h.fault(
                        "panic",
                        &format!("foyer panicked at {}:{}: {what}", loc.file(), loc.line()),
                    )
                });
            }
            previous(info);
        }));
    });
    let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    live.retain(|w| w.strong_count() > 0);
    live.push(Arc::downgrade(health));
}

fn broadcast(f: impl Fn(&DiskHealth)) {
    // Collected first: `f` logs, and the log layer may call back in here.
    let live: Vec<Arc<DiskHealth>> = LIVE
        .lock()
        .map(|l| l.iter().filter_map(Weak::upgrade).collect())
        .unwrap_or_default();
    for h in live {
        f(&h);
    }
}

/// A `tracing` layer that turns foyer's ERROR events (failed disk reads and writes, a dead flusher) into disk
/// faults, and its "checksum mismatch, entry removed" warnings into the `corrupt` error count. The daemon adds
/// it to its subscriber; it sees what the log filter lets through (foyer's warnings at the default `info`).
#[derive(Debug, Clone, Copy, Default)]
pub struct FoyerFaultLayer;

/// The event's message and its error field, on one line (foyer's errors print over several).
#[derive(Default)]
struct MessageVisitor {
    message: String,
    error: String,
}

impl Visit for MessageVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "e" | "error" if self.error.is_empty() => self.error = format!("{value:?}"),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "e" | "error" if self.error.is_empty() => self.error = value.to_string(),
            _ => {}
        }
    }
}

impl MessageVisitor {
    fn line(&self) -> String {
        let mut out = self.message.clone();
        if !self.error.is_empty() {
            let _ = write!(out, ": {}", self.error.replace("disabled backtrace", ""));
        }
        let mut line = out
            .split_whitespace()
            .filter(|w| *w != "Backtrace:")
            .collect::<Vec<_>>()
            .join(" ");
        truncate(&mut line, MAX_REASON);
        line
    }
}

impl<S: Subscriber> Layer<S> for FoyerFaultLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if !meta.target().starts_with("foyer") {
            return;
        }
        let level = *meta.level();
        if level > Level::WARN {
            return;
        }
        let mut v = MessageVisitor::default();
        event.record(&mut v);
        let msg = v.line();
        if level == Level::ERROR {
            broadcast(|h| h.fault("io", &format!("foyer: {msg}")));
        } else if msg.contains("deserialize") || msg.contains("recovering block") {
            broadcast(DiskHealth::corrupt);
        }
    }
}

/// Why the disk tier cannot be used, with the config key to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupProblem {
    pub key: &'static str,
    pub message: String,
}

fn problem(key: &'static str, message: String) -> SetupProblem {
    SetupProblem { key, message }
}

/// The directory exists (created if need be) and files can be created in it. (No data is written: a full
/// filesystem must not stop a restart whose cache files are already allocated.)
pub fn check_dir(dir: &Path) -> Result<(), SetupProblem> {
    std::fs::create_dir_all(dir).map_err(|e| {
        problem(
            "cache.disk_dir",
            format!("cannot create {}: {e}", dir.display()),
        )
    })?;
    let probe = dir.join(".b2-proxy-write-check");
    let written = std::fs::File::create(&probe);
    let _ = std::fs::remove_file(&probe);
    written.map(drop).map_err(|e| {
        problem(
            "cache.disk_dir",
            format!(
                "{} is not writable by this process: {e} (fix its owner or mode, remount it read-write, or point \
                 cache.disk_dir elsewhere)",
                dir.display()
            ),
        )
    })
}

/// foyer's cache files in `dir`.
pub fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(FOYER_FILE_PREFIX)
        })
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// The filesystem of `dir` can hold `disk_bytes` of cache (counting what the cache files already hold).
pub fn check_space(dir: &Path, disk_bytes: u64) -> Result<(), SetupProblem> {
    use std::os::unix::fs::MetadataExt;
    let available = fs4::available_space(dir).map_err(|e| {
        problem(
            "cache.disk_dir",
            format!("cannot read the free space of {}: {e}", dir.display()),
        )
    })?;
    let held: u64 = cache_files(dir)
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.blocks() * 512)
        .sum();
    if disk_bytes > available.saturating_add(held) {
        return Err(problem(
            "cache.disk",
            format!(
                "{} is more than the filesystem of cache.disk_dir ({}) can hold: {} free{}; lower cache.disk or \
                 free space",
                bytesize::ByteSize::b(disk_bytes).display().iec(),
                dir.display(),
                bytesize::ByteSize::b(available).display().iec(),
                if held > 0 {
                    format!(
                        " + {} already held by the cache",
                        bytesize::ByteSize::b(held).display().iec()
                    )
                } else {
                    String::new()
                }
            ),
        ));
    }
    Ok(())
}

/// Allocates every cache file's blocks now, so later cache writes cannot fail for lack of space.
/// Filesystems without `fallocate` are accepted with a warning.
pub fn preallocate(files: &[PathBuf]) -> Result<(), SetupProblem> {
    use fs4::fs_std::FileExt;
    for f in files {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(f)
            .map_err(|e| {
                problem(
                    "cache.disk_dir",
                    format!("cannot open cache file {}: {e}", f.display()),
                )
            })?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        match file.allocate(len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => {
                return Err(problem(
                    "cache.disk",
                    format!(
                        "the filesystem of cache.disk_dir ran out of space while reserving the cache files ({}): \
                         lower cache.disk or free space",
                        f.display()
                    ),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                tracing::warn!(
                    file = %f.display(),
                    "the filesystem of cache.disk_dir cannot preallocate files: a full filesystem will make the \
                     disk tier fail (it then degrades to memory-only)"
                );
                return Ok(());
            }
            Err(e) => {
                return Err(problem(
                    "cache.disk_dir",
                    format!("cannot reserve space for cache file {}: {e}", f.display()),
                ));
            }
        }
    }
    Ok(())
}

/// One writability check of the cache files: the first failure, if any.
pub fn probe(files: &[PathBuf]) -> Result<(), String> {
    for f in files {
        if let Err(e) = std::fs::OpenOptions::new().write(true).open(f) {
            return Err(format!("cache file {} is not writable: {e}", f.display()));
        }
    }
    Ok(())
}

/// Checks the cache files every [`PROBE_EVERY`] until the tier degrades or `health` is dropped.
pub fn spawn_probe(health: Weak<DiskHealth>, files: Vec<PathBuf>) -> tokio::task::AbortHandle {
    let files = Arc::new(files);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            let Some(h) = health.upgrade() else { return };
            if h.is_degraded() {
                return;
            }
            let f = files.clone();
            match tokio::task::spawn_blocking(move || probe(&f)).await {
                Ok(Ok(())) => {}
                Ok(Err(msg)) => h.fault("probe", &msg),
                Err(e) => tracing::debug!(error = %e, "disk probe did not run"),
            }
        }
    })
    .abort_handle()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Arc<DiskHealth> {
        let m = crate::metrics::Metrics::new().expect("metrics");
        DiskHealth::new(m.cache_disk_degraded.clone(), m.cache_errors.clone())
    }

    #[test]
    fn first_fault_degrades_and_keeps_its_reason() {
        let h = health();
        assert_eq!(h.state(), DiskTierState::Ok);
        h.fault("io", "first");
        h.fault("io", "second");
        match h.state() {
            DiskTierState::Degraded { reason, .. } => assert_eq!(reason, "first"),
            other => panic!("{other:?}"),
        }
        assert_eq!(h.gauge.get(), 1);
        assert_eq!(h.errors.with_label_values(&["io"]).get(), 2);
    }

    #[test]
    fn space_check_names_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        check_space(dir.path(), 1 << 20).expect("1 MiB fits");
        let e = check_space(dir.path(), u64::MAX / 2).expect_err("too big");
        assert_eq!(e.key, "cache.disk");
        assert!(e.message.contains("free"), "{}", e.message);
    }

    #[test]
    fn a_missing_parent_that_cannot_be_created_names_the_dir_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        let e = check_dir(&file.join("sub")).expect_err("parent is a file");
        assert_eq!(e.key, "cache.disk_dir");
    }
}
