//! Upstream admission: how many requests may be in flight, how many may start per second, and which waiting
//! request goes next.
//!
//! - **Concurrency that adapts** (AIMD on latency and errors): the limit starts at `initial_concurrency` and grows
//!   while requests queue for it and the upstream answers at its usual latency (by one per answer while no
//!   overload was seen for a while, like TCP's slow start; else by one per window of answers); it shrinks by a
//!   fifth on an overload answer (timeout, 5xx, 429) or when the median latency of a quarter second's answers is
//!   more than twice the usual, at most once per [`DECREASE_GAP`]. (Single answers are not compared: B2's
//!   latency is lognormal, a third of its answers take three times its fastest, and a burst's slowest answers
//!   all arrive last.) `max_concurrency` is the ceiling, `min_concurrency` the floor.
//! - **Pacing** (a token bucket at the current rate): at most `max_rps` requests start per second. A 429 or 503
//!   with `Retry-After` (a *throttle*) of a request sent at the current pace cuts the pace: by a tenth at first
//!   (a pace at the account's rate meets the edge of B2's bucket now and then, since requests granted evenly
//!   arrive unevenly), and by a quarter, with a brief pause of the whole upstream ([`MAX_PAUSE`]), when a request
//!   sent after a cut (and its first two intervals) within [`ESCALATE`] is refused too (the pace is far over
//!   what B2 accepts). Throttles of requests sent before the last cut were answered by it and change nothing,
//!   so one burst of refusals is one cut. The pace remembers the rate that was refused (gentle cuts never lower
//!   it): each calm second gives back a quarter of the configured rate up to just under it ([`NEAR_REFUSED`]),
//!   then 2% a second above it, so it returns within a second or two to where B2 accepted it and probes slowly
//!   past that instead of hitting the same wall at full speed.
//!   The throttled request itself waits its whole `Retry-After`. With a pace, a throttle is no signal for the
//!   concurrency limit (the pace answers it). With `max_rps` 0 there is no pace at all, only the pause, on
//!   every throttle.
//! - **Priority**: [`Class::Continuing`] (a file whose read was answered in the last moments: a lookup in
//!   progress) goes before [`Class::New`], which goes before [`Class::Background`] (read-ahead); FIFO within a
//!   class; a request that waited [`Settings::promote_after`] goes next whatever its class, so nothing starves.
//!
//! Waiters are served by one pump task; a permit is released when dropped, so a cancelled request (a hedge's
//! loser, a timeout) gives its slot back at once. Nothing here knows a plot format.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::sync::Mutex;
use crate::upstream::UpstreamError;

/// Shrinks of the concurrency limit are at least this far apart (one burst of errors is one signal).
pub const DECREASE_GAP: Duration = Duration::from_millis(200);
/// Longest pause of the whole upstream after a throttling answer. The throttled request itself waits its whole
/// `Retry-After` (the retry layer honours it, as B2 asks); everyone else only lets B2's bucket refill a little
/// while the pace is cut: B2 states `Retry-After` in whole seconds, far longer than its bucket takes to refill.
pub const MAX_PAUSE: Duration = Duration::from_millis(250);
/// A request sent within this long after a cut and refused too escalates to a hard cut.
pub const ESCALATE: Duration = Duration::from_secs(2);
/// Gentle cut of the pace (at the edge of the upstream's bucket) and hard one (far over it).
const GENTLE_CUT: f64 = 0.9;
const HARD_CUT: f64 = 0.75;
/// After a cut the pace climbs fast up to this fraction of the rate that was refused, then slowly.
pub const NEAR_REFUSED: f64 = 0.95;
/// Climb per calm second, as a share of `max_rps`: fast below the refused rate, probing above it.
const FAST_CLIMB: f64 = 0.25;
const PROBE_CLIMB: f64 = 0.02;
/// Overload-free time after which the concurrency limit grows fast again.
const CALM: Duration = Duration::from_secs(5);
/// How long a latency baseline stands before the window's minimum replaces it.
const BASELINE_WINDOW: Duration = Duration::from_secs(10);
/// Latency is judged per window of this length (and at least [`MIN_WINDOW_SAMPLES`] answers).
const LATENCY_WINDOW: Duration = Duration::from_millis(250);
const MIN_WINDOW_SAMPLES: usize = 16;
/// Answers kept per window for its median (the first ones; a window is a quarter of a second).
const WINDOW_SAMPLES: usize = 512;
/// A window's median latency this many times the usual one means the upstream is overloaded.
const INFLATED: f64 = 2.0;
/// Requests up to this size give latency samples (bigger ones are bandwidth-bound).
pub const SAMPLE_MAX_BYTES: u64 = 256 << 10;

