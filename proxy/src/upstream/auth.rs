//! Credentials that expire: one renewal for every request that found the same credentials stale.
//!
//! A burst of reads that all get "token expired" must cost one authorize call, not one each: renewals are
//! serialised, and a caller whose stale credentials were already replaced while it waited takes the new ones.
//! Generic over what the credentials are, so the rule is tested on its own (no HTTP, paused clock).

use std::future::Future;
use std::sync::Arc;

use super::UpstreamError;
use crate::sync::Mutex;

pub struct TokenCache<T> {
    current: Mutex<Option<Arc<T>>>,
    renewing: tokio::sync::Mutex<()>,
}

impl<T> Default for TokenCache<T> {
    fn default() -> Self {
        Self {
            current: Mutex::new(None),
            renewing: tokio::sync::Mutex::new(()),
        }
    }
}

impl<T> TokenCache<T> {
    /// The credentials in force, if any.
    pub fn current(&self) -> Option<Arc<T>> {
        self.current.lock().clone()
    }

    /// The credentials in force, authorizing first if there are none.
    pub async fn get<F, Fut>(&self, authorize: F) -> Result<Arc<T>, UpstreamError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<T>, UpstreamError>>,
    {
        match self.current() {
            Some(c) => Ok(c),
            None => self.renew(None, authorize).await,
        }
    }

    /// Authorizes anew unless the credentials were already replaced since `stale` was handed out (with
    /// `None`: unless someone authorized meanwhile). A failed authorization leaves no credentials, so the next
    /// caller tries again.
    pub async fn renew<F, Fut>(
        &self,
        stale: Option<&Arc<T>>,
        authorize: F,
    ) -> Result<Arc<T>, UpstreamError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<T>, UpstreamError>>,
    {
        let _one_at_a_time = self.renewing.lock().await;
        if let Some(cur) = self.current()
            && stale.is_none_or(|s| !Arc::ptr_eq(s, &cur))
        {
            return Ok(cur);
        }
        let result = authorize().await;
        *self.current.lock() = result.as_ref().ok().cloned();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_expired_requests_renews_once() {
        let cache: Arc<TokenCache<u32>> = Arc::new(TokenCache::default());
        let calls = Arc::new(AtomicU32::new(0));
        let authorize = |calls: Arc<AtomicU32>| async move {
            // An authorize round trip: every waiter piles up behind it.
            tokio::time::sleep(Duration::from_millis(80)).await;
            Ok(Arc::new(calls.fetch_add(1, Ordering::SeqCst) + 1))
        };
        let first = cache
            .get(|| authorize(calls.clone()))
            .await
            .expect("first authorization");
        assert_eq!(*first, 1);
        // 32 requests that all used token 1 and were told it expired.
        let waiters: Vec<_> = (0..32)
            .map(|_| {
                let (cache, calls, stale) = (cache.clone(), calls.clone(), first.clone());
                tokio::spawn(async move { cache.renew(Some(&stale), || authorize(calls)).await })
            })
            .collect();
        for w in waiters {
            let t = w.await.expect("join").expect("renewed");
            assert_eq!(*t, 2, "every waiter gets the one renewed token");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one renewal for the burst");
        // A request that used the renewed token and is told it expired renews again.
        let again = cache
            .renew(Some(&Arc::new(2)), || authorize(calls.clone()))
            .await;
        assert_eq!(
            again.ok().as_deref(),
            Some(&2),
            "a foreign Arc is not the current token"
        );
        let cur = cache.current().expect("current");
        let third = cache.renew(Some(&cur), || authorize(calls.clone())).await;
        assert_eq!(third.ok().as_deref(), Some(&3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_renewal_leaves_nothing_and_the_next_caller_retries() {
        let cache: TokenCache<u32> = TokenCache::default();
        let r = cache
            .get(|| async { Err(UpstreamError::Unauthorized("bad key".into())) })
            .await;
        assert!(matches!(r, Err(UpstreamError::Unauthorized(_))));
        assert!(cache.current().is_none());
        let r = cache.get(|| async { Ok(Arc::new(7)) }).await;
        assert_eq!(r.ok().as_deref(), Some(&7));
    }
}
