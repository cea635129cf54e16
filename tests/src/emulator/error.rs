//! Errors: [`EmulatorError`] for the Rust API, and `B2Error`, the B2-shaped JSON error
//! (`{"status":N,"code":"...","message":"..."}`) every failing B2 route answers with.

use std::io;
use std::path::PathBuf;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Errors of the emulator's Rust API.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// Reading the served directory or one of its files failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// No file of that name is in the bucket.
    #[error("no file named {0:?} in the bucket")]
    NotFound(String),
    /// A knob value is out of range.
    #[error("invalid emulator configuration: {0}")]
    Config(String),
    /// The server task failed.
    #[error("emulator server failed: {0}")]
    Server(String),
}

/// A B2 error answer.
#[derive(Debug, Clone)]
pub(crate) struct B2Error {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
    pub content_range: Option<String>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    status: u16,
    code: &'a str,
    message: &'a str,
}

impl B2Error {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            content_range: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn bad_auth_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "bad_auth_token",
            "Invalid authorization token",
        )
    }

    pub fn expired_auth_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "expired_auth_token",
            "Authorization token has expired",
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            message,
        )
    }

    pub fn range_not_satisfiable(size: u64) -> Self {
        let mut e = Self::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable",
            format!("The range requested is not satisfiable for a file of {size} bytes"),
        );
        e.content_range = Some(format!("bytes */{size}"));
        e
    }

    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            message,
        )
    }

    pub fn too_many_requests(retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "Too many requests (injected by the emulator)",
        );
        e.retry_after = Some(retry_after);
        e
    }

    /// Over the account's request rate: what B2 answers, with `Retry-After`.
    pub fn rate_limited(retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "Too many requests: the account's download rate limit was exceeded",
        );
        e.retry_after = Some(retry_after);
        e
    }

    pub fn internal_error(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }
}

impl IntoResponse for B2Error {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            status: self.status.as_u16(),
            code: self.code,
            message: &self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=0, no-cache, no-store"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(range) = self.content_range
            && let Ok(v) = HeaderValue::from_str(&range)
        {
            headers.insert(header::CONTENT_RANGE, v);
        }
        response
    }
}
