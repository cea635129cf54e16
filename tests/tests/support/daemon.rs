//! A `b2-proxy` process for the disk-fault and memory tests: its own config file, its log captured to a file,
//! signals, exit status and memory figures from /proc. (Included with `#[path]`: not a test target of its own.)
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use b2fs_tests::emulator::Emulator;

pub struct Daemon {
    child: Child,
    pub base: String,
    pub log_path: PathBuf,
}

/// Path of a binary that `cargo test --workspace` builds next to the test executables.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join(name);
    assert!(
        bin.exists(),
        "{} missing: run `cargo test --workspace` (or `cargo build -p b2-proxy`) first",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port()
}

impl Daemon {
    /// Starts b2-proxy for `emu` with `sections` (TOML after the [b2] section; a `[server]` section, if any,
    /// gets the listen address put first). The log goes to `dir/proxy.log`.
    pub fn spawn(emu: &Emulator, dir: &Path, sections: &str) -> Self {
        let port = free_port();
        let listen = format!("listen = \"127.0.0.1:{port}\"");
        let sections = if sections.contains("[server]") {
            sections.replace("[server]", &format!("[server]\n{listen}"))
        } else {
            format!("{sections}\n[server]\n{listen}\n")
        };
        let config_path = dir.join("config.toml");
        std::fs::write(
            &config_path,
            format!("{}\n{sections}\n", emu.proxy_b2_toml()),
        )
        .expect("config");
        std::fs::set_permissions(
            &config_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod");
        let log_path = dir.join("proxy.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(workspace_bin("b2-proxy"))
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn b2-proxy");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until /healthz answers 200; `Err` with the log if the process exits or `limit` passes.
    pub async fn wait_ready(
        &mut self,
        http: &reqwest::Client,
        limit: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("b2-proxy exited with {status}:\n{}", self.log()));
            }
            if let Ok(r) = http.get(format!("{}/healthz", self.base)).send().await
                && r.status() == 200
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "b2-proxy not ready within {limit:?}:\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends SIGTERM and waits for the exit: (status, time taken).
    pub fn terminate(&mut self, limit: Duration) -> (Option<ExitStatus>, Duration) {
        let t = Instant::now();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let s = self.wait_exit(limit);
        (s, t.elapsed())
    }

    /// (VmRSS, VmHWM) in bytes.
    pub fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
                .map(|kb| kb * 1024)
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Resets VmHWM to the current RSS (Linux: write 5 to clear_refs).
    pub fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5");
    }

    pub async fn health(&self, http: &reqwest::Client) -> serde_json::Value {
        match http.get(format!("{}/healthz", self.base)).send().await {
            Ok(r) => r.json().await.unwrap_or(serde_json::Value::Null),
            Err(_) => serde_json::Value::Null,
        }
    }

    /// Sum of the samples of `name_and_labels` in /metrics.
    pub async fn metric(&self, http: &reqwest::Client, name_and_labels: &str) -> f64 {
        let Ok(r) = http.get(format!("{}/metrics", self.base)).send().await else {
            return f64::NAN;
        };
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(name_and_labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()
        .expect("client")
}

pub fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}
