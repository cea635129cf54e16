//! A local directory as the upstream: every regular file below `dir` (recursively) is a file of the "bucket",
//! named by its relative path with `/`. Lets users try the proxy and shim without a bucket, and lets the
//! proxy's own tests run without the emulator.
//!
//! A file's id is derived from its inode, size, modification time and change time (ctime). ctime matters: an
//! in-place overwrite that keeps the size and restores the mtime (`touch -r`, `cp --preserve`, rsync) still
//! moves ctime, which no user call can set back. A read checks the id before and after reading, so bytes that
//! raced with an overwrite are refused (503 "file changed") instead of being served or cached under the old id;
//! hashing the content would cost a read of every file at every catalog refresh, so it is not done.

use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::{ObjectInfo, ObjectSource, SourceHealth, UpstreamError};

pub struct LocalSource {
    root: PathBuf,
}

impl LocalSource {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }
}

fn file_id(meta: &std::fs::Metadata) -> String {
    format!(
        "local_{}_{}_{}_{}_{}_{}",
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    )
}

/// Files handed from the directory walk to the listing's caller at a time.
const LOCAL_PAGE: usize = 1024;

/// Walks `dir`, sending the files found in pages of `LOCAL_PAGE` over `tx` (bounded: the walk waits while the
/// caller is behind). A closed channel (the listing was dropped) ends the walk.
fn walk(
    root: &Path,
    dir: &Path,
    page: &mut Vec<ObjectInfo>,
    tx: &mpsc::Sender<Vec<ObjectInfo>>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            walk(root, &path, page, tx)?;
        } else if meta.is_file() {
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let Some(name) = rel.to_str() else {
                tracing::warn!(path = %path.display(), "skipping a file whose name is not UTF-8");
                continue;
            };
            page.push(ObjectInfo {
                name: name.to_string(),
                id: file_id(&meta).into(),
                size: meta.size(),
                modified_ms: meta.mtime() * 1000 + meta.mtime_nsec() / 1_000_000,
            });
            if page.len() >= LOCAL_PAGE {
                send_page(page, tx)?;
            }
        }
    }
    Ok(())
}

fn send_page(
    page: &mut Vec<ObjectInfo>,
    tx: &mpsc::Sender<Vec<ObjectInfo>>,
) -> std::io::Result<()> {
    tx.blocking_send(std::mem::take(page))
        .map_err(|_| std::io::Error::other("the listing was cancelled"))
}

impl ObjectSource for LocalSource {
    fn list_into<'a>(
        &'a self,
        each: &'a mut (dyn FnMut(ObjectInfo) + Send),
    ) -> BoxFuture<'a, Result<usize, UpstreamError>> {
        let root = self.root.clone();
        async move {
            let (tx, mut rx) = mpsc::channel(2);
            let walker = tokio::task::spawn_blocking(move || {
                let mut page = Vec::with_capacity(LOCAL_PAGE);
                walk(&root, &root, &mut page, &tx)
                    .and_then(|()| send_page(&mut page, &tx))
                    .map_err(|e| UpstreamError::io(root.display(), e))
            });
            let mut n = 0;
            while let Some(page) = rx.recv().await {
                n += page.len();
                page.into_iter().for_each(&mut *each);
            }
            // The channel closes when the walk ends, so its result is there by now.
            walker
                .await
                .map_err(|e| UpstreamError::io("a blocking task", std::io::Error::other(e)))??;
            Ok(n)
        }
        .boxed()
    }

    fn read(
        &self,
        obj: &ObjectInfo,
        range: Range<u64>,
    ) -> BoxFuture<'_, Result<Bytes, UpstreamError>> {
        let path = self.root.join(&obj.name);
        let obj = obj.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let io = |e: std::io::Error| UpstreamError::io(path.display(), e);
                let file = std::fs::File::open(&path).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => UpstreamError::NotFound(obj.name.clone()),
                    _ => io(e),
                })?;
                let meta = file.metadata().map_err(io)?;
                if *file_id(&meta) != *obj.id {
                    return Err(UpstreamError::Changed(format!("{} was modified", obj.name)));
                }
                let len = usize::try_from(range.end - range.start)
                    .map_err(|_| UpstreamError::Config("range larger than memory".into()))?;
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, range.start).map_err(io)?;
                // A write that overlapped the read has moved ctime by now (it is set before the data is copied).
                let after = file.metadata().map_err(io)?;
                if *file_id(&after) != *obj.id {
                    return Err(UpstreamError::Changed(format!(
                        "{} was modified while being read",
                        obj.name
                    )));
                }
                Ok(Bytes::from(buf))
            })
            .await
            .map_err(|e| UpstreamError::io("a blocking task", std::io::Error::other(e)))?
        }
        .boxed()
    }

    fn health(&self) -> SourceHealth {
        SourceHealth {
            authorized: true,
            last_error: None,
        }
    }

    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[tokio::test]
    async fn same_size_overwrite_with_mtime_restored_is_a_new_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.plot");
        std::fs::write(&path, vec![1u8; 8192]).expect("write");
        let mtime = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(mtime))
            .expect("set mtime");
        let src = LocalSource::new(dir.path().to_path_buf());
        let before = src.list().await.expect("list").remove(0);
        assert_eq!(
            &src.read(&before, 0..4096).await.expect("read")[..],
            &[1u8; 4096][..]
        );
        // ctime has a coarse clock: make sure the overwrite lands in a later tick.
        std::thread::sleep(Duration::from_millis(20));
        // In place, same size, mtime put back: only ctime tells.
        {
            let f = std::fs::File::options()
                .write(true)
                .open(&path)
                .expect("open");
            f.write_all_at(&[2u8; 8192], 0).expect("overwrite");
            f.set_modified(mtime).expect("restore mtime");
        }
        let after = src.list().await.expect("list").remove(0);
        assert_eq!(after.modified_ms, before.modified_ms, "mtime restored");
        assert_ne!(after.id, before.id, "the overwrite must give a new id");
        assert!(matches!(
            src.read(&before, 0..4096).await,
            Err(UpstreamError::Changed(_))
        ));
        assert_eq!(
            &src.read(&after, 0..4096).await.expect("read")[..],
            &[2u8; 4096][..]
        );
    }
}
