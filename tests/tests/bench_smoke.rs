//! Smoke run of the benchmark: `b2fs-bench all --smoke` (built by `cargo test --workspace` next to the test
//! executables) must run every scenario end to end (emulator, proxy process, FUSE mount, real chiapos and
//! chia-pos2 provers), exit 0 and print every scenario's table row. Its numbers are not checked: targets
//! are for the release benchmark (README "Performance"), never asserted in tests. A second run does the same
//! for `farm-v2 --proxies 1,2` (proxies behind a real HAProxy).
//!
//! Needs what the other end-to-end tests need: /dev/fuse with fusermount3, the chiapos venv and haproxy
//! (./test.sh).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use b2fs_tests::mount::{wait_timeout, workspace_binary};

/// The smoke run takes ~30-60 s in a debug build; this only guards against a hang.
const LIMIT: Duration = Duration::from_secs(180);

#[test]
fn bench_all_smoke_prints_every_scenario() {
    let bench = workspace_binary("b2fs-bench", "B2FS_BENCH_BIN").expect("b2fs-bench binary");
    let out_dir = tempfile::tempdir().expect("tempdir");
    let stdout_path = out_dir.path().join("stdout.md");
    let json_path = out_dir.path().join("report.json");
    let started = Instant::now();
    let mut child = Command::new(&bench)
        // --no-build: a cargo build from inside `cargo test` would wait on cargo's own lock.
        .args(["all", "--smoke", "--no-build", "--json"])
        .arg(&json_path)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn b2fs-bench");
    let status = match wait_timeout(&mut child, LIMIT).expect("wait") {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("b2fs-bench all --smoke did not finish within {LIMIT:?}");
        }
    };
    let elapsed = started.elapsed();
    let stdout = std::fs::read_to_string(&stdout_path).expect("stdout");
    eprintln!("b2fs-bench all --smoke took {elapsed:.1?}");
    assert!(
        status.success(),
        "b2fs-bench exited with {status}:\n{stdout}"
    );
    for scenario in [
        "micro",
        "pos1-replay",
        "tail",
        "chiapos",
        "pos2",
        "farm",
        "farm-v2",
        "eviction",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("| {scenario} |"))),
            "no table row for {scenario}:\n{stdout}"
        );
    }
    // The comparison column runs where rclone is installed (./test.sh installs it when Debian has it).
    if b2fs_tests::bench::rclone().is_some() {
        for mode in ["off", "full"] {
            let row = format!("| pos1-replay | rclone mount, --vfs-cache-mode {mode} |");
            assert!(
                stdout.lines().any(|l| l.starts_with(&row)),
                "no rclone row for --vfs-cache-mode {mode}:\n{stdout}"
            );
        }
    }
    assert!(
        stdout.contains("### Targets"),
        "no targets table:\n{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("json file"))
            .expect("valid JSON report");
    assert_eq!(json["smoke"], true);
    assert!(
        json["errors"].as_array().is_some_and(Vec::is_empty),
        "{}",
        json["errors"]
    );
    assert!(
        json["skipped"].as_array().is_some_and(Vec::is_empty),
        "{}",
        json["skipped"]
    );
    // farm-v2's loop during a `cp` of plots (96 MiB in the smoke size): it ran, its lookups were answered,
    // and the copy's bytes came through the proxy.
    let scan = json["farm_v2"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["phases"].as_array().into_iter().flatten())
        .find(|p| p["name"] == b2fs_tests::bench::farm_v2::SCAN)
        .unwrap_or_else(|| panic!("no farm-v2 phase {:?}", b2fs_tests::bench::farm_v2::SCAN));
    assert!(scan["lookups"].as_u64().is_some_and(|n| n > 0), "{scan}");
    assert_eq!(scan["failed"], 0, "{scan}");
    assert!(
        scan["upstream_bytes"]
            .as_u64()
            .is_some_and(|b| b >= 90 << 20),
        "the cp's 96 MiB did not come from upstream: {scan}"
    );
    assert!(
        stdout.contains(&format!(
            "| farm-v2 | {} |",
            b2fs_tests::bench::farm_v2::SCAN
        )),
        "no table row for the cp loop:\n{stdout}"
    );
}

/// `farm-v2 --proxies 1,2` in its smoke size: every pass behind a real HAProxy on the shipped config, the
/// side-by-side table and the scaling target printed (numbers not checked). Needs haproxy (./test.sh).
#[test]
fn bench_farm_v2_behind_haproxy_smoke_prints_the_side_by_side_table() {
    b2fs_tests::haproxy::binary().unwrap_or_else(|e| panic!("{e:#}"));
    let bench = workspace_binary("b2fs-bench", "B2FS_BENCH_BIN").expect("b2fs-bench binary");
    let out_dir = tempfile::tempdir().expect("tempdir");
    let stdout_path = out_dir.path().join("stdout.md");
    let mut child = Command::new(&bench)
        .args(["farm-v2", "--smoke", "--no-build", "--proxies", "1,2"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn b2fs-bench");
    let status = match wait_timeout(&mut child, LIMIT).expect("wait") {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("b2fs-bench farm-v2 --proxies did not finish within {LIMIT:?}");
        }
    };
    let stdout = std::fs::read_to_string(&stdout_path).expect("stdout");
    assert!(
        status.success(),
        "b2fs-bench exited with {status}:\n{stdout}"
    );
    for heading in [
        "24 plots, 1 proxies behind HAProxy",
        "24 plots, 2 proxies behind HAProxy",
        "### Farm v2: proxies behind HAProxy, side by side",
    ] {
        assert!(stdout.contains(heading), "no {heading:?}:\n{stdout}");
    }
    for n in [1, 2] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("| {n} | 24 |"))),
            "no side-by-side row for {n} proxies:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("| farm-v2: 2 proxies vs 1 behind HAProxy, capacity |"),
        "no scaling target:\n{stdout}"
    );
}
