//! The policy's behaviours on a paused clock against the mock source: every time asserted here is exact
//! (tokio advances the clock only when every task waits), and nothing depends on the machine's speed.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::testing::{Stack, fetch_settings, hedge_settings, pattern, policy_settings};
use crate::upstream::mock::{CallEnd, Fault, Step};

const MS: Duration = Duration::from_millis(1);

fn stack_with(f: impl FnOnce(&mut PolicySettings)) -> Stack {
    let mut p = policy_settings();
    f(&mut p);
    Stack::new(p, fetch_settings())
}

fn unavailable(retry_after: Option<Duration>) -> UpstreamError {
    UpstreamError::Status {
        status: 503,
        code: "service_unavailable".into(),
        message: "busy".into(),
        retry_after,
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_first_attempt_is_hedged_the_first_answer_wins_and_the_loser_is_cancelled() {
    let s = stack_with(|p| p.hedge = Some(hedge_settings()));
    let obj = s.source.add_file("f", pattern(8192, 1));
    s.source
        .push([Step::after(1000 * MS), Step::after(50 * MS)]);
    let t0 = Instant::now();
    let got = s
        .upstream
        .read(&obj, 0..4096, Purpose::New)
        .await
        .expect("read");
    // The hedge goes out at the initial 250 ms threshold and answers 50 ms later.
    assert_eq!(t0.elapsed(), 300 * MS);
    assert_eq!(got, pattern(8192, 1).slice(0..4096));
    let calls = s.source.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].end, CallEnd::Cancelled, "the loser is dropped");
    assert_eq!(calls[0].ended, Some(t0 + 300 * MS));
    assert_eq!(calls[1].started, t0 + 250 * MS);
    assert_eq!(s.metric("b2proxy_hedges_issued_total", &[]), 1.0);
    assert_eq!(s.metric("b2proxy_hedges_won_total", &[]), 1.0);
}

#[tokio::test(start_paused = true)]
async fn the_hedge_threshold_follows_the_latency_quantile_within_its_clamp() {
    let s = stack_with(|p| p.hedge = Some(hedge_settings()));
    let obj = s.source.add_file("f", pattern(4096, 2));
    s.source.script(|_| Step::after(10 * MS));
    for _ in 0..40 {
        s.upstream
            .read(&obj, 0..100, Purpose::New)
            .await
            .expect("read");
    }
    assert_eq!(
        s.upstream.hedge_threshold(),
        Some(30 * MS),
        "fast answers: the floor"
    );
    s.source.script(|_| Step::after(120 * MS));
    for _ in 0..60 {
        s.upstream
            .read(&obj, 0..100, Purpose::New)
            .await
            .expect("read");
    }
    assert_eq!(s.upstream.hedge_threshold(), Some(120 * MS));
    // A uniformly slow upstream is hedged only within the budget (half the requests here, from 5 tokens).
    let hedges = s.metric("b2proxy_hedges_issued_total", &[]);
    assert!(hedges <= 5.0 + 0.5 * 100.0, "{hedges} hedges");
}

#[tokio::test(start_paused = true)]
async fn hedges_stay_within_the_budget_when_everything_is_slow() {
    let s = stack_with(|p| {
        p.hedge = Some(HedgeSettings {
            budget: 0.05,
            ceiling: 1000 * MS,
            ..hedge_settings()
        })
    });
    let obj = s.source.add_file("f", pattern(4096, 3));
    // Every answer takes longer than any threshold the clamp allows: every request would like a hedge.
    s.source.script(|_| Step::after(1500 * MS));
    for _ in 0..100 {
        s.upstream
            .read(&obj, 0..100, Purpose::New)
            .await
            .expect("read");
    }
    let hedges = s.metric("b2proxy_hedges_issued_total", &[]);
    // 5 tokens at start, 0.05 earned per request: at most 10 for 100 requests.
    assert!((5.0..=10.0).contains(&hedges), "{hedges} hedges");
    assert_eq!(s.source.count() as f64, 100.0 + hedges);
}

