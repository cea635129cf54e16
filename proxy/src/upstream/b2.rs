//! Backblaze B2 native API (v4) client: authorize, resolve the bucket, list file names, download ranges.
//!
//! Downloads go by file id, not by name: the id names one immutable file version, so the bytes that come back
//! can only belong to the version the cache keys them under, even if the name is re-uploaded meanwhile.
//! Every answer is checked (status, `Content-Range`, length, file id) before it leaves this module.
//! An expired token is renewed once for all requests that hit it (the re-auth is serialised and the stale
//! token compared), not once per request.

use std::ops::Range;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use reqwest::header::{AUTHORIZATION, CONTENT_RANGE, HeaderMap};
use serde::Deserialize;
use tokio::sync::{Mutex, Semaphore};

use super::retry::{RetryPolicy, retry};
use super::{ObjectInfo, ObjectSource, SourceHealth, UpstreamError};
use crate::config::B2Config;
use crate::metrics::Metrics;

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

/// Parses `bytes a-b/size` (inclusive a..=b). `None` for anything else.
pub fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, size) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b, size) = (a.parse().ok()?, b.parse().ok()?, size.parse().ok()?);
    (a <= b && b < size).then_some((a, b, size))
}

pub struct B2Source {
    http: reqwest::Client,
    cfg: B2Config,
    policy: RetryPolicy,
    timeout: Duration,
    current: StdMutex<Option<Arc<Auth>>>,
    /// Serialises re-authorization so that a burst of expired-token answers costs one authorize call.
    reauth: Mutex<()>,
    downloads: Arc<Semaphore>,
    health: StdMutex<SourceHealth>,
    metrics: Arc<Metrics>,
}

