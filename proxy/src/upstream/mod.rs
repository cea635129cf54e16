//! The upstream seam: where bytes come from.
//!
//! [`ObjectSource`] is what the catalog and the fetcher need of an object store: list the files, and read an
//! exact byte range of one file version. The B2 client implements it for production, the local-directory
//! source for trying the proxy without a bucket. Implementations verify every answer before returning it, so
//! the layers above may trust the bytes they get.

pub mod b2;
pub mod local;
pub mod retry;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
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

/// Why an upstream operation failed. `is_retryable` decides whether the retry loop tries again.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream request timed out after {0:?}")]
    Timeout(Duration),
    #[error("cannot reach upstream: {0}")]
    Connect(String),
    #[error("upstream answered {status} ({code}): {message}")]
    Status {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("upstream answer failed verification: {0}")]
    BadResponse(String),
    #[error("upstream body broke off: {0}")]
    Body(String),
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
    #[error("gave up after {attempts} attempts in {elapsed:?}; last error: {last}")]
    Exhausted {
        attempts: u32,
        elapsed: Duration,
        last: Box<UpstreamError>,
    },
    #[error("local I/O error: {0}")]
    Io(String),
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
}

impl UpstreamError {
    /// Transient failures worth another attempt. Client errors (400, 403, 404) and bad credentials are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout(_)
            | Self::Connect(_)
            | Self::BadResponse(_)
            | Self::Body(_)
            | Self::TokenExpired => true,
            Self::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            _ => false,
        }
    }

    /// A short label for the retry-reason metric.
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
            Self::BadResponse(_) => "bad_response",
            Self::Body(_) => "body",
            Self::Unauthorized(_) => "unauthorized",
            Self::TokenExpired => "token_expired",
            Self::NotFound(_) => "not_found",
            Self::Changed(_) => "changed",
            Self::Config(_) => "config",
            Self::Exhausted { .. } => "exhausted",
            Self::Io(_) => "io",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// The innermost error, looking through retry exhaustion.
    pub fn root(&self) -> &UpstreamError {
        match self {
            Self::Exhausted { last, .. } => last.root(),
            other => other,
        }
    }
}

/// The state of the upstream connection, for `/healthz`.
#[derive(Debug, Clone, Default)]
pub struct SourceHealth {
    pub authorized: bool,
    pub last_error: Option<String>,
}

/// An object store the proxy reads from.
pub trait ObjectSource: Send + Sync + 'static {
    /// Every file visible to the proxy (after prefix filtering), in name order.
    fn list(&self) -> BoxFuture<'_, Result<Vec<ObjectInfo>, UpstreamError>>;

    /// Exactly the bytes `range` of the file version `obj`. `range` is non-empty and within `obj.size`; the
    /// answer is verified to be that long and from that version, or an error.
    fn read(
        &self,
        obj: &ObjectInfo,
        range: Range<u64>,
    ) -> BoxFuture<'_, Result<Bytes, UpstreamError>>;

    /// One attempt, no retries: used by the hedging fetcher, which runs its own retry and hedge policy.
    /// The default is the retrying `read`.
    fn read_once(
        &self,
        obj: &ObjectInfo,
        range: Range<u64>,
    ) -> BoxFuture<'_, Result<Bytes, UpstreamError>> {
        self.read(obj, range)
    }

    fn health(&self) -> SourceHealth;

    /// A short description for logs and `/healthz` (never contains secrets).
    fn describe(&self) -> String;
}
