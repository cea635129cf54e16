//! Downloads: `GET|HEAD /file/{bucket}/{name}` and `GET|HEAD /b2api/vN/b2_download_file_by_id`,
//! with Range handling, B2 headers, fault injection and streamed, paced bodies.
//!
//! Order of a download: count it (GETs are "in flight" from here until the body ends) →
//! 503 at once if offline → injected latency → token (`Authorization` header or `?Authorization=`
//! query) → file (404, or 401 outside the key's bucket/prefix) → Range → first-attempt stall
//! (GET only) → fault draw (HEAD: only 503/429/500) → head → body.
//!
//! Range (parsed with `http-range-header`): one `bytes=a-b`, `bytes=a-` or `bytes=-n` answers
//! 206 with the end clamped to EOF, except exactly `bytes=0-`, which answers 200 with the whole
//! file and no `Content-Range` (as B2 does). A start at or past EOF (or `bytes=-0`) answers 416
//! `range_not_satisfiable` with `Content-Range: bytes */size`. **A malformed Range header or
//! several ranges are ignored: 200 with the whole file**, as B2 does for syntax it does not
//! support; clients must check the status.
//!
//! Bodies are produced chunk by chunk (at most 64 KiB; smaller under a bandwidth cap) as hyper
//! asks for them, so memory stays bounded whatever the size; disk files are read with `pread`
//! on the blocking pool.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_range_header::{RangeUnsatisfiableError, SyntacticallyCorrectRange};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use super::Shared;
use super::config::{Fault, Knobs};
use super::error::B2Error;
use super::files::{CONTENT_TYPE, FileInfo, FileSource};
use super::stats::{Call, InFlightGuard, RangeRecord};

/// Characters left as they are in `X-Bz-File-Name`: unreserved ones and `/`.
const NAME_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// Percent-encodes a B2 file name for a URL path or the `X-Bz-File-Name` header (`/` kept).
pub fn encode_file_name(name: &str) -> String {
    utf8_percent_encode(name, NAME_ENCODE).to_string()
}

/// Pause before cutting a faulted body, so what was sent reaches the client.
const FLUSH_GRACE: std::time::Duration = std::time::Duration::from_millis(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    ByName,
    ById,
}

/// What a request asks for, resolved against the file size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    Whole,
    /// Inclusive range.
    Part(u64, u64),
}

fn resolve_range(value: Option<&HeaderValue>, size: u64) -> Result<Want, B2Error> {
    let Some(text) = value.and_then(|v| v.to_str().ok()) else {
        return Ok(Want::Whole);
    };
    let Ok(parsed) = http_range_header::parse_range_header(text) else {
        return Ok(Want::Whole);
    };
    if parsed.len() != 1 {
        return Ok(Want::Whole);
    }
    let validated = parsed.validate(size);
    let from_zero = matches!(
        parsed.into_ranges().first(),
        Some(SyntacticallyCorrectRange::FromStart(0))
    );
    match validated {
        Ok(ranges) => match ranges.first() {
            Some(_) if from_zero => Ok(Want::Whole),
            Some(r) => Ok(Want::Part(*r.start(), *r.end())),
            None => Ok(Want::Whole),
        },
        Err(RangeUnsatisfiableError::Unsatisfiable) => Err(B2Error::range_not_satisfiable(size)),
        Err(_) => Ok(Want::Whole),
    }
}

/// The B2 error a fault of kind 503/429/500 answers with.
pub(crate) fn fault_error(fault: Fault, knobs: &Knobs) -> B2Error {
    match fault {
        Fault::TooManyRequests => B2Error::too_many_requests(knobs.faults.retry_after_secs),
        Fault::InternalError => {
            B2Error::internal_error("Internal error (injected by the emulator)")
        }
        _ => B2Error::service_unavailable("Service unavailable (injected by the emulator)"),
    }
}

pub(crate) async fn by_name(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    serve(shared, req, Target::ByName).await
}

