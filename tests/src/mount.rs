//! Mounting `b2fs-shim` from the end-to-end tests, the demo and the benchmark.
//!
//! [`Shim`] spawns the real `b2fs-shim` binary on a mount point and waits until the kernel lists the mount;
//! [`Mount`] stops it with SIGTERM ([`Mount::terminate`], which also checks the mount is gone) and, whatever
//! happens (a failed assertion, a panic), never leaves a mount behind: dropping it stops the shim and
//! detaches the mount lazily if it is still there.
//!
//! ```no_run
//! # fn demo(proxy_url: &str) -> anyhow::Result<()> {
//! use b2fs_tests::mount::{CacheMode, Shim};
//! let dir = tempfile::tempdir()?;
//! let mount = Shim::new(dir.path(), proxy_url).cache_mode(CacheMode::Direct).mount()?;
//! let size = std::fs::metadata(mount.path().join("plots/a.plot"))?.len();
//! mount.terminate(std::time::Duration::from_secs(10))?; // SIGTERM, wait, check unmounted
//! # let _ = size; Ok(()) }
//! ```
//!
//! The shim binary is found by [`shim_binary`]: `$B2FS_SHIM_BIN`, else next to the running executable
//! (`target/<profile>/` for binaries, its parent for test executables in `target/<profile>/deps/`).
//! `cargo test --workspace` builds `target/debug/b2fs-shim` because the shim crate has an integration test.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
pub use b2fs_shim::mountinfo::{MountEntry, parse_mountinfo};

/// How file data reaches the shim (its `--cache-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// Direct I/O: every `read()` reaches the proxy with its exact offset and size (the shim's default).
    Direct,
    /// The kernel page cache: page-aligned reads, repeats served by the kernel.
    Page,
}

impl CacheMode {
    /// The value of `--cache-mode`.
    pub fn as_arg(self) -> &'static str {
        match self {
            CacheMode::Direct => "direct",
            CacheMode::Page => "page",
        }
    }
}

/// How to start `b2fs-shim`; [`Shim::mount`] starts it.
#[derive(Debug, Clone)]
pub struct Shim {
    binary: Option<PathBuf>,
    mountpoint: PathBuf,
    proxy: String,
    cache_mode: Option<CacheMode>,
    args: Vec<OsString>,
    log_level: String,
    log_file: Option<PathBuf>,
    mount_timeout: Duration,
    kill_on_parent_exit: bool,
}

impl Shim {
    /// A shim that will mount `mountpoint` (an existing directory) and read from the proxy at `proxy_url`
    /// (e.g. `http://127.0.0.1:8642`). Defaults: the shim's own options, log level `warn` to the inherited
    /// stderr, 20 s to mount.
    pub fn new(mountpoint: impl Into<PathBuf>, proxy_url: impl Into<String>) -> Self {
        Self {
            binary: None,
            mountpoint: mountpoint.into(),
            proxy: proxy_url.into(),
            cache_mode: None,
            args: Vec::new(),
            log_level: "warn".to_owned(),
            log_file: None,
            mount_timeout: Duration::from_secs(20),
            kill_on_parent_exit: false,
        }
    }

    /// The `b2fs-shim` executable to run (default: [`shim_binary`]).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// `--cache-mode` (default: the shim's, direct I/O).
    pub fn cache_mode(mut self, mode: CacheMode) -> Self {
        self.cache_mode = Some(mode);
        self
    }

    /// One more command-line argument, e.g. `--timeout` then `2s`.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// `--log-level` (default `warn`).
    pub fn log_level(mut self, filter: impl Into<String>) -> Self {
        self.log_level = filter.into();
        self
    }

