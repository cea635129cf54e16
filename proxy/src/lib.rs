//! b2-proxy: a caching range-read proxy in front of Backblaze B2, built for latency-critical random reads
//! (Chia harvesters). See the README for the user view and `DESIGN.md` for the contract.
//!
//! Read path: [`api`] (HTTP) -> [`catalog`] (name -> file version) -> [`fetch`] (single-flight, coalescing,
//! read-ahead) -> [`cache`] (memory + disk tiers), or on a miss [`policy`] (breaker, deadline, retries,
//! hedging, concurrency) -> [`upstream`] (one verified attempt at B2, a local directory, or a mock).
//! Each layer imports only the layers below it; [`sync`] and [`metrics`] are used by all.

pub mod api;
pub mod cache;
pub mod catalog;
pub mod config;
pub mod fetch;
pub mod limits;
pub mod metrics;
#[cfg(all(test, feature = "shuttle"))]
mod model;
pub mod policy;
pub mod range;
pub mod server;
pub mod sync;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod upstream;