/// Who is waiting, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// A read of a file that had a read answered moments ago: a lookup in progress, finish it first.
    Continuing = 0,
    /// A read nobody has started on yet.
    New = 1,
    /// Read-ahead: nobody waits on it.
    Background = 2,
}

impl Class {
    pub fn label(self) -> &'static str {
        match self {
            Class::Continuing => "continuing",
            Class::New => "new",
            Class::Background => "background",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub max_concurrency: usize,
    pub min_concurrency: usize,
    pub initial_concurrency: usize,
    /// Requests started per second at most; 0: no pace.
    pub max_rps: f64,
    /// A request waiting this long goes next whatever its class.
    pub promote_after: Duration,
    /// Off: the concurrency limit is `max_concurrency`, fixed.
    pub adaptive: bool,
    /// Off: one FIFO queue for every class.
    pub prioritize: bool,
}

/// How an admitted request ended, for the adaptive limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Answered; `sample`: small enough for its latency to say something about the upstream.
    Answered { sample: bool },
    /// Timeout or 5xx: the upstream is overloaded.
    Overload,
    /// 429, or 503 with `Retry-After`: the upstream limits our rate. An overload for the concurrency limit
    /// only when there is no pace to cut (the pace is what answers a rate limit).
    Throttled,
    /// Anything else (404, a changed file): says nothing about load.
    Neutral,
}

struct Waiter {
    tx: oneshot::Sender<Permit>,
    since: Instant,
    class: Class,
}

struct State {
    limit: f64,
    inflight: usize,
    /// Requests queued because of the concurrency limit (not the pace) since the queue last emptied.
    saturated: bool,
    /// Current pace, requests/s; 0 = none.
    rate: f64,
    tokens: f64,
    refilled: Instant,
    paused_until: Option<Instant>,
    last_throttle: Option<Instant>,
    /// Just after the pace was last cut (two intervals of the new pace): throttles of requests sent before it
    /// were answered by that cut.
    last_cut: Option<Instant>,
    /// The rate that was refused last (the pace, or what was really sent, when the upstream throttled): the
    /// pace climbs back fast to just under it and probes slowly above it.
    refused_rate: Option<f64>,
    last_overload: Option<Instant>,
    last_decrease: Option<Instant>,
    /// Latencies (seconds) of the small requests answered since `latency_since` ([`LATENCY_WINDOW`]): judged
    /// by their median, since a burst's answers arrive fastest first and its last ones are B2's natural tail.
    latencies: Vec<f64>,
    latency_since: Instant,
    /// The last window's median was inflated: until then answers shrink the limit (not grow it). It lapses
    /// by itself, so answers that give no samples (large reads) never keep it on.
    congested_until: Option<Instant>,
    /// Usual latency (a window's median, seconds): follows a new minimum down at once; up only to the minimum
    /// of the last [`BASELINE_WINDOW`], so a lasting slowdown becomes the new usual after a while, a burst never.
    baseline: Option<f64>,
    window_min: Option<f64>,
    baseline_since: Instant,
    /// Start of the current second of pace adaptation.
    window_start: Instant,
    queues: [VecDeque<Waiter>; 3],
    closed: bool,
}

pub struct Scheduler {
    settings: Settings,
    state: Mutex<State>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // The pump waits on this: let it see the scheduler is gone.
        self.wake.notify_one();
    }
}

/// The right to send one upstream request; released when dropped.
pub struct Permit {
    scheduler: Arc<Scheduler>,
    granted: Instant,
    armed: bool,
}

impl Permit {
    /// When the request was let go (for throttles: was it sent before or after the pace was cut).
    pub fn granted(&self) -> Instant {
        self.granted
    }

    /// Reports how the request went (feeds the adaptive limits), then releases the slot.
    pub fn done(mut self, signal: Signal) {
        let latency = self.granted.elapsed();
        self.scheduler.feedback(signal, latency);
        self.release();
    }

