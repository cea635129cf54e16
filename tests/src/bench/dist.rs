//! Latency samples and their summary (nearest-rank percentiles).

use std::time::Duration;

use serde::Serialize;

/// p50/p95/max of a set of samples, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Dist {
    pub n: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// The nearest-rank percentile `p` (0..=1) of sorted samples.
fn rank(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

impl Dist {
    pub fn from_ms(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        Some(Self {
            n: v.len(),
            p50_ms: rank(&v, 0.50),
            p95_ms: rank(&v, 0.95),
            p99_ms: rank(&v, 0.99),
            max_ms: v[v.len() - 1],
            mean_ms: v.iter().sum::<f64>() / v.len() as f64,
        })
    }

    pub fn from_durations(samples: &[Duration]) -> Option<Self> {
        let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        Self::from_ms(&ms)
    }
}

/// Formats milliseconds for a table: `468 ms`, `12.3 ms`, `0.84 ms`.
pub fn fmt_ms(ms: f64) -> String {
    if !ms.is_finite() {
        "-".into()
    } else if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

/// Formats milliseconds as microseconds: `142 us`.
pub fn fmt_us(ms: f64) -> String {
    if !ms.is_finite() {
        "-".into()
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.0} us", ms * 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let d = Dist::from_ms(&v).unwrap();
        assert_eq!((d.p50_ms, d.p95_ms, d.max_ms), (50.0, 95.0, 100.0));
        let d = Dist::from_ms(&[3.0]).unwrap();
        assert_eq!((d.p50_ms, d.p95_ms), (3.0, 3.0));
        assert!(Dist::from_ms(&[]).is_none());
    }
}
