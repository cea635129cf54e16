//! End-to-end tests of b2-proxy's HTTP API against the B2 emulator, over real loopback HTTP:
//! every row of the API table, byte-exact random ranges, each fault kind, token renewal, paging, outages.

mod common;

use std::time::{Duration, Instant};

use b2fs_tests::emulator::{Emulator, Fault};
use common::{Rng, start};

const BIG: u64 = 108 << 30;
const SMALL: u64 = 300_000;

fn builder() -> b2fs_tests::emulator::EmulatorBuilder {
    Emulator::builder()
        .virtual_file("plots/big.plot", BIG)
        .virtual_file("small.bin", SMALL)
        .virtual_file("dir/with space+sign.plot", 100_000)
        .virtual_file("empty.bin", 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_table() {
    let env = start(builder(), |_| {}).await;
    let h = &env.http;

    // GET /files, with and without prefix.
    let v: serde_json::Value = h
        .get(format!("{}/files", env.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 4);
    let big = files
        .iter()
        .find(|f| f["name"] == "plots/big.plot")
        .unwrap();
    assert_eq!(big["size"], BIG);
    assert!(big["id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(
        big["modified"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z') && s.contains('T'))
    );
    let v: serde_json::Value = h
        .get(format!("{}/files?prefix=plots/", env.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["files"].as_array().unwrap().len(), 1);

    // HEAD
    let r = h.head(env.url("plots/big.plot")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], BIG.to_string().as_str());
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert!(r.headers().contains_key("last-modified"));
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, format!("\"{}\"", big["id"].as_str().unwrap()));

    // Range forms.
    let r = h
        .get(env.url("plots/big.plot"))
        .header("Range", "bytes=1000-9190")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 1000-9190/{BIG}").as_str()
    );
    let body = r.bytes().await.unwrap();
    assert_eq!(
        &body[..],
        &env.emu
            .expected_bytes("plots/big.plot", 1000, 8191)
            .unwrap()[..]
    );

    let r = h
        .get(env.url("small.bin"))
        .header("Range", "bytes=299000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 299000-299999/{SMALL}").as_str()
    );
    assert_eq!(r.bytes().await.unwrap().len(), 1000);

    let r = h
        .get(env.url("small.bin"))
        .header("Range", "bytes=-100")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        &r.bytes().await.unwrap()[..],
        &env.emu
            .expected_bytes("small.bin", SMALL - 100, 100)
            .unwrap()[..]
    );

    // End clamped to EOF.
    let r = h
        .get(env.url("small.bin"))
        .header("Range", "bytes=299990-400000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 299990-299999/{SMALL}").as_str()
    );
    assert_eq!(r.bytes().await.unwrap().len(), 10);

    // Whole file without Range: 200, streamed, exact.
    let r = h.get(env.url("small.bin")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        &r.bytes().await.unwrap()[..],
        &env.emu.expected_bytes("small.bin", 0, SMALL).unwrap()[..]
    );

    // Percent-encoded names.
    let r = h
        .get(format!("{}/files/dir/with%20space%2Bsign.plot", env.base))
        .header("Range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        &r.bytes().await.unwrap()[..],
        &env.emu
            .expected_bytes("dir/with space+sign.plot", 0, 10)
            .unwrap()[..]
    );

    // At/after EOF: 416 with bytes */size.
    let r = h
        .get(env.url("small.bin"))
        .header("Range", format!("bytes={SMALL}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{SMALL}").as_str()
    );
    let r = h
        .get(env.url("empty.bin"))
        .header("Range", "bytes=0-0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    let r = h.get(env.url("empty.bin")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 0);

    // Several ranges: 416 with a reason; malformed: 400 with a reason. Never the whole file.
    let r = h
        .get(env.url("small.bin"))
        .header("Range", "bytes=0-1,5-6")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert!(r.text().await.unwrap().contains("one range"));
    for bad in ["bytes=5-1", "bytes=abc", "items=0-1", "bytes=--1"] {
        let r = h
            .get(env.url("small.bin"))
            .header("Range", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let t = r.text().await.unwrap();
        assert!(t.len() < 200 && t.contains("Range"), "{bad}: {t}");
    }

    // Unknown name, names outside the catalog, traversal attempts.
    for name in ["nope.plot", "plots/big.plot/x", "%2e%2e/etc/passwd"] {
        let r = h
            .get(format!("{}/files/{name}", env.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{name}");
    }
    // Raw request: HTTP clients normalise `..` away before sending, a hostile one would not.
    let addr = env.base.trim_start_matches("http://").to_string();
    for path in [
        "/files/plots/../small.bin",
        "/files/../small.bin",
        "/files/%2E%2E/small.bin",
    ] {
        let status = common::raw_status(&addr, path).await;
        assert_eq!(status, 404, "{path}");
    }

    // /metrics and /healthz.
    let r = h.get(format!("{}/metrics", env.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("b2proxy_requests_total"));
    assert!(text.contains("b2proxy_upstream_requests_total"));
    let r = h.get(format!("{}/healthz", env.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["catalog"]["files"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_random_ranges_are_exact() {
    let env = start(builder(), |c| {
        c.cache.memory = bytesize::ByteSize::mib(32);
    })
    .await;
    let mut rng = Rng(42);
    let ranges: Vec<(u64, u64)> = (0..1000)
        .map(|i| {
            let len = match i % 4 {
                0 => 1 + rng.below(16),
                1 => 8191,
                2 => 1 + rng.below(300_000),
                _ => 1 + rng.below(70_000),
            };
            let start = rng.below(BIG - len);
            (start, start + len)
        })
        .collect();
    let env = &env;
    futures::future::join_all(ranges.chunks(50).map(|chunk| async move {
        for &(a, b) in chunk {
            env.assert_range("plots/big.plot", a, b).await;
        }
    }))
    .await;
    // Near EOF too.
    env.assert_range("plots/big.plot", BIG - 10_000, BIG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_fault_kind_is_retried_to_exact_bytes() {
    for fault in Fault::ALL {
        let env = start(builder().seed(5).retry_after(1).fault(fault, 0.35), |c| {
            c.fetch.hedge = false;
        })
        .await;
        let mut rng = Rng(fault as u64 + 1);
        for _ in 0..12 {
            let start = rng.below(BIG - 20_000);
            env.assert_range("plots/big.plot", start, start + 8191 + rng.below(10_000))
                .await;
        }
        let s = env.emu.stats();
        let injected = s.faults.injected();
        assert!(injected > 0, "{fault:?}: no fault injected");
        let retries = env.metric("b2proxy_upstream_retries_total").await;
        assert!(
            retries >= 1.0,
            "{fault:?}: faults injected but no retry counted"
        );
        env.emu.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn persistent_failure_ends_in_clear_5xx_without_hang() {
    let env = start(builder(), |c| {
        c.fetch.read_deadline = Duration::from_secs(2);
        c.fetch.timeout = Duration::from_secs(1);
    })
    .await;
    env.emu.set_fault(Fault::ServiceUnavailable, 1.0).unwrap();
    let t = Instant::now();
    let (status, body) = env
        .get_range("plots/big.plot", 5 << 30, (5 << 30) + 8191)
        .await;
    assert!(matches!(status, 502..=504), "status {status}");
    assert!(
        String::from_utf8_lossy(&body).contains("upstream"),
        "{body:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );

    // Wrong bytes are never served: every answer under wrong-range faults is verified.
    env.emu.set_fault(Fault::ServiceUnavailable, 0.0).unwrap();
    env.emu.set_fault(Fault::WrongRange, 1.0).unwrap();
    let (status, _) = env
        .get_range("plots/big.plot", 7 << 30, (7 << 30) + 100)
        .await;
    assert!(
        matches!(status, 502..=504),
        "wrong ranges must not be served, got {status}"
    );

    // Upstream timeouts: 504-class answer within the deadline.
    env.emu.set_fault(Fault::WrongRange, 0.0).unwrap();
    env.emu
        .set_latency(b2fs_tests::emulator::LatencyConfig {
            median: Duration::from_secs(5),
            ..Default::default()
        })
        .unwrap();
    let t = Instant::now();
    let (status, _) = env
        .get_range("plots/big.plot", 9 << 30, (9 << 30) + 100)
        .await;
    assert!(matches!(status, 502..=504), "status {status}");
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "took {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_token_is_renewed_once_for_all_waiters() {
    let env = start(builder(), |c| c.fetch.hedge = false).await;
    let auths_before = env.emu.stats().requests.authorize;
    env.emu.expire_tokens();
    let env_ref = &env;
    let reads = (0..32u64).map(|i| async move {
        let start = (i + 1) * (1 << 30);
        env_ref
            .assert_range("plots/big.plot", start, start + 8191)
            .await;
    });
    futures::future::join_all(reads).await;
    let auths = env.emu.stats().requests.authorize - auths_before;
    assert_eq!(
        auths, 1,
        "32 concurrent reads after expiry must share one re-authorization"
    );

    // A token lifetime shorter than the test: renewed as it goes, reads never fail.
    env.emu
        .set_token_lifetime(Duration::from_millis(700))
        .unwrap();
    env.emu.expire_tokens();
    let mut rng = Rng(9);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        let start = rng.below(BIG - 9000);
        env.assert_range("plots/big.plot", start, start + 8191)
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn big_bucket_pages_correctly() {
    let env = start(
        Emulator::builder().virtual_files("farm/plot-", 25_000, 1 << 20),
        |_| {},
    )
    .await;
    let v: serde_json::Value = env
        .http
        .get(format!("{}/files", env.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 25_000);
    let mut names: Vec<&str> = files.iter().map(|f| f["name"].as_str().unwrap()).collect();
    let sorted = names.clone();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 25_000, "duplicates in the catalog");
    assert_eq!(names, sorted, "catalog not in name order");
    // 10,000 names per call: 3 calls.
    assert_eq!(env.emu.stats().requests.list_file_names, 3);
    env.assert_range(names[24_999], 0, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreachable_upstream_at_start_is_not_fatal() {
    // Reserve a port, then start the proxy against it before anything listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cache_dir = tempfile::tempdir().unwrap();
    let probe = Emulator::builder().start().await.unwrap();
    let mut config = common::config_for(&probe, cache_dir.path());
    probe.shutdown().await;
    config.b2.as_mut().unwrap().endpoint = format!("http://{port}");
    config.fetch.timeout = Duration::from_millis(500);
    config.fetch.read_deadline = Duration::from_secs(1);
    let proxy = b2_proxy::server::Proxy::start(&config)
        .await
        .expect("starts without upstream");
    let base = format!("http://{}", proxy.addr);
    let http = common::http();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "unavailable");
    assert!(v["reason"].as_str().unwrap().len() > 10, "{v}");
    let r = http
        .get(format!("{base}/files/small.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Upstream comes up: the proxy recovers by itself.
    let emu = builder().listen(port).start().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = http.get(format!("{base}/healthz")).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "proxy did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = http
        .get(format!("{base}/files/small.bin"))
        .header("Range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        &r.bytes().await.unwrap()[..],
        &emu.expected_bytes("small.bin", 0, 100).unwrap()[..]
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_credentials_are_reported_not_retried_forever() {
    let env = start(builder(), |_| {}).await;
    let cache_dir = tempfile::tempdir().unwrap();
    let mut config = common::config_for(&env.emu, cache_dir.path());
    config.b2.as_mut().unwrap().application_key = "wrong-key".into();
    let proxy = b2_proxy::server::Proxy::start(&config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = env
        .http
        .get(format!("http://{}/healthz", proxy.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("rejected"), "{reason}");
    assert!(!reason.contains("wrong-key"), "secret leaked: {reason}");
    proxy.shutdown().await;
}

/// Reads over 1 MiB are streamed chunk by chunk: each is counted once, when it ends, with the slowest tier any
/// chunk needed (a re-read from memory is `hit_memory`, not `miss`), timed to its last chunk, and `cancelled`
/// when the client goes away first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streamed_reads_are_counted_when_they_end() {
    let env = start(builder(), |_| {}).await;
    let requests =
        |outcome: &str| format!("b2proxy_requests_total{{outcome=\"{outcome}\",route=\"file\"}}");
    const MIB: u64 = 1 << 20;

    // 4 MiB cold, then again from memory.
    env.assert_range("plots/big.plot", 1 << 30, (1 << 30) + 4 * MIB)
        .await;
    assert_eq!(env.metric(&requests("miss")).await, 1.0);
    env.assert_range("plots/big.plot", 1 << 30, (1 << 30) + 4 * MIB)
        .await;
    assert_eq!(env.metric(&requests("hit_memory")).await, 1.0);
    assert_eq!(env.metric(&requests("miss")).await, 1.0);

    // 64 MiB read by a client that pauses after the first chunk: far more than the loopback socket buffers
    // hold, so the proxy cannot reach the last chunk during the pause, and the request is not counted yet.
    let pause = Duration::from_millis(1500);
    let start_at = 10u64 << 30;
    let mut r = env
        .http
        .get(env.url("plots/big.plot"))
        .header(
            "Range",
            format!("bytes={start_at}-{}", start_at + 64 * MIB - 1),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 206);
    let mut got = r
        .chunk()
        .await
        .expect("first chunk")
        .expect("a chunk")
        .len() as u64;
    tokio::time::sleep(pause).await;
    assert_eq!(
        env.metric(&requests("miss")).await,
        1.0,
        "counted before its end"
    );
    while let Some(chunk) = r.chunk().await.expect("body") {
        got += chunk.len() as u64;
    }
    assert_eq!(got, 64 * MIB);
    assert_eq!(env.metric(&requests("miss")).await, 2.0);
    let timed = env
        .metric("b2proxy_request_duration_seconds_sum{outcome=\"miss\",route=\"file\"}")
        .await;
    assert!(
        timed >= pause.as_secs_f64(),
        "streamed reads timed {timed} s in all, the second paused {pause:?} mid-body"
    );

    // A client that goes away after the first chunk: `cancelled`, once.
    let mut r = env
        .http
        .get(env.url("plots/big.plot"))
        .header("Range", format!("bytes=0-{}", 64 * MIB - 1))
        .send()
        .await
        .expect("request");
    r.chunk().await.expect("first chunk");
    drop(r);
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.metric(&requests("cancelled")).await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "an abandoned stream was not counted as cancelled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(env.metric(&requests("cancelled")).await, 1.0);
    assert_eq!(env.metric(&requests("miss")).await, 2.0);
    // Its buffered chunk is given back with the connection.
    while env.metric("b2proxy_response_buffer_bytes").await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "an abandoned stream kept its response buffer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
