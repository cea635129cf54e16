//! The upstream policy: every read that leaves the proxy goes through [`Upstream::read`], which composes, over
//! any [`ObjectSource`], the layers that decide how an upstream is used:
//!
//! 1. **breaker** ([`breaker`]): while the circuit is open a miss fails at once; a background probe closes it.
//! 2. **deadline**: the whole read, queueing, attempts and backoff included, ends within `read_deadline`.
//! 3. **retry** ([`crate::upstream::retry`]): exponential backoff with jitter, `Retry-After` honoured, an
//!    expired token retried at once (the source renews it once for all waiters, [`crate::upstream::auth`]).
//! 4. **hedge** ([`hedge`]): a slow attempt is raced by a second one; the loser is cancelled (and counted).
//!    No hedges while the upstream is throttling: they would only add to what it refuses.
//! 5. **attempt**: admission by the [`schedule`]r (adaptive concurrency, pacing under B2's rate limit,
//!    lookups in progress first), the attempt timeout, one [`ObjectSource::read`], and the breaker and the
//!    scheduler told how it went.
//!
//! Each layer is tested on tokio's paused clock against [`crate::upstream::mock::MockSource`]; nothing here
//! knows B2.

pub mod breaker;
pub mod hedge;
pub mod schedule;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use self::breaker::{Breaker, BreakerSettings, Transition};
use self::hedge::{HedgeSettings, Hedger, MAX_HEDGED_BYTES};
use self::schedule::{Class, SAMPLE_MAX_BYTES, Scheduler, Signal};
use crate::metrics::Metrics;
use crate::sync::Mutex;
use crate::upstream::retry::{RetryPolicy, retry};
use crate::upstream::{ObjectInfo, ObjectSource, UpstreamError};

/// What a read is for: it decides which layers apply and how urgent it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A reader waits on it, and the file had a read answered moments ago (a lookup in progress): retried,
    /// hedged, admitted first.
    Continuing,
    /// A reader waits on it: retried, hedged.
    New,
    /// Fetched ahead of a sequential reader: retried, never hedged (bandwidth-bound; hedging would spend the
    /// budget and skew the latency window), admitted last.
    ReadAhead,
}

