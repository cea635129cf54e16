//! b2-proxy: a caching range-read proxy in front of Backblaze B2, built for latency-critical random reads
//! (Chia harvesters). See the README for the user view and `DESIGN.md` for the contract.
//!
//! Read path: [`api`] (HTTP) -> [`catalog`] (name -> file version) -> [`fetch`] (single-flight, coalescing,
//! read-ahead) -> [`cache`] (memory + disk tiers) or [`hedge`] -> [`upstream`] (B2 or a local directory).

pub mod api;
pub mod breaker;
pub mod cache;
pub mod catalog;
pub mod config;
pub mod fetch;
pub mod hedge;
pub mod limits;
pub mod metrics;
pub mod range;
pub mod server;
pub mod upstream;
