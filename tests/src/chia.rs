//! Real Chia provers, for the end-to-end tests, the demo and the benchmark: create plots and run harvester
//! lookups (quality checks, full proofs, proof validation) against any path, a local file or one on a b2fs
//! mount, and get comparable, timed results.
//!
//! - Proof of space v1, [`chiapos`] 2.0.12 from PyPI, runs in a Python venv: by default `tests/.venv`
//!   (`$B2FS_CHIA_VENV` overrides), made by `./test.sh` or by hand with [`VENV_SETUP`]. Each call runs one
//!   Python process; timings are measured inside it, so interpreter start-up is not counted.
//! - Proof of space v2, the `chia-pos2` crate, runs in this crate's `b2fs-pos2` tool, one process per call
//!   (see [`pos2_tool`] for why it is not linked here).
//!
//! Both produce a [`Report`]: one [`Lookup`] per challenge with its [`LookupResult`] (qualities, proofs,
//! validity, all hex; what must be identical between a mount and a local disk) and its timings.
//!
//! ```no_run
//! # fn demo(mounted: &std::path::Path) -> anyhow::Result<()> {
//! use b2fs_tests::chia;
//! let dir = tempfile::tempdir()?;
//! let plot = chia::create_pos2_plot(&dir.path().join("a.gplot"), 18, 2, 1)?; // 1: seed
//! let challenges = chia::challenges(7, 20);
//! let local = chia::pos2_lookups(&plot.path, &challenges, true)?;
//! let remote = chia::pos2_lookups(mounted, &challenges, true)?;
//! local.assert_same_results(&remote)?;
//! assert!(remote.invalid_proofs().is_empty());
//! # Ok(()) }
//! ```
//!
//! [`chiapos`]: https://pypi.org/project/chiapos/

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;

mod report;
pub use report::{
    Challenge, Lookup, LookupResult, Pos2Plot, ProverKind, Report, challenges, check_pos2_params,
    hex, parse_challenge, pos2_ids, random_bytes,
};

/// The chiapos version the tests use (what `./test.sh` installs).
pub const CHIAPOS_VERSION: &str = "2.0.12";

/// How to create the chiapos venv, from the workspace root.
pub const VENV_SETUP: &str =
    "python3 -m venv tests/.venv && tests/.venv/bin/pip install chiapos==2.0.12";

// ---------------------------------------------------------------------------------------------------------
// chiapos (proof of space v1), through the venv's Python.

/// The venv with chiapos: `$B2FS_CHIA_VENV`, else `.venv` in the tests crate (`tests/.venv`).
pub fn venv_dir() -> PathBuf {
    match std::env::var_os("B2FS_CHIA_VENV") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"),
    }
}