    fn release(&mut self) {
        if std::mem::take(&mut self.armed) {
            self.scheduler.state.lock().inflight -= 1;
            self.scheduler.wake.notify_one();
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.release();
    }
}

impl Scheduler {
    pub fn new(settings: Settings, metrics: Arc<Metrics>) -> Arc<Self> {
        let now = Instant::now();
        let initial = if settings.adaptive {
            settings.initial_concurrency.clamp(
                settings.min_concurrency.max(1),
                settings.max_concurrency.max(1),
            )
        } else {
            settings.max_concurrency.max(1)
        };
        let s = Arc::new(Self {
            state: Mutex::new(State {
                limit: initial as f64,
                inflight: 0,
                saturated: false,
                rate: settings.max_rps,
                tokens: settings.max_rps.max(1.0),
                refilled: now,
                paused_until: None,
                last_throttle: None,
                last_cut: None,
                refused_rate: None,
                last_overload: None,
                last_decrease: None,
                latencies: Vec::with_capacity(WINDOW_SAMPLES),
                latency_since: now,
                congested_until: None,
                baseline: None,
                window_min: None,
                baseline_since: now,
                window_start: now,
                queues: Default::default(),
                closed: false,
            }),
            wake: Arc::new(Notify::new()),
            metrics,
            settings,
        });
        s.metrics.upstream_concurrency_limit.set(initial as i64);
        s.metrics.upstream_rate_limit.set(s.settings.max_rps);
        tokio::spawn(pump(Arc::downgrade(&s), s.wake.clone()));
        s
    }

    /// Waits for the right to send one request of `class`.
    pub async fn acquire(self: &Arc<Self>, class: Class) -> Result<Permit, UpstreamError> {
        let class = if self.settings.prioritize {
            class
        } else {
            Class::New
        };
        let rx = {
            let mut st = self.state.lock();
            if st.closed {
                return Err(UpstreamError::ShuttingDown);
            }
            let now = Instant::now();
            refill(&mut st, now);
            // Here too, not only in the pump: traffic that comes in bursts has its throttles at each burst's
            // start, before the pump would look, and the pace must climb back in the calm between bursts.
            self.adapt_rate(&mut st, now);
            let ahead = st.queues[..=class as usize].iter().any(|q| !q.is_empty())
                || self.aged_head(&st, now).is_some();
            if !ahead && can_grant(&st, now) {
                return Ok(self.grant(&mut st, now));
            }
            if st.inflight as f64 >= st.limit.floor() {
                st.saturated = true;
            }
            let (tx, rx) = oneshot::channel();
            st.queues[class as usize].push_back(Waiter {
                tx,
                since: now,
                class,
            });
            self.metrics.upstream_queued.inc();
            rx
        };
        self.wake.notify_one();
        let waited = Instant::now();
        let permit = rx.await.map_err(|_| UpstreamError::ShuttingDown)?;
        self.metrics
            .upstream_queue_wait
            .with_label_values(&[class.label()])
            .observe(waited.elapsed().as_secs_f64());
        Ok(permit)
    }

    /// Fails every waiter and every later request (shutdown).
    pub fn close(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        for q in &mut st.queues {
            q.clear();
        }
        self.metrics.upstream_queued.set(0);
    }

    /// Whether the upstream is limiting us now (paused, or throttled in the last few seconds): hedges would
    /// only add to what it refuses.
    pub fn limiting(&self) -> bool {
        let st = self.state.lock();
        let now = Instant::now();
        st.paused_until.is_some_and(|t| t > now)
            || st
                .last_throttle
                .is_some_and(|t| now.duration_since(t) < CALM)
    }

    /// The upstream throttled a request sent at `sent` (429, or 503 with `Retry-After`): slow down for
    /// everyone, and pause everyone when even a cut pace was refused.
    pub fn throttled(&self, retry_after: Option<Duration>, sent: Instant) {
        let now = Instant::now();
        let mut st = self.state.lock();
        self.metrics.upstream_throttled.inc();
        st.last_throttle = Some(now);
        let paced = self.settings.max_rps > 0.0;
        if paced && st.last_cut.is_some_and(|t| sent <= t) {
            // Sent before the last cut: that cut was the answer to it (a burst's refusals come back together).
            return;
        }
        let hard = !paced
            || st
                .last_cut
                .is_some_and(|t| now.saturating_duration_since(t) < ESCALATE);
        if let Some(ra) = retry_after
            && hard
        {
            let until = now + ra.min(MAX_PAUSE);
            st.paused_until = Some(st.paused_until.map_or(until, |p| p.max(until)));
        }
        if !paced {
            // Pacing is off: the pause above is all (and retries back off on their own).
            return;
        }
        // Cut from the pace, not from a rate measured over a window: traffic comes in bursts, and a burst runs at
        // the pace however idle the second around it was. A pace far above what the upstream accepts comes down
        // by escalation instead (a quarter per refusal of a request sent after the last cut).
        let from = st.rate;
        // The edge of the upstream's bucket is met again at every burst whatever the pace, so a gentle cut never
        // lowers the remembered refused rate (else bursts would ratchet the pace down one tenth at a time); a
        // hard cut, refused at a cut pace, does.
        st.refused_rate = Some(match st.refused_rate {
            Some(r) if !hard => r.max(from),
            _ => from,
        });
        st.rate = (from * if hard { HARD_CUT } else { GENTLE_CUT }).max(1.0);
        // An empty bucket: the next request goes one interval of the new pace later. Requests sent within two
        // intervals still meet the upstream's bucket as the burst left it, so only later ones say the cut pace
        // is refused too.
        st.tokens = 0.0;
        st.last_cut = Some(now + Duration::from_secs_f64(2.0 / st.rate));
        self.metrics.upstream_rate_limit.set(st.rate);
        tracing::warn!(
            rate = st.rate,
            hard,
            ?retry_after,
            "upstream throttling; pacing requests"
        );
        drop(st);
        self.wake.notify_one();
    }

