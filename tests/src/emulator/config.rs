//! Knobs: everything about the emulator's behaviour that can change while it runs.
//!
//! [`Knobs`] is set by the builder, by the `b2-emulator` command line, at run time through the
//! `Emulator::set_*` methods, and over HTTP with `POST /_emu/config` (a JSON object merged into the
//! current knobs, so `{"offline":true}` changes one field). Durations are written as humantime
//! strings (`"50ms"`, `"24h"`); bandwidth as bytes per second (a number) or a size string
//! (`"100MB/s"`, `"1GiB"`); `null` or `0` bandwidth means unlimited.
//!
//! This module also holds the size, bandwidth and duration parsers the command line uses.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::EmulatorError;

/// A fault the emulator can inject into a request.
///
/// Faults are drawn independently for each download request (and, with
/// [`FaultConfig::on_api`], for each API call; only the first three kinds apply there).
/// They only hit requests that would otherwise succeed: a request for a missing file still gets
/// its 404, a bad token its 401.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// 503 `service_unavailable` JSON error.
    ServiceUnavailable,
    /// 429 `too_many_requests` with `Retry-After: <FaultConfig::retry_after_secs>`.
    TooManyRequests,
    /// 500 `internal_error` JSON error.
    InternalError,
    /// The response head and the first half of the body are sent, then the connection is
    /// aborted (an error in the body stream makes hyper drop the connection).
    Reset,
    /// The full `Content-Length` is declared but the body ends after half of it and the
    /// connection is closed.
    Truncated,
    /// A 206 whose `Content-Range` and bytes are for a range shifted by 1..=4096 bytes from the
    /// one requested (the header is consistent with the bytes, the range is not what was asked).
    /// Only applies to requests with a satisfiable `Range` narrower than the file.
    WrongRange,
}

impl Fault {
    /// Every fault kind, in the order probabilities are accumulated when drawing.
    pub const ALL: [Fault; 6] = [
        Fault::ServiceUnavailable,
        Fault::TooManyRequests,
        Fault::InternalError,
        Fault::Reset,
        Fault::Truncated,
        Fault::WrongRange,
    ];

    /// The kinds that can also hit API calls (`faults_on_api`).
    pub const API: [Fault; 3] = [
        Fault::ServiceUnavailable,
        Fault::TooManyRequests,
        Fault::InternalError,
    ];

    /// The snake_case name used in JSON and stats.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::ServiceUnavailable => "service_unavailable",
            Fault::TooManyRequests => "too_many_requests",
            Fault::InternalError => "internal_error",
            Fault::Reset => "reset",
            Fault::Truncated => "truncated",
            Fault::WrongRange => "wrong_range",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Latency added before the response head of every B2 request (downloads and API calls alike;
/// the `/_emu/*` control routes are never delayed).
///
/// Each delay is `median * exp(sigma * z)` with `z` standard normal (a lognormal whose median is
/// `median`), plus `tail_delay` with probability `tail_probability`. A zero median means no
/// base latency.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LatencyConfig {
    /// Median of the lognormal delay.
    #[serde(with = "duration_str")]
    pub median: Duration,
    /// Shape (standard deviation of the underlying normal); 0 gives exactly `median`.
    pub sigma: f64,
    /// Probability of adding `tail_delay` to a request.
    pub tail_probability: f64,
    /// Extra delay of a tail request.
    #[serde(with = "duration_str")]
    pub tail_delay: Duration,
}

impl Default for LatencyConfig {
    fn default() -> Self {
        Self {
            median: Duration::ZERO,
            sigma: 0.0,
            tail_probability: 0.0,
            tail_delay: Duration::ZERO,
        }
    }
}

/// Fault probabilities (each in 0..=1, at most one fault per request; their sum must not
/// exceed 1) and related settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Probability of [`Fault::ServiceUnavailable`].
    pub service_unavailable: f64,
    /// Probability of [`Fault::TooManyRequests`].
    pub too_many_requests: f64,
    /// Probability of [`Fault::InternalError`].
    pub internal_error: f64,
    /// Probability of [`Fault::Reset`].
    pub reset: f64,
    /// Probability of [`Fault::Truncated`].
    pub truncated: f64,
    /// Probability of [`Fault::WrongRange`].
    pub wrong_range: f64,
    /// `Retry-After` seconds sent with 429.
    pub retry_after_secs: u64,
    /// Also inject 503/429/500 into API calls (authorize, list); default false.
    pub on_api: bool,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            service_unavailable: 0.0,
            too_many_requests: 0.0,
            internal_error: 0.0,
            reset: 0.0,
            truncated: 0.0,
            wrong_range: 0.0,
            retry_after_secs: 1,
            on_api: false,
        }
    }
}