pub(crate) async fn serve(shared: Arc<Shared>, req: Request, target: Target) -> Response {
    let (parts, _body) = req.into_parts();
    let head = parts.method == Method::HEAD;
    if parts.method != Method::GET && !head {
        shared.stats.request(Call::Other);
        return B2Error::method_not_allowed(format!(
            "{} is not allowed for downloads; use GET or HEAD",
            parts.method
        ))
        .into_response();
    }
    shared.stats.request(match (head, target) {
        (true, _) => Call::Head,
        (false, Target::ByName) => Call::DownloadByName,
        (false, Target::ById) => Call::DownloadById,
    });
    let guard = (!head).then(|| InFlightGuard::new(&shared.stats));
    match respond(&shared, &parts, target, guard).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn query(parts: &Parts) -> HashMap<String, String> {
    Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .map(|Query(q)| q)
        .unwrap_or_default()
}

fn decode(segment: &str) -> Result<String, B2Error> {
    percent_decode_str(segment)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| B2Error::bad_request("the path is not valid percent-encoded UTF-8"))
}

fn lookup(
    shared: &Shared,
    parts: &Parts,
    query: &HashMap<String, String>,
    target: Target,
) -> Result<Arc<FileInfo>, B2Error> {
    let id = &shared.identity;
    let info = match target {
        Target::ByName => {
            let rest = parts.uri.path().strip_prefix("/file/").unwrap_or("");
            let Some((bucket, name)) = rest.split_once('/') else {
                return Err(B2Error::not_found("no file name in the path"));
            };
            let bucket = decode(bucket)?;
            let name = decode(name)?;
            if bucket != id.bucket_name {
                return Err(if id.restricted {
                    B2Error::unauthorized(format!(
                        "The key is restricted to bucket {}",
                        id.bucket_name
                    ))
                } else {
                    B2Error::not_found(format!("Bucket {bucket} does not exist"))
                });
            }
            if !id.name_allowed(&name) {
                return Err(B2Error::unauthorized(
                    "The key is not allowed to read this file name",
                ));
            }
            shared.files.get(&name).ok_or_else(|| {
                B2Error::not_found(format!("File with such name does not exist: {name}"))
            })?
        }
        Target::ById => {
            let file_id = query
                .get("fileId")
                .ok_or_else(|| B2Error::bad_request("required field fileId is missing"))?;
            shared
                .files
                .get_by_id(file_id)
                .ok_or_else(|| B2Error::not_found(format!("File not present: {file_id}")))?
        }
    };
    if !id.name_allowed(&info.name) {
        return Err(B2Error::unauthorized(
            "The key is not allowed to read this file name",
        ));
    }
    Ok(info)
}

/// The range a [`Fault::WrongRange`] answers with instead of `start..=end`, same length,
/// shifted by up to `shift` bytes forward (or backward when at the end); `None` when the range
/// is the whole file.
fn shifted(start: u64, end: u64, size: u64, shift: u64) -> Option<(u64, u64)> {
    let forward_room = size.saturating_sub(1).saturating_sub(end);
    if forward_room > 0 {
        let s = shift.min(forward_room);
        Some((start + s, end + s))
    } else if start > 0 {
        let s = shift.min(start);
        Some((start - s, end - s))
    } else {
        None
    }
}

/// How a body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    Complete,
    Reset,
    Truncate,
}

