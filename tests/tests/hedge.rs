//! Tail latency: hedged upstream requests and warm connections, against the emulator.

mod common;

use std::time::{Duration, Instant};

use b2fs_tests::emulator::Emulator;
use common::{Rng, start};

const BIG: u64 = 108 << 30;

/// The tests here measure latency and count connections: they run one at a time so they do not disturb each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn builder() -> b2fs_tests::emulator::EmulatorBuilder {
    Emulator::builder().virtual_file("k32.plot", BIG)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_attempt_stall_is_answered_by_the_hedge() {
    let _serial = SERIAL.lock().await;
    // Deterministic: the first request for every range stalls 3 s; only a second request answers fast.
    let env = start(
        builder()
            .latency(Duration::from_millis(10), 0.0)
            .first_attempt_delay(Duration::from_secs(3)),
        |c| {
            c.fetch.hedge_floor = Duration::from_millis(30);
            c.fetch.hedge_ceiling = Duration::from_millis(200);
            c.fetch.hedge_budget = 0.5;
        },
    )
    .await;
    let t = Instant::now();
    env.assert_range("k32.plot", 3 << 30, (3 << 30) + 8191)
        .await;
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "answer waited for the stalled attempt: {took:?}"
    );
    assert_eq!(env.metric("b2proxy_hedges_issued_total").await, 1.0);
    assert_eq!(env.metric("b2proxy_hedges_won_total").await, 1.0);
    assert_eq!(env.emu.stats().first_attempt_delays, 1);
    // Waiters of the same block share the hedged answer (single-flight covers the hedge).
    let env = &env;
    futures::future::join_all(
        (0..8).map(|_| env.assert_range("k32.plot", 5 << 30, (5 << 30) + 100)),
    )
    .await;
    assert_eq!(env.metric("b2proxy_hedges_issued_total").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tail_of_cold_reads_is_cut() {
    let _serial = SERIAL.lock().await;
    // 3% of responses delayed 1.5 s (seeded). Without hedging the p99 of 250 reads would be ~1.5 s.
    let env = start(
        builder()
            .latency(Duration::from_millis(20), 0.3)
            .tail(0.03, Duration::from_millis(1500))
            .seed(3),
        |_| {},
    )
    .await;
    let mut rng = Rng(17);
    let mut lat = Vec::with_capacity(250);
    for _ in 0..250 {
        let a = rng.below(BIG - 10_000);
        let t = Instant::now();
        env.assert_range("k32.plot", a, a + 8191).await;
        lat.push(t.elapsed());
    }
    lat.sort();
    let p50 = lat[125];
    let p99 = lat[247];
    let gets = env.downloads();
    let hedges = env.metric("b2proxy_hedges_issued_total").await;
    let won = env.metric("b2proxy_hedges_won_total").await;
    println!(
        "250 cold reads: p50 {p50:?} p99 {p99:?} max {:?}; {gets} GETs, {hedges} hedges, {won} won",
        lat[249]
    );
    assert!(p99 < Duration::from_millis(400), "p99 {p99:?}");
    assert!(
        gets as f64 <= 250.0 * 1.15,
        "{gets} upstream GETs for 250 reads"
    );
    assert!(
        won >= 1.0,
        "no hedge won although tail delays were injected"
    );
    // Counters equal what upstream saw: every attempt counted once, each hedge pair's loser as `cancelled`,
    // and nothing left in the in-flight gauge.
    let counted = env
        .metric("b2proxy_upstream_requests_total{op=\"download\"")
        .await;
    let cancelled = env
        .metric("b2proxy_upstream_requests_total{op=\"download\",status=\"cancelled\"}")
        .await;
    let billed = env
        .metric("b2proxy_b2_transactions_total{class=\"B\"}")
        .await;
    // A loser cancelled before its request left the client (cut while a connection was being opened)
    // never reaches B2, and one cut just after may reach the emulator a moment later: wait (bounded)
    // for the emulator's count to settle, then check the one gap counting cannot close — a cancelled
    // attempt is counted whether or not upstream saw it, so the proxy's count is an upper bound by at
    // most the cancelled ones, and exact for everything that got an answer.
    let mut seen = env.downloads();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = env.downloads();
        if now == seen && now as f64 == counted {
            break;
        }
        seen = now;
    }
    println!(
        "proxy counted {counted} downloads ({cancelled} cancelled), billed {billed}; emulator saw {seen}"
    );
    assert!(
        seen as f64 <= counted && counted - cancelled <= seen as f64,
        "upstream_requests {counted} ({cancelled} cancelled) vs the emulator's {seen}"
    );
    assert_eq!(billed, counted, "class B transactions vs upstream_requests");
    // A hedge's loser is cancelled unless it had already ended when the winner was taken (both answered in
    // the same instant, or the loser failed first): it is then counted with its own status.
    assert!(
        cancelled <= hedges && cancelled >= 1.0,
        "{cancelled} cancelled attempts for {hedges} hedges"
    );
    assert_eq!(env.metric("b2proxy_upstream_inflight").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budget_holds_when_everything_is_slow() {
    let _serial = SERIAL.lock().await;
    // Every answer is slower than the (forced low) threshold: only the budget limits hedging.
    let env = start(builder().latency(Duration::from_millis(120), 0.0), |c| {
        c.fetch.hedge_floor = Duration::from_millis(10);
        c.fetch.hedge_ceiling = Duration::from_millis(30);
        c.fetch.hedge_budget = 0.05;
    })
    .await;
    let env_ref = &env;
    let mut rng = Rng(23);
    let offsets: Vec<u64> = (0..200).map(|_| rng.below(BIG - 10_000)).collect();
    futures::future::join_all(offsets.chunks(25).map(|chunk| async move {
        for &a in chunk {
            env_ref.assert_range("k32.plot", a, a + 8191).await;
        }
    }))
    .await;
    let hedges = env.metric("b2proxy_hedges_issued_total").await;
    let gets = env.downloads();
    println!("200 slow reads: {hedges} hedges, {gets} GETs");
    // 5% of 200 plus the initial burst allowance of 5.
    assert!(
        hedges <= 15.0,
        "{hedges} hedges for 200 requests with a 5% budget"
    );
    assert!(gets <= 215, "{gets} GETs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn steady_state_reads_open_no_connections() {
    let _serial = SERIAL.lock().await;
    // Hedging off: a cancelled hedge loser closes its connection by design, which is not what this measures.
    let env = start(builder().latency(Duration::from_millis(5), 0.0), |c| {
        c.fetch.hedge = false
    })
    .await;
    let env_ref = &env;
    let mut rng = Rng(31);
    let batch = |rng: &mut Rng| {
        (0..32)
            .map(|_| rng.below(BIG - 10_000))
            .collect::<Vec<u64>>()
    };
    let run = |offsets: Vec<u64>| async move {
        futures::future::join_all(
            offsets
                .iter()
                .map(|&a| env_ref.assert_range("k32.plot", a, a + 8191)),
        )
        .await;
    };
    // Warm-up: a parallel proof's fan-out opens the pool's connections.
    for _ in 0..3 {
        run(batch(&mut rng)).await;
    }
    env.emu.reset_stats();
    for _ in 0..5 {
        run(batch(&mut rng)).await;
    }
    let steady = env.emu.stats().connections_opened;
    // An idle gap longer than a signage point interval (~9.4 s): connections must still be warm.
    tokio::time::sleep(Duration::from_secs(10)).await;
    run(batch(&mut rng)).await;
    let s = env.emu.stats();
    let after_idle = s.connections_opened - steady;
    println!(
        "steady state: {steady} connections opened for 160 reads; {after_idle} for 32 reads after a 10 s idle gap"
    );
    assert_eq!(s.requests.download_by_id, 6 * 32);
    // The pool is warm: a new connection only when a request races the hand-back of a finished one
    // (hyper's pool opens one then rather than wait), a few per hundred requests under CPU contention.
    assert!(
        steady <= 8,
        "{steady} connections opened for 160 steady-state reads"
    );
    assert!(
        after_idle <= 2,
        "{after_idle} connections opened after an idle gap: the pool went cold"
    );
    assert!(
        env.metric("b2proxy_upstream_connections_opened_total")
            .await
            >= 1.0
    );
}
