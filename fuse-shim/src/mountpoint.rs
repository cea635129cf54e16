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
use tracing::{info, warn};

/// How long `stat` of the mount point may take before we call it hung (a live but stuck FUSE mount).
const STAT_TIMEOUT: Duration = Duration::from_secs(5);

/// One line of `/proc/self/mountinfo`, the fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Parse `/proc/self/mountinfo` (see proc(5)): `id parent maj:min root mount_point options [optional...] -
/// fstype source super_options`. Unparsable lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let mount_point = fields.get(4)?;
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(mount_point)),
                fstype: (*fields.get(sep + 1)?).to_owned(),
                source: unescape(fields.get(sep + 2)?),
            })
        })
        .collect()
}

/// Undo mountinfo's octal escapes (`\040` for space, `\011` tab, `\012` newline, `\134` backslash).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

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
/// stale b2fs mount on it is detached; a live one is an error (another shim is serving it).
pub fn prepare(path: &Path) -> anyhow::Result<PathBuf> {
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
    Ok(canonical)
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
    fn parses_mountinfo() {
        let text = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
95 22 0:50 / /mnt/my\\040plots rw,nosuid,nodev,relatime shared:50 - fuse.b2fs b2fs ro,user_id=0,group_id=0
96 22 0:51 / /mnt/root rw,nosuid,nodev - fuse b2fs ro,user_id=0
garbage line
";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].mount_point, PathBuf::from("/"));
        assert_eq!(m[0].fstype, "ext4");
        assert_eq!(m[1].mount_point, PathBuf::from("/mnt/my plots"));
        assert_eq!(m[1].fstype, "fuse.b2fs");
        assert_eq!(m[1].source, "b2fs");
        assert!(is_b2fs(&m[1]));
        assert!(is_b2fs(&m[2]));
        assert!(!is_b2fs(&m[0]));
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("a\\040b\\134c\\011"), "a b\\c\t");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
        assert_eq!(unescape("\\999"), "\\999");
    }

    #[test]
    fn missing_and_non_dir_mount_points_are_explained() {
        let dir = std::env::temp_dir().join(format!("b2fs-shim-test-{}", std::process::id()));
        let e = prepare(&dir.join("missing")).expect_err("missing");
        assert!(e.to_string().contains("does not exist"), "{e}");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("file");
        std::fs::write(&file, b"x").expect("write");
        let e = prepare(&file).expect_err("file");
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert_eq!(prepare(&dir).ok(), dir.canonicalize().ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
