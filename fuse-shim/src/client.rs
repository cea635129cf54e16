//! HTTP client for the b2-proxy range API, and the mapping of its failures to errno values.
//!
//! The shim keeps no data of its own: every `read()` becomes one `GET /files/{name}` with a `Range` header.
//! What matters here is that a request can never hang (connect timeout plus a whole-request timeout), that
//! many requests run at once over kept-alive HTTP/1.1 connections (a Chia proof has up to 32 reads in
//! flight), and that every answer is checked before its bytes are handed to the kernel: with the page cache,
//! a short or misplaced answer would be cached as file content.

use std::borrow::Cow;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderValue};
use serde::Deserialize;

#[cfg(test)]
use crate::tree::FileInfo;

/// Characters escaped in one path segment: everything but RFC 3986 "unreserved" characters. The `/` between
/// segments is kept, as the proxy API says.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Longest error text from the proxy we keep for a log line.
const MAX_REASON: usize = 300;

/// Why a request to the proxy failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("not found on the proxy")]
    NotFound,
    #[error(
        "the proxy refused the request (HTTP {0}); check --token / B2FS_TOKEN against the proxy's auth_token"
    )]
    Unauthorized(u16),
    #[error("upstream failure reported by the proxy: HTTP {status}: {reason}")]
    Upstream { status: u16, reason: String },
    #[error("unexpected answer from the proxy: HTTP {status}: {reason}")]
    UnexpectedStatus { status: u16, reason: String },
    #[error("the proxy did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot connect to the proxy: {}", chain(.0))]
    Unreachable(#[source] reqwest::Error),
    #[error("connection to the proxy failed: {}", chain(.0))]
    Transport(#[source] reqwest::Error),
    #[error("malformed answer from the proxy: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The errno a filesystem call gets for this failure. Only a missing name is ENOENT and a refused token
    /// EACCES; everything else (proxy down, slow, broken, or B2 failing behind it) is EIO, which is what a
    /// harvester treats as "this read failed, try later".
    pub fn errno(&self) -> i32 {
        match self {
            ClientError::NotFound => libc::ENOENT,
            ClientError::Unauthorized(_) => libc::EACCES,
            ClientError::Upstream { .. }
            | ClientError::UnexpectedStatus { .. }
            | ClientError::Timeout(_)
            | ClientError::Unreachable(_)
            | ClientError::Transport(_)
            | ClientError::Protocol(_) => libc::EIO,
        }
    }

    /// Failures of the connection itself, which are worth one immediate retry: a kept-alive connection the
    /// proxy closed (e.g. it restarted) fails the first request that uses it.
    fn is_transport(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable(_) | ClientError::Transport(_)
        )
    }
}

/// Settings of the client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL of the proxy, e.g. `http://127.0.0.1:8642`.
    pub base_url: String,
    /// Bearer token sent on every request, if the proxy requires one.
    pub token: Option<String>,
    /// Bound on one whole request (connect, headers and body).
    pub timeout: Duration,
    /// Bound on establishing a TCP connection; short, so a dead proxy fails fast.
    pub connect_timeout: Duration,
}

/// Errors building the client: these are configuration mistakes reported at startup.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--proxy {url:?} is not a valid http(s) URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("the token contains characters not allowed in an HTTP header")]
    BadToken,
    #[error(
        "cannot build the HTTP client: {0} (an https:// proxy needs the system's CA certificates: package ca-certificates)"
    )]
    Build(#[source] reqwest::Error),
}

/// One file as `GET /files` lists it. The strings borrow from the page's body where they have no JSON
/// escapes, so a page of names the tree already knows costs no allocation per name.
#[derive(Debug, Deserialize)]
struct WireFile<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    size: u64,
    #[serde(default, borrow)]
    modified: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct WireList<'a> {
    #[serde(borrow)]
    files: Vec<WireFile<'a>>,
    /// The name to continue after, when the listing has more pages (absent from proxies without paging).
    #[serde(default)]
    next: Option<String>,
}

/// One file of a listing, as [`ProxyClient::list_files_each`] hands it over (borrowed from the page).
#[derive(Debug, Clone, Copy)]
pub struct Listed<'a> {
    pub name: &'a str,
    pub size: u64,
    pub mtime: SystemTime,
    pub id: &'a str,
}

