//! The system under test, built and torn down by the benchmark: the B2 emulator (in-process), a b2-proxy (as
//! its own process by default, or in-process) pointed at it, and optionally a b2fs-shim mount of the proxy.
//! [`Stack::start_behind_haproxy`] runs several proxy processes behind a real HAProxy on the shipped
//! `deploy/haproxy.cfg` instead; `base` is then HAProxy's address.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use b2_proxy::config::Config;
use b2_proxy::server::Proxy;
use bytesize::ByteSize;
use serde::Serialize;

use crate::emulator::{Emulator, EmulatorBuilder, Stats, b2_section_toml};

/// Where the proxy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyMode {
    /// `b2-proxy` as a child process (its RSS is measured alone).
    Process,
    /// `b2_proxy::server::Proxy` inside the bench process (RSS is the bench's own).
    Inproc,
}

/// Paths of the binaries the bench spawns (next to its own executable: target/<profile>/).
#[derive(Debug, Clone)]
pub struct Binaries {
    pub proxy: PathBuf,
    pub shim: PathBuf,
}

/// Finds `b2-proxy` and `b2fs-shim` in the bench's own target directory (and makes sure the `b2fs-pos2`
/// prover tool is there for the pos2 scenario). When the bench runs under cargo
/// (`CARGO` is set) and `build` is true, first runs `cargo build` for them with the bench's profile, so the
/// numbers are never taken on stale binaries (a no-op when they are up to date).
pub fn binaries(build: bool) -> anyhow::Result<Binaries> {
    let exe = std::env::current_exe().context("cannot find the bench executable")?;
    let mut dir = exe
        .parent()
        .context("bench executable has no directory")?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    if build {
        // The chia-pos2 prover tool too (it cannot be linked into a binary with b2-proxy).
        crate::siblings::build(&[
            ("b2-proxy", "b2-proxy"),
            ("b2fs-shim", "b2fs-shim"),
            ("b2fs-tests", "b2fs-pos2"),
        ])?;
    }
    let bins = Binaries {
        proxy: dir.join("b2-proxy"),
        shim: dir.join("b2fs-shim"),
    };
    for b in [&bins.proxy, &bins.shim] {
        if !b.exists() {
            bail!(
                "{} is missing: build it with `cargo build -p b2-proxy -p b2fs-shim` in the bench's profile \
                 (or run the bench through `cargo run`, without --no-build)",
                b.display()
            );
        }
    }
    Ok(bins)
}

/// Resident memory of a process from `/proc/PID/status` (VmRSS), in bytes.
pub fn rss_of(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    rss_from_status(&text)
}

/// CPU time (user + system) a process has used, from `/proc/PID/stat`.
pub fn cpu_seconds_of(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count fields after its end.
    let rest = text.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the name.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks / hz as f64)
}

/// The machine's CPU time so far from `/proc/stat`: (busy, total) in clock ticks over all CPUs.
pub fn machine_cpu_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Resident memory of the bench process itself.
pub fn own_rss() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    rss_from_status(&text)
}

fn rss_from_status(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A resident-memory measurement and what it is of.
#[derive(Debug, Clone, Serialize)]
pub struct Rss {
    pub bytes: u64,
    /// `proxy process` or `bench process (in-process proxy)`.
    pub of: String,
}

impl Rss {
    pub fn short(&self) -> String {
        let mib = self.bytes as f64 / (1 << 20) as f64;
        if self.of.starts_with("proxy") {
            format!("{mib:.0} MiB")
        } else {
            format!("{mib:.0} MiB (bench, in-proc)")
        }
    }
}

/// Proxy settings the scenarios vary.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub hedge: bool,
    /// `fetch.hedge_quantile`; `None` keeps the proxy's default.
    pub hedge_quantile: Option<f64>,
    pub memory: ByteSize,
    pub disk: ByteSize,
    /// `cache.block_size`; `None` keeps the proxy's default.
    pub block_size: Option<ByteSize>,
    pub schedule: Schedule,
}

