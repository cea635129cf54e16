//! A harvester over a big farm: thousands of virtual k=32 plots in the bucket; every signage point (9.375 s on
//! mainnet) each plot passes the plot filter with probability 1/256, and the harvester runs a quality check on
//! every passing plot at once. A quality check with q proofs (q ~ Poisson(1)) reads C1 and C3, then, when
//! q > 0, P7 and q paths of T6..T1 (3 + 6q reads, all dependent).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::pos1::{Layout, Step, Via, run_chain};

/// A quality check's dependent steps with `q` matching proofs.
pub fn quality_steps(layout: &Layout, rng: &mut StdRng) -> (Vec<Step>, usize) {
    let q = poisson1(rng);
    let first = layout.plan(rng);
    let mut steps = vec![first.quality[0].clone(), first.quality[1].clone()];
    if q > 0 {
        steps.push(first.quality[2].clone());
        steps.extend(first.quality[3..].iter().cloned());
        for _ in 1..q {
            let more = layout.plan(rng);
            steps.extend(more.quality[3..].iter().cloned());
        }
    }
    (steps, q)
}

/// Poisson(1) by Knuth's method (proofs found by a plot that passes the filter).
pub(crate) fn poisson1(rng: &mut StdRng) -> usize {
    let l = (-1.0f64).exp();
    let mut k = 0;
    let mut p = 1.0;
    loop {
        p *= rng.random::<f64>();
        if p <= l {
            return k;
        }
        k += 1;
    }
}

/// What the loop measured.
#[derive(Debug, Default)]
pub struct LoopResult {
    pub signage_points: usize,
    pub passed: usize,
    pub quality_ms: Vec<f64>,
    pub sp_ms: Vec<f64>,
    pub reads: usize,
    /// Each check's dependent upstream rounds (for its statistical floor).
    pub check_reads: Vec<usize>,
}

/// The reads of a check that need a block the check has not fetched yet (`block`-aligned, as the proxy caches
/// them): each is one upstream round, the others are answered from what the check already fetched.
pub fn upstream_rounds(steps: &[Step], block: u64) -> usize {
    let block = block.max(1);
    let mut have = std::collections::HashSet::new();
    let mut rounds = 0;
    for r in steps.iter().flatten() {
        let blocks = r.off / block..=(r.off + r.len.max(1) - 1) / block;
        let mut new = false;
        for b in blocks {
            new |= have.insert(b);
        }
        rounds += usize::from(new);
    }
    rounds
}

/// The statistical floor of the loop's checks at p50: each check's upstream rounds drawn from `model` one after
/// the other (nothing queued), the median over the checks.
pub fn floor_p50(
    check_reads: &[usize],
    model: &super::floor::LatencyModel,
    seed: u64,
) -> Option<f64> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xf100);
    let mut t: Vec<f64> = check_reads
        .iter()
        .map(|&n| (0..n).map(|_| model.draw(&mut rng)).sum())
        .collect();
    t.sort_by(f64::total_cmp);
    t.get(t.len() / 2).copied()
}

/// The harvester loop's parameters.
#[derive(Debug, Clone)]
pub struct LoopPlan {
    pub plots: usize,
    pub plot_size: u64,
    /// One plot in `filter` passes each signage point.
    pub filter: u32,
    pub interval: Duration,
    pub duration: Duration,
    pub seed: u64,
    /// Which side of a comparison (changes the reads, not the signage points).
    pub variant: u64,
    /// The proxy's cache block size.
    pub block: u64,
}

/// Runs signage points every `interval` for `duration`; each passing plot's quality check goes through
/// `root` (the mount). `plot_name(i)` is plot i's path under the mount.
pub async fn harvest(
    root: PathBuf,
    plan: &LoopPlan,
    plot_name: impl Fn(usize) -> String,
) -> anyhow::Result<LoopResult> {
    let LoopPlan {
        plots,
        plot_size,
        filter,
        interval,
        duration,
        seed,
        variant,
        block,
    } = plan.clone();
    let via = Via::Dir(root);
    // Which plots pass comes from `seed` alone, what they read from `variant` too: two variants of a loop
    // get the same bursts at different offsets (the same ones would find the first's blocks cached).
    let mut passes = StdRng::seed_from_u64(seed ^ 0xfa53);
    let mut rng = StdRng::seed_from_u64(seed ^ 0xfa53 ^ variant.wrapping_mul(0x9e37_79b9));
    let start = tokio::time::Instant::now();
    let mut sps = tokio::task::JoinSet::new();
    let mut result = LoopResult::default();
    let mut k = 0u32;
    loop {
        let at = start + interval * k;
        if at - start >= duration && k > 0 {
            break;
        }
        tokio::time::sleep_until(at).await;
        k += 1;
        let passing: Vec<usize> = (0..plots)
            .filter(|_| passes.random_range(0..filter) == 0)
            .collect();
        let mut checks = Vec::with_capacity(passing.len());
        for i in passing {
            let layout = Layout::k32(plot_size, seed ^ i as u64);
            let (steps, _q) = quality_steps(&layout, &mut rng);
            result.reads += steps.iter().map(Vec::len).sum::<usize>();
            result.check_reads.push(upstream_rounds(&steps, block));
            checks.push((plot_name(i), steps));
        }
        result.signage_points += 1;
        result.passed += checks.len();
        let via = via.clone();
        sps.spawn(async move {
            let sp_start = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for (name, steps) in checks {
                let via = via.clone();
                set.spawn(async move { run_chain(&via, &name, &steps).await.map(|r| r.0) });
            }
            let mut times = Vec::new();
            while let Some(r) = set.join_next().await {
                times.push(r??.as_secs_f64() * 1e3);
            }
            anyhow::Ok((sp_start.elapsed().as_secs_f64() * 1e3, times))
        });
    }
    while let Some(r) = sps.join_next().await {
        let (sp, times) = r??;
        result.sp_ms.push(sp);
        result.quality_ms.extend(times);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_reads_are_3_plus_6q() {
        let l = Layout::k32(108 << 30, 1);
        let mut rng = StdRng::seed_from_u64(9);
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            let (steps, q) = quality_steps(&l, &mut rng);
            let expected = if q == 0 { 2 } else { 3 + 6 * q };
            assert_eq!(steps.len(), expected);
            seen[q.min(3)] += 1;
        }
        // Poisson(1): P(0) = P(1) = 0.37.
        assert!(
            (600..880).contains(&seen[0]) && (600..880).contains(&seen[1]),
            "{seen:?}"
        );
    }
}