async fn respond(
    shared: &Arc<Shared>,
    parts: &Parts,
    target: Target,
    guard: Option<InFlightGuard>,
) -> Result<Response, B2Error> {
    let head = guard.is_none();
    let knobs = shared.knobs();
    if knobs.offline {
        shared.stats.offline();
        return Err(B2Error::service_unavailable(
            "The emulator is offline (simulated B2 outage)",
        ));
    }
    shared.sleep(shared.chaos.latency(&knobs.latency)).await?;
    // The account's rate limit applies to downloads (HEAD requests are not billed downloads).
    if !head && let Err(wait) = shared.limiter.admit() {
        shared.stats.rate_limited();
        return Err(B2Error::rate_limited(
            wait.as_secs_f64().ceil().max(1.0) as u64
        ));
    }

    let query = query(parts);
    let token = match parts.headers.get(header::AUTHORIZATION) {
        Some(v) => v.to_str().map_err(|_| B2Error::bad_auth_token())?.trim(),
        None => query
            .get("Authorization")
            .map(String::as_str)
            .ok_or_else(|| B2Error::unauthorized("missing Authorization header"))?,
    };
    shared.tokens.check(token)?;

    let info = lookup(shared, parts, &query, target)?;
    let size = info.size;
    let want = resolve_range(parts.headers.get(header::RANGE), size)?;
    let (req_start, req_end) = match want {
        Want::Whole => (0, size.saturating_sub(1)),
        Want::Part(a, b) => (a, b),
    };

    if !head
        && let Some(delay) = knobs.first_attempt_delay
        && shared.chaos.first_attempt(&info.id, req_start, req_end)
    {
        shared.stats.first_attempt_delay();
        shared.sleep(delay).await?;
    }

    let kinds: &[Fault] = if head { &Fault::API } else { &Fault::ALL };
    let mut fault = shared.chaos.fault(&knobs.faults, kinds);
    let (mut status, mut start, mut len) = match want {
        Want::Whole => (StatusCode::OK, 0, size),
        Want::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
    };
    let mut content_range = matches!(want, Want::Part(..));
    let mut ending = Ending::Complete;
    let mut sent = len;
    match fault {
        Some(f @ (Fault::ServiceUnavailable | Fault::TooManyRequests | Fault::InternalError)) => {
            shared.stats.fault(f);
            return Err(fault_error(f, &knobs));
        }
        Some(Fault::Reset) if len > 0 => {
            ending = Ending::Reset;
            sent = len / 2;
        }
        Some(Fault::Truncated) if len > 0 => {
            ending = Ending::Truncate;
            sent = len / 2;
        }
        Some(Fault::WrongRange) => {
            match (
                want,
                shifted(req_start, req_end, size, shared.chaos.shift()),
            ) {
                (Want::Part(..), Some((a, b))) => {
                    status = StatusCode::PARTIAL_CONTENT;
                    start = a;
                    len = b - a + 1;
                    sent = len;
                    content_range = true;
                }
                _ => fault = None,
            }
        }
        _ => fault = None,
    }
    if let Some(f) = fault {
        shared.stats.fault(f);
    }

    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, len)
        .header(header::CONTENT_TYPE, CONTENT_TYPE)
        .header(header::ACCEPT_RANGES, "bytes")
        .header("x-bz-file-id", info.id.as_str())
        .header("x-bz-file-name", encode_file_name(&info.name))
        .header("x-bz-content-sha1", info.content_sha1())
        .header("x-bz-upload-timestamp", info.upload_timestamp)
        .header(header::CACHE_CONTROL, "max-age=0, no-cache, no-store");
    if content_range {
        let end = (start + len).saturating_sub(1);
        builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
    }
    let body = match guard {
        None => Body::empty(),
        Some(guard) => {
            shared.stats.watch(req_start, req_end, size);
            shared.stats.range_served(RangeRecord {
                name: info.name.clone(),
                file_id: info.id.clone(),
                start: req_start,
                end: req_end,
                status: status.as_u16(),
                fault,
            });
            body_stream(shared.clone(), info, start, sent, ending, guard)
        }
    };
    builder
        .body(body)
        .map_err(|e| B2Error::internal_error(format!("cannot build the response: {e}")))
}

struct BodyState {
    shared: Arc<Shared>,
    info: Arc<FileInfo>,
    file: Option<Arc<File>>,
    pos: u64,
    remaining: u64,
    ending: Ending,
    done: bool,
    _guard: InFlightGuard,
}