impl FaultConfig {
    /// Probability of one fault kind.
    pub fn probability(&self, fault: Fault) -> f64 {
        match fault {
            Fault::ServiceUnavailable => self.service_unavailable,
            Fault::TooManyRequests => self.too_many_requests,
            Fault::InternalError => self.internal_error,
            Fault::Reset => self.reset,
            Fault::Truncated => self.truncated,
            Fault::WrongRange => self.wrong_range,
        }
    }

    /// Sets the probability of one fault kind.
    pub fn set(&mut self, fault: Fault, probability: f64) {
        let slot = match fault {
            Fault::ServiceUnavailable => &mut self.service_unavailable,
            Fault::TooManyRequests => &mut self.too_many_requests,
            Fault::InternalError => &mut self.internal_error,
            Fault::Reset => &mut self.reset,
            Fault::Truncated => &mut self.truncated,
            Fault::WrongRange => &mut self.wrong_range,
        };
        *slot = probability;
    }

    /// True when no fault can be drawn.
    pub fn is_quiet(&self) -> bool {
        Fault::ALL.iter().all(|f| self.probability(*f) <= 0.0)
    }
}

/// All run-time knobs. See the module docs for the JSON form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Knobs {
    /// Latency before response heads.
    pub latency: LatencyConfig,
    /// Global cap in bytes/s shared by all download bodies; `None` (or 0) is unlimited.
    #[serde(with = "bandwidth_opt")]
    pub bandwidth: Option<u64>,
    /// Fault injection.
    pub faults: FaultConfig,
    /// The first download request for each distinct (file id, range) is delayed by this much
    /// (after the normal latency); later identical requests are not.
    #[serde(with = "duration_opt")]
    pub first_attempt_delay: Option<Duration>,
    /// Every B2 request answers 503 at once (simulated outage).
    pub offline: bool,
    /// Lifetime of authorization tokens issued from now on.
    #[serde(with = "duration_str")]
    pub token_lifetime: Duration,
    /// Seed of the latency/fault RNG; `None` seeds from the OS. Changing it reseeds.
    pub seed: Option<u64>,
    /// Account-wide download rate limit (off by default).
    pub rate_limit: super::ratelimit::RateLimit,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            latency: LatencyConfig::default(),
            bandwidth: None,
            faults: FaultConfig::default(),
            first_attempt_delay: None,
            offline: false,
            token_lifetime: Duration::from_secs(24 * 3600),
            seed: None,
            rate_limit: Default::default(),
        }
    }
}

fn check_probability(name: &str, p: f64) -> Result<(), EmulatorError> {
    if p.is_finite() && (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(EmulatorError::Config(format!(
            "{name} must be a probability between 0 and 1, got {p}"
        )))
    }
}