/// Files per `GET /files` page (the most the proxy accepts): the proxy and the shim hold one page at a time.
const LIST_PAGE: usize = 10_000;
/// Pages per listing at most: a proxy that keeps answering `next` cannot keep the shim looping.
const MAX_LIST_PAGES: usize = 100_000;

/// A cheap-to-clone handle on the shared connection pool.
#[derive(Debug, Clone)]
pub struct ProxyClient {
    http: reqwest::Client,
    /// `{base}/files`, without a trailing slash.
    files_url: String,
    timeout: Duration,
}

impl ProxyClient {
    pub fn new(cfg: &ClientConfig) -> Result<Self, ConfigError> {
        let base = cfg.base_url.trim_end_matches('/');
        let parsed = reqwest::Url::parse(base).map_err(|e| ConfigError::BadUrl {
            url: cfg.base_url.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(ConfigError::BadUrl {
                url: cfg.base_url.clone(),
                reason: "expected http://HOST:PORT".to_owned(),
            });
        }
        let mut headers = HeaderMap::new();
        if let Some(token) = &cfg.token {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ConfigError::BadToken)?;
            // Keeps the token out of debug output.
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        let mut builder = reqwest::Client::builder();
        if parsed.scheme() == "http" {
            // Plain HTTP needs no certificates: without this, building the client loads the system's CA store
            // and fails on a machine without one ("No CA certificates were loaded"), though we never use TLS.
            builder = builder.tls_certs_only(std::iter::empty());
        }
        let http = builder
            .default_headers(headers)
            .timeout(cfg.timeout)
            .connect_timeout(cfg.connect_timeout)
            // A parallel proof opens the plot 64 times and keeps up to 32 reads in flight; keep enough idle
            // connections that a burst never waits for a TCP handshake.
            .pool_max_idle_per_host(128)
            .pool_idle_timeout(Duration::from_secs(60))
            // Small requests and answers: Nagle would add latency to each of them.
            .tcp_nodelay(true)
            .http1_only()
            // The proxy is a local service: a system HTTP proxy (HTTP_PROXY env) must not sit in between.
            .no_proxy()
            .user_agent(concat!("b2fs-shim/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ConfigError::Build)?;
        Ok(Self {
            http,
            files_url: format!("{base}/files"),
            timeout: cfg.timeout,
        })
    }

    /// `GET /files`, page by page (`limit`, `start_after`): the whole catalog, as a vector (tests only; the
    /// refresh uses [`ProxyClient::list_files_each`]).
    #[cfg(test)]
    pub async fn list_files(&self) -> Result<Vec<FileInfo>, ClientError> {
        let mut out = Vec::new();
        self.list_files_each(|f| {
            out.push(FileInfo {
                name: f.name.into(),
                size: f.size,
                mtime: f.mtime,
                id: f.id.into(),
            })
        })
        .await?;
        Ok(out)
    }

    /// `GET /files`, page by page (`limit`, `start_after`): hands every file of the catalog to `each`, one
    /// page at a time, so only one page is held at once. Returns the number of files. A failure part way
    /// through returns the error; the caller must then discard what it got.
    pub async fn list_files_each(
        &self,
        mut each: impl FnMut(Listed<'_>),
    ) -> Result<u64, ClientError> {
        let mut count = 0u64;
        let mut after: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let mut url = reqwest::Url::parse(&self.files_url)
                .map_err(|e| ClientError::Protocol(format!("bad proxy URL: {e}")))?;
            url.query_pairs_mut()
                .append_pair("limit", &LIST_PAGE.to_string());
            if let Some(a) = &after {
                url.query_pairs_mut().append_pair("start_after", a);
            }
            let resp = self.send_with_retry(|| self.http.get(url.clone())).await?;
            let status = resp.status();
            if status != StatusCode::OK {
                return Err(status_error(status, &text_of(resp).await));
            }
            let body = resp.bytes().await.map_err(|e| self.map_reqwest(e))?;
            let list: WireList<'_> = serde_json::from_slice(&body)
                .map_err(|e| ClientError::Protocol(format!("GET /files: bad JSON: {e}")))?;
            for w in &list.files {
                count += 1;
                each(Listed {
                    name: &w.name,
                    size: w.size,
                    mtime: w
                        .modified
                        .as_deref()
                        .and_then(parse_rfc3339)
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                    id: w.id.as_deref().unwrap_or_default(),
                });
            }
            match list.next {
                Some(n) if after.as_deref().is_none_or(|a| n.as_str() > a) => after = Some(n),
                Some(n) => {
                    return Err(ClientError::Protocol(format!(
                        "GET /files: page cursor went backwards ({n:?})"
                    )));
                }
                None => return Ok(count),
            }
        }
        Err(ClientError::Protocol(format!(
            "GET /files: more than {MAX_LIST_PAGES} pages"
        )))
    }

    /// Read `len` bytes of `name` at `offset` (the caller has clamped `len` to the size it knows).
    ///
    /// Returns fewer bytes only at the end of the file as the proxy knows it, and an empty buffer when
    /// `offset` is at or after it (HTTP 416).
    pub async fn read_range(
        &self,
        name: &str,
        offset: u64,
        len: u32,
    ) -> Result<Bytes, ClientError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let last = offset.saturating_add(u64::from(len) - 1);
        let url = format!("{}/{}", self.files_url, encode_name(name));
        let range = format!("bytes={offset}-{last}");
        let mut resp = self
            .send_with_retry(|| self.http.get(&url).header(header::RANGE, &range))
            .await?;
        let status = resp.status();
        if status == StatusCode::RANGE_NOT_SATISFIABLE {
            // At or after the end of the file: the file shrank since the tree was built. A read there is EOF.
            return Ok(Bytes::new());
        }
        if status != StatusCode::PARTIAL_CONTENT {
            // Including 200: a proxy that ignored the Range would send the whole file; never read that.
            return Err(status_error(status, &text_of(resp).await));
        }
        let content_range = resp
            .headers()
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Protocol("206 without Content-Range".to_owned()))?;
        let expect = check_content_range(&content_range, offset, last)?;
        if let Some(cl) = resp.content_length()
            && cl != expect
        {
            return Err(ClientError::Protocol(format!(
                "Content-Length {cl} does not match Content-Range {content_range}"
            )));
        }
        // Read the body chunk by chunk so a misbehaving server cannot make us buffer more than we asked for.
        let mut chunks: Vec<Bytes> = Vec::with_capacity(1);
        let mut got: u64 = 0;
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.map_reqwest(e))? {
            got += chunk.len() as u64;
            if got > expect {
                return Err(ClientError::Protocol(format!(
                    "body longer than Content-Range {content_range}"
                )));
            }
            chunks.push(chunk);
        }
        if got != expect {
            return Err(ClientError::Protocol(format!(
                "body of {got} bytes, Content-Range {content_range} promised {expect}"
            )));
        }
        Ok(match chunks.len() {
            1 => chunks.swap_remove(0),
            _ => Bytes::from(chunks.concat()),
        })
    }

