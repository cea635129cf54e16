//! Configuration: the TOML file, environment overrides for secrets, and validation.
//!
//! Every error names the key that is wrong and why, so an operator can fix the file without reading code.
//! Unknown keys are rejected (a typo like `memroy = "1GiB"` must not silently fall back to a default).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// Environment variables the official B2 tools use; they override the file so secrets can stay out of it.
pub const ENV_KEY_ID: &str = "B2_APPLICATION_KEY_ID";
pub const ENV_APPLICATION_KEY: &str = "B2_APPLICATION_KEY";
/// Environment override for `[server] auth_token`.
pub const ENV_AUTH_TOKEN: &str = "B2PROXY_AUTH_TOKEN";

pub const DEFAULT_ENDPOINT: &str = "https://api.backblazeb2.com";

/// Shortest accepted `catalog.refresh` (also the least gap between two listings the catalog ever makes).
pub const MIN_CATALOG_REFRESH: Duration = Duration::from_secs(5);
/// Smallest accepted `server.max_response_buffer`.
pub const MIN_RESPONSE_BUFFER: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Backblaze B2 upstream. Exactly one of `[b2]` and `[local]` must be present.
    pub b2: Option<B2Config>,
    /// A local directory as the upstream: for trying the proxy out and for tests of the proxy alone.
    pub local: Option<LocalConfig>,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub fetch: FetchConfig,
    #[serde(default)]
    pub catalog: CatalogConfig,
}

#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct B2Config {
    #[serde(default)]
    pub key_id: String,
    #[serde(default)]
    pub application_key: String,
    /// Bucket name. Optional when the key is restricted to one bucket or `bucket_id` is given.
    pub bucket: Option<String>,
    pub bucket_id: Option<String>,
    /// Serve only names under this prefix.
    #[serde(default)]
    pub prefix: String,
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
}

// Hand-written so that the application key never reaches a log line through `{:?}`.
impl std::fmt::Debug for B2Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("B2Config")
            .field("key_id", &self.key_id)
            .field("application_key", &"<redacted>")
            .field("bucket", &self.bucket)
            .field("bucket_id", &self.bucket_id)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

fn default_endpoint() -> String {
    DEFAULT_ENDPOINT.to_string()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    pub dir: PathBuf,
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Bearer token required on every route but `/healthz`. Mandatory when `listen` is not loopback.
    pub auth_token: Option<String>,
    /// Open client connections at most; more clients wait in the listen backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A connection that sends no complete request head for this long is closed (idle keep-alive and slowloris
    /// clients alike). Longer than the shim's 60 s pool idle time, so shims close idle connections first.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A response write that makes no progress for this long (a client that stopped reading) closes the
    /// connection and frees what it held. Slow readers that keep reading are not affected.
    #[serde(default = "default_send_timeout", with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Response bytes held in memory at once, over all connections (chunks fetched for a response and not yet
    /// taken by the kernel). A response waits for room, up to `send_timeout`, then fails with 503.
    #[serde(default = "default_max_response_buffer")]
    pub max_response_buffer: ByteSize,
}

fn default_send_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_max_response_buffer() -> ByteSize {
    ByteSize::mib(128)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(75)
}

fn default_max_connections() -> usize {
    4096
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .field("max_connections", &self.max_connections)
            .field("idle_timeout", &self.idle_timeout)
            .field("send_timeout", &self.send_timeout)
            .field("max_response_buffer", &self.max_response_buffer)
            .finish()
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8642))
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            auth_token: None,
            max_connections: default_max_connections(),
            idle_timeout: default_idle_timeout(),
            send_timeout: default_send_timeout(),
            max_response_buffer: default_max_response_buffer(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Memory tier budget in bytes.
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// Directory of the persistent disk tier.
    #[serde(default = "default_disk_dir")]
    pub disk_dir: PathBuf,
    /// Disk tier budget; 0 disables the disk tier.
    #[serde(default = "default_disk")]
    pub disk: ByteSize,
    /// Size of the aligned blocks that are cached and fetched.
    #[serde(default = "default_block_size")]
    pub block_size: ByteSize,
    /// Eviction policy of the memory tier.
    #[serde(default)]
    pub eviction: Eviction,
    /// What a disk tier that cannot be set up at start (directory missing or read-only, `disk` larger than the
    /// filesystem can hold) does: stop the proxy, or run with the memory tier only.
    #[serde(default)]
    pub on_disk_error: OnDiskError,
    /// Two reads of a block at most this far apart make it part of the hot set, which the proxy estimates and
    /// compares with the tiers (`b2proxy_cache_hot_set_bytes`, a WARN and `/healthz` when it does not fit).
    /// Several times the interval at which each plot is looked up again (~80 minutes for a Chia farm).
    #[serde(default = "default_hot_set_window", with = "humantime_serde")]
    pub hot_set_window: Duration,
}

