//! Reliability and security: fault soak, bad input, slow and idle clients, load, upstream outage.
//! Each test prints its figures. Long versions: `B2FS_SOAK_SECS=300 B2FS_OUTAGE_SECS=60 B2FS_LOAD_SECS=60 \
//! cargo test --release -p b2fs-tests --test reliability -- --nocapture` (CI runs the short defaults).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use b2fs_tests::emulator::{Emulator, Fault};
use common::{ProxyProcess, Rng, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIG: u64 = 108 << 30;

fn secs(var: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_soak_over_http() {
    let soak = secs("B2FS_SOAK_SECS", 10);
    let mut b = Emulator::builder()
        .virtual_file("k32.plot", BIG)
        .latency(Duration::from_millis(10), 0.5)
        .tail(0.01, Duration::from_millis(400))
        .token_lifetime(Duration::from_secs(3))
        .retry_after(1)
        .seed(1234);
    for f in Fault::ALL {
        b = b.fault(f, 0.02);
    }
    let env = start(b, |c| c.cache.memory = bytesize::ByteSize::mib(16)).await;
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + soak;
    let env = Arc::new(env);
    let clients: Vec<_> = (0..16u64)
        .map(|c| {
            let (env, ok, errors, wrong) = (env.clone(), ok.clone(), errors.clone(), wrong.clone());
            tokio::spawn(async move {
                let mut rng = Rng(c * 7919 + 1);
                while Instant::now() < deadline {
                    let len = 8192 + rng.below(56 * 1024);
                    // A bounded working set, so hits and misses mix as on a real farm.
                    let off = rng.below(4096) * (24 << 20) + rng.below(1 << 20);
                    let (status, body) = env.get_range("k32.plot", off, off + len).await;
                    match status {
                        206 => {
                            let want = env
                                .emu
                                .expected_bytes("k32.plot", off, len)
                                .expect("expected");
                            if body[..] == want[..] {
                                ok.fetch_add(1, Ordering::Relaxed);
                            } else {
                                wrong.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        502..=504 => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        other => panic!("unexpected status {other}"),
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("client");
    }
    let s = env.emu.stats();
    let (ok, errors, wrong) = (
        ok.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        wrong.load(Ordering::Relaxed),
    );
    let total = ok + errors + wrong;
    let retries = env.metric("b2proxy_upstream_retries_total").await;
    println!(
        "fault soak {soak:?}: {total} reads, {ok} exact, {errors} clean 5xx, {wrong} wrong; upstream {} downloads, \
         {} authorizations, faults injected {:?}; {retries} retries",
        s.requests.download_by_id, s.requests.authorize, s.faults
    );
    assert_eq!(wrong, 0, "wrong bytes served");
    assert!(total > 100, "too few reads: {total}");
    assert!(
        ok as f64 >= total as f64 * 0.98,
        "only {ok} of {total} served"
    );
    let injected = s.faults.injected();
    assert!(
        injected > 0 && s.requests.authorize >= 2,
        "the soak did not exercise faults and token renewal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_names_and_ranges() {
    let env = start(
        Emulator::builder()
            .virtual_file("a.plot", 100_000)
            .virtual_file("dir/b.plot", 1000),
        |_| {},
    )
    .await;
    let addr = env.base.trim_start_matches("http://").to_string();
    let long = "x".repeat(4096);
    let paths = [
        "/files/a.plot%00".to_string(),
        "/files/a.plot%00.txt".to_string(),
        "/files/%FF%FE.plot".to_string(),
        "/files/dir%2Fb.plot".to_string(),
        "/files/dir%2F..%2Fa.plot".to_string(),
        "/files/./a.plot".to_string(),
        "/files//a.plot".to_string(),
        format!("/files/{long}"),
        "/files/".to_string(),
        "/files/%".to_string(),
    ];
    for p in &paths {
        let status = common::raw_status(&addr, p).await;
        let shown = &p[..p.len().min(40)];
        // `dir%2Fb.plot` decodes to the catalog name `dir/b.plot`: serving it is right.
        if p == "/files/dir%2Fb.plot" {
            assert_eq!(status, 200, "{shown}");
        } else {
            assert!(
                matches!(status, 400 | 404 | 414),
                "{shown}: status {status}"
            );
        }
    }
    let ranges = [
        ("bytes=-5-10", 400),
        ("bytes=5--10", 400),
        ("bytes=18446744073709551615-", 416),
        ("bytes=18446744073709551616-", 416),
        ("bytes=99999999999999999999999999999999-", 400),
        ("bytes=0-18446744073709551615", 206),
        ("bytes=0-999999999999999999999", 206),
    ];
    for (r, want) in ranges {
        let resp = env
            .http
            .get(env.url("a.plot"))
            .header("Range", r)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        assert_eq!(status, want, "{r}");
        if status == 206 {
            assert_eq!(body.len(), 100_000, "{r}");
        }
    }
    // Non-ASCII header bytes.
    let status = {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        s.write_all(b"GET /files/a.plot HTTP/1.1\r\nHost: x\r\nRange: bytes=\xff-\r\nConnection: close\r\n\r\n").await.expect("write");
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        String::from_utf8_lossy(&buf[..buf.len().min(20)]).to_string()
    };
    assert!(status.contains(" 400 "), "{status}");
    // Still healthy.
    env.assert_range("a.plot", 0, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_idle_clients_are_bounded() {
    let emu = Emulator::builder()
        .virtual_file("a.plot", 1 << 30)
        .start()
        .await
        .expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = ProxyProcess::start(
        &emu,
        dir.path(),
        "[server]\nmax_connections = 512\nidle_timeout = \"4s\"\n",
    )
    .await;
    let addr = proxy.base.trim_start_matches("http://").to_string();
    let http = common::http();
    let read = |http: reqwest::Client, base: String| async move {
        let r = http
            .get(format!("{base}/files/a.plot"))
            .header("Range", "bytes=0-8190")
            .send()
            .await
            .expect("read");
        r.status().as_u16()
    };
    assert_eq!(read(http.clone(), proxy.base.clone()).await, 206);
    let rss_before = proxy.rss();

    // 2,000 idle connections and 50 slowloris clients trickling a request head.
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect"),
        );
    }
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        s.write_all(b"GET /files/a.plot HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        slow.push(s);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_loaded = proxy.rss();
    // The head deadline (idle_timeout, 4 s here) closes connections that never complete a request, freeing slots.
    let t = Instant::now();
    let mut served = false;
    while t.elapsed() < Duration::from_secs(25) {
        let h = http.clone();
        let b = proxy.base.clone();
        if let Ok(status) = tokio::time::timeout(Duration::from_secs(3), read(h, b)).await
            && status == 206
        {
            served = true;
            break;
        }
    }
    let waited = t.elapsed();
    // Past the head deadline of the slowloris connections (opened ~1 s before `t`).
    let since_slow = t.elapsed() + Duration::from_secs(1);
    if since_slow < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_secs(6) - since_slow).await;
    }
    let mut closed = 0;
    for s in slow.iter_mut() {
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await
        {
            // 0: closed; otherwise hyper answered 408.
            let _ = n;
            closed += 1;
        }
    }
    println!(
        "2000 idle + 50 slowloris connections: RSS {} -> {} MiB; a real client served after {waited:?}; {closed}/50 slowloris connections closed",
        rss_before >> 20,
        rss_loaded >> 20
    );
    assert!(served, "a normal client was locked out by idle connections");
    assert!(
        closed >= 45,
        "slowloris connections kept open: only {closed}/50 closed"
    );
    assert!(
        rss_loaded < rss_before + (128 << 20),
        "RSS grew from {rss_before} to {rss_loaded}"
    );
    drop(idle);
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_256_clients_on_cache_hits() {
    let dur = secs("B2FS_LOAD_SECS", 5);
    let emu = Emulator::builder()
        .virtual_file("a.plot", 1 << 30)
        .start()
        .await
        .expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = ProxyProcess::start(&emu, dir.path(), "[server]\nmax_connections = 1024\n").await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(300)
        .no_proxy()
        .build()
        .expect("client");
    // Warm 64 blocks.
    for i in 0..64u64 {
        let r = http
            .get(format!("{}/files/a.plot", proxy.base))
            .header("Range", format!("bytes={}-{}", i << 16, (i << 16) + 8190))
            .send()
            .await
            .expect("warm");
        assert_eq!(r.status(), 206);
    }
    let downloads_warm = emu.stats().requests.download_by_id;
    let rss_before = proxy.rss();
    let deadline = Instant::now() + dur;
    let clients: Vec<_> = (0..256u64)
        .map(|c| {
            let http = http.clone();
            let url = format!("{}/files/a.plot", proxy.base);
            tokio::spawn(async move {
                let mut rng = Rng(c + 1);
                let mut lat = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let i = rng.below(64);
                    let t = Instant::now();
                    match http
                        .get(&url)
                        .header("Range", format!("bytes={}-{}", i << 16, (i << 16) + 8190))
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 206 => match r.bytes().await {
                            Ok(b) if b.len() == 8191 => lat.push(t.elapsed()),
                            _ => errors += 1,
                        },
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for c in clients {
        let (lat, e) = c.await.expect("client");
        all.extend(lat);
        errors += e;
    }
    let rss_after = proxy.rss();
    all.sort();
    let n = all.len();
    let p50 = all.get(n / 2).copied().unwrap_or_default();
    let p99 = all.get(n * 99 / 100).copied().unwrap_or_default();
    println!(
        "256 clients on cache hits for {dur:?}: {n} reads ({:.0}/s), p50 {p50:?}, p99 {p99:?}, {errors} errors; proxy RSS {} -> {} MiB",
        n as f64 / dur.as_secs_f64(),
        rss_before >> 20,
        rss_after >> 20
    );
    assert_eq!(errors, 0);
    assert!(n > 1000, "only {n} reads");
    assert_eq!(
        emu.stats().requests.download_by_id,
        downloads_warm,
        "hits went upstream"
    );
    assert!(
        rss_after < rss_before + (256 << 20),
        "RSS grew from {rss_before} to {rss_after}"
    );
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_outage_serves_cache_fails_fast_and_recovers() {
    let outage = secs("B2FS_OUTAGE_SECS", 8);
    let env = start(
        Emulator::builder()
            .virtual_file("k32.plot", BIG)
            .latency(Duration::from_millis(5), 0.0),
        |c| {
            c.fetch.read_deadline = Duration::from_secs(1);
            c.fetch.timeout = Duration::from_millis(500);
        },
    )
    .await;
    let cached: Vec<u64> = (0..20u64).map(|i| i * (3 << 30)).collect();
    for &a in &cached {
        env.assert_range("k32.plot", a, a + 8191).await;
    }
    env.emu.set_offline(true);
    let start_outage = Instant::now();
    let mut rng = Rng(5);
    let (mut hits, mut miss_fail, mut slow_fail) = (0, 0, 0);
    while start_outage.elapsed() < outage {
        for &a in &cached {
            env.assert_range("k32.plot", a, a + 8191).await;
            hits += 1;
        }
        let a = rng.below(BIG - 10_000);
        let t = Instant::now();
        let (status, body) = env.get_range("k32.plot", a, a + 8191).await;
        assert_eq!(
            status,
            503,
            "miss during outage: {}",
            String::from_utf8_lossy(&body)
        );
        if t.elapsed() < Duration::from_millis(500) {
            miss_fail += 1;
        } else {
            slow_fail += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health: serde_json::Value = env
        .http
        .get(format!("{}/healthz", env.base))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert_eq!(health["upstream_circuit"], "open", "{health}");
    env.emu.set_offline(false);
    let back = Instant::now();
    loop {
        let a = rng.below(BIG - 10_000);
        let (status, _) = env.get_range("k32.plot", a, a + 8191).await;
        if status == 206 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "service did not resume"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "outage {outage:?}: {hits} cached reads served, {miss_fail} misses failed fast (<500 ms), {slow_fail} slow failures \
         before the circuit opened; resumed {:?} after upstream came back",
        back.elapsed()
    );
    assert!(
        miss_fail >= slow_fail,
        "misses did not fail fast: {miss_fail} fast, {slow_fail} slow"
    );
    assert!(
        slow_fail <= 3,
        "{slow_fail} misses waited for the full retry deadline"
    );
}