    pub fn concurrency_limit(&self) -> usize {
        self.state.lock().limit.floor() as usize
    }

    /// Current pace in requests/s (0: none).
    pub fn rate(&self) -> f64 {
        self.state.lock().rate
    }

    fn grant(self: &Arc<Self>, st: &mut State, now: Instant) -> Permit {
        st.inflight += 1;
        if st.rate > 0.0 {
            st.tokens -= 1.0;
        }
        Permit {
            scheduler: self.clone(),
            granted: now,
            armed: true,
        }
    }

    /// The oldest waiter of a lower class that has waited long enough to go next.
    fn aged_head(&self, st: &State, now: Instant) -> Option<usize> {
        (1..3)
            .filter_map(|c| st.queues[c].front().map(|w| (c, w.since)))
            .filter(|(_, since)| now.duration_since(*since) >= self.settings.promote_after)
            .min_by_key(|(_, since)| *since)
            .map(|(c, _)| c)
    }

    /// Grants what can be granted now; returns when to look again if waiters remain blocked by the pace.
    fn pump_once(self: &Arc<Self>) -> Option<Instant> {
        let now = Instant::now();
        let mut st = self.state.lock();
        refill(&mut st, now);
        self.adapt_rate(&mut st, now);
        while can_grant(&st, now) {
            let class = match self.aged_head(&st, now) {
                Some(c) => c,
                None => match (0..3).find(|&c| !st.queues[c].is_empty()) {
                    Some(c) => c,
                    None => break,
                },
            };
            let Some(w) = st.queues[class].pop_front() else {
                break;
            };
            self.metrics.upstream_queued.dec();
            if w.class > Class::Continuing
                && now.duration_since(w.since) >= self.settings.promote_after
            {
                self.metrics.upstream_promoted.inc();
            }
            let permit = self.grant(&mut st, now);
            self.metrics.upstream_delayed.inc();
            if let Err(mut p) = w.tx.send(permit) {
                // The waiter is gone: undo under the lock we hold (its Drop would take it again).
                p.armed = false;
                st.inflight -= 1;
                if st.rate > 0.0 {
                    st.tokens += 1.0;
                }
            }
        }
        if st.queues.iter().all(VecDeque::is_empty) {
            st.saturated = false;
            return None;
        }
        if st.inflight as f64 >= st.limit.floor() {
            st.saturated = true;
            return None;
        }
        let paused = st.paused_until.filter(|t| *t > now);
        // At least a millisecond (the timer's resolution): a token a hair short of whole would otherwise wake
        // the pump at `now` again and again without the clock moving (a busy loop; forever on a paused clock).
        let token_at = (st.rate > 0.0 && st.tokens < 1.0).then(|| {
            now + Duration::from_secs_f64((1.0 - st.tokens) / st.rate).max(Duration::from_millis(1))
        });
        paused
            .max(token_at)
            .or(Some(now + Duration::from_millis(10)))
    }

    /// Gives back pace once the upstream has stopped throttling; turns an unconfigured pace off again.
    fn adapt_rate(&self, st: &mut State, now: Instant) {
        let elapsed = now.duration_since(st.window_start);
        if elapsed >= Duration::from_secs(1) {
            st.window_start = now;
            let calm = st
                .last_throttle
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
            let max = self.settings.max_rps;
            if calm && max > 0.0 && st.rate < max {
                st.rate = climb(
                    st.rate,
                    max,
                    st.refused_rate,
                    elapsed.as_secs_f64().min(5.0),
                );
                self.metrics.upstream_rate_limit.set(st.rate);
            }
        }
    }

