//! The `b2-proxy` binary's command line: config validation exits cleanly with the key named, secrets stay hidden.

use std::process::Command;

fn run(config: &str, extra_env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).expect("write config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_b2-proxy"));
    cmd.arg("--config").arg(&path).arg("--check-config");
    cmd.env_remove("B2_APPLICATION_KEY_ID")
        .env_remove("B2_APPLICATION_KEY");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn valid_config_is_printed_redacted() {
    let (code, out, err) = run(
        "[b2]\nkey_id = \"kid\"\napplication_key = \"supersecretvalue\"\nbucket = \"plots\"\n",
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("bucket = \"plots\""), "{out}");
    assert!(!out.contains("supersecretvalue"), "{out}");
    assert!(!err.contains("supersecretvalue"), "{err}");
}

#[test]
fn secrets_from_environment() {
    let (code, out, err) = run(
        "[b2]\nbucket = \"plots\"\n",
        &[
            ("B2_APPLICATION_KEY_ID", "envkid"),
            ("B2_APPLICATION_KEY", "envsecretvalue"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("envkid") && !out.contains("envsecretvalue"),
        "{out}"
    );
}

#[test]
fn bad_configs_name_the_key_and_exit_2() {
    let cases = [
        (
            "[b2]\nkey_id = \"k\"\napplication_key = \"s\"\n[cache]\nmemroy = \"1GiB\"\n",
            "memroy",
        ),
        (
            "[b2]\nkey_id = \"k\"\napplication_key = \"s\"\n[fetch]\ntimeout = 5\n",
            "timeout",
        ),
        ("[b2]\nkey_id = \"k\"\n", "b2.application_key"),
        (
            "[b2]\nkey_id = \"k\"\napplication_key = \"s\"\n[server]\nlisten = \"0.0.0.0:8642\"\n",
            "server.auth_token",
        ),
        (
            "[b2]\nkey_id = \"k\"\napplication_key = \"s\"\n[cache]\nblock_size = \"3KiB\"\n",
            "cache.block_size",
        ),
        ("this is not toml", "config"),
    ];
    for (text, key) in cases {
        let (code, _, err) = run(text, &[]);
        assert_eq!(code, 2, "{text}: {err}");
        assert!(
            err.contains(key),
            "{text}: message should name {key}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_b2-proxy"))
        .args(["--config", "/nonexistent/b2-proxy.toml", "--check-config"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/b2-proxy.toml"), "{err}");
}

#[test]
fn help_explains_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_b2-proxy"))
        .arg("--help")
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["--config", "--check-config", "B2_APPLICATION_KEY"] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
}

#[test]
fn world_readable_secrets_are_warned() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        "[b2]\nkey_id = \"k\"\napplication_key = \"secretsecret\"\nbucket = \"b\"\n",
    )
    .expect("write");
    for (mode, warned) in [(0o644, true), (0o600, false)] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let out = Command::new(env!("CARGO_BIN_EXE_b2-proxy"))
            .arg("--config")
            .arg(&path)
            .arg("--check-config")
            .env_remove("B2_APPLICATION_KEY")
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(err.contains("chmod 600"), warned, "mode {mode:o}: {err}");
        assert!(!err.contains("secretsecret"));
    }
}

/// The shipped example is valid as written and documents every key the proxy reads.
#[test]
fn shipped_example_config_is_valid_and_complete() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/config.example.toml");
    let text = std::fs::read_to_string(path).expect("deploy/config.example.toml");
    let (code, _, err) = run(&text, &[]);
    assert_eq!(code, 0, "{err}");
    let defaults = toml::Value::try_from(b2_proxy::config::Config::default()).expect("serializes");
    let mut keys: Vec<String> = [
        "key_id",
        "application_key",
        "bucket",
        "bucket_id",
        "prefix",
        "endpoint",
        "dir",
    ]
    .map(String::from)
    .to_vec();
    for (section, table) in defaults.as_table().expect("table") {
        let table = table
            .as_table()
            .unwrap_or_else(|| panic!("[{section}] is a table"));
        assert!(
            text.contains(&format!("[{section}]")),
            "[{section}] missing"
        );
        keys.extend(table.keys().cloned());
    }
    for key in keys {
        assert!(
            text.lines().any(|l| {
                let l = l.trim_start_matches('#').trim_start();
                l.starts_with(&format!("{key} =")) || l.starts_with(&format!("{key}="))
            }),
            "deploy/config.example.toml does not document `{key}`"
        );
    }
}

fn proxy(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_b2-proxy"));
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("runs");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn bad_log_filter_exits_2() {
    let (code, out) = proxy(&["--log", "foo=bar=baz", "--check-config"], &[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("--log") && out.contains("foo=bar=baz"),
        "{out}"
    );
}

#[test]
fn version_names_the_commit() {
    let (code, out) = proxy(&["--version"], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with(&format!("b2-proxy {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
}

#[test]
fn man_page_and_completions_come_from_the_cli() {
    let (code, page) = proxy(&["--generate", "man"], &[]);
    assert_eq!(code, 0, "{page}");
    assert!(
        page.contains(".TH b2-proxy 1") && page.contains("check\\-config"),
        "{page}"
    );
    assert!(page.contains("log\\-format"), "{page}");
    for shell in ["bash", "zsh", "fish"] {
        let (code, out) = proxy(&["--generate", shell], &[]);
        assert_eq!(code, 0, "{shell}: {out}");
        assert!(out.contains("check-config"), "{shell}: {out}");
    }
}

#[test]
fn json_logs_are_json_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    // A world-readable file with a secret: the proxy logs a warning, which is what we look at.
    std::fs::write(
        &path,
        "[b2]\nkey_id = \"kid\"\napplication_key = \"supersecretvalue\"\nbucket = \"plots\"\n",
    )
    .expect("write config");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = Command::new(env!("CARGO_BIN_EXE_b2-proxy"))
        .arg("--config")
        .arg(&path)
        .args(["--check-config", "--log-format", "json"])
        .env_remove("RUST_LOG")
        .env_remove("B2_APPLICATION_KEY_ID")
        .env_remove("B2_APPLICATION_KEY")
        .output()
        .expect("runs");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert!(!lines.is_empty(), "no log line");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(v["level"], "WARN", "{line}");
        assert!(
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("secrets")),
            "{line}"
        );
    }
}

#[test]
fn missing_ca_certificates_name_the_package() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[b2]\nkey_id = \"kid\"\napplication_key = \"secretvalue\"\nbucket = \"plots\"\n\
             [server]\nlisten = \"127.0.0.1:0\"\n[cache]\ndisk = 0\ndisk_dir = {:?}\n",
            dir.path().join("cache")
        ),
    )
    .expect("write config");
    let empty = dir.path().join("no-certs");
    std::fs::create_dir(&empty).expect("mkdir");
    let empty = empty.to_str().expect("utf-8");
    // rustls-native-certs reads only these when they are set: an empty store, as on a machine without
    // /etc/ssl/certs.
    let (code, out) = proxy(
        &["--config", path.to_str().expect("utf-8")],
        &[
            ("SSL_CERT_FILE", &format!("{empty}/none.pem")),
            ("SSL_CERT_DIR", empty),
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ca-certificates"), "{out}");
}