async fn read_chunk(st: &mut BodyState, n: usize) -> io::Result<Bytes> {
    match &st.info.source {
        FileSource::Virtual { seed, .. } => {
            let mut buf = vec![0u8; n];
            super::files::virtual_fill(*seed, st.pos, &mut buf);
            Ok(Bytes::from(buf))
        }
        FileSource::Disk { path } => {
            let file = match &st.file {
                Some(f) => f.clone(),
                None => {
                    let path = path.clone();
                    let f = Arc::new(
                        tokio::task::spawn_blocking(move || File::open(path))
                            .await
                            .map_err(io::Error::other)??,
                    );
                    st.file = Some(f.clone());
                    f
                }
            };
            let pos = st.pos;
            tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n];
                file.read_exact_at(&mut buf, pos)?;
                Ok(Bytes::from(buf))
            })
            .await
            .map_err(io::Error::other)?
        }
    }
}

fn body_stream(
    shared: Arc<Shared>,
    info: Arc<FileInfo>,
    start: u64,
    sent: u64,
    ending: Ending,
    guard: InFlightGuard,
) -> Body {
    let state = BodyState {
        shared,
        info,
        file: None,
        pos: start,
        remaining: sent,
        ending,
        done: false,
        _guard: guard,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if st.shared.is_shutting_down() {
            st.done = true;
            return Some((Err(io::Error::other("emulator shutting down")), st));
        }
        if st.remaining == 0 {
            st.done = true;
            if st.ending != Ending::Complete {
                // hyper drops its write buffer when a body ends early or fails: give it a
                // moment (the body is pending) to flush the head and the bytes sent so far.
                let _ = st.shared.sleep(FLUSH_GRACE).await;
            }
            return match st.ending {
                Ending::Reset => Some((
                    Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "connection reset injected by the emulator",
                    )),
                    st,
                )),
                Ending::Complete | Ending::Truncate => None,
            };
        }
        let n = usize::try_from(st.remaining)
            .unwrap_or(usize::MAX)
            .min(st.shared.pacer.chunk_size());
        if let Some(at) = st.shared.pacer.reserve(n)
            && st.shared.sleep_until(at).await.is_err()
        {
            st.done = true;
            return Some((Err(io::Error::other("emulator shutting down")), st));
        }
        match read_chunk(&mut st, n).await {
            Ok(chunk) => {
                st.pos += n as u64;
                st.remaining -= n as u64;
                st.shared.stats.bytes_sent(n as u64);
                Some((Ok(chunk), st))
            }
            Err(e) => {
                st.done = true;
                Some((Err(e), st))
            }
        }
    });
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, size: u64) -> Result<Want, u16> {
        resolve_range(Some(&HeaderValue::from_str(v).unwrap()), size).map_err(|e| e.status.as_u16())
    }

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-9", 100), Ok(Want::Part(0, 9)));
        assert_eq!(range("bytes=90-200", 100), Ok(Want::Part(90, 99)));
        assert_eq!(range("bytes=10-", 100), Ok(Want::Part(10, 99)));
        assert_eq!(range("bytes=-10", 100), Ok(Want::Part(90, 99)));
        assert_eq!(range("bytes=-1000", 100), Ok(Want::Part(0, 99)));
        assert_eq!(range("bytes=0-", 100), Ok(Want::Whole));
        assert_eq!(range("bytes=100-", 100), Err(416));
        assert_eq!(range("bytes=100-200", 100), Err(416));
        assert_eq!(range("bytes=-0", 100), Err(416));
        assert_eq!(range("bytes=0-1,5-6", 100), Ok(Want::Whole));
        assert_eq!(range("bytes=x-y", 100), Ok(Want::Whole));
        assert_eq!(range("items=0-1", 100), Ok(Want::Whole));
        assert_eq!(range("bytes=5-3", 100), Ok(Want::Whole));
        assert_eq!(resolve_range(None, 100).ok(), Some(Want::Whole));
    }

    #[test]
    fn shifts() {
        assert_eq!(shifted(0, 9, 100, 5), Some((5, 14)));
        assert_eq!(shifted(80, 99, 100, 5), Some((75, 94)));
        assert_eq!(shifted(0, 99, 100, 5), None);
        assert_eq!(shifted(0, 9, 12, 4096), Some((2, 11)));
    }

    #[test]
    fn name_encoding() {
        assert_eq!(
            encode_file_name("a b/c+d%é.plot"),
            "a%20b/c%2Bd%25%C3%A9.plot"
        );
    }
}