    fn feedback(&self, signal: Signal, latency: Duration) {
        if !self.settings.adaptive {
            return;
        }
        let now = Instant::now();
        let mut st = self.state.lock();
        let (lo, hi) = (
            self.settings.min_concurrency.max(1) as f64,
            self.settings.max_concurrency.max(1) as f64,
        );
        let decrease = |st: &mut State| {
            if st
                .last_decrease
                .is_none_or(|t| now.duration_since(t) >= DECREASE_GAP)
            {
                st.limit = (st.limit * 0.8).max(lo);
                st.last_decrease = Some(now);
            }
        };
        match signal {
            Signal::Neutral => {}
            // With a pace, a throttle is answered by cutting the pace: shrinking the concurrency too would cut
            // the throughput twice for one signal (and concurrency regrows far slower than the pace).
            Signal::Throttled if self.settings.max_rps > 0.0 => {}
            Signal::Overload | Signal::Throttled => {
                st.last_overload = Some(now);
                decrease(&mut st);
            }
            Signal::Answered { sample } => {
                if sample {
                    if st.latencies.len() < WINDOW_SAMPLES {
                        st.latencies.push(latency.as_secs_f64());
                    }
                    if now.duration_since(st.latency_since) >= LATENCY_WINDOW
                        && st.latencies.len() >= MIN_WINDOW_SAMPLES
                    {
                        let median = median(&mut st.latencies);
                        st.latencies.clear();
                        st.latency_since = now;
                        st.window_min = Some(st.window_min.map_or(median, |m| m.min(median)));
                        if now.duration_since(st.baseline_since) >= BASELINE_WINDOW {
                            st.baseline = st.window_min.take();
                            st.baseline_since = now;
                        }
                        let inflated = match st.baseline {
                            Some(b) if median >= b => median > b * INFLATED && median > 0.020,
                            _ => {
                                st.baseline = Some(median);
                                false
                            }
                        };
                        st.congested_until = inflated.then_some(now + 2 * LATENCY_WINDOW);
                    }
                }
                if st.congested_until.is_some_and(|t| t > now) {
                    st.last_overload = Some(now);
                    decrease(&mut st);
                } else if st.saturated {
                    let calm = st
                        .last_overload
                        .is_none_or(|t| now.duration_since(t) >= CALM);
                    st.limit += if calm { 1.0 } else { 1.0 / st.limit };
                    st.limit = st.limit.min(hi);
                }
            }
        }
        self.metrics
            .upstream_concurrency_limit
            .set(st.limit.floor() as i64);
        drop(st);
        // A larger limit may admit waiters.
        self.wake.notify_one();
    }
}

/// The pace after `secs` calm seconds from `rate`: fast up to just under the rate that was refused, then a
/// slow probe above it, never over `max`.
fn climb(rate: f64, max: f64, refused: Option<f64>, secs: f64) -> f64 {
    let knee = refused.map_or(max, |r| (r * NEAR_REFUSED).min(max));
    let fast = (max * FAST_CLIMB).max(1.0);
    let slow = (max * PROBE_CLIMB).max(1.0);
    let mut rate = rate;
    let mut secs = secs;
    if rate < knee {
        let t = ((knee - rate) / fast).min(secs);
        rate += fast * t;
        secs -= t;
    }
    (rate + slow * secs).min(max)
}

/// The median of `v` (reordered); `v` is not empty.
fn median(v: &mut [f64]) -> f64 {
    let mid = v.len() / 2;
    *v.select_nth_unstable_by(mid, f64::total_cmp).1
}

fn refill(st: &mut State, now: Instant) {
    if st.rate > 0.0 {
        let dt = now.duration_since(st.refilled).as_secs_f64();
        // A bucket of a tenth of a second's worth (at least one): a pace, not a burst allowance.
        let cap = (st.rate / 10.0).max(1.0);
        st.tokens = (st.tokens + dt * st.rate).min(cap);
    }
    st.refilled = now;
}

fn can_grant(st: &State, now: Instant) -> bool {
    !st.closed
        && (st.inflight as f64) < st.limit.floor()
        && st.paused_until.is_none_or(|t| t <= now)
        && (st.rate <= 0.0 || st.tokens >= 1.0)
}

/// Serves waiters as slots, tokens and pauses allow; ends with the scheduler.
async fn pump(scheduler: Weak<Scheduler>, wake: Arc<Notify>) {
    loop {
        let Some(s) = scheduler.upgrade() else { return };
        let next = s.pump_once();
        drop(s);
        // A notification sent since pump_once looked is kept by Notify: none is lost.
        let notified = wake.notified();
        match next {
            Some(at) => {
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
            None => notified.await,
        }
    }
}
