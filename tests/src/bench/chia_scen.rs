//! Real provers through the mount, with [`crate::chia`]: chiapos (proof of space v1) quality checks and full
//! proofs with `parallel_read` on and off, and chia-pos2 lookups with proofs solved; every proof validated and
//! every result compared with the same lookups on the local plot file.
//!
//! Plots are made once per (k, seed) and kept in `target/b2fs-bench-plots/` (a k=22 chiapos plot takes ~16 s).
//! The emulator serves the plot's directory. These plots are small (74 MB at k=22) next to a real k=32 plot,
//! so the proxy's memory cache is limited (`--chia-cache`, disk tier off): otherwise after a few lookups
//! every read would be a hit, which never happens with 100 GiB plots.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};

use super::dist::Dist;
use super::report::{LookupRow, Problem, Report};
use super::stack::{ProxySettings, Stack};
use super::{Ctx, Floors, progress, unmount};
use crate::chia::{self, ChiaposOptions};
use crate::mount::Mount;

/// `target/b2fs-bench-plots/<name>/`, next to the bench's profile directory.
fn plot_cache(ctx: &Ctx, name: &str) -> anyhow::Result<PathBuf> {
    let target = ctx
        .bins
        .proxy
        .parent()
        .and_then(Path::parent)
        .context("target directory")?;
    let dir = target.join("b2fs-bench-plots").join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Makes the plot `dir/file` with `make(tmp_dir, file)` unless it is there; built in a temporary directory
/// and renamed, so an interrupted run leaves no half plot behind.
async fn cached_plot(
    dir: PathBuf,
    file: String,
    make: impl FnOnce(&Path, &str) -> anyhow::Result<PathBuf> + Send + 'static,
) -> anyhow::Result<PathBuf> {
    let path = dir.join(&file);
    if path.is_file() {
        return Ok(path);
    }
    tokio::task::spawn_blocking(move || {
        let parent = dir.parent().unwrap_or(&dir);
        let tmp = tempfile::Builder::new()
            .prefix(".making-")
            .tempdir_in(parent)?;
        let made = make(tmp.path(), &file)?;
        std::fs::rename(&made, &path)?;
        Ok(path)
    })
    .await?
}

/// The plot directory served by the emulator, a proxy whose memory cache is `--chia-cache` (disk tier off, so
/// a small plot is not simply all cached) and a mount of it.
async fn serve_plots(ctx: &Ctx, dir: &Path) -> anyhow::Result<(Stack, Mount)> {
    let stack = ctx
        .stack(
            ctx.emulator(&ctx.model).dir(dir),
            &ProxySettings {
                memory: ctx.opts.chia_cache,
                disk: bytesize::ByteSize::b(0),
                ..ctx.proxy_settings()
            },
        )
        .await?;
    match ctx.mount(&stack).await {
        Ok(m) => Ok((stack, m)),
        Err(e) => {
            stack.shutdown().await;
            Err(e)
        }
    }
}

fn durations_ms(d: impl Iterator<Item = Duration>) -> Vec<f64> {
    d.map(|d| d.as_secs_f64() * 1e3).collect()
}

/// chiapos on a k=22 plot (18 with --smoke): quality checks and full proofs, `parallel_read` on then off
/// (different challenges, so the second pass does not read what the first cached).
pub async fn chiapos(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    if let Err(e) = chia::chiapos_python() {
        report.skipped.push(Problem {
            scenario: "chiapos".into(),
            reason: format!("{e:#}"),
        });
        return Ok(());
    }
    let o = &ctx.opts;
    let k = o.pick(o.chia_k, 22, 18);
    let n = o.pick(o.chia_lookups, 16, 2).max(1);
    let seed = o.seed;
    let dir = plot_cache(ctx, &format!("chiapos-k{k}-seed{seed}"))?;
    let file = format!("plot-k{k}.plot");
    progress(format!(
        "chiapos: k={k} plot (made once, kept in {})",
        dir.display()
    ));
    let local = cached_plot(dir.clone(), file.clone(), move |tmp, f| {
        Ok(chia::create_chiapos_plot(tmp, f, k, seed)?.path)
    })
    .await?;
    let (stack, mount) = serve_plots(ctx, &dir).await?;
    let remote = mount.join(&file);
    let result = async {
        let mut rows = Vec::new();
        for (parallel, salt) in [(true, 11u64), (false, 12)] {
            let challenges = chia::challenges(seed.wrapping_mul(1000) + salt, n);
            let options = ChiaposOptions {
                full_proofs: true,
                parallel_read: parallel,
            };
            progress(format!(
                "chiapos: {n} lookups with full proofs, parallel_read={parallel}"
            ));
            let (l, c) = (local.clone(), challenges.clone());
            let on_disk =
                tokio::task::spawn_blocking(move || chia::chiapos_lookups(&l, &c, options))
                    .await??;
            stack.emu.reset_stats();
            let (r, c) = (remote.clone(), challenges.clone());
            let got = tokio::task::spawn_blocking(move || chia::chiapos_lookups(&r, &c, options))
                .await??;
            let stats = stack.emu.stats();
            got.assert_same_results(&on_disk)
                .context("chiapos through the mount differs from the local plot")?;
            let invalid = got.invalid_proofs();
            ensure!(invalid.is_empty(), "invalid chiapos proofs: {invalid:?}");
            let lookups = got.lookups.len().max(1) as f64;
            let quality = Dist::from_ms(&durations_ms(got.lookups.iter().map(|l| l.quality_time)));
            let proof = Dist::from_ms(&durations_ms(
                got.lookups.iter().flat_map(|l| l.proof_times.iter().copied()),
            ));
            rows.push(LookupRow {
                scenario: "chiapos".into(),
                path: "mount".into(),
                hedge: true,
                variant: format!("k={k}, parallel_read={}", if parallel { "on" } else { "off" }),
                lookups: got.lookups.len(),
                quality,
                proof,
                requests_per_lookup: Stack::downloads(&stats) as f64 / lookups,
                quality_requests_per_lookup: None,
                bytes_per_lookup: stats.bytes_sent as f64 / lookups,
                peak_upstream: stats.peak_downloads_in_flight,
                rss: stack.proxy_rss(),
                quality_floor: None,
                proof_floor: None,
                hedges: None,
                notes: vec![format!(
                    "{} challenges: {} qualities, {} full proofs, all valid and identical to the local plot's; \
                     quality check = 2 reads without a quality, 3 + 6q with q; proof latency is per proof \
                     (64 reads; upstream counts include the prover's open)",
                    got.lookups.len(),
                    got.quality_count(),
                    got.proof_count()
                )],
            });
        }
        anyhow::Ok(rows)
    }
    .await;
    unmount(mount).await;
    stack.shutdown().await;
    let mut rows = result?;
    if let Some(r) = rows.first_mut() {
        r.notes.push(format!(
            "proxy memory cache {} (disk tier off) so the k={k} plot is not simply all cached",
            o.chia_cache.display().iec()
        ));
    }
    report.lookups.extend(rows);
    Ok(())
}

/// chia-pos2 on a k=24 plot group (18 with --smoke): lookups through the mount, each quality solved into a
/// full proof and validated.
pub async fn pos2(ctx: &Ctx, floors: &Floors, report: &mut Report) -> anyhow::Result<()> {
    let o = &ctx.opts;
    let k = o.pick(o.pos2_k, 24, 18);
    let n = o.pick(o.pos2_lookups, 60, 4).max(1);
    let seed = o.seed;
    let dir = plot_cache(ctx, &format!("pos2-k{k}-seed{seed}"))?;
    let file = format!("plot-k{k}.gplot");
    progress(format!(
        "pos2: k={k} plot (made once, kept in {})",
        dir.display()
    ));
    let local = cached_plot(dir.clone(), file.clone(), move |tmp, f| {
        Ok(chia::create_pos2_plot(&tmp.join(f), k, 2, seed)?.path)
    })
    .await?;
    let (stack, mount) = serve_plots(ctx, &dir).await?;
    let remote = mount.join(&file);
    let result = async {
        let challenges = chia::challenges(seed.wrapping_mul(1000) + 21, n);
        progress(format!("pos2: {n} lookups, proofs solved and validated"));
        // The local run only finds the qualities (solving is CPU work, the same wherever the plot is).
        let (l, c) = (local.clone(), challenges.clone());
        let on_disk =
            tokio::task::spawn_blocking(move || chia::pos2_lookups(&l, &c, false)).await??;
        stack.emu.reset_stats();
        let (r, c) = (remote.clone(), challenges.clone());
        let got = tokio::task::spawn_blocking(move || chia::pos2_lookups(&r, &c, true)).await??;
        let stats = stack.emu.stats();
        ensure!(
            got.lookups.len() == on_disk.lookups.len(),
            "chia-pos2: {} lookups through the mount, {} on the local plot",
            got.lookups.len(),
            on_disk.lookups.len()
        );
        for (a, b) in got.lookups.iter().zip(&on_disk.lookups) {
            ensure!(
                a.result.challenge == b.result.challenge && a.result.qualities == b.result.qualities,
                "chia-pos2 challenge {}: qualities through the mount {:?} differ from the local plot's {:?}",
                a.result.challenge,
                a.result.qualities,
                b.result.qualities
            );
        }
        let invalid = got.invalid_proofs();
        ensure!(invalid.is_empty(), "invalid chia-pos2 proofs: {invalid:?}");
        let lookups = got.lookups.len().max(1) as f64;
        // The first lookup also reads the chunk index (and the header), later ones find them cached.
        let quality = Dist::from_ms(&durations_ms(
            got.lookups.iter().skip(1).map(|l| l.quality_time),
        ));
        let solve = Dist::from_ms(&durations_ms(
            got.lookups.iter().flat_map(|l| l.proof_times.iter().copied()),
        ));
        let mut notes = vec![format!(
            "{} lookups (the first, which also reads the chunk index, left out of the latency): {} qualities \
             solved into proofs, all valid, qualities identical to the local plot's; upstream counts include the \
             prover's open and the first lookup; proof column = solve (CPU only, no reads)",
            got.lookups.len(),
            got.quality_count()
        )];
        notes.push(format!(
            "proxy memory cache {} (disk tier off) so the k={k} plot is not simply all cached",
            o.chia_cache.display().iec()
        ));
        if let Some(first) = got.lookups.first() {
            notes.push(format!(
                "first lookup (header + chunk index uncached): {:.0} ms; prover open {:.0} ms",
                first.quality_time.as_secs_f64() * 1e3,
                got.open_time.as_secs_f64() * 1e3
            ));
        }
        anyhow::Ok(LookupRow {
            scenario: "pos2".into(),
            path: "mount".into(),
            hedge: true,
            variant: format!("k={k}"),
            lookups: got.lookups.len(),
            quality,
            proof: solve,
            requests_per_lookup: Stack::downloads(&stats) as f64 / lookups,
            quality_requests_per_lookup: None,
            bytes_per_lookup: stats.bytes_sent as f64 / lookups,
            peak_upstream: stats.peak_downloads_in_flight,
            rss: stack.proxy_rss(),
            quality_floor: Some(floors.pos2.clone()),
            proof_floor: None,
            hedges: None,
            notes,
        })
    }
    .await;
    unmount(mount).await;
    stack.shutdown().await;
    report.lookups.push(result?);
    Ok(())
}
