//! The read-only FUSE filesystem: kernel requests in, tree lookups and proxy range reads out.
//!
//! Metadata calls (`lookup`, `getattr`, `readdir`, `open`, `statfs`) are answered at once from an in-memory
//! [`Tree`] snapshot; none of them touches the network, so 64 opens of a plot cost microseconds. A `read`
//! hands its reply object to a tokio task that does the HTTP range request, so fuser's request loop never
//! waits on the network and no read waits for another one; the kernel may keep as many reads in flight as
//! the harvester issues (see `init` for the kernel-side limits we raise).
//!
//! The tree is replaced wholesale by [`Refresher`] every `--attr-ttl`; open files and directory listings keep
//! the snapshot they started with, so a refresh never changes a file's size under an open handle.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, Notifier, OpenAccMode, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};
use tracing::{debug, info, warn};

use crate::client::{ClientError, ProxyClient};
use crate::metrics::{Metrics, errno_name};
use crate::tree::{self, FileInfo, InodeTable, Kind, Node, NodeKind, Tree, TreeBuilder};

/// Block size reported by `stat` (and used by `statfs`): a hint for tools like `cp` to read in large chunks.
pub const BLKSIZE: u32 = 128 * 1024;

/// Kernel limit of background (asynchronous) requests. The default of 12 caps a parallel Chia proof,
/// which has up to 32 reads in flight; the proxy handles far more.
const MAX_BACKGROUND: u16 = 64;
/// Background requests at which the kernel starts treating the filesystem as congested.
const CONGESTION_THRESHOLD: u16 = 48;

/// How reads reach the shim; see `--cache-mode` in `main.rs` for the user-facing explanation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheMode {
    /// FOPEN_DIRECT_IO: every read() reaches the proxy with its exact offset and size, no page cache.
    Direct,
    /// Kernel page cache (FOPEN_KEEP_CACHE): page-aligned reads, repeated reads served by the kernel.
    Page,
}

/// Fixed settings of the filesystem.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// How long the kernel may cache entries and attributes (also the tree refresh period).
    pub attr_ttl: Duration,
    pub cache_mode: CacheMode,
    /// Owner of every file and directory: the shim process's user.
    pub uid: u32,
    pub gid: u32,
}

/// What an open handle refers to.
#[derive(Debug, Clone)]
enum Handle {
    /// An open file: the snapshot of its metadata at open time.
    File { ino: u64, file: Arc<FileInfo> },
    /// An open directory: the tree snapshot it lists, so `readdir` offsets stay consistent across a refresh.
    Dir(Arc<Tree>),
}

/// State shared by the FUSE request loop, the read tasks and the refresher.
#[derive(Debug)]
pub struct Shared {
    tree: RwLock<Arc<Tree>>,
    client: ProxyClient,
    metrics: Arc<Metrics>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    cfg: FsConfig,
    read_log: FailureLog,
}

impl Shared {
    pub fn new(client: ProxyClient, metrics: Arc<Metrics>, cfg: FsConfig, tree: Tree) -> Self {
        Self {
            tree: RwLock::new(Arc::new(tree)),
            client,
            metrics,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            cfg,
            read_log: FailureLog::new("reads from the proxy"),
        }
    }

