//! Reliability through the FUSE mount: a fault soak read with pread (zero wrong bytes, clear EIO otherwise), a
//! shim killed with SIGKILL whose next start recovers the stale mount point, and the bearer token end to end.
//! Long soak: `B2FS_SOAK_SECS=300 cargo test --release -p b2fs-tests --test mount_reliability -- --nocapture`.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use b2fs_tests::emulator::{Emulator, Fault};
use b2fs_tests::mount::{Shim, is_mounted};
use common::{Rng, start};

const BIG: u64 = 108 << 30;

fn soak_secs() -> Duration {
    Duration::from_secs(
        std::env::var("B2FS_SOAK_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(8),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_soak_through_the_mount() {
    let soak = soak_secs();
    let mut b = Emulator::builder()
        .virtual_file("plots/k32.plot", BIG)
        .latency(Duration::from_millis(10), 0.5)
        .tail(0.01, Duration::from_millis(400))
        .token_lifetime(Duration::from_secs(3))
        .retry_after(1)
        .seed(99);
    for f in Fault::ALL {
        b = b.fault(f, 0.02);
    }
    let env = start(b, |c| c.cache.memory = bytesize::ByteSize::mib(16)).await;
    let dirs = tempfile::tempdir().expect("tempdir");
    let mnt = dirs.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mount = Shim::new(&mnt, &env.base)
        .arg("--timeout")
        .arg("30s")
        .mount()
        .expect("mount");
    let path = mount.join("plots/k32.plot");
    let (ok, eio, wrong) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let deadline = Instant::now() + soak;
    let env = Arc::new(env);
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            let (path, ok, eio, wrong, env) = (
                path.clone(),
                ok.clone(),
                eio.clone(),
                wrong.clone(),
                env.clone(),
            );
            std::thread::spawn(move || {
                let f = std::fs::File::open(&path).expect("open");
                let mut rng = Rng(t * 31 + 7);
                while Instant::now() < deadline {
                    let len = (8192 + rng.below(56 * 1024)) as usize;
                    let off = rng.below(2048) * (48 << 20) + rng.below(1 << 20);
                    let mut buf = vec![0u8; len];
                    match f.read_exact_at(&mut buf, off) {
                        Ok(()) => {
                            let want = env
                                .emu
                                .expected_bytes("plots/k32.plot", off, len as u64)
                                .expect("expected");
                            if buf == want {
                                ok.fetch_add(1, Ordering::Relaxed);
                            } else {
                                wrong.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) if e.raw_os_error() == Some(5) => {
                            eio.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("unexpected error {e}"),
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("reader");
    }
    let s = env.emu.stats();
    let (ok, eio, wrong) = (
        ok.load(Ordering::Relaxed),
        eio.load(Ordering::Relaxed),
        wrong.load(Ordering::Relaxed),
    );
    let total = ok + eio + wrong;
    println!(
        "mount fault soak {soak:?}: {total} preads, {ok} exact, {eio} EIO, {wrong} wrong; {} downloads, {} authorizations, faults {:?}",
        s.requests.download_by_id, s.requests.authorize, s.faults
    );
    assert_eq!(wrong, 0, "wrong bytes through the mount");
    assert!(total > 50, "too few reads: {total}");
    assert!(
        ok as f64 >= total as f64 * 0.98,
        "only {ok} of {total} served"
    );
    drop(mount);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_shim_leaves_a_mount_the_next_start_recovers() {
    let env = start(Emulator::builder().virtual_file("a.plot", 1 << 20), |_| {}).await;
    let dirs = tempfile::tempdir().expect("tempdir");
    let mnt = dirs.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let log = dirs.path().join("shim.log");
    let first = Shim::new(&mnt, &env.base)
        .log_file(&log)
        .mount()
        .expect("mount");
    assert_eq!(
        std::fs::metadata(first.join("a.plot")).expect("stat").len(),
        1 << 20
    );
    first.signal(9).expect("SIGKILL");
    // The kernel keeps the dead mount: every access that reaches the daemon fails with ENOTCONN (attributes may
    // still come from the kernel's cache, so read data).
    let deadline = Instant::now() + Duration::from_secs(5);
    let err = loop {
        let r = std::fs::File::open(mnt.join("a.plot")).and_then(|f| {
            let mut b = [0u8; 16];
            f.read_exact_at(&mut b, 0)
        });
        match r {
            Err(e) => break e,
            Ok(()) => {
                assert!(
                    Instant::now() < deadline,
                    "mount still answers after SIGKILL"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    // ECONNABORTED for the first access after the daemon died, ENOTCONN for the ones after.
    assert!(
        matches!(err.raw_os_error(), Some(103 | 107)),
        "expected ENOTCONN/ECONNABORTED, got {err}"
    );
    assert!(is_mounted(&mnt), "stale mount should still be listed");
    std::mem::forget(first); // its Drop would clean up the stale mount we want the next shim to find
    // Whatever happens below, leave no mount behind.
    struct Detach(std::path::PathBuf);
    impl Drop for Detach {
        fn drop(&mut self) {
            if is_mounted(&self.0) {
                let _ = b2fs_tests::mount::lazy_unmount(&self.0);
            }
        }
    }
    let _detach = Detach(mnt.clone());

    // Started directly: the test harness itself refuses a mount point that is still listed as mounted.
    let log_file = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("log");
    let mut second =
        std::process::Command::new(b2fs_tests::mount::shim_binary().expect("shim binary"))
            .arg(&mnt)
            .arg("--proxy")
            .arg(&env.base)
            .stderr(log_file)
            .spawn()
            .expect("spawn second shim");
    let deadline = Instant::now() + Duration::from_secs(20);
    let buf = loop {
        let mut buf = vec![0u8; 100];
        let r =
            std::fs::File::open(mnt.join("a.plot")).and_then(|f| f.read_exact_at(&mut buf, 1000));
        if r.is_ok() {
            break buf;
        }
        if Instant::now() >= deadline {
            let _ = second.kill();
            let log_text = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("second shim did not recover the mount point: {r:?}\nshim log:\n{log_text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        buf,
        env.emu
            .expected_bytes("a.plot", 1000, 100)
            .expect("expected")
    );
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log_text.to_lowercase().contains("stale"),
        "the recovery is not explained in the log: {log_text}"
    );
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(second.id().to_string())
        .status();
    let status =
        b2fs_tests::mount::wait_timeout(&mut second, Duration::from_secs(10)).expect("wait");
    assert!(
        status.is_some_and(|s| s.success()),
        "second shim did not exit cleanly: {status:?}"
    );
    assert!(!is_mounted(&mnt));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shim_sends_the_bearer_token() {
    const TOKEN: &str = "shim-token-0123456789abcdef0123";
    let env = start(Emulator::builder().virtual_file("a.plot", 1 << 20), |c| {
        c.server.auth_token = Some(TOKEN.into());
    })
    .await;
    let dirs = tempfile::tempdir().expect("tempdir");
    let mnt = dirs.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    // Without the token the shim refuses to start, with a clear message.
    let log = dirs.path().join("no-token.log");
    let refused = Shim::new(&mnt, &env.base)
        .log_file(&log)
        .mount_timeout(Duration::from_secs(15))
        .mount();
    assert!(refused.is_err(), "mounted without the token");
    let text = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        text.contains("token") || text.contains("401"),
        "no clear message: {text}"
    );
    assert!(!is_mounted(&mnt));

    let m = Shim::new(&mnt, &env.base)
        .arg("--token")
        .arg(TOKEN)
        .mount()
        .expect("mount with token");
    let mut buf = vec![0u8; 8191];
    std::fs::File::open(m.join("a.plot"))
        .expect("open")
        .read_exact_at(&mut buf, 4096)
        .expect("read");
    assert_eq!(
        buf,
        env.emu
            .expected_bytes("a.plot", 4096, 8191)
            .expect("expected")
    );
    m.terminate(Duration::from_secs(10)).expect("unmount");
}
