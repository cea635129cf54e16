//! `b2fs-demo`: the whole b2fs read path on one machine, with one command.
//!
//! ```text
//! cargo run --release -p b2fs-tests --bin b2fs-demo
//! ```
//!
//! Generates small real Chia plots (chia-pos2 k=18; chiapos k=18 too when the `tests/.venv` venv exists),
//! serves them and a virtual 108 GiB k=32-size file from the B2 emulator, starts b2-proxy (in this process)
//! and mounts b2fs-shim, prints what to try, and on Ctrl-C or SIGTERM unmounts, stops everything and
//! removes its files. `--check` instead verifies the mount (listing, byte-exact reads, proofs identical to
//! local disk) and exits; `b2fs-demo prove PATH` runs harvester lookups against any plot path.
//!
//! Started by `cargo run`, it first builds the `b2fs-shim` and `b2fs-pos2` binaries it spawns (a no-op when
//! they are up to date). chia-pos2 runs in `b2fs-pos2` because it cannot be linked next to b2-proxy (see
//! `b2fs_tests::chia`).

use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use b2_proxy::config::Config;
use b2_proxy::server::{Proxy, StartError};
use b2fs_tests::chia::{self, ChiaposOptions, ProverKind, Report};
use b2fs_tests::emulator::Emulator;
use b2fs_tests::mount::{self, Mount, Shim};
use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

/// Name of the virtual k=32-size plot in the bucket.
const VIRTUAL_PLOT: &str = "plots/virtual-k32.plot";
/// Name of the chia-pos2 plot in the bucket.
const POS2_PLOT: &str = "plots/pos2-k18.gplot";
/// Name of the chiapos plot in the bucket.
const CHIAPOS_PLOT: &str = "plots/chiapos-k18.plot";
/// Marks a work directory as ours, so a later run may clean it up after a crash.
const MARKER: &str = ".b2fs-demo";