impl B2Source {
    pub fn new(
        cfg: B2Config,
        http: reqwest::Client,
        timeout: Duration,
        retry_deadline: Duration,
        max_concurrency: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            http,
            cfg,
            policy: RetryPolicy::new(retry_deadline),
            timeout,
            current: StdMutex::new(None),
            reauth: Mutex::new(()),
            downloads: Arc::new(Semaphore::new(max_concurrency)),
            health: StdMutex::new(SourceHealth::default()),
            metrics,
        }
    }

    fn set_health(&self, authorized: bool, err: Option<&UpstreamError>) {
        if let Ok(mut h) = self.health.lock() {
            h.authorized = authorized;
            if let Some(e) = err {
                h.last_error = Some(e.to_string());
            } else if authorized {
                h.last_error = None;
            }
        }
    }

    fn current_auth(&self) -> Option<Arc<Auth>> {
        self.current.lock().ok().and_then(|g| g.clone())
    }

    async fn auth(&self) -> Result<Arc<Auth>, UpstreamError> {
        match self.current_auth() {
            Some(a) => Ok(a),
            None => self.reauthorize(None).await,
        }
    }

    /// Authorizes anew unless another task already replaced `stale` (or, with `None`, already authorized).
    async fn reauthorize(&self, stale: Option<&str>) -> Result<Arc<Auth>, UpstreamError> {
        let _guard = self.reauth.lock().await;
        if let Some(cur) = self.current_auth()
            && stale.is_none_or(|s| s != cur.token)
        {
            return Ok(cur);
        }
        let result = self.authorize().await;
        match &result {
            Ok(a) => {
                if let Ok(mut g) = self.current.lock() {
                    *g = Some(a.clone());
                }
                self.set_health(true, None);
                tracing::info!(bucket_id = %a.bucket_id, "authorized with B2");
            }
            Err(e) => {
                if let Ok(mut g) = self.current.lock() {
                    *g = None;
                }
                self.set_health(false, Some(e));
            }
        }
        result
    }

    async fn authorize(&self) -> Result<Arc<Auth>, UpstreamError> {
        let endpoint = self.cfg.endpoint.trim_end_matches('/');
        let url = format!("{endpoint}/b2api/v4/b2_authorize_account");
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.cfg.key_id, self.cfg.application_key));
        let resp: AuthorizeResponse = retry(
            &self.policy,
            |e| self.note_retry(e),
            |_| async {
                let req = self
                    .http
                    .get(&url)
                    .header(AUTHORIZATION, format!("Basic {basic}"));
                let (body, _) = self.send(req, "authorize", 'C').await?;
                serde_json::from_slice(&body).map_err(|e| {
                    UpstreamError::BadResponse(format!("b2_authorize_account JSON: {e}"))
                })
            },
        )
        .await
        .map_err(|e| match e.root() {
            // An authorize 401 means the key itself is wrong, whatever code B2 used.
            UpstreamError::TokenExpired | UpstreamError::Unauthorized(_) => {
                UpstreamError::Unauthorized(
                    "b2_authorize_account rejected the key id / application key".into(),
                )
            }
            _ => e,
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
        let resp: ListBucketsResponse = retry(
            &self.policy,
            |e| self.note_retry(e),
            |_| async {
                let req = self
                    .http
                    .post(&url)
                    .header(AUTHORIZATION, auth.token.as_str())
                    .json(&body);
                let (bytes, _) = self.send(req, "list_buckets", 'C').await?;
                serde_json::from_slice(&bytes)
                    .map_err(|e| UpstreamError::BadResponse(format!("b2_list_buckets JSON: {e}")))
            },
        )
        .await?;
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
        tracing::debug!(error = %e, "retrying upstream call");
    }

    /// Sends one request with the attempt timeout, classifies the status, and returns the body.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        op: &'static str,
        class: char,
    ) -> Result<(Bytes, HeaderMap), UpstreamError> {
        let start = Instant::now();
        self.metrics.b2_transaction(class);
        self.metrics.upstream_inflight.inc();
        let result = tokio::time::timeout(self.timeout, async {
            let resp = req.send().await.map_err(|e| {
                if e.is_connect() {
                    UpstreamError::Connect(error_chain(&e))
                } else {
                    UpstreamError::Body(error_chain(&e))
                }
            })?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp
                .bytes()
                .await
                .map_err(|e| UpstreamError::Body(error_chain(&e)))?;
            Ok::<_, UpstreamError>((status, headers, body))
        })
        .await
        .unwrap_or(Err(UpstreamError::Timeout(self.timeout)));
        self.metrics.upstream_inflight.dec();
        self.metrics
            .upstream_duration
            .with_label_values(&[op])
            .observe(start.elapsed().as_secs_f64());
        let (status, headers, body) = match result {
            Ok(v) => v,
            Err(e) => {
                self.metrics
                    .upstream_requests
                    .with_label_values(&[op, e.reason()])
                    .inc();
                return Err(e);
            }
        };
        self.metrics
            .upstream_requests
            .with_label_values(&[op, status_label(status)])
            .inc();
        self.metrics.upstream_bytes.inc_by(body.len() as u64);
        if (200..300).contains(&status) {
            return Ok((body, headers));
        }
        Err(classify_error(status, &headers, &body))
    }

    async fn list_once(&self) -> Result<Vec<ObjectInfo>, UpstreamError> {
        let mut out = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let page: ListFilesResponse = retry(
                &self.policy,
                |e| self.note_retry(e),
                |_| {
                    let start = start.clone();
                    async move {
                        let auth = self.auth().await?;
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
                        let r = self.send(req, "list_file_names", 'C').await;
                        let (bytes, _) = self.renew_on_expiry(r, &auth).await?;
                        serde_json::from_slice(&bytes).map_err(|e| {
                            UpstreamError::BadResponse(format!("b2_list_file_names JSON: {e}"))
                        })
                    }
                },
            )
            .await?;
            for f in page.files {
                if f.action != "upload" {
                    continue;
                }
                let Some(id) = f.file_id else { continue };
                out.push(ObjectInfo {
                    name: f.file_name,
                    id: id.into(),
                    size: f.content_length,
                    modified_ms: f.upload_timestamp,
                });
            }
            match page.next_file_name {
                Some(next) if Some(&next) != start.as_ref() => start = Some(next),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// On an expired-token answer, renews the token (once for every request that used the same one) and
    /// passes the error on, so the retry loop tries again at once with the new token.
    async fn renew_on_expiry<T>(
        &self,
        r: Result<T, UpstreamError>,
        used: &Auth,
    ) -> Result<T, UpstreamError> {
        if let Err(UpstreamError::TokenExpired) = &r {
            self.reauthorize(Some(&used.token)).await?;
        }
        r
    }

    async fn download_once(
        &self,
        obj: &ObjectInfo,
        range: Range<u64>,
    ) -> Result<Bytes, UpstreamError> {
        let auth = self.auth().await?;
        let _permit = self
            .downloads
            .acquire()
            .await
            .map_err(|_| UpstreamError::Config("download semaphore closed".into()))?;
        let url = format!(
            "{}/b2api/v4/b2_download_file_by_id?fileId={}",
            auth.download_url,
            percent_encoding::utf8_percent_encode(&obj.id, percent_encoding::NON_ALPHANUMERIC)
        );
        let last = range.end - 1;
        let req = self
            .http
            .get(url)
            .header(AUTHORIZATION, auth.token.as_str())
            .header(
                reqwest::header::RANGE,
                format!("bytes={}-{}", range.start, last),
            );
        let r = self.send(req, "download", 'B').await;
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
        verify_download(obj, &range, &headers, &body)?;
        Ok(body)
    }
}

/// Checks that a download answer is exactly `range` of `obj`.
pub fn verify_download(
    obj: &ObjectInfo,
    range: &Range<u64>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(), UpstreamError> {
    let want = range.end - range.start;
    if let Some(id) = headers.get("x-bz-file-id").and_then(|v| v.to_str().ok())
        && id != &*obj.id
    {
        return Err(UpstreamError::Changed(format!(
            "asked for file id {} but got {id}",
            obj.id
        )));
    }
    match headers.get(CONTENT_RANGE).and_then(|v| v.to_str().ok()) {
        Some(cr) => {
            let Some((a, b, size)) = parse_content_range(cr) else {
                return Err(UpstreamError::BadResponse(format!(
                    "unparseable Content-Range `{cr}`"
                )));
            };
            if size != obj.size {
                return Err(UpstreamError::Changed(format!(
                    "{} is now {size} bytes, catalog says {}",
                    obj.name, obj.size
                )));
            }
            if a != range.start || b != range.end - 1 {
                return Err(UpstreamError::BadResponse(format!(
                    "asked for bytes {}-{}, Content-Range says {a}-{b}",
                    range.start,
                    range.end - 1
                )));
            }
        }
        // Only a request for the whole file may come back without Content-Range (B2 answers `bytes=0-` with 200).
        None if range.start == 0 && want == obj.size => {}
        None => {
            return Err(UpstreamError::BadResponse(
                "range answer without Content-Range".into(),
            ));
        }
    }
    if body.len() as u64 != want {
        return Err(UpstreamError::Body(format!(
            "expected {want} body bytes, got {}",
            body.len()
        )));
    }
    Ok(())
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

/// The error and its sources in one line (reqwest's top-level message alone says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl ObjectSource for B2Source {
    fn list(&self) -> BoxFuture<'_, Result<Vec<ObjectInfo>, UpstreamError>> {
        async move {
            let r = self.list_once().await;
            match &r {
                Ok(_) => self.set_health(true, None),
                Err(e) => self.set_health(self.current_auth().is_some(), Some(e)),
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
        async move {
            retry(
                &self.policy,
                |e| self.note_retry(e),
                |_| self.download_once(&obj, range.clone()),
            )
            .await
        }
        .boxed()
    }

    fn read_once(
        &self,
        obj: &ObjectInfo,
        range: Range<u64>,
    ) -> BoxFuture<'_, Result<Bytes, UpstreamError>> {
        let obj = obj.clone();
        async move { self.download_once(&obj, range).await }.boxed()
    }

    fn health(&self) -> SourceHealth {
        self.health.lock().map(|h| h.clone()).unwrap_or_default()
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
    fn content_range() {
        assert_eq!(parse_content_range("bytes 0-9/100"), Some((0, 9, 100)));
        assert_eq!(parse_content_range("bytes 9-0/100"), None);
        assert_eq!(parse_content_range("bytes 0-100/100"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 0-9/100"), None);
    }

    fn obj(size: u64) -> ObjectInfo {
        ObjectInfo {
            name: "a".into(),
            id: "id1".into(),
            size,
            modified_ms: 0,
        }
    }

    fn headers(cr: Option<&str>, id: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(cr) = cr {
            h.insert(CONTENT_RANGE, cr.parse().expect("header"));
        }
        if let Some(id) = id {
            h.insert("x-bz-file-id", id.parse().expect("header"));
        }
        h
    }

    #[test]
    fn verification() {
        let o = obj(100);
        let body = Bytes::from(vec![0u8; 10]);
        assert!(
            verify_download(
                &o,
                &(0..10),
                &headers(Some("bytes 0-9/100"), Some("id1")),
                &body
            )
            .is_ok()
        );
        // shifted range, wrong size, wrong id, short body, missing Content-Range
        assert!(
            verify_download(&o, &(0..10), &headers(Some("bytes 1-10/100"), None), &body).is_err()
        );
        assert!(matches!(
            verify_download(&o, &(0..10), &headers(Some("bytes 0-9/101"), None), &body),
            Err(UpstreamError::Changed(_))
        ));
        assert!(matches!(
            verify_download(
                &o,
                &(0..10),
                &headers(Some("bytes 0-9/100"), Some("id2")),
                &body
            ),
            Err(UpstreamError::Changed(_))
        ));
        assert!(
            verify_download(&o, &(0..11), &headers(Some("bytes 0-10/100"), None), &body).is_err()
        );
        assert!(verify_download(&o, &(0..10), &headers(None, None), &body).is_err());
        let whole = obj(10);
        assert!(verify_download(&whole, &(0..10), &headers(None, None), &body).is_ok());
    }

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
            let _ = parse_content_range(&s);
        }

        #[test]
        fn content_range_roundtrip(a in 0u64..1<<40, len in 1u64..1<<20, extra in 0u64..1<<20) {
            let size = a + len + extra;
            let s = format!("bytes {}-{}/{}", a, a + len - 1, size);
            proptest::prop_assert_eq!(parse_content_range(&s), Some((a, a + len - 1, size)));
        }
    }
}
