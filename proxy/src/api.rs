//! The local HTTP API (axum): `GET /files`, `GET|HEAD /files/{name}` with `Range`, `/metrics`, `/healthz`.
//!
//! Small ranges (what harvesters ask for) are answered from one fetcher call; large ranges and whole files are
//! streamed chunk by chunk, so memory stays bounded whatever the client asks for. A failure in the middle of a
//! stream aborts the connection: the client sees a short body, never wrong bytes. Every body chunk is paid for
//! from the process-wide [`ResponseBudget`] before it is fetched or built (see [`crate::limits`]), listings
//! included: `GET /files` is paged (`limit`, `start_after`) and streamed from a shared snapshot of the catalog.
//!
//! Each `/files/{name}` request is counted once, when it ends ([`Observation`]): a streamed body carries its
//! count to the last chunk, so its outcome is the slowest tier any chunk needed and its duration covers the
//! whole body; a request dropped first (the client went away) is `cancelled`.

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

use crate::cache::{BlockCache, DiskTierState};
use crate::catalog::{Catalog, Files};
use crate::fetch::{FetchError, Fetcher, Outcome};
use crate::limits::ResponseBudget;
use crate::metrics::Metrics;
use crate::range::{self, RangeError};
use crate::upstream::{ObjectInfo, ObjectSource, UpstreamError};

/// Ranges up to this size are answered in one piece, planned and fetched as one (so a cold 3.65 MB v2 chunk
/// index is one upstream GET, not a chain of chunk-sized ones); larger ones are streamed. 4 MiB is the largest
/// FUSE read with `fs.fuse.max_pages_limit` = 1024 (deploy/60-b2fs-fuse.conf), and `MIN_RESPONSE_BUFFER`.
pub const SINGLE_SHOT: u64 = 4 << 20;
/// Chunk size of streamed bodies: what a stalled reader holds at most (hyper's write queue is sized to it).
pub const STREAM_CHUNK: u64 = 256 << 10;
/// A `GET /files` page holds at most this many files.
pub const MAX_LIST_LIMIT: usize = 10_000;
/// Listing bodies are built in chunks of about this size.
const LIST_CHUNK: usize = 64 << 10;

#[derive(Clone)]
pub struct AppState {
    pub catalog: Arc<Catalog>,
    pub fetcher: Arc<Fetcher>,
    pub metrics: Arc<Metrics>,
    pub source: Arc<dyn ObjectSource>,
    pub auth_token: Option<Arc<str>>,
    /// The block cache, for the disk tier's state in /healthz.
    pub cache: Arc<dyn BlockCache>,
    /// Response bytes in memory, over all connections.
    pub budget: Arc<ResponseBudget>,
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
        .layer(middleware::from_fn(check_request))
        .with_state(state)
}

