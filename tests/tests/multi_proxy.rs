//! Several b2-proxy processes behind a real HAProxy running the shipped `deploy/haproxy.cfg` (addresses
//! replaced, nothing else: see `b2fs_tests::haproxy`), the emulator behind them and a b2fs-shim mount through
//! HAProxy, with one `auth_token` everywhere.
//!
//! Which proxy serves a file is read from the proxies themselves: files are read one at a time through the
//! mount, and the one proxy whose `b2proxy_requests_total{route="file"}` moved served it. HAProxy's own view
//! (a server going DOWN or UP) is read from its log.
//!
//! Needs `/usr/sbin/haproxy` (Debian package `haproxy`, installed by ./test.sh): without it the tests fail
//! with the command that installs it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use b2fs_tests::emulator::{Emulator, FileInfo};
use b2fs_tests::haproxy::{self, HaProxy, SHIPPED_CONFIG};
use b2fs_tests::mount::{Mount, Shim, proxy_binary};

const TOKEN: &str = "multi-proxy-test-token-0123456789";
const FILES: usize = 24;
/// Not a multiple of the 64 KiB block, so reads end inside one.
const FILE_SIZE: u64 = 300_000;
/// The shipped health check (asserted against the file in `shipped_check`): every second, down after 2
/// failures, up after 2 successes.
const INTER: Duration = Duration::from_secs(1);
const FALL: u32 = 2;
const RISE: u32 = 2;
/// The shim's bound on one request: a read never takes longer than this (plus scheduling).
const SHIM_TIMEOUT: Duration = Duration::from_secs(5);
/// Scheduling slack on a loaded 2-core machine (four processes, the emulator and the test share it); the
/// bounds under test are the health check's and the shim's.
const SLACK: Duration = Duration::from_secs(4);

/// The shipped config checks every `INTER`, `FALL` failures take a server out, `RISE` successes put it back.
fn shipped_check() {
    let want = format!("check inter {}s fall {FALL} rise {RISE}", INTER.as_secs());
    assert!(
        SHIPPED_CONFIG.contains(&want),
        "deploy/haproxy.cfg no longer has `{want}`: update the test's constants"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A b2-proxy process on a fixed port (so it can be killed and started again on it).
struct ProxyProc {
    name: String,
    port: u16,
    config: PathBuf,
    child: Option<Child>,
    http: reqwest::Client,
}

impl ProxyProc {
    /// Writes the config (`emu`'s bucket, the shared token, a 32 MiB memory tier, no disk tier) and starts
    /// the proxy; does not wait for it to be healthy.
    fn start(name: &str, emu: &Emulator, dir: &Path) -> Self {
        let port = free_port();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "{}[server]\nlisten = \"127.0.0.1:{port}\"\nauth_token = \"{TOKEN}\"\n\
                 [cache]\nmemory = \"32MiB\"\ndisk = 0\n\
                 [fetch]\ntimeout = \"2s\"\nread_deadline = \"4s\"\n",
                emu.proxy_b2_toml()
            ),
        )
        .expect("write config");
        // It holds the application key: private, as the proxy asks.
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let mut p = Self {
            name: name.to_string(),
            port,
            config,
            child: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .no_proxy()
                .build()
                .expect("client"),
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
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn b2-proxy");
        self.child = Some(child);
    }

    /// SIGKILL: no drain, no goodbye, as a crash.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `/healthz`: status code and body (0 when unreachable).
    async fn health(&self) -> (u16, serde_json::Value) {
        match self
            .http
            .get(format!("{}/healthz", self.base()))
            .send()
            .await
        {
            Ok(r) => {
                let code = r.status().as_u16();
                (code, r.json().await.unwrap_or_default())
            }
            Err(_) => (0, serde_json::Value::Null),
        }
    }

    async fn wait_health(&self, code: u16, limit: Duration) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let (c, body) = self.health().await;
            if c == code {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{}: /healthz is {c}, not {code}, after {limit:?}: {body}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// File requests this proxy answered (every outcome), from its own metrics.
    async fn file_requests(&self) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("{} /metrics: {e}", self.name))
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .filter(|l| l.starts_with("b2proxy_requests_total{") && l.contains("route=\"file\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for ProxyProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// HAProxy on the shipped config with these proxies, on `frontend`.
fn start_haproxy(dir: &Path, frontend: u16, proxies: &[&ProxyProc]) -> HaProxy {
    let frontend = std::net::SocketAddr::from(([127, 0, 0, 1], frontend));
    let addrs: Vec<_> = proxies.iter().map(|p| p.addr()).collect();
    let cfg =
        haproxy::config_for(SHIPPED_CONFIG, frontend, &addrs).unwrap_or_else(|e| panic!("{e:#}"));
    HaProxy::start(dir, &cfg, frontend).unwrap_or_else(|e| panic!("{e:#}"))
}

fn mount_through(lb: &HaProxy, dir: &Path) -> Mount {
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).expect("mkdir mnt");
    Shim::new(&mnt, lb.url())
        .log_level("info")
        .log_file(dir.join("shim.log"))
        .arg("--token")
        .arg(TOKEN)
        .arg("--timeout")
        .arg(format!("{}s", SHIM_TIMEOUT.as_secs()))
        .arg("--connect-timeout")
        .arg("1s")
        .mount()
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Reads the whole file off the runtime; the outcome and how long it took.
async fn read_whole(path: PathBuf) -> (std::io::Result<Vec<u8>>, Duration) {
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let r = std::fs::read(&path);
        (r, t.elapsed())
    })
    .await
    .expect("read thread")
}

/// Reads `[off, off + len)` off the runtime.
async fn read_range(path: PathBuf, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&path)?;
        let mut buf = vec![0u8; len];
        let n = f.read_at(&mut buf, off)?;
        buf.truncate(n);
        Ok(buf)
    })
    .await
    .expect("read thread")
}