fn default_hot_set_window() -> Duration {
    crate::cache::hotset::DEFAULT_WINDOW
}

/// `cache.on_disk_error`. Whatever it says, an I/O error on the disk tier while running degrades to memory-only
/// (a farm keeps farming); this decides what happens when the tier cannot be set up at start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDiskError {
    /// Refuse to start, naming the key to fix (the default: a cache that silently lost its disk tier would
    /// send every restart's reads upstream).
    #[default]
    Fail,
    /// Log a warning, report `degraded` in /healthz, and run with the memory tier only.
    MemoryOnly,
}

/// Memory-tier eviction policies (foyer's). S3-FIFO is the default, chosen by measurement (README, "Cache
/// settings"); the others are there to compare on one's own traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Eviction {
    #[default]
    S3fifo,
    Lru,
    Lfu,
    Sieve,
    Fifo,
}

impl Eviction {
    pub const ALL: [Eviction; 5] = [
        Eviction::S3fifo,
        Eviction::Lru,
        Eviction::Lfu,
        Eviction::Sieve,
        Eviction::Fifo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Eviction::S3fifo => "s3fifo",
            Eviction::Lru => "lru",
            Eviction::Lfu => "lfu",
            Eviction::Sieve => "sieve",
            Eviction::Fifo => "fifo",
        }
    }
}

fn default_memory() -> ByteSize {
    ByteSize::gib(1)
}
fn default_disk_dir() -> PathBuf {
    PathBuf::from("/var/cache/b2-proxy")
}
fn default_disk() -> ByteSize {
    ByteSize::gib(50)
}
fn default_block_size() -> ByteSize {
    ByteSize::kib(64)
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            memory: default_memory(),
            disk_dir: default_disk_dir(),
            disk: default_disk(),
            block_size: default_block_size(),
            eviction: Eviction::default(),
            on_disk_error: OnDiskError::default(),
            hot_set_window: default_hot_set_window(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FetchConfig {
    /// A miss fetches at least this much from the read offset (Chia k=32 reads come in adjacent pairs).
    #[serde(default = "default_min_fetch")]
    pub min_fetch: ByteSize,
    /// Upper bound of the read-ahead window that sequential streams grow.
    #[serde(default = "default_readahead_max")]
    pub readahead_max: ByteSize,
    /// Upstream requests in flight at most: the ceiling of the adaptive limit.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// The adaptive limit never goes below this.
    #[serde(default = "default_min_concurrency")]
    pub min_concurrency: usize,
    /// Adapt the concurrency limit to latency and errors (off: always `max_concurrency`).
    #[serde(default = "default_true")]
    pub adaptive_concurrency: bool,
    /// Upstream requests started per second at most (B2 limits an account to about 500); cut when B2
    /// throttles and given back after. 0 = no pacing.
    #[serde(default = "default_max_requests_per_second")]
    pub max_requests_per_second: f64,
    /// When requests wait, serve reads of files with a lookup in progress first, then new reads, then
    /// read-ahead (off: one FIFO queue).
    #[serde(default = "default_true")]
    pub prioritize: bool,
    /// Timeout of one upstream attempt.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// A read that needs upstream fails after this, whatever upstream does: queueing, attempts and backoff
    /// included. Well under a harvester's 8 s warning. (`retry_deadline` is the old name.)
    #[serde(
        default = "default_read_deadline",
        with = "humantime_serde",
        alias = "retry_deadline"
    )]
    pub read_deadline: Duration,
    /// Outage-like upstream failures in a row (over at least 500 ms) that open the circuit.
    #[serde(default = "default_breaker_threshold")]
    pub breaker_threshold: u32,
    /// While the circuit is open, a background probe is sent this often; its success closes the circuit.
    #[serde(default = "default_breaker_cooldown", with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// Re-issue a slow upstream request; the first complete answer wins.
    #[serde(default = "default_true")]
    pub hedge: bool,
    /// Latency quantile of recent upstream requests after which a request is hedged.
    #[serde(default = "default_hedge_quantile")]
    pub hedge_quantile: f64,
    /// The hedge threshold never goes below this...
    #[serde(default = "default_hedge_floor", with = "humantime_serde")]
    pub hedge_floor: Duration,
    /// ...nor above this.
    #[serde(default = "default_hedge_ceiling", with = "humantime_serde")]
    pub hedge_ceiling: Duration,
    /// Share of upstream requests that may be hedged.
    #[serde(default = "default_hedge_budget")]
    pub hedge_budget: f64,
}