#[tokio::test(start_paused = true)]
async fn read_ahead_and_large_runs_are_never_hedged() {
    let s = stack_with(|p| p.hedge = Some(hedge_settings()));
    let obj = s.source.add_file("f", pattern(4 << 20, 4));
    s.source.script(|_| Step::after(900 * MS));
    s.upstream
        .read(&obj, 0..4096, Purpose::ReadAhead)
        .await
        .expect("read-ahead");
    s.upstream
        .read(&obj, 0..(2 << 20), Purpose::New)
        .await
        .expect("large");
    assert_eq!(s.source.count(), 2);
    assert_eq!(s.metric("b2proxy_hedges_issued_total", &[]), 0.0);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_and_the_retry_succeeds() {
    let s = Stack::default_stack();
    let obj = s.source.add_file("f", pattern(4096, 5));
    s.source.push([
        Step::fail(10 * MS, unavailable(Some(Duration::from_secs(2)))),
        Step::after(10 * MS),
    ]);
    let t0 = Instant::now();
    s.upstream
        .read(&obj, 0..10, Purpose::New)
        .await
        .expect("read");
    // 10 ms, then exactly the 2 s Retry-After (above any backoff the settings allow), then 10 ms.
    assert_eq!(t0.elapsed(), 2020 * MS);
    assert_eq!(s.source.count(), 2);
    assert_eq!(
        s.metric("b2proxy_upstream_retries_total", &[("reason", "5xx")]),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_beyond_the_deadline_fails_now_instead_of_sleeping_past_it() {
    let s = Stack::default_stack();
    let obj = s.source.add_file("f", pattern(4096, 6));
    s.source
        .push([Step::fail(MS, unavailable(Some(Duration::from_secs(30))))]);
    let t0 = Instant::now();
    let e = s
        .upstream
        .read(&obj, 0..10, Purpose::New)
        .await
        .expect_err("no time to wait 30 s");
    assert!(
        matches!(e, UpstreamError::Exhausted { attempts: 1, .. }),
        "{e:?}"
    );
    assert_eq!(t0.elapsed(), MS);
}

#[tokio::test(start_paused = true)]
async fn a_frozen_upstream_fails_the_read_exactly_at_the_deadline() {
    let s = Stack::default_stack();
    let obj = s.source.add_file("f", pattern(4096, 7));
    s.source.script(|_| Step::with(Duration::ZERO, Fault::Hang));
    let t0 = Instant::now();
    let e = s
        .upstream
        .read(&obj, 0..10, Purpose::New)
        .await
        .expect_err("frozen");
    assert_eq!(t0.elapsed(), Duration::from_secs(5), "read_deadline");
    assert!(matches!(e, UpstreamError::Deadline { .. }), "{e:?}");
    assert!(matches!(e.root(), UpstreamError::Timeout(_)), "{e:?}");
    // Attempts are cut at the 2 s attempt timeout and retried; the one running at the deadline is cancelled.
    let calls = s.source.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls.iter().all(|c| c.end == CallEnd::Cancelled));
    assert_eq!(
        s.metric("b2proxy_fetch_errors_total", &[("reason", "deadline")]),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn non_retryable_errors_fail_at_once() {
    let s = Stack::default_stack();
    let obj = s.source.add_file("f", pattern(4096, 8));
    s.source
        .push([Step::fail(MS, UpstreamError::NotFound("f".into()))]);
    let e = s
        .upstream
        .read(&obj, 0..10, Purpose::New)
        .await
        .expect_err("404");
    assert!(matches!(e, UpstreamError::NotFound(_)));
    assert_eq!(s.source.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn bad_answers_are_retried_and_never_returned() {
    let s = Stack::default_stack();
    let obj = s.source.add_file("f", pattern(8192, 9));
    s.source.push([
        Step::with(MS, Fault::Truncated(100)),
        Step::with(MS, Fault::Shifted(7)),
        Step::after(MS),
    ]);
    let got = s
        .upstream
        .read(&obj, 1000..3000, Purpose::New)
        .await
        .expect("read");
    assert_eq!(got, pattern(8192, 9).slice(1000..3000));
    assert_eq!(s.source.count(), 3);
    // A foreign version is a changed file: not retried (the catalog must refresh first).
    s.source.push([Step::with(MS, Fault::Foreign)]);
    let e = s
        .upstream
        .read(&obj, 0..10, Purpose::New)
        .await
        .expect_err("foreign");
    assert!(matches!(e, UpstreamError::Changed(_)), "{e:?}");
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_on_an_outage_fails_fast_and_a_background_probe_closes_it() {
    // Short backoff: the failing read ends within 100 ms of the circuit opening, so the probes counted below
    // are exactly those of the 2.5 s that follow.
    let s = stack_with(|p| {
        p.min_backoff = 10 * MS;
        p.max_backoff = 50 * MS;
    });
    let obj = s.source.add_file("f", pattern(4096, 10));
    s.source.script(|_| Step::fail(20 * MS, unavailable(None)));
    let t0 = Instant::now();
    // One read's own retries fail 5 times over more than 500 ms: the circuit opens and ends that read too.
    let e = s
        .upstream
        .read(&obj, 0..10, Purpose::New)
        .await
        .expect_err("outage");
    assert!(matches!(e, UpstreamError::CircuitOpen { .. }), "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(s.upstream.circuit_open());
    assert_eq!(s.metric("b2proxy_upstream_circuit_state", &[]), 1.0);
    // Misses now fail at once, without a request.
    let calls = s.source.count();
    let t1 = Instant::now();
    let e = s
        .upstream
        .read(&obj, 0..10, Purpose::New)
        .await
        .expect_err("fast");
    assert!(matches!(e, UpstreamError::CircuitOpen { .. }));
    assert_eq!(t1.elapsed(), Duration::ZERO);
    assert_eq!(s.source.count(), calls);
    // The background probe keeps failing while upstream is down, then closes the circuit when it answers,
    // with no read arriving.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(s.upstream.circuit_open());
    let probes = s.source.count() - calls;
    assert_eq!(probes, 2, "one probe per 1 s cooldown");
    s.source.script(|_| Step::after(20 * MS));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!s.upstream.circuit_open(), "the probe closed it");
    assert_eq!(s.metric("b2proxy_upstream_circuit_state", &[]), 0.0);
    let probe = s.source.calls().pop().expect("probe");
    assert_eq!(probe.range, 0..1, "a probe reads one byte");
    s.upstream
        .read(&obj, 0..10, Purpose::New)
        .await
        .expect("served again");
}

#[tokio::test(start_paused = true)]
async fn a_few_failures_among_answers_do_not_open_the_circuit() {
    let s = Stack::default_stack();
    let obj = s.source.add_file("f", pattern(4096, 11));
    // Every third attempt fails: the upstream answers, the breaker stays closed for good.
    s.source.script(|c| {
        if c.seq % 3 == 0 {
            Step::fail(10 * MS, unavailable(None))
        } else {
            Step::after(10 * MS)
        }
    });
    for _ in 0..50 {
        s.upstream
            .read(&obj, 0..10, Purpose::New)
            .await
            .expect("retried to success");
    }
    assert!(!s.upstream.circuit_open());
}

#[tokio::test(start_paused = true)]
async fn upstream_concurrency_is_capped_and_queued_reads_still_finish() {
    let s = stack_with(|p| p.schedule.max_concurrency = 4);
    let obj = s.source.add_file("f", pattern(4096, 12));
    s.source.script(|_| Step::after(100 * MS));
    let t0 = Instant::now();
    let reads: Vec<_> = (0..10)
        .map(|i| {
            let (u, o) = (s.upstream.clone(), obj.clone());
            tokio::spawn(async move { u.read(&o, i..i + 1, Purpose::New).await })
        })
        .collect();
    for r in reads {
        r.await.expect("join").expect("read");
    }
    // 10 requests, 4 at a time, 100 ms each: three waves.
    assert_eq!(t0.elapsed(), 300 * MS);
    let calls = s.source.calls();
    for c in &calls {
        let overlapping = calls
            .iter()
            .filter(|o| o.started <= c.started && o.ended.is_some_and(|e| e > c.started))
            .count();
        assert!(
            overlapping <= 4,
            "{overlapping} in flight at {:?}",
            c.started
        );
    }
}

#[tokio::test(start_paused = true)]
async fn time_queued_for_admission_is_not_hedged() {
    // One slot, five reads of 40 ms each, a hedge threshold of 100 ms: the last reads wait up to 160 ms for
    // the slot, but each attempt answers in 40 ms once sent, so nothing is hedged.
    let s = stack_with(|p| {
        p.schedule.max_concurrency = 1;
        p.hedge = Some(HedgeSettings {
            floor: 100 * MS,
            ceiling: 100 * MS,
            ..hedge_settings()
        });
    });
    let obj = s.source.add_file("f", pattern(4096, 28));
    s.source.script(|_| Step::after(40 * MS));
    let t0 = Instant::now();
    let reads: Vec<_> = (0..5)
        .map(|i| {
            let (u, o) = (s.upstream.clone(), obj.clone());
            tokio::spawn(async move { u.read(&o, i..i + 1, Purpose::New).await })
        })
        .collect();
    for r in reads {
        r.await.expect("join").expect("read");
    }
    assert_eq!(t0.elapsed(), 200 * MS);
    assert_eq!(s.source.calls().len(), 5);
    assert_eq!(s.metric("b2proxy_hedges_issued_total", &[]), 0.0);
}

#[tokio::test(start_paused = true)]
async fn closing_fails_queued_reads_at_once() {
    let s = stack_with(|p| p.schedule.max_concurrency = 1);
    let obj = s.source.add_file("f", pattern(4096, 13));
    s.source.script(|_| Step::after(1000 * MS));
    let (u, o) = (s.upstream.clone(), obj.clone());
    let first = tokio::spawn(async move { u.read(&o, 0..1, Purpose::New).await });
    tokio::time::sleep(MS).await;
    let (u, o) = (s.upstream.clone(), obj.clone());
    let queued = tokio::spawn(async move { u.read(&o, 1..2, Purpose::New).await });
    tokio::time::sleep(MS).await;
    s.upstream.close();
    let e = queued.await.expect("join").expect_err("closed");
    assert!(matches!(e, UpstreamError::ShuttingDown), "{e:?}");
    first
        .await
        .expect("join")
        .expect("the running read finishes");
    let _: Arc<Upstream> = s.upstream;
}

fn with_schedule(f: impl FnOnce(&mut schedule::Settings)) -> Stack {
    stack_with(|p| f(&mut p.schedule))
}

#[tokio::test(start_paused = true)]
async fn a_lookup_in_progress_overtakes_queued_new_reads_and_read_ahead_goes_last() {
    let s = with_schedule(|c| c.max_concurrency = 1);
    let obj = s.source.add_file("f", pattern(4096, 20));
    s.source.script(|_| Step::after(100 * MS));
    let spawn = |range: Range<u64>, purpose: Purpose| {
        let (u, o) = (s.upstream.clone(), obj.clone());
        tokio::spawn(async move { u.read(&o, range, purpose).await })
    };
    // The one slot is busy; then, in this order: read-ahead, two new reads, a continuing lookup.
    let busy = spawn(0..1, Purpose::New);
    tokio::time::sleep(MS).await;
    let ahead = spawn(1..2, Purpose::ReadAhead);
    tokio::time::sleep(MS).await;
    let new_a = spawn(2..3, Purpose::New);
    tokio::time::sleep(MS).await;
    let new_b = spawn(3..4, Purpose::New);
    tokio::time::sleep(MS).await;
    let cont = spawn(4..5, Purpose::Continuing);
    for h in [busy, ahead, new_a, new_b, cont] {
        h.await.expect("join").expect("read");
    }
    let order: Vec<u64> = s.source.calls().iter().map(|c| c.range.start).collect();
    assert_eq!(
        order,
        vec![0, 4, 2, 3, 1],
        "continuing, then new FIFO, then read-ahead"
    );
}

#[tokio::test(start_paused = true)]
async fn nothing_starves_a_waiting_read_is_promoted_after_a_bounded_wait() {
    let s = with_schedule(|c| c.max_concurrency = 1);
    let obj = s.source.add_file("f", pattern(4096, 21));
    s.source.script(|_| Step::after(100 * MS));
    // A steady stream of continuing lookups that alone would keep the slot busy forever...
    let stream = {
        let (u, o) = (s.upstream.clone(), obj.clone());
        tokio::spawn(async move {
            let mut handles = Vec::new();
            for i in 0..30u64 {
                let (u, o) = (u.clone(), o.clone());
                handles.push(tokio::spawn(async move {
                    u.read(&o, 10 + i..11 + i, Purpose::Continuing).await
                }));
                tokio::time::sleep(50 * MS).await;
            }
            for h in handles {
                let _ = h.await;
            }
        })
    };
    tokio::time::sleep(10 * MS).await;
    let t0 = Instant::now();
    s.upstream
        .read(&obj, 0..1, Purpose::ReadAhead)
        .await
        .expect("read-ahead");
    let waited = t0.elapsed();
    // ...yet the read-ahead goes after at most promote_after (750 ms) plus the request in flight and its own.
    assert!(waited <= 750 * MS + 200 * MS, "waited {waited:?}");
    assert!(s.metric("b2proxy_upstream_promoted_total", &[]) >= 1.0);
    stream.abort();
}

#[tokio::test(start_paused = true)]
async fn requests_are_paced_under_the_configured_rate() {
    let s = with_schedule(|c| c.max_rps = 50.0);
    let obj = s.source.add_file("f", pattern(4096, 22));
    s.source.script(|_| Step::after(10 * MS));
    let t0 = Instant::now();
    let reads: Vec<_> = (0..100u64)
        .map(|i| {
            let (u, o) = (s.upstream.clone(), obj.clone());
            tokio::spawn(async move { u.read(&o, i..i + 1, Purpose::New).await })
        })
        .collect();
    for r in reads {
        r.await.expect("join").expect("read");
    }
    let took = t0.elapsed();
    assert!(
        took >= 1900 * MS && took <= 2100 * MS,
        "100 requests at 50/s took {took:?}"
    );
    let starts: Vec<Instant> = s.source.calls().iter().map(|c| c.started).collect();
    for (i, &t) in starts.iter().enumerate() {
        let in_window = starts[i..]
            .iter()
            .take_while(|&&u| u - t < Duration::from_secs(1))
            .count();
        assert!(
            in_window <= 55,
            "{in_window} requests within one second from {:?}",
            t - t0
        );
    }
}

#[tokio::test(start_paused = true)]
async fn throttling_backs_off_for_the_whole_upstream_no_429_reaches_a_reader_and_the_pace_recovers()
{
    let s = with_schedule(|c| c.max_rps = 100.0);
    let obj = s.source.add_file("f", pattern(4096, 23));
    // The upstream accepts 40 requests per second (a sliding window) and answers 429 with Retry-After 1 above.
    let window: Arc<crate::sync::Mutex<std::collections::VecDeque<Instant>>> = Arc::default();
    let w = window.clone();
    s.source.script(move |c| {
        let mut w = w.lock();
        while w
            .front()
            .is_some_and(|&t| c.started - t >= Duration::from_secs(1))
        {
            w.pop_front();
        }
        if w.len() >= 40 {
            Step::fail(
                5 * MS,
                UpstreamError::Status {
                    status: 429,
                    code: "too_many_requests".into(),
                    message: String::new(),
                    retry_after: Some(Duration::from_secs(1)),
                },
            )
        } else {
            w.push_back(c.started);
            Step::after(5 * MS)
        }
    });
    let reads: Vec<_> = (0..120u64)
        .map(|i| {
            let (u, o) = (s.upstream.clone(), obj.clone());
            tokio::spawn(async move {
                // 40 reads a second offered: at the upstream's limit once paced.
                tokio::time::sleep(Duration::from_millis(i * 25)).await;
                u.read(&o, i..i + 1, Purpose::New).await
            })
        })
        .collect();
    let mut failed = 0;
    for r in reads {
        if r.await.expect("join").is_err() {
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "a 429 reached a reader");
    let throttled = s.metric("b2proxy_upstream_throttled_total", &[]);
    let calls = s.source.count() as f64;
    assert!(
        throttled <= 0.1 * calls,
        "{throttled} 429s in {calls} requests: a storm"
    );
    // Calm again: the pace climbs back to the configured rate.
    assert!(s.upstream.scheduler().rate() <= 100.0);
    tokio::time::sleep(Duration::from_secs(30)).await;
    // The pump adapts while it runs: one more read drives it.
    s.upstream
        .read(&obj, 0..1, Purpose::New)
        .await
        .expect("read");
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.upstream
        .read(&obj, 1..2, Purpose::New)
        .await
        .expect("read");
    assert_eq!(s.upstream.scheduler().rate(), 100.0, "the pace recovered");
}

fn too_many_requests() -> UpstreamError {
    UpstreamError::Status {
        status: 429,
        code: "too_many_requests".into(),
        message: String::new(),
        retry_after: Some(Duration::from_secs(1)),
    }
}

/// Reads `n` one-byte ranges spread over `over`, and waits for them all; returns how many failed.
async fn offer(s: &Stack, obj: &ObjectInfo, n: u64, over: Duration) -> usize {
    let reads: Vec<_> = (0..n)
        .map(|i| {
            let (u, o) = (s.upstream.clone(), obj.clone());
            let at = over.mul_f64(i as f64 / n as f64);
            tokio::spawn(async move {
                tokio::time::sleep(at).await;
                u.read(&o, i % 4000..i % 4000 + 1, Purpose::New).await
            })
        })
        .collect();
    let mut failed = 0;
    for r in reads {
        if !matches!(r.await, Ok(Ok(_))) {
            failed += 1;
        }
    }
    failed
}

#[tokio::test(start_paused = true)]
async fn a_throttle_at_the_edge_cuts_the_pace_gently_without_a_pause_and_it_comes_back_fast() {
    let s = with_schedule(|c| c.max_rps = 100.0);
    let obj = s.source.add_file("f", pattern(4096, 25));
    s.source.script(|_| Step::after(5 * MS));
    let sch = s.upstream.scheduler();
    sch.throttled(Some(Duration::from_secs(1)), Instant::now());
    assert_eq!(sch.rate(), 90.0, "a first throttle cuts a tenth");
    // No pause: the next read goes one interval of the new pace later (11 ms), plus its own 5 ms.
    let t0 = Instant::now();
    s.upstream
        .read(&obj, 0..1, Purpose::New)
        .await
        .expect("read");
    assert!(t0.elapsed() <= 20 * MS, "paused for {:?}", t0.elapsed());
    // Calm traffic below the pace: after a calm second the pace climbs fast to just under the refused rate...
    assert_eq!(offer(&s, &obj, 60, Duration::from_secs(3)).await, 0);
    let r = sch.rate();
    assert!(
        r >= 100.0 * schedule::NEAR_REFUSED - 0.01,
        "pace {r} after 3 s"
    );
    // ...and then probes above it, slowly, back to the configured rate.
    assert_eq!(offer(&s, &obj, 60, Duration::from_secs(4)).await, 0);
    assert_eq!(sch.rate(), 100.0, "the pace is back");
}

#[tokio::test(start_paused = true)]
async fn refusals_of_requests_sent_before_a_cut_do_not_cut_again_but_a_refusal_after_it_cuts_hard_and_pauses()
 {
    let s = with_schedule(|c| c.max_rps = 100.0);
    let obj = s.source.add_file("f", pattern(4096, 26));
    s.source.script(|_| Step::after(5 * MS));
    let sch = s.upstream.scheduler();
    let before = Instant::now();
    tokio::time::sleep(10 * MS).await;
    sch.throttled(Some(Duration::from_secs(1)), before);
    // A burst's other refusals come back together: requests sent before the cut were answered by it.
    for _ in 0..20 {
        sch.throttled(Some(Duration::from_secs(1)), before);
    }
    assert_eq!(sch.rate(), 90.0, "one burst of refusals, one cut");
    tokio::time::sleep(50 * MS).await;
    // A request sent at the cut pace is refused too: the pace is far over what the upstream accepts.
    let after = Instant::now();
    tokio::time::sleep(10 * MS).await;
    sch.throttled(Some(Duration::from_secs(1)), after);
    assert_eq!(
        sch.rate(),
        90.0 * 0.75,
        "a refusal after a cut cuts a quarter"
    );
    let t0 = Instant::now();
    s.upstream
        .read(&obj, 0..1, Purpose::New)
        .await
        .expect("read");
    let waited = t0.elapsed();
    assert!(
        waited >= schedule::MAX_PAUSE && waited <= schedule::MAX_PAUSE + 10 * MS,
        "a hard cut pauses everyone briefly: waited {waited:?}"
    );
    assert_eq!(s.metric("b2proxy_upstream_throttled_total", &[]), 22.0);
}

#[tokio::test(start_paused = true)]
async fn a_pace_at_the_upstreams_own_rate_keeps_its_throughput_through_bursts() {
    // B2's account bucket at exactly the configured pace, with a smaller burst than the pace's own bucket: every
    // burst's first requests meet its edge. The pace must stay near the rate, not ratchet down burst by burst.
    let s = with_schedule(|c| {
        c.max_rps = 100.0;
        c.max_concurrency = 512;
        c.initial_concurrency = 512;
    });
    let obj = s.source.add_file("f", pattern(4096, 27));
    let bucket = Arc::new(crate::sync::Mutex::new((5.0f64, Instant::now())));
    let b = bucket.clone();
    s.source.script(move |c| {
        let mut b = b.lock();
        let (tokens, last) = *b;
        let tokens = (tokens + c.started.duration_since(last).as_secs_f64() * 100.0).min(5.0);
        if tokens >= 1.0 {
            *b = (tokens - 1.0, c.started);
            Step::after(20 * MS)
        } else {
            *b = (tokens, c.started);
            Step::fail(2 * MS, too_many_requests())
        }
    });
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        // 150 reads offered within 0.3 s, every 2.5 s: 1.5 s of work at the pace, then a pause to refill.
        let t0 = Instant::now();
        assert_eq!(
            offer(&s, &obj, 150, 300 * MS).await,
            0,
            "a 429 reached a reader"
        );
        slowest = slowest.max(t0.elapsed());
        tokio::time::sleep_until(t0 + 2500 * MS).await;
    }
    let throttled = s.metric("b2proxy_upstream_throttled_total", &[]);
    let calls = s.source.count() as f64;
    assert!(throttled <= 0.05 * calls, "{throttled} 429s in {calls}");
    // 1.5 s at 100/s; a read refused at the start waits its Retry-After of 1 s and is retried within it.
    assert!(
        slowest <= 2 * Duration::from_secs(1),
        "a burst took {slowest:?}"
    );
    assert!(
        s.upstream.scheduler().rate() >= 85.0,
        "pace {}",
        s.upstream.scheduler().rate()
    );
}

#[tokio::test(start_paused = true)]
async fn while_paced_a_throttle_does_not_shrink_the_concurrency_limit() {
    let s = with_schedule(|c| {
        c.max_rps = 1000.0;
        c.initial_concurrency = 64;
        c.adaptive = true;
    });
    let obj = s.source.add_file("f", pattern(4096, 28));
    let n = std::sync::atomic::AtomicU32::new(0);
    s.source.script(move |_| {
        if n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(10)
        {
            Step::fail(2 * MS, too_many_requests())
        } else {
            Step::after(20 * MS)
        }
    });
    assert_eq!(offer(&s, &obj, 100, 500 * MS).await, 0);
    assert!(s.metric("b2proxy_upstream_throttled_total", &[]) >= 5.0);
    assert!(s.upstream.scheduler().concurrency_limit() >= 64);
}

#[tokio::test(start_paused = true)]
async fn hedges_stop_while_the_upstream_throttles() {
    let s = stack_with(|p| {
        p.hedge = Some(hedge_settings());
        p.schedule.max_rps = 100.0;
    });
    let obj = s.source.add_file("f", pattern(4096, 24));
    s.upstream
        .scheduler()
        .throttled(Some(Duration::from_millis(100)), Instant::now());
    s.source.script(|_| Step::after(1000 * MS));
    s.upstream
        .read(&obj, 0..10, Purpose::New)
        .await
        .expect("read");
    assert_eq!(s.metric("b2proxy_hedges_issued_total", &[]), 0.0);
    assert_eq!(s.source.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn congestion_seen_in_small_reads_lapses_when_only_large_reads_follow() {
    // Large reads give no latency samples (they are bandwidth-bound): a congested verdict from the small reads
    // before them must lapse, not shrink the limit on every large answer for good.
    let s = with_schedule(|c| {
        c.adaptive = true;
        c.max_concurrency = 400;
        c.initial_concurrency = 16;
        c.min_concurrency = 4;
    });
    let obj = s.source.add_file("f", pattern(4 << 20, 27));
    let slow = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sl = slow.clone();
    s.source.script(move |_| {
        if sl.load(std::sync::atomic::Ordering::Relaxed) {
            Step::after(400 * MS)
        } else {
            Step::after(50 * MS)
        }
    });
    let wave = |n: u64, len: u64| {
        let reads: Vec<_> = (0..n)
            .map(|i| {
                let (u, o) = (s.upstream.clone(), obj.clone());
                tokio::spawn(async move { u.read(&o, i..i + len, Purpose::New).await })
            })
            .collect();
        async move {
            for r in reads {
                r.await.expect("join").expect("read");
            }
        }
    };
    for _ in 0..3 {
        wave(300, 1).await;
    }
    slow.store(true, std::sync::atomic::Ordering::Relaxed);
    for _ in 0..3 {
        wave(300, 1).await;
    }
    slow.store(false, std::sync::atomic::Ordering::Relaxed);
    let congested = s.upstream.scheduler().concurrency_limit();
    let t0 = tokio::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        wave(200, 300 << 10).await;
    }
    let after = s.upstream.scheduler().concurrency_limit();
    assert!(
        after as f64 >= congested as f64 * 0.5,
        "limit {after} (was {congested} after the slow window): 3 s of large reads at the usual latency"
    );
}

#[tokio::test(start_paused = true)]
async fn lognormal_latency_alone_does_not_shrink_the_concurrency_limit() {
    // B2's latency is lognormal (sigma ~0.3): a third of its answers take three times its fastest. That is its
    // usual, not congestion: after one real overload answer (a 503), the limit must not keep shrinking on
    // the natural spread of the answers that follow.
    let s = with_schedule(|c| {
        c.adaptive = true;
        c.max_concurrency = 400;
        c.initial_concurrency = 16;
        c.min_concurrency = 4;
    });
    let obj = s.source.add_file("f", pattern(1 << 20, 26));
    let fail_next = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fail = fail_next.clone();
    let rng = std::sync::Mutex::new(0x2545_f491_4f6c_dd1d_u64);
    s.source.script(move |_| {
        if fail.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return Step::fail(50 * MS, unavailable(None));
        }
        let mut x = rng.lock().unwrap_or_else(|p| p.into_inner());
        // Two uniforms by xorshift, one normal by Box-Muller, a lognormal delay of median 50 ms.
        let mut next = || {
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            (*x >> 11) as f64 / (1u64 << 53) as f64
        };
        let (u1, u2) = (1.0 - next(), next());
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        Step::after(Duration::from_secs_f64(0.050 * (0.3 * z).exp()))
    });
    let wave = || {
        let reads: Vec<_> = (0..300u64)
            .map(|i| {
                let (u, o) = (s.upstream.clone(), obj.clone());
                tokio::spawn(async move { u.read(&o, i..i + 1, Purpose::New).await })
            })
            .collect();
        async move {
            for r in reads {
                r.await.expect("join").expect("read");
            }
        }
    };
    for _ in 0..3 {
        wave().await;
    }
    let grown = s.upstream.scheduler().concurrency_limit();
    assert!(grown >= 200, "limit {grown} after three waves of 300");
    fail_next.store(true, std::sync::atomic::Ordering::Relaxed);
    // Four seconds of waves within the 5 s after the overload (the limit grows slowly then).
    let t0 = tokio::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(4) {
        wave().await;
    }
    let after = s.upstream.scheduler().concurrency_limit();
    assert!(
        after as f64 >= grown as f64 * 0.8 * 0.95,
        "limit {after} (was {grown}): one 503, then only lognormal latency"
    );
}

#[tokio::test(start_paused = true)]
async fn the_concurrency_limit_grows_to_the_demand_and_shrinks_when_the_upstream_slows() {
    let s = with_schedule(|c| {
        c.adaptive = true;
        c.max_concurrency = 400;
        c.initial_concurrency = 16;
        c.min_concurrency = 4;
    });
    let obj = s.source.add_file("f", pattern(1 << 20, 25));
    let slow = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sl = slow.clone();
    s.source.script(move |_| {
        if sl.load(std::sync::atomic::Ordering::Relaxed) {
            Step::after(400 * MS)
        } else {
            Step::after(50 * MS)
        }
    });
    let wave = |n: u64| {
        let reads: Vec<_> = (0..n)
            .map(|i| {
                let (u, o) = (s.upstream.clone(), obj.clone());
                tokio::spawn(async move { u.read(&o, i..i + 1, Purpose::New).await })
            })
            .collect();
        async move {
            for r in reads {
                r.await.expect("join").expect("read");
            }
        }
    };
    // 300 requests at once, three times: the limit grows from 16 toward the demand.
    for _ in 0..3 {
        wave(300).await;
    }
    let grown = s.upstream.scheduler().concurrency_limit();
    assert!(grown >= 200, "limit {grown} after three waves of 300");
    // The upstream slows down 8x: the limit comes down (a fifth per round trip) rather than piling on.
    slow.store(true, std::sync::atomic::Ordering::Relaxed);
    for _ in 0..4 {
        wave(300).await;
    }
    let shrunk = s.upstream.scheduler().concurrency_limit();
    assert!(
        shrunk < grown / 2,
        "limit {shrunk} (was {grown}) with latency 8x the usual"
    );
    assert_eq!(
        s.metric("b2proxy_upstream_concurrency_limit", &[]),
        shrunk as f64
    );
}
