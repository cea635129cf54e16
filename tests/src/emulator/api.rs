//! HTTP routes: the B2 API calls (authorize, list buckets, list file names), dispatch of
//! downloads, the `/_emu/*` control routes, and the status-counting middleware.
//!
//! B2 routes: `/b2api/{v1..v4}/{call}` and `/file/{bucket}/{name}`. API calls accept their
//! parameters as a query string (GET) or a JSON body (POST), or both (the body wins).
//! Every B2 request (not `/_emu/*`) is counted, answers 503 at once while offline, waits the
//! injected latency, and may get a fault: API calls only with `faults.on_api`, and only
//! 503/429/500.
//!
//! Control routes (never delayed, never faulted, work while offline):
//! - `GET /_emu/stats`: [`Stats`](super::Stats) JSON; `POST /_emu/reset`: zero the counters.
//! - `GET /_emu/config`: the [`Knobs`] JSON; `POST /_emu/config`: merge a JSON object into
//!   the knobs (nested objects merge, other values replace); `"expire_tokens": true` in the
//!   same object also expires every token. Answers the new knobs, or 400.
//! - `POST /_emu/expire-tokens`: expire every token issued so far.
//! - `GET /_emu/files`: every file (name, id, size, source); `POST /_emu/files`
//!   `{"name":..,"size":..}` adds or replaces a virtual file (size: bytes or `"108GiB"`);
//!   `POST /_emu/files/replace` `{"name":..}`: new version; `POST /_emu/files/remove`
//!   `{"name":..}`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::Method;
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Shared;
use super::auth::header_token;
use super::config::{Fault, Knobs, parse_size};
use super::download::{self, Target};
use super::error::B2Error;
use super::files::{CONTENT_TYPE, ListEntry};
use super::stats::Call;

/// Largest JSON body accepted by API calls and control routes.
const MAX_BODY: usize = 1 << 20;

/// Most names `b2_list_file_names` returns per call.
pub const MAX_FILE_COUNT: u64 = 10_000;
const DEFAULT_FILE_COUNT: u64 = 100;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/b2api/{version}/{call}", any(b2_call))
        .route("/file/{*rest}", any(download::by_name))
        .route("/_emu/stats", get(get_stats))
        .route("/_emu/reset", post(post_reset))
        .route("/_emu/config", get(get_config).post(post_config))
        .route("/_emu/expire-tokens", post(post_expire_tokens))
        .route("/_emu/files", get(get_files).post(post_add_file))
        .route("/_emu/files/replace", post(post_replace_file))
        .route("/_emu/files/remove", post(post_remove_file))
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(shared.clone(), count_status))
        .with_state(shared)
}

async fn count_status(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let control = req.uri().path().starts_with("/_emu/");
    let response = next.run(req).await;
    if !control {
        shared.stats.status(response.status().as_u16());
    }
    response
}

async fn fallback(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    if !req.uri().path().starts_with("/_emu/") {
        shared.stats.request(Call::Other);
    }
    B2Error::not_found(format!(
        "no such route: {} {}",
        req.method(),
        req.uri().path()
    ))
    .into_response()
}

fn parse_version(v: &str) -> Option<u8> {
    match v {
        "v1" => Some(1),
        "v2" => Some(2),
        "v3" => Some(3),
        "v4" => Some(4),
        _ => None,
    }
}

