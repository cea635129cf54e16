//! Circuit breaker for upstream outages. Attempts that fail for outage-like reasons (unreachable, timeouts,
//! 5xx) are counted; when `threshold` of them fail in a row with no success between, over at least
//! [`MIN_OUTAGE_SPAN`], the circuit opens: misses fail at once with a clear 503 instead of each spending the
//! read deadline, retry loops in progress stop, and cached blocks keep being served. While open, the policy
//! probes upstream in the background every `cooldown` ([`super::Upstream`]); the first probe that gets an answer
//! closes the circuit, so service resumes by itself and without waiting for a read.
//!
//! The span keeps a burst of unlucky concurrent failures (a few 503s among hundreds of answers) from opening it:
//! under load, a real outage fails every attempt for the whole span; under light load, `threshold` failures in
//! a row already span it.

use std::time::Duration;

use tokio::time::Instant;

use crate::sync::Mutex;
use crate::upstream::UpstreamError;

/// Failures in a row must cover at least this long to open the circuit.
pub const MIN_OUTAGE_SPAN: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct BreakerSettings {
    /// Outage-like failures in a row that open the circuit.
    pub threshold: u32,
    /// Time between background probes while open.
    pub cooldown: Duration,
}

#[derive(Debug, Default)]
struct State {
    consecutive: u32,
    first_failure: Option<Instant>,
    open: bool,
    last_error: Option<UpstreamError>,
}

/// What a recorded outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Opened,
    Closed,
}

pub struct Breaker {
    settings: BreakerSettings,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: Mutex::new(State::default()),
        }
    }

    pub fn cooldown(&self) -> Duration {
        self.settings.cooldown
    }

    /// `Err` when the circuit is open and a miss must fail fast.
    pub fn check(&self) -> Result<(), UpstreamError> {
        let st = self.state.lock();
        if st.open {
            return Err(UpstreamError::CircuitOpen {
                failures: st.consecutive,
                last: st.last_error.clone().map(Box::new),
            });
        }
        Ok(())
    }

    pub fn is_open(&self) -> bool {
        self.state.lock().open
    }

    /// An attempt got an answer that says upstream works (a success, or an error that is not an outage: a 404
    /// is B2 answering).
    pub fn answered(&self) -> Transition {
        let mut st = self.state.lock();
        let was_open = st.open;
        *st = State::default();
        if was_open {
            tracing::info!("upstream answers again; circuit closed");
            Transition::Closed
        } else {
            Transition::None
        }
    }

    /// Records an attempt's outcome.
    pub fn record(&self, result: Result<(), &UpstreamError>) -> Transition {
        match result {
            Ok(()) => self.answered(),
            Err(e) if !e.is_outage() => self.answered(),
            Err(e) => self.failed(e),
        }
    }

    fn failed(&self, e: &UpstreamError) -> Transition {
        let now = Instant::now();
        let mut st = self.state.lock();
        st.consecutive = st.consecutive.saturating_add(1);
        let first = *st.first_failure.get_or_insert(now);
        st.last_error = Some(e.root().clone());
        if !st.open
            && st.consecutive >= self.settings.threshold
            && now.duration_since(first) >= MIN_OUTAGE_SPAN
        {
            st.open = true;
            tracing::warn!(failures = st.consecutive, error = %e.report(),
                "upstream failing; circuit open: misses fail fast until a background probe succeeds");
            return Transition::Opened;
        }
        Transition::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outage() -> UpstreamError {
        UpstreamError::Timeout(Duration::from_secs(1))
    }

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings {
            threshold: 3,
            cooldown: Duration::from_secs(1),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_failures_spanning_the_window() {
        let b = breaker();
        for _ in 0..5 {
            assert_eq!(b.record(Err(&outage())), Transition::None);
        }
        assert!(b.check().is_ok(), "a burst in one instant is not an outage");
        tokio::time::advance(MIN_OUTAGE_SPAN).await;
        assert_eq!(b.record(Err(&outage())), Transition::Opened);
        assert!(matches!(
            b.check(),
            Err(UpstreamError::CircuitOpen { failures: 6, .. })
        ));
        assert_eq!(b.record(Ok(())), Transition::Closed);
        assert!(b.check().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_or_a_non_outage_answer_resets_the_count() {
        let b = breaker();
        b.record(Err(&outage()));
        b.record(Err(&outage()));
        tokio::time::advance(MIN_OUTAGE_SPAN).await;
        b.record(Err(&UpstreamError::NotFound("x".into())));
        assert_eq!(b.record(Err(&outage())), Transition::None);
        let throttled = UpstreamError::Status {
            status: 429,
            code: "too_many_requests".into(),
            message: String::new(),
            retry_after: None,
        };
        for _ in 0..5 {
            tokio::time::advance(MIN_OUTAGE_SPAN).await;
            b.record(Err(&throttled));
        }
        assert!(!b.is_open(), "throttling is not an outage");
    }
}
