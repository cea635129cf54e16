//! Randomness: latency draws, fault draws and the first-attempt stall memory.
//!
//! One seedable RNG (`StdRng`) serves every draw, so a run with a fixed seed and a fixed request
//! order is reproducible (concurrent requests may of course arrive in any order).
//! Faults: one uniform draw per request walks the cumulative probabilities of
//! [`Fault::ALL`] (so at most one fault per request, probabilities add up). Latency: lognormal
//! (`median * exp(sigma * z)`, `z` from Box-Muller) plus a tail delay with its probability.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::config::{Fault, FaultConfig, LatencyConfig};

/// Longest delay ever drawn (guards against absurd lognormal tails).
const MAX_DELAY: Duration = Duration::from_secs(3600);

pub(crate) struct Chaos {
    rng: Mutex<StdRng>,
    first_seen: Mutex<HashSet<(String, u64, u64)>>,
}

fn rng_from(seed: Option<u64>) -> StdRng {
    match seed {
        Some(s) => StdRng::seed_from_u64(s),
        None => StdRng::from_rng(&mut rand::rng()),
    }
}

impl Chaos {
    pub fn new(seed: Option<u64>) -> Self {
        Self {
            rng: Mutex::new(rng_from(seed)),
            first_seen: Mutex::new(HashSet::new()),
        }
    }

    fn rng(&self) -> std::sync::MutexGuard<'_, StdRng> {
        self.rng.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn reseed(&self, seed: Option<u64>) {
        *self.rng() = rng_from(seed);
    }

    /// A delay drawn from the latency distribution (zero when the median and tail are zero).
    pub fn latency(&self, cfg: &LatencyConfig) -> Duration {
        let no_tail = cfg.tail_probability <= 0.0 || cfg.tail_delay.is_zero();
        if cfg.median.is_zero() && no_tail {
            return Duration::ZERO;
        }
        let mut rng = self.rng();
        let mut secs = cfg.median.as_secs_f64();
        if secs > 0.0 && cfg.sigma > 0.0 {
            // Box-Muller: u1 in (0, 1] so ln(u1) is finite.
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random::<f64>();
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            secs *= (cfg.sigma * z).exp();
        }
        if !no_tail && rng.random::<f64>() < cfg.tail_probability {
            secs += cfg.tail_delay.as_secs_f64();
        }
        Duration::try_from_secs_f64(secs)
            .unwrap_or(MAX_DELAY)
            .min(MAX_DELAY)
    }

    /// Draws at most one fault among `kinds` (their probabilities accumulate).
    pub fn fault(&self, cfg: &FaultConfig, kinds: &[Fault]) -> Option<Fault> {
        if kinds.iter().all(|f| cfg.probability(*f) <= 0.0) {
            return None;
        }
        let u: f64 = self.rng().random::<f64>();
        let mut acc = 0.0;
        for fault in kinds {
            acc += cfg.probability(*fault);
            if u < acc {
                return Some(*fault);
            }
        }
        None
    }

    /// A shift for [`Fault::WrongRange`]: 1..=4096 bytes.
    pub fn shift(&self) -> u64 {
        self.rng().random_range(1..=4096)
    }

    /// True the first time a (file id, start, end) is seen since the last clear.
    pub fn first_attempt(&self, file_id: &str, start: u64, end: u64) -> bool {
        self.first_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((file_id.to_string(), start, end))
    }

    /// Forgets which ranges were seen, so the next request for each is stalled again.
    pub fn clear_first_attempts(&self) {
        self.first_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lognormal_median() {
        let chaos = Chaos::new(Some(7));
        let cfg = LatencyConfig {
            median: Duration::from_millis(50),
            sigma: 0.5,
            ..LatencyConfig::default()
        };
        let mut v: Vec<Duration> = (0..2001).map(|_| chaos.latency(&cfg)).collect();
        v.sort();
        let median = v[1000].as_secs_f64();
        assert!((0.045..0.055).contains(&median), "median {median}");
        let fixed = LatencyConfig {
            median: Duration::from_millis(5),
            ..LatencyConfig::default()
        };
        assert_eq!(chaos.latency(&fixed), Duration::from_millis(5));
    }

    #[test]
    fn fault_draws_follow_probabilities() {
        let chaos = Chaos::new(Some(1));
        let cfg = FaultConfig {
            service_unavailable: 0.25,
            reset: 0.25,
            ..FaultConfig::default()
        };
        let mut n503 = 0;
        let mut nreset = 0;
        for _ in 0..4000 {
            match chaos.fault(&cfg, &Fault::ALL) {
                Some(Fault::ServiceUnavailable) => n503 += 1,
                Some(Fault::Reset) => nreset += 1,
                None => {}
                Some(other) => panic!("unexpected {other}"),
            }
        }
        assert!((800..1200).contains(&n503), "{n503}");
        assert!((800..1200).contains(&nreset), "{nreset}");
        for _ in 0..100 {
            let f = chaos.fault(&cfg, &Fault::API);
            assert!(f.is_none() || f == Some(Fault::ServiceUnavailable));
        }
    }
}
