//! End-to-end tests of real FUSE mounts: emulator -> proxy -> `b2fs-shim` -> kernel -> these tests and real
//! Chia provers. Each test mounts its own temporary directory, so they run in parallel.
//!
//! Needs `/dev/fuse` and `fusermount3` (package fuse3), and for the chiapos test the venv at `tests/.venv`
//! (`./test.sh` makes it); a missing venv fails that test with the command that creates it.

mod common;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use b2fs_tests::chia;
use b2fs_tests::emulator::Emulator;
use b2fs_tests::mount::{CacheMode, Mount, Shim, proxy_binary};
use common::{Env, Rng, start};

const BIG: u64 = 108 << 30;

/// A mount on a fresh temporary directory; the mount is dropped (stopped, detached) before the directory.
struct TestMount {
    mount: Mount,
    _dirs: tempfile::TempDir,
}

impl std::ops::Deref for TestMount {
    type Target = Mount;
    fn deref(&self) -> &Mount {
        &self.mount
    }
}

fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dirs = tempfile::tempdir().expect("tempdir");
    let mnt = dirs.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir mnt");
    let log = dirs.path().join("shim.log");
    (dirs, mnt, log)
}

fn mount_with(proxy_url: &str, configure: impl FnOnce(Shim) -> Shim) -> TestMount {
    let (dirs, mnt, log) = dirs();
    let shim = configure(Shim::new(&mnt, proxy_url).log_level("info").log_file(&log));
    let mount = shim.mount().unwrap_or_else(|e| panic!("{e:#}"));
    TestMount { mount, _dirs: dirs }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn mount(env: &Env) -> TestMount {
    mount_with(&env.base, |s| s)
}

/// Every file under `root`, by path relative to it, with its size.
fn walk(root: &Path) -> BTreeMap<String, u64> {
    fn go(root: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) {
        for entry in std::fs::read_dir(dir).expect("readdir") {
            let entry = entry.expect("entry");
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                go(root, &entry.path(), out);
            } else {
                let rel = entry.path().strip_prefix(root).expect("prefix").to_owned();
                out.insert(rel.to_string_lossy().into_owned(), meta.len());
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, root, &mut out);
    out
}

fn assert_bytes(emu: &Emulator, name: &str, offset: u64, got: &[u8]) {
    let want = emu
        .expected_bytes(name, offset, got.len() as u64)
        .expect("expected bytes");
    assert!(
        got == &want[..],
        "{name}: wrong bytes at {offset} (+{})",
        got.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_and_stat_sizes_match_the_bucket() {
    let local = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(local.path().join("real/deeper")).expect("mkdir");
    std::fs::write(local.path().join("real/deeper/hello.txt"), b"hello b2fs\n").expect("write");
    let builder = Emulator::builder()
        .dir(local.path())
        .virtual_file("plots/plot-k32-a.plot", BIG)
        .virtual_file("plots/plot-k32-b.plot", 101 * (1 << 30) + 12_345)
        .virtual_file("plots/old/plot-k25.plot", 673 << 20)
        .virtual_file("empty.bin", 0)
        .virtual_files("many/p", 50, 4096);
    let env = start(builder, |_| {}).await;
    let m = mount(&env);

    let bucket: BTreeMap<String, u64> = env
        .emu
        .files()
        .into_iter()
        .map(|f| (f.name, f.size))
        .collect();
    assert_eq!(bucket.len(), 55);
    assert_eq!(walk(m.path()), bucket, "the tree under the mount");

    let top: Vec<String> = {
        let mut v: Vec<String> = std::fs::read_dir(m.path())
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(top, ["empty.bin", "many", "plots", "real"]);
    let meta = std::fs::metadata(m.join("plots/plot-k32-a.plot")).expect("stat");
    assert!(meta.is_file());
    assert_eq!(meta.len(), BIG);
    assert_eq!(meta.permissions().mode() & 0o777, 0o444, "read-only files");
    assert!(
        std::fs::metadata(m.join("plots/old"))
            .expect("stat")
            .is_dir()
    );
    let missing = std::fs::metadata(m.join("plots/nope.plot")).expect_err("missing name");
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    let write = std::fs::OpenOptions::new()
        .write(true)
        .open(m.join("plots/plot-k32-a.plot"))
        .expect_err("read-only mount");
    assert!(
        matches!(write.raw_os_error(), Some(libc::EROFS | libc::EACCES)),
        "{write}"
    );

    // The tools a user would type.
    let stat = Command::new("stat")
        .args(["-c", "%s %n"])
        .arg(m.join("plots/plot-k32-a.plot"))
        .arg(m.join("plots/plot-k32-b.plot"))
        .arg(m.join("real/deeper/hello.txt"))
        .output()
        .expect("stat runs");
    let stat = String::from_utf8_lossy(&stat.stdout);
    let sizes: Vec<&str> = stat.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(
        sizes,
        [
            BIG.to_string(),
            (101 * (1u64 << 30) + 12_345).to_string(),
            "11".to_string()
        ],
        "{stat}"
    );
    let ls = Command::new("ls")
        .arg("-la")
        .arg(m.join("plots"))
        .output()
        .expect("ls runs");
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.lines()
            .any(|l| l.contains(&BIG.to_string()) && l.ends_with("plot-k32-a.plot")),
        "{ls}"
    );
    assert_eq!(
        std::fs::read(m.join("real/deeper/hello.txt")).expect("read"),
        b"hello b2fs\n"
    );
}

/// A directory of 30,000 files (issue 16's million-file listing, small enough for CI): the shim pages the
/// listing from the proxy once (3 pages of 10,000), `ls -l` is answered with READDIRPLUS (each entry's
/// attributes come with the listing, so the kernel makes no LOOKUP or GETATTR per file), and every name and
/// size is right. With plain READDIR, `ls -l` made one LOOKUP per file; the counts are what is asserted, not
/// the time it takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_l_of_a_large_directory_is_paged_once_and_needs_no_lookup_per_file() {
    const FILES: usize = 30_000;
    let env = start(
        Emulator::builder().virtual_files("farm/plot-", FILES, 4096),
        |_| {},
    )
    .await;
    let shim_metrics = format!("127.0.0.1:{}", free_port());
    let m = mount_with(&env.base, |s| s.arg("--metrics").arg(&shim_metrics));
    let shim_base = format!("http://{shim_metrics}");
    let http = common::http();
    let shim = |name: &'static str| {
        let (http, base) = (http.clone(), shim_base.clone());
        async move { common::metric(&http, &base, name).await }
    };

    let dir = m.join("farm");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("ls")
            .args(["-l", "--time-style=+%s"])
            .arg(&dir)
            .output()
            .expect("ls runs")
    })
    .await
    .expect("ls task");
    assert!(out.status.success(), "ls -l failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with('-')).collect();
    assert_eq!(rows.len(), FILES, "one row per file");
    for (i, row) in rows.iter().enumerate() {
        let want = format!("plot-{i:06}.plot");
        assert!(
            row.ends_with(&want) && row.split_whitespace().nth(4) == Some("4096"),
            "row {i}: {row}"
        );
    }

    let refreshes = shim("b2fs_shim_tree_refreshes_total{result=\"ok\"}").await;
    assert!(refreshes >= 1.0, "the tree was loaded");
    let pages = FILES.div_ceil(10_000) as f64;
    let lists = env
        // The text format orders labels by name.
        .metric("b2proxy_requests_total{outcome=\"none\",route=\"list\"}")
        .await;
    assert_eq!(
        lists,
        pages * refreshes,
        "GET /files pages: {pages} per refresh, {refreshes} refreshes"
    );
    let plus = shim("b2fs_shim_metadata_requests_total{op=\"readdirplus\"}").await;
    let plain = shim("b2fs_shim_metadata_requests_total{op=\"readdir\"}").await;
    let lookups = shim("b2fs_shim_metadata_requests_total{op=\"lookup\"}").await;
    let getattrs = shim("b2fs_shim_metadata_requests_total{op=\"getattr\"}").await;
    assert!(
        plus >= 1.0 && plain == 0.0,
        "readdirplus {plus}, readdir {plain}"
    );
    // A few for the path itself (`farm`, the mount's root); nowhere near one per file. Generous: entries of
    // a listing that ran past --attr-ttl would be looked up again, which a loaded machine must not fail.
    assert!(
        lookups + getattrs < (FILES / 10) as f64,
        "{lookups} lookups and {getattrs} getattrs for `ls -l` of {FILES} files"
    );
}

/// Random reads of a virtual 108 GiB file: Chia-sized reads, block-straddling reads, large reads, reads at
/// and after the end; every byte compared with the emulator's.
fn random_preads(env: &Env, m: &Mount) {
    let file = std::fs::File::open(m.join("plots/k32.plot")).expect("open");
    let mut rng = Rng(2026);
    let check = |offset: u64, len: usize| {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            let n = file
                .read_at(&mut buf[got..], offset + got as u64)
                .unwrap_or_else(|e| panic!("pread at {offset}: {e}"));
            if n == 0 {
                break;
            }
            got += n;
        }
        let expect = BIG.saturating_sub(offset).min(len as u64) as usize;
        assert_eq!(got, expect, "pread of {len} at {offset}");
        assert_bytes(&env.emu, "plots/k32.plot", offset, &buf[..got]);
    };
    for _ in 0..150 {
        check(rng.below(BIG - 8191), 8191);
    }
    for _ in 0..30 {
        // Straddling a 64 KiB block boundary.
        let boundary = (rng.below(BIG >> 16) + 1) << 16;
        check(boundary - 1 - rng.below(8000), 8191);
    }
    for _ in 0..10 {
        check(rng.below(BIG - (1 << 20)), 1 + rng.below(1 << 20) as usize);
    }
    check(0, 8191);
    check(BIG - 8191, 8191);
    check(BIG - 100, 8191); // short read at the end
    check(BIG, 4096); // at EOF: 0 bytes
    check(BIG + 12_345, 10);
    // One read() of Chia's size returns it whole.
    let mut buf = vec![0u8; 8191];
    assert_eq!(file.read_at(&mut buf, 77_777_777).expect("pread"), 8191);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_preads_of_a_108_gib_file_are_byte_exact() {
    let env = start(
        Emulator::builder().virtual_file("plots/k32.plot", BIG),
        |_| {},
    )
    .await;
    let m = mount(&env);
    random_preads(&env, &m);
    // The reads went through the proxy to the emulator.
    assert!(env.downloads() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_preads_with_the_page_cache_are_byte_exact() {
    let env = start(
        Emulator::builder().virtual_file("plots/k32.plot", BIG),
        |_| {},
    )
    .await;
    let m = mount_with(&env.base, |s| s.cache_mode(CacheMode::Page));
    random_preads(&env, &m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_from_32_opens_reach_the_emulator_concurrently() {
    const N: u64 = 32;
    let env = start(
        Emulator::builder()
            .virtual_file("plots/k32.plot", BIG)
            .latency(Duration::from_millis(500), 0.0),
        |c| c.fetch.hedge = false,
    )
    .await;
    let m = mount(&env);
    env.emu.reset_stats();
    let barrier = Arc::new(Barrier::new(N as usize));
    let path = m.join("plots/k32.plot");
    let threads: Vec<_> = (0..N)
        .map(|i| {
            let barrier = barrier.clone();
            let path = path.clone();
            std::thread::spawn(move || {
                // A parallel Chia proof: its own open() per read, then one 8191-byte read, all at once.
                let f = std::fs::File::open(&path).expect("open");
                let offset = i * (3 << 30) + 12_345;
                let mut buf = vec![0u8; 8191];
                barrier.wait();
                let n = f.read_at(&mut buf, offset).expect("pread");
                buf.truncate(n);
                (offset, buf)
            })
        })
        .collect();
    for t in threads {
        let (offset, buf) = t.join().expect("reader thread");
        assert_eq!(buf.len(), 8191);
        assert_bytes(&env.emu, "plots/k32.plot", offset, &buf);
    }
    let stats = env.emu.stats();
    println!(
        "{N} reads from {N} opens: peak {} downloads in flight at the emulator",
        stats.peak_downloads_in_flight
    );
    assert_eq!(env.downloads(), N, "one upstream request per distinct read");
    assert!(
        stats.peak_downloads_in_flight >= N,
        "only {} of {N} reads were in flight at the emulator at once",
        stats.peak_downloads_in_flight
    );
}

/// A `b2-proxy` process on a fixed port, so it can be killed and restarted under a running mount.
struct ProxyProcess {
    child: Option<Child>,
    config: PathBuf,
    base: String,
}

impl ProxyProcess {
    fn start(emu: &Emulator, dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = dir.join("proxy.toml");
        std::fs::write(
            &config,
            format!(
                "{}[server]\nlisten = \"127.0.0.1:{port}\"\n\
                 [cache]\nmemory = \"32MiB\"\ndisk = \"64MiB\"\ndisk_dir = \"{}\"\n\
                 [fetch]\ntimeout = \"3s\"\nread_deadline = \"5s\"\n",
                emu.proxy_b2_toml(),
                dir.join("cache").display()
            ),
        )
        .expect("write config");
        let mut p = Self {
            child: None,
            config,
            base: format!("http://127.0.0.1:{port}"),
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let bin = proxy_binary().unwrap_or_else(|e| panic!("{e:#}"));
        let child = Command::new(bin)
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn b2-proxy");
        self.child = Some(child);
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill() on our own, not yet reaped, child.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0, "kill({sig})");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn wait_healthy(&self) {
        let http = common::http();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{}/healthz", self.base)).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "b2-proxy not healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads `len` bytes at `offset` and reports the outcome and how long it took.
/// Sets `fs.fuse.max_pages_limit` for the mounts made while it lives, and puts the old value back.
struct MaxPages(String);

const MAX_PAGES_LIMIT: &str = "/proc/sys/fs/fuse/max_pages_limit";

impl MaxPages {
    fn set(pages: u32) -> Self {
        let before = std::fs::read_to_string(MAX_PAGES_LIMIT).unwrap_or_else(|e| {
            panic!("{MAX_PAGES_LIMIT}: {e} (the kernel needs fs.fuse.max_pages_limit, Linux 6.13+)")
        });
        std::fs::write(MAX_PAGES_LIMIT, pages.to_string())
            .unwrap_or_else(|e| panic!("cannot set {MAX_PAGES_LIMIT} (needs root): {e}"));
        Self(before.trim().to_string())
    }
}

impl Drop for MaxPages {
    fn drop(&mut self) {
        let _ = std::fs::write(MAX_PAGES_LIMIT, &self.0);
    }
}

/// A prover's one 3.65 MB read() of a v2 chunk index reaches the proxy as one request when the kernel allows
/// 4 MiB FUSE requests (what the package's sysctl.d file sets), so a cold index read is one upstream GET, not
/// four in sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_read_is_one_upstream_request() {
    const SIZE: u64 = 1 << 30;
    const INDEX: u64 = 3_650_000;
    let env = start(
        Emulator::builder()
            .virtual_file("v2/k28.plot", SIZE)
            .latency(Duration::from_millis(20), 0.0),
        |c| c.fetch.hedge = false,
    )
    .await;
    let limit = MaxPages::set(1024);
    let m = mount(&env);
    // The mount has its limits from the kernel at mount time: the old value may come back now.
    drop(limit);
    env.emu.reset_stats();
    let offset = SIZE - INDEX;
    let path = m.join("v2/k28.plot");
    let buf = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&path).expect("open");
        let mut buf = vec![0u8; INDEX as usize];
        let n = f.read_at(&mut buf, offset).expect("pread");
        buf.truncate(n);
        buf
    })
    .await
    .expect("reader");
    assert_eq!(buf.len() as u64, INDEX);
    assert_bytes(&env.emu, "v2/k28.plot", offset, &buf);
    let ranges: Vec<_> = env
        .emu
        .stats()
        .recent_ranges
        .into_iter()
        .filter(|r| r.name == "v2/k28.plot" && r.end >= offset && r.start < SIZE)
        .collect();
    println!("downloads for the 3.65 MB read: {ranges:?}");
    assert_eq!(
        ranges.len(),
        1,
        "one cold 3.65 MB read took {} downloads: {ranges:?}",
        ranges.len()
    );
    assert!(ranges[0].start <= offset && ranges[0].end >= SIZE - 1);
}

fn timed_read(path: &Path, offset: u64, len: usize) -> (std::io::Result<Vec<u8>>, Duration) {
    let started = Instant::now();
    let result = std::fs::File::open(path).and_then(|f| {
        let mut buf = vec![0u8; len];
        let n = f.read_at(&mut buf, offset)?;
        buf.truncate(n);
        Ok(buf)
    });
    (result, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_down_gives_eio_within_the_timeout_and_reads_recover_after_restart() {
    const TIMEOUT: Duration = Duration::from_secs(2);
    // Scheduling slack on a loaded 2-core machine; the bound under test is the shim's --timeout.
    const SLACK: Duration = Duration::from_millis(2500);
    let emu = Emulator::builder()
        .virtual_file("plots/k32.plot", BIG)
        .start()
        .await
        .expect("emulator");
    let work = tempfile::tempdir().expect("tempdir");
    let mut proxy = ProxyProcess::start(&emu, work.path());
    proxy.wait_healthy().await;
    let m = mount_with(&proxy.base, |s| {
        s.arg("--timeout")
            .arg("2s")
            .arg("--connect-timeout")
            .arg("1s")
    });
    let plot = m.join("plots/k32.plot");
    let (ok, _) = timed_read(&plot, 1 << 30, 8191);
    assert_bytes(
        &emu,
        "plots/k32.plot",
        1 << 30,
        &ok.expect("read with the proxy up"),
    );

    // A hung proxy (stopped: the kernel still accepts connections, nothing answers): EIO within --timeout.
    proxy.signal(libc::SIGSTOP);
    let (err, took) = timed_read(&plot, 5 << 30, 8191);
    let err = err.expect_err("read with the proxy hung");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(took <= TIMEOUT + SLACK, "EIO took {took:?}");
    println!("hung proxy: EIO after {took:?} (--timeout {TIMEOUT:?})");
    // Metadata is served from the shim's tree meanwhile.
    assert_eq!(std::fs::metadata(&plot).expect("stat").len(), BIG);

    // A dead proxy (connection refused): EIO at once.
    proxy.kill();
    let (err, took) = timed_read(&plot, 6 << 30, 8191);
    let err = err.expect_err("read with the proxy dead");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(took <= TIMEOUT + SLACK, "EIO took {took:?}");
    println!("dead proxy: EIO after {took:?}");

    // Back on the same port: the first read succeeds (stale pooled connections are retried).
    proxy.spawn();
    proxy.wait_healthy().await;
    for offset in [5u64 << 30, 1 << 30, 6 << 30, 9 << 30] {
        let (ok, _) = timed_read(&plot, offset, 8191);
        let data = ok.unwrap_or_else(|e| panic!("read at {offset} after the restart: {e}"));
        assert_eq!(data.len(), 8191);
        assert_bytes(&emu, "plots/k32.plot", offset, &data);
    }
    drop(m);
    proxy.kill();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_unmounts_cleanly_even_with_open_files() {
    let env = start(
        Emulator::builder().virtual_file("plots/k32.plot", BIG),
        |_| {},
    )
    .await;

    // Idle mount: SIGTERM, exit 0, mount gone.
    let (_dirs, mnt, log) = dirs();
    let mount = Shim::new(&mnt, &env.base)
        .log_level("info")
        .log_file(&log)
        .mount()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let started = Instant::now();
    let status = mount
        .terminate(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("unmounted"), "{text}");

    // A harvester holding a plot open: the shim detaches the mount lazily and still exits 0; the open file
    // then fails instead of hanging.
    let (_dirs2, mnt2, log2) = dirs();
    let mount = Shim::new(&mnt2, &env.base)
        .log_file(&log2)
        .mount()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let held = std::fs::File::open(mount.join("plots/k32.plot")).expect("open");
    let mut buf = vec![0u8; 8191];
    assert_eq!(held.read_at(&mut buf, 0).expect("read"), 8191);
    let status = mount
        .terminate(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(status.success(), "exit status {status}");
    assert!(
        held.read_at(&mut buf, 0).is_err(),
        "read after the shim exited"
    );
    drop(held);
    assert!(!b2fs_tests::mount::is_mounted(&mnt2));
}

/// A plot directory served by the emulator, with a proxy and a mount in front of it.
async fn serve_dir(dir: &Path) -> (Env, TestMount) {
    let env = start(Emulator::builder().dir(dir), |_| {}).await;
    let m = mount(&env);
    (env, m)
}

/// Runs a real prover's lookups on the local plot and on its mounted copy, off the runtime (the provers
/// block), and returns both results.
async fn local_and_mounted<R: Send + 'static>(
    local: &Path,
    mounted: &Path,
    lookups: impl Fn(&Path) -> anyhow::Result<R> + Send + 'static,
) -> (R, R) {
    let (local, mounted) = (local.to_path_buf(), mounted.to_path_buf());
    let (l, m) = tokio::task::spawn_blocking(move || (lookups(&local), lookups(&mounted)))
        .await
        .expect("join");
    (
        l.unwrap_or_else(|e| panic!("local plot: {e:#}")),
        m.unwrap_or_else(|e| panic!("mounted plot: {e:#}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chiapos_proofs_through_the_mount_match_local_disk() {
    // Fails (never skips) without the venv, with the command that creates it.
    chia::chiapos_python().unwrap_or_else(|e| panic!("{e:#}"));
    let plots = tempfile::tempdir().expect("tempdir");
    let plot = tokio::task::spawn_blocking({
        let dir = plots.path().to_owned();
        move || chia::create_chiapos_plot(&dir, "plot-k18.plot", 18, 1)
    })
    .await
    .expect("join")
    .unwrap_or_else(|e| panic!("{e:#}"));
    let (env, m) = serve_dir(plots.path()).await;
    let mounted = m.join("plot-k18.plot");
    assert_eq!(
        std::fs::metadata(&mounted).expect("stat").len(),
        std::fs::metadata(&plot.path).expect("stat").len()
    );

    let challenges = chia::challenges(18, 40);
    let options = chia::ChiaposOptions {
        full_proofs: true,
        parallel_read: true,
    };
    let (local, remote) = local_and_mounted(&plot.path, &mounted, move |p| {
        chia::chiapos_lookups(p, &challenges, options)
    })
    .await;
    local
        .assert_same_results(&remote)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        remote.proof_count() >= 10,
        "only {} proofs",
        remote.proof_count()
    );
    assert_eq!(remote.proof_count(), remote.quality_count());
    assert!(
        remote.invalid_proofs().is_empty(),
        "invalid: {:?}",
        remote.invalid_proofs()
    );
    assert!(env.downloads() > 0, "the mount did not read through b2fs");
    println!(
        "chiapos k=18: {} challenges, {} proofs identical and valid",
        remote.lookups.len(),
        remote.proof_count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chia_pos2_proofs_through_the_mount_match_local_disk() {
    let plots = tempfile::tempdir().expect("tempdir");
    let plot = tokio::task::spawn_blocking({
        let path = plots.path().join("plot-k18.gplot");
        move || chia::create_pos2_plot(&path, 18, 2, 1)
    })
    .await
    .expect("join")
    .unwrap_or_else(|e| panic!("{e:#}"));
    let (env, m) = serve_dir(plots.path()).await;
    let mounted = m.join("plot-k18.gplot");

    let challenges = chia::challenges(2, 16);
    let (local, remote) = local_and_mounted(&plot.path, &mounted, move |p| {
        chia::pos2_lookups(p, &challenges, true)
    })
    .await;
    local
        .assert_same_results(&remote)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        remote.proof_count() >= 5,
        "only {} proofs",
        remote.proof_count()
    );
    assert!(
        remote.invalid_proofs().is_empty(),
        "invalid: {:?}",
        remote.invalid_proofs()
    );
    assert!(env.downloads() > 0, "the mount did not read through b2fs");
    println!(
        "chia-pos2 k=18: {} challenges, {} proofs identical and valid",
        remote.lookups.len(),
        remote.proof_count()
    );
}
