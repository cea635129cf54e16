//! Circuit breaker for upstream outages: after a few reads in a row failed for outage-like reasons (unreachable,
//! timeouts, 5xx after all retries), new misses fail at once with a clear 503 instead of each spending the whole
//! retry deadline, while cached blocks keep being served. Every `cooldown` one read is let through as a probe;
//! its success closes the breaker, so service resumes by itself.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::upstream::UpstreamError;

#[derive(Debug)]
struct State {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    last_error: String,
}

/// What [`Breaker::check`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Normal,
    Probe,
}

pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold,
            cooldown,
            state: Mutex::new(State {
                consecutive_failures: 0,
                open_until: None,
                last_error: String::new(),
            }),
        }
    }

    /// `Ok(Pass::Normal)` when a fetch may go upstream, `Ok(Pass::Probe)` when this caller is the one probe of an
    /// open breaker (it should make a single attempt, not a full retry loop), `Err` when it must fail fast.
    pub fn check(&self) -> Result<Pass, UpstreamError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.open_until {
            None => Ok(Pass::Normal),
            Some(until) if Instant::now() >= until => {
                // This caller probes; others keep failing fast until it reports.
                st.open_until = Some(Instant::now() + self.cooldown);
                Ok(Pass::Probe)
            }
            Some(_) => Err(UpstreamError::Unavailable(format!(
                "upstream is failing ({} reads in a row; last: {}); retrying in the background",
                st.consecutive_failures, st.last_error
            ))),
        }
    }

    pub fn is_open(&self) -> bool {
        self.state
            .lock()
            .map(|s| s.open_until.is_some())
            .unwrap_or(false)
    }

    pub fn success(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.open_until.is_some() {
            tracing::info!("upstream answers again; circuit closed");
        }
        st.consecutive_failures = 0;
        st.open_until = None;
    }

    /// Counts a failed fetch; only outage-like failures open the breaker (a 404 says nothing about B2's health).
    pub fn failure(&self, e: &UpstreamError) {
        let outage = match e.root() {
            UpstreamError::Connect(_) | UpstreamError::Timeout(_) => true,
            UpstreamError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        };
        if !outage {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.consecutive_failures += 1;
        st.last_error = e.root().to_string();
        if st.consecutive_failures >= self.threshold {
            if st.open_until.is_none() {
                tracing::warn!(failures = st.consecutive_failures, error = %st.last_error,
                    "upstream failing; circuit open: misses fail fast until a probe succeeds");
            }
            st.open_until = Some(Instant::now() + self.cooldown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outage() -> UpstreamError {
        UpstreamError::Connect("refused".into())
    }

    #[test]
    fn opens_after_threshold_and_probes_after_cooldown() {
        let b = Breaker::new(3, Duration::from_millis(50));
        for _ in 0..2 {
            b.failure(&outage());
            assert_eq!(b.check().ok(), Some(Pass::Normal));
        }
        b.failure(&UpstreamError::NotFound("x".into()));
        assert!(b.check().is_ok(), "a 404 is not an outage");
        b.failure(&outage());
        assert!(matches!(b.check(), Err(UpstreamError::Unavailable(_))));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            b.check().ok(),
            Some(Pass::Probe),
            "probe allowed after cooldown"
        );
        assert!(b.check().is_err(), "only one probe");
        b.success();
        assert!(b.check().is_ok());
        assert!(!b.is_open());
    }
}
