//! A local directory as the upstream: every regular file below `dir` (recursively) is a file of the "bucket",
//! named by its relative path with `/`. Lets users try the proxy and shim without a bucket, and lets the
//! proxy's own tests run without the emulator.
//!
//! A file's id is derived from its size and modification time, so rewriting a file gives it a new id and the
//! cache never serves the old bytes for it.

use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;

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
        "local_{}_{}_{}_{}",
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    )
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<ObjectInfo>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if meta.is_file() {
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let Some(name) = rel.to_str() else {
                tracing::warn!(path = %path.display(), "skipping a file whose name is not UTF-8");
                continue;
            };
            out.push(ObjectInfo {
                name: name.to_string(),
                id: file_id(&meta).into(),
                size: meta.size(),
                modified_ms: meta.mtime() * 1000 + meta.mtime_nsec() / 1_000_000,
            });
        }
    }
    Ok(())
}

impl ObjectSource for LocalSource {
    fn list(&self) -> BoxFuture<'_, Result<Vec<ObjectInfo>, UpstreamError>> {
        let root = self.root.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                walk(&root, &root, &mut out).map_err(|e| UpstreamError::io(root.display(), e))?;
                out.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(out)
            })
            .await
            .map_err(|e| UpstreamError::io("a blocking task", std::io::Error::other(e)))?
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
