//! Wiring: builds the upstream, cache, catalog and fetcher from a [`Config`], serves the API, and shuts down
//! in order (stop accepting, let requests finish for a bounded time, close the cache so the disk tier is
//! consistent for the next start).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{AppState, router};
use crate::cache::hotset::{self, HotSet};
use crate::cache::{BlockCache, CacheSettings, DiskTierState, FoyerCache};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::fetch::{FetchSettings, Fetcher};
use crate::limits::{ResponseBudget, SendTimeout};
use crate::metrics::Metrics;
use crate::policy::breaker::BreakerSettings;
use crate::policy::hedge::HedgeSettings;
use crate::policy::{PolicySettings, Upstream, schedule};
use crate::upstream::ObjectSource;
use crate::upstream::b2::B2Source;
use crate::upstream::local::LocalSource;

/// Where the adaptive upstream concurrency limit starts (it grows while requests queue and B2 answers well).
const INITIAL_CONCURRENCY: usize = 64;
/// A waiting upstream request goes next, whatever its class, after this long (nothing starves).
const PROMOTE_AFTER: Duration = Duration::from_millis(750);

/// Retry deadline of one catalog listing page (listing is not latency-critical; a reader never waits on it).
const LIST_DEADLINE: Duration = Duration::from_secs(60);

/// How long shutdown waits for open requests before closing the cache anyway.
const DRAIN: Duration = Duration::from_secs(10);
/// How often the hot-set estimate is compared with the tiers (and its gauge updated).
const HOT_SET_CHECK: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    #[error("cannot register metrics: {0}")]
    Metrics(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// A running proxy.
pub struct Proxy {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub catalog: Arc<Catalog>,
    cancel: CancellationToken,
    server: JoinHandle<()>,
    catalog_task: JoinHandle<()>,
    hot_set_task: JoinHandle<()>,
    cache: Arc<dyn BlockCache>,
    upstream: Arc<Upstream>,
}

/// The upstream HTTP client: a warm keep-alive pool sized for a parallel proof's fan-out, kept across the
/// ~9.4 s gaps between signage points (idle timeout 90 s, TCP keepalive), with every new connection counted.
pub fn http_client(
    connect_timeout: Duration,
    pool: usize,
    connections: prometheus::IntCounter,
) -> Result<reqwest::Client, StartError> {
    reqwest::Client::builder()
        .connector_layer(tower::util::MapRequestLayer::new(move |target| {
            connections.inc();
            target
        }))
        .user_agent(concat!("b2-proxy/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .pool_max_idle_per_host(pool)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_keepalive(Duration::from_secs(30))
        .no_proxy()
        .build()
        .map_err(|e| StartError::Http(explain_client_error(&e)))
}

/// The whole cause chain of a client build error, with the fix when it is the usual one: no CA certificates on
/// the machine (reqwest only says "No CA certificates were loaded from the system").
fn explain_client_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    if msg.contains("CA certificates") {
        msg.push_str(
            " (B2 is reached over HTTPS and needs the system's CA certificates: install the package \
             `ca-certificates`, e.g. `apt-get install ca-certificates`)",
        );
    }
    msg
}

impl Proxy {
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new().map_err(|e| StartError::Metrics(e.to_string()))?);
        let f = &config.fetch;
        let source: Arc<dyn ObjectSource> = match (&config.b2, &config.local) {
            (Some(b2), _) => {
                let http = http_client(
                    Duration::from_secs(5).min(f.timeout),
                    f.max_concurrency.min(1024),
                    metrics.upstream_connections.clone(),
                )?;
                Arc::new(B2Source::new(
                    b2.clone(),
                    http,
                    f.timeout,
                    LIST_DEADLINE,
                    metrics.clone(),
                ))
            }
            (None, Some(local)) => Arc::new(LocalSource::new(local.dir.clone())),
            (None, None) => {
                return Err(StartError::Config(
                    "no upstream configured: add [b2] or [local]".into(),
                ));
            }
        };
        let cache: Arc<dyn BlockCache> = Arc::new(
            FoyerCache::open(
                &CacheSettings {
                    memory_bytes: config.cache.memory.as_u64() as usize,
                    disk_bytes: config.cache.disk.as_u64() as usize,
                    disk_dir: config.cache.disk_dir.clone(),
                    block_size: config.cache.block_size.as_u64() as usize,
                    eviction: config.cache.eviction,
                    on_disk_error: config.cache.on_disk_error,
                },
                metrics.clone(),
            )
            .await?,
        );
        let catalog = Arc::new(Catalog::new(source.clone(), metrics.clone()));
        let upstream = Upstream::new(
            source.clone(),
            PolicySettings::from_config(f),
            metrics.clone(),
        );
        let cat = catalog.clone();
        let hot = Arc::new(HotSet::with_metrics(
            config.cache.memory.as_u64(),
            // A disk tier that could not be set up is not there to hold anything.
            if cache.disk_state() == DiskTierState::Ok {
                config.cache.disk.as_u64()
            } else {
                0
            },
            config.cache.block_size.as_u64(),
            config.cache.hot_set_window,
            &metrics,
        ));
        let fetcher = Arc::new(Fetcher::new(
            upstream.clone(),
            cache.clone(),
            FetchSettings {
                block_size: config.cache.block_size.as_u64(),
                min_fetch: f.min_fetch.as_u64(),
                readahead_max: f.readahead_max.as_u64(),
            },
            metrics.clone(),
            hot.clone(),
            Box::new(move || cat.request_refresh()),
        ));

        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.server.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.server.listen,
            source,
        })?;

        if config.catalog.refresh < crate::config::MIN_CATALOG_REFRESH {
            // Config::load refuses this; a configuration built in code gets told rather than silently raised.
            tracing::warn!(
                refresh = ?config.catalog.refresh,
                "catalog.refresh is below 5s: the catalog refreshes every 5s at most"
            );
        }
        let cancel = CancellationToken::new();
        let catalog_task =
            tokio::spawn(catalog.clone().run(config.catalog.refresh, cancel.clone()));
        let hot_set_task = hotset::spawn_check(hot, HOT_SET_CHECK, cancel.clone());
        let budget = Arc::new(ResponseBudget::new(
            config.server.max_response_buffer.as_u64() as usize,
            config.server.send_timeout,
            metrics.response_buffer_bytes.clone(),
        ));
        let app = router(AppState {
            catalog: catalog.clone(),
            fetcher,
            metrics: metrics.clone(),
            source: source.clone(),
            auth_token: config.server.auth_token.as_deref().map(Arc::from),
            cache: cache.clone(),
            budget,
        });
        let server = tokio::spawn(serve(
            listener,
            app,
            cancel.clone(),
            ServeLimits {
                max_connections: config.server.max_connections,
                idle_timeout: config.server.idle_timeout,
                send_timeout: config.server.send_timeout,
                send_timeouts: metrics.send_timeouts.clone(),
            },
        ));
        tracing::info!(%addr, upstream = %source.describe(), "b2-proxy listening");
        Ok(Self {
            addr,
            metrics,
            catalog,
            cancel,
            server,
            catalog_task,
            hot_set_task,
            cache,
            upstream,
        })
    }

    /// The disk tier's state (as /healthz reports it).
    pub fn disk_state(&self) -> crate::cache::DiskTierState {
        self.cache.disk_state()
    }

    /// Stops serving, waits (bounded) for open requests, and closes the cache cleanly. Never panics: a task
    /// that panicked is logged, and a failed disk tier is left as it is (see `FoyerCache::close`).
    pub async fn shutdown(self) {
        self.cancel.cancel();
        if let Err(e) = self.server.await {
            tracing::error!(error = %e, "the server task failed");
        }
        if let Err(e) = self.catalog_task.await {
            tracing::error!(error = %e, "the catalog task failed");
        }
        if let Err(e) = self.hot_set_task.await {
            tracing::error!(error = %e, "the hot-set check failed");
        }
        self.upstream.close();
        match self.cache.close().await {
            Ok(()) => tracing::info!("cache closed cleanly"),
            Err(e) => {
                tracing::warn!(error = %e, "closing the cache failed; cached blocks may be lost")
            }
        }
    }
}

