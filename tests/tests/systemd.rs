//! The Debian package under a real systemd: a minimal Debian tree (mmdebstrap, cached between runs) booted with
//! systemd as PID 1 in `systemd-nspawn`, the built `.deb` installed in it, its units pointed at a B2 emulator
//! running in this test (the container shares the host's loopback), then what a farmer relies on:
//!
//! - installing starts nothing; `systemctl start` returns with both units active (Type=notify readiness);
//! - a harvester stand-in (`chia-harvester@root.service`, ordered by the package's drop-in) started in the same
//!   transaction sees the plots at its start;
//! - the mount is listed and byte-exact from another unit and from outside any unit;
//! - SIGHUP leaves both running with the same PID and reloads (a new upload shows up at once);
//! - SIGKILL of either is followed by a restart and exact reads again;
//! - `systemctl stop` unmounts, the proxy exits 0 having flushed its cache: after a restart, cached blocks are
//!   read without an upstream request;
//! - `systemd-analyze security` rates the shim <= 5 and the proxy <= 2.
//!
//! Where the machine cannot run the container (not root, no systemd-nspawn, mmdebstrap or /dev/fuse), the test
//! fails and says why: it is what proves the package works as shipped. `./test.sh` installs what it needs.
//!
//! Environment: `B2FS_NSPAWN_CACHE` (default `/var/cache/b2fs-nspawn`) holds the Debian tree;
//! `B2FS_DEB_PROFILE` (default `release`) is the profile `deploy/build-deb.sh` builds the package with.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use b2fs_tests::emulator::Emulator;

/// Debian suite and packages of the container tree. `ca-certificates` too, so that the package's dependencies
/// are met without a network at install time.
const SUITE: &str = "bookworm";
const INCLUDE: &str = "systemd,systemd-sysv,dbus,fuse3,ca-certificates";
const MOUNT: &str = "/mnt/plots";
const SHIM_UNIT: &str = "b2fs-shim@mnt-plots.service";
const PROXY_UNIT: &str = "b2-proxy.service";
const HARVESTER_UNIT: &str = "chia-harvester@root.service";

const PLOTS: [(&str, u64); 2] = [
    ("plots/a.plot", 3 << 20),
    ("plots/b.plot", (1 << 20) + 4321),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Runs `cmd` with a deadline (coreutils `timeout`, which kills it after `limit` plus 5 s of grace).
fn run_bounded(limit: Duration, program: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("--kill-after=5")
        .arg(format!("{}", limit.as_secs().max(1)))
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Why this machine cannot run the test, if it cannot.
fn preflight() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("must run as root (systemd-nspawn boots a container)".into());
    }
    for tool in ["systemd-nspawn", "mmdebstrap", "timeout", "nsenter"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Err(format!(
                "{tool} is not installed (packages systemd-container, mmdebstrap; ./test.sh installs them)"
            ));
        }
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse is missing (modprobe fuse)".into());
    }
    Ok(())
}

/// The cached Debian tree, made once with mmdebstrap (into a temporary name, renamed when complete).
fn debian_tree() -> PathBuf {
    let cache = std::env::var_os("B2FS_NSPAWN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/b2fs-nspawn"));
    let tree = cache.join(format!("{SUITE}-{}", INCLUDE.replace(',', "+")));
    if tree.join("usr/lib/systemd/systemd").exists() {
        return tree;
    }
    std::fs::create_dir_all(&cache).expect("create the tree cache directory");
    let partial = cache.join(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    eprintln!(
        "making the Debian tree {} (cached for later runs)",
        tree.display()
    );
    let out = run_bounded(
        Duration::from_secs(900),
        "mmdebstrap",
        &[
            "--variant=minbase",
            &format!("--include={INCLUDE}"),
            "--mode=root",
            SUITE,
            partial.to_str().expect("utf-8 path"),
        ],
    );
    assert!(out.status.success(), "mmdebstrap failed: {}", text(&out));
    std::fs::rename(&partial, &tree).expect("rename the finished tree");
    tree
}

