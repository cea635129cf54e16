//! Memory bounded by configuration whatever the clients do: 200 whole-file GETs that stop reading, and 32
//! concurrent listings of a 100,000-file catalog, against a b2-proxy process whose VmRSS / VmHWM (/proc) must
//! stay within its budget + 15%. The budget is the idle RSS (runtime, catalog) plus `cache.memory` plus
//! `server.max_response_buffer`. `cargo test -p b2fs-tests --test memory_bounds -- --nocapture` prints the figures.

#[path = "support/daemon.rs"]
mod daemon;

use std::time::{Duration, Instant};

use b2fs_tests::emulator::Emulator;
use daemon::{Daemon, http, mib};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

const CACHE_MEMORY: u64 = 32 << 20;
const RESPONSE_BUFFER: u64 = 16 << 20;

fn sections(send_timeout: &str) -> String {
    format!(
        "[cache]\nmemory = \"32MiB\"\ndisk = 0\n\n[server]\nmax_connections = 1024\nmax_response_buffer = \"16MiB\"\n\
         send_timeout = \"{send_timeout}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_streaming_readers_stay_within_the_budget_and_are_dropped() {
    let emu = Emulator::builder()
        .virtual_file("a.plot", 4 << 30)
        .start()
        .await
        .expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let http = http();
    let mut d = Daemon::spawn(&emu, dir.path(), &sections("8s"));
    d.wait_ready(&http, Duration::from_secs(30))
        .await
        .expect("ready");
    let addr = d.base.trim_start_matches("http://").to_string();
    // Warm the allocator and the pools with a streamed read and some small ones.
    let r = http
        .get(format!("{}/files/a.plot", d.base))
        .header("Range", "bytes=0-8388607")
        .send()
        .await
        .expect("warm");
    assert_eq!(r.bytes().await.expect("body").len(), 8 << 20);
    let (idle, _) = d.memory();
    d.reset_peak();

    // 200 clients start a whole-file GET (4 GiB) and never read: tiny receive buffers, so the proxy's writes
    // stall at once.
    let mut stalled = Vec::new();
    for _ in 0..200 {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(4096).expect("rcvbuf");
        let mut s = sock
            .connect(addr.parse().expect("addr"))
            .await
            .expect("connect");
        s.write_all(b"GET /files/a.plot HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .expect("request");
        stalled.push(s);
    }
    let mut peak_gauge = 0.0f64;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        peak_gauge = peak_gauge.max(d.metric(&http, "b2proxy_response_buffer_bytes").await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A harvester's read still gets through while the streams hold their share.
    let t = Instant::now();
    let r = http
        .get(format!("{}/files/a.plot", d.base))
        .header("Range", "bytes=1000000-1008190")
        .send()
        .await
        .expect("small read");
    assert_eq!(r.status(), 206);
    let want = emu
        .expected_bytes("a.plot", 1_000_000, 8191)
        .expect("expected");
    assert!(r.bytes().await.expect("body")[..] == want[..]);
    let small_read = t.elapsed();
    let (rss, hwm) = d.memory();
    let budget = idle + CACHE_MEMORY + RESPONSE_BUFFER;

    // After send_timeout (8 s) without progress, every stalled connection is closed and its memory freed
    // (streams that waited for room give up after the same time, so this takes a few rounds of 8 s).
    let t = Instant::now();
    let (mut timeouts, mut held) = (0.0, f64::MAX);
    while t.elapsed() < Duration::from_secs(120) {
        timeouts = d.metric(&http, "b2proxy_send_timeouts_total").await;
        held = d.metric(&http, "b2proxy_response_buffer_bytes").await;
        if held == 0.0 && timeouts > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let freed_after = t.elapsed();
    println!(
        "200 stalled whole-file GETs: response buffer peak {:.1} MiB (limit {:.0}); proxy RSS idle {:.1} MiB -> {:.1} \
         MiB, peak {:.1} MiB, budget {:.1} MiB (+15% = {:.1}); an 8 KiB read meanwhile took {small_read:?}; \
         {timeouts} connections dropped by send_timeout, buffer back to {held} bytes {freed_after:?} later",
        mib(peak_gauge as u64),
        mib(RESPONSE_BUFFER),
        mib(idle),
        mib(rss),
        mib(hwm),
        mib(budget),
        mib(budget) * 1.15
    );
    assert!(
        peak_gauge <= RESPONSE_BUFFER as f64,
        "buffer gauge {peak_gauge}"
    );
    assert!(
        (hwm as f64) <= budget as f64 * 1.15,
        "peak RSS {:.1} MiB over budget {:.1} MiB + 15%",
        mib(hwm),
        mib(budget)
    );
    assert!(
        small_read < Duration::from_secs(5),
        "small read took {small_read:?}"
    );
    assert_eq!(held, 0.0, "stalled responses still hold {held} bytes");
    assert!(timeouts >= 1.0, "no connection was dropped by send_timeout");
    drop(stalled);
}

/// Counts `"name":` in a body arriving in chunks (a pattern may straddle two chunks).
struct NameCounter {
    carry: Vec<u8>,
    count: u64,
    bytes: u64,
}

impl NameCounter {
    const PAT: &'static [u8] = b"\"name\":";

    fn feed(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        self.count += buf
            .windows(Self::PAT.len())
            .filter(|w| *w == Self::PAT)
            .count() as u64;
        let keep = Self::PAT.len() - 1;
        self.carry = buf[buf.len().saturating_sub(keep)..].to_vec();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_listings_of_100000_files_stay_within_the_budget() {
    const FILES: u64 = 100_000;
    let emu = Emulator::builder()
        .virtual_files("farm/plot-k32-", FILES as usize, 108 << 30)
        .start()
        .await
        .expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let http = http();
    let mut d = Daemon::spawn(&emu, dir.path(), &sections("30s"));
    d.wait_ready(&http, Duration::from_secs(120))
        .await
        .expect("ready");

    // Paged: 10 pages of 10,000, in order, nothing lost or repeated.
    let t = Instant::now();
    let (mut names, mut after, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let mut url = reqwest::Url::parse(&format!("{}/files", d.base)).expect("url");
        url.query_pairs_mut().append_pair("limit", "10000");
        if let Some(a) = &after {
            url.query_pairs_mut().append_pair("start_after", a);
        }
        let v: serde_json::Value = http
            .get(url)
            .send()
            .await
            .expect("page")
            .json()
            .await
            .expect("json");
        pages += 1;
        let files = v["files"].as_array().expect("files");
        assert!(files.len() <= 10_000);
        names.extend(
            files
                .iter()
                .map(|f| f["name"].as_str().expect("name").to_string()),
        );
        match v["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
        assert!(pages <= 11, "paging does not end");
    }
    let paged_in = t.elapsed();
    assert_eq!(names.len() as u64, FILES);
    assert!(names.windows(2).all(|w| w[0] < w[1]), "pages out of order");
    drop(names);

    let (idle, _) = d.memory();
    d.reset_peak();
    // 18 MB bodies on a loaded machine: no 60 s total timeout here.
    let lister = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(600))
        .build()
        .expect("client");
    let t = Instant::now();
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let http = lister.clone();
            let url = format!("{}/files", d.base);
            tokio::spawn(async move {
                let r = http.get(url).send().await.expect("list");
                assert_eq!(r.status(), 200);
                let mut c = NameCounter {
                    carry: Vec::new(),
                    count: 0,
                    bytes: 0,
                };
                let mut body = r.bytes_stream();
                while let Some(chunk) = body.next().await {
                    c.feed(&chunk.expect("chunk"));
                }
                (c.count, c.bytes)
            })
        })
        .collect();
    let mut rss_max = 0;
    let mut results = Vec::new();
    let sampler = async {
        loop {
            rss_max = rss_max.max(d.memory().0);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        _ = sampler => {}
        r = futures::future::join_all(clients) => results = r,
    }
    let took = t.elapsed();
    let (_, hwm) = d.memory();
    let mut body_bytes = 0;
    for r in results {
        let (count, bytes) = r.expect("client");
        assert_eq!(count, FILES, "a listing lost files");
        body_bytes = bytes;
    }
    let budget = idle + RESPONSE_BUFFER;
    println!(
        "32 concurrent GET /files of {FILES} files ({:.1} MB of JSON each) in {took:?}: proxy RSS idle {:.1} MiB, \
         sampled max {:.1} MiB, peak {:.1} MiB, budget idle + max_response_buffer = {:.1} MiB (+15% = {:.1}); paged \
         walk: {pages} pages in {paged_in:?}",
        body_bytes as f64 / 1e6,
        mib(idle),
        mib(rss_max),
        mib(hwm),
        mib(budget),
        mib(budget) * 1.15
    );
    assert!(
        (hwm as f64) <= budget as f64 * 1.15,
        "peak RSS {:.1} MiB over budget {:.1} MiB + 15%",
        mib(hwm),
        mib(budget)
    );
}
