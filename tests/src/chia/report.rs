//! The parts of `b2fs_tests::chia` that the `b2fs-pos2` tool shares with the library (it includes this file
//! with `#[path]` instead of linking the library: see `pos2_tool`). Only std, serde and anyhow here.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};

/// A 32-byte challenge, as harvesters get them.
pub type Challenge = [u8; 32];

/// `count` deterministic challenges derived from `seed`.
pub fn challenges(seed: u64, count: usize) -> Vec<Challenge> {
    let mut state = seed ^ 0x6368_6961_2d62_3266; // "chia-b2f"
    (0..count).map(|_| random_bytes(&mut state)).collect()
}

/// 32 bytes from a SplitMix64 stream.
pub fn random_bytes(state: &mut u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    for chunk in out.chunks_exact_mut(8) {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses a 64-digit hex challenge.
pub fn parse_challenge(text: &str) -> Result<Challenge> {
    let text = text.trim();
    ensure!(
        text.len() == 64 && text.is_ascii(),
        "a challenge is 64 hex digits, got {text:?}"
    );
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .with_context(|| format!("bad hex in challenge {text:?}"))?;
    }
    Ok(out)
}

/// Which prover produced a [`Report`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProverKind {
    /// Proof of space v1 (`chiapos`).
    Chiapos,
    /// Proof of space v2 (`chia-pos2`).
    Pos2,
}

/// What one lookup found: must be identical whatever the plot is read through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupResult {
    /// The challenge, hex.
    pub challenge: String,
    /// The qualities found, hex, in the prover's order. chiapos: the 32-byte quality string. chia-pos2:
    /// the plot index (2 bytes, little-endian) followed by `serialize_quality` of the quality chain.
    pub qualities: Vec<String>,
    /// One full proof per quality, hex (empty when proofs were not asked for).
    pub proofs: Vec<String>,
    /// Whether each proof validated and gave back its quality.
    pub valid: Vec<bool>,
}

/// One lookup with its timings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lookup {
    #[serde(flatten)]
    pub result: LookupResult,
    /// The quality check (chiapos `get_qualities_for_challenge`; chia-pos2 the same, which is all its
    /// reading).
    pub quality_time: Duration,
    /// Each full proof: chiapos `get_full_proof` (reads), chia-pos2 `solve_proof` (CPU only).
    pub proof_times: Vec<Duration>,
}

/// Lookups of one plot through one path.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub prover: ProverKind,
    /// The plot file that was read.
    pub path: PathBuf,
    /// Opening the plot (chiapos `DiskProver(path)`, chia-pos2 `Prover::new`).
    pub open_time: Duration,
    pub lookups: Vec<Lookup>,
}

impl Report {
    /// The results without timings, in challenge order.
    pub fn results(&self) -> Vec<&LookupResult> {
        self.lookups.iter().map(|l| &l.result).collect()
    }

    /// Number of qualities found over all challenges.
    pub fn quality_count(&self) -> usize {
        self.lookups.iter().map(|l| l.result.qualities.len()).sum()
    }

    /// Number of full proofs produced.
    pub fn proof_count(&self) -> usize {
        self.lookups.iter().map(|l| l.result.proofs.len()).sum()
    }

    /// (challenge, index) of every proof that did not validate.
    pub fn invalid_proofs(&self) -> Vec<(String, usize)> {
        self.lookups
            .iter()
            .flat_map(|l| {
                l.result
                    .valid
                    .iter()
                    .enumerate()
                    .filter(|(_, ok)| !**ok)
                    .map(|(i, _)| (l.result.challenge.clone(), i))
            })
            .collect()
    }

    /// Fails, naming the first difference, unless `other` found exactly the same qualities and proofs.
    pub fn assert_same_results(&self, other: &Report) -> Result<()> {
        ensure!(
            self.lookups.len() == other.lookups.len(),
            "{} lookups through {} but {} through {}",
            self.lookups.len(),
            self.path.display(),
            other.lookups.len(),
            other.path.display()
        );
        for (a, b) in self.results().into_iter().zip(other.results()) {
            ensure!(
                a == b,
                "challenge {}: {} found {:?}, {} found {:?}",
                a.challenge,
                self.path.display(),
                a,
                other.path.display(),
                b
            );
        }
        Ok(())
    }
}

/// A chia-pos2 single-plot group on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pos2Plot {
    pub path: PathBuf,
    pub k: u8,
    pub strength: u8,
    /// Hex.
    pub plot_group_id: String,
}

/// The plot group id and memo `create_pos2_plot` derives from `seed`.
pub fn pos2_ids(seed: u64) -> ([u8; 32], Vec<u8>) {
    let mut state = seed ^ 0x706f_7332; // "pos2"
    let plot_group_id = random_bytes(&mut state);
    let memo = (0..4)
        .flat_map(|_| random_bytes(&mut state))
        .take(112)
        .collect();
    (plot_group_id, memo)
}

/// Checks the parameters chia-pos2 accepts: `k` even, 18..=28, `strength` >= 2.
pub fn check_pos2_params(k: u8, strength: u8) -> Result<()> {
    ensure!(
        (18..=28).contains(&k) && k.is_multiple_of(2),
        "chia-pos2 plots have an even k from 18 to 28, not {k}"
    );
    ensure!(
        strength >= 2,
        "chia-pos2 strength must be >= 2, not {strength}"
    );
    Ok(())
}
