//! The in-flight table: which blocks are being fetched, by which run, so that a read needing one joins that
//! fetch instead of starting another.
//!
//! A run registers all its blocks under one lock with a fresh run id, and its [`RunGuard`] removes them when the
//! run ends however it ends (success, error, panic, cancellation); removal is by run id, so a guard can never
//! remove a later run's entry for the same block. Callers keep "cached" and "in flight" from leaving a gap
//! between them: a run puts its blocks in the cache before its guard drops, and a planner that finds a block
//! in neither re-checks the cache under the lock ([`Planner::register`] callers do so via a closure). Generic
//! and small so that `shuttle` can check it under every interleaving (`model` tests, `--features shuttle`).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::{Mutex, MutexGuard};

pub struct InflightTable<K, V> {
    map: Mutex<HashMap<K, (u64, V)>>,
    next_run: AtomicU64,
}

impl<K: Eq + Hash + Clone, V: Clone> Default for InflightTable<K, V> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            next_run: AtomicU64::new(1),
        }
    }
}

/// The table, locked, for one read's planning: look up, then register runs, atomically.
pub struct Planner<'a, K, V> {
    table: &'a Arc<InflightTable<K, V>>,
    map: MutexGuard<'a, HashMap<K, (u64, V)>>,
}

/// Removes its run's blocks from the table when dropped.
pub struct RunGuard<K: Eq + Hash, V> {
    table: Arc<InflightTable<K, V>>,
    run_id: u64,
    keys: Vec<K>,
}

impl<K: Eq + Hash + Clone, V: Clone> InflightTable<K, V> {
    pub fn plan(self: &Arc<Self>) -> Planner<'_, K, V> {
        Planner {
            table: self,
            map: self.map.lock(),
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Planner<'_, K, V> {
    /// The fetch in flight for `key`, to join.
    pub fn get(&self, key: &K) -> Option<V> {
        self.map.get(key).map(|(_, v)| v.clone())
    }

    pub fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    /// Registers a run over `keys` (none of which may be in flight: callers check with [`Self::contains`]);
    /// `value(run_id, slot)` is what a joiner of the block at position `slot` gets.
    pub fn register(&mut self, keys: Vec<K>, value: impl Fn(u64, usize) -> V) -> RunGuard<K, V> {
        let run_id = self.table.next_run.fetch_add(1, Ordering::Relaxed);
        for (slot, k) in keys.iter().enumerate() {
            debug_assert!(!self.map.contains_key(k), "block registered twice");
            self.map.insert(k.clone(), (run_id, value(run_id, slot)));
        }
        RunGuard {
            table: self.table.clone(),
            run_id,
            keys,
        }
    }
}

impl<K: Eq + Hash, V> RunGuard<K, V> {
    pub fn run_id(&self) -> u64 {
        self.run_id
    }
}

impl<K: Eq + Hash, V> Drop for RunGuard<K, V> {
    fn drop(&mut self) {
        let mut map = self.table.map.lock();
        for k in &self.keys {
            if map.get(k).is_some_and(|(id, _)| *id == self.run_id) {
                map.remove(k);
            }
        }
    }
}
