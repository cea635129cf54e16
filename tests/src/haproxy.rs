//! A real HAProxy in front of several b2-proxy instances, for the end-to-end tests and the benchmark.
//!
//! The configuration is always the shipped `deploy/haproxy.cfg` ([`SHIPPED_CONFIG`], compiled in) with only
//! its addresses replaced ([`config_for`]): the frontend's `bind` address and each `server`'s address, plus
//! `server` lines copied from the last one when more proxies run than the file lists. Hashing, health checks,
//! timeouts and retries are the shipped ones. [`HaProxy`] runs the Debian package's binary in the foreground
//! (`-db`) as a child, its stdout and stderr in a log file, and kills it on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// `deploy/haproxy.cfg` as shipped.
pub const SHIPPED_CONFIG: &str = include_str!("../../deploy/haproxy.cfg");

/// Where the Debian package installs the binary.
pub const DEBIAN_BINARY: &str = "/usr/sbin/haproxy";

/// The haproxy binary: `$HAPROXY_BIN`, else the Debian package's, else `haproxy` on `PATH`. A missing binary
/// is an error that says how to install it.
pub fn binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HAPROXY_BIN") {
        let p = PathBuf::from(p);
        ensure!(p.is_file(), "$HAPROXY_BIN = {} is not a file", p.display());
        return Ok(p);
    }
    let debian = PathBuf::from(DEBIAN_BINARY);
    if debian.is_file() {
        return Ok(debian);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("haproxy");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!(
        "haproxy not found ({DEBIAN_BINARY}, PATH, $HAPROXY_BIN): install the Debian package \
         (`apt-get install haproxy`; ./test.sh does)"
    )
}

