//! The `b2fs-shim` command line, without mounting: help, and clear errors for a bad mount point or proxy URL.
//!
//! Besides testing, this integration test makes `cargo test --workspace` build `target/<profile>/b2fs-shim`,
//! which the end-to-end mount tests in the tests crate spawn (cargo builds a package's binaries only for its
//! own integration tests).

use std::process::{Command, Output};

fn shim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_b2fs-shim"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("B2FS_TOKEN")
        .output()
        .expect("b2fs-shim runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn help_names_the_options() {
    let out = shim(&["--help"]);
    assert!(out.status.success(), "{}", text(&out));
    let help = text(&out);
    for option in [
        "MOUNTPOINT",
        "--proxy",
        "--cache-mode",
        "--timeout",
        "--attr-ttl",
        "--allow-other",
    ] {
        assert!(help.contains(option), "--help lacks {option}:\n{help}");
    }
}

#[test]
fn missing_mount_point_is_explained() {
    let dir = std::env::temp_dir().join(format!("b2fs-shim-cli-{}/missing", std::process::id()));
    let out = shim(&[dir.to_str().expect("utf-8"), "--startup-wait", "0s"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("does not exist"), "{}", text(&out));
}

#[test]
fn bad_proxy_url_is_explained() {
    let dir = std::env::temp_dir();
    let out = shim(&[dir.to_str().expect("utf-8"), "--proxy", "ftp://x"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--proxy"), "{}", text(&out));
}