/// The venv's Python, checked to import chiapos. The error says how to create the venv.
pub fn chiapos_python() -> Result<PathBuf> {
    let dir = venv_dir();
    let python = dir.join("bin").join("python");
    let hint = || {
        format!(
            "the chiapos tests need a Python venv with chiapos {CHIAPOS_VERSION} at {}. Create it from the \
             workspace root with `{VENV_SETUP}` (./test.sh does this), or point $B2FS_CHIA_VENV at one",
            dir.display()
        )
    };
    if !python.exists() {
        bail!("{} not found: {}", python.display(), hint());
    }
    let out = Command::new(&python)
        .args(["-c", "import chiapos"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}: {}", python.display(), hint()))?;
    if !out.status.success() {
        bail!(
            "{} cannot import chiapos ({}): {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim(),
            hint()
        );
    }
    Ok(python)
}

/// Whether [`chiapos_python`] would succeed.
pub fn chiapos_available() -> bool {
    chiapos_python().is_ok()
}

/// The Python side: one JSON request in argv[1], one `B2FS-JSON {...}` line out.
const CHIAPOS_SCRIPT: &str = r#"
import json, os, sys, time
from chiapos import DiskPlotter, DiskProver, Verifier

req = json.loads(sys.argv[1])
if req["op"] == "plot":
    d = req["dir"]
    # The plotter prints its progress on stdout; keep our answer line apart from it.
    sys.stdout.flush()
    DiskPlotter().create_plot_disk(d, d, d, req["file"], req["k"], bytes.fromhex(req["memo"]),
        bytes.fromhex(req["plot_id"]), req["buffer_mib"], req["buckets"], req["stripe_size"],
        req["threads"], False)
    out = {"ok": True}
else:
    t = time.perf_counter()
    prover = DiskProver(req["path"])
    open_s = time.perf_counter() - t
    plot_id, k = prover.get_id(), prover.get_size()
    verifier = Verifier()
    lookups = []
    for ch_hex in req["challenges"]:
        ch = bytes.fromhex(ch_hex)
        t = time.perf_counter()
        qualities = prover.get_qualities_for_challenge(ch)
        quality_s = time.perf_counter() - t
        proofs, valid, proof_s = [], [], []
        if req["full_proofs"]:
            for i, q in enumerate(qualities):
                t = time.perf_counter()
                proof = prover.get_full_proof(ch, i, req["parallel_read"])
                proof_s.append(time.perf_counter() - t)
                proofs.append(bytes(proof).hex())
                got = verifier.validate_proof(plot_id, k, ch, proof)
                valid.append(got is not None and bytes(got) == bytes(q))
        lookups.append({"challenge": ch_hex, "qualities": [bytes(q).hex() for q in qualities],
            "proofs": proofs, "valid": valid, "quality_s": quality_s, "proof_s": proof_s})
    out = {"open_s": open_s, "k": k, "plot_id": bytes(plot_id).hex(), "lookups": lookups}
print("B2FS-JSON " + json.dumps(out), flush=True)
"#;

/// Runs the script with one request and parses its answer line.
fn run_chiapos<T: for<'de> Deserialize<'de>>(
    python: &Path,
    request: &serde_json::Value,
) -> Result<T> {
    let out = Command::new(python)
        .arg("-c")
        .arg(CHIAPOS_SCRIPT)
        .arg(request.to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail = |s: &str| {
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    };
    if !out.status.success() {
        bail!(
            "chiapos ({}) failed with {}:\n{}\n{}",
            request["op"],
            out.status,
            tail(&stderr),
            tail(&stdout)
        );
    }
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("B2FS-JSON "))
        .with_context(|| format!("chiapos printed no answer:\n{}", tail(&stdout)))?;
    serde_json::from_str(line).with_context(|| format!("bad answer from chiapos: {line}"))
}

/// Plotter settings of chiapos `create_plot_disk`; [`ChiaposPlotParams::for_k`] gives working ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChiaposPlotParams {
    /// Sort buffer in MiB (0: the plotter's default).
    pub buffer_mib: u32,
    /// Buckets (0: the plotter's default, 128).
    pub buckets: u32,
    /// Stripe size (0: the plotter's default).
    pub stripe_size: u32,
    pub threads: u8,
}

impl ChiaposPlotParams {
    /// Settings that work for `k`: the plotter's defaults reject tiny plots (k < 20: "stripe size too
    /// large"), so those get a small buffer, 16 buckets and small stripes.
    pub fn for_k(k: u8) -> Self {
        if k < 21 {
            Self {
                buffer_mib: 100,
                buckets: 16,
                stripe_size: 2000,
                threads: 2,
            }
        } else {
            Self {
                buffer_mib: 0,
                buckets: 0,
                stripe_size: 0,
                threads: 2,
            }
        }
    }
}

/// A chiapos plot on disk.
#[derive(Debug, Clone)]
pub struct ChiaposPlot {
    pub path: PathBuf,
    pub k: u8,
    pub plot_id: [u8; 32],
}

/// Creates a chiapos plot `dir/file_name` of size `k` (18 takes about a second, 22 about 15 s, 25 about
/// two minutes) with plot id and memo derived from `seed`, using [`ChiaposPlotParams::for_k`].
pub fn create_chiapos_plot(dir: &Path, file_name: &str, k: u8, seed: u64) -> Result<ChiaposPlot> {
    create_chiapos_plot_with(dir, file_name, k, seed, ChiaposPlotParams::for_k(k))
}

/// [`create_chiapos_plot`] with explicit plotter settings.
pub fn create_chiapos_plot_with(
    dir: &Path,
    file_name: &str,
    k: u8,
    seed: u64,
    params: ChiaposPlotParams,
) -> Result<ChiaposPlot> {
    ensure!(
        (18..=50).contains(&k),
        "chiapos plots have k from 18 to 50, not {k}"
    );
    let python = chiapos_python()?;
    let mut state = seed;
    let plot_id = random_bytes(&mut state);
    // Memo layout of a real plot (pool contract puzzle hash 32 + farmer key 48 + local master key 32);
    // the content does not matter to the proofs.
    let memo: Vec<u8> = (0..4)
        .flat_map(|_| random_bytes(&mut state))
        .take(112)
        .collect();
    let dir_str = dir
        .to_str()
        .with_context(|| format!("{} is not UTF-8", dir.display()))?;
    let request = serde_json::json!({
        "op": "plot", "dir": dir_str, "file": file_name, "k": k, "memo": hex(&memo),
        "plot_id": hex(&plot_id), "buffer_mib": params.buffer_mib, "buckets": params.buckets,
        "stripe_size": params.stripe_size, "threads": params.threads,
    });
    #[derive(Deserialize)]
    struct Done {
        ok: bool,
    }
    let done: Done = run_chiapos(&python, &request)
        .with_context(|| format!("creating the chiapos k={k} plot {file_name}"))?;
    ensure!(done.ok, "the chiapos plotter did not finish");
    let path = dir.join(file_name);
    ensure!(
        path.is_file(),
        "the chiapos plotter did not create {}",
        path.display()
    );
    Ok(ChiaposPlot { path, k, plot_id })
}

