//! What a run measured, as Markdown tables (for people and the README) and JSON (for tools).

use std::fmt::Write as _;

use serde::Serialize;

use super::dist::{Dist, fmt_ms, fmt_us};
use super::floor::{Floor, LatencyModel};
use super::stack::Rss;

/// One row of the lookup table: a scenario run through one path with one proxy setting.
#[derive(Debug, Clone, Serialize)]
pub struct LookupRow {
    pub scenario: String,
    /// `mount` or `http` (or `rclone`).
    pub path: String,
    /// Proxy `fetch.hedge`.
    pub hedge: bool,
    /// Free-form qualifier (e.g. `parallel_read=off`).
    pub variant: String,
    pub lookups: usize,
    /// Quality check (PoS1) or lookup (PoS2) latency.
    pub quality: Option<Dist>,
    /// Full proof latency (after its quality check).
    pub proof: Option<Dist>,
    /// Upstream download requests per lookup (quality check + proof), from the emulator's counters.
    pub requests_per_lookup: f64,
    /// ...of which the quality check made.
    pub quality_requests_per_lookup: Option<f64>,
    pub bytes_per_lookup: f64,
    /// Most upstream downloads in flight at once during the run.
    pub peak_upstream: u64,
    pub rss: Option<Rss>,
    pub quality_floor: Option<Floor>,
    pub proof_floor: Option<Floor>,
    /// The proxy's hedging counters over the run (hedge on only).
    pub hedges: Option<HedgeStats>,
    pub notes: Vec<String>,
}

/// Hedged requests, from the proxy's metrics.
#[derive(Debug, Clone, Serialize)]
pub struct HedgeStats {
    pub issued: Option<f64>,
    pub won: Option<f64>,
    pub threshold_ms: Option<f64>,
}

impl LookupRow {
    pub fn label(&self) -> String {
        // A comparison system (rclone) has no hedge switch: its variant says everything.
        if self.path == "rclone" {
            return format!("rclone mount, {}", self.variant);
        }
        let mut s = format!(
            "{}, hedge {}",
            self.path,
            if self.hedge { "on" } else { "off" }
        );
        if !self.variant.is_empty() {
            s.push_str(", ");
            s.push_str(&self.variant);
        }
        s
    }
}

/// One memory-tier eviction policy replaying the harvester block trace.
#[derive(Debug, Clone, Serialize)]
pub struct EvictionRow {
    pub policy: String,
    pub memory_mib: f64,
    pub plots: u64,
    pub lookups: usize,
    pub reads_per_lookup: f64,
    /// Dependent upstream round trips per lookup.
    pub misses_per_lookup: f64,
    /// Hits among the reads every open makes (header, C2).
    pub open_hit_ratio: f64,
    pub scan_blocks: u64,
    pub replay_ms: f64,
}

/// One row of the cached-read micro benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct MicroRow {
    /// `local pread`, `http`, `fuse`.
    pub path: String,
    pub readers: usize,
    pub reads: usize,
    pub latency: Dist,
    pub reads_per_sec: f64,
    pub mib_per_sec: f64,
    /// Upstream requests during the measurement (0: every read was a cache hit).
    pub upstream_requests: u64,
    /// Bytes of each read.
    #[serde(default)]
    pub read_bytes: u64,
    /// CPU time per read of the proxy and of the shim (FUSE rows), from /proc (large-read rows only).
    #[serde(default)]
    pub proxy_cpu_ms_per_read: Option<f64>,
    #[serde(default)]
    pub shim_cpu_ms_per_read: Option<f64>,
}

impl MicroRow {
    /// Bytes served per second of CPU of the processes measured (proxy, and shim on FUSE rows).
    pub fn mb_per_cpu_second(&self) -> Option<f64> {
        let ms = self.proxy_cpu_ms_per_read? + self.shim_cpu_ms_per_read.unwrap_or(0.0);
        (ms > 0.0).then(|| self.read_bytes as f64 / 1e6 / (ms / 1e3))
    }
}