/// The upstream scheduler's settings (`[fetch]`); `None` keeps the proxy's default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Schedule {
    pub max_rps: Option<f64>,
    pub max_concurrency: Option<usize>,
    pub adaptive: Option<bool>,
    pub prioritize: Option<bool>,
}

impl Schedule {
    /// The proxy before it had a scheduler: a fixed 64 requests in flight, FIFO, no pace.
    pub fn off() -> Self {
        Self {
            max_rps: Some(0.0),
            max_concurrency: Some(64),
            adaptive: Some(false),
            prioritize: Some(false),
        }
    }
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            hedge: true,
            hedge_quantile: None,
            memory: ByteSize::gib(1),
            disk: ByteSize::gib(1),
            block_size: None,
            schedule: Schedule::default(),
        }
    }
}

/// What a proxy restart took.
#[derive(Debug, Clone, Copy)]
pub struct ProxyRestart {
    /// SIGTERM until the process exited.
    pub stop: Duration,
    /// It exited by itself (else it was killed after 120 s).
    pub clean: bool,
    /// Spawn until `/healthz` said 200.
    pub start: Duration,
}

enum ProxyHandle {
    Inproc(Proxy),
    Process { child: Child, log: PathBuf },
}

/// Emulator + proxy, plus the HTTP client the bench reads through.
pub struct Stack {
    pub emu: std::sync::Arc<Emulator>,
    proxy: Option<ProxyHandle>,
    pub base: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
    /// Time from starting the proxy until `/healthz` said the catalog is loaded.
    pub proxy_ready: Duration,
    /// Behind HAProxy: the proxies after the first, each with its own URL, and HAProxy.
    more: Vec<(ProxyHandle, String)>,
    lb: Option<crate::haproxy::HaProxy>,
    /// The first proxy's own URL (`base` is HAProxy's when there is one).
    first_base: String,
}

/// A keep-alive client sized for 64 concurrent reads.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()
        .context("cannot build the HTTP client")
}

fn proxy_config(emu: &Emulator, dir: &Path, listen: SocketAddr, s: &ProxySettings) -> Config {
    let mut c = Config {
        b2: Some(emu.proxy_b2_config()),
        ..Config::default()
    };
    c.server.listen = listen;
    c.cache.memory = s.memory;
    c.cache.disk = s.disk;
    c.cache.disk_dir = dir.join("cache");
    c.fetch.hedge = s.hedge;
    if let Some(b) = s.block_size {
        c.cache.block_size = b;
    }
    if let Some(q) = s.hedge_quantile {
        c.fetch.hedge_quantile = q;
    }
    let f = &mut c.fetch;
    let sch = s.schedule;
    f.max_requests_per_second = sch.max_rps.unwrap_or(f.max_requests_per_second);
    f.max_concurrency = sch.max_concurrency.unwrap_or(f.max_concurrency);
    f.adaptive_concurrency = sch.adaptive.unwrap_or(f.adaptive_concurrency);
    f.prioritize = sch.prioritize.unwrap_or(f.prioritize);
    c
}

/// The config as TOML for the proxy process (written by hand: only the keys we set).
fn config_toml(c: &Config) -> String {
    let b2 = c.b2.as_ref().map(b2_section_toml).unwrap_or_default();
    format!(
        "{b2}[server]\nlisten = \"{}\"\n\
         [cache]\nmemory = {}\ndisk = {}\ndisk_dir = {:?}\nblock_size = {}\n\
         [fetch]\nhedge = {}\nhedge_quantile = {}\nmax_requests_per_second = {:?}\n\
         max_concurrency = {}\nadaptive_concurrency = {}\nprioritize = {}\n",
        c.server.listen,
        c.cache.memory.as_u64(),
        c.cache.disk.as_u64(),
        c.cache.disk_dir.display().to_string(),
        c.cache.block_size.as_u64(),
        c.fetch.hedge,
        c.fetch.hedge_quantile,
        c.fetch.max_requests_per_second,
        c.fetch.max_concurrency,
        c.fetch.adaptive_concurrency,
        c.fetch.prioritize,
    )
}