    /// Send a request; on a connection failure try once more at once, if time is left: a pooled connection
    /// the proxy closed fails the first request on it, and a proxy that just came back deserves one more try.
    async fn send_with_retry(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let started = Instant::now();
        match build().send().await.map_err(|e| self.map_reqwest(e)) {
            Err(e) if e.is_transport() => {
                let left = self.timeout.saturating_sub(started.elapsed());
                if left < Duration::from_millis(100) {
                    return Err(e);
                }
                tracing::debug!("retrying once after: {e}");
                build()
                    .timeout(left)
                    .send()
                    .await
                    .map_err(|e| self.map_reqwest(e))
            }
            other => other,
        }
    }

    fn map_reqwest(&self, e: reqwest::Error) -> ClientError {
        if e.is_timeout() {
            ClientError::Timeout(self.timeout)
        } else if e.is_connect() {
            ClientError::Unreachable(e)
        } else {
            ClientError::Transport(e)
        }
    }
}

/// An error with its causes ("error sending request: ... : Connection refused"): reqwest's own message
/// leaves out the part that says what went wrong.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The first line of an error body, shortened, for the error message.
async fn text_of(resp: reqwest::Response) -> String {
    match resp.text().await {
        Ok(t) => {
            let line = t.lines().next().unwrap_or("").trim();
            let mut end = line.len().min(MAX_REASON);
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line[..end].to_owned()
        }
        Err(_) => String::new(),
    }
}

/// Map an unexpected HTTP status to an error.
pub fn status_error(status: StatusCode, reason: &str) -> ClientError {
    let reason = reason.to_owned();
    match status.as_u16() {
        404 => ClientError::NotFound,
        401 | 403 => ClientError::Unauthorized(status.as_u16()),
        s @ 500..=599 => ClientError::Upstream { status: s, reason },
        s => ClientError::UnexpectedStatus { status: s, reason },
    }
}

