//! `b2fs-pos2`: Chia proof of space v2 (`chia-pos2`) plotting and lookups as a JSON command-line tool.
//!
//! The tests, the demo and the benchmark call it through `b2fs_tests::chia::{create_pos2_plot,
//! pos2_lookups}`. It is a separate binary, which does not link the `b2fs_tests` library, because
//! chia-pos2's bundled FSE and the zstd linked by b2-proxy's cache both define `HIST_*` symbols: the two
//! cannot share a binary.
//!
//! ```text
//! b2fs-pos2 plot PATH [--k 18] [--strength 2] [--seed 1]     # prints the plot as JSON
//! b2fs-pos2 lookups PATH [--no-solve] < challenges.json       # ["<64 hex>", ...] in, a Report as JSON out
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use clap::{Parser, Subcommand};

// The library's report types, compiled into this binary: linking the library would bring in b2-proxy and its
// zstd, whose `HIST_*` symbols clash with chia-pos2's bundled FSE.
#[allow(dead_code)]
#[path = "../chia/report.rs"]
mod report;
use report::{
    Challenge, Lookup, LookupResult, Pos2Plot, ProverKind, Report, check_pos2_params, hex,
    parse_challenge, pos2_ids,
};

/// Chia proof of space v2 (chia-pos2) plotting and lookups, with JSON output.
#[derive(Debug, Parser)]
#[command(name = "b2fs-pos2", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a single-plot group file at PATH and print it as JSON.
    Plot {
        path: PathBuf,
        /// Plot size: even, 18 to 28.
        #[arg(long, default_value_t = 18)]
        k: u8,
        /// Plot strength, at least 2.
        #[arg(long, default_value_t = 2)]
        strength: u8,
        /// Seed of the plot group id and memo.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Read a JSON array of hex challenges from stdin, run a lookup for each against the plot at PATH
    /// (solving and validating every proof unless --no-solve), print the report as JSON.
    Lookups {
        path: PathBuf,
        #[arg(long)]
        no_solve: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = match cli.command {
        Cmd::Plot {
            path,
            k,
            strength,
            seed,
        } => plot(&path, k, strength, seed).and_then(|p| Ok(serde_json::to_string(&p)?)),
        Cmd::Lookups { path, no_solve } => read_challenges()
            .and_then(|c| lookups(&path, &c, !no_solve))
            .and_then(|r| Ok(serde_json::to_string(&r)?)),
    };
    match out {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("b2fs-pos2: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn read_challenges() -> Result<Vec<Challenge>> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("cannot read the challenges from stdin")?;
    let list: Vec<String> =
        serde_json::from_str(&text).context("stdin must be a JSON array of hex challenges")?;
    list.iter().map(|c| parse_challenge(c)).collect()
}

fn plot(path: &Path, k: u8, strength: u8, seed: u64) -> Result<Pos2Plot> {
    check_pos2_params(k, strength)?;
    let (plot_group_id, memo) = pos2_ids(seed);
    chia_pos2::create_v2_single_plot_group(path, k, strength, &plot_group_id, 0, 0, &memo)
        .with_context(|| format!("chia-pos2 cannot create {}", path.display()))?;
    Ok(Pos2Plot {
        path: path.to_path_buf(),
        k,
        strength,
        plot_group_id: hex(&plot_group_id),
    })
}

fn lookups(plot: &Path, challenges: &[Challenge], solve: bool) -> Result<Report> {
    use std::os::unix::ffi::OsStrExt;
    // chia-pos2 panics on a path with a NUL byte; refuse it here.
    ensure!(
        !plot.as_os_str().as_bytes().contains(&0),
        "plot path contains a NUL byte"
    );
    let started = Instant::now();
    let prover = chia_pos2::Prover::new(plot)
        .with_context(|| format!("chia-pos2 cannot open {}", plot.display()))?;
    let open_time = started.elapsed();
    let (k, strength, meta_group) = (
        prover.size(),
        prover.get_strength(),
        prover.get_meta_group(),
    );
    let group_id = *prover.plot_group_id();
    let mut lookups = Vec::with_capacity(challenges.len());
    for challenge in challenges {
        let started = Instant::now();
        let found = prover
            .get_qualities_for_challenge(challenge)
            .with_context(|| format!("lookup of challenge {}", hex(challenge)))?;
        let quality_time = started.elapsed();
        let mut result = LookupResult {
            challenge: hex(challenge),
            qualities: Vec::with_capacity(found.len()),
            proofs: Vec::new(),
            valid: Vec::new(),
        };
        let mut proof_times = Vec::new();
        for q in &found {
            let mut bytes = q.plot_index.to_le_bytes().to_vec();
            bytes.extend_from_slice(&chia_pos2::serialize_quality(
                &q.chain.chain_links,
                strength,
            ));
            result.qualities.push(hex(&bytes));
            if !solve {
                continue;
            }
            let plot_id = chia_pos2::plot_id_for_index(&group_id, q.plot_index, meta_group)
                .context("chia-pos2 cannot derive the plot id")?;
            let started = Instant::now();
            let proof = chia_pos2::solve_proof(&q.chain, &plot_id, k, strength);
            proof_times.push(started.elapsed());
            let valid = !proof.is_empty()
                && chia_pos2::validate_proof_v2(
                    &group_id,
                    q.plot_index,
                    k,
                    strength,
                    meta_group,
                    challenge,
                    &proof,
                )
                .is_some_and(|v| v.chain_links == q.chain.chain_links);
            result.proofs.push(hex(&proof));
            result.valid.push(valid);
        }
        lookups.push(Lookup {
            result,
            quality_time,
            proof_times,
        });
    }
    Ok(Report {
        prover: ProverKind::Pos2,
        path: plot.to_path_buf(),
        open_time,
        lookups,
    })
}
