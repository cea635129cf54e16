//! The fetcher's behaviours on a paused clock against the mock source and the in-memory cache: how many
//! upstream requests a pattern of reads makes, for which ranges, and when.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::testing::{Stack, fetch_settings, pattern, policy_settings};
use crate::upstream::mock::Step;

const MS: Duration = Duration::from_millis(1);
const BS: u64 = 4096;

fn file(s: &Stack, len: usize) -> (Arc<ObjectInfo>, Bytes) {
    let data = pattern(len, 42);
    (Arc::new(s.source.add_file("plot", data.clone())), data)
}

async fn read(s: &Stack, obj: &Arc<ObjectInfo>, r: Range<u64>) -> (Bytes, Outcome) {
    s.fetcher.read(obj, r).await.expect("read")
}

#[tokio::test(start_paused = true)]
async fn concurrent_readers_of_one_block_share_one_fetch() {
    let s = Stack::default_stack();
    let (obj, data) = file(&s, 64 << 10);
    s.source.script(|_| Step::after(80 * MS));
    let t0 = Instant::now();
    let readers: Vec<_> = (0..16)
        .map(|i| {
            let (f, o) = (s.fetcher.clone(), obj.clone());
            tokio::spawn(async move { f.read(&o, 100 + i..200 + i).await })
        })
        .collect();
    for (i, r) in readers.into_iter().enumerate() {
        let (bytes, outcome) = r.await.expect("join").expect("read");
        assert_eq!(bytes, data.slice(100 + i..200 + i));
        assert_eq!(outcome, Outcome::Miss);
    }
    assert_eq!(t0.elapsed(), 80 * MS, "one round trip for all");
    assert_eq!(s.source.count(), 1);
    assert_eq!(s.metric("b2proxy_singleflight_joins_total", &[]), 15.0);
    assert_eq!(s.fetcher.inflight_blocks(), 0, "the table empties");
    // And now it is a hit.
    assert_eq!(read(&s, &obj, 0..10).await.1, Outcome::HitMemory);
    assert_eq!(s.source.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_read_overlapping_a_fetch_in_flight_joins_it_and_fetches_only_the_rest() {
    let s = Stack::default_stack();
    let (obj, data) = file(&s, 64 << 10);
    s.source.script(|_| Step::after(100 * MS));
    let (f, o) = (s.fetcher.clone(), obj.clone());
    let a = tokio::spawn(async move { f.read(&o, 0..3 * BS).await });
    tokio::time::sleep(10 * MS).await;
    let (b, _) = read(&s, &obj, 2 * BS + 10..5 * BS).await;
    assert_eq!(b, data.slice(2 * BS as usize + 10..5 * BS as usize));
    let (a, _) = a.await.expect("join").expect("read");
    assert_eq!(a, data.slice(0..3 * BS as usize));
    let ranges: Vec<_> = s.source.calls().into_iter().map(|c| c.range).collect();
    assert_eq!(ranges, vec![0..3 * BS, 3 * BS..5 * BS]);
}

#[tokio::test(start_paused = true)]
async fn adjacent_missing_blocks_go_upstream_as_one_range() {
    let s = Stack::default_stack();
    let (obj, data) = file(&s, 64 << 10);
    // Block 3 cached: a read of blocks 1..=5 fetches 1..=2 and 4..=5, one request each.
    read(&s, &obj, 3 * BS..3 * BS + 1).await;
    let (got, outcome) = read(&s, &obj, BS + 5..6 * BS - 5).await;
    assert_eq!(got, data.slice(BS as usize + 5..6 * BS as usize - 5));
    assert_eq!(outcome, Outcome::Miss);
    let ranges: Vec<_> = s.source.calls().into_iter().map(|c| c.range).collect();
    assert_eq!(ranges, vec![3 * BS..4 * BS, BS..3 * BS, 4 * BS..6 * BS]);
}

#[tokio::test(start_paused = true)]
async fn a_small_miss_fetches_min_fetch_so_the_second_read_of_a_pair_hits() {
    let mut f = fetch_settings();
    f.min_fetch = 16 << 10;
    let s = Stack::new(policy_settings(), f);
    let (obj, _) = file(&s, 64 << 10);
    // A Chia-style pair: 8191 bytes, then the next 8191 bytes.
    read(&s, &obj, 5000..5000 + 8191).await;
    let (_, outcome) = read(&s, &obj, 5000 + 8191..5000 + 2 * 8191).await;
    assert_eq!(outcome, Outcome::HitMemory);
    let ranges: Vec<_> = s.source.calls().into_iter().map(|c| c.range).collect();
    assert_eq!(
        ranges,
        vec![BS..6 * BS],
        "one GET from the read's block to offset + 16 KiB"
    );
}

#[tokio::test(start_paused = true)]
async fn a_sequential_stream_grows_its_read_ahead_and_random_reads_never_read_ahead() {
    let mut f = fetch_settings();
    f.readahead_max = 256 << 10;
    let s = Stack::new(policy_settings(), f);
    let (obj, data) = file(&s, 1 << 20);
    s.source.script(|_| Step::after(20 * MS));
    // Random 100-byte reads: one request each, nothing fetched ahead.
    for i in 0..20u64 {
        let at = (i * 7919 * BS) % (1 << 20);
        read(&s, &obj, at..at + 100).await;
    }
    let random_calls = s.source.count();
    assert!(random_calls <= 20, "{random_calls}");
    assert_eq!(
        s.metric("b2proxy_readahead_blocks_total", &[("outcome", "fetched")]),
        0.0
    );
    // A stream of 16 KiB reads over a fresh file.
    let (obj, data2) = (Arc::new(s.source.add_file("seq", data.clone())), data);
    let before = s.source.count();
    let mut pos = 0u64;
    while pos < 1 << 20 {
        let (got, _) = read(&s, &obj, pos..pos + (16 << 10)).await;
        assert_eq!(got, data2.slice(pos as usize..pos as usize + (16 << 10)));
        pos += 16 << 10;
        // Let background runs land, as a reader's own pace would.
        tokio::time::sleep(25 * MS).await;
    }
    let fetched = s.metric("b2proxy_readahead_blocks_total", &[("outcome", "fetched")]);
    let used = s.metric("b2proxy_readahead_blocks_total", &[("outcome", "used")]);
    let stream_calls = s.source.count() - before;
    assert!(fetched > 100.0, "{fetched} blocks fetched ahead");
    assert!(
        used >= fetched - 16.0,
        "{used} of {fetched} used: read-ahead is not wasted"
    );
    // 64 reads: the 15 before the 256 KiB trigger are one request each; after it, the 256 KiB window is
    // refilled by halves, so the remaining 768 KiB cost a request per 128 KiB, not one per read.
    assert!(stream_calls <= 22, "{stream_calls} requests for 64 reads");
    let sizes: Vec<u64> = s.source.calls()[before..]
        .iter()
        .map(|c| c.range.end - c.range.start)
        .collect();
    assert!(sizes.iter().any(|&n| n >= 32 << 10), "{sizes:?}");
}

#[tokio::test(start_paused = true)]
async fn a_changed_file_asks_the_catalog_to_refresh_and_no_wrong_bytes_are_cached() {
    let s = Stack::default_stack();
    let (obj, _) = file(&s, 64 << 10);
    s.source
        .push([Step::with(MS, crate::upstream::mock::Fault::Foreign)]);
    let e = s.fetcher.read(&obj, 0..10).await.expect_err("foreign");
    assert!(
        matches!(e, FetchError::Upstream(UpstreamError::Changed(_))),
        "{e:?}"
    );
    assert_eq!(s.changed.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(s.cache.is_empty());
    assert_eq!(s.fetcher.inflight_blocks(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_reader_that_gives_up_does_not_cancel_the_fetch_others_wait_on() {
    let s = Stack::default_stack();
    let (obj, data) = file(&s, 64 << 10);
    s.source.script(|_| Step::after(100 * MS));
    let (f, o) = (s.fetcher.clone(), obj.clone());
    let impatient = tokio::spawn(async move { f.read(&o, 0..10).await });
    tokio::time::sleep(10 * MS).await;
    impatient.abort();
    let (got, _) = read(&s, &obj, 5..15).await;
    assert_eq!(got, data.slice(5..15));
    assert_eq!(s.source.count(), 1);
    assert_eq!(s.source.count_ended(&crate::upstream::mock::CallEnd::Ok), 1);
}

#[tokio::test(start_paused = true)]
async fn out_of_range_reads_are_refused_without_a_request() {
    let s = Stack::default_stack();
    let (obj, _) = file(&s, 1000);
    assert!(matches!(
        s.fetcher.read(&obj, 990..1001).await,
        Err(FetchError::OutOfRange { .. })
    ));
    assert!(s.fetcher.read(&obj, 5..5).await.is_err());
    assert_eq!(s.source.count(), 0);
}
