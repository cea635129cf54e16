//! Checks and repairs of the mount point before mounting, and the lazy unmount used at shutdown.
//!
//! A shim that crashed (or was killed with SIGKILL) leaves its mount behind with no process serving it:
//! every access then fails with ENOTCONN ("Transport endpoint is not connected"), and mounting on top of it
//! fails the same way. We detect that at start, say what happened, and detach the dead mount with
//! `fusermount3 -u -z` (or `umount2(MNT_DETACH)` as root) before mounting again.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};
use b2fs_shim::mountinfo::{MountEntry, parse_mountinfo};
use tracing::{info, warn};

/// How long `stat` of the mount point may take before we call it hung (a live but stuck FUSE mount).
const STAT_TIMEOUT: Duration = Duration::from_secs(5);

/// `stat` in a helper thread, so a hung FUSE mount at the mount point cannot hang our start.
fn stat_bounded(path: &Path) -> Option<io::Result<std::fs::Metadata>> {
    let (tx, rx) = mpsc::channel();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        // statfs first: the kernel answers stat of a FUSE root from its attribute cache even after the daemon
        // died, but statfs always goes to the daemon, so a dead mount shows as ENOTCONN here.
        let _ = tx.send(statfs(&p).and_then(|()| std::fs::metadata(&p)));
    });
    rx.recv_timeout(STAT_TIMEOUT).ok()
}

fn statfs(path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: `c` is a valid NUL-terminated path and `buf` a properly sized, writable statfs struct that
    // lives across the call; statfs does not retain either pointer.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statfs(c.as_ptr(), &mut buf) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Make `path` ready to mount on and return it as an absolute path: it must be an existing directory; a
/// stale b2fs mount on it is detached; a live one is an error (another shim is serving it). A directory with
/// entries is refused unless `allow_non_empty` (the mount would hide them, like rclone and mountpoint-s3 do).
pub fn prepare(path: &Path, allow_non_empty: bool) -> anyhow::Result<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .context("cannot read the current directory")?
            .join(path)
    };
    let shown = abs.display();
    let meta = match stat_bounded(&abs) {
        None => bail!(
            "the mount point {shown} does not answer within {STAT_TIMEOUT:?}: a FUSE filesystem mounted there \
             seems hung. Stop the process serving it, or detach it with `fusermount3 -u -z {shown}`"
        ),
        // ECONNABORTED: the first access after the serving process died; ENOTCONN afterwards.
        Some(Err(e)) if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)) => {
            warn!(
                "the mount point {shown} is a stale FUSE mount (\"Transport endpoint is not connected\"): \
                 the process that served it (probably an earlier b2fs-shim) has died. Detaching it with \
                 `fusermount3 -u -z {shown}`"
            );
            lazy_unmount(&abs).with_context(|| {
                format!("cannot detach the stale mount at {shown}; run `fusermount3 -u -z {shown}` as root")
            })?;
            match stat_bounded(&abs) {
                Some(Ok(m)) => {
                    info!("stale mount at {shown} detached");
                    m
                }
                Some(Err(e)) => {
                    return Err(e).with_context(|| {
                        format!("the mount point {shown} is still unusable after detaching the stale mount")
                    });
                }
                None => bail!("the mount point {shown} hangs after detaching the stale mount"),
            }
        }
        Some(Err(e)) if e.kind() == io::ErrorKind::NotFound => {
            bail!("the mount point {shown} does not exist; create it first (mkdir -p {shown})")
        }
        Some(Err(e)) => {
            return Err(e).with_context(|| format!("cannot use the mount point {shown}"));
        }
        Some(Ok(m)) => m,
    };
    if !meta.is_dir() {
        bail!("the mount point {shown} is not a directory");
    }
    let canonical = abs
        .canonicalize()
        .with_context(|| format!("cannot resolve the mount point {shown}"))?;
    if let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo")
        && let Some(live) = parse_mountinfo(&text)
            .into_iter()
            .find(|m| m.mount_point == canonical && is_b2fs(m))
    {
        bail!(
            "{} is already mounted ({} {}): another b2fs-shim is serving it. Stop that one first, or unmount \
             with `fusermount3 -u {}`",
            canonical.display(),
            live.source,
            live.fstype,
            canonical.display()
        );
    }
    if !allow_non_empty {
        let mut entries = std::fs::read_dir(&canonical)
            .with_context(|| format!("cannot list the mount point {}", canonical.display()))?;
        if let Some(first) = entries.next() {
            let example = first
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .unwrap_or_else(|_| "?".to_owned());
            bail!(
                "the mount point {} is not empty (it holds {example:?}{}): the mount would hide its contents. \
                 Mount on an empty directory, or pass --allow-non-empty to mount over it anyway",
                canonical.display(),
                if entries.next().is_some() {
                    " and more"
                } else {
                    ""
                }
            );
        }
    }
    Ok(canonical)
}

