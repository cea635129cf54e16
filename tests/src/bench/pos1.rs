//! Replay of a Chia proof-of-space v1 k=32 lookup on a virtual 108 GiB plot (see CHIA-READS.md).
//!
//! The layout is plausible, not exact: header at 0, tables T1..T6 and P7 spread through the file, then C1, C2
//! and C3 near the end, with per-plot jitter derived from a seed. What matters is exact: read sizes (a table
//! step is two adjacent 8191-byte reads, P7 one 8448-byte read, C1 and C3 one 8191-byte read each), the
//! dependency structure (quality check: 9 dependent steps; full proof: 9 dependent rounds with fan-out
//! 1, 1, 1, 1, 2, 4, 8, 16, 32, the proof tree's first branch being the quality check's path) and every read
//! of a proof round going through its own open().

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::emulator::Emulator;

/// What harvesters read at a time (libstdc++ `ifstream` buffer).
pub const READ: u64 = 8191;
/// One P7 park at k=32: 2048 entries x 33 bits.
pub const P7_PARK: u64 = 8448;
/// A k=32 table park (line point, stubs, deltas): ~11 KB; the two 8191-byte reads start at its beginning.
pub const TABLE_PARK: u64 = 11_000;
/// A C3 park at k=32.
pub const C3_PARK: u64 = 3_000;
/// C1: one 4-byte entry every 10,000 f7 values.
pub const C1_LEN: u64 = 4 * ((1 << 32) / 10_000);
/// C2: one 4-byte entry every 10,000 C1 entries.
pub const C2_LEN: u64 = 176;
/// The header reads of `DiskProver` open: offsets 0 and 58 (and the start of C2).
pub const HEADER_READS: [u64; 2] = [0, 58];

/// One read: offset and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    pub off: u64,
    pub len: u64,
}

/// Reads made one after the other through one open file.
pub type Step = Vec<Read>;

/// A lookup: the quality check (dependent steps) and the full proof (dependent rounds of parallel steps).
#[derive(Debug, Clone)]
pub struct Plan {
    pub quality: Vec<Step>,
    pub proof: Vec<Vec<Step>>,
}

impl Plan {
    pub fn proof_reads(&self) -> usize {
        self.proof.iter().flatten().map(Vec::len).sum()
    }
}

/// Byte ranges of the sections of one plot.
#[derive(Debug, Clone)]
pub struct Layout {
    pub size: u64,
    /// T1..T6 (index 0 is T1).
    pub tables: [(u64, u64); 6],
    pub p7: (u64, u64),
    pub c1: (u64, u64),
    pub c2: (u64, u64),
    pub c3: (u64, u64),
}

impl Layout {
    /// A plausible k=32 layout for a file of `size` bytes (>= 1 GiB), jittered by `seed`.
    pub fn k32(size: u64, seed: u64) -> Self {
        assert!(size >= 1 << 30, "a k=32 replay needs a big file");
        let mut rng = StdRng::seed_from_u64(seed ^ 0x6b33_3250_6c6f_7431);
        let header = 4096 + rng.random_range(0..4096u64);
        let c3_len = size / 80;
        let body = size - header - C1_LEN - C2_LEN - c3_len - (1 << 20);
        // Seven sections (T1..T6, P7) of about a seventh each, +-2%.
        let mut starts = [0u64; 8];
        starts[0] = header;
        let seventh = body / 7;
        for i in 0..7 {
            let jitter = rng.random_range(0..seventh / 25);
            let len = if i == 6 {
                header + body - starts[6]
            } else {
                seventh - seventh / 50 + jitter
            };
            starts[i + 1] = starts[i] + len;
        }
        let sec = |i: usize| (starts[i], starts[i + 1]);
        let c1 = (starts[7], starts[7] + C1_LEN);
        let c2 = (c1.1, c1.1 + C2_LEN);
        let c3 = (c2.1, c2.1 + c3_len);
        Self {
            size,
            tables: [sec(0), sec(1), sec(2), sec(3), sec(4), sec(5)],
            p7: sec(6),
            c1,
            c2,
            c3,
        }
    }