/// Requests that HTTP/1.1 says must be refused: no `Host` (or several), which proxies and caches in front of
/// us would each resolve their own way.
async fn check_request(req: Request, next: Next) -> Response {
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if req.version() == axum::http::Version::HTTP_11 && hosts == 0 {
        return text(
            StatusCode::BAD_REQUEST,
            "HTTP/1.1 request without a Host header",
        );
    }
    if hosts > 1 {
        return text(StatusCode::BAD_REQUEST, "more than one Host header");
    }
    next.run(req).await
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
    /// Page size; without it the whole (prefix-matching) list is streamed.
    limit: Option<usize>,
    /// Only names after this one (the previous page's `next`).
    start_after: Option<String>,
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

/// Where a listing is: files are emitted in name order from `cursor` on.
struct ListCursor {
    snapshot: Arc<Files>,
    prefix: String,
    /// Emit names strictly after this one (`None`: from the prefix on).
    after: Option<String>,
    /// Files still to emit on this page (`None`: no limit).
    left: Option<usize>,
    started: bool,
    done: bool,
}

impl ListCursor {
    /// The next piece of the JSON body (at most about `LIST_CHUNK` bytes), or `None` when it is complete.
    fn next_chunk(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        let mut buf = Vec::with_capacity(LIST_CHUNK + 1024);
        if !self.started {
            buf.extend_from_slice(b"{\"files\":[");
        }
        // Each chunk resumes after the last name sent, found by binary search: chunks cost no skipping.
        let mut iter = self
            .snapshot
            .page(&self.prefix, self.after.as_deref())
            .peekable();
        while buf.len() < LIST_CHUNK {
            if self.left == Some(0) {
                break;
            }
            let Some(f) = iter.next() else { break };
            let name = &f.name;
            if self.started {
                buf.push(b',');
            }
            self.started = true;
            let entry = FileJson {
                name,
                size: f.size,
                modified: rfc3339(f.modified_ms),
                id: &f.id,
            };
            if serde_json::to_writer(&mut buf, &entry).is_err() {
                // Serializing strings and numbers into a Vec cannot fail; end the list rather than panic.
                break;
            }
            self.after = Some(name.clone());
            if let Some(n) = self.left.as_mut() {
                *n -= 1;
            }
        }
        self.started = true;
        let more = iter.peek().is_some();
        if !more || self.left == Some(0) {
            buf.extend_from_slice(b"],\"next\":");
            let next = if more && self.left == Some(0) {
                self.after.as_deref()
            } else {
                None
            };
            if serde_json::to_writer(&mut buf, &next).is_err() {
                buf.extend_from_slice(b"null");
            }
            buf.extend_from_slice(b"}");
            self.done = true;
        }
        Some(buf)
    }
}

async fn list_files(State(state): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    let start = Instant::now();
    if let Some(limit) = q.limit
        && !(1..=MAX_LIST_LIMIT).contains(&limit)
    {
        observe(&state.metrics, "list", "bad_request", start);
        return text(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {MAX_LIST_LIMIT}"),
        );
    }
    if !state.catalog.status().loaded {
        observe(&state.metrics, "list", "unavailable", start);
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the catalog is not loaded yet; see /healthz",
        );
    }
    let cursor = ListCursor {
        snapshot: state.catalog.snapshot(),
        prefix: q.prefix,
        after: q.start_after,
        left: q.limit,
        started: false,
        done: false,
    };
    let budget = state.budget.clone();
    // Chunks are built on demand as the client reads, each paid for from the response budget first.
    let body = futures::stream::unfold(cursor, move |mut cursor| {
        let budget = budget.clone();
        async move {
            if cursor.done {
                return None;
            }
            let Some(reservation) = budget.reserve_stream(LIST_CHUNK + 8192).await else {
                tracing::warn!("response buffer budget exhausted; aborting a listing");
                cursor.done = true;
                return Some((
                    Err(std::io::Error::other("response buffer budget exhausted")),
                    cursor,
                ));
            };
            let chunk = cursor.next_chunk()?;
            Some((Ok(reservation.attach(bytes::Bytes::from(chunk))), cursor))
        }
    });
    observe(&state.metrics, "list", "none", start);
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response()
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

/// `/healthz`: `ok` and `degraded` answer 200 (a load balancer keeps a degraded proxy: it still serves every
/// cached block and, with the upstream up, every miss), `unavailable` answers 503.
async fn healthz(State(state): State<AppState>) -> Response {
    let src = state.source.health();
    let cat = state.catalog.status();
    let circuit_open = state.fetcher.upstream().circuit_open();
    let disk = state.cache.disk_state();
    let available = src.authorized && cat.loaded;
    let mut reasons = Vec::new();
    if !src.authorized {
        reasons.push(format!(
            "not authorized with upstream: {}",
            src.last_error
                .clone()
                .unwrap_or_else(|| "authorizing".into())
        ));
    } else if !cat.loaded {
        reasons.push(format!(
            "catalog not loaded: {}",
            cat.last_error.clone().unwrap_or_else(|| "loading".into())
        ));
    }
    if circuit_open {
        reasons.push("upstream circuit open: misses fail fast, cached blocks are served".into());
    }
    let disk_json = match &disk {
        DiskTierState::Off => serde_json::json!({ "state": "off" }),
        DiskTierState::Ok => serde_json::json!({ "state": "ok" }),
        DiskTierState::Degraded { since, reason } => {
            reasons.push(format!(
                "disk cache tier unusable, serving from memory only: {reason}"
            ));
            serde_json::json!({
                "state": "degraded",
                "since": humantime::format_rfc3339_seconds(*since).to_string(),
                "reason": reason,
            })
        }
    };
    let hot = state.fetcher.hot_set().report_now();
    if hot.too_small {
        reasons.push(format!(
            "the {} tier ({}) is too small for the hot set (~{} read again within {}): re-read blocks go \
             upstream again; set cache.disk to at least {}",
            hot.tier,
            bytesize::ByteSize(hot.tier_bytes),
            bytesize::ByteSize(hot.estimated_bytes),
            humantime::format_duration(hot.window),
            bytesize::ByteSize(hot.advice_disk_bytes.unwrap_or(0)),
        ));
    }
    let hot_json = serde_json::json!({
        "estimated_bytes": hot.estimated_bytes,
        "window": humantime::format_duration(hot.window).to_string(),
        "tier": hot.tier,
        "tier_bytes": hot.tier_bytes,
        "refetched_bytes": hot.refetched_bytes,
        "fits": !hot.too_small,
        "advice_disk_bytes": hot.advice_disk_bytes,
    });
    let status = if !available {
        "unavailable"
    } else if reasons.is_empty() {
        "ok"
    } else {
        "degraded"
    };
    let body = serde_json::json!({
        "status": status,
        "reason": (!reasons.is_empty()).then(|| reasons.join("; ")),
        "upstream": state.source.describe(),
        "authorized": src.authorized,
        "upstream_circuit": if circuit_open { "open" } else { "closed" },
        "upstream_error": src.last_error,
        "cache_disk": disk_json,
        "cache_hot_set": hot_json,
        "catalog": {
            "loaded": cat.loaded,
            "files": cat.files,
            "last_refresh": cat.last_refresh.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            "last_error": cat.last_error,
        },
    });
    let code = if available {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Counts one request once however it ends: with the outcome it is given, or `cancelled` when it is dropped
/// first (the client closed the connection while the answer was being fetched or streamed).
struct Observation {
    metrics: Arc<Metrics>,
    route: &'static str,
    start: Instant,
    outcome: Option<&'static str>,
}

impl Observation {
    fn new(metrics: Arc<Metrics>, route: &'static str) -> Self {
        Self {
            metrics,
            route,
            start: Instant::now(),
            outcome: None,
        }
    }

    fn finish(mut self, outcome: &'static str) {
        self.outcome = Some(outcome);
    }
}

impl Drop for Observation {
    fn drop(&mut self) {
        let outcome = self.outcome.unwrap_or("cancelled");
        observe(&self.metrics, self.route, outcome, self.start);
    }
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
        FetchError::OutOfRange { .. } | FetchError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        // Failing fast, shutting down: the upstream is unavailable, whatever the last attempt saw.
        FetchError::Upstream(UpstreamError::CircuitOpen { .. } | UpstreamError::ShuttingDown) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        FetchError::Upstream(u) => match u.root() {
            UpstreamError::Timeout(_) | UpstreamError::Deadline { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            UpstreamError::Connect(_)
            | UpstreamError::Changed(_)
            | UpstreamError::NotFound(_)
            | UpstreamError::CircuitOpen { .. }
            | UpstreamError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamError::Status { status: 503, .. }
            | UpstreamError::Status { status: 429, .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        },
    };
    text(status, format!("upstream read failed: {}", e.report()))
}

async fn get_file(
    State(state): State<AppState>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let obs = Observation::new(state.metrics.clone(), "file");
    let Some(obj) = state.catalog.get(&name) else {
        obs.finish("not_found");
        return text(StatusCode::NOT_FOUND, not_found_message(&name));
    };
    if headers.get_all(header::RANGE).iter().nth(1).is_some() {
        obs.finish("bad_request");
        return text(
            StatusCode::BAD_REQUEST,
            "more than one Range header (send one, with one range)",
        );
    }
    let range_header = match headers.get(header::RANGE).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => {
            obs.finish("bad_request");
            return text(StatusCode::BAD_REQUEST, "malformed Range header: not ASCII");
        }
    };
    let (status, range) = match range::resolve(range_header, obj.size) {
        Ok(Some(r)) => (StatusCode::PARTIAL_CONTENT, r),
        Ok(None) => (StatusCode::OK, 0..obj.size),
        Err(RangeError::Unsatisfiable) => {
            obs.finish("unsatisfiable");
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
            obs.finish("unsatisfiable");
            return text(StatusCode::RANGE_NOT_SATISFIABLE, e.to_string());
        }
        Err(e) => {
            obs.finish("bad_request");
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
        obs.finish("none");
        return (status, hdrs, Body::empty()).into_response();
    }
    let first_end = if len <= SINGLE_SHOT {
        range.end
    } else {
        chunk_end(range.start, range.end)
    };
    // Paid for before it is fetched: what a response holds in memory stays within the budget.
    let want = (first_end - range.start) as usize;
    let reserved = if len <= SINGLE_SHOT {
        state.budget.reserve(want).await
    } else {
        state.budget.reserve_stream(want).await
    };
    let Some(reservation) = reserved else {
        obs.finish("busy");
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy: server.max_response_buffer is taken by other responses; retry",
        );
    };
    if len <= SINGLE_SHOT {
        return match state.fetcher.read_pieces(&obj, range).await {
            Ok((mut pieces, outcome)) => {
                state.metrics.bytes_served.inc_by(len);
                obs.finish(outcome.label());
                // The cached blocks' own bytes, not a copy (a 3.65 MB index is 56 of them); the reservation
                // rides on the last piece, so it lasts until hyper has written everything.
                if let Some(last) = pieces.pop() {
                    pieces.push(reservation.attach(last));
                }
                let body = if pieces.len() == 1 {
                    Body::from(pieces.swap_remove(0))
                } else {
                    Body::from_stream(futures::stream::iter(
                        pieces.into_iter().map(Ok::<_, std::io::Error>),
                    ))
                };
                (status, hdrs, body).into_response()
            }
            Err(e) => {
                obs.finish("error");
                fetch_error_response(&e)
            }
        };
    }
    // Large: fetch the first chunk before answering, so an upstream failure still gets a clean 5xx.
    let (first, outcome) = match state.fetcher.read(&obj, range.start..first_end).await {
        Ok((bytes, outcome)) => (reservation.attach(bytes), outcome),
        Err(e) => {
            obs.finish("error");
            return fetch_error_response(&e);
        }
    };
    state.metrics.bytes_served.inc_by(first.len() as u64);
    let body = stream_body(
        state.clone(),
        obj,
        first_end..range.end,
        first,
        Streamed { obs, outcome },
    );
    (status, hdrs, body).into_response()
}

/// The 404 text: the name is echoed only when it is printable (no NUL or other control characters, which
/// would end up in logs and terminals), and cut to a sane length.
fn not_found_message(name: &str) -> String {
    if name.chars().any(char::is_control) {
        return "no such file (the name contains control characters)".into();
    }
    let shown: String = name.chars().take(256).collect();
    let cut = if shown.len() < name.len() { "..." } else { "" };
    format!("no such file: {shown}{cut}")
}

/// End of the chunk starting at `pos`: aligned to `STREAM_CHUNK` so later chunks cover whole blocks.
fn chunk_end(pos: u64, end: u64) -> u64 {
    ((pos / STREAM_CHUNK + 1) * STREAM_CHUNK).min(end)
}

/// A streamed response's count: carried by the body to its end, so the outcome is the slowest tier any chunk
/// needed and the duration runs to the last chunk.
struct Streamed {
    obs: Observation,
    outcome: Outcome,
}

fn stream_body(
    state: AppState,
    obj: Arc<ObjectInfo>,
    rest: Range<u64>,
    first: bytes::Bytes,
    counted: Streamed,
) -> Body {
    let head = futures::stream::once(async move { Ok::<_, std::io::Error>(first) });
    // The state carries the count; dropped with it when the client goes away first (`cancelled`).
    let tail = futures::stream::unfold((rest.start, Some(counted)), move |(pos, counted)| {
        let state = state.clone();
        let obj = obj.clone();
        let end = rest.end;
        async move {
            let mut counted = counted?;
            if pos >= end {
                return None;
            }
            let next = chunk_end(pos, end);
            let Some(reservation) = state.budget.reserve_stream((next - pos) as usize).await else {
                tracing::warn!(file = %obj.name, pos, "response buffer budget exhausted; aborting a stream");
                counted.obs.finish("error");
                return Some((
                    Err(std::io::Error::other("response buffer budget exhausted")),
                    (end, None),
                ));
            };
            match state.fetcher.read(&obj, pos..next).await {
                Ok((bytes, outcome)) => {
                    state.metrics.bytes_served.inc_by(bytes.len() as u64);
                    counted.outcome = counted.outcome.max(outcome);
                    if next >= end {
                        // The last chunk: counted as it is handed to the connection.
                        let Streamed { obs, outcome } = counted;
                        obs.finish(outcome.label());
                        return Some((Ok(reservation.attach(bytes)), (next, None)));
                    }
                    Some((Ok(reservation.attach(bytes)), (next, Some(counted))))
                }
                Err(e) => {
                    tracing::warn!(file = %obj.name, pos, error = %e, "aborting streamed response");
                    counted.obs.finish("error");
                    // Ending the stream with an error makes hyper abort the connection mid-body.
                    Some((Err(std::io::Error::other(e.report())), (end, None)))
                }
            }
        }
    });
    use futures::StreamExt;
    Body::from_stream(head.chain(tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(names: &[String]) -> Arc<Files> {
        Arc::new(Files::from_listing(
            names
                .iter()
                .map(|n| {
                    Arc::new(ObjectInfo {
                        name: n.clone(),
                        id: format!("id_{n}").into(),
                        size: 42,
                        modified_ms: 0,
                    })
                })
                .collect(),
        ))
    }

    fn run(
        snap: &Arc<Files>,
        prefix: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> (serde_json::Value, usize) {
        let mut c = ListCursor {
            snapshot: snap.clone(),
            prefix: prefix.into(),
            after: after.map(String::from),
            left: limit,
            started: false,
            done: false,
        };
        let (mut body, mut chunks) = (Vec::new(), 0);
        while let Some(chunk) = c.next_chunk() {
            assert!(chunk.len() < LIST_CHUNK + 8192, "chunk of {}", chunk.len());
            body.extend(chunk);
            chunks += 1;
        }
        (serde_json::from_slice(&body).expect("valid JSON"), chunks)
    }

    fn names_of(v: &serde_json::Value) -> Vec<String> {
        v["files"]
            .as_array()
            .expect("files")
            .iter()
            .map(|f| f["name"].as_str().expect("name").to_string())
            .collect()
    }

    #[test]
    fn pages_concatenate_to_the_prefix_listing() {
        let mut names: Vec<String> = (0..10).map(|i| format!("p/{i:02}")).collect();
        names.push("a".into());
        names.push("q".into());
        let snap = snapshot(&names);
        let (mut got, mut after, mut pages) = (Vec::new(), None::<String>, 0);
        loop {
            let (v, _) = run(&snap, "p/", after.as_deref(), Some(3));
            pages += 1;
            got.extend(names_of(&v));
            match v["next"].as_str() {
                Some(n) => after = Some(n.to_string()),
                None => break,
            }
        }
        let want: Vec<String> = (0..10).map(|i| format!("p/{i:02}")).collect();
        assert_eq!(got, want);
        assert_eq!(pages, 4);
        // A page that ends exactly at the end has no `next`.
        let (v, _) = run(&snap, "p/", Some("p/06"), Some(3));
        assert_eq!(names_of(&v), ["p/07", "p/08", "p/09"]);
        assert!(v["next"].is_null());
        // start_after before the prefix starts at the prefix; after it, nothing.
        let (v, _) = run(&snap, "p/", Some("a"), Some(2));
        assert_eq!(names_of(&v), ["p/00", "p/01"]);
        let (v, _) = run(&snap, "p/", Some("p/99"), None);
        assert!(names_of(&v).is_empty() && v["next"].is_null());
    }

    #[test]
    fn a_big_listing_streams_in_bounded_chunks() {
        let names: Vec<String> = (0..20_000)
            .map(|i| format!("farm/plot-{i:06}.plot"))
            .collect();
        let (v, chunks) = run(&snapshot(&names), "", None, None);
        assert_eq!(names_of(&v), names);
        assert!(v["next"].is_null());
        assert!(chunks > 10, "{chunks} chunks");
        assert_eq!(v["files"][7]["id"], "id_farm/plot-000007.plot");
    }

    #[test]
    fn not_found_never_echoes_control_characters() {
        assert_eq!(not_found_message("a.plot"), "no such file: a.plot");
        assert!(!not_found_message("a\0b").contains('\0'));
        assert!(not_found_message(&"x".repeat(1000)).len() < 300);
    }
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