/// The farm scenario.
#[derive(Debug, Clone, Serialize, Default)]
pub struct FarmReport {
    /// Empty, or which side of a side-by-side comparison (`scheduler on` / `scheduler off`).
    pub variant: String,
    pub plots: usize,
    /// Proxy start until `/healthz` reports the catalog loaded.
    pub catalog_load_ms: f64,
    pub list_file_names_calls: u64,
    pub ls_ms: f64,
    pub ls_l_ms: f64,
    pub entries_listed: usize,
    pub rss_after_catalog: Option<Rss>,
    pub rss_after_loop: Option<Rss>,
    pub shim_rss_bytes: Option<u64>,
    pub duration_s: f64,
    pub sp_interval_s: f64,
    pub filter: u32,
    pub signage_points: usize,
    pub plots_passed: usize,
    /// Quality checks per passing plot (2 reads without a match, 3 + 6q with q matches).
    pub quality: Option<Dist>,
    /// The same checks' statistical floor at p50 (every read one upstream round, nothing queued).
    pub quality_floor_p50_ms: Option<f64>,
    /// Downloads the emulator refused with 429 (its rate limit).
    pub rate_limited: u64,
    /// Signage point start until every passing plot's quality check is done.
    pub sp_response: Option<Dist>,
    pub requests_per_sp: f64,
    pub requests_per_quality: f64,
    pub peak_upstream: u64,
    pub notes: Vec<String>,
}

/// A goal from the issue, measured (never asserted).
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub goal: String,
    pub measured: String,
    /// None: not measured in this run.
    pub met: Option<bool>,
}

/// A floor with the lookup it is for.
#[derive(Debug, Clone, Serialize)]
pub struct NamedFloor {
    pub lookup: String,
    #[serde(flatten)]
    pub floor: Floor,
}

/// A scenario that did not run (skipped) or failed, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub scenario: String,
    pub reason: String,
}

/// Everything one run produced.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub date: String,
    pub machine: String,
    pub command: String,
    pub smoke: bool,
    pub proxy_mode: String,
    pub latency: Option<LatencyModel>,
    pub seed: u64,
    pub floors: Vec<NamedFloor>,
    /// The emulator's own answer time, measured without the proxy (pos1-replay runs it).
    pub calibration: Option<super::pos1::Calibration>,
    pub lookups: Vec<LookupRow>,
    pub micro: Vec<MicroRow>,
    pub farm: Vec<FarmReport>,
    pub farm_v2: Vec<super::farm_v2::FarmV2Report>,
    pub eviction: Vec<EvictionRow>,
    pub targets: Vec<Target>,
    /// Scenarios that failed.
    pub errors: Vec<Problem>,
    /// Scenarios that could not run here (e.g. no chiapos venv).
    pub skipped: Vec<Problem>,
    pub notes: Vec<String>,
}

fn dist3(d: &Option<Dist>) -> String {
    match d {
        Some(d) => format!(
            "{} / {} / {}",
            fmt_ms(d.p50_ms).trim_end_matches(" ms"),
            fmt_ms(d.p95_ms).trim_end_matches(" ms"),
            fmt_ms(d.max_ms)
        ),
        None => "-".into(),
    }
}