    /// The current tree snapshot.
    pub fn tree(&self) -> Arc<Tree> {
        // A poisoned lock only means a panic while swapping an Arc; the value is still a whole tree.
        match self.tree.read() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Swap in a new tree; returns the old one.
    fn install(&self, tree: Tree) -> Arc<Tree> {
        let new = Arc::new(tree);
        let mut guard = match self.tree.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        std::mem::replace(&mut *guard, new)
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Handle>> {
        match self.handles.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles().insert(fh, h);
        fh
    }

    fn handle(&self, fh: u64) -> Option<Handle> {
        self.handles().get(&fh).cloned()
    }

    /// The snapshot of an open handle on file `ino`: the one given, else any (a short scan; there are only
    /// as many handles as open files).
    fn open_snapshot(&self, ino: u64, fh: Option<u64>) -> Option<Arc<FileInfo>> {
        let handles = self.handles();
        let matches = |h: &Handle| match h {
            Handle::File { ino: i, file } if *i == ino => Some(file.clone()),
            _ => None,
        };
        fh.and_then(|fh| handles.get(&fh).and_then(matches))
            .or_else(|| handles.values().find_map(matches))
    }

    /// The tree an open directory lists (its snapshot from `opendir`), or the current one.
    fn dir_snapshot(&self, fh: u64) -> Arc<Tree> {
        match self.handles().get(&fh) {
            Some(Handle::Dir(t)) => t.clone(),
            _ => self.tree(),
        }
    }

    fn drop_handle(&self, fh: u64) {
        self.handles().remove(&fh);
    }

    fn dir_attr(&self, node: &Node) -> FileAttr {
        let subdirs = node.dir().map_or(0, |d| d.subdirs);
        FileAttr {
            ino: INodeNo(node.ino),
            size: 0,
            blocks: 0,
            atime: node.mtime,
            mtime: node.mtime,
            ctime: node.mtime,
            crtime: node.mtime,
            kind: FileType::Directory,
            perm: 0o555,
            nlink: 2 + subdirs,
            uid: self.cfg.uid,
            gid: self.cfg.gid,
            rdev: 0,
            blksize: BLKSIZE,
            flags: 0,
        }
    }

    fn file_attr(&self, ino: u64, file: &FileInfo) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: file.size,
            blocks: file.size.div_ceil(512),
            atime: file.mtime,
            mtime: file.mtime,
            ctime: file.mtime,
            crtime: file.mtime,
            kind: FileType::RegularFile,
            perm: 0o444,
            nlink: 1,
            uid: self.cfg.uid,
            gid: self.cfg.gid,
            rdev: 0,
            blksize: BLKSIZE,
            flags: 0,
        }
    }

    fn attr(&self, node: &Node) -> FileAttr {
        match &node.kind {
            NodeKind::File(f) => self.file_attr(node.ino, f),
            NodeKind::Dir(_) => self.dir_attr(node),
        }
    }

    /// Do one read against the proxy and answer the kernel. Runs in its own task.
    async fn read(self: Arc<Self>, file: Arc<FileInfo>, offset: u64, len: u32, reply: ReplyData) {
        let m = &self.metrics;
        m.reads_in_flight.inc();
        let started = Instant::now();
        let result = self.client.read_range(&file.name, offset, len).await;
        m.reads_in_flight.dec();
        m.reads.inc();
        match result {
            Ok(data) => {
                m.read_seconds.observe(started.elapsed().as_secs_f64());
                m.read_bytes.inc_by(data.len() as u64);
                self.read_log.success();
                reply.data(&data);
            }
            Err(e) => {
                let errno = e.errno();
                m.read_errors.with_label_values(&[errno_name(errno)]).inc();
                self.read_log.failure(&format!(
                    "read of {:?} at {offset} (+{len}) failed after {:?}: {e}",
                    file.name,
                    started.elapsed()
                ));
                reply.error(Errno::from_i32(errno));
            }
        }
    }
}

/// Logs a failing path without flooding the log: at most one warning per interval (the others go to debug and
/// are counted), and one line when it works again after a warning. A proof with the proxy down fails 66 reads
/// in a second; a flapping proxy must not write a line per read either.
#[derive(Debug)]
struct FailureLog {
    what: &'static str,
    failing: AtomicBool,
    suppressed: AtomicU64,
    last_warn: Mutex<Option<Instant>>,
}

impl FailureLog {
    const INTERVAL: Duration = Duration::from_secs(10);

    fn new(what: &'static str) -> Self {
        Self {
            what,
            failing: AtomicBool::new(false),
            suppressed: AtomicU64::new(0),
            last_warn: Mutex::new(None),
        }
    }

