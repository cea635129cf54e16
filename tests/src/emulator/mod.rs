//! A Backblaze B2 emulator: an HTTP/1.1 server on 127.0.0.1 that implements, from Backblaze's
//! public API documentation, the native API calls b2fs uses, over a directory of real files and
//! any number of **virtual files** (any size, bytes a cheap deterministic function of name and
//! offset, so a 108 GiB plot needs no disk), with latency, bandwidth and fault injection and
//! counters.
//!
//! ```no_run
//! # async fn demo() -> Result<(), b2fs_tests::emulator::EmulatorError> {
//! use std::time::Duration;
//! use b2fs_tests::emulator::{Emulator, Fault};
//! let emu = Emulator::builder()
//!     .bucket("plots")
//!     .virtual_file("big.plot", 108 << 30)
//!     .latency(Duration::from_millis(50), 0.3)
//!     .seed(7)
//!     .fault(Fault::ServiceUnavailable, 0.02)
//!     .start()
//!     .await?;
//! println!("{} {} {}", emu.endpoint(), emu.key_id(), emu.application_key());
//! emu.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Implemented calls: `b2_authorize_account` (v1/v2, v3 and v4 answer shapes), `b2_list_buckets`,
//! `b2_list_file_names` (paging, prefix, delimiter), download by name and by id (GET and HEAD,
//! Range). Not implemented: uploads, hiding/deleting through the API, file versions listing,
//! the S3-compatible API (`s3ApiUrl` points at the emulator but nothing answers there).
//!
//! Modules:
//! - [`config`]: the knobs (latency, bandwidth, faults, stalls, offline, token lifetime) and
//!   the size/duration parsers.
//! - [`files`]: virtual and directory files, ids, generations and listing.
//! - `auth`: authorize answers, tokens, key restrictions.
//! - `api`: routes, the list calls and the `/_emu/*` control routes.
//! - `download`: downloads, Range, headers, faulted and paced bodies.
//! - `faults`: the seedable RNG behind latency and fault draws, first-attempt stalls.
//! - `bandwidth`: the global pacer shared by all bodies.
//! - [`stats`]: counters and the [`Stats`] snapshot.

mod api;
mod auth;
mod bandwidth;
pub mod config;
mod download;
mod error;
mod faults;
pub mod files;
pub mod ratelimit;
pub mod stats;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use auth::CAPABILITIES;
pub use config::{
    Fault, FaultConfig, Knobs, LatencyConfig, parse_bandwidth, parse_duration, parse_size,
};
pub use download::encode_file_name;
pub use error::EmulatorError;
pub use files::{CONTENT_TYPE, FileInfo, FileSource, name_seed, virtual_bytes, virtual_fill};
pub use stats::{FaultCounts, RangeRecord, RequestCounts, Stats, WatchCounts};

use auth::{Identity, TokenStore};
use bandwidth::Pacer;
use error::B2Error;
use faults::Chaos;
use files::FileStore;
use stats::StatsCollector;

/// Default bucket name.
pub const DEFAULT_BUCKET: &str = "b2fs-test";
/// Default account id.
pub const DEFAULT_ACCOUNT_ID: &str = "e2f5c0ffee01";
/// Default application key id.
pub const DEFAULT_KEY_ID: &str = "00e2f5c0ffee010000000001";
/// Default application key.
pub const DEFAULT_APPLICATION_KEY: &str = "K001b2fsEmulatorSecretKey00000";

