//! Model checks of the hand-written concurrent state, under `shuttle`: each test runs a few thousand
//! schedules (random and PCT, which finds bugs of a given depth with known probability) of threads racing on
//! the real types, with the primitives in [`crate::sync`] swapped for shuttle's. Run with
//! `cargo test -p b2-proxy --features shuttle --lib model` (the README test command does).

use std::collections::HashSet;
use std::sync::Arc;

use prometheus::IntCounter;
use shuttle::sync::atomic::{AtomicUsize, Ordering};
use shuttle::thread;

use crate::cache::refresh::{DiskRefresh, RefreshMetrics};
use crate::fetch::inflight::InflightTable;
use crate::sync::Mutex;

const ITERATIONS: usize = 3000;

/// One block, three readers, a cache, and the fetcher's protocol: look in the cache; under the table's lock
/// join a run in flight, else look in the cache again, else register a run; the run caches its block before
/// its guard leaves the table. Checked: never two fetches of the block at once, exactly one fetch in all,
/// every reader ends with the block, and the table ends empty.
fn single_flight_model(recheck_under_lock: bool) {
    let table: Arc<InflightTable<u64, u64>> = Arc::default();
    let cache: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let fetching = Arc::new(AtomicUsize::new(0));
    let fetches = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (table, cache, fetching, fetches) = (
                table.clone(),
                cache.clone(),
                fetching.clone(),
                fetches.clone(),
            );
            thread::spawn(move || {
                if cache.lock().contains(&7) {
                    return;
                }
                let mut plan = table.plan();
                if plan.get(&7).is_some() {
                    // Joined: the run will put the block in the cache.
                    return;
                }
                if recheck_under_lock && cache.lock().contains(&7) {
                    return;
                }
                let guard = plan.register(vec![7], |run, _| run);
                drop(plan);
                assert_eq!(
                    fetching.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two fetches at once"
                );
                fetches.fetch_add(1, Ordering::SeqCst);
                cache.lock().insert(7);
                fetching.fetch_sub(1, Ordering::SeqCst);
                drop(guard);
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap_or_else(|_| panic!("reader panicked"));
    }
    assert!(table.is_empty(), "a guard left its block in the table");
    assert!(cache.lock().contains(&7));
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "the block was fetched twice"
    );
}

#[test]
fn model_single_flight_fetches_each_block_once() {
    shuttle::check_random(|| single_flight_model(true), ITERATIONS);
    shuttle::check_pct(|| single_flight_model(true), ITERATIONS, 3);
}

/// The recheck is needed: without it a reader that missed the cache just before the run cached the block,
/// and planned just after its guard left, fetches it again. Shuttle finds that schedule.
#[test]
fn model_without_the_recheck_a_block_can_be_fetched_twice() {
    let found = std::panic::catch_unwind(|| {
        shuttle::check_random(|| single_flight_model(false), ITERATIONS * 3)
    });
    assert!(found.is_err(), "shuttle should find the double fetch");
}

/// A guard removes only its own run's entries, even when a later run registered other blocks meanwhile.
#[test]
fn model_guards_remove_only_their_own_runs() {
    shuttle::check_random(
        || {
            let table: Arc<InflightTable<u64, u64>> = Arc::default();
            let runs: Vec<_> = (0..3u64)
                .map(|i| {
                    let table = table.clone();
                    thread::spawn(move || {
                        let keys = vec![i, i + 10];
                        let guard = {
                            let mut plan = table.plan();
                            if keys.iter().any(|k| plan.contains(k)) {
                                return;
                            }
                            plan.register(keys.clone(), |run, slot| run * 100 + slot as u64)
                        };
                        let mine = guard.run_id() * 100;
                        {
                            let plan = table.plan();
                            assert_eq!(plan.get(&i), Some(mine), "another run took my block");
                        }
                        drop(guard);
                        let plan = table.plan();
                        assert!(plan.get(&i).is_none_or(|v| v / 100 != mine / 100));
                    })
                })
                .collect();
            for r in runs {
                r.join().unwrap_or_else(|_| panic!("run panicked"));
            }
            assert!(table.is_empty());
        },
        ITERATIONS,
    );
}

fn key(index: u64) -> crate::cache::BlockKey {
    crate::cache::BlockKey {
        file: Arc::from("4_zmodel"),
        index,
    }
}

/// Readers of one old block race to rewrite it: exactly one wins, and the rewrite budget is spent exactly
/// once (the losers give their tokens back).
#[test]
fn model_disk_refresh_rewrites_an_old_block_once() {
    const DISK: usize = 1 << 20;
    const BLOCK: usize = 4096;
    shuttle::check_random(
        || {
            let metrics = RefreshMetrics::detached();
            let blocks = metrics.rewritten_blocks.clone();
            let r = Arc::new(DiskRefresh::new(DISK, BLOCK, BLOCK, 2, metrics));
            // Earn tokens. Block 1 was never placed (as one recovered after a crash).
            for h in 0..(DISK / BLOCK) as u64 {
                r.admit(&key(1000 + h), (1 << 50) | h, BLOCK);
            }
            let wins = Arc::new(AtomicUsize::new(0));
            let readers: Vec<_> = (0..3)
                .map(|_| {
                    let (r, wins) = (r.clone(), wins.clone());
                    thread::spawn(move || {
                        if r.on_read(&key(1), 1, BLOCK).is_some() {
                            wins.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            for t in readers {
                t.join().unwrap_or_else(|_| panic!("reader panicked"));
            }
            assert_eq!(wins.load(Ordering::SeqCst), 1);
            assert_eq!(blocks.get(), 1);
            // The budget is capped at a sixteenth of the log (253 of the 256 one-block regions: 15.8 blocks), one
            // block spent: 14 more can be rewritten, not 15.
            let more = (2..20u64)
                .filter(|&h| r.on_read(&key(h), h, BLOCK).is_some())
                .count();
            assert_eq!(more, 14);
        },
        ITERATIONS / 3,
    );
}