/// Check `Content-Range: bytes a-b/size` against a request for `first..=last`: the answer must start where we
/// asked and end where we asked or at EOF. Returns the number of bytes the body must have.
pub fn check_content_range(value: &str, first: u64, last: u64) -> Result<u64, ClientError> {
    let bad = || {
        ClientError::Protocol(format!(
            "bad Content-Range {value:?} for bytes={first}-{last}"
        ))
    };
    let rest = value.trim().strip_prefix("bytes ").ok_or_else(bad)?;
    let (span, size) = rest.split_once('/').ok_or_else(bad)?;
    let (a, b) = span.split_once('-').ok_or_else(bad)?;
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let b: u64 = b.trim().parse().map_err(|_| bad())?;
    let size = size.trim();
    if a != first || b < a || b > last {
        return Err(bad());
    }
    if size != "*" {
        let size: u64 = size.parse().map_err(|_| bad())?;
        // Shorter than asked is only allowed when the answer ends at EOF.
        if b >= size || (b < last && b + 1 != size) {
            return Err(bad());
        }
    } else if b < last {
        return Err(bad());
    }
    Ok(b - a + 1)
}

/// Percent-encode a B2 name for the URL path, segment by segment (`/` kept).
pub fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    for (i, seg) in name.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.extend(utf8_percent_encode(seg, SEGMENT));
    }
    out
}

