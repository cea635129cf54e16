//! B2's account rate limit, for real: the emulator's token bucket over HTTP, the proxy's pacing and adaptive
//! limit in front of it. Timing bounds here are generous (a loaded 2-core machine); the exact behaviour of
//! the scheduler is tested on the paused clock in `proxy/src/policy/tests.rs`.

mod common;

use std::time::{Duration, Instant};

use b2fs_tests::emulator::Emulator;
use common::{Rng, start};

const BIG: u64 = 108 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_above_the_account_limit_completes_with_no_429_reaching_a_reader() {
    // The account allows 100 downloads/s (bucket of 20). The proxy is configured for 150/s, too many: it must
    // learn the real limit from the 429s and pace itself under it.
    let env = start(
        Emulator::builder()
            .virtual_file("k32.plot", BIG)
            .latency(Duration::from_millis(10), 0.0)
            .rate_limit(100.0, 20.0),
        |c| {
            c.fetch.max_requests_per_second = 150.0;
            c.fetch.hedge = false;
            c.fetch.read_deadline = Duration::from_secs(15);
        },
    )
    .await;
    let mut rng = Rng(99);
    let offsets: Vec<u64> = (0..300).map(|_| rng.below(BIG - 10_000)).collect();
    let t = Instant::now();
    let env_ref = &env;
    futures::future::join_all(
        offsets
            .iter()
            .map(|&a| async move { env_ref.assert_range("k32.plot", a, a + 8191).await }),
    )
    .await;
    let took = t.elapsed();
    let stats = env.emu.stats();
    let downloads = env.downloads();
    let limited = stats.rate_limited;
    let rate = downloads as f64 / took.as_secs_f64();
    println!(
        "300 cold reads in {took:?}: {downloads} downloads ({rate:.0}/s), {limited} answered 429, \
         pace now {} req/s",
        env.metric("b2proxy_upstream_rate_limit_rps").await
    );
    // Every read got its exact bytes (assert_range) although the burst is 3 s of the account's allowance.
    assert!(
        limited as f64 <= 0.1 * downloads as f64,
        "{limited} 429s in {downloads} downloads: a storm, not pacing"
    );
    assert!(
        rate <= 110.0,
        "{rate:.0} downloads/s: above the account's 100/s"
    );
    assert!(env.metric("b2proxy_upstream_throttled_total").await >= 1.0);
    assert_eq!(
        env.metric("b2proxy_fetch_errors_total").await,
        0.0,
        "a read failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_configured_pace_under_the_limit_never_meets_a_429() {
    let env = start(
        Emulator::builder()
            .virtual_file("k32.plot", BIG)
            .latency(Duration::from_millis(10), 0.0)
            .rate_limit(100.0, 20.0),
        |c| {
            c.fetch.max_requests_per_second = 80.0;
            c.fetch.hedge = false;
        },
    )
    .await;
    let mut rng = Rng(7);
    let offsets: Vec<u64> = (0..160).map(|_| rng.below(BIG - 10_000)).collect();
    let env_ref = &env;
    futures::future::join_all(
        offsets
            .iter()
            .map(|&a| async move { env_ref.assert_range("k32.plot", a, a + 8191).await }),
    )
    .await;
    let stats = env.emu.stats();
    println!(
        "160 cold reads at a pace of 80/s: {} downloads, {} answered 429, {} delayed by the pace",
        env.downloads(),
        stats.rate_limited,
        env.metric("b2proxy_upstream_delayed_total").await
    );
    assert_eq!(stats.rate_limited, 0);
    assert!(env.metric("b2proxy_upstream_delayed_total").await >= 50.0);
}