/// Builds the package with deploy/build-deb.sh and returns the .deb.
fn build_deb() -> PathBuf {
    let mut cmd = Command::new("bash");
    cmd.arg(workspace().join("deploy/build-deb.sh"));
    if let Some(cargo) = std::env::var_os("CARGO").map(PathBuf::from)
        && let Some(dir) = cargo.parent()
    {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![dir.to_path_buf()];
        dirs.extend(std::env::split_paths(&path));
        cmd.env("PATH", std::env::join_paths(dirs).expect("PATH"));
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("run deploy/build-deb.sh");
    assert!(
        out.status.success(),
        "deploy/build-deb.sh failed: {}",
        text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = PathBuf::from(stdout.lines().last().expect("the .deb path").trim());
    assert!(deb.is_file(), "no package at {}", deb.display());
    deb
}

/// A booted container; powered off (or killed) and its files removed on drop, whatever happened.
struct Container {
    nspawn: Child,
    leader: u32,
    dir: PathBuf,
    root: PathBuf,
    log: PathBuf,
}

impl Container {
    fn boot(tree: &Path, deb: &Path) -> Self {
        let dir = tree
            .parent()
            .expect("cache dir")
            .join(format!("run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("pkg")).expect("run dir");
        let root = dir.join("root");
        // A copy per run: the package and the configuration go into it, the cached tree stays clean.
        let out = run_bounded(
            Duration::from_secs(300),
            "cp",
            &[
                "-a",
                "--reflink=auto",
                tree.to_str().expect("utf-8"),
                root.to_str().expect("utf-8"),
            ],
        );
        assert!(out.status.success(), "copying the tree: {}", text(&out));
        std::fs::copy(deb, dir.join("pkg/b2fs.deb")).expect("copy the .deb");
        let log = dir.join("console.log");
        let console = std::fs::File::create(&log).expect("console log");
        let nspawn = Command::new("systemd-nspawn")
            .args(["--quiet", "--boot", "--register=no", "--keep-unit"])
            .arg(format!("--machine=b2fs-test-{}", std::process::id()))
            .arg("--directory")
            .arg(&root)
            .arg("--bind=/dev/fuse")
            .arg(format!("--bind-ro={}:/mnt/pkg", dir.join("pkg").display()))
            .stdin(Stdio::null())
            .stdout(console.try_clone().expect("log fd"))
            .stderr(console)
            .spawn()
            .expect("start systemd-nspawn");
        let mut c = Container {
            nspawn,
            leader: 0,
            dir,
            root,
            log,
        };
        c.leader = c.find_leader(Duration::from_secs(30));
        c.wait_booted(Duration::from_secs(90));
        c
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The container's PID 1 (systemd) as the host sees it: a descendant of systemd-nspawn named `systemd`.
    fn find_leader(&mut self, limit: Duration) -> u32 {
        let deadline = Instant::now() + limit;
        loop {
            let mut todo = vec![self.nspawn.id()];
            while let Some(pid) = todo.pop() {
                let children = std::fs::read_dir(format!("/proc/{pid}/task"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
                    .flat_map(|s| {
                        s.split_whitespace()
                            .filter_map(|p| p.parse::<u32>().ok())
                            .collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>();
                for child in children {
                    let comm =
                        std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
                    if comm.trim() == "systemd" {
                        return child;
                    }
                    todo.push(child);
                }
            }
            if let Ok(Some(status)) = self.nspawn.try_wait() {
                panic!(
                    "systemd-nspawn exited ({status}) before booting:\n{}",
                    self.console()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no systemd in the container within {limit:?}:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a shell command in the container, outside any unit (in PID 1's namespaces), with a deadline.
    fn sh_output(&self, limit: Duration, script: &str) -> Output {
        let pid = self.leader.to_string();
        run_bounded(
            limit,
            "nsenter",
            &["-t", &pid, "-a", "/bin/sh", "-c", script],
        )
    }

    /// `sh_output` that must succeed; returns stdout.
    fn sh(&self, script: &str) -> String {
        let out = self.sh_output(Duration::from_secs(120), script);
        assert!(
            out.status.success(),
            "in the container: {script}\n=> {}: {}",
            out.status,
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_booted(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let out = self.sh_output(Duration::from_secs(10), "systemctl is-system-running");
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if state == "running" || state == "degraded" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the container's systemd did not finish booting within {limit:?} (state {state:?}):\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn main_pid(&self, unit: &str) -> u32 {
        self.sh(&format!("systemctl show -P MainPID {unit}"))
            .trim()
            .parse()
            .expect("MainPID")
    }

    fn is_active(&self, unit: &str) -> String {
        let out = self.sh_output(
            Duration::from_secs(20),
            &format!("systemctl is-active {unit}"),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Waits until `unit` is active with a main PID other than `old`.
    fn wait_restarted(&self, unit: &str, old: u32, limit: Duration) -> u32 {
        let deadline = Instant::now() + limit;
        loop {
            if self.is_active(unit) == "active" {
                let pid = self.main_pid(unit);
                if pid != 0 && pid != old {
                    return pid;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{unit} was not restarted within {limit:?}:\n{}",
                self.journal(unit)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn journal(&self, unit: &str) -> String {
        let out = self.sh_output(
            Duration::from_secs(20),
            &format!("journalctl --no-pager -o short-monotonic -n 60 -u {unit}"),
        );
        text(&out)
    }

    /// The bytes of `path` read by a transient unit of its own (another unit than the shim's).
    fn read_from_unit(&self, path: &str) -> Vec<u8> {
        let out = self.sh_output(
            Duration::from_secs(60),
            &format!("systemd-run --quiet --wait --pipe --collect -- /bin/cat {path}"),
        );
        assert!(out.status.success(), "reading {path}: {}", text(&out));
        out.stdout
    }

    /// The bytes of `path` read outside any unit.
    fn read_outside(&self, path: &str) -> Vec<u8> {
        let out = self.sh_output(Duration::from_secs(60), &format!("cat {path}"));
        assert!(out.status.success(), "reading {path}: {}", text(&out));
        out.stdout
    }

    fn mounted(&self) -> bool {
        self.sh("cat /proc/self/mountinfo")
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(MOUNT))
    }

    fn write(&self, path: &str, contents: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.leader != 0 {
            let _ = self.sh_output(Duration::from_secs(10), "systemctl poweroff --no-block");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !matches!(self.nspawn.try_wait(), Ok(Some(_))) {
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
        // nspawn unmounts what it mounted in its own namespace; a FUSE mount never left it. What remains is files.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn assert_exact(emu: &Emulator, name: &str, got: &[u8], how: &str) {
    let want = emu
        .expected_bytes(name, 0, got.len().max(1) as u64)
        .expect("expected bytes");
    let size = PLOTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s as usize);
    if let Some(size) = size {
        assert_eq!(got.len(), size, "{name} read {how}: wrong length");
    }
    assert!(got == &want[..got.len()], "{name} read {how}: wrong bytes");
}

fn exposure(c: &Container, unit: &str) -> f64 {
    let out = c.sh_output(
        Duration::from_secs(60),
        &format!("systemd-analyze security --no-pager {unit}"),
    );
    let t = text(&out);
    t.lines()
        .find_map(|l| {
            l.strip_prefix(&format!("→ Overall exposure level for {unit}: "))?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no exposure level for {unit} in:\n{t}"))
}

fn downloads(emu: &Emulator) -> u64 {
    let s = emu.stats();
    s.requests.download_by_id + s.requests.download_by_name
}

#[test]
fn package_works_under_systemd() {
    if let Err(why) = preflight() {
        panic!("this machine cannot run the systemd container test: {why}");
    }
    let started = Instant::now();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let emu = rt
        .block_on(
            PLOTS
                .iter()
                .fold(Emulator::builder(), |b, (name, size)| {
                    b.virtual_file(*name, *size)
                })
                .start(),
        )
        .expect("emulator starts");
    let deb = build_deb();
    let tree = debian_tree();
    eprintln!("[{:?}] package and tree ready", started.elapsed());
    let c = Container::boot(&tree, &deb);
    eprintln!("[{:?}] container booted", started.elapsed());

    // Install: nothing starts, nothing is enabled.
    c.sh("dpkg -i /mnt/pkg/b2fs.deb");
    for unit in [PROXY_UNIT, SHIM_UNIT] {
        assert_eq!(
            c.is_active(unit),
            "inactive",
            "{unit} started by the install"
        );
    }
    assert!(
        c.sh("systemctl is-enabled b2-proxy.service || true").trim() == "disabled",
        "b2-proxy.service enabled by the install"
    );
    assert!(
        c.sh(
            "test -f /usr/share/man/man1/b2fs-shim.1* && ls /usr/share/bash-completion/completions"
        )
        .contains("b2fs-shim")
    );
    assert!(c.sh("b2-proxy --version").contains("(commit "));

    // Configure as a farmer would: the bucket in config.toml, the key in the env file, nothing else.
    let b2 = emu.proxy_b2_config();
    c.write(
        "/etc/b2-proxy/config.toml",
        &format!(
            "[b2]\nbucket = {:?}\nendpoint = {:?}\n[cache]\nmemory = \"64MiB\"\ndisk = \"256MiB\"\n",
            b2.bucket.as_deref().unwrap_or_default(),
            b2.endpoint
        ),
        0o640,
    );
    c.sh("chgrp b2-proxy /etc/b2-proxy/config.toml");
    c.write(
        "/etc/b2-proxy/b2-proxy.env",
        &format!(
            "B2_APPLICATION_KEY_ID={}\nB2_APPLICATION_KEY={}\n",
            b2.key_id, b2.application_key
        ),
        0o600,
    );
    // The harvester stand-in: records what the plot directory holds the moment it starts.
    c.write(
        "/etc/systemd/system/chia-harvester@.service",
        "[Unit]\nDescription=harvester stand-in for %i\n[Service]\nType=oneshot\nRemainAfterExit=yes\n\
         ExecStart=/bin/sh -c 'ls -la /mnt/plots/plots > /run/harvester-saw.txt 2>&1'\n",
        0o644,
    );
    c.sh("systemctl daemon-reload");
    c.sh(&format!(
        "systemctl enable --quiet {PROXY_UNIT} {SHIM_UNIT}"
    ));

    // One transaction; `systemctl start` returns once all three are up.
    c.sh(&format!(
        "systemctl start {PROXY_UNIT} {SHIM_UNIT} {HARVESTER_UNIT}"
    ));
    eprintln!("[{:?}] units started", started.elapsed());
    for unit in [PROXY_UNIT, SHIM_UNIT, HARVESTER_UNIT] {
        assert_eq!(c.is_active(unit), "active", "{unit}:\n{}", c.journal(unit));
    }
    let saw = c.sh("cat /run/harvester-saw.txt");
    for (name, size) in PLOTS {
        let file = name.rsplit('/').next().expect("file name");
        assert!(
            saw.lines()
                .any(|l| l.ends_with(file) && l.contains(&size.to_string())),
            "the harvester did not see {file} ({size} bytes) at its start:\n{saw}"
        );
    }
    assert!(c.mounted(), "{MOUNT} is not in the container's mount table");
    let listed = c.sh_output(
        Duration::from_secs(30),
        "systemd-run --quiet --wait --pipe --collect -- /bin/cat /proc/self/mountinfo",
    );
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&format!(" {MOUNT} ")),
        "another unit does not see the mount: {}",
        text(&listed)
    );
    for (name, _) in PLOTS {
        let path = format!("{MOUNT}/{name}");
        assert_exact(&emu, name, &c.read_from_unit(&path), "from another unit");
        assert_exact(&emu, name, &c.read_outside(&path), "outside any unit");
    }
    // The shim's --metrics endpoint, where deploy/prometheus.yml scrapes it (bash's /dev/tcp: no curl here).
    let metrics = c.sh(
        "bash -c 'exec 3<>/dev/tcp/127.0.0.1/9643; printf \"GET /metrics HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n\" >&3; cat <&3'",
    );
    assert!(
        metrics.contains("b2fs_"),
        "the shim's --metrics on :9643 (deploy/prometheus.yml) does not answer:\n{metrics}"
    );

    // SIGHUP: both keep running with the same PID, and reload: a new upload is in the mount at once (the
    // proxy's catalog refresh is 5 minutes, the shim's --attr-ttl 60 s).
    let proxy_pid = c.main_pid(PROXY_UNIT);
    let shim_pid = c.main_pid(SHIM_UNIT);
    let lists = emu.stats().requests.list_file_names;
    emu.add_virtual_file("plots/new.plot", 65536);
    c.sh(&format!("systemctl kill --signal=HUP {PROXY_UNIT}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while emu.stats().requests.list_file_names == lists {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not make the proxy reload its catalog"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    c.sh(&format!("systemctl kill --signal=HUP {SHIM_UNIT}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.sh("ls /mnt/plots/plots").lines().any(|l| l == "new.plot") {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not make the shim refresh its file list"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for (unit, pid) in [(PROXY_UNIT, proxy_pid), (SHIM_UNIT, shim_pid)] {
        assert_eq!(
            c.is_active(unit),
            "active",
            "{unit} after SIGHUP:\n{}",
            c.journal(unit)
        );
        assert_eq!(c.main_pid(unit), pid, "{unit} changed PID on SIGHUP");
    }

    // SIGKILL of either: restarted, reads exact again.
    for unit in [SHIM_UNIT, PROXY_UNIT] {
        let old = c.main_pid(unit);
        c.sh(&format!("systemctl kill --signal=KILL {unit}"));
        let new = c.wait_restarted(unit, old, Duration::from_secs(30));
        eprintln!(
            "[{:?}] {unit} restarted after SIGKILL ({old} -> {new})",
            started.elapsed()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let name = PLOTS[0].0;
        loop {
            let out = c.sh_output(Duration::from_secs(30), &format!("cat {MOUNT}/{name}"));
            if out.status.success() {
                assert_exact(&emu, name, &out.stdout, &format!("after SIGKILL of {unit}"));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no exact read after SIGKILL of {unit}: {}\n{}",
                text(&out),
                c.journal(unit)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_exact(
            &emu,
            PLOTS[1].0,
            &c.read_from_unit(&format!("{MOUNT}/{}", PLOTS[1].0)),
            &format!("from another unit after SIGKILL of {unit}"),
        );
    }

    // Stop: unmounted, the proxy exits 0 with its cache flushed.
    c.sh(&format!(
        "systemctl stop {HARVESTER_UNIT} {SHIM_UNIT} {PROXY_UNIT}"
    ));
    assert!(!c.mounted(), "{MOUNT} still mounted after systemctl stop");
    let exit = c.sh(&format!(
        "systemctl show -P ExecMainCode {PROXY_UNIT}; systemctl show -P ExecMainStatus {PROXY_UNIT}"
    ));
    // ExecMainCode 1 = CLD_EXITED.
    assert_eq!(
        exit.split_whitespace().collect::<Vec<_>>(),
        ["1", "0"],
        "the proxy did not exit 0:\n{}",
        c.journal(PROXY_UNIT)
    );
    assert!(
        c.journal(PROXY_UNIT).contains("cache closed cleanly"),
        "{}",
        c.journal(PROXY_UNIT)
    );
    let before = downloads(&emu);
    c.sh(&format!("systemctl start {PROXY_UNIT} {SHIM_UNIT}"));
    for (name, _) in PLOTS {
        assert_exact(
            &emu,
            name,
            &c.read_outside(&format!("{MOUNT}/{name}")),
            "after a clean restart",
        );
    }
    assert_eq!(
        downloads(&emu),
        before,
        "reads of blocks cached before the stop went upstream after the restart"
    );

    // Hardening within the targets, as this systemd rates the installed units.
    let shim = exposure(&c, SHIM_UNIT);
    let proxy = exposure(&c, PROXY_UNIT);
    eprintln!("systemd-analyze security: {SHIM_UNIT} {shim}, {PROXY_UNIT} {proxy}");
    assert!(shim <= 5.0, "{SHIM_UNIT} exposure {shim} > 5");
    assert!(proxy <= 2.0, "{PROXY_UNIT} exposure {proxy} > 2");
    c.sh(&format!("systemctl stop {SHIM_UNIT} {PROXY_UNIT}"));
    eprintln!("[{:?}] done", started.elapsed());
}