/// State shared by every request.
pub(crate) struct Shared {
    identity: Identity,
    knobs: RwLock<Knobs>,
    files: FileStore,
    tokens: TokenStore,
    chaos: Chaos,
    stats: Arc<StatsCollector>,
    pacer: Pacer,
    limiter: ratelimit::Limiter,
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    fn knobs(&self) -> Knobs {
        self.knobs.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Validates and installs new knobs (reseeding the RNG if the seed changed, re-arming the
    /// first-attempt stalls if their delay changed).
    fn apply_knobs(&self, new: Knobs) -> Result<(), EmulatorError> {
        new.validate()?;
        let mut knobs = self.knobs.write().unwrap_or_else(|p| p.into_inner());
        if knobs.seed != new.seed {
            self.chaos.reseed(new.seed);
        }
        if knobs.first_attempt_delay != new.first_attempt_delay {
            self.chaos.clear_first_attempts();
        }
        self.pacer.set_rate(new.bandwidth_rate());
        self.limiter.set(new.rate_limit);
        *knobs = new;
        Ok(())
    }

    fn update_knobs(&self, f: impl FnOnce(&mut Knobs)) -> Result<(), EmulatorError> {
        let mut k = self.knobs();
        f(&mut k);
        self.apply_knobs(k)
    }

    fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Sleeps until `deadline`, or fails when the emulator shuts down.
    async fn sleep_until(&self, deadline: Instant) -> Result<(), B2Error> {
        let mut rx = self.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => Ok(()),
            _ = rx.wait_for(|down| *down) => {
                Err(B2Error::service_unavailable("The emulator is shutting down"))
            }
        }
    }

    async fn sleep(&self, d: Duration) -> Result<(), B2Error> {
        if d.is_zero() {
            return Ok(());
        }
        self.sleep_until(Instant::now() + d).await
    }
}

/// Builds an [`Emulator`]; see the module docs.
#[derive(Clone, Debug)]
pub struct EmulatorBuilder {
    listen: SocketAddr,
    bucket: String,
    bucket_id: Option<String>,
    account_id: String,
    key_id: String,
    application_key: String,
    restricted: bool,
    name_prefix: Option<String>,
    dir: Option<PathBuf>,
    virtual_files: Vec<(String, u64)>,
    bulk: Vec<(String, usize, u64)>,
    knobs: Knobs,
}

impl Default for EmulatorBuilder {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            bucket: DEFAULT_BUCKET.to_string(),
            bucket_id: None,
            account_id: DEFAULT_ACCOUNT_ID.to_string(),
            key_id: DEFAULT_KEY_ID.to_string(),
            application_key: DEFAULT_APPLICATION_KEY.to_string(),
            restricted: true,
            name_prefix: None,
            dir: None,
            virtual_files: Vec::new(),
            bulk: Vec::new(),
            knobs: Knobs::default(),
        }
    }
}

impl EmulatorBuilder {
    /// Address to listen on (default `127.0.0.1:0`, a free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Bucket name (default [`DEFAULT_BUCKET`]).
    pub fn bucket(mut self, name: impl Into<String>) -> Self {
        self.bucket = name.into();
        self
    }

    /// Bucket id (default: 24 hex digits derived from the name).
    pub fn bucket_id(mut self, id: impl Into<String>) -> Self {
        self.bucket_id = Some(id.into());
        self
    }

    /// Account id (default [`DEFAULT_ACCOUNT_ID`]).
    pub fn account_id(mut self, id: impl Into<String>) -> Self {
        self.account_id = id.into();
        self
    }

    /// Application key id and key (defaults [`DEFAULT_KEY_ID`], [`DEFAULT_APPLICATION_KEY`]).
    pub fn credentials(mut self, key_id: impl Into<String>, key: impl Into<String>) -> Self {
        self.key_id = key_id.into();
        self.application_key = key.into();
        self
    }

    /// Makes the key unrestricted (all buckets: `allowed.buckets` null); by default it is
    /// restricted to the bucket.
    pub fn unrestricted_key(mut self, unrestricted: bool) -> Self {
        self.restricted = !unrestricted;
        self
    }