    /// What opening the plot reads: two header reads and the start of C2.
    pub fn open_reads(&self) -> Vec<Read> {
        let mut v: Vec<Read> = HEADER_READS
            .iter()
            .map(|&off| Read { off, len: READ })
            .collect();
        v.push(Read {
            off: self.c2.0,
            len: READ,
        });
        v
    }

    fn park(&self, rng: &mut StdRng, (start, end): (u64, u64), park: u64, read: u64) -> u64 {
        let parks = (end - start - read) / park;
        start + rng.random_range(0..parks) * park
    }

    /// A table step: two adjacent 8191-byte reads from the start of a random park of table `t` (1..=6).
    fn table_step(&self, rng: &mut StdRng, t: usize) -> Step {
        let off = self.park(rng, self.tables[t - 1], TABLE_PARK, 2 * READ);
        vec![
            Read { off, len: READ },
            Read {
                off: off + READ,
                len: READ,
            },
        ]
    }

    /// One lookup with a matching proof, positions drawn from `rng`.
    pub fn plan(&self, rng: &mut StdRng) -> Plan {
        let c1 = vec![Read {
            off: self.c1.0 + rng.random_range(0..(self.c1.1 - self.c1.0) / 4) * 4,
            len: READ,
        }];
        let c3 = vec![Read {
            off: self.park(rng, self.c3, C3_PARK, READ),
            len: READ,
        }];
        let p7 = vec![Read {
            off: self.park(rng, self.p7, P7_PARK, P7_PARK),
            len: P7_PARK,
        }];
        let mut quality = vec![c1.clone(), c3.clone(), p7.clone()];
        let mut proof = vec![vec![c1], vec![c3], vec![p7]];
        // The proof tree: each entry of table t points to two entries of table t-1, in random parks. The
        // quality check follows the first branch.
        let mut level: Vec<Step> = vec![self.table_step(rng, 6)];
        for t in (1..=6).rev() {
            if t < 6 {
                level = (0..2 * level.len())
                    .map(|_| self.table_step(rng, t))
                    .collect();
            }
            quality.push(level[0].clone());
            proof.push(level.clone());
        }
        Plan { quality, proof }
    }
}

/// Where reads go: the proxy's HTTP API, or a directory (a FUSE mount).
#[derive(Debug, Clone)]
pub enum Via {
    Http {
        client: reqwest::Client,
        base: String,
    },
    Dir(PathBuf),
}

impl Via {
    pub fn label(&self) -> &'static str {
        match self {
            Via::Http { .. } => "http",
            Via::Dir(_) => "mount",
        }
    }
}

/// The bytes of each read, in plan order, to check after the timing.
pub type Got = Vec<(Read, Vec<u8>)>;

pub async fn http_read(client: &reqwest::Client, url: &str, r: Read) -> anyhow::Result<Bytes> {
    let resp = client
        .get(url)
        .header("Range", format!("bytes={}-{}", r.off, r.off + r.len - 1))
        .send()
        .await
        .with_context(|| format!("GET {url} {}+{}", r.off, r.len))?;
    let status = resp.status();
    let body = resp.bytes().await.context("reading a body")?;
    if status != 206 || body.len() as u64 != r.len {
        bail!(
            "GET {url} {}+{}: status {status}, {} bytes",
            r.off,
            r.len,
            body.len()
        );
    }
    Ok(body)
}

async fn http_step(client: &reqwest::Client, url: &str, step: &Step) -> anyhow::Result<Got> {
    let mut got = Vec::with_capacity(step.len());
    for r in step {
        got.push((*r, http_read(client, url, *r).await?.to_vec()));
    }
    Ok(got)
}

