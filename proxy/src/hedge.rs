//! Hedged upstream requests: when an attempt has not answered within a threshold learned from recent
//! latencies (a high quantile of a sliding window, clamped between a floor and a ceiling), the same request is
//! sent again; the first verified answer wins and the other is dropped (its connection is cancelled).
//! A token budget bounds hedges to a share of requests, so a uniformly slow upstream is not hit twice as hard.
//! Retries wrap the hedged attempt: a failed pair is retried by the same policy as plain reads.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::metrics::Metrics;
use crate::upstream::retry::{RetryPolicy, retry};
use crate::upstream::{ObjectInfo, ObjectSource, UpstreamError};

/// Samples kept for the quantile.
const WINDOW: usize = 512;
/// Samples needed before the learned threshold replaces the initial one.
const MIN_SAMPLES: usize = 20;
/// Only requests up to this size are hedged and sampled: big read-ahead runs are bandwidth-bound, not
/// latency-bound, and would skew the quantile.
const MAX_HEDGED_BYTES: u64 = 1 << 20;
/// Most hedges that may be issued in a burst.
const BUDGET_CAP: f64 = 10.0;

#[derive(Debug, Clone)]
pub struct HedgeSettings {
    pub quantile: f64,
    pub floor: Duration,
    pub ceiling: Duration,
    /// Share of requests that may be hedged (0.05 = 5%).
    pub budget: f64,
}

impl Default for HedgeSettings {
    fn default() -> Self {
        Self {
            quantile: 0.98,
            floor: Duration::from_millis(30),
            ceiling: Duration::from_secs(2),
            budget: 0.05,
        }
    }
}

struct Budget {
    tokens: f64,
}

pub struct Hedger {
    settings: HedgeSettings,
    policy: RetryPolicy,
    samples: Mutex<VecDeque<u32>>,
    /// Cached threshold in microseconds; recomputed every few samples.
    threshold_us: AtomicU64,
    budget: Mutex<Budget>,
    metrics: Arc<Metrics>,
}

impl Hedger {
    pub fn new(settings: HedgeSettings, policy: RetryPolicy, metrics: Arc<Metrics>) -> Self {
        // Until enough samples exist: a quarter second, above any healthy B2 answer for a small range.
        let initial = Duration::from_millis(250).clamp(settings.floor, settings.ceiling);
        metrics.hedge_threshold.set(initial.as_secs_f64());
        Self {
            threshold_us: AtomicU64::new(initial.as_micros() as u64),
            settings,
            policy,
            samples: Mutex::new(VecDeque::with_capacity(WINDOW)),
            // Half the burst allowance at start, so the first slow answers can be hedged before any budget is earned.
            budget: Mutex::new(Budget {
                tokens: BUDGET_CAP / 2.0,
            }),
            metrics,
        }
    }

    pub fn threshold(&self) -> Duration {
        Duration::from_micros(self.threshold_us.load(Ordering::Relaxed))
    }

    fn record(&self, latency: Duration) {
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() == WINDOW {
            s.pop_front();
        }
        s.push_back(latency.as_micros().min(u32::MAX as u128) as u32);
        if s.len() >= MIN_SAMPLES && s.len().is_multiple_of(8) || s.len() == MIN_SAMPLES {
            let mut v: Vec<u32> = s.iter().copied().collect();
            drop(s);
            let idx = (((v.len() as f64 - 1.0) * self.settings.quantile).round() as usize)
                .min(v.len() - 1);
            let (_, q, _) = v.select_nth_unstable(idx);
            let t = Duration::from_micros(u64::from(*q))
                .clamp(self.settings.floor, self.settings.ceiling);
            self.threshold_us
                .store(t.as_micros() as u64, Ordering::Relaxed);
            self.metrics.hedge_threshold.set(t.as_secs_f64());
        }
    }

    /// Earns the budget share of one request.
    fn earn(&self) {
        let mut b = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        b.tokens = (b.tokens + self.settings.budget).min(BUDGET_CAP);
    }

    /// Spends one hedge if the budget allows.
    fn spend(&self) -> bool {
        let mut b = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Reads with hedging and retries.
    pub async fn read(
        &self,
        source: &dyn ObjectSource,
        obj: &ObjectInfo,
        range: Range<u64>,
    ) -> Result<Bytes, UpstreamError> {
        retry(
            &self.policy,
            |e| {
                self.metrics
                    .upstream_retries
                    .with_label_values(&[e.reason()])
                    .inc();
            },
            |_| self.attempt(source, obj, range.clone()),
        )
        .await
    }

    async fn attempt(
        &self,
        source: &dyn ObjectSource,
        obj: &ObjectInfo,
        range: Range<u64>,
    ) -> Result<Bytes, UpstreamError> {
        let small = range.end - range.start <= MAX_HEDGED_BYTES;
        let start = Instant::now();
        let mut primary = source.read_once(obj, range.clone());
        if !small {
            return primary.await;
        }
        self.earn();
        let threshold = self.threshold();
        tokio::select! {
            r = &mut primary => {
                if r.is_ok() {
                    self.record(start.elapsed());
                }
                return r;
            }
            _ = tokio::time::sleep(threshold) => {}
        }
        if !self.spend() {
            let r = primary.await;
            if r.is_ok() {
                self.record(start.elapsed());
            }
            return r;
        }
        self.metrics.hedges_issued.inc();
        tracing::debug!(file = %obj.name, start = range.start, ?threshold, "hedging slow upstream request");
        let hedge_start = Instant::now();
        let mut hedge = source.read_once(obj, range);
        // First success wins; if one side fails, the other still gets its chance.
        // What enters the latency window: complete answers only. A primary cut short by its hedge says only
        // "slower than the threshold"; recording that censored value would drag the threshold up into the tail
        // it exists to cut, so the hedge's own latency (a fresh draw from the body) is recorded instead.
        tokio::select! {
            r = &mut primary => match r {
                Ok(b) => { self.record(start.elapsed()); Ok(b) }
                Err(_) => { let r = hedge.await; if r.is_ok() { self.metrics.hedges_won.inc(); } r }
            },
            r = &mut hedge => match r {
                Ok(b) => {
                    self.metrics.hedges_won.inc();
                    self.record(hedge_start.elapsed());
                    Ok(b)
                }
                Err(_) => primary.await,
            },
        }
    }
}