    /// Restricts the key to names starting with `prefix`.
    pub fn name_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.name_prefix = Some(prefix.into());
        self
    }

    /// Serves every regular file under `dir` (recursively) by its relative path.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Adds a virtual file.
    pub fn virtual_file(mut self, name: impl Into<String>, size: u64) -> Self {
        self.virtual_files.push((name.into(), size));
        self
    }

    /// Adds `count` virtual files named `{prefix}{i:06}.plot`, `i` in `0..count`.
    pub fn virtual_files(mut self, prefix: impl Into<String>, count: usize, size: u64) -> Self {
        self.bulk.push((prefix.into(), count, size));
        self
    }

    /// Sets every knob at once.
    pub fn knobs(mut self, knobs: Knobs) -> Self {
        self.knobs = knobs;
        self
    }

    /// Lognormal latency with this median and sigma.
    pub fn latency(mut self, median: Duration, sigma: f64) -> Self {
        self.knobs.latency.median = median;
        self.knobs.latency.sigma = sigma;
        self
    }

    /// Adds `delay` to a request with probability `probability`.
    pub fn tail(mut self, probability: f64, delay: Duration) -> Self {
        self.knobs.latency.tail_probability = probability;
        self.knobs.latency.tail_delay = delay;
        self
    }

    /// Seeds the latency/fault RNG.
    pub fn seed(mut self, seed: u64) -> Self {
        self.knobs.seed = Some(seed);
        self
    }

    /// Global bandwidth cap in bytes/s (0 = unlimited).
    pub fn bandwidth(mut self, bytes_per_second: u64) -> Self {
        self.knobs.bandwidth = (bytes_per_second > 0).then_some(bytes_per_second);
        self
    }

    /// Injects `fault` with `probability` per request.
    pub fn fault(mut self, fault: Fault, probability: f64) -> Self {
        self.knobs.faults.set(fault, probability);
        self
    }

    /// Also injects 503/429/500 into API calls.
    pub fn faults_on_api(mut self, on: bool) -> Self {
        self.knobs.faults.on_api = on;
        self
    }

    /// `Retry-After` seconds of injected 429s (default 1).
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.knobs.faults.retry_after_secs = secs;
        self
    }

    /// Stalls the first download of each distinct (file, range) by `delay`.
    pub fn first_attempt_delay(mut self, delay: Duration) -> Self {
        self.knobs.first_attempt_delay = Some(delay);
        self
    }

    /// Starts offline (every B2 request answers 503).
    pub fn offline(mut self, offline: bool) -> Self {
        self.knobs.offline = offline;
        self
    }

    /// An account-wide download rate limit: `rps` per second with a bucket of `burst` (0: one second's worth).
    pub fn rate_limit(mut self, rps: f64, burst: f64) -> Self {
        self.knobs.rate_limit = ratelimit::RateLimit { rps, burst };
        self
    }

    /// Token lifetime (default 24 h).
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.knobs.token_lifetime = lifetime;
        self
    }

    /// Binds, loads the files and starts serving on the current tokio runtime.
    pub async fn start(self) -> Result<Emulator, EmulatorError> {
        self.knobs.validate()?;
        if self.bucket.is_empty() {
            return Err(EmulatorError::Config(
                "bucket name must not be empty".into(),
            ));
        }
        let bucket_id = self
            .bucket_id
            .clone()
            .unwrap_or_else(|| format!("b2f5{:020x}", name_seed(&self.bucket) >> 4));
        let files = FileStore::new(&bucket_id);
        if let Some(dir) = &self.dir {
            let dir = dir.clone();
            let found = tokio::task::spawn_blocking(move || files::scan_dir(&dir))
                .await
                .map_err(|e| EmulatorError::Server(e.to_string()))??;
            for (name, path, size, mtime) in found {
                files.add_disk(&name, path, size, mtime);
            }
        }
        for (prefix, count, size) in &self.bulk {
            files.add_virtual_bulk(prefix, *count, *size);
        }
        for (name, size) in &self.virtual_files {
            files.add_virtual(name, *size);
        }

        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .map_err(|source| EmulatorError::Bind {
                addr: self.listen,
                source,
            })?;
        let mut addr = listener
            .local_addr()
            .map_err(|e| EmulatorError::Server(e.to_string()))?;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        let base_url = format!("http://{addr}");

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let stats = Arc::new(StatsCollector::default());
        let shared = Arc::new(Shared {
            identity: Identity {
                account_id: self.account_id,
                key_id: self.key_id,
                application_key: self.application_key,
                bucket_name: self.bucket,
                bucket_id,
                restricted: self.restricted,
                name_prefix: self.name_prefix,
                base_url: base_url.clone(),
            },
            chaos: Chaos::new(self.knobs.seed),
            pacer: Pacer::new(self.knobs.bandwidth_rate()),
            limiter: ratelimit::Limiter::new(self.knobs.rate_limit),
            knobs: RwLock::new(self.knobs),
            files,
            tokens: TokenStore::default(),
            stats: stats.clone(),
            shutdown: shutdown_rx.clone(),
        });

        let app = api::router(shared.clone());
        let listener = listener.tap_io(move |tcp| {
            stats.connection_opened();
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("cannot set TCP_NODELAY: {e}");
            }
        });
        let mut signal = shutdown_rx;
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = signal.wait_for(|down| *down).await;
        });
        let task = tokio::spawn(async move { server.await });
        Ok(Emulator {
            shared,
            addr,
            base_url,
            shutdown_tx,
            task: Mutex::new(Some(task)),
        })
    }
}

