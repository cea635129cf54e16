//! The proxy's counters against reality: the emulator's own counts of requests, answers and bytes, and what the
//! test's client sent and received, under hedging and faults.

mod common;

use std::time::{Duration, Instant};

use b2fs_tests::emulator::{Emulator, Fault};
use common::{Rng, start};

const BIG: u64 = 108 << 30;
/// Every range's first request stalls this long before its answer: the hedge (or, without a hedge token, the
/// attempt timeout) cuts it long before it sends a byte.
const STALL: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_counters_equal_the_emulators_counts() {
    let mut b = Emulator::builder()
        .virtual_file("k32.plot", BIG)
        .latency(Duration::from_millis(5), 0.0)
        .first_attempt_delay(STALL)
        .seed(11);
    // No 429s here: they make the proxy pace its requests, and a retry waiting for its pace while its pair's
    // other attempt answers normally would add cancellations the stalls do not explain. 429s are counted like
    // any other status (checked below at 0), and their pacing is tested in ratelimit.rs.
    for (fault, p) in [
        (Fault::InternalError, 0.04),
        (Fault::ServiceUnavailable, 0.03),
        (Fault::Reset, 0.02),
        (Fault::Truncated, 0.02),
        (Fault::WrongRange, 0.02),
    ] {
        b = b.fault(fault, p);
    }
    let env = start(b, |c| {
        // Hedge only what stalls: a 5 ms answer is hardly ever 400 ms late, even on a loaded machine (when one
        // is, the bounds below apply).
        c.fetch.hedge_floor = Duration::from_millis(400);
        c.fetch.hedge_ceiling = Duration::from_millis(600);
        c.fetch.hedge_budget = 1.0;
        // Stalls left unhedged (the hedge failed) end at the attempt timeout: they are not an outage, so the
        // breaker must not open on them.
        c.fetch.timeout = Duration::from_secs(2);
        c.fetch.breaker_threshold = 1000;
        // A hedge queues for its own slot inside its race: with the adaptive limit cut by the stalls, a hedge
        // could wait, be sent late and race a normal answer. A fixed limit far above the load admits every
        // attempt at once.
        c.fetch.adaptive_concurrency = false;
        c.fetch.read_deadline = Duration::from_secs(20);
    })
    .await;

    // 16 readers of 8191-byte ranges, every answer checked byte for byte.
    let env_ref = &env;
    let mut rng = Rng(5);
    let offsets: Vec<u64> = (0..160).map(|_| rng.below(BIG - 8191)).collect();
    let mut sent = 0u64;
    let mut received = 0u64;
    for (requests, bytes) in futures::future::join_all(offsets.chunks(10).map(|chunk| async move {
        let mut bytes = 0u64;
        for &a in chunk {
            env_ref.assert_range("k32.plot", a, a + 8191).await;
            bytes += 8191;
        }
        (chunk.len() as u64, bytes)
    }))
    .await
    {
        sent += requests;
        received += bytes;
    }

    // Everything has ended: nothing in flight at either end (bounded wait for the cancelled requests' handlers
    // to notice their closed connections).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let inflight = env.metric("b2proxy_upstream_inflight").await;
        let emu_inflight = env.emu.stats().downloads_in_flight;
        if inflight == 0.0 && emu_inflight == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still in flight: proxy {inflight}, emulator {emu_inflight}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let s = env.emu.stats();
    let downloads = |status: &str| {
        format!("b2proxy_upstream_requests_total{{op=\"download\",status=\"{status}\"}}")
    };
    let total = env
        .metric("b2proxy_upstream_requests_total{op=\"download\"")
        .await;
    let cancelled = env.metric(&downloads("cancelled")).await;
    let ok = env.metric(&downloads("206")).await;
    let body = env.metric(&downloads("body")).await;
    let bytes = env
        .metric("b2proxy_upstream_bytes_total{op=\"download\"}")
        .await;
    let emu_downloads = (s.requests.download_by_id + s.requests.download_by_name) as f64;
    let emu_206 = s.responses_by_status.get(&206).copied().unwrap_or(0) as f64;
    let stalled = s.first_attempt_delays as f64;
    println!(
        "{sent} reads: proxy counted {total} downloads ({cancelled} cancelled, {ok} 206, {body} cut bodies), \
         {bytes} bytes; emulator saw {emu_downloads} ({stalled} stalled, {emu_206} 206 answers), sent {} bytes, \
         faults {:?}, {} rate-limited",
        s.bytes_sent, s.faults, s.rate_limited
    );
    assert!(
        stalled >= 1.0 && s.faults.injected() >= 1,
        "no stall or fault injected"
    );
    assert!(
        env.metric("b2proxy_hedges_won_total").await >= 1.0,
        "no hedge won"
    );

    // Every stalled first attempt is cancelled (its answer would come after the attempt timeout), so
    // `cancelled >= stalled`. When they are equal, every cancelled attempt is a stalled one: it reached the
    // emulator (which counted the stall) and was cut before a byte of its answer was sent. Then every count
    // must be exact.
    assert!(
        cancelled >= stalled,
        "{stalled} stalled attempts, {cancelled} cancelled"
    );
    let extra = cancelled - stalled;
    if extra == 0.0 {
        println!("every cancelled attempt was a stall: checking equality");
        assert_eq!(total, emu_downloads, "downloads");
        assert_eq!(
            bytes, s.bytes_sent as f64,
            "download body bytes received vs sent"
        );
    } else {
        // A few more cancelled attempts (a hedge raced a slow answer on a starved machine): each may have been
        // cut before it left the proxy, or mid-body. The gap is bounded by them and nothing else.
        println!("{extra} cancelled attempts were not stalls: checking bounds");
        assert!(
            emu_downloads <= total && total - extra <= emu_downloads,
            "downloads: proxy {total} ({extra} cancelled mid-way) vs emulator {emu_downloads}"
        );
        let gap = s.bytes_sent as f64 - bytes;
        assert!(
            (0.0..=extra * (1 << 20) as f64).contains(&gap),
            "bytes: proxy {bytes} vs emulator {} ({extra} cancelled mid-way)",
            s.bytes_sent
        );
    }
    // Answers the proxy got: each status as often as the emulator sent it. A cut body (reset, truncated) has a
    // 206 head; a wrong range is a 206 the proxy rejects after counting it.
    let f = &s.faults;
    if extra == 0.0 {
        assert_eq!(ok + body, emu_206, "206 answers");
        assert_eq!(body, (f.reset + f.truncated) as f64, "bodies cut short");
    } else {
        assert!(
            ok + body <= emu_206 && emu_206 <= ok + body + extra,
            "206 answers: proxy {ok} + {body} cut, emulator {emu_206}"
        );
    }
    for (status, sent) in [
        ("500", f.internal_error),
        ("503", f.service_unavailable),
        ("429", f.too_many_requests + s.rate_limited),
    ] {
        assert_eq!(
            env.metric(&downloads(status)).await,
            sent as f64,
            "{status}"
        );
    }
    assert_eq!(
        env.metric("b2proxy_b2_transactions_total{class=\"B\"}")
            .await,
        total,
        "class B transactions vs download attempts"
    );
    assert_eq!(
        env.metric("b2proxy_upstream_requests_total{op=\"authorize\",status=\"200\"}")
            .await,
        s.requests.authorize as f64,
        "authorizations"
    );

    // The client's side: every request counted once, none failed, every byte served counted.
    assert_eq!(
        env.metric("b2proxy_requests_total").await,
        sent as f64,
        "requests answered"
    );
    assert_eq!(
        env.metric("b2proxy_requests_total{outcome=\"error\"").await,
        0.0,
        "every read succeeded"
    );
    assert_eq!(
        env.metric("b2proxy_bytes_served_total").await,
        received as f64
    );
    assert_eq!(env.metric("b2proxy_upstream_queued").await, 0.0);
    assert_eq!(env.metric("b2proxy_response_buffer_bytes").await, 0.0);
}