fn ratio(d: &Option<Dist>, f: &Option<Floor>) -> String {
    match (d, f) {
        (Some(d), Some(f)) if f.statistical_ms > 0.0 => format!(
            "{:.2}x stat ({:.0} ms), {:.2}x naive",
            d.p50_ms / f.statistical_ms,
            f.statistical_ms,
            d.p50_ms / f.naive_ms
        ),
        _ => "-".into(),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1 << 20) as f64)
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "## b2fs-bench results\n");
        let _ = writeln!(o, "- date: {}", self.date);
        let _ = writeln!(o, "- machine: {}", self.machine);
        let _ = writeln!(o, "- command: `{}`", self.command);
        if let Some(m) = &self.latency {
            let _ = writeln!(
                o,
                "- injected upstream latency: lognormal, median {} ms, sigma {}; seed {}; proxy: {}{}",
                m.median_ms,
                m.sigma,
                self.seed,
                self.proxy_mode,
                if self.smoke { "; SMOKE run" } else { "" }
            );
        }
        if !self.floors.is_empty() {
            let _ = writeln!(
                o,
                "\n### Floors (new upstream requests per dependent round; statistical floor by Monte Carlo)\n"
            );
            let _ = writeln!(
                o,
                "| lookup | new requests per round | naive floor | statistical floor (MC) | exact (integral) |"
            );
            let _ = writeln!(o, "| --- | --- | --- | --- | --- |");
            for NamedFloor {
                lookup: name,
                floor: f,
            } in &self.floors
            {
                let rounds: Vec<String> = f
                    .rounds
                    .iter()
                    .filter(|n| **n > 0)
                    .map(|n| n.to_string())
                    .collect();
                let _ = writeln!(
                    o,
                    "| {name} | {} ({} rounds) | {:.0} ms | {:.1} ms ({} trials) | {} |",
                    rounds.join(", "),
                    f.dependent_rounds,
                    f.naive_ms,
                    f.statistical_ms,
                    f.monte_carlo_trials,
                    f.analytic_ms
                        .map(|a| format!("{a:.1} ms"))
                        .unwrap_or_else(|| "-".into())
                );
            }
        }
        if let Some(c) = &self.calibration {
            let _ = writeln!(
                o,
                "\nEmulator calibration: {} sequential 8191-byte downloads straight from the emulator (no proxy) \
                 with a fixed {:.0} ms delay: mean {:.2} ms, p50 {:.2} ms, i.e. {:+.2} ms per request of timer \
                 granularity, scheduling and loopback HTTP that the floors do not contain and no proxy can avoid.",
                c.requests, c.injected_ms, c.measured.mean_ms, c.measured.p50_ms, c.overhead_ms
            );
        }
        if !self.lookups.is_empty() {
            let _ = writeln!(
                o,
                "\n### Lookups (p50 / p95 / max; upstream counts are per lookup = quality check + proof)\n"
            );
            let _ = writeln!(
                o,
                "| scenario | path | lookups | quality check | full proof | upstream req | upstream KiB | peak upstream | proxy RSS | quality p50 vs floor | proof p50 vs floor |"
            );
            let _ = writeln!(
                o,
                "| --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | --- | --- |"
            );
            for r in &self.lookups {
                let req = match r.quality_requests_per_lookup {
                    Some(q) => format!(
                        "{:.1} ({q:.1} + {:.1})",
                        r.requests_per_lookup,
                        r.requests_per_lookup - q
                    ),
                    None => format!("{:.1}", r.requests_per_lookup),
                };
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} |",
                    r.scenario,
                    r.label(),
                    r.lookups,
                    dist3(&r.quality),
                    dist3(&r.proof),
                    req,
                    r.bytes_per_lookup / 1024.0,
                    r.peak_upstream,
                    r.rss.as_ref().map(Rss::short).unwrap_or_else(|| "-".into()),
                    ratio(&r.quality, &r.quality_floor),
                    ratio(&r.proof, &r.proof_floor),
                );
            }
            let notes: Vec<String> = self
                .lookups
                .iter()
                .flat_map(|r| {
                    r.notes
                        .iter()
                        .map(move |n| format!("{} ({}): {n}", r.scenario, r.label()))
                })
                .collect();
            for n in notes {
                let _ = writeln!(o, "- {n}");
            }
        }
        if !self.micro.is_empty() {
            let _ = writeln!(
                o,
                "\n### Cached 8191-byte reads (latency p50 / p95 / max per read)\n"
            );
            let _ = writeln!(
                o,
                "| scenario | path | readers | reads | p50 | p95 | max | reads/s | MiB/s | upstream req |"
            );
            let _ = writeln!(
                o,
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
            );
            for m in self
                .micro
                .iter()
                .filter(|m| m.proxy_cpu_ms_per_read.is_none())
            {
                let _ = writeln!(
                    o,
                    "| micro | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {} |",
                    m.path,
                    m.readers,
                    m.reads,
                    fmt_us(m.latency.p50_ms),
                    fmt_us(m.latency.p95_ms),
                    fmt_us(m.latency.max_ms),
                    m.reads_per_sec,
                    m.mib_per_sec,
                    m.upstream_requests
                );
            }
        }
        let large: Vec<&MicroRow> = self
            .micro
            .iter()
            .filter(|m| m.proxy_cpu_ms_per_read.is_some())
            .collect();
        if let Some(first) = large.first() {
            let _ = writeln!(
                o,
                "\n### Cached {}-byte reads (a v2 chunk index; CPU from /proc of the proxy and the shim)\n",
                first.read_bytes
            );
            let _ = writeln!(
                o,
                "| scenario | path | readers | reads | p50 | p95 | max | MiB/s | proxy CPU / read | shim CPU / read | MB per CPU second | upstream req |"
            );
            let _ = writeln!(
                o,
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
            );
            for m in large {
                let ms = |v: Option<f64>| v.map(|v| format!("{v:.2} ms")).unwrap_or("-".into());
                let _ = writeln!(
                    o,
                    "| micro | {} | {} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} | {} | {} | {} | {} |",
                    m.path,
                    m.readers,
                    m.reads,
                    m.latency.p50_ms,
                    m.latency.p95_ms,
                    m.latency.max_ms,
                    m.mib_per_sec,
                    ms(m.proxy_cpu_ms_per_read),
                    ms(m.shim_cpu_ms_per_read),
                    m.mb_per_cpu_second()
                        .map(|v| format!("{v:.0}"))
                        .unwrap_or("-".into()),
                    m.upstream_requests
                );
            }
        }
        if !self.eviction.is_empty() {
            let _ = writeln!(
                o,
                "\n### Memory-tier eviction (harvester block trace, memory tier only)\n"
            );
            let _ = writeln!(
                o,
                "| scenario | policy | memory | plots | lookups | reads per lookup | upstream round trips per lookup | open hit ratio | scan blocks | replay time |"
            );
            let _ = writeln!(
                o,
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
            );
            for e in &self.eviction {
                let _ = writeln!(
                    o,
                    "| eviction | {} | {:.0} MiB | {} | {} | {:.2} | {:.3} | {:.1}% | {} | {:.0} ms |",
                    e.policy,
                    e.memory_mib,
                    e.plots,
                    e.lookups,
                    e.reads_per_lookup,
                    e.misses_per_lookup,
                    e.open_hit_ratio * 100.0,
                    e.scan_blocks,
                    e.replay_ms
                );
            }
        }
        if !self.farm.is_empty() {
            let _ = writeln!(o, "\n### Farm\n");
            let _ = writeln!(
                o,
                "| scenario | plots | catalog load | `ls` | `ls -l` | proxy RSS (catalog / end) | signage points | plots passed | quality check p50 / p95 / max | p50 / floor | SP response p50 / p95 / max | upstream req per SP | 429s | peak upstream |"
            );
            let _ = writeln!(
                o,
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: |"
            );
            let rss = |r: &Option<Rss>| r.as_ref().map(|r| mib(r.bytes)).unwrap_or("-".into());
            for f in &self.farm {
                let vs_floor = match (&f.quality, f.quality_floor_p50_ms) {
                    (Some(q), Some(fl)) if fl > 0.0 => {
                        format!("{:.2} x {:.0} ms", q.p50_ms / fl, fl)
                    }
                    _ => "-".into(),
                };
                let _ = writeln!(
                    o,
                    "| farm{} | {} | {} ({} list calls) | {} | {} | {} / {} | {} (every {:.3} s) | {} | {} | {} | {} | {:.1} | {} | {} |",
                    if f.variant.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", f.variant)
                    },
                    f.plots,
                    fmt_ms(f.catalog_load_ms),
                    f.list_file_names_calls,
                    fmt_ms(f.ls_ms),
                    fmt_ms(f.ls_l_ms),
                    rss(&f.rss_after_catalog),
                    rss(&f.rss_after_loop),
                    f.signage_points,
                    f.sp_interval_s,
                    f.plots_passed,
                    dist3(&f.quality),
                    vs_floor,
                    dist3(&f.sp_response),
                    f.requests_per_sp,
                    f.rate_limited,
                    f.peak_upstream
                );
            }
            let mut seen = std::collections::HashSet::new();
            for n in self.farm.iter().flat_map(|f| &f.notes) {
                if seen.insert(n) {
                    let _ = writeln!(o, "- {n}");
                }
            }
        }
        for f in &self.farm_v2 {
            super::farm_v2::markdown(f, &mut o);
        }
        super::farm_v2::scaling_markdown(&self.farm_v2, &mut o);
        if !self.targets.is_empty() {
            let _ = writeln!(o, "\n### Targets (measured, not asserted)\n");
            let _ = writeln!(o, "| target | goal | measured | result |");
            let _ = writeln!(o, "| --- | --- | --- | --- |");
            for t in &self.targets {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} |",
                    t.name,
                    t.goal,
                    t.measured,
                    match t.met {
                        Some(true) => "met",
                        Some(false) => "NOT met",
                        None => "not measured",
                    }
                );
            }
        }
        if !self.skipped.is_empty() || !self.errors.is_empty() || !self.notes.is_empty() {
            let _ = writeln!(o, "\n### Notes\n");
            for p in &self.skipped {
                let _ = writeln!(o, "- {}: skipped: {}", p.scenario, p.reason);
            }
            for p in &self.errors {
                let _ = writeln!(o, "- {}: FAILED: {}", p.scenario, p.reason);
            }
            for n in &self.notes {
                let _ = writeln!(o, "- {n}");
            }
        }
        o
    }
}