    fn failure(&self, msg: &str) {
        let mut last = match self.last_warn.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let due = last.is_none_or(|t| t.elapsed() >= Self::INTERVAL);
        if due {
            *last = Some(Instant::now());
            // Only a failure the user was told about gets a "works again" line later.
            self.failing.store(true, Ordering::Relaxed);
            let more = self.suppressed.swap(0, Ordering::Relaxed);
            if more > 0 {
                warn!("{msg} ({more} more failures not logged)");
            } else {
                warn!("{msg}");
            }
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            debug!("{msg}");
        }
    }

    fn success(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            let more = self.suppressed.swap(0, Ordering::Relaxed);
            if more > 0 {
                info!(
                    "{} work again ({more} more failures were not logged)",
                    self.what
                );
            } else {
                info!("{} work again", self.what);
            }
        }
    }
}

/// The filesystem fuser runs.
#[derive(Debug)]
pub struct B2Fs {
    shared: Arc<Shared>,
    rt: tokio::runtime::Handle,
    /// Whether the kernel understands FOPEN_NOFLUSH (ABI 7.35+): then close() costs no round trip.
    noflush: bool,
}

impl B2Fs {
    pub fn new(shared: Arc<Shared>, rt: tokio::runtime::Handle) -> Self {
        Self {
            shared,
            rt,
            noflush: false,
        }
    }

    /// The file an open handle refers to, or (for a handle we do not know) the file at `ino` now.
    fn open_file(&self, fh: u64, ino: u64) -> Option<Arc<FileInfo>> {
        match self.shared.handle(fh) {
            Some(Handle::File { file, .. }) => Some(file),
            _ => self.shared.tree().get(ino).and_then(|n| n.file().cloned()),
        }
    }
}

fn errno(code: i32) -> Errno {
    Errno::from_i32(code)
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
    }
}