/// Try b2fs on one machine: B2 emulator with real Chia plots + b2-proxy + a b2fs-shim mount.
#[derive(Debug, Parser)]
#[command(
    name = "b2fs-demo",
    version,
    args_conflicts_with_subcommands = true,
    long_about = "Try b2fs on one machine: generates a small real Chia plot (chia-pos2 k=18, plus chiapos \
        k=18 when the tests/.venv venv exists), serves it and a virtual 108 GiB k=32-size plot from the B2 \
        emulator, starts b2-proxy and mounts b2fs-shim, prints what to try, and on Ctrl-C or SIGTERM \
        unmounts, stops everything and removes its files.\n\nNeeds /dev/fuse and fusermount3 (package \
        fuse3); run as root or as a user allowed to mount FUSE filesystems."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run harvester lookups against a plot (e.g. one on the mount): quality checks, full proofs, and
    /// validation of every proof. chiapos plots need the tests/.venv venv.
    Prove {
        /// The plot file (chiapos `.plot` or chia-pos2 `.gplot`).
        path: PathBuf,
        /// Number of challenges.
        #[arg(long, default_value_t = 10)]
        challenges: usize,
        /// Seed of the challenges.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Directory for the plots, the proxy's disk cache, the shim log and (by default) the mount point.
    /// Removed on exit.
    #[arg(long, value_name = "DIR", default_value = "/tmp/b2fs-demo")]
    work_dir: PathBuf,

    /// Where to mount (default: WORK_DIR/mnt). Created if missing.
    #[arg(long, value_name = "DIR")]
    mountpoint: Option<PathBuf>,

    /// Address of b2-proxy's HTTP API (127.0.0.1:0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8642")]
    listen: SocketAddr,

    /// Median latency the emulator adds to every B2 request, e.g. 80ms to feel like the real B2.
    #[arg(long, value_name = "DURATION", default_value = "0ms", value_parser = humantime::parse_duration)]
    latency: Duration,

    /// Size of the virtual plot (a k=32 plot is about 108 GiB).
    #[arg(long, value_name = "SIZE", default_value = "108GiB")]
    virtual_size: ByteSize,

    /// Do not generate a chiapos plot even if the venv exists.
    #[arg(long)]
    no_chiapos: bool,

    /// Verify the mount (listing, byte-exact reads, proofs identical to local disk), then stop and exit
    /// (0 when everything passed).
    #[arg(long)]
    check: bool,

    /// Stop by itself after this long, as on Ctrl-C (e.g. 30s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    exit_after: Option<Duration>,

    /// Do not run `cargo build` for b2fs-shim and b2fs-pos2 first (the default when started by cargo); use
    /// the binaries next to this one, or $B2FS_SHIM_BIN and $B2FS_POS2_BIN.
    #[arg(long)]
    no_build: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let result = match cli.command {
        Some(Cmd::Prove {
            path,
            challenges,
            seed,
        }) => prove(&path, challenges, seed),
        None => run(cli.run).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("b2fs-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The demo.

async fn run(args: RunArgs) -> Result<()> {
    // Handle Ctrl-C and SIGTERM from the start, so that one arriving during the setup also cleans up.
    let mut signals = Signals::new()?;
    ensure_binaries(args.no_build)?;
    let work = WorkDir::create(&args.work_dir)?;
    let mountpoint = match &args.mountpoint {
        Some(m) => m.clone(),
        None => work.path.join("mnt"),
    };
    let created_mountpoint = !mountpoint.exists();
    std::fs::create_dir_all(&mountpoint)
        .with_context(|| format!("cannot create the mount point {}", mountpoint.display()))?;
    let mut demo = Demo {
        mount: None,
        proxy: None,
        emu: None,
        mountpoint: mountpoint.clone(),
        remove_mountpoint: created_mountpoint && !mountpoint.starts_with(&work.path),
        work,
    };
    let started = tokio::select! {
        started = demo.start(&args) => Some(started),
        name = signals.recv() => {
            println!("{name}: stopping");
            None
        }
    };
    let outcome = match started {
        Some(Ok(plots)) => {
            if args.check {
                tokio::select! {
                    checked = demo.check(&plots) => checked,
                    name = signals.recv() => Err(anyhow::anyhow!("{name} during the check")),
                }
            } else {
                demo.print_banner(&args, &plots);
                demo.wait(&mut signals, args.exit_after).await
            }
        }
        Some(Err(e)) => Err(e),
        None => Ok(()),
    };
    demo.stop().await;
    outcome?;
    if args.check {
        println!("check passed");
    }
    Ok(())
}

/// A generated plot: its bucket name and local file.
struct LocalPlot {
    name: &'static str,
    path: PathBuf,
    kind: ProverKind,
}

struct Demo {
    // Stopped in this order by `stop`; dropped in this order on a panic (mount first, work dir last).
    mount: Option<Mount>,
    proxy: Option<Proxy>,
    emu: Option<Emulator>,
    mountpoint: PathBuf,
    remove_mountpoint: bool,
    work: WorkDir,
}

impl Demo {
    async fn start(&mut self, args: &RunArgs) -> Result<Vec<LocalPlot>> {
        let bucket = self.work.path.join("bucket");
        let plots_dir = bucket.join("plots");
        std::fs::create_dir_all(&plots_dir)
            .with_context(|| format!("cannot create {}", plots_dir.display()))?;

        let mut plots = Vec::new();
        let t = Instant::now();
        let pos2 = chia::create_pos2_plot(&bucket.join(POS2_PLOT), 18, 2, 1)?;
        println!(
            "created a chia-pos2 k=18 plot ({}) in {:.1?}",
            ByteSize::b(file_len(&pos2.path)),
            t.elapsed()
        );
        plots.push(LocalPlot {
            name: POS2_PLOT,
            path: pos2.path,
            kind: ProverKind::Pos2,
        });
        if args.no_chiapos {
            println!("skipping the chiapos plot (--no-chiapos)");
        } else {
            match chia::chiapos_python() {
                Ok(_) => {
                    let t = Instant::now();
                    let file = CHIAPOS_PLOT.trim_start_matches("plots/");
                    let p = chia::create_chiapos_plot(&plots_dir, file, 18, 1)?;
                    println!(
                        "created a chiapos k=18 plot ({}) in {:.1?}",
                        ByteSize::b(file_len(&p.path)),
                        t.elapsed()
                    );
                    plots.push(LocalPlot {
                        name: CHIAPOS_PLOT,
                        path: p.path,
                        kind: ProverKind::Chiapos,
                    });
                }
                Err(e) => println!("no chiapos plot: {e:#}"),
            }
        }

        let emu = Emulator::builder()
            .dir(&bucket)
            .virtual_file(VIRTUAL_PLOT, args.virtual_size.as_u64())
            .latency(args.latency, if args.latency.is_zero() { 0.0 } else { 0.3 })
            .start()
            .await
            .context("cannot start the B2 emulator")?;

        let mut config = Config {
            b2: Some(emu.proxy_b2_config()),
            ..Config::default()
        };
        config.server.listen = args.listen;
        config.cache.memory = ByteSize::mib(256);
        config.cache.disk = ByteSize::mib(256);
        config.cache.disk_dir = self.work.path.join("cache");
        self.emu = Some(emu);
        let proxy = Proxy::start(&config).await.map_err(|e| match e {
            StartError::Listen { addr, source } => anyhow::anyhow!(
                "b2-proxy cannot listen on {addr}: {source} (is another proxy or demo running? pass \
                 --listen 127.0.0.1:0 for a free port)"
            ),
            e => anyhow::Error::new(e).context("cannot start b2-proxy"),
        })?;
        let proxy_url = format!("http://{}", proxy.addr);
        self.proxy = Some(proxy);
        wait_healthy(&proxy_url).await?;

        let mount = Shim::new(&self.mountpoint, &proxy_url)
            .log_level("info")
            .log_file(self.work.path.join("shim.log"))
            .kill_on_parent_exit(true)
            .mount()?;
        self.mount = Some(mount);
        Ok(plots)
    }

    fn proxy_url(&self) -> String {
        self.proxy
            .as_ref()
            .map(|p| format!("http://{}", p.addr))
            .unwrap_or_default()
    }

    fn print_banner(&self, args: &RunArgs, plots: &[LocalPlot]) {
        let mnt = self.mountpoint.display();
        let url = self.proxy_url();
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "b2fs-demo".to_owned());
        let (emu_url, files) = self
            .emu
            .as_ref()
            .map(|e| (e.endpoint().to_owned(), e.file_count()))
            .unwrap_or_default();
        println!();
        println!("b2fs demo is running:");
        println!(
            "  B2 emulator   {emu_url}  ({files} files, latency {})",
            humantime::format_duration(args.latency)
        );
        println!(
            "  b2-proxy      {url}  (cache in {})",
            self.work.path.join("cache").display()
        );
        println!(
            "  b2fs-shim     {mnt}  (log {})",
            self.work.path.join("shim.log").display()
        );
        println!();
        println!("Try, in another terminal:");
        println!("  ls -la {mnt}/plots");
        println!("  curl -s {url}/files");
        println!("  curl -s -r 0-8190 {url}/files/{VIRTUAL_PLOT} | xxd | head -3");
        println!(
            "  dd if={mnt}/{VIRTUAL_PLOT} bs=8191 skip=1000000 count=1 status=none | xxd | head -3"
        );
        for p in plots {
            let what = match p.kind {
                ProverKind::Pos2 => "chia-pos2 lookups + proofs through the mount",
                ProverKind::Chiapos => "chiapos quality checks + full proofs through the mount",
            };
            println!("  {exe} prove {mnt}/{}    # {what}", p.name);
        }
        if let Some(p) = plots.iter().find(|p| p.kind == ProverKind::Chiapos) {
            println!(
                "  {} -c 'from chiapos import DiskProver; p = DiskProver(\"{mnt}/{}\"); print(p.get_size(), \
                 len(p.get_qualities_for_challenge(bytes(32))))'",
                chia::venv_dir().join("bin/python").display(),
                p.name
            );
        }
        println!(
            "  curl -s {url}/metrics | grep -E '^b2proxy_(cache_hits|upstream_requests)_total'"
        );
        println!();
        match args.exit_after {
            Some(d) => println!("Stopping by itself after {d:?}, or on Ctrl-C."),
            None => println!(
                "Ctrl-C stops everything, unmounts {mnt} and removes {}.",
                self.work.path.display()
            ),
        }
    }

    /// Waits for Ctrl-C, SIGTERM, `--exit-after`, or the shim dying.
    async fn wait(&mut self, signals: &mut Signals, exit_after: Option<Duration>) -> Result<()> {
        let deadline = async {
            match exit_after {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                name = signals.recv() => { println!("\n{name}: stopping"); return Ok(()); }
                _ = &mut deadline => { println!("--exit-after reached: stopping"); return Ok(()); }
                _ = tick.tick() => {
                    if let Some(m) = self.mount.as_mut()
                        && !m.is_running()
                    {
                        bail!(
                            "b2fs-shim exited unexpectedly; see {}",
                            self.work.path.join("shim.log").display()
                        );
                    }
                }
            }
        }
    }

    /// Unmounts (SIGTERM to the shim), stops the proxy (closing its cache) and the emulator, removes the
    /// work directory. Never fails: problems are printed.
    async fn stop(&mut self) {
        if let Some(m) = self.mount.take() {
            match m.terminate(Duration::from_secs(15)) {
                Ok(status) if status.success() => {
                    println!("unmounted {}", self.mountpoint.display())
                }
                Ok(status) => eprintln!("b2fs-shim exited with {status}"),
                Err(e) => eprintln!("stopping b2fs-shim: {e:#}"),
            }
        }
        if let Some(p) = self.proxy.take() {
            p.shutdown().await;
        }
        if let Some(e) = self.emu.take() {
            e.shutdown().await;
        }
        if self.remove_mountpoint && !mount::is_mounted(&self.mountpoint) {
            let _ = std::fs::remove_dir(&self.mountpoint);
        }
        // WorkDir's Drop removes the directory; do it now so the message comes last.
        self.work.remove();
    }

    /// `--check`: what a user would try, verified.
    async fn check(&mut self, plots: &[LocalPlot]) -> Result<()> {
        let (Some(emu), Some(m)) = (self.emu.as_ref(), self.mount.as_ref()) else {
            bail!("the demo is not running");
        };
        // Listing and sizes.
        for f in emu.files() {
            let meta = std::fs::metadata(m.join(&f.name))
                .with_context(|| format!("stat {} on the mount", f.name))?;
            ensure!(
                meta.len() == f.size,
                "{}: size {} on the mount, {} in the bucket",
                f.name,
                meta.len(),
                f.size
            );
        }
        println!(
            "check: {} files listed with their bucket sizes",
            emu.file_count()
        );

        // Random Chia-sized reads of the virtual plot.
        let size = emu
            .file(VIRTUAL_PLOT)
            .map(|f| f.size)
            .context("virtual plot missing")?;
        let file = std::fs::File::open(m.join(VIRTUAL_PLOT)).context("open the virtual plot")?;
        let mut state = 0x0b2f_5de0_u64;
        for i in 0..64u64 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let offset = if i == 0 {
                0
            } else {
                (state >> 11) % size.saturating_sub(8191).max(1)
            };
            let mut buf = vec![0u8; 8191];
            let n = file
                .read_at(&mut buf, offset)
                .with_context(|| format!("read at {offset} through the mount"))?;
            let want = emu.expected_bytes(VIRTUAL_PLOT, offset, 8191)?;
            ensure!(
                buf[..n] == want[..],
                "wrong bytes at {offset} of {VIRTUAL_PLOT}"
            );
        }
        println!("check: 64 random 8191-byte reads of {VIRTUAL_PLOT} are byte-exact");

        for p in plots {
            let local =
                std::fs::read(&p.path).with_context(|| format!("read {}", p.path.display()))?;
            let mounted = std::fs::read(m.join(p.name))
                .with_context(|| format!("read {} on the mount", p.name))?;
            ensure!(local == mounted, "{} differs on the mount", p.name);
            println!(
                "check: {} read whole through the mount is identical ({})",
                p.name,
                ByteSize::b(local.len() as u64)
            );
            let challenges = chia::challenges(5, 12);
            let lookups = |path: &Path| -> Result<Report> {
                match p.kind {
                    ProverKind::Pos2 => chia::pos2_lookups(path, &challenges, true),
                    ProverKind::Chiapos => {
                        chia::chiapos_lookups(path, &challenges, ChiaposOptions::default())
                    }
                }
            };
            let on_disk = lookups(&p.path)?;
            let through = lookups(&m.join(p.name))?;
            on_disk.assert_same_results(&through)?;
            ensure!(
                through.invalid_proofs().is_empty(),
                "invalid proofs through the mount: {:?}",
                through.invalid_proofs()
            );
            ensure!(through.proof_count() > 0, "no proofs found in {}", p.name);
            println!(
                "check: {} lookups on {}: {} proofs, identical to local disk and valid",
                through.lookups.len(),
                p.name,
                through.proof_count()
            );
        }
        Ok(())
    }
}

/// SIGINT (Ctrl-C) and SIGTERM.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }

    /// The next signal's name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "Ctrl-C",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

async fn wait_healthy(url: &str) -> Result<()> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .context("HTTP client")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let last = match http.get(format!("{url}/healthz")).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            bail!("b2-proxy at {url} is not healthy: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The demo's own directory: marked as ours, cleaned if a crashed run left it, removed at the end.
struct WorkDir {
    path: PathBuf,
    removed: bool,
}

impl WorkDir {
    fn create(path: &Path) -> Result<Self> {
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .context("cannot read the current directory")?
                .join(path)
        };
        if path.exists() {
            let ours = path.join(MARKER).exists();
            let empty = std::fs::read_dir(&path)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if !ours && !empty {
                bail!(
                    "{} exists and was not made by b2fs-demo; remove it or pass another --work-dir",
                    path.display()
                );
            }
            if ours {
                // Left by a run that was killed: detach its mount if it is still there, then start afresh.
                let mnt = path.join("mnt");
                if mount::is_mounted(&mnt) {
                    mount::lazy_unmount(&mnt)?;
                }
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("cannot clean up {}", path.display()))?;
            }
        }
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        std::fs::write(path.join(MARKER), b"b2fs-demo work directory\n")
            .with_context(|| format!("cannot write in {}", path.display()))?;
        Ok(Self {
            path,
            removed: false,
        })
    }

    fn remove(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        let mnt = self.path.join("mnt");
        if mount::is_mounted(&mnt)
            && let Err(e) = mount::lazy_unmount(&mnt)
        {
            eprintln!("cannot detach {}: {e:#}", mnt.display());
            return;
        }
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => println!("removed {}", self.path.display()),
            Err(e) => eprintln!("cannot remove {}: {e}", self.path.display()),
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Started by `cargo run`: build the binaries we spawn (a no-op when fresh), with this binary's profile.
fn ensure_binaries(no_build: bool) -> Result<()> {
    if !no_build {
        b2fs_tests::siblings::build(&[("b2fs-shim", "b2fs-shim"), ("b2fs-tests", "b2fs-pos2")])?;
    }
    mount::shim_binary()?;
    chia::pos2_tool()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// `prove`.

fn prove(path: &Path, count: usize, seed: u64) -> Result<()> {
    let kind = chia::plot_kind(path)?.with_context(|| {
        format!(
            "{} is not a Chia plot (neither chiapos nor chia-pos2 magic bytes)",
            path.display()
        )
    })?;
    let challenges = chia::challenges(seed, count);
    let report = match kind {
        ProverKind::Pos2 => chia::pos2_lookups(path, &challenges, true)?,
        ProverKind::Chiapos => chia::chiapos_lookups(path, &challenges, ChiaposOptions::default())?,
    };
    let name = match kind {
        ProverKind::Pos2 => "chia-pos2",
        ProverKind::Chiapos => "chiapos (parallel_read)",
    };
    println!(
        "{name}: {} opened in {:.1?}",
        path.display(),
        report.open_time
    );
    for l in &report.lookups {
        let valid = l.result.valid.iter().filter(|v| **v).count();
        let proofs = if l.proof_times.is_empty() {
            String::new()
        } else {
            let total: Duration = l.proof_times.iter().sum();
            format!(
                ", {valid}/{} proofs valid in {total:.1?}",
                l.proof_times.len()
            )
        };
        println!(
            "  challenge {}..: {} qualities (quality check {:.1?}){proofs}",
            &l.result.challenge[..12.min(l.result.challenge.len())],
            l.result.qualities.len(),
            l.quality_time,
        );
    }
    let invalid = report.invalid_proofs();
    println!(
        "{} lookups, {} qualities, {} proofs, {} invalid",
        report.lookups.len(),
        report.quality_count(),
        report.proof_count(),
        invalid.len()
    );
    ensure!(invalid.is_empty(), "invalid proofs: {invalid:?}");
    Ok(())
}
