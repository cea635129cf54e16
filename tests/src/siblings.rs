//! Building the workspace binaries a tool spawns (b2-proxy, b2fs-shim, b2fs-pos2), next to the running tool.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, ensure};

/// When the running tool was started by cargo (`CARGO` is set), runs `cargo build` for the `(package, binary)`
/// pairs with the profile the tool itself was built with, so it never spawns stale binaries (a no-op when they
/// are fresh). Returns whether a build ran.
pub fn build(targets: &[(&str, &str)]) -> anyhow::Result<bool> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(false);
    };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    if !manifest.is_file() {
        return Ok(false);
    }
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let mut dir = exe.parent().context("executable has no directory")?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().context("deps has no parent")?;
    }
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_owned();
    let mut cmd = Command::new(cargo);
    cmd.arg("build").arg("--manifest-path").arg(&manifest);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    for (package, bin) in targets {
        cmd.args(["-p", package, "--bin", bin]);
    }
    let names: Vec<&str> = targets.iter().map(|(_, b)| *b).collect();
    eprintln!("building {} ({profile} profile)", names.join(", "));
    let status = cmd
        .stdout(Stdio::null())
        .status()
        .context("cannot run cargo build")?;
    ensure!(
        status.success(),
        "cargo build of {} failed ({status})",
        names.join(", ")
    );
    Ok(true)
}
