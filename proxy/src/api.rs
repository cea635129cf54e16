//! The local HTTP API (axum): `GET /files`, `GET|HEAD /files/{name}` with `Range`, `/metrics`, `/healthz`.
//!
//! Small ranges (what harvesters ask for) are answered from one fetcher call; large ranges and whole files are
//! streamed chunk by chunk, so memory stays bounded whatever the client asks for. A failure in the middle of a
//! stream aborts the connection: the client sees a short body, never wrong bytes.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::catalog::Catalog;
use crate::fetch::{FetchError, Fetcher, Outcome};
use crate::metrics::Metrics;
use crate::range::{self, RangeError};
use crate::upstream::{ObjectInfo, ObjectSource, UpstreamError};

/// Ranges up to this size are answered in one piece; larger ones are streamed.
const SINGLE_SHOT: u64 = 4 << 20;
/// Chunk size of streamed bodies (a multiple of every block size we allow).
const STREAM_CHUNK: u64 = 1 << 20;

#[derive(Clone)]
pub struct AppState {
    pub catalog: Arc<Catalog>,
    pub fetcher: Arc<Fetcher>,
    pub metrics: Arc<Metrics>,
    pub source: Arc<dyn ObjectSource>,
    pub auth_token: Option<Arc<str>>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/files", get(list_files))
        .route("/files/{*name}", get(get_file).head(get_file))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(|| async {
            text(
                StatusCode::NOT_FOUND,
                "no such route; see /files, /metrics, /healthz",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut body = msg.into();
    body.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = &state.auth_token else {
        return next.run(req).await;
    };
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_credentials)
        .unwrap_or("");
    if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
        next.run(req).await
    } else {
        let mut r = text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme name is case-insensitive (RFC 7235
/// section 2.1: `bearer`, `BEARER` are the same scheme); one or more spaces separate it from the token.
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
}

#[derive(Serialize)]
struct FileJson<'a> {
    name: &'a str,
    size: u64,
    modified: String,
    id: &'a str,
}

fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

async fn list_files(State(state): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    let start = Instant::now();
    let files = state.catalog.list(&q.prefix);
    let body: Vec<FileJson> = files
        .iter()
        .map(|f| FileJson {
            name: &f.name,
            size: f.size,
            modified: rfc3339(f.modified_ms),
            id: &f.id,
        })
        .collect();
    let r = Json(serde_json::json!({ "files": body })).into_response();
    observe(&state.metrics, "list", "none", start);
    r
}

async fn metrics(State(state): State<AppState>) -> Response {
    state
        .metrics
        .cache_memory_bytes
        .set(state.fetcher.cache_memory_usage() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn healthz(State(state): State<AppState>) -> Response {
    let src = state.source.health();
    let cat = state.catalog.status();
    let ok = src.authorized && cat.loaded;
    let reason = if ok {
        None
    } else if !src.authorized {
        Some(format!(
            "not authorized with upstream: {}",
            src.last_error
                .clone()
                .unwrap_or_else(|| "authorizing".into())
        ))
    } else {
        Some(format!(
            "catalog not loaded: {}",
            cat.last_error.clone().unwrap_or_else(|| "loading".into())
        ))
    };
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "unavailable" },
        "reason": reason,
        "upstream": state.source.describe(),
        "authorized": src.authorized,
        "upstream_circuit": if state.fetcher.upstream_circuit_open() { "open" } else { "closed" },
        "upstream_error": src.last_error,
        "catalog": {
            "loaded": cat.loaded,
            "files": cat.files,
            "last_refresh": cat.last_refresh.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            "last_error": cat.last_error,
        },
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

fn observe(m: &Metrics, route: &str, outcome: &str, start: Instant) {
    m.requests.with_label_values(&[route, outcome]).inc();
    m.request_duration
        .with_label_values(&[route, outcome])
        .observe(start.elapsed().as_secs_f64());
}

fn file_headers(obj: &ObjectInfo, len: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let modified = UNIX_EPOCH + Duration::from_millis(obj.modified_ms.max(0) as u64);
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(modified)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", obj.id)) {
        h.insert(header::ETAG, v);
    }
    h
}

/// Maps a failed fetch to the status the contract names (the shim turns any of them into EIO).
fn fetch_error_response(e: &FetchError) -> Response {
    let status = match e {
        FetchError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        FetchError::Upstream(u) => match u.root() {
            UpstreamError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::Connect(_)
            | UpstreamError::Changed(_)
            | UpstreamError::NotFound(_)
            | UpstreamError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamError::Status { status: 503, .. }
            | UpstreamError::Status { status: 429, .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        },
    };
    text(status, format!("upstream read failed: {e}"))
}

async fn get_file(
    State(state): State<AppState>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let start = Instant::now();
    let Some(obj) = state.catalog.get(&name) else {
        observe(&state.metrics, "file", "not_found", start);
        return text(StatusCode::NOT_FOUND, format!("no such file: {name}"));
    };
    let range_header = match headers.get(header::RANGE).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => {
            observe(&state.metrics, "file", "bad_request", start);
            return text(StatusCode::BAD_REQUEST, "malformed Range header: not ASCII");
        }
    };
    let (status, range) = match range::resolve(range_header, obj.size) {
        Ok(Some(r)) => (StatusCode::PARTIAL_CONTENT, r),
        Ok(None) => (StatusCode::OK, 0..obj.size),
        Err(RangeError::Unsatisfiable) => {
            observe(&state.metrics, "file", "unsatisfiable", start);
            let mut r = text(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("range not satisfiable: {name} has {} bytes", obj.size),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", obj.size)) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
        Err(e @ RangeError::Multiple) => {
            observe(&state.metrics, "file", "unsatisfiable", start);
            return text(StatusCode::RANGE_NOT_SATISFIABLE, e.to_string());
        }
        Err(e) => {
            observe(&state.metrics, "file", "bad_request", start);
            return text(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    let len = range.end - range.start;
    let mut hdrs = file_headers(&obj, len);
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!(
            "bytes {}-{}/{}",
            range.start,
            range.end - 1,
            obj.size
        ))
    {
        hdrs.insert(header::CONTENT_RANGE, v);
    }
    if method == Method::HEAD || len == 0 {
        observe(&state.metrics, "file", "none", start);
        return (status, hdrs, Body::empty()).into_response();
    }
    if len <= SINGLE_SHOT {
        return match state.fetcher.read(&obj, range).await {
            Ok((bytes, outcome)) => {
                state.metrics.bytes_served.inc_by(bytes.len() as u64);
                observe(&state.metrics, "file", outcome.label(), start);
                (status, hdrs, Body::from(bytes)).into_response()
            }
            Err(e) => {
                observe(&state.metrics, "file", "error", start);
                fetch_error_response(&e)
            }
        };
    }
    // Large: fetch the first chunk before answering, so an upstream failure still gets a clean 5xx.
    let first_end = chunk_end(range.start, range.end);
    let first = match state.fetcher.read(&obj, range.start..first_end).await {
        Ok((bytes, _)) => bytes,
        Err(e) => {
            observe(&state.metrics, "file", "error", start);
            return fetch_error_response(&e);
        }
    };
    observe(&state.metrics, "file", Outcome::Miss.label(), start);
    state.metrics.bytes_served.inc_by(first.len() as u64);
    let body = stream_body(state.clone(), obj, first_end..range.end, first);
    (status, hdrs, body).into_response()
}

/// End of the chunk starting at `pos`: aligned to `STREAM_CHUNK` so later chunks cover whole blocks.
fn chunk_end(pos: u64, end: u64) -> u64 {
    ((pos / STREAM_CHUNK + 1) * STREAM_CHUNK).min(end)
}

fn stream_body(
    state: AppState,
    obj: Arc<ObjectInfo>,
    rest: Range<u64>,
    first: bytes::Bytes,
) -> Body {
    let head = futures::stream::once(async move { Ok::<_, std::io::Error>(first) });
    let tail = futures::stream::unfold(rest.start, move |pos| {
        let state = state.clone();
        let obj = obj.clone();
        let end = rest.end;
        async move {
            if pos >= end {
                return None;
            }
            let next = chunk_end(pos, end);
            match state.fetcher.read(&obj, pos..next).await {
                Ok((bytes, _)) => {
                    state.metrics.bytes_served.inc_by(bytes.len() as u64);
                    Some((Ok(bytes), next))
                }
                Err(e) => {
                    tracing::warn!(file = %obj.name, pos, error = %e, "aborting streamed response");
                    // Ending the stream with an error makes hyper abort the connection mid-body.
                    Some((Err(std::io::Error::other(e.to_string())), end))
                }
            }
        }
    });
    use futures::StreamExt;
    Body::from_stream(head.chain(tail))
}

#[cfg(test)]
mod bearer_tests {
    use super::bearer_credentials;

    #[test]
    fn scheme_is_case_insensitive() {
        for v in ["Bearer tok", "bearer tok", "BEARER tok", "bEaReR  tok"] {
            assert_eq!(bearer_credentials(v), Some("tok"), "{v:?}");
        }
        assert_eq!(bearer_credentials("Basic tok"), None);
        assert_eq!(bearer_credentials("Bearertok"), None);
        assert_eq!(bearer_credentials("tok"), None);
    }
}