fn default_hedge_quantile() -> f64 {
    0.98
}
fn default_hedge_floor() -> Duration {
    Duration::from_millis(30)
}
fn default_hedge_ceiling() -> Duration {
    Duration::from_secs(2)
}
fn default_hedge_budget() -> f64 {
    0.05
}

fn default_min_fetch() -> ByteSize {
    ByteSize::kib(16)
}
fn default_readahead_max() -> ByteSize {
    ByteSize::mib(8)
}
fn default_max_concurrency() -> usize {
    512
}
fn default_min_concurrency() -> usize {
    8
}
fn default_max_requests_per_second() -> f64 {
    400.0
}
fn default_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_read_deadline() -> Duration {
    Duration::from_secs(5)
}
fn default_breaker_threshold() -> u32 {
    5
}
fn default_breaker_cooldown() -> Duration {
    Duration::from_secs(2)
}
fn default_true() -> bool {
    true
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            min_fetch: default_min_fetch(),
            readahead_max: default_readahead_max(),
            max_concurrency: default_max_concurrency(),
            min_concurrency: default_min_concurrency(),
            adaptive_concurrency: true,
            max_requests_per_second: default_max_requests_per_second(),
            prioritize: true,
            timeout: default_timeout(),
            read_deadline: default_read_deadline(),
            breaker_threshold: default_breaker_threshold(),
            breaker_cooldown: default_breaker_cooldown(),
            hedge: true,
            hedge_quantile: default_hedge_quantile(),
            hedge_floor: default_hedge_floor(),
            hedge_ceiling: default_hedge_ceiling(),
            hedge_budget: default_hedge_budget(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// How often the file list is reloaded from upstream.
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
}

fn default_refresh() -> Duration {
    Duration::from_secs(300)
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            refresh: default_refresh(),
        }
    }
}