/// What [`chiapos_lookups`] does per challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChiaposOptions {
    /// Fetch and validate a full proof for every quality found.
    pub full_proofs: bool,
    /// `get_full_proof(..., parallel_read)`: the harvester default, one open and thread per read.
    pub parallel_read: bool,
}

impl Default for ChiaposOptions {
    /// Full proofs with `parallel_read`, as a harvester does.
    fn default() -> Self {
        Self {
            full_proofs: true,
            parallel_read: true,
        }
    }
}

#[derive(Deserialize)]
struct WireLookup {
    challenge: String,
    qualities: Vec<String>,
    proofs: Vec<String>,
    valid: Vec<bool>,
    quality_s: f64,
    proof_s: Vec<f64>,
}

#[derive(Deserialize)]
struct WireReport {
    open_s: f64,
    lookups: Vec<WireLookup>,
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or_default()
}

/// Opens the chiapos plot at `plot` (any path: local or on a mount) and, for each challenge, runs the
/// harvester's quality check and, with `options.full_proofs`, fetches and validates every full proof
/// (`Verifier().validate_proof` must give back the quality). One Python process for all challenges.
pub fn chiapos_lookups(
    plot: &Path,
    challenges: &[Challenge],
    options: ChiaposOptions,
) -> Result<Report> {
    let python = chiapos_python()?;
    let path = plot
        .to_str()
        .with_context(|| format!("{} is not UTF-8", plot.display()))?;
    let request = serde_json::json!({
        "op": "lookups", "path": path,
        "challenges": challenges.iter().map(|c| hex(c)).collect::<Vec<_>>(),
        "full_proofs": options.full_proofs, "parallel_read": options.parallel_read,
    });
    let wire: WireReport = run_chiapos(&python, &request)
        .with_context(|| format!("chiapos lookups on {}", plot.display()))?;
    Ok(Report {
        prover: ProverKind::Chiapos,
        path: plot.to_path_buf(),
        open_time: secs(wire.open_s),
        lookups: wire
            .lookups
            .into_iter()
            .map(|l| Lookup {
                result: LookupResult {
                    challenge: l.challenge,
                    qualities: l.qualities,
                    proofs: l.proofs,
                    valid: l.valid,
                },
                quality_time: secs(l.quality_s),
                proof_times: l.proof_s.into_iter().map(secs).collect(),
            })
            .collect(),
    })
}

// ---------------------------------------------------------------------------------------------------------
// chia-pos2 (proof of space v2), through the `b2fs-pos2` tool.
//
// chia-pos2 links its own copy of FSE, whose `HIST_*` functions clash at link time with the zstd that
// b2-proxy's disk cache (foyer) links: no binary can contain both. So chia-pos2 runs in a small separate
// binary of this crate, `b2fs-pos2` (src/bin/b2fs-pos2.rs), and nothing in this library links it. That also
// keeps the prover out of the process under test, like a harvester.

/// The `b2fs-pos2` tool: `$B2FS_POS2_BIN`, else next to the running executable (see
/// [`crate::mount::workspace_binary`]); `cargo test --workspace` builds it.
pub fn pos2_tool() -> Result<PathBuf> {
    crate::mount::workspace_binary("b2fs-pos2", "B2FS_POS2_BIN")
}