/// A running emulator. Dropping it stops the server (without waiting); prefer
/// [`Emulator::shutdown`].
pub struct Emulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    base_url: String,
    shutdown_tx: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<std::io::Result<()>>>>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("endpoint", &self.base_url)
            .field("bucket", &self.shared.identity.bucket_name)
            .finish_non_exhaustive()
    }
}

/// A b2-proxy `[b2]` section as TOML (the strings are ASCII credentials, names and URLs, so Rust's quoting is
/// TOML's).
pub fn b2_section_toml(b2: &b2_proxy::config::B2Config) -> String {
    format!(
        "[b2]\nkey_id = {:?}\napplication_key = {:?}\nbucket = {:?}\nendpoint = {:?}\n",
        b2.key_id,
        b2.application_key,
        b2.bucket.as_deref().unwrap_or_default(),
        b2.endpoint
    )
}

impl Emulator {
    /// A builder with the defaults.
    pub fn builder() -> EmulatorBuilder {
        EmulatorBuilder::default()
    }

    /// `http://127.0.0.1:PORT`: the endpoint to authorize against, also apiUrl and downloadUrl.
    pub fn endpoint(&self) -> &str {
        &self.base_url
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Application key id.
    pub fn key_id(&self) -> &str {
        &self.shared.identity.key_id
    }

    /// Application key.
    pub fn application_key(&self) -> &str {
        &self.shared.identity.application_key
    }

    /// Account id.
    pub fn account_id(&self) -> &str {
        &self.shared.identity.account_id
    }

    /// The `[b2]` section of a b2-proxy configuration that serves this emulator's bucket.
    pub fn proxy_b2_config(&self) -> b2_proxy::config::B2Config {
        b2_proxy::config::B2Config {
            key_id: self.key_id().to_owned(),
            application_key: self.application_key().to_owned(),
            bucket: Some(self.bucket_name().to_owned()),
            bucket_id: None,
            prefix: String::new(),
            endpoint: self.endpoint().to_owned(),
        }
    }

    /// The same `[b2]` section as TOML, for a b2-proxy process.
    pub fn proxy_b2_toml(&self) -> String {
        b2_section_toml(&self.proxy_b2_config())
    }

    /// Bucket name.
    pub fn bucket_name(&self) -> &str {
        &self.shared.identity.bucket_name
    }

    /// Bucket id.
    pub fn bucket_id(&self) -> &str {
        &self.shared.identity.bucket_id
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats.snapshot()
    }

    /// Counts downloads that touch the first `head` or the last `tail` bytes of a file in
    /// [`Stats::watched`] (0 turns one off).
    pub fn watch(&self, head: u64, tail: u64) {
        self.shared.stats.set_watch(head, tail);
    }

    /// Download GETs so far, cheaply (no snapshot of the recent ranges).
    pub fn downloads(&self) -> u64 {
        self.shared.stats.downloads()
    }

    /// Zeroes the counters (the peak restarts from the downloads in flight now).
    pub fn reset_stats(&self) {
        self.shared.stats.reset();
    }

    /// The current knobs.
    pub fn knobs(&self) -> Knobs {
        self.shared.knobs()
    }

    /// Replaces every knob (validated).
    pub fn set_knobs(&self, knobs: Knobs) -> Result<(), EmulatorError> {
        self.shared.apply_knobs(knobs)
    }

    /// Changes knobs in place (validated).
    pub fn update_knobs(&self, f: impl FnOnce(&mut Knobs)) -> Result<(), EmulatorError> {
        self.shared.update_knobs(f)
    }

    /// Sets the latency distribution.
    pub fn set_latency(&self, latency: LatencyConfig) -> Result<(), EmulatorError> {
        self.shared.update_knobs(|k| k.latency = latency)
    }

    /// Sets every fault probability.
    pub fn set_faults(&self, faults: FaultConfig) -> Result<(), EmulatorError> {
        self.shared.update_knobs(|k| k.faults = faults)
    }

    /// Sets one fault probability.
    pub fn set_fault(&self, fault: Fault, probability: f64) -> Result<(), EmulatorError> {
        self.shared
            .update_knobs(|k| k.faults.set(fault, probability))
    }

    /// Sets the global bandwidth cap (`None` or 0 = unlimited).
    pub fn set_bandwidth(&self, bytes_per_second: Option<u64>) {
        let rate = bytes_per_second.filter(|b| *b > 0);
        // Cannot fail: bandwidth is not validated.
        let _ = self.shared.update_knobs(|k| k.bandwidth = rate);
    }

    /// Sets (and re-arms) the first-attempt stall.
    pub fn set_first_attempt_delay(&self, delay: Option<Duration>) {
        let _ = self.shared.update_knobs(|k| k.first_attempt_delay = delay);
        self.shared.chaos.clear_first_attempts();
    }

    /// Goes offline (every B2 request answers 503 at once) or back online.
    pub fn set_offline(&self, offline: bool) {
        let _ = self.shared.update_knobs(|k| k.offline = offline);
    }

    /// Lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) -> Result<(), EmulatorError> {
        self.shared.update_knobs(|k| k.token_lifetime = lifetime)
    }

