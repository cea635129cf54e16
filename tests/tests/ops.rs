//! Operations: the Grafana dashboard only queries metrics a running proxy exports; bearer-token auth for LAN
//! sharing; secrets never reach logs, errors, /metrics or /healthz.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use b2fs_tests::emulator::Emulator;
use common::start;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Metric names a PromQL expression refers to (ours and foyer's).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &expr[i..];
        if (rest.starts_with("b2proxy_") || rest.starts_with("foyer_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            out.push(rest[..end].to_string());
            i += end;
        } else {
            i += 1;
        }
    }
    out
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k == "expr" {
                    if let Some(s) = v.as_str() {
                        out.push(s.to_string());
                    }
                } else {
                    collect_exprs(v, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_queries_only_exported_metrics() {
    let text = std::fs::read_to_string(repo_root().join("grafana/b2fs-dashboard.json"))
        .expect("dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dash, &mut exprs);
    assert!(exprs.len() >= 15, "dashboard has {} queries", exprs.len());
    let wanted: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    assert!(wanted.len() >= 15, "{wanted:?}");

    let env = start(Emulator::builder().virtual_file("a.plot", 1 << 30), |_| {}).await;
    // Some traffic: a miss, a hit.
    env.assert_range("a.plot", 0, 8191).await;
    env.assert_range("a.plot", 0, 8191).await;
    let exposition = common::get_text(env.http.get(format!("{}/metrics", env.base))).await;
    let exported: BTreeSet<&str> = exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "dashboard queries metrics the proxy does not export: {missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bearer_token_guards_everything_but_healthz() {
    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    let env = start(Emulator::builder().virtual_file("a.plot", 1 << 20), |c| {
        c.server.auth_token = Some(TOKEN.into());
    })
    .await;
    let h = &env.http;
    for path in ["/files", "/files/a.plot", "/metrics"] {
        let url = format!("{}{path}", env.base);
        assert_eq!(
            h.get(&url).send().await.unwrap().status(),
            401,
            "{path} without token"
        );
        let r = h
            .get(&url)
            .header("Authorization", "Bearer wrong-token-wrong-token")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong token");
        let r = h
            .get(&url)
            .header("Authorization", format!("Bearer {TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} with the token");
    }
    let r = h.get(format!("{}/healthz", env.base)).send().await.unwrap();
    assert_eq!(r.status(), 200, "/healthz stays open");
    let body = r.text().await.unwrap();
    assert!(!body.contains(TOKEN));
    let r = h
        .get(env.url("a.plot"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        &r.bytes().await.unwrap()[..],
        &env.emu.expected_bytes("a.plot", 0, 100).unwrap()[..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_never_reach_logs_metrics_or_health() {
    const KEY: &str = "K001ThisIsTheSecretApplicationKey";
    const TOKEN: &str = "tokentokentokensecret0123456789";
    // The emulator accepts KEY; a second run uses a wrong key to provoke error paths.
    let emu = Emulator::builder()
        .credentials("keyid-visible", KEY)
        .virtual_file("a.plot", 1 << 20)
        .start()
        .await
        .unwrap();
    let http = common::http();
    for app_key in [KEY, "K001WrongSecretKeyValue000000000"] {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = dir.path().join("config.toml");
        std::fs::write(
            &cfg,
            format!(
                "[b2]\nbucket = \"{}\"\nendpoint = \"{}\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n\
                 [cache]\nmemory = \"16MiB\"\ndisk = 0\n[fetch]\nread_deadline = \"2s\"\ntimeout = \"1s\"\n",
                emu.bucket_name(),
                emu.endpoint()
            ),
        )
        .unwrap();
        let mut child = Command::new(common::workspace_bin("b2-proxy"))
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "trace")
            .env("B2_APPLICATION_KEY_ID", "keyid-visible")
            .env("B2_APPLICATION_KEY", app_key)
            .env("B2PROXY_AUTH_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut health = String::new();
        while Instant::now() < deadline {
            if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
                let ok = r.status() == 200;
                health = r.text().await.unwrap_or_default();
                if ok || app_key != KEY {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let auth = format!("Bearer {TOKEN}");
        let metrics = common::get_text(
            http.get(format!("{base}/metrics"))
                .header("Authorization", &auth),
        )
        .await;
        let read = http
            .get(format!("{base}/files/a.plot"))
            .header("Authorization", &auth)
            .header("Range", "bytes=0-10")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap_or_default();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let _ = child.wait();
        let mut logs = String::new();
        if let Some(mut e) = child.stderr.take() {
            e.read_to_string(&mut logs).unwrap();
        }
        if let Some(mut o) = child.stdout.take() {
            o.read_to_string(&mut logs).unwrap();
        }
        assert!(logs.len() > 100, "expected trace logs, got {logs:?}");
        for (what, text) in [
            ("logs", &logs),
            ("metrics", &metrics),
            ("healthz", &health),
            ("read error", &read),
        ] {
            assert!(!text.contains(KEY), "application key leaked into {what}");
            assert!(
                !text.contains(app_key),
                "application key leaked into {what}"
            );
            assert!(!text.contains(TOKEN), "auth token leaked into {what}");
        }
        if app_key != KEY {
            assert!(
                health.contains("rejected"),
                "bad key not reported: {health}"
            );
        }
    }
    emu.shutdown().await;
}
