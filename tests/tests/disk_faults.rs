//! The disk tier under faults, on real filesystems: a tmpfs smaller than `cache.disk`, a tmpfs filled by someone
//! else under load, cache files made immutable (`chattr +i`) mid-run, and SIGTERM after each. Reads must stay
//! exact throughout, the process must never die of it, and a fault must show (WARN, metric, /healthz).
//! Needs root (mount, chattr): the tests fail with a message saying so rather than skip.
//! `cargo test -p b2fs-tests --test disk_faults -- --nocapture` prints the figures.

#[path = "support/daemon.rs"]
mod daemon;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use b2fs_tests::emulator::Emulator;
use daemon::{Daemon, http};

const FILE: &str = "a.plot";
const FILE_SIZE: u64 = 8 << 30;
const READ: u64 = 64 << 10;

/// Scratch space on the build's disk (ext4 or the like, unlike a tmpfs /tmp: chattr needs it).
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir")
}

/// A tmpfs of `size`, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "cannot mount a {size} tmpfs at {} (this test needs root or CAP_SYS_ADMIN): {}",
                path.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => panic!("cannot run mount(8) for a tmpfs (this test needs it, as root): {e}"),
        }
        Self {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// `chattr +i` on files, undone on drop (an immutable file cannot even be deleted by root).
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn set(files: Vec<PathBuf>) -> Self {
        let out = Command::new("chattr").arg("+i").args(&files).output();
        match out {
            Ok(o) if o.status.success() => Self(files),
            Ok(o) => panic!(
                "chattr +i failed (this test needs root and a filesystem with the immutable flag, such as ext4 or \
                 xfs, under CARGO_TARGET_TMPDIR): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => panic!("cannot run chattr(1) (e2fsprogs), which this test needs: {e}"),
        }
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").args(&self.0).status();
    }
}

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("foyer-storage"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    wrong: AtomicU64,
    failed: AtomicU64,
    /// Set by a test at an event (the filesystem filled): reads record whether they started after it.
    marked: AtomicBool,
}

impl Tally {
    fn get(&self) -> (u64, u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.wrong.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// `clients` readers of random 64 KiB block-aligned ranges, each checked against the emulator, until `stop`.
/// With `hot` > 0 every other read is of one of the first `hot` blocks (read again and again: what the disk tier
/// keeps once it is full), the rest are spread over the file (misses, read once). Offsets are drawn from `seed` so
/// a run can be replayed; each task returns the offsets it read exactly, with whether [`Tally::marked`] was set
/// when the read started.
fn start_load(
    emu: Arc<Emulator>,
    base: String,
    clients: u64,
    seed: u64,
    hot: u64,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<Vec<(u64, bool)>>> {
    (0..clients)
        .map(|c| {
            let (emu, base, stop, tally) = (emu.clone(), base.clone(), stop.clone(), tally.clone());
            tokio::spawn(async move {
                let http = http();
                let mut x = seed ^ (c + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let mut offsets = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    n += 1;
                    let blocks = if hot > 0 && n.is_multiple_of(2) {
                        hot
                    } else {
                        FILE_SIZE / READ
                    };
                    let off = (x % blocks) * READ;
                    let marked = tally.marked.load(Ordering::Relaxed);
                    let r = http
                        .get(format!("{base}/files/{FILE}"))
                        .header("Range", format!("bytes={}-{}", off, off + READ - 1))
                        .send()
                        .await;
                    let body = match r {
                        Ok(r) if r.status() == 206 => r.bytes().await.ok(),
                        _ => None,
                    };
                    match body {
                        Some(b) => {
                            let want = emu.expected_bytes(FILE, off, READ).expect("expected bytes");
                            if b[..] == want[..] {
                                tally.ok.fetch_add(1, Ordering::Relaxed);
                                offsets.push((off, marked));
                            } else {
                                tally.wrong.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        None => {
                            tally.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                offsets
            })
        })
        .collect()
}

async fn stop_load(
    stop: &AtomicBool,
    tasks: Vec<tokio::task::JoinHandle<Vec<(u64, bool)>>>,
) -> Vec<(u64, bool)> {
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("load task"));
    }
    all
}

async fn emulator() -> Arc<Emulator> {
    Arc::new(
        Emulator::builder()
            .virtual_file(FILE, FILE_SIZE)
            .start()
            .await
            .expect("emulator"),
    )
}

fn cache_section(dir: &Path, disk: &str, extra: &str) -> String {
    format!(
        "[cache]\nmemory = \"16MiB\"\ndisk = \"{disk}\"\ndisk_dir = \"{}\"\n{extra}\n",
        dir.display()
    )
}

fn panics_in(log: &str) -> usize {
    log.matches("panicked at").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disk_larger_than_its_filesystem_is_refused_or_runs_memory_only() {
    let emu = emulator().await;
    let work = scratch();
    let fs = Tmpfs::mount(&work.path().join("fs"), "20m");
    let cache = fs.path.join("cache");
    let http = http();

    // Default policy: refuse to start, naming the key and the space.
    let run = work.path().join("fail");
    std::fs::create_dir_all(&run).expect("dir");
    let t = Instant::now();
    let mut d = Daemon::spawn(&emu, &run, &cache_section(&cache, "64MiB", ""));
    let status = d.wait_exit(Duration::from_secs(30));
    let took = t.elapsed();
    let log = d.log();
    let status = status.unwrap_or_else(|| {
        panic!("b2-proxy kept running with a 64 MiB disk tier on 20 MiB:\n{log}")
    });
    assert!(!status.success(), "exit {status}: {log}");
    // (A WARN that this 16 MiB cache.memory is small for the disk tier names cache.disk too.)
    let line = log
        .lines()
        .find(|l| l.contains("cache.disk") && !l.contains("cache.memory is small"))
        .unwrap_or_else(|| panic!("the error does not name cache.disk:\n{log}"));
    assert!(line.contains("free"), "{line}");
    println!(
        "cache.disk 64 MiB on a 20 MiB tmpfs, on_disk_error = fail: exit {status} after {took:?}: {line}"
    );

    // memory_only: runs, says so, serves exact bytes, exits cleanly.
    let run = work.path().join("memory_only");
    std::fs::create_dir_all(&run).expect("dir");
    let mut d = Daemon::spawn(
        &emu,
        &run,
        &cache_section(&cache, "64MiB", "on_disk_error = \"memory_only\""),
    );
    d.wait_ready(&http, Duration::from_secs(30))
        .await
        .expect("ready");
    let health = d.health(&http).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["cache_disk"]["state"], "degraded", "{health}");
    assert!(
        health["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cache.disk")),
        "{health}"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let tasks = start_load(
        emu.clone(),
        d.base.clone(),
        4,
        1,
        0,
        stop.clone(),
        tally.clone(),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_load(&stop, tasks).await;
    let (ok, wrong, failed) = tally.get();
    let degraded = d.metric(&http, "b2proxy_cache_disk_degraded").await;
    let (status, took) = d.terminate(Duration::from_secs(30));
    let log = d.log();
    println!(
        "same with on_disk_error = memory_only: /healthz {} ({}); {ok} reads exact, {wrong} wrong, {failed} failed; \
         b2proxy_cache_disk_degraded {degraded}; SIGTERM -> {status:?} in {took:?}",
        health["status"], health["reason"]
    );
    assert_eq!((wrong, failed), (0, 0));
    assert!(ok > 20, "only {ok} reads");
    assert_eq!(degraded, 1.0);
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?}:\n{log}"
    );
    assert_eq!(panics_in(&log), 0, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_filesystem_filled_by_others_under_load_keeps_the_disk_tier_working() {
    // Read again and again among the misses: 13.6 MiB of disk, within the 18 MiB the 24 MiB tier keeps and more
    // than the 16 MiB memory tier holds beside the misses.
    const HOT: u64 = 200;
    let emu = emulator().await;
    let work = scratch();
    let fs = Tmpfs::mount(&work.path().join("fs"), "40m");
    let cache = fs.path.join("cache");
    let http = http();
    let section = cache_section(&cache, "24MiB", "");
    let mut d = Daemon::spawn(&emu, work.path(), &section);
    d.wait_ready(&http, Duration::from_secs(30))
        .await
        .expect("ready");
    assert_eq!(d.health(&http).await["status"], "ok");

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let tasks = start_load(
        emu.clone(),
        d.base.clone(),
        6,
        2,
        HOT,
        stop.clone(),
        tally.clone(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Someone else fills the filesystem: write until ENOSPC.
    let filler = fs.path.join("filler");
    let filled = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0xAAu8; 1 << 20];
        let mut n = 0u64;
        loop {
            match f.write_all(&chunk).and_then(|()| f.sync_data()) {
                Ok(()) => n += chunk.len() as u64,
                Err(e) => return (n, e),
            }
        }
    })
    .await
    .expect("filler");
    tally.marked.store(true, Ordering::Relaxed);
    assert_eq!(
        filled.1.kind(),
        std::io::ErrorKind::StorageFull,
        "filling the tmpfs: {}",
        filled.1
    );
    let inserted_at_full = d.metric(&http, "b2proxy_cache_inserted_bytes_total").await;
    let (ok_at_full, _, _) = tally.get();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_full = stop_load(&stop, tasks).await;
    let (ok, wrong, failed) = tally.get();
    let inserted = d.metric(&http, "b2proxy_cache_inserted_bytes_total").await - inserted_at_full;
    let faults = d
        .metric(&http, "b2proxy_cache_errors_total{kind=\"io\"}")
        .await
        + d.metric(&http, "b2proxy_cache_errors_total{kind=\"panic\"}")
            .await
        + d.metric(&http, "b2proxy_cache_errors_total{kind=\"probe\"}")
            .await;
    let health = d.health(&http).await;
    let (status, took) = d.terminate(Duration::from_secs(30));
    let log = d.log();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?}:\n{log}"
    );

    // The hot blocks first read after the filesystem filled up, and read again (so the disk tier admitted them,
    // at their first fetch while it had free space, else at their second read), are on disk: a restart serves
    // them from there.
    let mut reads: std::collections::HashMap<u64, (bool, u32)> = std::collections::HashMap::new();
    for &(off, marked) in &after_full {
        let r = reads.entry(off).or_insert((marked, 0));
        r.0 &= marked;
        r.1 += 1;
    }
    let mut late: Vec<u64> = reads
        .iter()
        .filter(|&(&off, &(after, n))| off < HOT * READ && after && n >= 2)
        .map(|(&off, _)| off)
        .collect();
    late.sort_unstable();
    let mut d = Daemon::spawn(&emu, work.path(), &section);
    d.wait_ready(&http, Duration::from_secs(30))
        .await
        .expect("restart");
    let before = emu.stats().requests.download_by_id;
    for &off in &late {
        let r = http
            .get(format!("{}/files/{FILE}", d.base))
            .header("Range", format!("bytes={}-{}", off, off + READ - 1))
            .send()
            .await
            .expect("read");
        assert_eq!(r.status(), 206);
        let b = r.bytes().await.expect("body");
        assert!(
            b[..] == emu.expected_bytes(FILE, off, READ).expect("expected")[..],
            "wrong bytes at {off}"
        );
    }
    let disk_hits = d
        .metric(&http, "b2proxy_cache_hits_total{tier=\"disk\"}")
        .await;
    let refetched = emu.stats().requests.download_by_id - before;
    println!(
        "tmpfs 40 MiB, cache.disk 24 MiB (preallocated), filled by another writer ({} MiB, then {}) under 6 readers: \
         {ok} reads exact ({} after the fill), {wrong} wrong, {failed} failed; {:.1} MiB inserted after the fill, \
         {faults} disk faults, /healthz {}; SIGTERM -> {status:?} in {took:?}; after restart {disk_hits} of the \
         {} hot blocks first read after the fill read from disk ({refetched} downloads)",
        filled.0 >> 20,
        filled.1,
        ok - ok_at_full,
        inserted / f64::from(1 << 20),
        health["status"],
        late.len()
    );
    assert_eq!((wrong, failed), (0, 0));
    assert!(ok - ok_at_full > 20, "too few reads after the fill");
    assert!(
        late.len() >= 5,
        "only {} hot blocks first read after the fill",
        late.len()
    );
    assert!(inserted > 0.0, "nothing inserted after the fill");
    assert_eq!(faults, 0.0, "{log}");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(panics_in(&log), 0, "{log}");
    assert!(
        disk_hits >= late.len() as f64 / 2.0,
        "blocks written after the filesystem filled did not persist: {disk_hits} of {} from disk",
        late.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_files_made_immutable_mid_run_degrade_to_memory_and_sigterm_exits_cleanly() {
    let emu = emulator().await;
    let work = scratch();
    let cache = work.path().join("cache");
    let http = http();
    let section = cache_section(&cache, "64MiB", "");
    let mut d = Daemon::spawn(&emu, work.path(), &section);
    d.wait_ready(&http, Duration::from_secs(30))
        .await
        .expect("ready");

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let tasks = start_load(
        emu.clone(),
        d.base.clone(),
        6,
        3,
        0,
        stop.clone(),
        tally.clone(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let files = cache_files(&cache);
    assert!(!files.is_empty(), "no cache files in {}", cache.display());
    let guard = Immutable::set(files.clone());
    let t0 = Instant::now();
    let detected = loop {
        let h = d.health(&http).await;
        if h["status"] == "degraded" {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "not degraded 20 s after the cache files became immutable: {h}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (ok_at_fault, _, _) = tally.get();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop_load(&stop, tasks).await;
    let (ok, wrong, failed) = tally.get();
    let health = d.health(&http).await;
    let degraded = d.metric(&http, "b2proxy_cache_disk_degraded").await;
    let mut kinds = Vec::new();
    for kind in ["io", "panic", "probe", "corrupt"] {
        let n = d
            .metric(
                &http,
                &format!("b2proxy_cache_errors_total{{kind=\"{kind}\"}}"),
            )
            .await;
        kinds.push(format!("{kind}={n}"));
    }
    let (status, took) = d.terminate(Duration::from_secs(30));
    let log = d.log();
    println!(
        "{} cache files made immutable under 6 readers: degraded after {detected:?} ({}); {ok} reads exact ({} after \
         the fault), {wrong} wrong, {failed} failed; b2proxy_cache_disk_degraded {degraded}, \
         b2proxy_cache_errors_total {}; {} foyer panics contained; SIGTERM -> {status:?} in {took:?}",
        files.len(),
        health["cache_disk"]["reason"],
        ok - ok_at_fault,
        kinds.join(" "),
        panics_in(&log)
    );
    assert_eq!((wrong, failed), (0, 0), "{log}");
    assert!(ok - ok_at_fault > 20, "too few reads after the fault");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(degraded, 1.0);
    assert!(
        log.contains("disk cache tier failed"),
        "no WARN in the log:\n{log}"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM after the fault: exit {status:?}\n{log}"
    );
    assert!(took < Duration::from_secs(20), "exit took {took:?}");

    // Writable again: the next start uses the disk tier, and whatever was cached before the fault is intact.
    drop(guard);
    let mut d = Daemon::spawn(&emu, work.path(), &section);
    d.wait_ready(&http, Duration::from_secs(30))
        .await
        .expect("restart");
    let health = d.health(&http).await;
    assert_eq!(health["cache_disk"]["state"], "ok", "{health}");
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    // The same offsets as before (same seed): a mix of blocks on disk from before the fault and new ones.
    let tasks = start_load(
        emu.clone(),
        d.base.clone(),
        6,
        3,
        0,
        stop.clone(),
        tally.clone(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_load(&stop, tasks).await;
    let (ok, wrong, failed) = tally.get();
    let disk_hits = d
        .metric(&http, "b2proxy_cache_hits_total{tier=\"disk\"}")
        .await;
    println!(
        "restarted on the same directory: disk tier ok, {ok} reads exact, {wrong} wrong, {failed} failed, {disk_hits} disk hits"
    );
    assert_eq!((wrong, failed), (0, 0));
}

/// Without the daemon's log layer (an embedding of the library, like this test), the fault is still found: by
/// the probe of the cache files, or by the panic hook if foyer trips over its own write error first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_process_the_probe_or_the_panic_hook_finds_unwritable_cache_files() {
    use b2_proxy::cache::{BlockCache, BlockKey, CacheSettings, DiskTierState, FoyerCache};
    let work = scratch();
    let metrics = Arc::new(b2_proxy::metrics::Metrics::new().expect("metrics"));
    let settings = CacheSettings {
        memory_bytes: 4 << 20,
        disk_bytes: 32 << 20,
        disk_dir: work.path().join("cache"),
        block_size: 64 << 10,
        eviction: Default::default(),
        on_disk_error: Default::default(),
    };
    let cache = Arc::new(
        FoyerCache::open(&settings, metrics.clone())
            .await
            .expect("open"),
    );
    let block = |i: u64| bytes::Bytes::from(vec![(i % 251) as u8; 64 << 10]);
    let key = |i: u64| BlockKey {
        file: "4_ztest".into(),
        index: i,
    };
    for i in 0..64 {
        cache.insert(key(i), block(i));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let guard = Immutable::set(cache_files(&settings.disk_dir));
    let t0 = Instant::now();
    let mut i = 64;
    let reason = loop {
        // Keep writing, as a busy proxy does.
        cache.insert(key(i), block(i));
        i += 1;
        if let DiskTierState::Degraded { reason, .. } = cache.disk_state() {
            break reason;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "no fault found 15 s after the cache files became immutable"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let detected = t0.elapsed();
    // Memory-only from here: what is inserted is served, exactly.
    for j in i..i + 16 {
        cache.insert(key(j), block(j));
        let (v, _) = cache.get(&key(j), 64 << 10).await.expect("memory hit");
        assert!(v == block(j));
    }
    let t = Instant::now();
    cache.close().await.expect("close");
    println!(
        "in-process, no log layer: degraded {detected:?} after chattr +i ({reason}); memory-only reads exact; close \
         took {:?}",
        t.elapsed()
    );
    assert!(
        reason.contains("not writable") || reason.contains("panicked"),
        "{reason}"
    );
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_disk_entries_are_counted_and_fetched_again() {
    let emu = emulator().await;
    let work = scratch();
    let cache = work.path().join("cache");
    let http = http();
    let section = cache_section(&cache, "32MiB", "");
    let offsets: Vec<u64> = (0..48u64)
        .map(|i| i * 7 * (1 << 20) / READ * READ)
        .collect();
    let read_all = |base: String| {
        let (http, emu, offsets) = (http.clone(), emu.clone(), offsets.clone());
        async move {
            for off in offsets {
                let r = http
                    .get(format!("{base}/files/{FILE}"))
                    .header("Range", format!("bytes={}-{}", off, off + READ - 1))
                    .send()
                    .await
                    .expect("read");
                assert_eq!(r.status(), 206);
                let b = r.bytes().await.expect("body");
                assert!(
                    b[..] == emu.expected_bytes(FILE, off, READ).expect("expected")[..],
                    "wrong bytes at {off}"
                );
            }
        }
    };
    let mut d = Daemon::spawn(&emu, work.path(), &section);
    d.wait_ready(&http, Duration::from_secs(30))
        .await
        .expect("ready");
    read_all(d.base.clone()).await;
    let (status, _) = d.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{}", d.log());

    // Scribble over the middle of every 64 KiB of the cache files: inside most stored blocks.
    let mut scribbled = 0;
    for f in cache_files(&cache) {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .expect("open");
        let len = file.metadata().expect("meta").len();
        let mut at = 30_000;
        while at + 64 < len {
            file.write_all_at(&[0x5A; 64], at).expect("scribble");
            scribbled += 1;
            at += 64 << 10;
        }
    }
    let mut d = Daemon::spawn(&emu, work.path(), &section);
    d.wait_ready(&http, Duration::from_secs(30))
        .await
        .expect("restart");
    let before = emu.stats().requests.download_by_id;
    read_all(d.base.clone()).await;
    let refetched = emu.stats().requests.download_by_id - before;
    let corrupt = d
        .metric(&http, "b2proxy_cache_errors_total{kind=\"corrupt\"}")
        .await;
    let disk_hits = d
        .metric(&http, "b2proxy_cache_hits_total{tier=\"disk\"}")
        .await;
    let health = d.health(&http).await;
    println!(
        "{} blocks cached, {scribbled} places in the cache files overwritten, restart: all {} reads exact, {corrupt} \
         corrupt entries counted, {disk_hits} disk hits, {refetched} downloads; /healthz {}",
        offsets.len(),
        offsets.len(),
        health["status"]
    );
    assert!(corrupt >= 1.0, "corrupt entries not counted:\n{}", d.log());
    assert!(refetched >= 1, "nothing fetched again");
    assert_eq!(
        health["status"], "ok",
        "a corrupt entry is not a disk fault: {health}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_cache_directory_is_named_at_start() {
    let emu = emulator().await;
    let work = scratch();
    let mount = work.path().join("ro");
    let fs = Tmpfs::mount(&mount, "4m");
    std::fs::create_dir_all(fs.path.join("cache")).expect("cache dir");
    let remounted = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&fs.path)
        .status()
        .is_ok_and(|s| s.success());
    assert!(remounted, "cannot remount {} read-only", fs.path.display());
    let cache = fs.path.join("cache");
    let http = http();
    for (policy, starts) in [("fail", false), ("memory_only", true)] {
        let run = work.path().join(policy);
        std::fs::create_dir_all(&run).expect("dir");
        let mut d = Daemon::spawn(
            &emu,
            &run,
            &cache_section(&cache, "16MiB", &format!("on_disk_error = \"{policy}\"")),
        );
        if starts {
            d.wait_ready(&http, Duration::from_secs(30))
                .await
                .expect("ready");
            let h = d.health(&http).await;
            println!(
                "read-only cache.disk_dir, on_disk_error = {policy}: /healthz {} ({})",
                h["status"], h["reason"]
            );
            assert_eq!(h["status"], "degraded", "{h}");
            assert!(
                h["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("cache.disk_dir")),
                "{h}"
            );
            let (status, _) = d.terminate(Duration::from_secs(30));
            assert!(status.is_some_and(|s| s.success()), "{}", d.log());
        } else {
            let status = d.wait_exit(Duration::from_secs(30));
            let log = d.log();
            let line = log
                .lines()
                .find(|l| l.contains("cache.disk_dir"))
                .unwrap_or_default()
                .to_string();
            println!("read-only cache.disk_dir, on_disk_error = {policy}: exit {status:?}: {line}");
            assert!(status.is_some_and(|s| !s.success()), "{log}");
            assert!(
                line.contains("not writable") && line.contains("Read-only"),
                "{log}"
            );
        }
    }
}