/// The shipped config `shipped` with the frontend bound to `frontend` and one `server` line per address in
/// `servers`, in order: the file's own lines get their address replaced; more servers than the file lists
/// are copies of its last `server` line with the next name (`proxyN`) and `id N`. Fewer servers than the
/// file lists drops the last lines. Everything else is kept byte for byte.
pub fn config_for(shipped: &str, frontend: SocketAddr, servers: &[SocketAddr]) -> Result<String> {
    ensure!(!servers.is_empty(), "at least one server");
    let mut out = String::with_capacity(shipped.len() + 256);
    let mut binds = 0;
    let mut shipped_servers = Vec::new();
    let mut last_server_at = None;
    for line in shipped.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first() {
            Some(&"bind") => {
                ensure!(words.len() >= 2, "bind line without an address: {line:?}");
                binds += 1;
                out.push_str(&replace_word(line, 1, &frontend.to_string()));
                out.push('\n');
            }
            Some(&"server") => {
                ensure!(
                    words.len() >= 3,
                    "server line without name and address: {line:?}"
                );
                shipped_servers.push(line.to_string());
                last_server_at = Some(out.len());
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    ensure!(binds == 1, "expected one bind line, found {binds}");
    let (Some(at), Some(template)) = (last_server_at, shipped_servers.last().cloned()) else {
        bail!("the config has no server lines");
    };
    let mut lines = String::new();
    for (i, addr) in servers.iter().enumerate() {
        let line = match shipped_servers.get(i) {
            Some(l) => replace_word(l, 2, &addr.to_string()),
            None => {
                let n = i + 1;
                let l = replace_word(&template, 1, &format!("proxy{n}"));
                let l = replace_word(&l, 2, &addr.to_string());
                replace_after(&l, "id", &n.to_string())?
            }
        };
        lines.push_str(&line);
        lines.push('\n');
    }
    out.insert_str(at, &lines);
    Ok(out)
}

/// `line` with its `n`th whitespace-separated word replaced, indentation and spacing kept.
fn replace_word(line: &str, n: usize, with: &str) -> String {
    let mut out = String::with_capacity(line.len() + with.len());
    let mut word = 0;
    let mut in_word = false;
    for c in line.chars() {
        if c.is_whitespace() {
            in_word = false;
            out.push(c);
            continue;
        }
        if !in_word {
            in_word = true;
            word += 1;
            if word - 1 == n {
                out.push_str(with);
            }
        }
        if word - 1 != n {
            out.push(c);
        }
    }
    out
}

/// `line` with the word after the keyword `key` replaced.
fn replace_after(line: &str, key: &str, with: &str) -> Result<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some(at) = words.iter().position(|w| *w == key) else {
        bail!("server line has no `{key}`: {line:?}");
    };
    ensure!(at + 1 < words.len(), "`{key}` without a value: {line:?}");
    Ok(replace_word(line, at + 1, with))
}

/// A running HAProxy, killed on drop.
#[derive(Debug)]
pub struct HaProxy {
    child: Option<Child>,
    /// The frontend's address, where shims connect.
    pub frontend: SocketAddr,
    /// The config it runs.
    pub config_path: PathBuf,
    log_path: PathBuf,
}

impl HaProxy {
    /// Writes `config` to `dir/haproxy.cfg` and starts haproxy in the foreground on it; returns once the
    /// frontend `frontend` accepts connections (haproxy exiting first is an error quoting its output).
    pub fn start(dir: &Path, config: &str, frontend: SocketAddr) -> Result<Self> {
        let binary = binary()?;
        let config_path = dir.join("haproxy.cfg");
        std::fs::write(&config_path, config)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        let log_path = dir.join("haproxy.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let err = log.try_clone()?;
        let child = Command::new(&binary)
            // -db: foreground, no daemon; -f: the config.
            .arg("-db")
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut h = Self {
            child: Some(child),
            frontend,
            config_path,
            log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect_timeout(&frontend, Duration::from_millis(200)).is_ok() {
                return Ok(h);
            }
            if let Some(c) = h.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                h.child = None;
                bail!("haproxy exited with {status} at start:\n{}", h.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "haproxy did not accept connections on {frontend} within 20 s:\n{}",
                    h.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The frontend as a URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.frontend)
    }

    /// Process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything haproxy wrote so far (logs and warnings, e.g. `Server b2proxies/proxy2 is DOWN`).
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// How many times the log says `server` (e.g. `proxy2`) went to `state` (`UP` or `DOWN`).
    pub fn state_changes(&self, server: &str, state: &str) -> usize {
        let needle = format!("/{server} is {state}");
        self.log().matches(&needle).count()
    }

    /// Waits until the log says `server` went to `state` more than `seen_before` times; returns how long
    /// that took, or an error with the log after `limit`.
    pub fn wait_state(
        &self,
        server: &str,
        state: &str,
        seen_before: usize,
        limit: Duration,
    ) -> Result<Duration> {
        let t = Instant::now();
        loop {
            if self.state_changes(server, state) > seen_before {
                return Ok(t.elapsed());
            }
            if t.elapsed() > limit {
                bail!(
                    "haproxy did not report {server} {state} within {limit:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops haproxy (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                // SAFETY: kill(2) on our own child, not yet reaped; no memory is touched.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
            if !matches!(
                crate::mount::wait_timeout(&mut c, Duration::from_secs(5)),
                Ok(Some(_))
            ) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn only_addresses_change() {
        let cfg = config_for(SHIPPED_CONFIG, addr(9000), &[addr(1), addr(2), addr(3)]).unwrap();
        let changed: Vec<(&str, &str)> = SHIPPED_CONFIG
            .lines()
            .zip(cfg.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(SHIPPED_CONFIG.lines().count(), cfg.lines().count());
        assert_eq!(changed.len(), 4, "{changed:?}");
        assert!(cfg.contains("    bind 127.0.0.1:9000\n"), "{cfg}");
        assert!(
            cfg.contains("    server proxy2 127.0.0.1:2 id 2\n"),
            "{cfg}"
        );
    }

    #[test]
    fn more_servers_copy_the_last_line() {
        let cfg = config_for(
            SHIPPED_CONFIG,
            addr(9000),
            &[addr(1), addr(2), addr(3), addr(4)],
        )
        .unwrap();
        let servers: Vec<&str> = cfg
            .lines()
            .filter(|l| l.trim_start().starts_with("server "))
            .collect();
        assert_eq!(
            servers,
            [
                "    server proxy1 127.0.0.1:1 id 1",
                "    server proxy2 127.0.0.1:2 id 2",
                "    server proxy3 127.0.0.1:3 id 3",
                "    server proxy4 127.0.0.1:4 id 4",
            ]
        );
        let one = config_for(SHIPPED_CONFIG, addr(9000), &[addr(1)]).unwrap();
        assert_eq!(one.matches("\n    server ").count(), 1);
    }
}