impl Purpose {
    fn class(self) -> Class {
        match self {
            Purpose::Continuing => Class::Continuing,
            Purpose::New => Class::New,
            Purpose::ReadAhead => Class::Background,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PolicySettings {
    /// Admission: concurrency, pace, priority.
    pub schedule: schedule::Settings,
    /// Timeout of one attempt.
    pub attempt_timeout: Duration,
    /// A read, everything included, fails after this.
    pub read_deadline: Duration,
    /// Backoff between attempts.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub breaker: BreakerSettings,
    /// `None`: no hedging.
    pub hedge: Option<HedgeSettings>,
}

pub struct Upstream {
    source: Arc<dyn ObjectSource>,
    settings: PolicySettings,
    scheduler: Arc<Scheduler>,
    breaker: Breaker,
    hedger: Option<Hedger>,
    /// The file of the latest attempt: what the background probe reads one byte of.
    probe_target: Mutex<Option<ObjectInfo>>,
    metrics: Arc<Metrics>,
}

impl Upstream {
    pub fn new(
        source: Arc<dyn ObjectSource>,
        settings: PolicySettings,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        metrics.upstream_circuit_state.set(0);
        Arc::new(Self {
            source,
            scheduler: Scheduler::new(settings.schedule.clone(), metrics.clone()),
            breaker: Breaker::new(settings.breaker.clone()),
            hedger: settings
                .hedge
                .clone()
                .map(|h| Hedger::new(h, metrics.clone())),
            settings,
            probe_target: Mutex::new(None),
            metrics,
        })
    }

    pub fn source(&self) -> &Arc<dyn ObjectSource> {
        &self.source
    }

    /// Whether misses currently fail fast because upstream is down.
    pub fn circuit_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// The current hedge threshold, when hedging is on.
    pub fn hedge_threshold(&self) -> Option<Duration> {
        self.hedger.as_ref().map(Hedger::threshold)
    }

    /// Fails queued and future reads at once (shutdown): nothing waits for a permit that will not come.
    pub fn close(&self) {
        self.scheduler.close();
    }

    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.scheduler
    }

    /// Exactly `range` of `obj`, or an error within `read_deadline`.
    pub async fn read(
        self: &Arc<Self>,
        obj: &ObjectInfo,
        range: Range<u64>,
        purpose: Purpose,
    ) -> Result<Bytes, UpstreamError> {
        let deadline = self.settings.read_deadline;
        let last: Mutex<Option<UpstreamError>> = Mutex::new(None);
        let result = tokio::time::timeout(deadline, self.retried(obj, &range, purpose, &last))
            .await
            .unwrap_or_else(|_| {
                Err(UpstreamError::Deadline {
                    deadline,
                    last: last.lock().take().map(Box::new),
                })
            });
        if let Err(e) = &result {
            let reason = match e {
                UpstreamError::CircuitOpen { .. } | UpstreamError::Deadline { .. } => e.reason(),
                other => other.root().reason(),
            };
            self.metrics.fetch_errors.with_label_values(&[reason]).inc();
        }
        result
    }

    async fn retried(
        self: &Arc<Self>,
        obj: &ObjectInfo,
        range: &Range<u64>,
        purpose: Purpose,
        last: &Mutex<Option<UpstreamError>>,
    ) -> Result<Bytes, UpstreamError> {
        let policy = RetryPolicy {
            deadline: self.settings.read_deadline,
            min_delay: self.settings.min_backoff,
            max_delay: self.settings.max_backoff,
        };
        let class = purpose.class();
        let hedged = purpose != Purpose::ReadAhead && range.end - range.start <= MAX_HEDGED_BYTES;
        retry(
            &policy,
            |e| {
                self.metrics
                    .upstream_retries
                    .with_label_values(&[e.reason()])
                    .inc();
                *last.lock() = Some(e.clone());
            },
            |_| async {
                // An open circuit ends retry loops in progress too: their reader should hear it now.
                self.breaker.check().map_err(|e| with_last(e, last))?;
                match (&self.hedger, hedged) {
                    (Some(h), true) if !self.scheduler.limiting() => {
                        // The race starts once the first attempt is admitted: time spent queued for a slot
                        // or for the pace is not upstream latency, and hedging it would only double the
                        // demand exactly when requests already wait. The hedge queues for its own slot.
                        let mut first = Some(self.scheduler.acquire(class).await?);
                        h.race(|| {
                            let admitted = first.take();
                            let range = range.clone();
                            async move {
                                let permit = match admitted {
                                    Some(p) => p,
                                    None => self.scheduler.acquire(class).await?,
                                };
                                self.admitted(permit, obj, range).await
                            }
                        })
                        .await
                    }
                    _ => self.attempt(obj, range.clone(), class).await,
                }
            },
        )
        .await
    }

    /// One attempt: admission, then [`Upstream::admitted`].
    async fn attempt(
        self: &Arc<Self>,
        obj: &ObjectInfo,
        range: Range<u64>,
        class: Class,
    ) -> Result<Bytes, UpstreamError> {
        let permit = self.scheduler.acquire(class).await?;
        self.admitted(permit, obj, range).await
    }

    /// An admitted attempt: the attempt timeout, the source, and the breaker and scheduler told the outcome.
    async fn admitted(
        self: &Arc<Self>,
        permit: schedule::Permit,
        obj: &ObjectInfo,
        range: Range<u64>,
    ) -> Result<Bytes, UpstreamError> {
        *self.probe_target.lock() = Some(obj.clone());
        let timeout = self.settings.attempt_timeout;
        let sample = range.end - range.start <= SAMPLE_MAX_BYTES;
        let result = tokio::time::timeout(timeout, self.source.read(obj, range))
            .await
            .unwrap_or(Err(UpstreamError::Timeout(timeout)));
        self.note(self.breaker.record(result.as_ref().map(|_| ())));
        let signal = match &result {
            Ok(_) => Signal::Answered { sample },
            Err(e) => {
                let throttled = matches!(e, UpstreamError::Status { status: 429, .. })
                    || (matches!(e, UpstreamError::Status { status: 503, .. })
                        && e.retry_after().is_some());
                if throttled {
                    self.scheduler.throttled(e.retry_after(), permit.granted());
                    Signal::Throttled
                } else if e.is_outage() {
                    Signal::Overload
                } else {
                    Signal::Neutral
                }
            }
        };
        permit.done(signal);
        result
    }

    fn note(self: &Arc<Self>, t: Transition) {
        match t {
            Transition::None => {}
            Transition::Closed => self.metrics.upstream_circuit_state.set(0),
            Transition::Opened => {
                self.metrics.upstream_circuit_state.set(1);
                let this = Arc::downgrade(self);
                tokio::spawn(async move { probe_until_closed(this).await });
            }
        }
    }
}

/// Replaces an open-circuit error's cause with the read's own last error, when it had one.
fn with_last(e: UpstreamError, last: &Mutex<Option<UpstreamError>>) -> UpstreamError {
    match e {
        UpstreamError::CircuitOpen { failures, last: l } => UpstreamError::CircuitOpen {
            failures,
            last: last.lock().clone().map(Box::new).or(l),
        },
        other => other,
    }
}

/// While the circuit is open: every cooldown, one attempt at the first byte of the last file tried. Any
/// answer that is not an outage closes the circuit. Ends when it closes or the proxy is gone.
async fn probe_until_closed(upstream: std::sync::Weak<Upstream>) {
    loop {
        let Some(cooldown) = upstream.upgrade().map(|u| u.breaker.cooldown()) else {
            return;
        };
        tokio::time::sleep(cooldown).await;
        let Some(u) = upstream.upgrade() else { return };
        if !u.breaker.is_open() {
            return;
        }
        let Some(target) = u.probe_target.lock().clone() else {
            return;
        };
        if target.size == 0 {
            return;
        }
        tracing::debug!(file = %target.name, "probing upstream");
        let r = u.attempt(&target, 0..1, Class::Continuing).await;
        if r.is_ok() || !u.breaker.is_open() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