    /// Expires every token issued so far.
    pub fn expire_tokens(&self) {
        self.shared.tokens.expire_all();
    }

    /// Adds a virtual file (or replaces an existing name with a new version of that size).
    pub fn add_virtual_file(&self, name: &str, size: u64) -> FileInfo {
        (*self.shared.files.add_virtual(name, size)).clone()
    }

    /// Replaces a file with a new version: new id, and for virtual files new bytes.
    pub fn replace_file(&self, name: &str) -> Result<FileInfo, EmulatorError> {
        self.shared.files.replace(name).map(|f| (*f).clone())
    }

    /// Removes a file; its name and id then answer 404.
    pub fn remove_file(&self, name: &str) -> Result<FileInfo, EmulatorError> {
        self.shared.files.remove(name).map(|f| (*f).clone())
    }

    /// The current version of a file.
    pub fn file(&self, name: &str) -> Option<FileInfo> {
        self.shared.files.get(name).map(|f| (*f).clone())
    }

    /// Every file, sorted by name.
    pub fn files(&self) -> Vec<FileInfo> {
        self.shared
            .files
            .all()
            .iter()
            .map(|f| (**f).clone())
            .collect()
    }

    /// Number of files.
    pub fn file_count(&self) -> usize {
        self.shared.files.len()
    }

    /// The bytes a download of `offset..offset+len` of the current version of `name` returns
    /// (clamped to the end of the file, like a Range request).
    pub fn expected_bytes(
        &self,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, EmulatorError> {
        let info = self
            .shared
            .files
            .get(name)
            .ok_or_else(|| EmulatorError::NotFound(name.to_string()))?;
        let end = offset.saturating_add(len).min(info.size);
        let n = usize::try_from(end.saturating_sub(offset))
            .map_err(|_| EmulatorError::Config("range too large for memory".into()))?;
        let mut buf = vec![0u8; n];
        info.read_at(offset, &mut buf)
            .map_err(|source| EmulatorError::Io {
                path: match &info.source {
                    FileSource::Disk { path } => path.clone(),
                    FileSource::Virtual { .. } => PathBuf::from(&info.name),
                },
                source,
            })?;
        Ok(buf)
    }

    /// Stops accepting connections, ends bodies in flight, and waits (up to 5 s) for the server
    /// to finish. Idempotent.
    pub async fn shutdown(&self) {
        self.shutdown_tx.send_replace(true);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut task) = task
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shutdown_tx.send_replace(true);
    }
}
