//! The account-wide request rate limit B2 enforces (about 500 downloads/s by default): a token bucket over
//! downloads. Over it, a download answers 429 `too_many_requests` with B2's JSON error body and a
//! `Retry-After` of the seconds until a token is back (at least 1, as B2 sends whole seconds).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Rate limit knobs: `rps` 0 turns it off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimit {
    /// Downloads per second the account may make.
    pub rps: f64,
    /// Downloads that may arrive back to back above the rate (the bucket's size); 0 means `rps` (one
    /// second's worth).
    pub burst: f64,
}

impl RateLimit {
    pub fn enabled(&self) -> bool {
        self.rps > 0.0
    }

    fn capacity(&self) -> f64 {
        if self.burst > 0.0 {
            self.burst
        } else {
            self.rps.max(1.0)
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    limit: RateLimit,
}

/// The bucket itself, shared by every download.
#[derive(Debug)]
pub(crate) struct Limiter {
    bucket: Mutex<Bucket>,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            bucket: Mutex::new(Bucket {
                tokens: limit.capacity(),
                last: Instant::now(),
                limit,
            }),
        }
    }

    /// Changes the limit; a new limit starts with a full bucket.
    pub fn set(&self, limit: RateLimit) {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        if b.limit != limit {
            *b = Bucket {
                tokens: limit.capacity(),
                last: Instant::now(),
                limit,
            };
        }
    }

    /// Takes a token: `Ok` when the download may proceed, `Err(retry_after)` when it is over the limit.
    pub fn admit(&self) -> Result<(), Duration> {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        if !b.limit.enabled() {
            return Ok(());
        }
        let now = Instant::now();
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.last = now;
        b.tokens = (b.tokens + elapsed * b.limit.rps).min(b.limit.capacity());
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / b.limit.rps))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_beyond_the_bucket_is_refused_and_refills_at_the_rate() {
        let l = Limiter::new(RateLimit {
            rps: 100.0,
            burst: 10.0,
        });
        let admitted = (0..50).filter(|_| l.admit().is_ok()).count();
        assert!((10..=12).contains(&admitted), "{admitted}");
        let wait = l.admit().expect_err("empty bucket");
        assert!(wait <= Duration::from_millis(10), "{wait:?}");
        std::thread::sleep(Duration::from_millis(60));
        let later = (0..50).filter(|_| l.admit().is_ok()).count();
        assert!((5..=8).contains(&later), "{later} after 60 ms at 100/s");
        l.set(RateLimit::default());
        assert!((0..1000).all(|_| l.admit().is_ok()), "off");
    }
}
