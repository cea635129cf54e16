//! Bounds on what clients can make the proxy hold: a process-wide budget of response bytes in memory, and a
//! send timeout that drops connections whose reader stopped reading.
//!
//! A response body's bytes are held from the moment they are fetched until hyper has handed them to the kernel
//! (it drops each chunk once written). Every chunk carries a [`Reservation`] of its size taken from the
//! [`ResponseBudget`] before it is fetched, released when hyper drops it, so the total stays within
//! `server.max_response_buffer` whatever the clients do. hyper polls a streamed body for the next chunk only when
//! its write queue has room (`max_buf_size`, one stream chunk), so a stalled reader holds at most about one chunk,
//! and [`SendTimeout`] closes its connection after `server.send_timeout` without progress.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// Bytes of response bodies held in memory, over all connections.
///
/// Streamed bodies (whole files, large ranges, listings) may take at most three quarters of it, so clients that
/// start big downloads and stop reading cannot starve the small range reads harvesters make: those can always
/// use the last quarter.
#[derive(Debug)]
pub struct ResponseBudget {
    permits: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    total: usize,
    wait: Duration,
    gauge: IntGauge,
}

/// Room for `len` bytes of a response; returned to the budget when dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
    _stream: Option<OwnedSemaphorePermit>,
    len: usize,
    gauge: IntGauge,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.gauge.sub(self.len as i64);
    }
}

/// A chunk and the reservation that pays for it: dropping the `Bytes` (and every clone) frees both.
struct Held {
    bytes: Bytes,
    _reservation: Reservation,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Reservation {
    /// `bytes` (at most the reserved length) carrying this reservation until its last clone is dropped.
    pub fn attach(self, bytes: Bytes) -> Bytes {
        Bytes::from_owner(Held {
            bytes,
            _reservation: self,
        })
    }
}

impl ResponseBudget {
    /// `total` bytes; a reservation waits at most `wait` for room.
    pub fn new(total: usize, wait: Duration, gauge: IntGauge) -> Self {
        let total = total.min(Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(total)),
            streams: Arc::new(Semaphore::new(total / 4 * 3)),
            total,
            wait,
            gauge,
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Room for `len` bytes of a single-piece answer, or `None` after waiting the configured time.
    pub async fn reserve(&self, len: usize) -> Option<Reservation> {
        self.take(len, false).await
    }

    /// Room for `len` bytes of a streamed body (within the streams' three quarters).
    pub async fn reserve_stream(&self, len: usize) -> Option<Reservation> {
        self.take(len, true).await
    }

    async fn take(&self, len: usize, stream: bool) -> Option<Reservation> {
        let cap = if stream {
            self.total / 4 * 3
        } else {
            self.total
        };
        let len = len.clamp(1, cap.max(1));
        let n = u32::try_from(len).unwrap_or(u32::MAX);
        let acquire = async {
            let stream = if stream {
                Some(self.streams.clone().acquire_many_owned(n).await.ok()?)
            } else {
                None
            };
            let permit = self.permits.clone().acquire_many_owned(n).await.ok()?;
            Some((permit, stream))
        };
        let (permit, stream) = tokio::time::timeout(self.wait, acquire).await.ok()??;
        self.gauge.add(i64::from(n));
        Some(Reservation {
            _permit: permit,
            _stream: stream,
            len: n as usize,
            gauge: self.gauge.clone(),
        })
    }
}

/// A connection's socket whose writes fail with `TimedOut` after `timeout` without progress: a client that stops
/// reading is disconnected, and what its responses held is freed. Reads and idle connections are not affected.
pub struct SendTimeout<T> {
    inner: T,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
    timeouts: IntCounter,
}

impl<T> SendTimeout<T> {
    pub fn new(inner: T, timeout: Duration, timeouts: IntCounter) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
            timeouts,
        }
    }

    fn on_poll<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match r {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.timeouts.inc();
                        tracing::debug!(?timeout, "client stopped reading; closing its connection");
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "no write progress for {timeout:?}: the client stopped reading"
                            ),
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.on_poll(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.on_poll(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.on_poll(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn gauge() -> IntGauge {
        IntGauge::new("g", "g").expect("gauge")
    }

    #[tokio::test]
    async fn reservations_bound_the_total_and_free_on_drop() {
        let g = gauge();
        let budget = ResponseBudget::new(1000, Duration::from_millis(50), g.clone());
        let a = budget.reserve(600).await.expect("fits");
        assert!(budget.reserve(600).await.is_none(), "over budget");
        let held = a.attach(Bytes::from(vec![1u8; 600]));
        let clone = held.clone();
        assert_eq!(g.get(), 600);
        drop(held);
        assert_eq!(g.get(), 600, "a clone still holds it");
        drop(clone);
        assert_eq!(g.get(), 0);
        assert!(budget.reserve(600).await.is_some());
    }

    #[tokio::test]
    async fn streams_leave_a_quarter_to_single_answers() {
        let budget = ResponseBudget::new(1000, Duration::from_millis(50), gauge());
        let s = budget
            .reserve_stream(700)
            .await
            .expect("streams get three quarters");
        assert!(
            budget.reserve_stream(100).await.is_none(),
            "streams are capped"
        );
        let small = budget
            .reserve(250)
            .await
            .expect("the last quarter is left for small reads");
        drop((s, small));
    }

    #[tokio::test]
    async fn a_stalled_reader_times_out() {
        let (a, _b) = tokio::io::duplex(1024);
        let timeouts = IntCounter::new("t", "t").expect("counter");
        let mut w = SendTimeout::new(a, Duration::from_millis(200), timeouts.clone());
        let start = std::time::Instant::now();
        let err = loop {
            if let Err(e) = w.write_all(&[0u8; 512]).await {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert_eq!(timeouts.get(), 1);
    }
}