impl Knobs {
    /// Checks ranges: probabilities in 0..=1 with a fault sum of at most 1, finite non-negative
    /// sigma, non-zero token lifetime.
    pub fn validate(&self) -> Result<(), EmulatorError> {
        let rl = self.rate_limit;
        if !(rl.rps.is_finite() && rl.rps >= 0.0 && rl.burst.is_finite() && rl.burst >= 0.0) {
            return Err(EmulatorError::Config(format!(
                "rate_limit.rps and rate_limit.burst must be finite numbers >= 0, got {} and {}",
                rl.rps, rl.burst
            )));
        }
        check_probability("latency.tail_probability", self.latency.tail_probability)?;
        if !(self.latency.sigma.is_finite() && self.latency.sigma >= 0.0) {
            return Err(EmulatorError::Config(format!(
                "latency.sigma must be a finite number >= 0, got {}",
                self.latency.sigma
            )));
        }
        let mut sum = 0.0;
        for fault in Fault::ALL {
            let p = self.faults.probability(fault);
            check_probability(&format!("faults.{fault}"), p)?;
            sum += p;
        }
        if sum > 1.0 + 1e-9 {
            return Err(EmulatorError::Config(format!(
                "fault probabilities add up to {sum}, more than 1 (at most one fault is drawn per request)"
            )));
        }
        if self.token_lifetime.is_zero() {
            return Err(EmulatorError::Config(
                "token_lifetime must be more than zero".into(),
            ));
        }
        Ok(())
    }

    /// Bandwidth as a rate, with 0 meaning unlimited.
    pub fn bandwidth_rate(&self) -> u64 {
        self.bandwidth.unwrap_or(0)
    }
}

/// Parses a size: plain bytes (`"4096"`) or a number with a unit (`"108GiB"`, `"1.5 GB"`,
/// `"64k"`); decimal units are powers of 1000, `i` units powers of 1024.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty size".into());
    }
    if let Ok(n) = t.parse::<u64>() {
        return Ok(n);
    }
    bytesize::ByteSize::from_str(t)
        .map(|b| b.as_u64())
        .map_err(|e| format!("bad size {text:?}: {e}"))
}

/// Parses a bandwidth: a size per second, with or without the `/s` suffix (`"100MB/s"`,
/// `"1GiB"`, `"12500000"`); `0` means unlimited.
pub fn parse_bandwidth(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("/s")
        .or_else(|| t.strip_suffix("ps"))
        .unwrap_or(t);
    parse_size(t)
}

/// Parses a duration in humantime form (`"50ms"`, `"24h"`, `"1m 30s"`); a bare integer is
/// seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t).map_err(|e| format!("bad duration {text:?}: {e}"))
}

/// Formats a duration the way the JSON config writes it.
pub(crate) fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        "0s".to_string()
    } else {
        humantime::format_duration(d).to_string()
    }
}

mod duration_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

mod duration_opt {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| super::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

mod bandwidth_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Number(u64),
        Text(String),
    }

    pub fn serialize<S: Serializer>(b: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match b {
            Some(n) if *n > 0 => s.serialize_u64(*n),
            _ => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let rate = match Option::<Value>::deserialize(d)? {
            None => 0,
            Some(Value::Number(n)) => n,
            Some(Value::Text(t)) => super::parse_bandwidth(&t).map_err(serde::de::Error::custom)?,
        };
        Ok((rate > 0).then_some(rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("108GiB"), Ok(108 << 30));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_bandwidth("100MB/s"), Ok(100_000_000));
        assert_eq!(parse_bandwidth("0"), Ok(0));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn knobs_json_round_trip() {
        let mut k = Knobs::default();
        k.latency.median = Duration::from_millis(50);
        k.bandwidth = Some(1000);
        k.first_attempt_delay = Some(Duration::from_millis(300));
        let json = serde_json::to_value(&k).unwrap();
        assert_eq!(json["latency"]["median"], "50ms");
        let back: Knobs = serde_json::from_value(json).unwrap();
        assert_eq!(back, k);
        let patch: Knobs = serde_json::from_str(r#"{"bandwidth":"1MB/s"}"#).unwrap();
        assert_eq!(patch.bandwidth, Some(1_000_000));
        assert!(serde_json::from_str::<Knobs>(r#"{"bandwdth":1}"#).is_err());
    }

    #[test]
    fn validation() {
        let mut k = Knobs::default();
        assert!(k.validate().is_ok());
        k.faults.reset = 0.7;
        k.faults.truncated = 0.7;
        assert!(k.validate().is_err());
        k.faults.truncated = 0.3;
        assert!(k.validate().is_ok());
        k.latency.sigma = -1.0;
        assert!(k.validate().is_err());
    }
}
