//! Backblaze B2 native API (v4) client: authorize, resolve the bucket, list file names, download ranges.
//!
//! Downloads go by file id, not by name: the id names one immutable file version, so the bytes that come back
//! can only belong to the version the cache keys them under, even if the name is re-uploaded meanwhile.
//! Every answer is checked (status, `Content-Range`, length, file id) before it leaves this module, and a
//! body is never read past the length asked for. An expired token is renewed once for all requests that hit
//! it ([`super::auth`]). A download is one attempt; listing pages are retried here, reads by the policy.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::future::BoxFuture;
use reqwest::header::{AUTHORIZATION, CONTENT_RANGE, HeaderMap, HeaderValue};
use serde::Deserialize;

use super::auth::TokenCache;
use super::retry::{RetryPolicy, retry};
use super::verify::{Answer, verify_range};
use super::{ObjectInfo, ObjectSource, SourceHealth, UpstreamError};
use crate::config::B2Config;
use crate::metrics::{Metrics, TxClass};
use crate::sync::Mutex as StdMutex;

/// Page size for `b2_list_file_names` (the API maximum: fewer billed calls for big buckets).
const LIST_PAGE: u32 = 10_000;

/// What authorization gave us. The token is a secret: this type has no `Debug`.
pub struct Auth {
    token: String,
    account_id: String,
    api_url: String,
    download_url: String,
    bucket_id: String,
    bucket_name: Option<String>,
    /// Effective listing prefix (the config's, narrowed by the key's `namePrefix`).
    prefix: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizeResponse {
    pub account_id: String,
    pub authorization_token: String,
    pub api_info: ApiInfo,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiInfo {
    pub storage_api: StorageApi,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageApi {
    pub api_url: String,
    pub download_url: String,
    #[serde(default)]
    pub allowed: Option<Allowed>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Allowed {
    #[serde(default)]
    pub buckets: Option<Vec<AllowedBucket>>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub name_prefix: Option<String>,
}

#[derive(Deserialize)]
pub struct AllowedBucket {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListBucketsResponse {
    pub buckets: Vec<BucketEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BucketEntry {
    pub bucket_id: String,
    pub bucket_name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListFilesResponse {
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub next_file_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    pub file_name: String,
    pub file_id: Option<String>,
    #[serde(default)]
    pub content_length: u64,
    #[serde(default)]
    pub upload_timestamp: i64,
    #[serde(default)]
    pub action: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

pub struct B2Source {
    http: reqwest::Client,
    cfg: B2Config,
    /// Retries of listing pages and of the calls authorization makes for them (reads are retried by the policy).
    list_policy: RetryPolicy,
    /// Timeout of one listing or authorization request (download attempts are timed by the policy).
    timeout: Duration,
    auth: TokenCache<Auth>,
    health: StdMutex<SourceHealth>,
    metrics: Arc<Metrics>,
}

/// Largest JSON answer accepted (a 10,000-file listing page is ~3 MB).
const MAX_JSON_BODY: usize = 64 << 20;

/// Counts one HTTP request however it ends: answered, failed, or dropped mid-flight (a hedge's loser, an
/// attempt cut by the policy's timeout or deadline). Without it a cancelled request would stay in the in-flight
/// gauge forever and never reach the request counter.
struct RequestMeter<'a> {
    metrics: &'a Metrics,
    op: &'static str,
    start: Instant,
    outcome: Option<&'static str>,
}

impl<'a> RequestMeter<'a> {
    fn start(metrics: &'a Metrics, op: &'static str, class: TxClass) -> Self {
        metrics.b2_transaction(class);
        metrics.upstream_inflight.inc();
        Self {
            metrics,
            op,
            start: Instant::now(),
            outcome: None,
        }
    }

    fn finish(mut self, outcome: &'static str) {
        self.outcome = Some(outcome);
    }
}

impl Drop for RequestMeter<'_> {
    fn drop(&mut self) {
        let outcome = self.outcome.unwrap_or("cancelled");
        self.metrics.upstream_inflight.dec();
        self.metrics
            .upstream_requests
            .with_label_values(&[self.op, outcome])
            .inc();
        self.metrics
            .upstream_duration
            .with_label_values(&[self.op])
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl B2Source {
    pub fn new(
        cfg: B2Config,
        http: reqwest::Client,
        timeout: Duration,
        list_deadline: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            http,
            cfg,
            list_policy: RetryPolicy::new(list_deadline),
            timeout,
            auth: TokenCache::default(),
            health: StdMutex::new(SourceHealth::default()),
            metrics,
        }
    }

    fn set_health(&self, authorized: bool, err: Option<&UpstreamError>) {
        let mut h = self.health.lock();
        h.authorized = authorized;
        if let Some(e) = err {
            h.last_error = Some(e.report());
        } else if authorized {
            h.last_error = None;
        }
    }

    async fn current_auth(&self) -> Result<Arc<Auth>, UpstreamError> {
        self.auth.get(|| self.authorize_recorded()).await
    }

    /// Renews the token once for every request that used `stale`.
    async fn renew(&self, stale: &Arc<Auth>) -> Result<Arc<Auth>, UpstreamError> {
        self.auth
            .renew(Some(stale), || self.authorize_recorded())
            .await
    }

    async fn authorize_recorded(&self) -> Result<Arc<Auth>, UpstreamError> {
        let r = self.authorize().await;
        match &r {
            Ok(a) => {
                self.set_health(true, None);
                tracing::info!(bucket_id = %a.bucket_id, "authorized with B2");
            }
            Err(e) => self.set_health(false, Some(e)),
        }
        r
    }

    /// One authorization: `b2_authorize_account`, then the bucket id (from the key or one listing call).
    async fn authorize(&self) -> Result<Arc<Auth>, UpstreamError> {
        let endpoint = self.cfg.endpoint.trim_end_matches('/');
        let url = format!("{endpoint}/b2api/v4/b2_authorize_account");
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.cfg.key_id, self.cfg.application_key));
        let req = self
            .http
            .get(&url)
            .header(AUTHORIZATION, format!("Basic {basic}"));
        let resp: AuthorizeResponse = self
            .send(
                req,
                "authorize",
                TxClass::C,
                Some(self.timeout),
                MAX_JSON_BODY,
            )
            .await
            .and_then(|(body, _)| {
                serde_json::from_slice(&body)
                    .map_err(|e| UpstreamError::json("b2_authorize_account", e))
            })
            .map_err(|e| match e {
                // An authorize 401 means the key itself is wrong, whatever code B2 used.
                UpstreamError::TokenExpired | UpstreamError::Unauthorized(_) => {
                    UpstreamError::Unauthorized(
                        "b2_authorize_account rejected the key id / application key".into(),
                    )
                }
                other => other,
            })?;

        let storage = resp.api_info.storage_api;
        let allowed = storage.allowed.unwrap_or_default();
        for cap in ["listFiles", "readFiles"] {
            if !allowed.capabilities.iter().any(|c| c == cap) {
                return Err(UpstreamError::Unauthorized(format!(
                    "the application key lacks the `{cap}` capability (it has: {})",
                    allowed.capabilities.join(", ")
                )));
            }
        }
        let prefix = effective_prefix(&self.cfg.prefix, allowed.name_prefix.as_deref())?;
        let mut auth = Auth {
            token: resp.authorization_token,
            account_id: resp.account_id,
            api_url: storage.api_url.trim_end_matches('/').to_string(),
            download_url: storage.download_url.trim_end_matches('/').to_string(),
            bucket_id: String::new(),
            bucket_name: None,
            prefix,
        };
        let (id, name) = match allowed.buckets {
            Some(buckets) => self.bucket_from_key(&buckets)?,
            None => self.bucket_from_listing(&auth).await?,
        };
        auth.bucket_id = id;
        auth.bucket_name = name;
        Ok(Arc::new(auth))
    }

    fn bucket_from_key(
        &self,
        buckets: &[AllowedBucket],
    ) -> Result<(String, Option<String>), UpstreamError> {
        let found = match (&self.cfg.bucket_id, &self.cfg.bucket) {
            (Some(id), _) => buckets.iter().find(|b| &b.id == id),
            (None, Some(name)) => buckets
                .iter()
                .find(|b| b.name.as_deref() == Some(name.as_str())),
            (None, None) if buckets.len() == 1 => buckets.first(),
            (None, None) => {
                return Err(UpstreamError::Config(format!(
                    "the key allows {} buckets; set b2.bucket to choose one",
                    buckets.len()
                )));
            }
        };
        match found {
            Some(b) => Ok((b.id.clone(), b.name.clone())),
            None => Err(UpstreamError::Config(format!(
                "the application key is not allowed to access bucket {} (it allows: {})",
                self.cfg
                    .bucket_id
                    .as_deref()
                    .or(self.cfg.bucket.as_deref())
                    .unwrap_or("?"),
                buckets
                    .iter()
                    .map(|b| b.name.clone().unwrap_or_else(|| b.id.clone()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    async fn bucket_from_listing(
        &self,
        auth: &Auth,
    ) -> Result<(String, Option<String>), UpstreamError> {
        if let Some(id) = &self.cfg.bucket_id {
            return Ok((id.clone(), self.cfg.bucket.clone()));
        }
        let Some(name) = self.cfg.bucket.clone() else {
            return Err(UpstreamError::Config(
                "the key is not restricted to a bucket: set b2.bucket (or b2.bucket_id)".into(),
            ));
        };
        let url = format!("{}/b2api/v4/b2_list_buckets", auth.api_url);
        let body = serde_json::json!({"accountId": auth.account_id, "bucketName": name});
        let req = self
            .http
            .post(&url)
            .header(AUTHORIZATION, auth.token.as_str())
            .json(&body);
        let (bytes, _) = self
            .send(
                req,
                "list_buckets",
                TxClass::C,
                Some(self.timeout),
                MAX_JSON_BODY,
            )
            .await?;
        let resp: ListBucketsResponse = serde_json::from_slice(&bytes)
            .map_err(|e| UpstreamError::json("b2_list_buckets", e))?;
        resp.buckets
            .into_iter()
            .find(|b| b.bucket_name == name)
            .map(|b| (b.bucket_id, Some(b.bucket_name)))
            .ok_or_else(|| {
                UpstreamError::Config(format!("bucket `{name}` not found in this account"))
            })
    }

    fn note_retry(&self, e: &UpstreamError) {
        self.metrics
            .upstream_retries
            .with_label_values(&[e.reason()])
            .inc();
        tracing::debug!(error = %e.report(), "retrying upstream call");
    }

    /// Sends one request, counts it however it ends, reads at most `max_body` bytes of the answer (counted
    /// as they arrive), classifies the status, and returns the body. `timeout`: for calls the policy does not
    /// time itself.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        op: &'static str,
        class: TxClass,
        timeout: Option<Duration>,
        max_body: usize,
    ) -> Result<(Bytes, HeaderMap), UpstreamError> {
        let meter = RequestMeter::start(&self.metrics, op, class);
        let exchange = async {
            let mut resp = req.send().await.map_err(|e| {
                if e.is_connect() {
                    UpstreamError::connect(e)
                } else {
                    UpstreamError::body(e)
                }
            })?;
            let status = resp.status().as_u16();
            let headers = std::mem::take(resp.headers_mut());
            let hint = resp
                .content_length()
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(0)
                .min(max_body);
            let mut body = BytesMut::with_capacity(hint);
            // Data bytes only: B2 bills them, and the emulator's own byte count is the same set.
            let data = (200..300)
                .contains(&status)
                .then(|| self.metrics.upstream_bytes.with_label_values(&[op]));
            while let Some(chunk) = resp.chunk().await.map_err(UpstreamError::body)? {
                if let Some(c) = &data {
                    c.inc_by(chunk.len() as u64);
                }
                if body.len() + chunk.len() > max_body {
                    return Err(UpstreamError::BadResponse(format!(
                        "{op} answer longer than the {max_body} bytes asked for"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, UpstreamError>((status, headers, body.freeze()))
        };
        let result = match timeout {
            Some(t) => tokio::time::timeout(t, exchange)
                .await
                .unwrap_or(Err(UpstreamError::Timeout(t))),
            None => exchange.await,
        };
        let (status, headers, body) = match result {
            Ok(v) => v,
            Err(e) => {
                meter.finish(e.reason());
                return Err(e);
            }
        };
        meter.finish(status_label(status));
        if (200..300).contains(&status) {
            return Ok((body, headers));
        }
        Err(classify_error(status, &headers, &body))
    }

    /// Lists page by page, handing each page's files on before asking for the next: only one page (at most
    /// `LIST_PAGE` names) is held here at a time.
    async fn list_pages(
        &self,
        each: &mut (dyn FnMut(ObjectInfo) + Send),
    ) -> Result<usize, UpstreamError> {
        let mut n = 0;
        let mut start: Option<String> = None;
        loop {
            let page: ListFilesResponse = retry(
                &self.list_policy,
                |e| self.note_retry(e),
                |_| self.list_page(start.as_deref()),
            )
            .await?;
            for f in page.files {
                // Only finished uploads are files (not `start`ed large files, `hide` markers, `folder`s).
                if f.action != "upload" {
                    continue;
                }
                let Some(id) = f.file_id else { continue };
                each(ObjectInfo {
                    name: f.file_name,
                    id: id.into(),
                    size: f.content_length,
                    modified_ms: f.upload_timestamp,
                });
                n += 1;
            }
            match page.next_file_name {
                Some(next) if Some(&next) != start.as_ref() => start = Some(next),
                _ => break,
            }
        }
        Ok(n)
    }

    /// One attempt at one page of `b2_list_file_names`.
    async fn list_page(&self, start: Option<&str>) -> Result<ListFilesResponse, UpstreamError> {
        let auth = self.current_auth().await?;
        let mut body = serde_json::json!({
            "bucketId": auth.bucket_id,
            "maxFileCount": LIST_PAGE,
        });
        if let Some(s) = start {
            body["startFileName"] = s.into();
        }
        if !auth.prefix.is_empty() {
            body["prefix"] = auth.prefix.clone().into();
        }
        let url = format!("{}/b2api/v4/b2_list_file_names", auth.api_url);
        let req = self
            .http
            .post(url)
            .header(AUTHORIZATION, auth.token.as_str())
            .json(&body);
        let r = self
            .send(
                req,
                "list_file_names",
                TxClass::C,
                Some(self.timeout),
                MAX_JSON_BODY,
            )
            .await;
        let (bytes, _) = self.renew_on_expiry(r, &auth).await?;
        serde_json::from_slice(&bytes).map_err(|e| UpstreamError::json("b2_list_file_names", e))
    }

    /// On an expired-token answer, renews the token (once for every request that used the same one) and
    /// passes the error on: the retry layer tries again at once, with the new token.
    async fn renew_on_expiry<T>(
        &self,
        r: Result<T, UpstreamError>,
        used: &Arc<Auth>,
    ) -> Result<T, UpstreamError> {
        if let Err(UpstreamError::TokenExpired) = &r {
            self.renew(used).await?;
        }
        r
    }

    async fn download(&self, obj: &ObjectInfo, range: Range<u64>) -> Result<Bytes, UpstreamError> {
        let auth = self.current_auth().await?;
        let url = format!(
            "{}/b2api/v4/b2_download_file_by_id?fileId={}",
            auth.download_url,
            percent_encoding::utf8_percent_encode(&obj.id, percent_encoding::NON_ALPHANUMERIC)
        );
        let last = range.end - 1;
        let want = usize::try_from(range.end - range.start)
            .map_err(|_| UpstreamError::Config("range larger than memory".into()))?;
        let req = self
            .http
            .get(url)
            .header(AUTHORIZATION, auth.token.as_str())
            .header(
                reqwest::header::RANGE,
                format!("bytes={}-{}", range.start, last),
            );
        // An error answer is a small JSON body; a range answer is never longer than asked.
        let r = self
            .send(req, "download", TxClass::B, None, want.max(64 << 10))
            .await;
        let (body, headers) = self.renew_on_expiry(r, &auth).await.map_err(|e| match e {
            UpstreamError::NotFound(_) => {
                UpstreamError::NotFound(format!("{} (id {})", obj.name, obj.id))
            }
            UpstreamError::Status { status: 416, .. } => UpstreamError::Changed(format!(
                "{}: range {}-{} not satisfiable",
                obj.name, range.start, last
            )),
            other => other,
        })?;
        let header = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        verify_range(
            obj,
            &range,
            Answer {
                content_range: header(CONTENT_RANGE.as_str()),
                file_id: header("x-bz-file-id"),
                body_len: body.len() as u64,
            },
        )?;
        Ok(body)
    }
}

fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        206 => "206",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        408 => "408",
        416 => "416",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 300 => "2xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

/// Turns a non-2xx answer into the error the retry loop and the API understand.
pub fn classify_error(status: u16, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let (code, message) = parsed.map(|b| (b.code, b.message)).unwrap_or_else(|| {
        (
            String::new(),
            String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        )
    });
    match status {
        401 if code == "expired_auth_token" || code == "bad_auth_token" => {
            UpstreamError::TokenExpired
        }
        401 => UpstreamError::Unauthorized(format!("{code}: {message}")),
        404 => UpstreamError::NotFound(message),
        _ => {
            let retry_after = headers
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(60)));
            UpstreamError::Status {
                status,
                code,
                message,
                retry_after,
            }
        }
    }
}

/// The listing prefix: the narrower of the configured prefix and the key's `namePrefix`.
fn effective_prefix(configured: &str, key_prefix: Option<&str>) -> Result<String, UpstreamError> {
    match key_prefix {
        None | Some("") => Ok(configured.to_string()),
        Some(k) if configured.starts_with(k) => Ok(configured.to_string()),
        Some(k) if k.starts_with(configured) => Ok(k.to_string()),
        Some(k) => Err(UpstreamError::Config(format!(
            "b2.prefix `{configured}` is outside the key's namePrefix `{k}`"
        ))),
    }
}

impl ObjectSource for B2Source {
    fn list_into<'a>(
        &'a self,
        each: &'a mut (dyn FnMut(ObjectInfo) + Send),
    ) -> BoxFuture<'a, Result<usize, UpstreamError>> {
        async move {
            let r = self.list_pages(each).await;
            match &r {
                Ok(_) => self.set_health(true, None),
                Err(e) => self.set_health(self.auth.current().is_some(), Some(e)),
            }
            r
        }
        .boxed()
    }

    fn read(
        &self,
        obj: &ObjectInfo,
        range: Range<u64>,
    ) -> BoxFuture<'_, Result<Bytes, UpstreamError>> {
        let obj = obj.clone();
        async move { self.download(&obj, range).await }.boxed()
    }

    fn health(&self) -> SourceHealth {
        self.health.lock().clone()
    }

    fn describe(&self) -> String {
        format!(
            "B2 {} bucket {}",
            self.cfg.endpoint,
            self.cfg
                .bucket
                .as_deref()
                .or(self.cfg.bucket_id.as_deref())
                .unwrap_or("(from key)")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_classes() {
        let h = HeaderMap::new();
        let e = classify_error(
            401,
            &h,
            br#"{"status":401,"code":"expired_auth_token","message":"x"}"#,
        );
        assert!(matches!(e, UpstreamError::TokenExpired));
        let e = classify_error(
            401,
            &h,
            br#"{"status":401,"code":"unauthorized","message":"x"}"#,
        );
        assert!(matches!(e, UpstreamError::Unauthorized(_)) && !e.is_retryable());
        let mut h429 = HeaderMap::new();
        h429.insert(reqwest::header::RETRY_AFTER, "3".parse().expect("header"));
        let e = classify_error(429, &h429, b"not json");
        assert!(e.is_retryable());
        assert!(
            matches!(e, UpstreamError::Status { retry_after: Some(d), .. } if d == Duration::from_secs(3))
        );
        assert!(!classify_error(403, &h, b"{}").is_retryable());
        assert!(classify_error(503, &h, b"{}").is_retryable());
    }

    #[test]
    fn prefixes() {
        assert_eq!(effective_prefix("", None).ok().as_deref(), Some(""));
        assert_eq!(
            effective_prefix("", Some("plots/")).ok().as_deref(),
            Some("plots/")
        );
        assert_eq!(
            effective_prefix("plots/a/", Some("plots/")).ok().as_deref(),
            Some("plots/a/")
        );
        assert!(effective_prefix("other/", Some("plots/")).is_err());
    }

    proptest::proptest! {
        #[test]
        fn b2_json_parsers_never_panic(s in "\\PC{0,300}") {
            let _ = serde_json::from_str::<AuthorizeResponse>(&s);
            let _ = serde_json::from_str::<ListFilesResponse>(&s);
            let _ = classify_error(500, &HeaderMap::new(), s.as_bytes());
            let _ = crate::upstream::verify::parse_content_range(&s);
        }
    }
}