    /// Append the shim's log (its stderr) to this file instead of inheriting stderr; [`Mount::log`] reads it
    /// and errors from [`Shim::mount`] quote its end.
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.log_file = Some(path.into());
        self
    }

    /// How long [`Shim::mount`] waits for the mount to appear (default 20 s).
    pub fn mount_timeout(mut self, timeout: Duration) -> Self {
        self.mount_timeout = timeout;
        self
    }

    /// Have the kernel send the shim SIGTERM (so it unmounts) when the thread that spawned it dies, e.g. when
    /// the parent process is killed with SIGKILL. Linux ties this to the spawning **thread**: only use it
    /// from a thread that lives as long as the mount (the main thread), not from a pool thread.
    pub fn kill_on_parent_exit(mut self, on: bool) -> Self {
        self.kill_on_parent_exit = on;
        self
    }

    /// The command line this shim runs with (without the binary).
    pub fn command_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            self.mountpoint.clone().into(),
            "--proxy".into(),
            self.proxy.clone().into(),
            "--log-level".into(),
            self.log_level.clone().into(),
        ];
        if let Some(mode) = self.cache_mode {
            args.push("--cache-mode".into());
            args.push(mode.as_arg().into());
        }
        args.extend(self.args.iter().cloned());
        args
    }

    /// Spawns the shim and waits until the kernel lists the mount (`/proc/self/mountinfo`). The shim lists
    /// the proxy's files before it mounts, so the tree is there when this returns. Fails, with the end of
    /// the shim's log when there is one, if the shim exits first or the mount does not appear in time (the
    /// shim is then stopped).
    pub fn mount(self) -> Result<Mount> {
        let binary = match &self.binary {
            Some(b) => b.clone(),
            None => shim_binary()?,
        };
        let target = self.mountpoint.canonicalize().with_context(|| {
            format!(
                "mount point {} must be an existing directory",
                self.mountpoint.display()
            )
        })?;
        if is_mounted(&target) {
            bail!("{} is already a b2fs mount", target.display());
        }
        let mut cmd = Command::new(&binary);
        cmd.args(self.command_args())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        match &self.log_file {
            Some(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot open the shim log {}", path.display()))?;
                cmd.stderr(f);
            }
            None => {
                cmd.stderr(Stdio::inherit());
            }
        }
        {
            use std::os::unix::process::CommandExt;
            // Its own process group: a Ctrl-C in the terminal reaches only us, and we stop the shim in order.
            cmd.process_group(0);
            if self.kill_on_parent_exit {
                // SAFETY: the closure runs in the child between fork and exec and only calls prctl, which is
                // async-signal-safe, and reads no shared state.
                unsafe {
                    cmd.pre_exec(|| {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut mount = Mount {
            child: Some(child),
            path: target,
            log_file: self.log_file.clone(),
        };
        let deadline = Instant::now() + self.mount_timeout;
        loop {
            if is_mounted(&mount.path) {
                return Ok(mount);
            }
            if let Some(child) = mount.child.as_mut()
                && let Some(status) = child.try_wait().context("waiting for b2fs-shim")?
            {
                mount.child = None;
                bail!(
                    "b2fs-shim exited with {status} before mounting {}{}",
                    mount.path.display(),
                    mount.log_tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} was not mounted within {:?}{}",
                    mount.path.display(),
                    self.mount_timeout,
                    mount.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A running `b2fs-shim` and its mount. Dropping it stops the shim (SIGTERM, then SIGKILL after 5 s) and
/// lazily detaches the mount if it is still there.
#[derive(Debug)]
pub struct Mount {
    child: Option<Child>,
    path: PathBuf,
    log_file: Option<PathBuf>,
}

impl Mount {
    /// The mount point (canonical path).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path()/rel`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Process id of the shim, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the shim is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_)) | Err(_)) | None => false,
        }
    }

    /// Whether the kernel lists the mount.
    pub fn is_mounted(&self) -> bool {
        is_mounted(&self.path)
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the shim.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        let Some(child) = &self.child else {
            return Err(io::Error::other("b2fs-shim is not running"));
        };
        send_signal(child.id(), signal)
    }

    /// The shim's log so far, when it logs to a file ([`Shim::log_file`]).
    pub fn log(&self) -> Option<String> {
        let path = self.log_file.as_ref()?;
        std::fs::read(path)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// The last lines of the log, formatted for an error message ("" without a log file).
    fn log_tail(&self) -> String {
        let Some(path) = &self.log_file else {
            return String::new();
        };
        let text = read_tail(path, 4096).unwrap_or_default();
        if text.trim().is_empty() {
            String::new()
        } else {
            format!(
                "; end of the shim log {}:\n{}",
                path.display(),
                text.trim_end()
            )
        }
    }

    /// Stops the shim the way systemd does (SIGTERM), waits up to `timeout` for it to exit, and checks that
    /// the mount is gone. Returns the shim's exit status (a clean stop exits 0).
    pub fn terminate(mut self, timeout: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("b2fs-shim is not running");
        };
        if let Err(e) = send_signal(child.id(), libc::SIGTERM) {
            self.child = Some(child);
            return Err(e).context("cannot send SIGTERM to b2fs-shim");
        }
        let status = match wait_timeout(&mut child, timeout)? {
            Some(status) => status,
            None => {
                self.child = Some(child);
                bail!(
                    "b2fs-shim did not exit within {timeout:?} of SIGTERM{}",
                    self.log_tail()
                );
            }
        };
        if is_mounted(&self.path) {
            bail!(
                "b2fs-shim exited ({status}) but {} is still mounted{}",
                self.path.display(),
                self.log_tail()
            );
        }
        Ok(status)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = send_signal(child.id(), libc::SIGTERM);
            if !matches!(
                wait_timeout(&mut child, Duration::from_secs(5)),
                Ok(Some(_))
            ) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if is_mounted(&self.path)
            && let Err(e) = lazy_unmount(&self.path)
        {
            eprintln!("cannot detach {}: {e:#}", self.path.display());
        }
    }
}

fn send_signal(pid: u32, signal: i32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: kill has no memory-safety preconditions; `pid` is our own child, not yet reaped.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits for `child` to exit for at most `timeout`; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_tail(path: &Path, max: u64) -> io::Result<String> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The mounts of this process's namespace (unreadable or malformed lines are skipped).
pub fn mounts() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

/// Whether a b2fs FUSE filesystem is mounted at `path` (compared after canonicalizing `path` when
/// possible; a dead mount cannot be canonicalized, so the path is also compared as given).
pub fn is_mounted(path: &Path) -> bool {
    let canonical = path.canonicalize().ok();
    mounts().iter().any(|m| {
        m.fstype.starts_with("fuse")
            && (m.source == "b2fs" || m.fstype == "fuse.b2fs")
            && (m.mount_point == path || Some(&m.mount_point) == canonical.as_ref())
    })
}

/// Detaches the mount at `path` even while files are open on it: `fusermount3 -u -z`, else
/// `umount2(MNT_DETACH)` (root).
pub fn lazy_unmount(path: &Path) -> Result<()> {
    let mut errors = Vec::new();
    for bin in ["fusermount3", "fusermount"] {
        match Command::new(bin)
            .args(["-u", "-z", "--"])
            .arg(path)
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => errors.push(format!(
                "{bin}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => errors.push(format!("{bin}: {e}")),
        }
    }
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .context("mount point path contains a NUL byte")?;
    // SAFETY: umount2 only reads the NUL-terminated path, which outlives the call.
    if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    errors.push(format!(
        "umount2(MNT_DETACH): {}",
        io::Error::last_os_error()
    ));
    bail!("{}", errors.join("; "))
}

/// Finds a workspace binary: `$env_var` if set, else `name` next to the running executable or in its
/// parent directory (test executables live in `target/<profile>/deps/`).
pub fn workspace_binary(name: &str, env_var: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("${env_var} = {} is not a file", p.display());
    }
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let mut tried = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        tried.push(candidate.display().to_string());
    }
    // The binaries and their packages share names (b2fs-shim, b2-proxy).
    bail!(
        "{name} not found (looked at {}); build it with `cargo build -p {name}` (add --release for a \
         release build), or set ${env_var}",
        tried.join(", ")
    )
}

/// The `b2fs-shim` binary: `$B2FS_SHIM_BIN`, else next to the running executable (see the module docs).
pub fn shim_binary() -> Result<PathBuf> {
    workspace_binary("b2fs-shim", "B2FS_SHIM_BIN")
}

/// The `b2-proxy` binary: `$B2FS_PROXY_BIN`, else next to the running executable.
pub fn proxy_binary() -> Result<PathBuf> {
    workspace_binary("b2-proxy", "B2FS_PROXY_BIN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let args = Shim::new("/mnt/x", "http://127.0.0.1:1")
            .cache_mode(CacheMode::Page)
            .arg("--timeout")
            .arg("2s")
            .command_args();
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "/mnt/x",
                "--proxy",
                "http://127.0.0.1:1",
                "--log-level",
                "warn",
                "--cache-mode",
                "page",
                "--timeout",
                "2s"
            ]
        );
    }
}
