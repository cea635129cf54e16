//! Block cache behaviour, counted with the emulator's request stats: hits make no upstream request, concurrent
//! misses share one, Chia pairs cost one request, restarts (clean and SIGKILL) keep the disk tier, budgets hold,
//! replaced files serve their new bytes, sequential streams run near the upstream bandwidth, and a disk tier too
//! small for the hot set says so in /healthz.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use b2fs_tests::emulator::Emulator;
use bytesize::ByteSize;
use common::{Rng, start};

const BIG: u64 = 108 << 30;
const BS: u64 = 64 << 10;

fn builder() -> b2fs_tests::emulator::EmulatorBuilder {
    Emulator::builder()
        .virtual_file("k32.plot", BIG)
        .virtual_file("seq.bin", 512 << 20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_read_is_a_hit() {
    let env = start(builder(), |_| {}).await;
    env.assert_range("k32.plot", 1_000_000, 1_008_191).await;
    let before = env.downloads();
    for _ in 0..5 {
        env.assert_range("k32.plot", 1_000_000, 1_008_191).await;
        env.assert_range("k32.plot", 1_000_100, 1_000_200).await;
    }
    assert_eq!(env.downloads(), before, "cached reads went upstream");
    assert!(
        env.metric("b2proxy_cache_hits_total{tier=\"memory\"}")
            .await
            >= 10.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_identical_misses_make_one_request() {
    let env = start(builder().latency(Duration::from_millis(100), 0.0), |c| {
        c.fetch.hedge = false
    })
    .await;
    let env = &env;
    futures::future::join_all(
        (0..32).map(|_| env.assert_range("k32.plot", 5 << 30, (5 << 30) + 8191)),
    )
    .await;
    assert_eq!(env.downloads(), 1);
    // Partly overlapping reads of one missing region also share fetches.
    env.emu.reset_stats();
    let base = 7u64 << 30;
    futures::future::join_all(
        (0..16u64).map(|i| env.assert_range("k32.plot", base + i * 4000, base + i * 4000 + 8191)),
    )
    .await;
    let n = env.downloads();
    // One GET when a read spanning both blocks comes first, two when a single-block read does.
    assert!(
        (1..=2).contains(&n),
        "{n} requests for a region of 2 blocks"
    );
    assert!(env.metric("b2proxy_singleflight_joins_total").await >= 31.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chia_pairs_cost_one_request_each() {
    let env = start(builder(), |_| {}).await;
    let mut rng = Rng(7);
    for _ in 0..200 {
        // A k=32 table step: two adjacent 8191-byte reads, the second after the first answered.
        let off = rng.below(BIG - 20_000);
        env.assert_range("k32.plot", off, off + 8191).await;
        env.assert_range("k32.plot", off + 8191, off + 16_382).await;
    }
    let n = env.downloads();
    assert!(n <= 200, "{n} upstream requests for 200 pairs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_spanning_three_missing_blocks_is_one_request() {
    let env = start(builder(), |_| {}).await;
    let start_off = 10 * BS + 100;
    env.assert_range("k32.plot", start_off, start_off + 2 * BS + 10)
        .await;
    assert_eq!(env.downloads(), 1);
    let rec = &env.emu.stats().recent_ranges;
    assert_eq!(rec.len(), 1);
    assert_eq!(
        (rec[0].start, rec[0].end),
        (10 * BS, 13 * BS - 1),
        "block-aligned single GET"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clean_restart_keeps_the_disk_tier() {
    let mut env = start(builder(), |_| {}).await;
    let mut rng = Rng(11);
    let ranges: Vec<(u64, u64)> = (0..50)
        .map(|_| {
            let a = rng.below(BIG - 20_000);
            (a, a + 8191)
        })
        .collect();
    for &(a, b) in &ranges {
        env.assert_range("k32.plot", a, b).await;
    }
    env.restart_proxy().await;
    env.emu.reset_stats();
    for &(a, b) in &ranges {
        env.assert_range("k32.plot", a, b).await;
    }
    assert_eq!(
        env.downloads(),
        0,
        "reads after a clean restart went upstream"
    );
    assert!(env.metric("b2proxy_cache_hits_total{tier=\"disk\"}").await >= 50.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budgets_hold_and_hot_set_keeps_hitting() {
    let env = start(builder(), |c| {
        c.cache.memory = ByteSize::mib(8);
        c.cache.disk = ByteSize::mib(64);
    })
    .await;
    let hot: Vec<u64> = (0..8).map(|i| i * (1 << 30)).collect();
    for &h in &hot {
        env.assert_range("k32.plot", h, h + 8191).await;
    }
    // 1 GiB of distinct reads (1 MiB each, scattered), with the hot set read between them.
    for i in 0..1024u64 {
        let off = (20 << 30) + i * (37 << 20);
        let (status, body) = env.get_range("k32.plot", off, off + (1 << 20)).await;
        assert_eq!((status, body.len()), (206, 1 << 20));
        // Headers are read at every lookup: the hot set comes back every few MiB of cold traffic.
        if i % 8 == 0 {
            for &h in &hot {
                env.assert_range("k32.plot", h, h + 8191).await;
            }
        }
    }
    env.emu.reset_stats();
    for &h in &hot {
        env.assert_range("k32.plot", h, h + 8191).await;
    }
    assert_eq!(env.downloads(), 0, "the hot set was evicted by a scan");
    let mem = env.metric("b2proxy_cache_memory_bytes").await;
    assert!(
        mem <= (8 << 20) as f64 * 1.05,
        "memory tier holds {mem} bytes, budget 8 MiB"
    );
    let disk = dir_size(env.cache_dir.path());
    assert!(
        disk <= (64 << 20) + (4 << 20),
        "disk tier holds {disk} bytes, budget 64 MiB"
    );
}

fn dir_size(p: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                // Allocated bytes, not apparent size: preallocated sparse files would overstate usage.
                Ok(m) => total += std::os::unix::fs::MetadataExt::blocks(&m) * 512,
                Err(_) => {}
            }
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replaced_file_serves_new_bytes_after_refresh() {
    let env = start(builder(), |c| c.catalog.refresh = Duration::from_secs(1)).await;
    env.assert_range("k32.plot", 4096, 4096 + 8191).await;
    let old = env.emu.expected_bytes("k32.plot", 4096, 8191).unwrap();
    env.emu.replace_file("k32.plot").unwrap();
    let new = env.emu.expected_bytes("k32.plot", 4096, 8191).unwrap();
    assert_ne!(old, new, "emulator did not change the content");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = env.get_range("k32.plot", 4096, 4096 + 8191).await;
        assert_eq!(status, 206);
        if body[..] == new[..] {
            break;
        }
        assert!(body[..] == old[..], "neither old nor new bytes served");
        assert!(
            Instant::now() < deadline,
            "new version not served after refresh"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sequential_read_runs_near_upstream_bandwidth() {
    const RATE: u64 = 32 << 20;
    let env = start(
        builder()
            .bandwidth(RATE)
            .latency(Duration::from_millis(20), 0.0),
        |c| {
            c.cache.disk = ByteSize::b(0);
            c.cache.memory = ByteSize::mib(64);
        },
    )
    .await;
    let t = Instant::now();
    let r = env.http.get(env.url("seq.bin")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut r = r;
    let mut total = 0u64;
    let mut sample_at = 0u64;
    while let Some(chunk) = r.chunk().await.unwrap() {
        if total <= sample_at && sample_at < total + chunk.len() as u64 {
            let off = (sample_at - total) as usize;
            let want = env.emu.expected_bytes("seq.bin", sample_at, 64).unwrap();
            assert_eq!(
                &chunk[off..(off + 64).min(chunk.len())],
                &want[..(chunk.len() - off).min(64)]
            );
            sample_at += 7_777_777;
        }
        total += chunk.len() as u64;
    }
    assert_eq!(total, 512 << 20);
    let secs = t.elapsed().as_secs_f64();
    let ratio = (total as f64 / secs) / RATE as f64;
    println!(
        "sequential: {:.1} MiB/s = {:.0}% of the emulator's {} MiB/s",
        total as f64 / secs / 1048576.0,
        ratio * 100.0,
        RATE >> 20
    );
    assert!(
        ratio >= 0.7,
        "sequential read reached only {:.0}% of the upstream bandwidth",
        ratio * 100.0
    );
}

fn spawn_proxy(config: &std::path::Path) -> Child {
    Command::new(common::workspace_bin("b2-proxy"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn b2-proxy")
}

async fn wait_ready(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "proxy process not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_and_restart_serves_exact_bytes() {
    let emu = builder().start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[server]\nlisten = \"127.0.0.1:{port}\"\n[cache]\nmemory = \"32MiB\"\ndisk = \"64MiB\"\ndisk_dir = \"{}\"\n",
            emu.proxy_b2_toml(),
            dir.path().join("cache").display()
        ),
    )
    .unwrap();
    // Holds the key: private, as the proxy asks.
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = common::http();
    let mut rng = Rng(99);
    let ranges: Vec<(u64, u64)> = (0..300)
        .map(|_| {
            let a = rng.below(BIG - 100_000);
            (a, a + 1 + rng.below(70_000))
        })
        .collect();
    let check = |status: u16, body: &[u8], a: u64, b: u64| {
        assert_eq!(status, 206);
        assert!(
            body == &emu.expected_bytes("k32.plot", a, b - a).unwrap()[..],
            "wrong bytes at {a}..{b}"
        );
    };
    let get = |a: u64, b: u64| {
        let http = http.clone();
        let url = format!("{base}/files/k32.plot");
        async move {
            let r = http
                .get(url)
                .header("Range", format!("bytes={a}-{}", b - 1))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap())
        }
    };

    let mut child = spawn_proxy(&cfg);
    wait_ready(&http, &base).await;
    // Load: reads in flight when the kill lands.
    let load = {
        let ranges = ranges.clone();
        let http = http.clone();
        let url = format!("{base}/files/k32.plot");
        tokio::spawn(async move {
            for (a, b) in ranges {
                let _ = http
                    .get(&url)
                    .header("Range", format!("bytes={a}-{}", b - 1))
                    .send()
                    .await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let _ = load.await;

    let mut child = spawn_proxy(&cfg);
    wait_ready(&http, &base).await;
    for &(a, b) in &ranges {
        let (status, body) = get(a, b).await;
        check(status, &body, a, b);
    }
    // Twice: the second pass reads what the first pass cached, through the recovered tiers.
    for &(a, b) in &ranges {
        let (status, body) = get(a, b).await;
        check(status, &body, a, b);
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    emu.shutdown().await;
}

/// Headers and indexes are read at every open but fetched once; the disk tier's FIFO regions would drop them
/// after `disk` bytes of other fetches. Blocks read again are rewritten before that, so after churning the disk
/// six times over and a SIGKILL (memory tier gone), the hot set is still on disk. (Under CPU starvation foyer
/// drops some disk writes; a rewrite is retried at the next read past a quarter disk, well before eviction.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_blocks_survive_disk_churn_and_sigkill() {
    let emu = builder().start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = format!(
        "[cache]\nmemory = \"8MiB\"\ndisk = \"32MiB\"\ndisk_dir = \"{}\"\n",
        dir.path().join("cache").display()
    );
    let http = common::http();
    let emu_ref = &emu;
    let get = |base: &str, a: u64, len: u64| {
        let req = http
            .get(format!("{base}/files/k32.plot"))
            .header("Range", format!("bytes={a}-{}", a + len - 1));
        let emu = emu_ref;
        async move {
            let r = req.send().await.expect("request");
            assert_eq!(r.status(), 206);
            let body = r.bytes().await.expect("body");
            assert!(
                body == emu.expected_bytes("k32.plot", a, len).unwrap(),
                "wrong bytes at {a}"
            );
        }
    };
    let hot: Vec<u64> = (0..8u64).map(|i| i * (1 << 30) + 4096).collect();
    let first_cold = 50u64 << 30;

    let mut proxy = common::ProxyProcess::start(&emu, dir.path(), &cache).await;
    for &h in &hot {
        get(&proxy.base, h, 8191).await;
    }
    // 192 MiB of distinct 1 MiB reads through a 32 MiB disk tier, the hot set read every 4 MiB.
    for i in 0..192u64 {
        get(&proxy.base, first_cold + i * (37 << 20), 1 << 20).await;
        if i % 4 == 3 {
            for &h in &hot {
                get(&proxy.base, h, 8191).await;
            }
        }
    }
    let rewritten = common::metric(
        &http,
        &proxy.base,
        "b2proxy_cache_disk_rewritten_blocks_total ",
    )
    .await;
    assert!(rewritten >= 8.0, "{rewritten} blocks rewritten");
    // Let the writer flush what it has queued; a crash loses only what is still in the write buffer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.child.kill().expect("SIGKILL");
    let _ = proxy.child.wait();
    drop(proxy);

    let proxy = common::ProxyProcess::start(&emu, dir.path(), &cache).await;
    emu.reset_stats();
    for &h in &hot {
        get(&proxy.base, h, 8191).await;
    }
    let hot_downloads = emu.stats().requests.download_by_id;
    // The churn was real: the first cold read left the disk long ago.
    get(&proxy.base, first_cold, 1 << 20).await;
    let cold_downloads = emu.stats().requests.download_by_id - hot_downloads;
    assert_eq!(
        hot_downloads, 0,
        "hot blocks were lost to disk eviction or the crash"
    );
    assert!(cold_downloads >= 1, "the disk tier never cycled");
    drop(proxy);
    emu.shutdown().await;
}

/// Reads whole blocks, one per 256 MiB of the plot (no read-ahead, no coalescing): `n` distinct blocks.
async fn read_blocks(env: &common::Env, n: u64) {
    for i in 0..n {
        let off = i * (256 << 20);
        env.assert_range("k32.plot", off, off + BS - 1).await;
    }
}

async fn healthz(env: &common::Env) -> serde_json::Value {
    let r = env
        .http
        .get(format!("{}/healthz", env.base))
        .send()
        .await
        .expect("healthz");
    r.json().await.expect("healthz json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disk_tier_too_small_for_the_hot_set_is_reported_and_a_large_one_keeps_it() {
    // 300 blocks (18.75 MiB) read twice, 2.5 s apart.
    const HOT: u64 = 300;
    for (disk_mib, fits) in [(16u64, false), (64, true)] {
        let env = start(builder(), |c| {
            c.cache.memory = ByteSize::mib(4);
            c.cache.disk = ByteSize::mib(disk_mib);
        })
        .await;
        read_blocks(&env, HOT).await;
        // Wait for the disk tier's writes to land (the write check runs every 500 ms).
        tokio::time::sleep(Duration::from_millis(2500)).await;
        env.emu.reset_stats();
        read_blocks(&env, HOT).await;
        let refetched = env.downloads();
        let h = healthz(&env).await;
        let hot = &h["cache_hot_set"];
        let est = hot["estimated_bytes"].as_u64().expect("estimate");
        let truth = HOT * BS;
        assert!(
            est >= truth * 9 / 10 && est <= truth * 11 / 10,
            "disk {disk_mib} MiB: estimate {est}, hot set {truth}: {h}"
        );
        assert_eq!(hot["fits"], fits, "disk {disk_mib} MiB: {h}");
        assert_eq!(hot["tier"], "disk");
        let reason = h["reason"].as_str().unwrap_or("");
        if fits {
            assert_eq!(
                refetched, 0,
                "a disk tier larger than the hot set refetched"
            );
            assert_eq!(hot["refetched_bytes"], 0, "{h}");
            assert!(!reason.contains("hot set"), "{h}");
        } else {
            assert!(refetched > 0, "a 16 MiB disk tier kept 18.75 MiB");
            let advice = hot["advice_disk_bytes"].as_u64().expect("advice");
            assert!(advice >= est / 4 * 6, "{h}");
            assert!(
                h["status"] == "degraded" && reason.contains("cache.disk"),
                "{h}"
            );
            assert!(
                env.metric("b2proxy_cache_hot_refetched_bytes_total").await > 0.0,
                "refetches of re-read blocks are counted"
            );
        }
    }
}
