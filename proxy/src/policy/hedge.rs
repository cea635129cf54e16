//! Hedged upstream requests: when an attempt has not answered within a threshold learned from recent
//! latencies (a high quantile of a sliding window, clamped between a floor and a ceiling), the same request is
//! sent again; the first verified answer wins and the other is dropped (its connection is cancelled).
//! A token budget bounds hedges to a share of requests, so a uniformly slow upstream is not hit twice as hard.
//! This layer only races attempts; the policy ([`super`]) retries a failed pair like any failed attempt.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::sync::Mutex;

/// Samples kept for the quantile.
const WINDOW: usize = 512;
/// Samples needed before the learned threshold replaces the initial one.
const MIN_SAMPLES: usize = 20;
/// Only requests up to this size are hedged and sampled: big runs are bandwidth-bound, not latency-bound, and
/// would skew the quantile.
pub const MAX_HEDGED_BYTES: u64 = 1 << 20;
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

struct Budget {
    tokens: f64,
}

pub struct Hedger {
    settings: HedgeSettings,
    samples: Mutex<VecDeque<u32>>,
    /// Cached threshold in microseconds; recomputed every few samples.
    threshold_us: AtomicU64,
    budget: Mutex<Budget>,
    metrics: Arc<Metrics>,
}

impl Hedger {
    pub fn new(settings: HedgeSettings, metrics: Arc<Metrics>) -> Self {
        // Until enough samples exist: a quarter second, above any healthy B2 answer for a small range.
        let initial = Duration::from_millis(250).clamp(settings.floor, settings.ceiling);
        metrics.hedge_threshold.set(initial.as_secs_f64());
        Self {
            threshold_us: AtomicU64::new(initial.as_micros() as u64),
            settings,
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
        let mut s = self.samples.lock();
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
        let mut b = self.budget.lock();
        b.tokens = (b.tokens + self.settings.budget).min(BUDGET_CAP);
    }

    /// Spends one hedge if the budget allows.
    fn spend(&self) -> bool {
        let mut b = self.budget.lock();
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Races `attempt()` against a second `attempt()` started if the first has not answered within the
    /// threshold (and the budget allows). The first success wins; the other attempt is dropped, which cancels
    /// it. If one side fails, the other still gets its chance.
    pub async fn race<T, E, F, Fut>(&self, mut attempt: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let start = Instant::now();
        let mut primary = std::pin::pin!(attempt());
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
        tracing::debug!(?threshold, "hedging slow upstream request");
        let hedge_start = Instant::now();
        let mut hedge = std::pin::pin!(attempt());
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