pub fn fs_read(f: &File, r: Read) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; r.len as usize];
    f.read_exact_at(&mut buf, r.off)?;
    Ok(buf)
}

fn fs_step(path: &Path, step: &Step) -> anyhow::Result<Got> {
    let f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    step.iter()
        .map(|r| {
            fs_read(&f, *r)
                .map(|b| (*r, b))
                .with_context(|| format!("read {} at {}", path.display(), r.off))
        })
        .collect()
}

/// Runs dependent rounds of parallel steps, each step through its own open (or its own request chain).
pub async fn run_rounds(
    via: &Via,
    name: &str,
    rounds: &[Vec<Step>],
) -> anyhow::Result<(Duration, Got)> {
    match via {
        Via::Http { client, base } => {
            let url = format!("{base}/files/{}", crate::emulator::encode_file_name(name));
            let started = Instant::now();
            let mut all = Vec::new();
            for round in rounds {
                let results =
                    futures::future::join_all(round.iter().map(|s| http_step(client, &url, s)))
                        .await;
                for r in results {
                    all.extend(r?);
                }
            }
            Ok((started.elapsed(), all))
        }
        Via::Dir(root) => {
            let path = root.join(name);
            let rounds = rounds.to_vec();
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let mut all = Vec::new();
                for round in &rounds {
                    let results: Vec<anyhow::Result<Got>> = std::thread::scope(|s| {
                        let handles: Vec<_> = round
                            .iter()
                            .map(|step| s.spawn(|| fs_step(&path, step)))
                            .collect();
                        handles
                            .into_iter()
                            .map(|h| h.join().unwrap_or_else(|_| bail!("reader panicked")))
                            .collect()
                    });
                    for r in results {
                        all.extend(r?);
                    }
                }
                Ok((started.elapsed(), all))
            })
            .await?
        }
    }
}

/// Runs dependent steps through one open file (one request chain).
pub async fn run_chain(via: &Via, name: &str, steps: &[Step]) -> anyhow::Result<(Duration, Got)> {
    match via {
        Via::Http { client, base } => {
            let url = format!("{base}/files/{}", crate::emulator::encode_file_name(name));
            let started = Instant::now();
            let mut all = Vec::new();
            for step in steps {
                all.extend(http_step(client, &url, step).await?);
            }
            Ok((started.elapsed(), all))
        }
        Via::Dir(root) => {
            let path = root.join(name);
            let steps = steps.to_vec();
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let f = File::open(&path).with_context(|| format!("open {}", path.display()))?;
                let mut all = Vec::new();
                for r in steps.iter().flatten() {
                    let b = fs_read(&f, *r)
                        .with_context(|| format!("read {} at {}", path.display(), r.off))?;
                    all.push((*r, b));
                }
                Ok((started.elapsed(), all))
            })
            .await?
        }
    }
}

/// Checks every read's bytes against the emulator's.
pub fn verify(emu: &Emulator, name: &str, got: &Got) -> anyhow::Result<()> {
    for (r, bytes) in got {
        let want = emu.expected_bytes(name, r.off, r.len)?;
        if *bytes != want {
            bail!("{name}: wrong bytes at {}+{}", r.off, r.len);
        }
    }
    Ok(())
}