fn assert_exact(emu: &Emulator, f: &FileInfo, off: u64, got: &[u8]) {
    let want = emu
        .expected_bytes(&f.name, off, got.len() as u64)
        .expect("expected bytes");
    assert!(
        got == &want[..],
        "{}: WRONG BYTES at {off} (+{})",
        f.name,
        got.len()
    );
}

/// Reads every file whole through the mount, one at a time, each byte-exact, and returns which of `proxies`
/// (by index; `None` entries are down and not asked) served each: the only one whose file-request counter
/// moved during the read.
async fn owners(
    emu: &Emulator,
    m: &Mount,
    files: &[FileInfo],
    proxies: &[Option<&ProxyProc>],
) -> Vec<usize> {
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let mut before = Vec::new();
        for p in proxies {
            before.push(match p {
                Some(p) => p.file_requests().await,
                None => 0.0,
            });
        }
        let (r, took) = read_whole(m.join(&f.name)).await;
        let data = r.unwrap_or_else(|e| panic!("read {}: {e}", f.name));
        assert!(
            took <= SHIM_TIMEOUT + SLACK,
            "{}: read took {took:?}",
            f.name
        );
        assert_eq!(data.len() as u64, f.size, "{}", f.name);
        assert_exact(emu, f, 0, &data);
        let mut served = Vec::new();
        for (i, p) in proxies.iter().enumerate() {
            if let Some(p) = p
                && p.file_requests().await > before[i]
            {
                served.push(i);
            }
        }
        assert_eq!(
            served.len(),
            1,
            "{}: served by proxies {served:?}, want exactly one",
            f.name
        );
        out.push(served[0]);
    }
    out
}