/// Source of environment values, so tests can feed their own instead of mutating the process environment.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Config {
    /// Reads, parses, applies environment overrides and validates.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        config.apply_env(env);
        config.validate()?;
        Ok(config)
    }

    /// A warning when the file holds a secret and other users can read it.
    pub fn permission_warning(path: &Path) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode();
        let text = std::fs::read_to_string(path).ok()?;
        let parsed = Self::parse(&text).ok()?;
        let has_secret = parsed
            .b2
            .as_ref()
            .is_some_and(|b| !b.application_key.is_empty())
            || parsed.server.auth_token.is_some();
        (has_secret && mode & 0o044 != 0).then(|| {
            format!(
                "{} holds secrets and is readable by other users (mode {:o}): run `chmod 600` on it, \
                 or move the secrets to the environment ({ENV_KEY_ID}, {ENV_APPLICATION_KEY}, {ENV_AUTH_TOKEN})",
                path.display(),
                mode & 0o777
            )
        })
    }

    /// Parses TOML text; the message names the offending key and line.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " | "))
    }

    pub fn apply_env(&mut self, env: &dyn Env) {
        let key_id = env.var(ENV_KEY_ID);
        let app_key = env.var(ENV_APPLICATION_KEY);
        if (key_id.is_some() || app_key.is_some()) && self.b2.is_none() && self.local.is_none() {
            self.b2 = Some(B2Config {
                endpoint: default_endpoint(),
                ..B2Config::default()
            });
        }
        if let Some(b2) = self.b2.as_mut() {
            if let Some(v) = key_id {
                b2.key_id = v;
            }
            if let Some(v) = app_key {
                b2.application_key = v;
            }
        }
        if let Some(token) = env.var(ENV_AUTH_TOKEN) {
            self.server.auth_token = Some(token);
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.b2, &self.local) {
            (None, None) => {
                return Err(invalid(
                    "b2",
                    "no upstream configured: add a [b2] section (or a [local] section with `dir`)",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "local",
                    "[b2] and [local] are both set; choose one upstream",
                ));
            }
            (Some(b2), None) => {
                if b2.key_id.trim().is_empty() {
                    return Err(invalid(
                        "b2.key_id",
                        format!("missing (set it in the file or via {ENV_KEY_ID})"),
                    ));
                }
                if b2.application_key.trim().is_empty() {
                    return Err(invalid(
                        "b2.application_key",
                        format!("missing (set it in the file or via {ENV_APPLICATION_KEY})"),
                    ));
                }
                let ep = b2.endpoint.trim();
                if !(ep.starts_with("https://") || ep.starts_with("http://")) {
                    return Err(invalid(
                        "b2.endpoint",
                        format!("`{ep}` is not an http(s) URL"),
                    ));
                }
                if b2.bucket.as_deref().is_some_and(|b| b.trim().is_empty()) {
                    return Err(invalid("b2.bucket", "is empty"));
                }
            }
            (None, Some(local)) => {
                if !local.dir.is_dir() {
                    return Err(invalid(
                        "local.dir",
                        format!("{} is not a directory", local.dir.display()),
                    ));
                }
            }
        }
        if !self.server.listen.ip().is_loopback()
            && self.server.auth_token.as_deref().is_none_or(str::is_empty)
        {
            return Err(invalid(
                "server.auth_token",
                format!(
                    "required because server.listen ({}) is not a loopback address: \
                     anyone on the network could read the bucket otherwise (or set {ENV_AUTH_TOKEN})",
                    self.server.listen
                ),
            ));
        }
        if let Some(t) = &self.server.auth_token
            && t.len() < 16
        {
            return Err(invalid(
                "server.auth_token",
                "too short: use at least 16 random characters (e.g. `openssl rand -hex 32`)",
            ));
        }
        if !(16..=1_000_000).contains(&self.server.max_connections) {
            return Err(invalid(
                "server.max_connections",
                "must be between 16 and 1000000",
            ));
        }
        if self.server.idle_timeout < Duration::from_secs(1) {
            return Err(invalid("server.idle_timeout", "must be at least 1s"));
        }
        if self.server.send_timeout < Duration::from_secs(1) {
            return Err(invalid("server.send_timeout", "must be at least 1s"));
        }
        if self.server.max_response_buffer.as_u64() < MIN_RESPONSE_BUFFER {
            return Err(invalid(
                "server.max_response_buffer",
                "must be at least 4MiB (the largest single-piece answer is 1 MiB)",
            ));
        }
        let bs = self.cache.block_size.as_u64();
        if !(4096..=(16 << 20)).contains(&bs) || !bs.is_power_of_two() {
            return Err(invalid(
                "cache.block_size",
                format!("{bs} bytes: must be a power of two between 4KiB and 16MiB"),
            ));
        }
        if self.cache.memory.as_u64() < 16 * bs {
            return Err(invalid(
                "cache.memory",
                format!(
                    "{} is too small: it must hold at least 16 blocks of cache.block_size ({})",
                    self.cache.memory.display().iec(),
                    self.cache.block_size.display().iec()
                ),
            ));
        }
        let disk = self.cache.disk.as_u64();
        if disk != 0 && disk < (16 << 20) {
            return Err(invalid(
                "cache.disk",
                "must be 0 (disk tier off) or at least 16MiB",
            ));
        }
        if disk != 0 && self.cache.disk_dir.as_os_str().is_empty() {
            return Err(invalid(
                "cache.disk_dir",
                "is empty while the disk tier is on",
            ));
        }
        if self.fetch.min_fetch.as_u64() > 64 << 20 {
            return Err(invalid("fetch.min_fetch", "must be at most 64MiB"));
        }
        if self.fetch.readahead_max.as_u64() > 256 << 20 {
            return Err(invalid("fetch.readahead_max", "must be at most 256MiB"));
        }
        if self.fetch.max_concurrency == 0 || self.fetch.max_concurrency > 4096 {
            return Err(invalid(
                "fetch.max_concurrency",
                "must be between 1 and 4096",
            ));
        }
        if self.fetch.min_concurrency == 0
            || self.fetch.min_concurrency > self.fetch.max_concurrency
        {
            return Err(invalid(
                "fetch.min_concurrency",
                "must be between 1 and fetch.max_concurrency",
            ));
        }
        let rps = self.fetch.max_requests_per_second;
        if !rps.is_finite() || !(0.0..=100_000.0).contains(&rps) {
            return Err(invalid(
                "fetch.max_requests_per_second",
                "must be between 0 (off) and 100000",
            ));
        }
        if self.fetch.timeout < Duration::from_millis(100) {
            return Err(invalid("fetch.timeout", "must be at least 100ms"));
        }
        if self.fetch.breaker_threshold == 0 {
            return Err(invalid("fetch.breaker_threshold", "must be at least 1"));
        }
        if self.fetch.breaker_cooldown < Duration::from_millis(100) {
            return Err(invalid("fetch.breaker_cooldown", "must be at least 100ms"));
        }
        if self.fetch.read_deadline < self.fetch.timeout {
            return Err(invalid(
                "fetch.read_deadline",
                "must be at least fetch.timeout",
            ));
        }
        if !(0.5..1.0).contains(&self.fetch.hedge_quantile) {
            return Err(invalid("fetch.hedge_quantile", "must be in [0.5, 1.0)"));
        }
        if !(0.0..=0.5).contains(&self.fetch.hedge_budget) {
            return Err(invalid("fetch.hedge_budget", "must be between 0 and 0.5"));
        }
        if self.fetch.hedge_floor > self.fetch.hedge_ceiling {
            return Err(invalid(
                "fetch.hedge_floor",
                "must not exceed fetch.hedge_ceiling",
            ));
        }
        if self.cache.hot_set_window < Duration::from_secs(10) {
            return Err(invalid(
                "cache.hot_set_window",
                format!(
                    "{} is too short: must be at least 10s (reads closer than 2s count as one read)",
                    humantime::format_duration(self.cache.hot_set_window)
                ),
            ));
        }
        if self.catalog.refresh < MIN_CATALOG_REFRESH {
            return Err(invalid(
                "catalog.refresh",
                format!(
                    "{} is too short: must be at least 5s (each listing is a billed Class C call; \
                     send SIGHUP for an immediate refresh)",
                    humantime::format_duration(self.catalog.refresh)
                ),
            ));
        }
        Ok(())
    }

    /// The configuration as TOML with secrets replaced, for `--check-config`.
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        if let Some(b2) = shown.b2.as_mut()
            && !b2.application_key.is_empty()
        {
            b2.application_key = "<redacted>".into();
        }
        if shown.server.auth_token.is_some() {
            shown.server.auth_token = Some("<redacted>".into());
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct MapEnv(HashMap<&'static str, &'static str>);
    impl Env for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|s| s.to_string())
        }
    }

    fn parse_ok(text: &str) -> Config {
        let c = Config::parse(text).expect("parses");
        c.validate().expect("valid");
        c
    }

    fn err_of(text: &str) -> String {
        match Config::parse(text) {
            Err(e) => e,
            Ok(c) => c.validate().expect_err("must be invalid").to_string(),
        }
    }

    const MIN: &str = "[b2]\nkey_id = \"k\"\napplication_key = \"s\"\nbucket = \"b\"\n";

    #[test]
    fn defaults_and_sizes() {
        let c = parse_ok(&format!(
            "{MIN}[cache]\nmemory = \"2GiB\"\nblock_size = 65536\n[fetch]\ntimeout = \"250ms\"\nretry_deadline=\"1s\""
        ));
        assert_eq!(c.cache.memory.as_u64(), 2 << 30);
        assert_eq!(c.cache.block_size.as_u64(), 65536);
        assert_eq!(c.fetch.timeout, Duration::from_millis(250));
        assert_eq!(c.fetch.min_fetch.as_u64(), 16384);
        assert_eq!(c.server.listen, default_listen());
        assert_eq!(
            c.b2.as_ref().map(|b| b.endpoint.as_str()),
            Some(DEFAULT_ENDPOINT)
        );
    }

    #[test]
    fn eviction_policy_by_name() {
        assert_eq!(parse_ok(MIN).cache.eviction, Eviction::S3fifo);
        for e in Eviction::ALL {
            let c = parse_ok(&format!("{MIN}[cache]\neviction = \"{}\"\n", e.name()));
            assert_eq!(c.cache.eviction, e);
        }
        let e = err_of(&format!("{MIN}[cache]\neviction = \"arc\"\n"));
        assert!(e.contains("eviction"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err_of(&format!("{MIN}[cache]\nmemroy = \"1GiB\"\n"));
        assert!(e.contains("memroy"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = err_of(&format!("{MIN}[fetch]\nmax_concurrency = \"many\"\n"));
        assert!(e.contains("max_concurrency"), "{e}");
    }

    #[test]
    fn missing_secret_is_named() {
        let e = err_of("[b2]\nkey_id = \"k\"\nbucket = \"b\"\n");
        assert!(e.contains("b2.application_key"), "{e}");
    }

    #[test]
    fn no_upstream() {
        assert!(err_of("").contains("no upstream"));
    }

    #[test]
    fn lan_listen_needs_token() {
        let e = err_of(&format!("{MIN}[server]\nlisten = \"0.0.0.0:8642\"\n"));
        assert!(e.contains("server.auth_token"), "{e}");
        parse_ok(&format!(
            "{MIN}[server]\nlisten = \"0.0.0.0:8642\"\nauth_token = \"0123456789abcdef0123\"\n"
        ));
    }

    #[test]
    fn short_catalog_refresh_is_refused() {
        let e = err_of(&format!("{MIN}[catalog]\nrefresh = \"2s\"\n"));
        assert!(e.contains("catalog.refresh") && e.contains("5s"), "{e}");
        parse_ok(&format!("{MIN}[catalog]\nrefresh = \"5s\"\n"));
    }

    #[test]
    fn disk_error_policy_and_response_limits() {
        assert_eq!(parse_ok(MIN).cache.on_disk_error, OnDiskError::Fail);
        let c = parse_ok(&format!("{MIN}[cache]\non_disk_error = \"memory_only\"\n"));
        assert_eq!(c.cache.on_disk_error, OnDiskError::MemoryOnly);
        let e = err_of(&format!("{MIN}[cache]\non_disk_error = \"ignore\"\n"));
        assert!(e.contains("on_disk_error"), "{e}");
        let e = err_of(&format!("{MIN}[server]\nmax_response_buffer = \"1MiB\"\n"));
        assert!(e.contains("server.max_response_buffer"), "{e}");
        let e = err_of(&format!("{MIN}[server]\nsend_timeout = \"100ms\"\n"));
        assert!(e.contains("server.send_timeout"), "{e}");
    }

    #[test]
    fn bad_block_size() {
        let e = err_of(&format!("{MIN}[cache]\nblock_size = \"60KiB\"\n"));
        assert!(e.contains("cache.block_size"), "{e}");
    }

    #[test]
    fn env_overrides_file_and_redaction_hides_secrets() {
        let mut c = Config::parse(MIN).expect("parses");
        let env = MapEnv(HashMap::from([
            (ENV_KEY_ID, "envkey"),
            (ENV_APPLICATION_KEY, "topsecretvalue"),
        ]));
        c.apply_env(&env);
        c.validate().expect("valid");
        let b2 = c.b2.as_ref().expect("b2");
        assert_eq!(b2.key_id, "envkey");
        assert_eq!(b2.application_key, "topsecretvalue");
        let shown = c.redacted_toml();
        assert!(!shown.contains("topsecretvalue"), "{shown}");
        assert!(!format!("{c:?}").contains("topsecretvalue"));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,200}") {
            let _ = Config::parse(&s).map(|c| c.validate());
        }
    }
}
