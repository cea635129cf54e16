//! The proxy's one locking policy, and the seam the model checker swaps.
//!
//! Poisoning: a lock whose holder panicked is used as it is. Every critical section in the proxy leaves its
//! state consistent at each step (maps of in-flight runs, latency samples, budgets, stream positions), so the
//! worst a panic mid-section leaves is a stale entry that the next writer replaces; refusing the lock forever
//! would instead turn one panic into a dead daemon. One wrapper, so there is one place that says so.
//!
//! With the `shuttle` feature the primitives come from `shuttle`, so the hand-written concurrent state built
//! on them (the in-flight table, the disk refresh's compare-and-swap) can be model-checked under every
//! interleaving shuttle explores (`cargo test -p b2-proxy --features shuttle --lib model`).

#[cfg(feature = "shuttle")]
use shuttle::sync as imp;
#[cfg(not(feature = "shuttle"))]
use std::sync as imp;

pub use imp::MutexGuard;

pub mod atomic {
    #[cfg(feature = "shuttle")]
    pub use shuttle::sync::atomic::{
        AtomicBool, AtomicI64, AtomicU16, AtomicU32, AtomicU64, Ordering,
    };
    #[cfg(not(feature = "shuttle"))]
    pub use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU16, AtomicU32, AtomicU64, Ordering};
}

/// A mutex that never refuses its lock (see the module doc).
pub struct Mutex<T>(imp::Mutex<T>);

impl<T: Default> Default for Mutex<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T> std::fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mutex").finish_non_exhaustive()
    }
}

impl<T> Mutex<T> {
    pub fn new(value: T) -> Self {
        Self(imp::Mutex::new(value))
    }

    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
