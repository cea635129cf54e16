//! Property test of name decoding in the file API: any request path, percent-encoded or raw, is answered with a
//! 2xx only for names in the catalog (so no path escapes the bucket), never with a 5xx, and never panics.
//! Runs the real router over a local-directory upstream, in-process.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use b2_proxy::api::{AppState, router};
use b2_proxy::cache::hotset::{DEFAULT_WINDOW, HotSet};
use b2_proxy::cache::{BlockCache, CacheSettings, FoyerCache};
use b2_proxy::catalog::Catalog;
use b2_proxy::config::FetchConfig;
use b2_proxy::fetch::{FetchSettings, Fetcher};
use b2_proxy::metrics::Metrics;
use b2_proxy::policy::{PolicySettings, Upstream};
use b2_proxy::upstream::ObjectSource;
use b2_proxy::upstream::local::LocalSource;
use proptest::prelude::*;
use tower::ServiceExt;

struct Fixture {
    rt: tokio::runtime::Runtime,
    app: axum::Router,
    names: Vec<String>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("bucket");
    std::fs::create_dir_all(root.join("plots/sub")).expect("mkdir");
    let names = vec![
        "a.plot".to_string(),
        "plots/b.plot".to_string(),
        "plots/sub/c d%.plot".to_string(),
    ];
    for n in &names {
        std::fs::write(root.join(n), n.as_bytes()).expect("write");
    }
    // A file outside the served directory that no request may reach.
    std::fs::write(dir.path().join("secret.txt"), b"secret").expect("write");
    let app = rt.block_on(async {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let source: Arc<dyn ObjectSource> = Arc::new(LocalSource::new(root.clone()));
        let cache: Arc<dyn BlockCache> = Arc::new(
            FoyerCache::open(
                &CacheSettings {
                    memory_bytes: 16 << 20,
                    disk_bytes: 0,
                    disk_dir: dir.path().join("cache"),
                    block_size: 64 << 10,
                    eviction: Default::default(),
                    on_disk_error: Default::default(),
                },
                metrics.clone(),
            )
            .await
            .expect("cache"),
        );
        let catalog = Arc::new(Catalog::new(source.clone(), metrics.clone()));
        catalog.refresh().await.expect("catalog");
        let upstream = Upstream::new(
            source.clone(),
            PolicySettings::from_config(&FetchConfig::default()),
            metrics.clone(),
        );
        let fetcher = Arc::new(Fetcher::new(
            upstream,
            cache.clone(),
            FetchSettings {
                block_size: 64 << 10,
                min_fetch: 16 << 10,
                readahead_max: 0,
            },
            metrics.clone(),
            Arc::new(HotSet::with_metrics(
                64 << 20,
                0,
                64 << 10,
                DEFAULT_WINDOW,
                &metrics,
            )),
            Box::new(|| {}),
        ));
        router(AppState {
            catalog,
            fetcher,
            metrics,
            source,
            auth_token: None,
            cache,
            budget: Arc::new(b2_proxy::limits::ResponseBudget::new(
                64 << 20,
                std::time::Duration::from_secs(5),
                prometheus::IntGauge::new("b", "b").expect("gauge"),
            )),
        })
    });
    Fixture {
        rt,
        app,
        names,
        _dir: dir,
    }
}

fn path_strategy() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("..".to_string()),
        Just(".".to_string()),
        Just("%2e%2e".to_string()),
        Just("%2F".to_string()),
        Just("%00".to_string()),
        Just("%FF".to_string()),
        Just("%".to_string()),
        Just("secret.txt".to_string()),
        Just("plots".to_string()),
        Just("a.plot".to_string()),
        Just("b.plot".to_string()),
        "[a-z%0-9A-F.+ ]{0,12}",
    ];
    prop::collection::vec(segment, 0..6).prop_map(|segs| segs.join("/"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn only_catalog_names_are_served(path in path_strategy(), range in prop::option::of("bytes=[0-9]{0,3}-[0-9]{0,3}")) {
        let f = FIXTURE.with(|f| f.clone());
        let uri = format!("/files/{path}");
        let Ok(mut req) = Request::builder().uri(&uri).header("host", "test").body(Body::empty()) else {
            // Not a valid request target at all: the HTTP layer rejects it before routing.
            return Ok(());
        };
        if let Some(r) = &range {
            req.headers_mut().insert("range", r.parse().expect("ascii"));
        }
        let resp = f.rt.block_on(f.app.clone().oneshot(req)).expect("infallible");
        let status = resp.status();
        prop_assert!(!status.is_server_error(), "{uri}: {status}");
        if status.is_success() {
            let decoded = percent_encoding::percent_decode_str(&path).decode_utf8_lossy().to_string();
            prop_assert!(f.names.contains(&decoded), "{uri} served a name outside the catalog ({decoded})");
            let body = f.rt.block_on(axum::body::to_bytes(resp.into_body(), 1 << 20)).expect("body");
            prop_assert!(!body.windows(6).any(|w| w == b"secret"));
        } else {
            prop_assert!(
                matches!(status, StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST | StatusCode::RANGE_NOT_SATISFIABLE),
                "{uri}: {status}"
            );
        }
    }
}

thread_local! {
    static FIXTURE: Arc<Fixture> = Arc::new(fixture());
}

#[test]
fn fixture_serves_its_names_and_nothing_else() {
    let f = FIXTURE.with(|f| f.clone());
    let status = |uri: &str| {
        let req = Request::builder()
            .uri(uri)
            .header("host", "test")
            .body(Body::empty())
            .expect("request");
        f.rt.block_on(f.app.clone().oneshot(req))
            .expect("infallible")
            .status()
    };
    assert_eq!(status("/files/plots/sub/c%20d%25.plot"), StatusCode::OK);
    assert_eq!(status("/files/plots%2Fb.plot"), StatusCode::OK);
    assert_eq!(status("/files/a.plot"), StatusCode::OK);
    for bad in [
        "/files/../secret.txt",
        "/files/%2e%2e/secret.txt",
        "/files/plots/../a.plot",
        "/files/a.plot%00",
    ] {
        assert_eq!(status(bad), StatusCode::NOT_FOUND, "{bad}");
    }
    assert_eq!(status("/files/%FF"), StatusCode::BAD_REQUEST);
}