async fn b2_call(
    State(shared): State<Arc<Shared>>,
    Path((version, call)): Path<(String, String)>,
    req: Request,
) -> Response {
    let Some(version) = parse_version(&version) else {
        shared.stats.request(Call::Other);
        return B2Error::not_found(format!("unknown API version {version:?}")).into_response();
    };
    let kind = match call.as_str() {
        "b2_authorize_account" => Call::Authorize,
        "b2_list_buckets" => Call::ListBuckets,
        "b2_list_file_names" => Call::ListFileNames,
        "b2_download_file_by_id" => return download::serve(shared, req, Target::ById).await,
        _ => {
            shared.stats.request(Call::Other);
            return B2Error::not_found(format!("unsupported API call {call:?}")).into_response();
        }
    };
    shared.stats.request(kind);
    match api_call(&shared, kind, version, req).await {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn api_call(
    shared: &Arc<Shared>,
    kind: Call,
    version: u8,
    req: Request,
) -> Result<Value, B2Error> {
    let knobs = shared.knobs();
    if knobs.offline {
        shared.stats.offline();
        return Err(B2Error::service_unavailable(
            "The emulator is offline (simulated B2 outage)",
        ));
    }
    shared.sleep(shared.chaos.latency(&knobs.latency)).await?;
    let (parts, params) = read_params(req).await?;
    let result = match kind {
        Call::Authorize => authorize(shared, version, &parts),
        Call::ListBuckets => list_buckets(shared, &parts, &params),
        _ => list_file_names(shared, version, &parts, &params),
    }?;
    if knobs.faults.on_api
        && let Some(fault) = shared.chaos.fault(&knobs.faults, &Fault::API)
    {
        shared.stats.fault(fault);
        return Err(download::fault_error(fault, &knobs));
    }
    Ok(result)
}

/// Query parameters plus, for a request with a body, the JSON object's members (as strings).
async fn read_params(req: Request) -> Result<(Parts, HashMap<String, String>), B2Error> {
    let (parts, body) = req.into_parts();
    let mut params: HashMap<String, String> =
        match Query::<HashMap<String, String>>::try_from_uri(&parts.uri) {
            Ok(Query(q)) => q,
            Err(e) => return Err(B2Error::bad_request(format!("bad query string: {e}"))),
        };
    if parts.method != Method::GET && parts.method != Method::HEAD {
        let bytes = axum::body::to_bytes(body, MAX_BODY)
            .await
            .map_err(|e| B2Error::bad_request(format!("cannot read the body: {e}")))?;
        if !bytes.iter().all(u8::is_ascii_whitespace) {
            let object: Map<String, Value> = serde_json::from_slice(&bytes)
                .map_err(|e| B2Error::bad_request(format!("the body is not a JSON object: {e}")))?;
            for (k, v) in object {
                let text = match v {
                    Value::Null => continue,
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                params.insert(k, text);
            }
        }
    }
    Ok((parts, params))
}

fn authorize(shared: &Shared, version: u8, parts: &Parts) -> Result<Value, B2Error> {
    shared.identity.check_basic(&parts.headers)?;
    let token = shared.tokens.issue(shared.knobs().token_lifetime);
    Ok(shared.identity.authorize_body(version, &token))
}

fn check_token(shared: &Shared, parts: &Parts) -> Result<(), B2Error> {
    let token = header_token(&parts.headers)?;
    shared.tokens.check(token)
}

fn list_buckets(
    shared: &Shared,
    parts: &Parts,
    params: &HashMap<String, String>,
) -> Result<Value, B2Error> {
    check_token(shared, parts)?;
    let id = &shared.identity;
    let account = params
        .get("accountId")
        .ok_or_else(|| B2Error::bad_request("required field accountId is missing"))?;
    if *account != id.account_id {
        return Err(B2Error::unauthorized(format!(
            "accountId {account} does not match the authorization token"
        )));
    }
    let want_id = params.get("bucketId").filter(|s| !s.is_empty());
    let want_name = params.get("bucketName").filter(|s| !s.is_empty());
    let matches = want_id.is_none_or(|b| *b == id.bucket_id)
        && want_name.is_none_or(|b| *b == id.bucket_name);
    if id.restricted {
        if want_id.is_none() && want_name.is_none() {
            return Err(B2Error::unauthorized(format!(
                "The key is restricted to bucket {}; give bucketId or bucketName",
                id.bucket_name
            )));
        }
        if !matches {
            return Err(B2Error::unauthorized(format!(
                "The key is restricted to bucket {}",
                id.bucket_name
            )));
        }
    }
    let buckets: Vec<Value> = if matches {
        vec![json!({
            "accountId": id.account_id,
            "bucketId": id.bucket_id,
            "bucketName": id.bucket_name,
            "bucketType": "allPrivate",
            "bucketInfo": {},
            "corsRules": [],
            "lifecycleRules": [],
            "options": [],
            "revision": 1,
        })]
    } else {
        Vec::new()
    };
    Ok(json!({ "buckets": buckets }))
}

fn list_file_names(
    shared: &Shared,
    version: u8,
    parts: &Parts,
    params: &HashMap<String, String>,
) -> Result<Value, B2Error> {
    check_token(shared, parts)?;
    let id = &shared.identity;
    let bucket = params
        .get("bucketId")
        .ok_or_else(|| B2Error::bad_request("required field bucketId is missing"))?;
    if *bucket != id.bucket_id {
        return Err(B2Error::bad_request(format!("Invalid bucketId: {bucket}")));
    }
    let max = match params.get("maxFileCount") {
        None => DEFAULT_FILE_COUNT,
        Some(text) => match text.trim().parse::<u64>() {
            Ok(0) => DEFAULT_FILE_COUNT,
            Ok(n) if n <= MAX_FILE_COUNT => n,
            Ok(n) => {
                return Err(B2Error::bad_request(format!(
                    "maxFileCount must be at most {MAX_FILE_COUNT}, got {n}"
                )));
            }
            Err(_) => {
                return Err(B2Error::bad_request(format!(
                    "maxFileCount is not a number: {text:?}"
                )));
            }
        },
    };
    let prefix = params.get("prefix").map(String::as_str).unwrap_or("");
    if let Some(key_prefix) = &id.name_prefix
        && !prefix.starts_with(key_prefix.as_str())
    {
        return Err(B2Error::unauthorized(format!(
            "The key is restricted to names starting with {key_prefix:?}; prefix must start with it"
        )));
    }
    let start = params
        .get("startFileName")
        .map(String::as_str)
        .unwrap_or("");
    let delimiter = params
        .get("delimiter")
        .map(String::as_str)
        .filter(|d| !d.is_empty());
    let (entries, next) = shared.files.list(start, prefix, delimiter, max as usize);
    let files: Vec<Value> = entries
        .iter()
        .map(|entry| match entry {
            ListEntry::File(f) => json!({
                "accountId": id.account_id,
                "action": "upload",
                "bucketId": id.bucket_id,
                "contentLength": f.size,
                "contentMd5": null,
                "contentSha1": f.content_sha1(),
                "contentType": CONTENT_TYPE,
                "fileId": f.id,
                "fileInfo": {},
                "fileName": f.name,
                "uploadTimestamp": f.upload_timestamp,
            }),
            ListEntry::Folder(name) => json!({
                "accountId": id.account_id,
                "action": "folder",
                "bucketId": id.bucket_id,
                "contentLength": 0,
                "contentMd5": null,
                "contentSha1": null,
                "contentType": null,
                "fileId": null,
                "fileInfo": {},
                "fileName": name,
                "uploadTimestamp": 0,
            }),
        })
        .collect();
    let files = if version == 1 {
        // v1 file objects also carry `size` (the same as contentLength), which v1 clients read.
        files
            .into_iter()
            .map(|mut f| {
                if let Some(o) = f.as_object_mut() {
                    let len = o.get("contentLength").cloned().unwrap_or(Value::from(0));
                    o.insert("size".into(), len);
                }
                f
            })
            .collect()
    } else {
        files
    };
    Ok(json!({ "files": files, "nextFileName": next }))
}

// ---- control routes ----

async fn get_stats(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.stats.snapshot()).into_response()
}

async fn post_reset(State(shared): State<Arc<Shared>>) -> Response {
    shared.stats.reset();
    Json(json!({ "status": "ok" })).into_response()
}

async fn get_config(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.knobs()).into_response()
}

/// Merges `patch` into `base`: objects merge member by member, anything else replaces.
fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, p) => *b = p,
    }
}