/// Per-connection limits of the accept loop.
struct ServeLimits {
    max_connections: usize,
    idle_timeout: Duration,
    send_timeout: Duration,
    send_timeouts: prometheus::IntCounter,
}

/// The accept loop: HTTP/1.1 with keep-alive, at most `max_connections` open connections (further clients wait
/// in the kernel's backlog, so thousands of idle or hostile connections cost bounded memory), a deadline for
/// request heads (which also ends idle keep-alive connections), a send timeout for clients that stop reading,
/// a write queue of one stream chunk per connection, and a graceful drain on shutdown.
async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    cancel: CancellationToken,
    limits: ServeLimits,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        // hyper asks a streamed body for its next chunk only while its write queue holds less than this, so a
        // stalled reader holds about one chunk (request heads are limited to this size too: ample).
        .max_buf_size(crate::api::STREAM_CHUNK as usize)
        .keep_alive(true);
    loop {
        let slot = tokio::select! {
            _ = cancel.cancelled() => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let stream = SendTimeout::new(stream, limits.send_timeout, limits.send_timeouts.clone());
        let conn =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still open after {DRAIN:?}; closing anyway");
    }
}

impl PolicySettings {
    /// The policy the `[fetch]` section describes.
    pub fn from_config(f: &crate::config::FetchConfig) -> Self {
        Self {
            schedule: schedule::Settings {
                max_concurrency: f.max_concurrency,
                min_concurrency: f.min_concurrency,
                initial_concurrency: INITIAL_CONCURRENCY,
                max_rps: f.max_requests_per_second,
                promote_after: PROMOTE_AFTER,
                adaptive: f.adaptive_concurrency,
                prioritize: f.prioritize,
            },
            attempt_timeout: f.timeout,
            read_deadline: f.read_deadline,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            breaker: BreakerSettings {
                threshold: f.breaker_threshold,
                cooldown: f.breaker_cooldown,
            },
            hedge: f.hedge.then_some(HedgeSettings {
                quantile: f.hedge_quantile,
                floor: f.hedge_floor,
                ceiling: f.hedge_ceiling,
                budget: f.hedge_budget,
            }),
        }
    }
}