/// The file in a run's directory that names the bench process it belongs to.
const OWNER_FILE: &str = "owner.pid";

/// A run's directory in the system temp dir (`b2fs-bench-*`: caches, configs, logs, mounts), removed when the
/// run ends. A bench that was killed cannot remove its own, and a scale run's holds a preallocated disk tier
/// of many GiB: so first the directories of bench processes that are gone are removed (their mounts detached
/// first), with a line on stderr for each.
fn run_dir() -> anyhow::Result<tempfile::TempDir> {
    remove_stale_run_dirs(&std::env::temp_dir());
    let dir = tempfile::Builder::new()
        .prefix("b2fs-bench-")
        .tempdir()
        .context("temp dir")?;
    std::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())
        .context("writing the run directory's owner")?;
    Ok(dir)
}

/// Removes `tmp/b2fs-bench-*` directories whose owner process no longer runs. Directories without an owner
/// file (a run starting right now, or one from an older bench) are left alone.
fn remove_stale_run_dirs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("b2fs-bench-")
        {
            continue;
        }
        let Some(pid) = std::fs::read_to_string(path.join(OWNER_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // A killed run's shims may still have their mounts here: detach them, or removal would walk into a
        // dead FUSE mount.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            for mnt in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
                if Path::new(mnt).starts_with(&path) {
                    let _ = Command::new("fusermount3")
                        .args(["-u", "-z", mnt])
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => eprintln!(
                "b2fs-bench: removed {} (left by bench process {pid}, which is gone)",
                path.display()
            ),
            Err(e) => eprintln!(
                "b2fs-bench: could not remove {} (left by bench process {pid}): {e}",
                path.display()
            ),
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Stack {
    /// Starts the emulator from `builder`, then a proxy on it; waits until the proxy's catalog is loaded.
    pub async fn start(
        builder: EmulatorBuilder,
        settings: &ProxySettings,
        mode: ProxyMode,
        bins: &Binaries,
    ) -> anyhow::Result<Self> {
        let emu = builder.start().await.context("emulator start")?;
        let dir = run_dir()?;
        let http = http_client()?;
        let started = Instant::now();
        let (proxy, base) = match mode {
            ProxyMode::Inproc => {
                let config = proxy_config(
                    &emu,
                    dir.path(),
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    settings,
                );
                let proxy = Proxy::start(&config)
                    .await
                    .map_err(|e| anyhow::anyhow!("in-process proxy: {e}"))?;
                let base = format!("http://{}", proxy.addr);
                (ProxyHandle::Inproc(proxy), base)
            }
            ProxyMode::Process => {
                let port = free_port()?;
                let config = proxy_config(
                    &emu,
                    dir.path(),
                    SocketAddr::from(([127, 0, 0, 1], port)),
                    settings,
                );
                let cfg_path = dir.path().join("proxy.toml");
                std::fs::write(&cfg_path, config_toml(&config))?;
                let log = dir.path().join("proxy.log");
                let child = spawn_proxy(&bins.proxy, &cfg_path, &log)?;
                (
                    ProxyHandle::Process { child, log },
                    format!("http://127.0.0.1:{port}"),
                )
            }
        };
        let mut stack = Self {
            emu: std::sync::Arc::new(emu),
            proxy: Some(proxy),
            first_base: base.clone(),
            base,
            http,
            dir,
            proxy_ready: Duration::ZERO,
            more: Vec::new(),
            lb: None,
        };
        stack.wait_healthy(Duration::from_secs(120)).await?;
        stack.proxy_ready = started.elapsed();
        Ok(stack)
    }

    /// Starts the emulator from `builder`, then `n` proxy processes on it, each with 1/n of `settings`'
    /// memory and disk tiers (the same total cache as one proxy) and the upstream rate limit off
    /// (`fetch.max_requests_per_second = 0`: B2's limit is per account, and splitting it would compare the
    /// split, not the proxies), then HAProxy on the shipped config in front of them. `base` is HAProxy's URL;
    /// `proxy_ready` runs until every proxy's catalog is loaded and HAProxy accepts connections.
    pub async fn start_behind_haproxy(
        builder: EmulatorBuilder,
        settings: &ProxySettings,
        n: usize,
        bins: &Binaries,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(n >= 1, "at least one proxy");
        crate::haproxy::binary()?;
        let emu = builder.start().await.context("emulator start")?;
        let dir = run_dir()?;
        let http = http_client()?;
        let started = Instant::now();
        // The upstream rate limit off whatever the run's settings: this measures what the proxies carry.
        let each = ProxySettings {
            memory: ByteSize::b(settings.memory.as_u64() / n as u64),
            disk: ByteSize::b(settings.disk.as_u64() / n as u64),
            schedule: Schedule {
                max_rps: Some(0.0),
                ..settings.schedule
            },
            ..settings.clone()
        };
        let mut proxies = Vec::with_capacity(n);
        for i in 0..n {
            let port = free_port()?;
            let pdir = dir.path().join(format!("proxy{}", i + 1));
            std::fs::create_dir_all(&pdir)?;
            let config = proxy_config(&emu, &pdir, SocketAddr::from(([127, 0, 0, 1], port)), &each);
            let cfg_path = pdir.join("proxy.toml");
            std::fs::write(&cfg_path, config_toml(&config))?;
            let log = pdir.join("proxy.log");
            let child = spawn_proxy(&bins.proxy, &cfg_path, &log)?;
            proxies.push((
                ProxyHandle::Process { child, log },
                format!("http://127.0.0.1:{port}"),
            ));
        }
        let addrs: Vec<SocketAddr> = proxies
            .iter()
            .filter_map(|(_, b)| b.trim_start_matches("http://").parse().ok())
            .collect();
        let mut proxies = proxies.into_iter();
        let Some((first, first_base)) = proxies.next() else {
            bail!("no proxy started");
        };
        let mut stack = Self {
            emu: std::sync::Arc::new(emu),
            proxy: Some(first),
            base: first_base.clone(),
            first_base,
            http,
            dir,
            proxy_ready: Duration::ZERO,
            more: proxies.collect(),
            lb: None,
        };
        stack.wait_healthy(Duration::from_secs(120)).await?;
        let lb_dir = stack.dir.path().join("haproxy");
        std::fs::create_dir_all(&lb_dir)?;
        let frontend = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let cfg = crate::haproxy::config_for(crate::haproxy::SHIPPED_CONFIG, frontend, &addrs)?;
        let lb = tokio::task::spawn_blocking(move || {
            crate::haproxy::HaProxy::start(&lb_dir, &cfg, frontend)
        })
        .await??;
        stack.base = lb.url();
        stack.lb = Some(lb);
        stack.proxy_ready = started.elapsed();
        Ok(stack)
    }

    /// How many proxies run (behind HAProxy when more than one, or when started by
    /// [`Stack::start_behind_haproxy`]).
    pub fn proxy_count(&self) -> usize {
        usize::from(self.proxy.is_some()) + self.more.len()
    }

    /// Whether the proxies run behind HAProxy.
    pub fn behind_haproxy(&self) -> bool {
        self.lb.is_some()
    }

    /// Every proxy's own URL (not HAProxy's).
    fn proxy_bases(&self) -> Vec<String> {
        std::iter::once(self.first_base.clone())
            .chain(self.more.iter().map(|(_, b)| b.clone()))
            .collect()
    }

    /// Stops the proxy process with SIGTERM (it closes its disk tier) and starts it again with the same config,
    /// port and disk tier, until `/healthz` answers 200. Process mode only.
    pub async fn restart_proxy(&mut self, bins: &Binaries) -> anyhow::Result<ProxyRestart> {
        self.restart_proxy_with(bins, None).await
    }

    /// [`Stack::restart_proxy`], with `settings` (when given) replacing the config's (same port and disk
    /// tier directory).
    pub async fn restart_proxy_with(
        &mut self,
        bins: &Binaries,
        settings: Option<&ProxySettings>,
    ) -> anyhow::Result<ProxyRestart> {
        if self.lb.is_some() {
            bail!("a proxy restart is measured with one proxy, without HAProxy");
        }
        let Some(ProxyHandle::Process { child, log }) = self.proxy.take() else {
            bail!("a proxy restart needs --proxy process");
        };
        let t = Instant::now();
        let clean = stop_child_within(child, Duration::from_secs(120)).await;
        let stop = t.elapsed();
        let cfg_path = self.dir.path().join("proxy.toml");
        if let Some(s) = settings {
            let listen: SocketAddr = self
                .base
                .trim_start_matches("http://")
                .parse()
                .with_context(|| format!("proxy address {}", self.base))?;
            let config = proxy_config(&self.emu, self.dir.path(), listen, s);
            std::fs::write(&cfg_path, config_toml(&config))?;
        }
        let started = Instant::now();
        let child = spawn_proxy(&bins.proxy, &cfg_path, &log)?;
        self.proxy = Some(ProxyHandle::Process { child, log });
        self.wait_healthy(Duration::from_secs(300)).await?;
        Ok(ProxyRestart {
            stop,
            clean,
            start: started.elapsed(),
        })
    }

    /// Waits until every proxy's `/healthz` (asked directly, not through HAProxy) says 200.
    async fn wait_healthy(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        for base in self.proxy_bases() {
            loop {
                if let Ok(r) = self.http.get(format!("{base}/healthz")).send().await
                    && r.status() == 200
                {
                    break;
                }
                let handles = self
                    .proxy
                    .iter_mut()
                    .chain(self.more.iter_mut().map(|(h, _)| h));
                for h in handles {
                    if let ProxyHandle::Process { child, log } = h
                        && let Ok(Some(status)) = child.try_wait()
                    {
                        let text = std::fs::read_to_string(&*log).unwrap_or_default();
                        bail!("b2-proxy exited at start ({status}): {}", text.trim());
                    }
                }
                if Instant::now() > deadline {
                    bail!("proxy {base} not healthy within {limit:?}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// The emulator, shareable with tasks.
    pub fn emu_arc(&self) -> std::sync::Arc<Emulator> {
        self.emu.clone()
    }

    /// The proxy URL of a file.
    pub fn url(&self, name: &str) -> String {
        format!(
            "{}/files/{}",
            self.base,
            crate::emulator::encode_file_name(name)
        )
    }

    /// PID of the proxy process, when it is one.
    pub fn proxy_pid(&self) -> Option<u32> {
        match self.proxy.as_ref()? {
            ProxyHandle::Process { child, .. } => Some(child.id()),
            ProxyHandle::Inproc(_) => None,
        }
    }

    /// The proxy's resident memory (or the bench's, with an in-process proxy); behind HAProxy, the sum over
    /// the proxies.
    pub fn proxy_rss(&self) -> Option<Rss> {
        if !self.more.is_empty() {
            let pids = self.more.iter().filter_map(|(h, _)| match h {
                ProxyHandle::Process { child, .. } => Some(child.id()),
                ProxyHandle::Inproc(_) => None,
            });
            let bytes = self
                .proxy_pid()
                .into_iter()
                .chain(pids)
                .filter_map(rss_of)
                .sum();
            return Some(Rss {
                bytes,
                of: format!("proxy processes ({})", self.proxy_count()),
            });
        }
        match self.proxy_pid() {
            Some(pid) => rss_of(pid).map(|bytes| Rss {
                bytes,
                of: "proxy process".into(),
            }),
            None => own_rss().map(|bytes| Rss {
                bytes,
                of: "bench process (in-process proxy)".into(),
            }),
        }
    }

    /// The sum of the proxy's Prometheus samples whose line starts with `prefix` (a metric name, optionally
    /// with labels), over every proxy; `None` if there are none or `/metrics` cannot be read.
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let values: Vec<f64> = self
            .metrics()
            .await
            .into_iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// Every proxy's whole `/metrics` text as (sample name with labels, value) pairs, asked directly (not
    /// through HAProxy), one after the other; unreadable ones are left out.
    pub async fn metrics(&self) -> Vec<(String, f64)> {
        self.metrics_each().await.into_iter().flatten().collect()
    }

    /// [`Stack::metrics`] of each proxy apart (for values that do not add up, like a block size).
    pub async fn metrics_each(&self) -> Vec<Vec<(String, f64)>> {
        let mut out = Vec::new();
        for base in self.proxy_bases() {
            let Ok(resp) = self.http.get(format!("{base}/metrics")).send().await else {
                continue;
            };
            let Ok(text) = resp.text().await else {
                continue;
            };
            out.push(
                text.lines()
                    .filter(|l| !l.starts_with('#'))
                    .filter_map(|l| {
                        let (name, v) = l.rsplit_once(' ')?;
                        Some((name.to_string(), v.parse().ok()?))
                    })
                    .collect(),
            );
        }
        out
    }

    /// CPU time (user + system) used so far by the proxy processes, and by HAProxy when there is one.
    pub fn cpu_seconds(&self) -> (Option<f64>, Option<f64>) {
        let mut pids: Vec<u32> = self.proxy_pid().into_iter().collect();
        pids.extend(self.more.iter().filter_map(|(h, _)| match h {
            ProxyHandle::Process { child, .. } => Some(child.id()),
            ProxyHandle::Inproc(_) => None,
        }));
        let proxies = pids.iter().map(|p| cpu_seconds_of(*p)).sum::<Option<f64>>();
        let lb = self
            .lb
            .as_ref()
            .and_then(|l| l.pid())
            .and_then(cpu_seconds_of);
        (proxies, lb)
    }

    /// Upstream download requests so far (by id and by name).
    pub fn downloads(stats: &Stats) -> u64 {
        stats.requests.download_by_id + stats.requests.download_by_name
    }

    /// Stops the proxy (SIGTERM, bounded wait, then SIGKILL) and the emulator.
    pub async fn shutdown(mut self) {
        if let Some(mut lb) = self.lb.take() {
            let _ = tokio::task::spawn_blocking(move || lb.stop()).await;
        }
        for (h, _) in std::mem::take(&mut self.more) {
            if let ProxyHandle::Process { child, .. } = h {
                stop_child(child).await;
            }
        }
        match self.proxy.take() {
            Some(ProxyHandle::Inproc(p)) => p.shutdown().await,
            Some(ProxyHandle::Process { child, .. }) => stop_child(child).await,
            None => {}
        }
        self.emu.shutdown().await;
    }
}

/// Starts `b2-proxy --config cfg`, its stderr appended to `log`.
fn spawn_proxy(proxy: &Path, cfg: &Path, log: &Path) -> anyhow::Result<Child> {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Command::new(proxy)
        .arg("--config")
        .arg(cfg)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .with_context(|| format!("cannot start {}", proxy.display()))
}

/// SIGTERM, up to 10 s for a clean exit, then SIGKILL.
pub async fn stop_child(child: Child) {
    stop_child_within(child, Duration::from_secs(10)).await;
}

/// SIGTERM, up to `limit` for a clean exit (true), then SIGKILL (false).
pub async fn stop_child_within(mut child: Child, limit: Duration) -> bool {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

impl Drop for Stack {
    fn drop(&mut self) {
        let more = std::mem::take(&mut self.more).into_iter().map(|(h, _)| h);
        for h in self.proxy.take().into_iter().chain(more) {
            if let ProxyHandle::Process { mut child, .. } = h {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmrss_parses() {
        let s = "Name:\tx\nVmPeak:\t  100 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(rss_from_status(s), Some(2 << 20));
        assert_eq!(rss_from_status("Name: x\n"), None);
    }

    #[test]
    fn run_dirs_of_gone_benches_are_removed_and_others_kept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // A pid that ran and is gone.
        let mut child = Command::new("true").spawn().expect("spawn true");
        let gone = child.id();
        child.wait().expect("wait");
        let make = |name: &str, owner: Option<u32>| {
            let d = tmp.path().join(name);
            std::fs::create_dir_all(d.join("cache")).expect("mkdir");
            std::fs::write(d.join("cache/disk"), b"x").expect("write");
            if let Some(pid) = owner {
                std::fs::write(d.join(OWNER_FILE), pid.to_string()).expect("write");
            }
            d
        };
        let stale = make("b2fs-bench-stale", Some(gone));
        let live = make("b2fs-bench-live", Some(std::process::id()));
        let unowned = make("b2fs-bench-unowned", None);
        let other = make("not-a-bench", Some(gone));
        remove_stale_run_dirs(tmp.path());
        assert!(!stale.exists(), "the gone bench's directory is removed");
        for kept in [live, unowned, other] {
            assert!(
                kept.join("cache/disk").exists(),
                "{} is kept",
                kept.display()
            );
        }
    }

    #[test]
    fn cpu_times_read() {
        let mine = cpu_seconds_of(std::process::id()).expect("own /proc/PID/stat");
        assert!(mine >= 0.0);
        let (busy, total) = machine_cpu_ticks().expect("/proc/stat");
        assert!(busy <= total && total > 0);
    }

    #[test]
    fn scheduler_settings_reach_the_proxy_config() {
        let emu_free = b2_proxy::config::B2Config {
            key_id: "k".into(),
            application_key: "s".into(),
            bucket: Some("b".into()),
            bucket_id: None,
            prefix: String::new(),
            endpoint: "http://127.0.0.1:1".into(),
        };
        let mut c = Config {
            b2: Some(emu_free),
            ..Config::default()
        };
        let off = Schedule::off();
        c.fetch.max_requests_per_second = off.max_rps.unwrap_or(-1.0);
        c.fetch.max_concurrency = off.max_concurrency.unwrap_or(0);
        c.fetch.adaptive_concurrency = off.adaptive.unwrap_or(true);
        c.fetch.prioritize = off.prioritize.unwrap_or(true);
        let text = config_toml(&c);
        let back = Config::parse(&text).expect(&text);
        assert_eq!(back.fetch.max_requests_per_second, 0.0, "{text}");
        assert_eq!(back.fetch.max_concurrency, 64, "{text}");
        assert!(
            !back.fetch.adaptive_concurrency && !back.fetch.prioritize,
            "{text}"
        );
    }

    #[test]
    fn config_round_trips_through_the_proxy_parser() {
        let c = Config {
            b2: Some(b2_proxy::config::B2Config {
                key_id: "k".into(),
                application_key: "s\"q".into(),
                bucket: Some("b".into()),
                bucket_id: None,
                prefix: String::new(),
                endpoint: "http://127.0.0.1:1".into(),
            }),
            ..Config::default()
        };
        let text = config_toml(&c);
        let back = Config::parse(&text).expect(&text);
        back.validate().expect("valid");
        assert_eq!(back.b2.unwrap().application_key, "s\"q");
        assert_eq!(back.cache.memory, c.cache.memory);
    }
}