fn counts(owner: &[usize], n: usize) -> Vec<usize> {
    let mut c = vec![0; n];
    for o in owner {
        c[*o] += 1;
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_proxies_behind_haproxy_hash_fail_over_and_rebalance() {
    shipped_check();
    haproxy::binary().unwrap_or_else(|e| panic!("{e:#}"));
    let emu = Emulator::builder()
        .virtual_files("plots/plot-", FILES, FILE_SIZE)
        .start()
        .await
        .expect("emulator");
    let files = emu.files();
    assert_eq!(files.len(), FILES);
    let work = tempfile::tempdir().expect("tempdir");
    let mut proxies: Vec<ProxyProc> = (1..=3)
        .map(|i| ProxyProc::start(&format!("proxy{i}"), &emu, work.path()))
        .collect();
    for p in &proxies {
        p.wait_health(200, Duration::from_secs(20)).await;
    }
    let frontend = free_port();
    let lb_dir = work.path().join("lb");
    std::fs::create_dir_all(&lb_dir).expect("mkdir");
    let mut lb = start_haproxy(&lb_dir, frontend, &proxies.iter().collect::<Vec<_>>());
    let m = mount_through(&lb, work.path());

    // Every file byte-exact, each served by one proxy, and the plots spread.
    let all: Vec<Option<&ProxyProc>> = proxies.iter().map(Some).collect();
    let initial = owners(&emu, &m, &files, &all).await;
    let c = counts(&initial, 3);
    println!("3 proxies: files per proxy {c:?}");
    assert!(
        c.iter().all(|n| *n * 100 <= FILES * 60),
        "a proxy owns more than 60% of the files: {c:?}"
    );
    // A second pass hits the same proxies (and their caches).
    let again = owners(&emu, &m, &files, &all).await;
    assert_eq!(again, initial, "files changed proxy without any change");

    // SIGKILL the proxy with the most files: its files are served by the others within the health check's
    // detection time (reads meanwhile may fail with EIO, never with wrong bytes, never hang).
    let victim = (0..3).max_by_key(|i| c[*i]).expect("a proxy");
    let vname = proxies[victim].name.clone();
    let downs = lb.state_changes(&vname, "DOWN");
    let ups = lb.state_changes(&vname, "UP");
    proxies[victim].kill();
    let killed = Instant::now();
    let mut eio = 0;
    let mut served_again = Duration::ZERO;
    for (f, _) in files.iter().zip(&initial).filter(|(_, o)| **o == victim) {
        loop {
            let (r, took) = read_whole(m.join(&f.name)).await;
            assert!(
                took <= SHIM_TIMEOUT + SLACK,
                "{}: a read hung for {took:?}",
                f.name
            );
            match r {
                Ok(data) => {
                    assert_eq!(data.len() as u64, f.size, "{}", f.name);
                    assert_exact(&emu, f, 0, &data);
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::EIO) => eio += 1,
                Err(e) => panic!("{}: {e} (want EIO or the bytes)", f.name),
            }
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "{} not served 30 s after {vname} was killed",
                f.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        served_again = killed.elapsed();
    }
    let detection = INTER * FALL;
    println!(
        "{vname} killed: its {} files served again after {served_again:?} ({eio} reads failed with EIO \
         meanwhile); target <= health check {detection:?} + 2 s",
        c[victim]
    );
    assert!(
        served_again <= detection + Duration::from_secs(2) + SLACK,
        "{vname}'s files took {served_again:?} to be served again"
    );
    lb.wait_state(&vname, "DOWN", downs, detection + SLACK * 2)
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Seen in the log at most this long after the kill (the log is polled).
    println!(
        "haproxy marked {vname} DOWN within {:?} of the kill",
        killed.elapsed()
    );

    // The others' files did not move; the victim's went to the others.
    let live: Vec<Option<&ProxyProc>> = proxies
        .iter()
        .enumerate()
        .map(|(i, p)| (i != victim).then_some(p))
        .collect();
    let during = owners(&emu, &m, &files, &live).await;
    for (i, f) in files.iter().enumerate() {
        if initial[i] == victim {
            assert_ne!(during[i], victim, "{}", f.name);
        } else {
            assert_eq!(during[i], initial[i], "{} moved off a live proxy", f.name);
        }
    }
    println!(
        "while {vname} is down: files per proxy {:?}",
        counts(&during, 3)
    );

    // Back on its port (a new process, cold cache): its files return to it.
    proxies[victim].spawn();
    proxies[victim]
        .wait_health(200, Duration::from_secs(20))
        .await;
    let t = Instant::now();
    lb.wait_state(&vname, "UP", ups, INTER * RISE + SLACK * 2)
        .unwrap_or_else(|e| panic!("{e:#}"));
    println!(
        "haproxy marked {vname} UP {:?} after it was healthy",
        t.elapsed()
    );
    let all: Vec<Option<&ProxyProc>> = proxies.iter().map(Some).collect();
    let back = owners(&emu, &m, &files, &all).await;
    let changed = back.iter().zip(&initial).filter(|(a, b)| a != b).count();
    println!("{vname} back: {changed} of {FILES} files changed owner against the start");
    assert_eq!(
        changed, 0,
        "files did not return to {vname}: {back:?} vs {initial:?}"
    );

    // A fourth proxy: HAProxy restarted with one more server line; only the files it takes move, and about
    // a quarter of them.
    proxies.push(ProxyProc::start("proxy4", &emu, work.path()));
    proxies[3].wait_health(200, Duration::from_secs(20)).await;
    lb.stop();
    let lb_dir = work.path().join("lb4");
    std::fs::create_dir_all(&lb_dir).expect("mkdir");
    let lb4 = start_haproxy(&lb_dir, frontend, &proxies.iter().collect::<Vec<_>>());
    let all: Vec<Option<&ProxyProc>> = proxies.iter().map(Some).collect();
    let four = owners(&emu, &m, &files, &all).await;
    let moved: Vec<usize> = (0..FILES).filter(|i| four[*i] != initial[*i]).collect();
    println!(
        "4 proxies: files per proxy {:?}; {} of {FILES} files moved (expected ~{})",
        counts(&four, 4),
        moved.len(),
        FILES / 4
    );
    for i in &moved {
        assert_eq!(
            four[*i], 3,
            "{} moved between old proxies ({} -> {})",
            files[*i].name, initial[*i], four[*i]
        );
    }
    assert!(!moved.is_empty(), "the new proxy got no files");
    // ~1/4 expected; 24 names hash with some spread around 6.
    assert!(
        moved.len() <= FILES / 4 + 3,
        "{} of {FILES} files moved",
        moved.len()
    );
    drop(m);
    drop(lb4);
    drop(proxies);
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_takes_out_a_proxy_without_catalog_and_keeps_one_with_an_open_circuit() {
    shipped_check();
    haproxy::binary().unwrap_or_else(|e| panic!("{e:#}"));
    // Three proxies on three emulators of the same bucket (the same names give the same bytes), so one
    // proxy's upstream can fail alone: proxy2's emulator goes offline later, proxy3's is offline from the
    // start (its catalog never loads).
    let build = || Emulator::builder().virtual_files("plots/plot-", FILES, FILE_SIZE);
    let emu = build().start().await.expect("emulator 1");
    let emu2 = build().start().await.expect("emulator 2");
    let emu3 = build().offline(true).start().await.expect("emulator 3");
    let files = emu.files();
    let work = tempfile::tempdir().expect("tempdir");
    let p1 = ProxyProc::start("proxy1", &emu, work.path());
    let p2 = ProxyProc::start("proxy2", &emu2, work.path());
    let p3 = ProxyProc::start("proxy3", &emu3, work.path());
    p1.wait_health(200, Duration::from_secs(20)).await;
    p2.wait_health(200, Duration::from_secs(20)).await;
    let h3 = p3.wait_health(503, Duration::from_secs(20)).await;
    // Its B2 is unreachable from its start: never authorized, so its catalog never loaded.
    assert_eq!(h3["status"], "unavailable", "{h3}");
    assert_eq!(h3["catalog"]["loaded"], false, "{h3}");
    let lb_dir = work.path().join("lb");
    std::fs::create_dir_all(&lb_dir).expect("mkdir");
    let t = Instant::now();
    let lb = start_haproxy(&lb_dir, free_port(), &[&p1, &p2, &p3]);

    // The proxy that cannot serve is taken out by the check, and serves nothing.
    lb.wait_state("proxy3", "DOWN", 0, INTER * FALL + SLACK * 2)
        .unwrap_or_else(|e| panic!("{e:#}"));
    println!(
        "proxy3 (catalog never loaded, /healthz {}) marked DOWN {:?} after haproxy started",
        h3["reason"],
        t.elapsed()
    );
    let m = mount_through(&lb, work.path());
    let live = [Some(&p1), Some(&p2), Some(&p3)];
    let without3 = owners(&emu, &m, &files, &live).await;
    assert!(without3.iter().all(|o| *o != 2), "{without3:?}");
    assert_eq!(
        p3.file_requests().await,
        0.0,
        "proxy3 served files while down"
    );

    // Once its catalog loads it is put back and takes its share.
    let ups = lb.state_changes("proxy3", "UP");
    emu3.set_offline(false);
    p3.wait_health(200, Duration::from_secs(20)).await;
    lb.wait_state("proxy3", "UP", ups, INTER * RISE + SLACK * 2)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let with3 = owners(&emu, &m, &files, &live).await;
    let c = counts(&with3, 3);
    println!("proxy3 loaded its catalog and is back: files per proxy {c:?}");
    assert!(c[2] > 0, "proxy3 is up but serves no file: {with3:?}");
    for (i, o) in with3.iter().enumerate() {
        if *o != 2 {
            assert_eq!(
                *o, without3[i],
                "{} moved between proxy1 and proxy2",
                files[i].name
            );
        }
    }

    // proxy2's upstream fails until its circuit opens: /healthz stays 200 (`degraded`), HAProxy keeps it in,
    // and its cached files are still served, by it, byte-exact.
    let mine: Vec<&FileInfo> = files
        .iter()
        .zip(&with3)
        .filter(|(_, o)| **o == 1)
        .map(|(f, _)| f)
        .collect();
    assert!(!mine.is_empty(), "proxy2 owns no file: {with3:?}");
    // Files proxy2 never served (proxy1's in both passes): not in its cache, so reads of them sent straight
    // to proxy2 go upstream, fail, and count toward its circuit.
    let uncached: Vec<&FileInfo> = files
        .iter()
        .enumerate()
        .filter(|(i, _)| without3[*i] == 0 && with3[*i] == 0)
        .map(|(_, f)| f)
        .collect();
    assert!(!uncached.is_empty(), "every file went through proxy2");
    let downs = lb.state_changes("proxy2", "DOWN");
    emu2.set_offline(true);
    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        let (code, body) = p2.health().await;
        if code == 200 && body["upstream_circuit"] == "open" {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "proxy2's circuit did not open within 30 s: {code} {body}"
        );
        force_misses(&p2, &uncached).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(health["status"], "degraded", "{health}");
    println!(
        "proxy2's upstream is offline: /healthz 200 {}",
        health["reason"]
    );
    let t = Instant::now();
    let before = p2.file_requests().await;
    let mut reads = 0;
    // Longer than the check needs to take a server out (FALL failed checks, INTER apart).
    while t.elapsed() < INTER * (FALL + 2) {
        for f in &mine {
            let got = read_range(m.join(&f.name), 12_345, 8191)
                .await
                .unwrap_or_else(|e| {
                    panic!("cached read of {} with proxy2's circuit open: {e}", f.name)
                });
            assert_eq!(got.len(), 8191);
            assert_exact(&emu, f, 12_345, &got);
            reads += 1;
        }
    }
    let served = p2.file_requests().await - before;
    println!(
        "{reads} cached reads of proxy2's {} files over {:?} with its circuit open: all served, {served} by proxy2",
        mine.len(),
        t.elapsed()
    );
    assert!(
        served >= reads as f64,
        "proxy2 served {served} of {reads} reads"
    );
    assert_eq!(
        lb.state_changes("proxy2", "DOWN"),
        downs,
        "haproxy took proxy2 out:\n{}",
        lb.log()
    );
    drop(m);
    drop(lb);
    drop((p1, p2, p3));
    emu.shutdown().await;
    emu2.shutdown().await;
    emu3.shutdown().await;
}

/// Reads of `files` sent straight to `p` (not through HAProxy), none of them cached there: each goes
/// upstream, and its answer is not checked (the upstream is offline).
async fn force_misses(p: &ProxyProc, files: &[&FileInfo]) {
    for f in files {
        let _ = p
            .http
            .get(format!("{}/files/{}", p.base(), f.name))
            .bearer_auth(TOKEN)
            .header("Range", "bytes=0-100")
            .send()
            .await;
    }
}