/// The `f_type` statfs reports for a FUSE filesystem.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Waits until the FUSE filesystem at `path` answers (a statfs reaches our request loop and reports FUSE), for
/// at most `limit`. This is what "ready" means to systemd: a harvester started after us finds the mount.
pub fn wait_answering(path: &Path, limit: Duration) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .context("mount point path contains a NUL byte")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + limit;
        loop {
            // SAFETY: `c` is a valid NUL-terminated path and `buf` a writable statfs struct that outlives the
            // call; statfs does not retain either pointer.
            let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
            let r = unsafe { libc::statfs(c.as_ptr(), &mut buf) };
            #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
            let result = if r != 0 {
                Err(io::Error::last_os_error().to_string())
            } else if buf.f_type as i64 == FUSE_SUPER_MAGIC {
                Ok(())
            } else {
                Err(format!(
                    "not a FUSE filesystem yet (f_type {:#x})",
                    buf.f_type
                ))
            };
            if result.is_ok() || std::time::Instant::now() >= deadline {
                let _ = tx.send(result);
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    match rx.recv_timeout(limit + Duration::from_secs(1)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => bail!("the mount at {} does not answer: {e}", path.display()),
        Err(_) => bail!(
            "the mount at {} does not answer within {limit:?} (statfs hangs)",
            path.display()
        ),
    }
}

/// Whether a mount is ours: fuser mounts with source `b2fs` and type `fuse` (as root) or `fuse.b2fs` (via
/// fusermount3).
fn is_b2fs(m: &MountEntry) -> bool {
    m.fstype.starts_with("fuse") && (m.source == "b2fs" || m.fstype == "fuse.b2fs")
}

/// Detach the mount at `path` even if files are open on it (`fusermount3 -u -z`; as root, fall back to
/// `umount2(MNT_DETACH)` if fusermount3 is missing).
pub fn lazy_unmount(path: &Path) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for bin in ["fusermount3", "fusermount"] {
        match Command::new(bin)
            .arg("-u")
            .arg("-z")
            .arg("--")
            .arg(path)
            .output()
        {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => errors.push(format!(
                "{bin}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                errors.push(format!("{bin}: not installed"))
            }
            Err(e) => errors.push(format!("{bin}: {e}")),
        }
    }
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .context("mount point path contains a NUL byte")?;
    // SAFETY: umount2 only reads the NUL-terminated path, which outlives the call.
    let rc = unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        return Ok(());
    }
    errors.push(format!(
        "umount2(MNT_DETACH): {}",
        io::Error::last_os_error()
    ));
    bail!("{}", errors.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_b2fs_mounts() {
        let m = parse_mountinfo(
            "95 22 0:50 / /mnt/p rw - fuse.b2fs b2fs ro\n96 22 0:51 / /mnt/r rw - fuse b2fs ro\n\
             22 1 8:1 / / rw - ext4 /dev/sda1 rw\n",
        );
        assert!(is_b2fs(&m[0]));
        assert!(is_b2fs(&m[1]));
        assert!(!is_b2fs(&m[2]));
    }

    #[test]
    fn missing_and_non_dir_mount_points_are_explained() {
        let dir = std::env::temp_dir().join(format!("b2fs-shim-test-{}", std::process::id()));
        let e = prepare(&dir.join("missing"), false).expect_err("missing");
        assert!(e.to_string().contains("does not exist"), "{e}");
        std::fs::create_dir_all(dir.join("empty")).expect("mkdir");
        let file = dir.join("file");
        std::fs::write(&file, b"x").expect("write");
        let e = prepare(&file, false).expect_err("file");
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert_eq!(
            prepare(&dir.join("empty"), false).ok(),
            dir.join("empty").canonicalize().ok()
        );
        // `dir` holds `file` and `empty`: refused unless allowed.
        let e = prepare(&dir, false).expect_err("non-empty");
        assert!(e.to_string().contains("--allow-non-empty"), "{e}");
        assert_eq!(prepare(&dir, true).ok(), dir.canonicalize().ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
