//! The dashboard and the alerts against a real Prometheus server (the Debian package `prometheus`; ./test.sh
//! installs it): Prometheus scrapes a running proxy and a real FUSE mount's shim under a short load with hedging
//! and faults, then every expression of every dashboard panel and every alert rule is evaluated through its
//! HTTP API. And the alert rules' unit tests (deploy/alerts_test.yml) under `promtool test rules`.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use b2fs_tests::emulator::{Emulator, Fault};
use b2fs_tests::mount::Shim;
use common::{Rng, start};

const BIG: u64 = 108 << 30;
/// How often the test's Prometheus scrapes and evaluates rules.
const SCRAPE: &str = "1s";
/// What Grafana's `$__rate_interval` becomes: several scrapes, so every rate has points to work with.
const RATE_INTERVAL: &str = "10s";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `name` from the Debian package `prometheus`, or a failure that says how to get it.
fn prometheus_binary(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` not found: install the Debian package `prometheus` \
             (apt-get install prometheus; ./test.sh does it)"
        )
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

#[test]
fn alert_rules_pass_their_unit_tests() {
    let out = Command::new(prometheus_binary("promtool"))
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(repo_root().join("deploy"))
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool test rules failed:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

/// A Prometheus server on loopback with its own config and storage, killed on drop.
struct Prometheus {
    child: Child,
    base: String,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(proxy: &str, shim: &str, rules: &Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = format!(
            "global:\n  scrape_interval: {SCRAPE}\n  scrape_timeout: {SCRAPE}\n  evaluation_interval: {SCRAPE}\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n\
             \x20 - job_name: b2-proxy\n    static_configs:\n      - targets: [\"{proxy}\"]\n\
             \x20 - job_name: b2fs-shim\n    static_configs:\n      - targets: [\"{shim}\"]\n",
            rules = rules.display()
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(prometheus_binary("prometheus"))
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: common::http(),
            dir,
        };
        // Generous: a loaded 2-core machine starts it in a second or two.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = p.http.get(format!("{}/-/ready", p.base)).send().await
                && r.status() == 200
            {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in 30 s; its log:\n{}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> serde_json::Value {
        use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
        let params: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, NON_ALPHANUMERIC)))
            .collect();
        let r = self
            .http
            .get(format!("{}/api/v1/{path}?{}", self.base, params.join("&")))
            .send()
            .await
            .expect("prometheus API");
        r.json().await.expect("prometheus API answers JSON")
    }

    /// An instant query: its result vector, or the error Prometheus gave.
    async fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let v = self.api("query", &[("query", expr)]).await;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        match &v["data"]["result"] {
            serde_json::Value::Array(a) => Ok(a.clone()),
            // A scalar or a string: one value.
            other => Ok(vec![other.clone()]),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every `expr` of the dashboard with its panel's title.
fn dashboard_exprs(v: &serde_json::Value, title: &str, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            let title = m.get("title").and_then(|t| t.as_str()).unwrap_or(title);
            for (k, v) in m {
                match (k.as_str(), v.as_str()) {
                    ("expr", Some(e)) => out.push((title.to_string(), e.to_string())),
                    _ => dashboard_exprs(v, title, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, title, out)),
        _ => {}
    }
}

/// Grafana's variables as Prometheus takes them: every proxy and every shim, and a fixed rate window.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$instance", ".*")
        .replace("$shim", ".*")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_and_alerts_evaluate_in_prometheus() {
    // Latency with a tail and a stall on every range's first request (hedges win), and some failed answers.
    let env = start(
        Emulator::builder()
            .virtual_file("plots/a.plot", BIG)
            .virtual_file("plots/gone.plot", 1 << 30)
            .latency(Duration::from_millis(10), 0.3)
            .tail(0.05, Duration::from_millis(600))
            .first_attempt_delay(Duration::from_secs(3))
            .fault(Fault::InternalError, 0.05)
            .fault(Fault::Reset, 0.02)
            .seed(7),
        |c| {
            c.fetch.hedge_floor = Duration::from_millis(50);
            c.fetch.hedge_ceiling = Duration::from_millis(200);
            c.fetch.hedge_budget = 0.5;
        },
    )
    .await;
    let proxy_addr = env.base.trim_start_matches("http://").to_string();
    let shim_addr = format!("127.0.0.1:{}", free_port());
    let dirs = tempfile::tempdir().expect("tempdir");
    let mnt = dirs.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mount = Shim::new(&mnt, &env.base)
        .arg("--metrics")
        .arg(&shim_addr)
        .mount()
        .expect("mount");
    let prom = Prometheus::start(
        &proxy_addr,
        &shim_addr,
        &repo_root().join("deploy/alerts.yml"),
    )
    .await;

    // A file that disappears from the bucket after it was listed: reading it fails (EIO), so the errno
    // panel has something to show.
    env.emu.remove_file("plots/gone.plot").expect("remove");
    let gone = std::fs::File::open(mount.join("plots/gone.plot")).expect("open gone.plot");
    let err = gone
        .read_at(&mut [0u8; 8191], 0)
        .expect_err("a read of a removed file fails");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    drop(gone);

    // Load for a few seconds: 8 readers through the mount, 8191-byte reads at random offsets, with some
    // re-reads (hits), and streamed reads over HTTP.
    let path = mount.join("plots/a.plot");
    let load_for = Duration::from_secs(8);
    let until = Instant::now() + load_for;
    let env = Arc::new(env);
    let readers: Vec<_> = (0..8u64)
        .map(|t| {
            let (path, env) = (path.clone(), env.clone());
            std::thread::spawn(move || {
                let f = std::fs::File::open(&path).expect("open");
                let mut rng = Rng(t + 1);
                let mut buf = vec![0u8; 8191];
                let mut seen = Vec::new();
                while Instant::now() < until {
                    let a = if !seen.is_empty() && rng.below(3) == 0 {
                        seen[rng.below(seen.len() as u64) as usize]
                    } else {
                        rng.below(BIG - 8191)
                    };
                    seen.push(a);
                    // Reads that fail after the proxy's retries are EIO; the ones that succeed are exact.
                    if let Ok(n) = f.read_at(&mut buf, a) {
                        let want = env
                            .emu
                            .expected_bytes("plots/a.plot", a, n as u64)
                            .expect("bytes");
                        assert!(buf[..n] == want[..], "wrong bytes at {a}");
                    }
                }
            })
        })
        .collect();
    let mut rng = Rng(99);
    while Instant::now() < until {
        let a = rng.below(BIG - (4 << 20));
        let _ = env.get_range("plots/a.plot", a, a + (2 << 20)).await;
    }
    for r in readers {
        r.join().expect("reader");
    }

    // Until Prometheus has scraped the load's end from both targets (bounded: scrapes are every second).
    let deadline = Instant::now() + Duration::from_secs(30);
    let want_reads = env
        .metric("b2proxy_requests_total{outcome=\"hit_memory\",route=\"file\"}")
        .await;
    loop {
        let seen = prom
            .query("sum(b2proxy_requests_total{outcome=\"hit_memory\",route=\"file\"})")
            .await
            .ok()
            .and_then(|r| r.first()?["value"][1].as_str()?.parse::<f64>().ok());
        let shim_up = prom
            .query("up{job=\"b2fs-shim\"} == 1")
            .await
            .unwrap_or_default();
        if seen == Some(want_reads) && !shim_up.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus did not scrape the load (saw {seen:?} of {want_reads} hits); targets: {}",
            prom.api("targets", &[]).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let targets = prom.api("targets", &[]).await;
    let active = targets["data"]["activeTargets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(active.len(), 2, "{targets}");
    for t in &active {
        assert_eq!(t["health"], "up", "{t}");
    }

    // Every panel expression: valid, and with at least one series.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("grafana/b2fs-dashboard.json"))
            .expect("dashboard"),
    )
    .expect("dashboard is JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dash["panels"], "", &mut exprs);
    assert!(exprs.len() >= 40, "{} panel expressions", exprs.len());
    let mut failures = Vec::new();
    for (panel, expr) in &exprs {
        match prom.query(&substitute(expr)).await {
            Ok(r) if r.is_empty() => failures.push(format!("{panel}: no series: {expr}")),
            Ok(_) => {}
            Err(e) => failures.push(format!("{panel}: {e}: {expr}")),
        }
    }
    // The variables: Grafana's label_values(metric, label) lists a label of a metric's series.
    for var in dash["templating"]["list"].as_array().expect("variables") {
        let Some(q) = var["query"]["query"].as_str() else {
            continue;
        };
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .and_then(|s| s.rsplit_once(','))
            .unwrap_or_else(|| panic!("variable {}: {q}", var["name"]));
        let expr = format!("count by ({}) ({})", inner.1.trim(), inner.0.trim());
        match prom.query(&expr).await {
            Ok(r) if r.is_empty() => {
                failures.push(format!("variable {}: no values: {q}", var["name"]))
            }
            Ok(_) => {}
            Err(e) => failures.push(format!("variable {}: {e}: {q}", var["name"])),
        }
    }

    // Every rule of alerts.yml: loaded, evaluated by Prometheus itself without error, and valid as a query.
    let rules_text =
        std::fs::read_to_string(repo_root().join("deploy/alerts.yml")).expect("alerts");
    let defined = rules_text
        .lines()
        .filter(|l| {
            l.trim_start().starts_with("- alert:") || l.trim_start().starts_with("- record:")
        })
        .count();
    let deadline = Instant::now() + Duration::from_secs(20);
    let rules = loop {
        let v = prom.api("rules", &[]).await;
        let rules: Vec<serde_json::Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        // Evaluated at least once each (an unevaluated rule has no lastEvaluation).
        let evaluated = rules
            .iter()
            .filter(|r| {
                !r["lastEvaluation"]
                    .as_str()
                    .unwrap_or("0001")
                    .starts_with("0001")
            })
            .count();
        if rules.len() == defined && evaluated == defined {
            break rules;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {defined} rules loaded, {evaluated} evaluated: {v}",
            rules.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for r in &rules {
        let name = r["name"].as_str().unwrap_or("?");
        if r["health"] != "ok" {
            failures.push(format!(
                "rule {name}: health {} ({})",
                r["health"], r["lastError"]
            ));
        }
        if let Err(e) = prom.query(r["query"].as_str().unwrap_or("")).await {
            failures.push(format!("rule {name}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!(
        "{} panel expressions and {} rules evaluated in Prometheus after {load_for:?} of load",
        exprs.len(),
        rules.len()
    );
    drop(prom);
    mount.terminate(Duration::from_secs(10)).expect("unmount");
}