/// Parse an RFC 3339 time such as `2026-11-24T10:00:00Z` or `2026-11-24T12:00:00.5+02:00`.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    // humantime handles `Z` and `+00:00`; apply any other numeric offset ourselves.
    if let Ok(t) = humantime::parse_rfc3339(s) {
        return Some(t);
    }
    let split = s.len().checked_sub(6)?;
    let (local, offset) = (s.get(..split)?, s.get(split..)?);
    let ob = offset.as_bytes();
    if ob.len() != 6 || ob[3] != b':' || !matches!(ob[0], b'+' | b'-') {
        return None;
    }
    let hours: u64 = offset.get(1..3)?.parse().ok()?;
    let minutes: u64 = offset.get(4..6)?.parse().ok()?;
    let shift = Duration::from_secs(hours * 3600 + minutes * 60);
    let t = humantime::parse_rfc3339(&format!("{local}Z")).ok()?;
    // Local time = UTC + offset, so UTC = local - offset.
    if ob[0] == b'+' {
        t.checked_sub(shift)
    } else {
        t.checked_add(shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn errno_mapping() {
        assert_eq!(
            status_error(StatusCode::NOT_FOUND, "").errno(),
            libc::ENOENT
        );
        assert_eq!(
            status_error(StatusCode::UNAUTHORIZED, "").errno(),
            libc::EACCES
        );
        assert_eq!(
            status_error(StatusCode::FORBIDDEN, "").errno(),
            libc::EACCES
        );
        for s in [500u16, 502, 503, 504] {
            let e = status_error(StatusCode::from_u16(s).expect("status"), "B2 down");
            assert_eq!(e.errno(), libc::EIO, "{s}");
            assert!(e.to_string().contains("B2 down"));
        }
        assert_eq!(status_error(StatusCode::OK, "").errno(), libc::EIO);
        assert_eq!(status_error(StatusCode::BAD_REQUEST, "").errno(), libc::EIO);
        assert_eq!(
            ClientError::Timeout(Duration::from_secs(1)).errno(),
            libc::EIO
        );
        assert_eq!(ClientError::Protocol("x".into()).errno(), libc::EIO);
    }

    #[test]
    fn content_range_checks() {
        assert_eq!(
            check_content_range("bytes 0-8190/100000", 0, 8190).ok(),
            Some(8191)
        );
        // Clamped at EOF.
        assert_eq!(
            check_content_range("bytes 90-99/100", 90, 200).ok(),
            Some(10)
        );
        assert_eq!(check_content_range("bytes 5-9/*", 5, 9).ok(), Some(5));
        for (v, a, b) in [
            ("bytes 1-8190/100000", 0, 8190), // wrong start
            ("bytes 0-8000/100000", 0, 8190), // short, not at EOF
            ("bytes 0-9000/100000", 0, 8190), // longer than asked
            ("bytes 0-99/99", 0, 200),        // end past size
            ("bytes */100", 0, 10),           // unsatisfied form on a 206
            ("items 0-10/100", 0, 10),        // wrong unit
            ("bytes 0-x/100", 0, 10),         // garbage
            ("bytes 0-5/*", 0, 10),           // short with unknown size
            ("bytes 9-5/100", 9, 10),         // reversed
        ] {
            assert!(check_content_range(v, a, b).is_err(), "{v}");
        }
    }

    #[test]
    fn names_are_encoded_per_segment() {
        assert_eq!(encode_name("a.plot"), "a.plot");
        assert_eq!(encode_name("farm 1/x#y?.plot"), "farm%201/x%23y%3F.plot");
        assert_eq!(encode_name("dir/sub/f-1_2~3.plot"), "dir/sub/f-1_2~3.plot");
        assert_eq!(encode_name("ü/%"), "%C3%BC/%25");
    }

    #[test]
    fn rfc3339_times() {
        let base = humantime::parse_rfc3339("2026-11-24T10:00:00Z").expect("base");
        assert_eq!(parse_rfc3339("2026-11-24T10:00:00Z"), Some(base));
        assert_eq!(parse_rfc3339("2026-11-24T10:00:00+00:00"), Some(base));
        assert_eq!(parse_rfc3339("2026-11-24T12:30:00+02:30"), Some(base));
        assert_eq!(parse_rfc3339("2026-11-24T05:00:00-05:00"), Some(base));
        assert_eq!(
            parse_rfc3339("2026-11-24T10:00:00.250Z"),
            Some(base + Duration::from_millis(250))
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339(""), None);
    }

    #[test]
    fn config_errors() {
        let mut cfg = ClientConfig {
            base_url: "not a url".into(),
            token: None,
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
        };
        assert!(matches!(
            ProxyClient::new(&cfg),
            Err(ConfigError::BadUrl { .. })
        ));
        cfg.base_url = "ftp://host".into();
        assert!(matches!(
            ProxyClient::new(&cfg),
            Err(ConfigError::BadUrl { .. })
        ));
        cfg.base_url = "http://127.0.0.1:1/".into();
        cfg.token = Some("bad\ntoken".into());
        assert!(matches!(ProxyClient::new(&cfg), Err(ConfigError::BadToken)));
        cfg.token = Some("good".into());
        assert!(ProxyClient::new(&cfg).is_ok());
    }

    /// A canned HTTP/1.1 responder: answers every request with `respond(request_head)`, or never answers
    /// when it returns None. Only for exercising the client's error handling, not a proxy.
    async fn canned(
        respond: impl Fn(&str) -> Option<Vec<u8>> + Send + Sync + 'static,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let count = Arc::new(AtomicUsize::new(0));
        let respond = Arc::new(respond);
        let c = count.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let respond = respond.clone();
                let c = c.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 4096];
                    loop {
                        let Ok(n) = sock.read(&mut tmp).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&tmp[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            buf.drain(..end + 4);
                            c.fetch_add(1, Ordering::SeqCst);
                            match respond(&head) {
                                Some(out) => {
                                    if sock.write_all(&out).await.is_err() {
                                        return;
                                    }
                                }
                                None => {
                                    tokio::time::sleep(Duration::from_secs(3600)).await;
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        (addr, count)
    }

    fn response(status: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n", body.len());
        for (k, v) in headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        out.extend_from_slice(body);
        out
    }

    fn client_for(addr: SocketAddr, token: Option<&str>, timeout: Duration) -> ProxyClient {
        ProxyClient::new(&ClientConfig {
            base_url: format!("http://{addr}"),
            token: token.map(str::to_owned),
            timeout,
            connect_timeout: Duration::from_secs(2),
        })
        .expect("client")
    }

    #[tokio::test]
    async fn reads_ranges_lists_and_sends_the_token() {
        let (addr, _) = canned(|head| {
            let lower = head.to_ascii_lowercase();
            if !lower.contains("authorization: bearer s3cret") {
                return Some(response("401 Unauthorized", &[], b"no"));
            }
            if head.starts_with("GET /files?limit=10000 HTTP") {
                let body = br#"{"files":[{"name":"d/a b.plot","size":100,"modified":"2026-11-24T10:00:00Z","id":"4_z1"}],"next":"d/a b.plot"}"#;
                return Some(response("200 OK", &[("content-type", "application/json".into())], body));
            }
            if head.starts_with("GET /files?limit=10000&start_after=d%2Fa+b.plot HTTP") {
                let body = br#"{"files":[{"name":"x","size":1}],"next":null}"#;
                return Some(response("200 OK", &[("content-type", "application/json".into())], body));
            }
            if head.starts_with("GET /files/d/a%20b.plot HTTP") {
                if lower.contains("range: bytes=90-99") {
                    return Some(response(
                        "206 Partial Content",
                        &[("content-range", "bytes 90-99/100".into())],
                        &[7u8; 10],
                    ));
                }
                if lower.contains("range: bytes=100-") {
                    return Some(response("416 Range Not Satisfiable", &[("content-range", "bytes */100".into())], b""));
                }
            }
            if head.starts_with("GET /files/short") {
                return Some(response(
                    "206 Partial Content",
                    &[("content-range", "bytes 0-9/100".into())],
                    &[1u8; 10],
                ));
            }
            if head.starts_with("GET /files/whole") {
                return Some(response("200 OK", &[], &[1u8; 10]));
            }
            if head.starts_with("GET /files/broken") {
                return Some(response("503 Service Unavailable", &[], b"B2 is down\nmore"));
            }
            Some(response("404 Not Found", &[], b"unknown"))
        })
        .await;
        let client = client_for(addr, Some("s3cret"), Duration::from_secs(5));

        let files = client.list_files().await.expect("list");
        assert_eq!(files.len(), 2);
        assert_eq!(&*files[0].name, "d/a b.plot");
        assert_eq!(&*files[0].id, "4_z1");
        assert_eq!(
            files[0].mtime,
            humantime::parse_rfc3339("2026-11-24T10:00:00Z").expect("t")
        );
        assert_eq!(files[1].mtime, SystemTime::UNIX_EPOCH, "missing modified");

        let data = client.read_range("d/a b.plot", 90, 10).await.expect("read");
        assert_eq!(&data[..], &[7u8; 10]);
        let eof = client.read_range("d/a b.plot", 100, 10).await.expect("eof");
        assert!(eof.is_empty());
        assert!(
            client
                .read_range("x", 0, 0)
                .await
                .expect("empty")
                .is_empty()
        );

        let e = client.read_range("nope", 0, 10).await.expect_err("404");
        assert_eq!(e.errno(), libc::ENOENT);
        let e = client.read_range("short", 0, 20).await.expect_err("short");
        assert!(matches!(e, ClientError::Protocol(_)), "{e}");
        let e = client.read_range("whole", 0, 10).await.expect_err("200");
        assert_eq!(e.errno(), libc::EIO);
        let e = client.read_range("broken", 0, 10).await.expect_err("503");
        assert_eq!(e.errno(), libc::EIO);
        assert!(e.to_string().contains("HTTP 503: B2 is down"), "{e}");

        let anon = client_for(addr, None, Duration::from_secs(5));
        let e = anon.list_files().await.expect_err("401");
        assert_eq!(e.errno(), libc::EACCES);
    }

    #[tokio::test]
    async fn a_silent_proxy_times_out_with_eio() {
        let (addr, _) = canned(|_| None).await;
        let client = client_for(addr, None, Duration::from_millis(300));
        let started = Instant::now();
        let e = client.read_range("a", 0, 10).await.expect_err("timeout");
        assert!(matches!(e, ClientError::Timeout(_)), "{e}");
        assert_eq!(e.errno(), libc::EIO);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_dead_proxy_fails_fast_with_eio() {
        // Bind and drop to get a port nobody listens on.
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr")
        };
        let client = client_for(addr, None, Duration::from_secs(30));
        let started = Instant::now();
        let e = client.read_range("a", 0, 10).await.expect_err("refused");
        assert!(matches!(e, ClientError::Unreachable(_)), "{e}");
        assert_eq!(e.errno(), libc::EIO);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            client.list_files().await.expect_err("refused").errno(),
            libc::EIO
        );
    }

    #[tokio::test]
    async fn bad_json_is_a_protocol_error() {
        let (addr, _) = canned(|_| Some(response("200 OK", &[], b"{\"files\": 3}"))).await;
        let client = client_for(addr, None, Duration::from_secs(5));
        let e = client.list_files().await.expect_err("json");
        assert!(matches!(e, ClientError::Protocol(_)), "{e}");
    }
}
