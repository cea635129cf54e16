//! The upstream seam: where bytes come from.
//!
//! [`ObjectSource`] is what the catalog and the fetcher need of an object store: list the files, and read an
//! exact byte range of one file version, **one attempt** at a time. Implementations verify every answer before
//! returning it ([`verify`]), so the layers above may trust the bytes they get. How often to try, how long to
//! wait, when to hedge and when to stop trying is not a source's business: that is [`crate::policy`], the one
//! layer every upstream read goes through.
//!
//! Sources: [`b2::B2Source`] for production, [`local::LocalSource`] for trying the proxy without a bucket, and,
//! with the `testing` feature, [`mock::MockSource`] for deterministic tests of everything above.

pub mod auth;
pub mod b2;
pub mod local;
#[cfg(any(test, feature = "testing"))]
pub mod mock;
pub mod retry;
pub mod verify;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;

/// One file version as the catalog knows it. `id` identifies the version: a re-upload of a name gets a new id,
/// and everything cached is keyed by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: String,
    pub id: Arc<str>,
    pub size: u64,
    /// Upload time, milliseconds since the Unix epoch.
    pub modified_ms: i64,
}

/// The underlying cause of an upstream error, shared: failed reads are handed to every reader that joined them.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Why an upstream operation failed. Variants keep their causes as `source()`; [`UpstreamError::report`] prints
/// the whole chain for logs and error bodies.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream request timed out after {0:?}")]
    Timeout(Duration),
    #[error("cannot reach upstream")]
    Connect(#[source] Cause),
    #[error("upstream answered {status} ({code}): {message}")]
    Status {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("upstream answer failed verification: {0}")]
    BadResponse(String),
    #[error("upstream answer is not valid JSON for {what}")]
    BadJson {
        what: &'static str,
        #[source]
        source: Arc<serde_json::Error>,
    },
    #[error("upstream body broke off")]
    Body(#[source] Cause),
    #[error("credentials rejected or missing capability: {0}")]
    Unauthorized(String),
    #[error("authorization token expired or invalid")]
    TokenExpired,
    #[error("file not found upstream: {0}")]
    NotFound(String),
    #[error("file changed upstream: {0}")]
    Changed(String),
    #[error("upstream configuration problem: {0}")]
    Config(String),
    #[error("gave up after {attempts} attempts in {elapsed:?}")]
    Exhausted {
        attempts: u32,
        elapsed: Duration,
        #[source]
        last: Box<UpstreamError>,
    },
    #[error("read deadline of {deadline:?} passed")]
    Deadline {
        deadline: Duration,
        /// The last attempt's error, when one had failed before the deadline.
        #[source]
        last: Option<Box<UpstreamError>>,
    },
    #[error("local I/O error on {path}")]
    Io {
        path: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("the proxy is shutting down")]
    ShuttingDown,
    #[error(
        "upstream circuit open after {failures} failed attempts in a row; misses fail fast until a probe succeeds"
    )]
    CircuitOpen {
        failures: u32,
        #[source]
        last: Option<Box<UpstreamError>>,
    },
}

impl UpstreamError {
    pub fn connect(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Connect(Arc::new(e))
    }

    pub fn body(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Body(Arc::new(e))
    }

    pub fn io(path: impl std::fmt::Display, e: std::io::Error) -> Self {
        Self::Io {
            path: path.to_string(),
            source: Arc::new(e),
        }
    }

    pub fn json(what: &'static str, e: serde_json::Error) -> Self {
        Self::BadJson {
            what,
            source: Arc::new(e),
        }
    }

    /// Transient failures worth another attempt. Client errors (400, 403, 404) and bad credentials are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout(_)
            | Self::Connect(_)
            | Self::BadResponse(_)
            | Self::BadJson { .. }
            | Self::Body(_)
            | Self::TokenExpired => true,
            Self::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            _ => false,
        }
    }

    /// Whether this failure says the upstream is unwell (the breaker counts these; a 404 says nothing about
    /// B2's health, and a 429 is throttling, which pacing handles, not an outage).
    pub fn is_outage(&self) -> bool {
        match self.root() {
            Self::Connect(_) | Self::Timeout(_) => true,
            Self::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// `Retry-After` of a throttling or unavailable answer.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.root() {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Connect(_) => "connect",
            Self::Status { status: 429, .. } => "429",
            Self::Status { status: 408, .. } => "408",
            Self::Status {
                status: 500..=599, ..
            } => "5xx",
            Self::Status { .. } => "4xx",
            Self::BadResponse(_) | Self::BadJson { .. } => "bad_response",
            Self::Body(_) => "body",
            Self::Unauthorized(_) => "unauthorized",
            Self::TokenExpired => "token_expired",
            Self::NotFound(_) => "not_found",
            Self::Changed(_) => "changed",
            Self::Config(_) => "config",
            Self::Exhausted { .. } => "exhausted",
            Self::Deadline { .. } => "deadline",
            Self::Io { .. } => "io",
            Self::CircuitOpen { .. } => "circuit_open",
            Self::ShuttingDown => "shutting_down",
        }
    }

    /// The innermost upstream error, looking through retry exhaustion, the deadline and the open circuit.
    pub fn root(&self) -> &UpstreamError {
        match self {
            Self::Exhausted { last, .. } => last.root(),
            Self::Deadline { last: Some(l), .. } | Self::CircuitOpen { last: Some(l), .. } => {
                l.root()
            }
            other => other,
        }
    }

    /// The error and its sources in one line, for logs and error bodies.
    pub fn report(&self) -> String {
        error_chain(self)
    }
}

/// An error and its sources joined with `: ` (a top-level message alone, reqwest's above all, says little).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The state of the upstream connection, for `/healthz`.
#[derive(Debug, Clone, Default)]
pub struct SourceHealth {
    pub authorized: bool,
    pub last_error: Option<String>,
}

/// An object store the proxy reads from.
pub trait ObjectSource: Send + Sync + 'static {
    /// Hands every file visible to the proxy (after prefix filtering) to `each`, page by page as the store
    /// answers, and returns how many it handed over. The order is the store's; callers must not rely on it. On
    /// an error some files may already have been handed over: the caller discards them (the catalog keeps its
    /// previous list whole). Retries of the pages are the source's own (a listing is not latency-critical and
    /// has no deadline a reader waits on). Streaming the pages keeps a refresh of a million-file bucket from
    /// holding the whole list in memory beside the catalog it replaces.
    fn list_into<'a>(
        &'a self,
        each: &'a mut (dyn FnMut(ObjectInfo) + Send),
    ) -> BoxFuture<'a, Result<usize, UpstreamError>>;

    /// Every file at once, in name order: for tests and tools. The catalog uses [`ObjectSource::list_into`].
    fn list(&self) -> BoxFuture<'_, Result<Vec<ObjectInfo>, UpstreamError>> {
        async move {
            let mut out = Vec::new();
            self.list_into(&mut |o| out.push(o)).await?;
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        }
        .boxed()
    }

    /// One attempt at exactly the bytes `range` of the file version `obj`. `range` is non-empty and within
    /// `obj.size`; the answer is verified to be that long and from that version, or an error. No retries, no
    /// timeout of its own: the policy layer wraps every call in both. Dropping the future cancels the attempt.
    fn read(
        &self,
        obj: &ObjectInfo,
        range: Range<u64>,
    ) -> BoxFuture<'_, Result<Bytes, UpstreamError>>;

    fn health(&self) -> SourceHealth;

    /// A short description for logs and `/healthz` (never contains secrets).
    fn describe(&self) -> String;
}
