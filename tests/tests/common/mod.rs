//! Shared harness for the end-to-end tests: an emulator, a proxy pointed at it (in-process, real HTTP over
//! loopback), and helpers to read through the proxy and compare with the emulator's expected bytes.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use b2_proxy::config::Config;
use b2_proxy::server::Proxy;
use b2fs_tests::emulator::{Emulator, EmulatorBuilder};
use bytesize::ByteSize;

pub struct Env {
    pub emu: Emulator,
    pub proxy: Option<Proxy>,
    pub base: String,
    pub http: reqwest::Client,
    pub config: Config,
    pub cache_dir: tempfile::TempDir,
}

/// A proxy configuration for `emu` with small caches and short timeouts suitable for tests.
pub fn config_for(emu: &Emulator, cache_dir: &Path) -> Config {
    let mut c = Config {
        b2: Some(emu.proxy_b2_config()),
        ..Config::default()
    };
    c.server.listen = "127.0.0.1:0".parse().expect("addr");
    c.cache.memory = ByteSize::mib(64);
    c.cache.disk = ByteSize::mib(64);
    c.cache.disk_dir = cache_dir.to_path_buf();
    c.fetch.timeout = Duration::from_secs(3);
    c.fetch.read_deadline = Duration::from_secs(15);
    c.catalog.refresh = Duration::from_secs(300);
    c
}

/// The body of `req`'s answer as text (panics with the URL on a transport error).
pub async fn get_text(req: reqwest::RequestBuilder) -> String {
    let r = req.send().await.expect("request");
    let url = r.url().clone();
    r.text()
        .await
        .unwrap_or_else(|e| panic!("body of {url}: {e}"))
}

/// The sum of the samples whose line starts with `name_and_labels` on the proxy at `base`.
pub async fn metric(http: &reqwest::Client, base: &str, name_and_labels: &str) -> f64 {
    let text = get_text(http.get(format!("{base}/metrics"))).await;
    text.lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()
        .expect("client")
}

/// Starts the emulator from `builder` and a proxy configured by `config_for` then `tweak`; waits until ready.
pub async fn start(builder: EmulatorBuilder, tweak: impl FnOnce(&mut Config)) -> Env {
    let emu = builder.start().await.expect("emulator starts");
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let mut config = config_for(&emu, cache_dir.path());
    tweak(&mut config);
    let proxy = Proxy::start(&config).await.expect("proxy starts");
    let base = format!("http://{}", proxy.addr);
    let env = Env {
        emu,
        proxy: Some(proxy),
        base,
        http: http(),
        config,
        cache_dir,
    };
    env.wait_healthy(Duration::from_secs(15)).await;
    env
}

impl Env {
    pub async fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(r) = self.http.get(format!("{}/healthz", self.base)).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "proxy not healthy within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("{}/files/{}", self.base, name)
    }

    /// GET with `Range: bytes=start-(end-1)`; returns status and body.
    pub async fn get_range(&self, name: &str, start: u64, end: u64) -> (u16, bytes::Bytes) {
        let r = self
            .http
            .get(self.url(name))
            .header("Range", format!("bytes={}-{}", start, end - 1))
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.bytes().await.unwrap_or_default())
    }

    /// Reads through the proxy and asserts the bytes equal the emulator's.
    pub async fn assert_range(&self, name: &str, start: u64, end: u64) {
        let (status, body) = self.get_range(name, start, end).await;
        assert_eq!(
            status,
            206,
            "{name} {start}..{end}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
        let want = self
            .emu
            .expected_bytes(name, start, end - start)
            .expect("expected bytes");
        assert!(body[..] == want[..], "{name} {start}..{end}: wrong bytes");
    }

    pub fn downloads(&self) -> u64 {
        let s = self.emu.stats();
        s.requests.download_by_id + s.requests.download_by_name
    }

    pub async fn stop_proxy(&mut self) {
        if let Some(p) = self.proxy.take() {
            p.shutdown().await;
        }
    }

    pub async fn restart_proxy(&mut self) {
        self.stop_proxy().await;
        let proxy = Proxy::start(&self.config).await.expect("proxy restarts");
        self.base = format!("http://{}", proxy.addr);
        self.proxy = Some(proxy);
        self.wait_healthy(Duration::from_secs(15)).await;
    }

    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        metric(&self.http, &self.base, name_and_labels).await
    }
}

/// Small deterministic PRNG for test offsets (no dependency, reproducible).
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Sends a request line byte-for-byte (no client-side path normalisation) and returns the status code.
pub async fn raw_status(addr: &str, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let head = String::from_utf8_lossy(&buf[..buf.len().min(64)]).to_string();
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Path of a binary that `cargo test --workspace` builds next to the test executables.
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join(name);
    assert!(
        bin.exists(),
        "{} missing: run `cargo test --workspace` (or `cargo build -p b2-proxy -p b2fs-shim`) first",
        bin.display()
    );
    bin
}

/// A b2-proxy process (for crash, RSS and load tests), killed on drop.
pub struct ProxyProcess {
    pub child: std::process::Child,
    pub base: String,
    pub config_path: std::path::PathBuf,
}

impl ProxyProcess {
    /// Writes `extra` TOML after the [b2] section for `emu` and starts the binary on a free port.
    pub async fn start(emu: &Emulator, dir: &Path, extra: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("port")
            .local_addr()
            .expect("addr")
            .port();
        let config_path = dir.join("config.toml");
        let text = format!("{}{extra}\n", emu.proxy_b2_toml());
        let text = if text.contains("[server]") {
            text.replace(
                "[server]",
                &format!("[server]\nlisten = \"127.0.0.1:{port}\""),
            )
        } else {
            format!("{text}[server]\nlisten = \"127.0.0.1:{port}\"\n")
        };
        let text = if text.contains("[cache]") {
            text
        } else {
            format!("{text}[cache]\nmemory = \"64MiB\"\ndisk = 0\n")
        };
        std::fs::write(&config_path, text).expect("config");
        // Holds the key: private, as the proxy asks.
        std::fs::set_permissions(
            &config_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod");
        let child = std::process::Command::new(workspace_bin("b2-proxy"))
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn b2-proxy");
        let p = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            config_path,
        };
        let http = http();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{}/healthz", p.base)).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(Instant::now() < deadline, "b2-proxy process not ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p
    }

    /// Resident memory of the process in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
