//! Retry policy for upstream calls: exponential backoff with jitter (from `backon`), `Retry-After` honoured,
//! and a total deadline so a read fails with a clear error instead of hanging.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use backon::{BackoffBuilder, ExponentialBuilder};

use super::UpstreamError;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total time from the first attempt after which no new attempt starts.
    pub deadline: Duration,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    pub fn new(deadline: Duration) -> Self {
        Self {
            deadline,
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
        }
    }
}

/// Runs `op` until it succeeds, fails with a non-retryable error, or the deadline would pass.
/// `op` receives the attempt number (1-based); `on_retry` sees each error that is retried.
pub async fn retry<T, F, Fut>(
    policy: &RetryPolicy,
    mut on_retry: impl FnMut(&UpstreamError),
    mut op: F,
) -> Result<T, UpstreamError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, UpstreamError>>,
{
    let start = Instant::now();
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay)
        .with_jitter()
        .without_max_times()
        .build();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let err = match op(attempt).await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if !err.is_retryable() {
            return Err(err);
        }
        // A renewed token can be used at once; everything else backs off, at least `Retry-After`.
        let mut delay = match err {
            UpstreamError::TokenExpired => Duration::ZERO,
            _ => backoff.next().unwrap_or(policy.max_delay),
        };
        if let UpstreamError::Status {
            retry_after: Some(ra),
            ..
        } = &err
        {
            delay = delay.max(*ra);
        }
        let elapsed = start.elapsed();
        if elapsed + delay >= policy.deadline {
            return Err(UpstreamError::Exhausted {
                attempts: attempt,
                elapsed,
                last: Box::new(err),
            });
        }
        on_retry(&err);
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast() -> RetryPolicy {
        RetryPolicy {
            deadline: Duration::from_secs(2),
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        }
    }

    #[tokio::test]
    async fn retries_transient_then_succeeds() {
        let calls = AtomicU32::new(0);
        let mut retried = Vec::new();
        let r = retry(
            &fast(),
            |e| retried.push(e.reason()),
            |n| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 3 {
                        Err(UpstreamError::Status {
                            status: 503,
                            code: "service_unavailable".into(),
                            message: String::new(),
                            retry_after: None,
                        })
                    } else {
                        Ok(n)
                    }
                }
            },
        )
        .await;
        assert_eq!(r.ok(), Some(3));
        assert_eq!(retried, vec!["5xx", "5xx"]);
    }

    #[tokio::test]
    async fn does_not_retry_not_found() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = retry(
            &fast(),
            |_| {},
            |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(UpstreamError::NotFound("x".into())) }
            },
        )
        .await;
        assert!(matches!(r, Err(UpstreamError::NotFound(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn gives_up_at_deadline() {
        let policy = RetryPolicy {
            deadline: Duration::from_millis(100),
            ..fast()
        };
        let start = Instant::now();
        let r: Result<(), _> = retry(
            &policy,
            |_| {},
            |_| async { Err(UpstreamError::connect(std::io::Error::other("refused"))) },
        )
        .await;
        assert!(matches!(r, Err(UpstreamError::Exhausted { .. })), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn honours_retry_after_within_deadline() {
        let policy = RetryPolicy {
            deadline: Duration::from_millis(500),
            ..fast()
        };
        // Retry-After beyond the deadline means giving up now rather than sleeping past it.
        let r: Result<(), _> = retry(
            &policy,
            |_| {},
            |_| async {
                Err(UpstreamError::Status {
                    status: 429,
                    code: "too_many_requests".into(),
                    message: String::new(),
                    retry_after: Some(Duration::from_secs(5)),
                })
            },
        )
        .await;
        assert!(
            matches!(r, Err(UpstreamError::Exhausted { attempts: 1, .. })),
            "{r:?}"
        );
    }
}