impl Filesystem for B2Fs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Let a parallel proof's 32 reads (and readahead in page mode) be in flight at once.
        if let Err(nearest) = config.set_max_background(MAX_BACKGROUND) {
            warn!("kernel refused max_background={MAX_BACKGROUND}; nearest allowed {nearest}");
        }
        if let Err(nearest) = config.set_congestion_threshold(CONGESTION_THRESHOLD) {
            warn!("kernel refused congestion_threshold={CONGESTION_THRESHOLD}; nearest {nearest}");
        }
        // Optional capabilities, only when the kernel has them: concurrent lookups in one directory (64 opens
        // of the same plot), mmap of direct-I/O files (otherwise mmap of a plot fails in direct mode), and
        // READDIRPLUS on every readdir (not READDIRPLUS_AUTO, which uses it for the first batch only: `ls -l`
        // of a million files reads the whole directory before it stats anything, and would then LOOKUP each).
        let wanted = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP
            | InitFlags::FUSE_DO_READDIRPLUS;
        let available = config.capabilities() & wanted;
        if config.add_capabilities(available).is_err() {
            debug!("kernel refused optional capabilities {available:?}");
        }
        let abi = config.kernel_abi();
        self.noflush = (abi.0, abi.1) >= (7, 35);
        info!(
            "FUSE session ready: kernel ABI {}.{}, max_background {MAX_BACKGROUND}, cache mode {:?}",
            abi.0, abi.1, self.shared.cfg.cache_mode
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.shared.metrics.metadata_op("lookup");
        let tree = self.shared.tree();
        let Some(name) = name.to_str() else {
            // B2 names are UTF-8; anything else cannot exist here.
            return reply.error(Errno::ENOENT);
        };
        match tree.lookup(parent.0, name) {
            Ok(node) => reply.entry(
                &self.shared.cfg.attr_ttl,
                &self.shared.attr(node),
                Generation(0),
            ),
            Err(code) => reply.error(errno(code)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.shared.metrics.metadata_op("getattr");
        let ttl = &self.shared.cfg.attr_ttl;
        if let Some(node) = self.shared.tree().get(ino.0) {
            return reply.attr(ttl, &self.shared.attr(node));
        }
        // A file that vanished from the listing while still open: answer from an open handle's snapshot, so
        // fstat() on it keeps working until it is closed.
        if let Some(file) = self.shared.open_snapshot(ino.0, fh.map(|f| f.0)) {
            return reply.attr(ttl, &self.shared.file_attr(ino.0, &file));
        }
        reply.error(Errno::ENOENT)
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY
            || flags.0 & (libc::O_TRUNC | libc::O_APPEND) != 0
        {
            return reply.error(Errno::EROFS);
        }
        let tree = self.shared.tree();
        let Some(node) = tree.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let Some(file) = node.file() else {
            return reply.error(Errno::EISDIR);
        };
        self.shared.metrics.opens.inc();
        let fh = self.shared.add_handle(Handle::File {
            ino: ino.0,
            file: file.clone(),
        });
        let mut open_flags = match self.shared.cfg.cache_mode {
            CacheMode::Direct => FopenFlags::FOPEN_DIRECT_IO,
            // Keep pages across opens: Chia reopens the plot for every lookup and reads the same header.
            // The refresher invalidates them if the file is replaced.
            CacheMode::Page => FopenFlags::FOPEN_KEEP_CACHE,
        };
        if self.noflush {
            open_flags |= FopenFlags::FOPEN_NOFLUSH;
        }
        reply.opened(FileHandle(fh), open_flags)
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(file) = self.open_file(fh.0, ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        // At or after EOF: empty, without asking anyone. Otherwise clamp the size to EOF.
        if offset >= file.size || size == 0 {
            return reply.data(&[]);
        }
        let len = u64::from(size).min(file.size - offset) as u32;
        let shared = self.shared.clone();
        // The task owns the reply. If it were ever dropped unanswered (panic, runtime shutdown), fuser
        // answers EIO on drop, so the caller cannot hang.
        self.rt.spawn(shared.read(file, offset, len, reply));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever written, so there is nothing to flush.
        reply.ok()
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.shared.drop_handle(fh.0);
        reply.ok()
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let tree = self.shared.tree();
        match tree.get(ino.0) {
            Some(node) if node.is_dir() => {
                let fh = self.shared.add_handle(Handle::Dir(tree));
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Some(_) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.shared.metrics.metadata_op("readdir");
        let tree = self.shared.dir_snapshot(fh.0);
        // Offsets are the position after an entry: the kernel passes back the last one it got.
        let entries = match tree.dir_entries_from(ino.0, offset) {
            Ok(e) => e,
            Err(code) => return reply.error(errno(code)),
        };
        for (pos, child, kind, name) in entries {
            if reply.add(INodeNo(child), pos + 1, file_type(kind), name) {
                break;
            }
        }
        reply.ok()
    }

    /// `readdir` with each entry's attributes (FUSE_DO_READDIRPLUS, asked for in `init`): the kernel caches
    /// the entries and attributes for `--attr-ttl`, so `ls -l` or a harvester's plot scan that stats every
    /// file after listing the directory costs no LOOKUP or GETATTR per file.
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.shared.metrics.metadata_op("readdirplus");
        let tree = self.shared.dir_snapshot(fh.0);
        let entries = match tree.dir_entries_from(ino.0, offset) {
            Ok(e) => e,
            Err(code) => return reply.error(errno(code)),
        };
        let ttl = &self.shared.cfg.attr_ttl;
        for (pos, child, _, name) in entries {
            let Some(node) = tree.get(child) else {
                continue;
            };
            let attr = self.shared.attr(node);
            if reply.add(INodeNo(child), pos + 1, name, ttl, &attr, Generation(0)) {
                break;
            }
        }
        reply.ok()
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.shared.drop_handle(fh.0);
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let tree = self.shared.tree();
        let blocks = tree.total_bytes().div_ceil(u64::from(BLKSIZE));
        // Full and read-only: no free blocks or inodes.
        reply.statfs(
            blocks,
            0,
            0,
            tree.inode_count(),
            0,
            BLKSIZE,
            tree::NAME_MAX as u32,
            BLKSIZE,
        )
    }

    // Extended attributes and access(): ENOSYS makes the kernel stop asking (and, for access, rely on
    // default_permissions), which is cheaper than answering each time.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS)
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS)
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS)
    }

    // Nothing that would change the filesystem is implemented: the mount is `ro`, so the kernel answers
    // EROFS for those before they get here.
}

