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
        .env_remove("B2FS_PROXY")
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
    let dir = tempfile::tempdir().expect("tempdir");
    let out = shim(&[dir.path().to_str().expect("utf-8"), "--proxy", "ftp://x"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--proxy"), "{}", text(&out));
}

#[test]
fn proxy_url_is_read_from_b2fs_proxy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_b2fs-shim"))
        .arg(dir.path())
        .env_remove("RUST_LOG")
        .env("B2FS_PROXY", "ftp://from-the-environment")
        .output()
        .expect("b2fs-shim runs");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("ftp://from-the-environment"),
        "{}",
        text(&out)
    );
}

#[test]
fn non_empty_mount_point_is_refused_without_allow_non_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("precious.txt"), b"x").expect("write");
    let out = shim(&[dir.path().to_str().expect("utf-8"), "--startup-wait", "0s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("not empty") && t.contains("precious.txt") && t.contains("--allow-non-empty"),
        "{t}"
    );
    // With the flag the check passes, and the start fails later, on the invalid proxy URL.
    let out = shim(&[
        dir.path().to_str().expect("utf-8"),
        "--allow-non-empty",
        "--proxy",
        "ftp://x",
    ]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(!t.contains("not empty") && t.contains("--proxy"), "{t}");
}

/// Runs the shim up to its metrics listener (on an address no machine has, so the start stops there, after the
/// HTTP client is built and before anything is mounted), with an empty CA store as on a minimal system.
fn start_without_ca_certificates(proxy_url: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let out = Command::new(env!("CARGO_BIN_EXE_b2fs-shim"))
        .arg(&mnt)
        .args(["--proxy", proxy_url, "--metrics", "192.0.2.1:9"])
        .env_remove("RUST_LOG")
        .env_remove("B2FS_PROXY")
        // rustls-native-certs reads only these when they are set.
        .env("SSL_CERT_FILE", certs.path().join("none.pem"))
        .env("SSL_CERT_DIR", certs.path())
        .output()
        .expect("b2fs-shim runs");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    text(&out)
}

#[test]
fn plain_http_proxy_needs_no_ca_certificates() {
    let t = start_without_ca_certificates("http://127.0.0.1:8642");
    assert!(t.contains("cannot listen on --metrics"), "{t}");
    assert!(!t.contains("CA certificates"), "{t}");
    // The same start with an https:// proxy does need them, and says which package has them.
    let t = start_without_ca_certificates("https://proxy.example:8642");
    assert!(t.contains("ca-certificates"), "{t}");
}

#[test]
fn bad_log_filter_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    for flag in ["--log-level", "--log"] {
        let out = shim(&[dir.path().to_str().expect("utf-8"), flag, "foo=bar=baz"]);
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", text(&out));
        assert!(text(&out).contains("foo=bar=baz"), "{}", text(&out));
    }
}

#[test]
fn version_names_the_commit() {
    let out = shim(&["--version"]);
    assert!(out.status.success(), "{}", text(&out));
    let v = text(&out);
    assert!(
        v.starts_with(&format!("b2fs-shim {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
}

#[test]
fn man_page_and_completions_come_from_the_cli() {
    let man = shim(&["--generate", "man"]);
    assert!(man.status.success(), "{}", text(&man));
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(
        page.starts_with(".ie") && page.contains(".TH b2fs-shim 1"),
        "{page}"
    );
    assert!(page.contains("allow\\-non\\-empty"), "{page}");
    assert!(
        !page.contains("generate"),
        "the hidden --generate leaked into the man page"
    );
    for shell in ["bash", "zsh", "fish"] {
        let out = shim(&["--generate", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("cache-mode"),
            "{shell} completion lacks --cache-mode"
        );
    }
}

#[test]
fn json_logs_are_json_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = shim(&[
        dir.path().join("missing").to_str().expect("utf-8"),
        "--log-format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().last().expect("a log line");
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["level"], "ERROR", "{line}");
    assert!(
        v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("does not exist")),
        "{line}"
    );
}
