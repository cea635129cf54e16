//! Accounts and tokens: `b2_authorize_account` in its v2, v3 and v4 shapes, the token store
//! (random tokens with an expiry), and the access checks every other call makes.
//!
//! There is one application key. It is restricted to the emulator's bucket by default (v4
//! `allowed.buckets = [{id, name}]`, v2/v3 `bucketId`/`bucketName`) or unrestricted
//! (`buckets: null`, `bucketId: null`), and may carry a `namePrefix`; a key with a prefix only
//! sees names under it. Tokens live `token_lifetime` from their issue; an expired token gets 401
//! `expired_auth_token`, an unknown one 401 `bad_auth_token`, a missing one 401 `unauthorized`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::HeaderMap;
use base64::Engine;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::error::B2Error;

/// Capabilities of the emulator's key.
pub const CAPABILITIES: [&str; 4] = [
    "listAllBucketNames",
    "listBuckets",
    "listFiles",
    "readFiles",
];

/// Who the emulator is: account, key and bucket.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    pub account_id: String,
    pub key_id: String,
    pub application_key: String,
    pub bucket_name: String,
    pub bucket_id: String,
    /// Key restricted to the bucket (true) or to all buckets (false).
    pub restricted: bool,
    pub name_prefix: Option<String>,
    /// `http://127.0.0.1:PORT`, used as apiUrl, downloadUrl and s3ApiUrl.
    pub base_url: String,
}

impl Identity {
    /// Whether the key may see `name`.
    pub fn name_allowed(&self, name: &str) -> bool {
        self.name_prefix
            .as_deref()
            .is_none_or(|prefix| name.starts_with(prefix))
    }

    /// Checks `Authorization: Basic base64(keyId:applicationKey)`.
    pub fn check_basic(&self, headers: &HeaderMap) -> Result<(), B2Error> {
        let value = headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| B2Error::unauthorized("missing Authorization header"))?;
        let text = value
            .to_str()
            .map_err(|_| B2Error::unauthorized("Authorization header is not ASCII"))?;
        let (scheme, encoded) = text
            .split_once(' ')
            .ok_or_else(|| B2Error::unauthorized("Authorization must be Basic"))?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(B2Error::unauthorized("Authorization must be Basic"));
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| B2Error::unauthorized("Authorization is not valid base64"))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| B2Error::unauthorized("Authorization is not UTF-8"))?;
        match decoded.split_once(':') {
            Some((id, key)) if id == self.key_id && key == self.application_key => Ok(()),
            _ => Err(B2Error::unauthorized(
                "Invalid applicationKeyId or applicationKey",
            )),
        }
    }

    /// The `b2_authorize_account` answer for API version `version` (1..=4; 1 and 2 share the
    /// flat shape).
    pub fn authorize_body(&self, version: u8, token: &str) -> Value {
        let bucket_id = self.restricted.then_some(self.bucket_id.as_str());
        let bucket_name = self.restricted.then_some(self.bucket_name.as_str());
        let url = self.base_url.as_str();
        match version {
            1 | 2 => json!({
                "accountId": self.account_id,
                "authorizationToken": token,
                "apiUrl": url,
                "downloadUrl": url,
                "s3ApiUrl": url,
                "recommendedPartSize": 100_000_000u64,
                "absoluteMinimumPartSize": 5_000_000u64,
                "minimumPartSize": 5_000_000u64,
                "applicationKeyExpirationTimestamp": null,
                "allowed": {
                    "bucketId": bucket_id,
                    "bucketName": bucket_name,
                    "capabilities": CAPABILITIES,
                    "namePrefix": self.name_prefix,
                },
            }),
            3 => json!({
                "accountId": self.account_id,
                "authorizationToken": token,
                "applicationKeyExpirationTimestamp": null,
                "apiInfo": {
                    "storageApi": {
                        "infoType": "storageApi",
                        "apiUrl": url,
                        "downloadUrl": url,
                        "s3ApiUrl": url,
                        "recommendedPartSize": 100_000_000u64,
                        "absoluteMinimumPartSize": 5_000_000u64,
                        "bucketId": bucket_id,
                        "bucketName": bucket_name,
                        "capabilities": CAPABILITIES,
                        "namePrefix": self.name_prefix,
                    },
                },
            }),
            _ => {
                let buckets = self
                    .restricted
                    .then(|| json!([{ "id": self.bucket_id, "name": self.bucket_name }]));
                json!({
                    "accountId": self.account_id,
                    "authorizationToken": token,
                    "applicationKeyExpirationTimestamp": null,
                    "apiInfo": {
                        "storageApi": {
                            "infoType": "storageApi",
                            "apiUrl": url,
                            "downloadUrl": url,
                            "s3ApiUrl": url,
                            "recommendedPartSize": 100_000_000u64,
                            "absoluteMinimumPartSize": 5_000_000u64,
                            "allowed": {
                                "buckets": buckets,
                                "capabilities": CAPABILITIES,
                                "namePrefix": self.name_prefix,
                            },
                        },
                    },
                })
            }
        }
    }
}

/// Issued tokens and their expiry.
#[derive(Default)]
pub(crate) struct TokenStore {
    tokens: Mutex<HashMap<String, Instant>>,
}

impl TokenStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new random token valid for `lifetime`.
    pub fn issue(&self, lifetime: Duration) -> String {
        let random: String = rand::rng()
            .sample_iter(&Alphanumeric)
            .take(48)
            .map(char::from)
            .collect();
        let token = format!("4_emu{random}");
        let now = Instant::now();
        let expiry = now
            .checked_add(lifetime)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86400));
        self.lock().insert(token.clone(), expiry);
        token
    }

    /// Checks a token.
    pub fn check(&self, token: &str) -> Result<(), B2Error> {
        match self.lock().get(token) {
            None => Err(B2Error::bad_auth_token()),
            Some(expiry) if Instant::now() >= *expiry => Err(B2Error::expired_auth_token()),
            Some(_) => Ok(()),
        }
    }

    /// Expires every token issued so far.
    pub fn expire_all(&self) {
        let now = Instant::now();
        for expiry in self.lock().values_mut() {
            *expiry = (*expiry).min(now);
        }
    }
}

/// The raw token of an API call (`Authorization: <token>`), or 401 `unauthorized` if missing.
pub(crate) fn header_token(headers: &HeaderMap) -> Result<&str, B2Error> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| B2Error::unauthorized("missing Authorization header"))?;
    value
        .to_str()
        .map(str::trim)
        .map_err(|_| B2Error::bad_auth_token())
}