/// Measurements of one lookup (quality check then full proof).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub quality: Duration,
    pub proof: Duration,
    pub quality_requests: u64,
    pub requests: u64,
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_shape_matches_chiapos_k32() {
        let l = Layout::k32(108 << 30, 5);
        let mut rng = StdRng::seed_from_u64(1);
        let p = l.plan(&mut rng);
        assert_eq!(p.quality.len(), 9);
        let fanout: Vec<usize> = p.proof.iter().map(Vec::len).collect();
        assert_eq!(fanout, [1, 1, 1, 1, 2, 4, 8, 16, 32]);
        assert_eq!(p.proof_reads(), 3 + 2 * 63);
        // The quality check's path is the proof's first branch.
        for (i, q) in p.quality.iter().enumerate() {
            assert_eq!(q, &p.proof[i][0]);
        }
        assert_eq!(
            p.quality[2],
            vec![Read {
                off: p.quality[2][0].off,
                len: P7_PARK
            }]
        );
        for step in p.proof.iter().flatten() {
            for r in step {
                assert!(r.off + r.len <= l.size);
            }
            if step.len() == 2 {
                assert_eq!(step[1].off, step[0].off + READ);
            }
        }
        // Sections in order, C1/C2/C3 near the end.
        assert!(l.tables[0].0 < 8192 && l.tables[5].1 == l.p7.0 && l.p7.1 == l.c1.0);
        assert!(l.c3.1 <= l.size && l.c1.0 > l.size / 10 * 9);
        // Deterministic.
        let again = Layout::k32(108 << 30, 5).plan(&mut StdRng::seed_from_u64(1));
        assert_eq!(again.quality, p.quality);
    }
}

/// How long the emulator itself takes to answer one small download, measured straight from the bench (no
/// proxy) with a fixed injected delay (sigma 0, so the difference is not lost in the lognormal's noise): the
/// delay plus timer granularity, scheduling and loopback HTTP. The excess over the delay is overhead that a
/// perfect proxy would pay too, and that the floors (pure injected delays) do not contain.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Calibration {
    pub requests: usize,
    pub measured: crate::bench::dist::Dist,
    /// The fixed delay injected for the calibration (the run's median).
    pub injected_ms: f64,
    /// Measured mean minus the injected delay: per-request overhead of the emulator and loopback.
    pub overhead_ms: f64,
}

/// Authorizes straight against the emulator: (authorization token, download URL prefix of the bucket's files,
/// to which the encoded file name is appended).
pub async fn direct_base(
    emu: &Emulator,
    client: &reqwest::Client,
) -> anyhow::Result<(String, String)> {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        emu.key_id(),
        emu.application_key()
    ));
    let auth: serde_json::Value = client
        .get(format!("{}/b2api/v2/b2_authorize_account", emu.endpoint()))
        .header("Authorization", format!("Basic {basic}"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = auth["authorizationToken"]
        .as_str()
        .context("no authorizationToken")?
        .to_string();
    let base = format!(
        "{}/file/{}/",
        auth["downloadUrl"].as_str().context("no downloadUrl")?,
        emu.bucket_name(),
    );
    Ok((token, base))
}

/// `n` sequential 8191-byte downloads by name, straight from `emu`, which must inject a fixed delay of
/// `injected_ms`.
pub async fn calibrate(
    emu: &Emulator,
    client: &reqwest::Client,
    name: &str,
    size: u64,
    n: usize,
    injected_ms: f64,
    seed: u64,
) -> anyhow::Result<Calibration> {
    let (token, base) = direct_base(emu, client).await?;
    let url = format!("{base}{}", crate::emulator::encode_file_name(name));
    let mut rng = StdRng::seed_from_u64(seed ^ 0xca11);
    let mut ms = Vec::with_capacity(n);
    for i in 0..n + 3 {
        let off = rng.random_range(0..size - READ);
        let started = Instant::now();
        let resp = client
            .get(&url)
            .header("Authorization", &token)
            .header("Range", format!("bytes={off}-{}", off + READ - 1))
            .send()
            .await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        let elapsed = started.elapsed();
        if status != 206 || body.len() as u64 != READ {
            bail!("direct download: status {status}, {} bytes", body.len());
        }
        // The first requests open the connection.
        if i >= 3 {
            ms.push(elapsed.as_secs_f64() * 1e3);
        }
    }
    let measured = crate::bench::dist::Dist::from_ms(&ms).context("no samples")?;
    Ok(Calibration {
        requests: n,
        overhead_ms: measured.mean_ms - injected_ms,
        measured,
        injected_ms,
    })
}
