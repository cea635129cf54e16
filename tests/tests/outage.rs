//! Outages with numbers: an upstream that answers 503, one that freezes (accepts and never answers), one that is
//! offline. Every read answers within `fetch.read_deadline` whatever the upstream does, the breaker opens within
//! its bound so misses then fail at once while hits are served, and recovery needs no restart; through the
//! mount, a harvester-like loop of preads sees EIO within the deadline, then exact bytes. Bounds are generous
//! (a loaded 2-core machine); the exact times are tested on the paused clock in `proxy/src/policy/tests.rs`.

mod common;

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use b2fs_tests::emulator::{Emulator, Fault};
use b2fs_tests::mount::Shim;
use common::{Env, Rng, start};

const BIG: u64 = 108 << 30;
const DEADLINE: Duration = Duration::from_secs(2);
/// What a read may take beyond the deadline here: the HTTP round trip and a busy machine.
const SLACK: Duration = Duration::from_millis(1500);

#[derive(Debug, Clone, Copy)]
enum Mode {
    Answers503,
    Frozen,
    Offline,
}

fn set(env: &Env, mode: Mode, on: bool) {
    match mode {
        Mode::Answers503 => env
            .emu
            .set_fault(Fault::ServiceUnavailable, if on { 1.0 } else { 0.0 })
            .expect("fault"),
        Mode::Frozen => env
            .emu
            .update_knobs(|k| {
                k.latency.median = if on {
                    Duration::from_secs(3600)
                } else {
                    Duration::from_millis(5)
                }
            })
            .expect("latency"),
        Mode::Offline => env.emu.set_offline(on),
    }
}

async fn outage(mode: Mode) {
    let env = start(
        Emulator::builder()
            .virtual_file("k32.plot", BIG)
            .latency(Duration::from_millis(5), 0.0),
        |c| {
            c.fetch.read_deadline = DEADLINE;
            c.fetch.timeout = Duration::from_secs(1);
            c.fetch.breaker_threshold = 5;
            c.fetch.breaker_cooldown = Duration::from_millis(500);
        },
    )
    .await;
    let cached: Vec<u64> = (0..8u64).map(|i| i * (5 << 30)).collect();
    for &a in &cached {
        env.assert_range("k32.plot", a, a + 8191).await;
    }
    set(&env, mode, true);
    let t0 = Instant::now();
    let mut rng = Rng(11);
    let (mut slowest, mut opened_after) = (Duration::ZERO, None);
    let mut fast = 0;
    // A harvester-like loop: cold reads one after another, cached ones in between.
    for _ in 0..12 {
        let a = rng.below(BIG - 10_000);
        let t = Instant::now();
        let (status, _) = env.get_range("k32.plot", a, a + 8191).await;
        let took = t.elapsed();
        assert!(
            matches!(status, 502..=504),
            "{mode:?}: a miss answered {status}"
        );
        assert!(
            took <= DEADLINE + SLACK,
            "{mode:?}: a miss took {took:?}, deadline {DEADLINE:?}"
        );
        slowest = slowest.max(took);
        if took < Duration::from_millis(200) {
            fast += 1;
            opened_after.get_or_insert(t0.elapsed());
        }
        for &c in &cached {
            env.assert_range("k32.plot", c, c + 8191).await;
        }
    }
    let opened = opened_after.unwrap_or_else(|| panic!("{mode:?}: the circuit never opened"));
    assert!(
        opened <= 3 * (DEADLINE + SLACK),
        "{mode:?}: circuit open only after {opened:?}"
    );
    assert_eq!(env.metric("b2proxy_upstream_circuit_state").await, 1.0);
    set(&env, mode, false);
    let back = Instant::now();
    loop {
        let a = rng.below(BIG - 10_000);
        let (status, _) = env.get_range("k32.plot", a, a + 8191).await;
        if status == 206 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "{mode:?}: not serving 15 s after recovery"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = back.elapsed();
    let a = rng.below(BIG - 10_000);
    env.assert_range("k32.plot", a, a + 8191).await;
    println!(
        "{mode:?}: slowest miss {slowest:?} (deadline {DEADLINE:?}); circuit open {opened:?} after the outage \
         began, then {fast} of 12 misses failed at once; serving again {recovered:?} after recovery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_answering_503_fails_reads_within_the_deadline_and_opens_the_breaker() {
    outage(Mode::Answers503).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_upstream_fails_reads_within_the_deadline_and_opens_the_breaker() {
    outage(Mode::Frozen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_offline_upstream_fails_reads_within_the_deadline_and_opens_the_breaker() {
    outage(Mode::Offline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn through_the_mount_a_frozen_upstream_is_eio_within_the_deadline_then_exact_bytes() {
    let env = start(
        Emulator::builder()
            .virtual_file("plots/k32.plot", BIG)
            .latency(Duration::from_millis(5), 0.0),
        |c| {
            c.fetch.read_deadline = DEADLINE;
            c.fetch.timeout = Duration::from_secs(1);
            c.fetch.breaker_cooldown = Duration::from_millis(500);
        },
    )
    .await;
    let dirs = tempfile::tempdir().expect("tempdir");
    let mnt = dirs.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mount = Shim::new(&mnt, &env.base).mount().expect("mount");
    let path = mount.join("plots/k32.plot");
    set(&env, Mode::Frozen, true);
    let file = std::fs::File::open(&path).expect("open");
    let loop_result = tokio::task::spawn_blocking(move || {
        let mut rng = Rng(3);
        let mut times = Vec::new();
        for _ in 0..6 {
            let off = rng.below(BIG - 10_000);
            let mut buf = vec![0u8; 8192];
            let t = Instant::now();
            let r = file.read_exact_at(&mut buf, off);
            let took = t.elapsed();
            let errno = r.err().and_then(|e| e.raw_os_error());
            assert_eq!(errno, Some(libc::EIO), "a frozen upstream must give EIO");
            times.push(took);
        }
        (file, times)
    })
    .await
    .expect("join");
    let (file, times) = loop_result;
    let slowest = times.iter().max().copied().unwrap_or_default();
    assert!(
        slowest <= DEADLINE + SLACK,
        "a pread took {slowest:?} with a {DEADLINE:?} deadline: {times:?}"
    );
    set(&env, Mode::Frozen, false);
    let env = std::sync::Arc::new(env);
    let e2 = env.clone();
    let recovered = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let mut rng = Rng(4);
        loop {
            let off = rng.below(BIG - 10_000);
            let mut buf = vec![0u8; 8192];
            if file.read_exact_at(&mut buf, off).is_ok() {
                let want = e2
                    .emu
                    .expected_bytes("plots/k32.plot", off, 8192)
                    .expect("expected");
                assert!(buf == want, "wrong bytes after recovery");
                return t.elapsed();
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "not serving after recovery"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .expect("join");
    println!(
        "through the mount, frozen upstream: preads failed with EIO in {times:?}; exact bytes {recovered:?} \
         after recovery"
    );
    drop(mount);
}
