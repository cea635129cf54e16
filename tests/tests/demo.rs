//! The one-command demo (`b2fs-demo`): it mounts, serves byte-exact reads and real proofs, and cleans up
//! after itself, both in `--check` mode and when stopped with Ctrl-C (SIGINT).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use b2fs_tests::emulator::{name_seed, virtual_bytes};
use b2fs_tests::mount::{is_mounted, shim_binary, wait_timeout};

fn demo(work: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_b2fs-demo"));
    cmd.arg("--no-build")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--work-dir")
        .arg(work)
        .env(
            "B2FS_SHIM_BIN",
            shim_binary().unwrap_or_else(|e| panic!("{e:#}")),
        )
        .env("B2FS_POS2_BIN", env!("CARGO_BIN_EXE_b2fs-pos2"))
        .stdin(Stdio::null());
    cmd
}

#[test]
fn demo_check_mounts_and_serves_exact_bytes_and_valid_proofs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path().join("demo");
    let mut child = demo(&work)
        .arg("--check")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn b2fs-demo");
    // Bound the run: a hang must fail the test, not the CI job.
    let status = wait_timeout(&mut child, Duration::from_secs(180)).expect("wait");
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("output");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(status.is_some(), "b2fs-demo --check hung:\n{text}");
    assert!(out.status.success(), "{text}");
    for line in [
        "byte-exact",
        "plots/pos2-k18.gplot read whole through the mount is identical",
        "identical to local disk and valid",
        "check passed",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(!work.exists(), "work dir left behind:\n{text}");
    assert!(!is_mounted(&work.join("mnt")));
}

#[test]
fn demo_serves_the_mount_until_ctrl_c_then_cleans_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path().join("demo");
    let mnt = work.join("mnt");
    let mut child = demo(&work)
        .arg("--no-chiapos")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn b2fs-demo");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let ready = line.starts_with("Ctrl-C stops everything");
                seen.push(line);
                if ready {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!("the demo did not come up:\n{}", seen.join("\n"));
            }
        }
    }
    let banner = seen.join("\n");
    assert!(
        banner.contains("curl -s -r 0-8190 http://127.0.0.1:"),
        "{banner}"
    );
    assert!(banner.contains("prove "), "{banner}");

    // What the banner suggests: ls and a byte-exact read of the virtual k=32 plot through the mount.
    let name = "plots/virtual-k32.plot";
    let meta = std::fs::metadata(mnt.join(name)).expect("stat");
    assert_eq!(meta.len(), 108 << 30);
    let offset = 8191 * 1_000_000;
    let f = std::fs::File::open(mnt.join(name)).expect("open");
    let mut buf = vec![0u8; 8191];
    assert_eq!(f.read_at(&mut buf, offset).expect("read"), 8191);
    assert!(
        buf == virtual_bytes(name_seed(name), offset, 8191),
        "wrong bytes"
    );
    drop(f);
    assert!(mnt.join("plots/pos2-k18.gplot").is_file());

    // SAFETY: kill() on our own, not yet reaped, child.
    assert_eq!(
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) },
        0,
        "SIGINT"
    );
    let status = wait_timeout(&mut child, Duration::from_secs(30)).expect("wait");
    let Some(status) = status else {
        let _ = child.kill();
        panic!("the demo did not stop within 30 s of SIGINT");
    };
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(status.success(), "exit {status}: {}", rest.join("\n"));
    assert!(!is_mounted(&mnt), "still mounted after Ctrl-C");
    assert!(!work.exists(), "work dir left behind: {}", rest.join("\n"));
}