async fn read_json(body: Body) -> Result<Value, B2Error> {
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| B2Error::bad_request(format!("cannot read the body: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| B2Error::bad_request(format!("the body is not valid JSON: {e}")))
}

async fn post_config(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let result: Result<Response, B2Error> = async {
        let mut patch = read_json(req.into_body()).await?;
        let Value::Object(obj) = &mut patch else {
            return Err(B2Error::bad_request("the body must be a JSON object"));
        };
        let expire = match obj.remove("expire_tokens") {
            None | Some(Value::Bool(false)) | Some(Value::Null) => false,
            Some(Value::Bool(true)) => true,
            Some(other) => {
                return Err(B2Error::bad_request(format!(
                    "expire_tokens must be a boolean, got {other}"
                )));
            }
        };
        let mut current = serde_json::to_value(shared.knobs())
            .map_err(|e| B2Error::internal_error(e.to_string()))?;
        merge(&mut current, patch);
        let knobs: Knobs = serde_json::from_value(current)
            .map_err(|e| B2Error::bad_request(format!("bad config: {e}")))?;
        shared
            .apply_knobs(knobs)
            .map_err(|e| B2Error::bad_request(e.to_string()))?;
        if expire {
            shared.tokens.expire_all();
        }
        Ok(Json(shared.knobs()).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn post_expire_tokens(State(shared): State<Arc<Shared>>) -> Response {
    shared.tokens.expire_all();
    Json(json!({ "status": "ok" })).into_response()
}

async fn get_files(State(shared): State<Arc<Shared>>) -> Response {
    let files: Vec<_> = shared.files.all().iter().map(|f| (**f).clone()).collect();
    Json(json!({ "files": files })).into_response()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Number(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddFile {
    name: String,
    size: SizeValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameOnly {
    name: String,
}

async fn post_add_file(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let result: Result<Response, B2Error> = async {
        let value = read_json(req.into_body()).await?;
        let add: AddFile = serde_json::from_value(value)
            .map_err(|e| B2Error::bad_request(format!("expected {{\"name\",\"size\"}}: {e}")))?;
        let size = match add.size {
            SizeValue::Number(n) => n,
            SizeValue::Text(t) => parse_size(&t).map_err(B2Error::bad_request)?,
        };
        if add.name.is_empty() {
            return Err(B2Error::bad_request("name must not be empty"));
        }
        let info = shared.files.add_virtual(&add.name, size);
        Ok(Json((*info).clone()).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn name_op(
    req: Request,
    op: impl FnOnce(&str) -> Result<Arc<super::FileInfo>, super::EmulatorError>,
) -> Response {
    let result: Result<Response, B2Error> = async {
        let value = read_json(req.into_body()).await?;
        let NameOnly { name } = serde_json::from_value(value)
            .map_err(|e| B2Error::bad_request(format!("expected {{\"name\"}}: {e}")))?;
        let info = op(&name).map_err(|e| match e {
            super::EmulatorError::NotFound(_) => B2Error::not_found(e.to_string()),
            other => B2Error::internal_error(other.to_string()),
        })?;
        Ok(Json((*info).clone()).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn post_replace_file(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    name_op(req, |name| shared.files.replace(name)).await
}

async fn post_remove_file(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    name_op(req, |name| shared.files.remove(name)).await
}
