//! Wiring: builds the upstream, cache, catalog and fetcher from a [`Config`], serves the API, and shuts down
//! in order (stop accepting, let requests finish for a bounded time, close the cache so the disk tier is
//! consistent for the next start).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{AppState, router};
use crate::cache::{BlockCache, CacheSettings, FoyerCache};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::fetch::{FetchSettings, Fetcher};
use crate::hedge::{HedgeSettings, Hedger};
use crate::metrics::Metrics;
use crate::upstream::ObjectSource;
use crate::upstream::b2::B2Source;
use crate::upstream::local::LocalSource;
use crate::upstream::retry::RetryPolicy;

/// How long shutdown waits for open requests before closing the cache anyway.
const DRAIN: Duration = Duration::from_secs(10);

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
    cache: Arc<dyn BlockCache>,
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
                    f.max_concurrency * 2,
                    metrics.upstream_connections.clone(),
                )?;
                Arc::new(B2Source::new(
                    b2.clone(),
                    http,
                    f.timeout,
                    f.retry_deadline,
                    f.max_concurrency,
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
                },
                metrics.clone(),
            )
            .await?,
        );
        let catalog = Arc::new(Catalog::new(source.clone(), metrics.clone()));
        let hedger = f.hedge.then(|| {
            Arc::new(Hedger::new(
                HedgeSettings {
                    quantile: f.hedge_quantile,
                    floor: f.hedge_floor,
                    ceiling: f.hedge_ceiling,
                    budget: f.hedge_budget,
                },
                RetryPolicy::new(f.retry_deadline),
                metrics.clone(),
            ))
        });
        let cat = catalog.clone();
        let fetcher = Arc::new(Fetcher::new(
            source.clone(),
            cache.clone(),
            hedger,
            FetchSettings {
                block_size: config.cache.block_size.as_u64(),
                min_fetch: f.min_fetch.as_u64(),
                readahead_max: f.readahead_max.as_u64(),
            },
            metrics.clone(),
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

        let cancel = CancellationToken::new();
        let catalog_task =
            tokio::spawn(catalog.clone().run(config.catalog.refresh, cancel.clone()));
        let app = router(AppState {
            catalog: catalog.clone(),
            fetcher,
            metrics: metrics.clone(),
            source: source.clone(),
            auth_token: config.server.auth_token.as_deref().map(Arc::from),
        });
        let server = tokio::spawn(serve(
            listener,
            app,
            cancel.clone(),
            config.server.max_connections,
            config.server.idle_timeout,
        ));
        tracing::info!(%addr, upstream = %source.describe(), "b2-proxy listening");
        Ok(Self {
            addr,
            metrics,
            catalog,
            cancel,
            server,
            catalog_task,
            cache,
        })
    }

    /// Stops serving, waits (bounded) for open requests, and closes the cache cleanly.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.server.await;
        let _ = self.catalog_task.await;
        match self.cache.close().await {
            Ok(()) => tracing::info!("cache closed cleanly"),
            Err(e) => tracing::error!(error = %e, "closing the cache failed"),
        }
    }
}

/// The accept loop: HTTP/1.1 with keep-alive, at most `max_connections` open connections (further clients wait
/// in the kernel's backlog, so thousands of idle or hostile connections cost bounded memory), a deadline for
/// request heads (which also ends idle keep-alive connections), and a graceful drain on shutdown.
async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    cancel: CancellationToken,
    max_connections: usize,
    idle_timeout: Duration,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(idle_timeout)
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