/// Runs the tool and parses the JSON it prints.
fn run_pos2<T: for<'de> Deserialize<'de>>(args: &[&std::ffi::OsStr], stdin: &str) -> Result<T> {
    use std::io::Write;
    let tool = pos2_tool()?;
    let mut child = Command::new(&tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", tool.display()))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .with_context(|| format!("cannot write to {}", tool.display()))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {}", tool.display()))?;
    if !out.status.success() {
        bail!(
            "b2fs-pos2 failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "bad answer from b2fs-pos2: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Creates a chia-pos2 plot group file (one plot, index 0, meta group 0) at `path`: `k` even, 18..=28 (18
/// takes 0.1 s with a release build of the tool, 2 s with a debug one; 28 takes three minutes and 13 GB of
/// RAM), `strength` >= 2, plot group id and memo from [`pos2_ids`]`(seed)`. The conventional extension is
/// `.gplot`.
pub fn create_pos2_plot(path: &Path, k: u8, strength: u8, seed: u64) -> Result<Pos2Plot> {
    check_pos2_params(k, strength)?;
    run_pos2(
        &[
            "plot".as_ref(),
            path.as_os_str(),
            "--k".as_ref(),
            k.to_string().as_ref(),
            "--strength".as_ref(),
            strength.to_string().as_ref(),
            "--seed".as_ref(),
            seed.to_string().as_ref(),
        ],
        "",
    )
    .with_context(|| format!("creating the chia-pos2 k={k} plot {}", path.display()))
}

/// Opens the chia-pos2 plot at `plot` (any path) and runs one lookup per challenge (each reopens and reads
/// the plot, as a harvester's); with `solve`, solves every quality found into a full proof and validates it
/// (`validate_proof_v2` must give back the quality chain). Solving is CPU work only (about 25 ms at k=18
/// with a release build of the tool, 10x that with a debug one). One `b2fs-pos2` process for all
/// challenges; timings are measured inside it.
pub fn pos2_lookups(plot: &Path, challenges: &[Challenge], solve: bool) -> Result<Report> {
    let input = serde_json::to_string(&challenges.iter().map(|c| hex(c)).collect::<Vec<_>>())
        .context("encoding the challenges")?;
    let mut args: Vec<&std::ffi::OsStr> = vec!["lookups".as_ref(), plot.as_os_str()];
    if !solve {
        args.push("--no-solve".as_ref());
    }
    run_pos2(&args, &input).with_context(|| format!("chia-pos2 lookups on {}", plot.display()))
}

/// The format of a plot file by its magic bytes: `Some(Chiapos)` for "Proof of Space Plot", `Some(Pos2)`
/// for "PoS2" (a plot group file) or "pos2" (a single plot file), else `None`.
pub fn plot_kind(path: &Path) -> Result<Option<ProverKind>> {
    use std::io::Read;
    let mut head = [0u8; 19];
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(m) => n += m,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
    Ok(if head[..n].starts_with(b"Proof of Space Plot") {
        Some(ProverKind::Chiapos)
    } else if head[..n].starts_with(b"PoS2") || head[..n].starts_with(b"pos2") {
        Some(ProverKind::Pos2)
    } else {
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_deterministic_and_distinct() {
        let a = challenges(1, 3);
        assert_eq!(a, challenges(1, 3));
        assert_ne!(a[0], a[1]);
        assert_ne!(challenges(2, 1)[0], a[0]);
        assert_eq!(hex(&[0, 15, 255]), "000fff");
        assert_eq!(parse_challenge(&hex(&a[1])).ok(), Some(a[1]));
        assert!(parse_challenge("zz").is_err());
    }

    #[test]
    fn plot_kinds_by_magic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases: [(&[u8], Option<ProverKind>); 4] = [
            (b"Proof of Space Plot\x00\x01", Some(ProverKind::Chiapos)),
            (b"PoS2\x02\xdb", Some(ProverKind::Pos2)),
            (b"pos2\x02", Some(ProverKind::Pos2)),
            (b"PK\x03\x04", None),
        ];
        for (i, (bytes, want)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("{i}.plot"));
            std::fs::write(&path, bytes).expect("write");
            assert_eq!(plot_kind(&path).expect("read"), want, "case {i}");
        }
        assert!(plot_kind(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn comparison_names_the_difference() {
        let lookup = |q: &str| Lookup {
            result: LookupResult {
                challenge: "00".into(),
                qualities: vec![q.into()],
                proofs: vec![],
                valid: vec![],
            },
            quality_time: Duration::from_millis(1),
            proof_times: vec![],
        };
        let report = |q: &str, t: u64| Report {
            prover: ProverKind::Pos2,
            path: PathBuf::from("/x"),
            open_time: Duration::from_millis(t),
            lookups: vec![lookup(q)],
        };
        assert!(
            report("aa", 1)
                .assert_same_results(&report("aa", 9))
                .is_ok()
        );
        let e = report("aa", 1)
            .assert_same_results(&report("bb", 1))
            .expect_err("differs");
        assert!(e.to_string().contains("bb"), "{e}");
    }
}