/// Keeps the tree in step with the proxy's file list.
#[derive(Debug)]
pub struct Refresher {
    shared: Arc<Shared>,
    inodes: InodeTable,
    /// Set once mounted: lets a refresh tell the kernel about removed or replaced files right away instead of
    /// after the entry/attribute TTL.
    notifier: Option<Notifier>,
    /// Mtime of a directory with no files (the root of an empty listing).
    started: SystemTime,
    /// Whether a listing has succeeded since start.
    loaded: bool,
    log: FailureLog,
}

impl Refresher {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            inodes: InodeTable::new(),
            notifier: None,
            started: SystemTime::now(),
            loaded: false,
            log: FailureLog::new("file list refreshes"),
        }
    }

    pub fn set_notifier(&mut self, notifier: Notifier) {
        self.notifier = Some(notifier);
    }

    /// Fetch the list and swap in the new tree. On failure the previous tree stays.
    pub async fn refresh_once(&mut self) -> Result<(), ClientError> {
        let m = &self.shared.metrics;
        // The tree is built as the pages arrive, sharing every unchanged file with the current tree: the
        // refresh holds one page and the new tree's index beside the current tree, never the whole list.
        // Readers keep using the current tree until the new one is swapped in.
        let old = self.shared.tree();
        let mut builder = TreeBuilder::new(&mut self.inodes, Some(&old), self.started);
        let listed = self
            .shared
            .client
            .list_files_each(|f| builder.add(f.name, f.size, f.mtime, f.id))
            .await;
        if let Err(e) = listed {
            m.tree_refreshes.with_label_values(&["error"]).inc();
            return Err(e);
        }
        let (tree, skipped) = builder.finish();
        for s in &skipped {
            // Logged at every refresh on purpose: a plot the harvester cannot see is worth noticing.
            warn!("not shown in the mount: {:?} ({:?})", s.name, s.reason);
        }
        let count = tree.file_count();
        let bytes = tree.total_bytes();
        self.shared.install(tree);
        let new = self.shared.tree();
        let changes = tree::diff(&old, &new);
        drop((old, new));
        m.tree_refreshes.with_label_values(&["ok"]).inc();
        m.tree_files.set(i64::try_from(count).unwrap_or(i64::MAX));
        if let Ok(d) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
            m.tree_last_success
                .set(i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        }
        if !self.loaded || !changes.is_empty() {
            info!(
                "file list: {count} files, {:.1} GiB ({} new inodes, {} entries removed, {} files changed)",
                bytes as f64 / (1u64 << 30) as f64,
                changes.added,
                changes.removed.len(),
                changes.changed.len()
            );
        } else {
            debug!("file list unchanged: {count} files");
        }
        self.loaded = true;
        self.log.success();
        if let Some(notifier) = &self.notifier
            && (!changes.removed.is_empty() || !changes.changed.is_empty())
        {
            let notifier = notifier.clone();
            // Notifications write to /dev/fuse and may wait on kernel locks: keep them off the async workers.
            let _ = tokio::task::spawn_blocking(move || {
                for (parent, name) in changes.removed {
                    if let Err(e) = notifier.inval_entry(INodeNo(parent), OsStr::new(&name)) {
                        // ENOENT: the kernel had not cached it; nothing to do.
                        debug!("inval_entry({parent}, {name:?}): {e}");
                    }
                }
                for ino in changes.changed {
                    // Drop cached attributes and all cached pages of a replaced file.
                    if let Err(e) = notifier.inval_inode(INodeNo(ino), 0, 0) {
                        debug!("inval_inode({ino}): {e}");
                    }
                }
            })
            .await;
        }
        Ok(())
    }

    /// Refresh forever: every `interval`, or with a short backoff until the first listing succeeded (so plots
    /// appear soon after a proxy that was down at start comes up), and at once when `wake` is notified (SIGHUP).
    pub async fn run(mut self, interval: Duration, wake: Arc<tokio::sync::Notify>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let wait = if self.loaded {
                interval
            } else {
                let w = backoff.min(interval);
                backoff = (backoff * 2).min(Duration::from_secs(30));
                w
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = wake.notified() => info!("refreshing the file list now (SIGHUP)"),
            }
            if let Err(e) = self.refresh_once().await {
                let keep = if self.loaded {
                    "keeping the previous file list"
                } else {
                    "the mount stays empty until it succeeds"
                };
                self.log
                    .failure(&format!("refreshing the file list failed: {e}; {keep}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ClientConfig;

    fn shared(files: Vec<FileInfo>) -> Shared {
        let client = ProxyClient::new(&ClientConfig {
            base_url: "http://127.0.0.1:1".into(),
            token: None,
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
        })
        .expect("client");
        let (tree, _) = Tree::build(files, &mut InodeTable::new(), SystemTime::UNIX_EPOCH);
        Shared::new(
            client,
            Arc::new(Metrics::new().expect("metrics")),
            FsConfig {
                attr_ttl: Duration::from_secs(60),
                cache_mode: CacheMode::Direct,
                uid: 1234,
                gid: 5678,
            },
            tree,
        )
    }

    fn file(name: &str, size: u64) -> FileInfo {
        FileInfo {
            name: name.into(),
            size,
            mtime: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            id: "id".into(),
        }
    }

    #[test]
    fn attributes_follow_the_contract() {
        let s = shared(vec![file("d/a.plot", 1000), file("d/e/b.plot", 0)]);
        let tree = s.tree();
        let d = tree.lookup(tree::ROOT_INO, "d").expect("d");
        let a = tree.lookup(d.ino, "a.plot").expect("a");

        let fa = s.attr(a);
        assert_eq!(fa.kind, FileType::RegularFile);
        assert_eq!(fa.perm, 0o444);
        assert_eq!((fa.uid, fa.gid), (1234, 5678));
        assert_eq!(fa.size, 1000);
        assert_eq!(fa.blocks, 2, "512-byte blocks, rounded up");
        assert_eq!(fa.blksize, 128 * 1024);
        assert_eq!(fa.mtime, a.mtime);
        assert_eq!(fa.ino, INodeNo(a.ino));

        let da = s.attr(d);
        assert_eq!(da.kind, FileType::Directory);
        assert_eq!(da.perm, 0o555);
        assert_eq!(da.nlink, 3, "2 + one subdirectory");
    }

    #[test]
    fn open_handles_keep_their_snapshot() {
        let s = shared(vec![file("a.plot", 10)]);
        let tree = s.tree();
        let a = tree.lookup(tree::ROOT_INO, "a.plot").expect("a");
        let f = a.file().expect("file").clone();
        let fh = s.add_handle(Handle::File {
            ino: a.ino,
            file: f,
        });
        // The file disappears from the listing while open.
        s.install(Tree::empty(SystemTime::UNIX_EPOCH));
        assert!(s.tree().get(a.ino).is_none());
        assert_eq!(s.open_snapshot(a.ino, Some(fh)).map(|f| f.size), Some(10));
        assert_eq!(s.open_snapshot(a.ino, None).map(|f| f.size), Some(10));
        assert!(s.open_snapshot(a.ino + 100, None).is_none());
        s.drop_handle(fh);
        assert!(s.open_snapshot(a.ino, None).is_none());
    }
}
