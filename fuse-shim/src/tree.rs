//! The directory tree the mount shows, built from the proxy's flat file list.
//!
//! B2 has no directories: a name like `farm1/plot-k32-abc.plot` is one object. This module turns the flat list
//! from `GET /files` into a tree of directories and files with inode numbers, and it is pure (no I/O, no
//! clock), so it is unit-tested on its own.
//!
//! Inode numbers are handed out by an [`InodeTable`] that outlives every tree: it remembers the number of
//! every (path, kind) it has ever seen, so a refresh never renumbers a file. The kernel caches inode numbers
//! in its dentries and open files, and a harvester may hold a plot open across many refreshes; a stable
//! number for a name means those keep working and no generation numbers are needed.
//!
//! Sized for a million files (issue 16): each name is stored once, in an `Arc<str>` the inode table and the
//! file share; nodes live in a vector indexed by inode number; a directory's children are a sorted vector of
//! inode numbers (names are looked up by binary search and `readdir` resumes at an offset by indexing). A
//! [`TreeBuilder`] takes the listing one entry at a time, so the shim never holds the whole list beside the
//! tree, and it reuses the previous tree's [`FileInfo`] of every unchanged file, so a refresh adds only the
//! new tree's index (about 60 bytes a file) to the memory in use, not a second copy of every name.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

/// Inode number of the mount's root directory (FUSE fixes it at 1).
pub const ROOT_INO: u64 = 1;

/// The longest name of one path segment the kernel accepts (`NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// One file as the proxy lists it, with its modification time already parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Full B2 name, e.g. `farm1/plot.plot`; this is what the shim asks the proxy for. Shared with the
    /// [`InodeTable`], so a name is held once however many trees and handles refer to it.
    pub name: Arc<str>,
    /// Size in bytes.
    pub size: u64,
    /// Modification time (the upload time in B2).
    pub mtime: SystemTime,
    /// B2 file id; it changes when a name is uploaded again, which tells a refresh the content changed.
    pub id: Box<str>,
}

impl FileInfo {
    /// The last segment of the name: what the file is called in its directory.
    pub fn leaf(&self) -> &str {
        leaf_of(&self.name)
    }
}

fn leaf_of(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, l)| l)
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

/// Whether a node is a file or a directory; files and directories are numbered apart, so that a name that
/// turns from a file into a directory (or back) gets a new number and the kernel never sees one inode change
/// its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
}

/// A directory's contents.
#[derive(Debug, Clone)]
pub struct DirNode {
    /// Full path ("" for the root), shared with the [`InodeTable`].
    pub path: Arc<str>,
    /// Children's inode numbers, sorted by name (so `readdir` order and offsets are deterministic, and a name
    /// is found by binary search).
    pub children: Vec<u64>,
    /// How many children are directories (for `nlink`).
    pub subdirs: u32,
}

/// What a node is.
#[derive(Debug, Clone)]
pub enum NodeKind {
    /// A directory (boxed: there are few, and a file node stays small).
    Dir(Box<DirNode>),
    /// A file; shared with open file handles, which keep the snapshot they opened, and with the next tree when
    /// it did not change.
    File(Arc<FileInfo>),
}

/// One inode of the tree.
#[derive(Debug, Clone)]
pub struct Node {
    pub ino: u64,
    /// The parent directory (the root is its own parent, as `..` of `/` is `/`).
    pub parent: u64,
    /// Modification time: the file's, or for a directory the newest of everything below it.
    pub mtime: SystemTime,
    pub kind: NodeKind,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Dir(_))
    }

    /// The file behind this node, if it is one.
    pub fn file(&self) -> Option<&Arc<FileInfo>> {
        match &self.kind {
            NodeKind::File(f) => Some(f),
            NodeKind::Dir(_) => None,
        }
    }

    /// The directory behind this node, if it is one.
    pub fn dir(&self) -> Option<&DirNode> {
        match &self.kind {
            NodeKind::Dir(d) => Some(d),
            NodeKind::File(_) => None,
        }
    }

    /// The node's name in its parent directory ("" for the root).
    pub fn leaf(&self) -> &str {
        match &self.kind {
            NodeKind::File(f) => f.leaf(),
            NodeKind::Dir(d) => leaf_of(&d.path),
        }
    }

    fn kind(&self) -> Kind {
        if self.is_dir() { Kind::Dir } else { Kind::File }
    }
}

/// Hands out inode numbers, stable for a (path, kind) for the life of the process.
///
/// Numbers of names that disappear are kept (not reused): a few bytes per name ever seen is a small price for
/// never handing a cached inode number to a different file. The names are the same `Arc<str>` the trees'
/// files and directories hold.
#[derive(Debug)]
pub struct InodeTable {
    files: HashMap<Arc<str>, u64>,
    dirs: HashMap<Arc<str>, u64>,
    next: u64,
}

impl Default for InodeTable {
    fn default() -> Self {
        Self::new()
    }
}

impl InodeTable {
    pub fn new() -> Self {
        Self {
            files: HashMap::new(),
            dirs: HashMap::new(),
            next: ROOT_INO + 1,
        }
    }

    /// The number of `path` as a `kind`, and the shared copy of the path.
    fn get_or_assign(&mut self, path: &str, kind: Kind) -> (Arc<str>, u64) {
        let map = match kind {
            Kind::File => &mut self.files,
            Kind::Dir => &mut self.dirs,
        };
        if let Some((name, &ino)) = map.get_key_value(path) {
            return (name.clone(), ino);
        }
        let ino = self.next;
        self.next += 1;
        let name: Arc<str> = Arc::from(path);
        map.insert(name.clone(), ino);
        (name, ino)
    }

    /// One more than the highest number handed out so far.
    fn end(&self) -> u64 {
        self.next
    }
}

/// Why a name from the proxy is not shown in the mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// Empty segment (`a//b`, `/a`, `a/`), `.` or `..`, a NUL byte, or a segment longer than `NAME_MAX`.
    InvalidName,
    /// The same name is listed twice (the first one is kept).
    Duplicate,
    /// The name is a file and also a directory (`a` and `a/b` both exist); the directory wins because it
    /// holds more files.
    FileIsAlsoDir,
}

/// A name that was left out of the tree, and why; the caller logs these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub name: String,
    pub reason: SkipReason,
}

/// An immutable snapshot of the tree. A refresh builds a new one and swaps it in; readers hold an `Arc`.
#[derive(Debug, Clone)]
pub struct Tree {
    /// Indexed by inode number; `None` for numbers not in this tree (0, and names gone or not yet seen).
    nodes: Vec<Option<Node>>,
    file_count: u64,
    total_bytes: u64,
    inode_count: u64,
}

/// Whether a B2 name can be shown as a path.
fn valid_name(name: &str) -> bool {
    name.split('/')
        .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains('\0') && s.len() <= NAME_MAX)
}

fn root_node(mtime: SystemTime) -> Node {
    Node {
        ino: ROOT_INO,
        parent: ROOT_INO,
        mtime,
        kind: NodeKind::Dir(Box::new(DirNode {
            path: Arc::from(""),
            children: Vec::new(),
            subdirs: 0,
        })),
    }
}

impl Tree {
    /// A tree with only the root directory (used until the first successful listing).
    pub fn empty(root_mtime: SystemTime) -> Self {
        let mut nodes = vec![None; ROOT_INO as usize + 1];
        nodes[ROOT_INO as usize] = Some(root_node(root_mtime));
        Self {
            nodes,
            file_count: 0,
            total_bytes: 0,
            inode_count: 1,
        }
    }

    /// Build a tree from a whole list at once (see [`TreeBuilder`] for the refresh, which takes it page by
    /// page and reuses the previous tree). `empty_dir_mtime` is the mtime of directories with no files below
    /// them (only the root can be one). Names that cannot be shown are returned in `skipped`.
    #[cfg(test)]
    pub fn build(
        files: impl IntoIterator<Item = FileInfo>,
        inodes: &mut InodeTable,
        empty_dir_mtime: SystemTime,
    ) -> (Tree, Vec<Skipped>) {
        let mut b = TreeBuilder::new(inodes, None, empty_dir_mtime);
        for f in files {
            b.add(&f.name, f.size, f.mtime, &f.id);
        }
        b.finish()
    }

    /// The node with this inode number.
    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(usize::try_from(ino).ok()?)?.as_ref()
    }

    /// Look `name` up in directory `parent`. `Err(libc::ENOENT)` if either is missing, `Err(libc::ENOTDIR)`
    /// if `parent` is a file.
    pub fn lookup(&self, parent: u64, name: &str) -> Result<&Node, i32> {
        let dir = self.dir(parent)?;
        let i = dir
            .children
            .binary_search_by(|c| self.leaf(*c).cmp(name))
            .map_err(|_| libc::ENOENT)?;
        self.get(dir.children[i]).ok_or(libc::ENOENT)
    }

    fn leaf(&self, ino: u64) -> &str {
        self.get(ino).map_or("", Node::leaf)
    }

    fn dir(&self, ino: u64) -> Result<&DirNode, i32> {
        self.get(ino)
            .ok_or(libc::ENOENT)?
            .dir()
            .ok_or(libc::ENOTDIR)
    }

    /// The entries of directory `ino` as `readdir` lists them, from position `offset` on (0-based: `.` is 0,
    /// `..` is 1, then the children by name), as (position, inode, kind, name). Starting at any offset costs
    /// the same: the kernel asks for a large directory a few dozen entries at a time.
    pub fn dir_entries_from(
        &self,
        ino: u64,
        offset: u64,
    ) -> Result<impl Iterator<Item = (u64, u64, Kind, &str)> + '_, i32> {
        let node = self.get(ino).ok_or(libc::ENOENT)?;
        let dir = node.dir().ok_or(libc::ENOTDIR)?;
        let dots = [(ino, "."), (node.parent, "..")];
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        let dots = dots
            .into_iter()
            .enumerate()
            .skip(skip)
            .map(|(i, (ino, name))| (i as u64, ino, Kind::Dir, name));
        let children = dir
            .children
            .iter()
            .enumerate()
            .skip(skip.saturating_sub(2))
            .filter_map(move |(i, c)| {
                let n = self.get(*c)?;
                Some((i as u64 + 2, *c, n.kind(), n.leaf()))
            });
        Ok(dots.chain(children))
    }

    /// All entries of directory `ino` (see [`Tree::dir_entries_from`]), as (inode, kind, name).
    #[cfg(test)]
    pub fn dir_entries(&self, ino: u64) -> Result<Vec<(u64, Kind, &str)>, i32> {
        Ok(self
            .dir_entries_from(ino, 0)?
            .map(|(_, ino, kind, name)| (ino, kind, name))
            .collect())
    }

    /// Number of files in the tree.
    pub fn file_count(&self) -> u64 {
        self.file_count
    }

    /// Sum of all file sizes (for `statfs`).
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Number of inodes (files and directories).
    pub fn inode_count(&self) -> u64 {
        self.inode_count
    }

    /// The name of `ino` inside its parent directory (None for the root or an unknown inode).
    pub fn name_in_parent(&self, ino: u64) -> Option<&str> {
        if ino == ROOT_INO {
            return None;
        }
        self.get(ino).map(Node::leaf)
    }

    fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().flatten()
    }
}

/// Builds a [`Tree`] from the listing one entry at a time.
///
/// Entries may come in any order. Each name is checked, numbered by the [`InodeTable`] and placed under its
/// directory at once; the directories' child lists, their `nlink` and mtimes, and the file-versus-directory
/// conflicts are settled in [`TreeBuilder::finish`].
pub struct TreeBuilder<'a> {
    inodes: &'a mut InodeTable,
    /// The tree this one replaces: unchanged files are shared with it rather than copied.
    old: Option<&'a Tree>,
    empty_dir_mtime: SystemTime,
    nodes: Vec<Option<Node>>,
    /// Directories in the order they were created (every parent before its children), with the newest mtime
    /// of the files directly in them.
    dirs: Vec<(u64, Option<SystemTime>)>,
    /// Index in `dirs` by inode number.
    dir_index: HashMap<u64, usize>,
    /// The directory of the previous entry: listings come in name order, so most entries share it.
    last_parent: Option<(Arc<str>, u64)>,
    skipped: Vec<Skipped>,
    file_count: u64,
    total_bytes: u64,
}

impl<'a> TreeBuilder<'a> {
    pub fn new(
        inodes: &'a mut InodeTable,
        old: Option<&'a Tree>,
        empty_dir_mtime: SystemTime,
    ) -> Self {
        // Room for every number handed out so far: a refresh of a known listing never grows the vector.
        let mut nodes = Vec::new();
        nodes.resize(usize::try_from(inodes.end()).unwrap_or(0), None);
        let mut b = Self {
            inodes,
            old,
            empty_dir_mtime,
            nodes,
            dirs: Vec::new(),
            dir_index: HashMap::new(),
            last_parent: None,
            skipped: Vec::new(),
            file_count: 0,
            total_bytes: 0,
        };
        b.put(root_node(empty_dir_mtime));
        b.dir_index.insert(ROOT_INO, 0);
        b.dirs.push((ROOT_INO, None));
        b
    }

    fn slot(&mut self, ino: u64) -> &mut Option<Node> {
        let i = usize::try_from(ino).unwrap_or(usize::MAX);
        if i >= self.nodes.len() {
            self.nodes.resize(i + 1, None);
        }
        &mut self.nodes[i]
    }

    fn put(&mut self, node: Node) {
        let ino = node.ino;
        *self.slot(ino) = Some(node);
    }

    /// The directory `path` ("" is the root), created with its ancestors if this tree does not have it yet.
    fn dir(&mut self, path: &str) -> u64 {
        if path.is_empty() {
            return ROOT_INO;
        }
        let (path, ino) = self.inodes.get_or_assign(path, Kind::Dir);
        if self.slot(ino).is_some() {
            return ino;
        }
        let parent = self.dir(parent_of(&path));
        self.put(Node {
            ino,
            parent,
            mtime: self.empty_dir_mtime,
            kind: NodeKind::Dir(Box::new(DirNode {
                path,
                children: Vec::new(),
                subdirs: 0,
            })),
        });
        self.dir_index.insert(ino, self.dirs.len());
        self.dirs.push((ino, None));
        ino
    }

    /// Add one listed file.
    pub fn add(&mut self, name: &str, size: u64, mtime: SystemTime, id: &str) {
        if !valid_name(name) {
            self.skipped.push(Skipped {
                name: name.to_owned(),
                reason: SkipReason::InvalidName,
            });
            return;
        }
        let parent_path = parent_of(name);
        let parent = match &self.last_parent {
            Some((p, ino)) if **p == *parent_path => *ino,
            _ => {
                let ino = self.dir(parent_path);
                let shared = self
                    .get_dir_path(ino)
                    .unwrap_or_else(|| Arc::from(parent_path));
                self.last_parent = Some((shared, ino));
                ino
            }
        };
        let (shared_name, ino) = self.inodes.get_or_assign(name, Kind::File);
        if self.slot(ino).is_some() {
            self.skipped.push(Skipped {
                name: name.to_owned(),
                reason: SkipReason::Duplicate,
            });
            return;
        }
        let reused = self
            .old
            .and_then(|t| t.get(ino))
            .and_then(Node::file)
            .filter(|f| f.size == size && f.mtime == mtime && *f.id == *id)
            .cloned();
        let file = reused.unwrap_or_else(|| {
            Arc::new(FileInfo {
                name: shared_name,
                size,
                mtime,
                id: id.into(),
            })
        });
        if let Some(&i) = self.dir_index.get(&parent) {
            let newest = &mut self.dirs[i].1;
            *newest = Some(newest.map_or(mtime, |m| m.max(mtime)));
        }
        self.file_count += 1;
        self.total_bytes = self.total_bytes.saturating_add(size);
        self.put(Node {
            ino,
            parent,
            mtime,
            kind: NodeKind::File(file),
        });
    }

    fn get_dir_path(&self, ino: u64) -> Option<Arc<str>> {
        let node = self.nodes.get(usize::try_from(ino).ok()?)?.as_ref()?;
        node.dir().map(|d| d.path.clone())
    }

    /// The finished tree, and the names left out of it.
    pub fn finish(mut self) -> (Tree, Vec<Skipped>) {
        // A name that is a file and also a directory: the directory wins.
        for i in 1..self.dirs.len() {
            let dir_ino = self.dirs[i].0;
            let Some(path) = self.get_dir_path(dir_ino) else {
                continue;
            };
            let Some(&file_ino) = self.inodes.files.get(&*path) else {
                continue;
            };
            if let Some(Node {
                kind: NodeKind::File(f),
                ..
            }) = self.slot(file_ino).take()
            {
                self.file_count -= 1;
                self.total_bytes = self.total_bytes.saturating_sub(f.size);
                self.skipped.push(Skipped {
                    name: f.name.to_string(),
                    reason: SkipReason::FileIsAlsoDir,
                });
            }
        }
        // Child lists, sized exactly: count first, then fill.
        let mut counts: HashMap<u64, usize> = HashMap::with_capacity(self.dirs.len());
        let mut inode_count = 0u64;
        for node in self.nodes.iter().flatten() {
            inode_count += 1;
            if node.ino != ROOT_INO {
                *counts.entry(node.parent).or_default() += 1;
            }
        }
        for (ino, n) in &counts {
            if let Some(Some(Node {
                kind: NodeKind::Dir(d),
                ..
            })) = self.nodes.get_mut(*ino as usize)
            {
                d.children.reserve_exact(*n);
            }
        }
        for i in 0..self.nodes.len() {
            let Some(node) = &self.nodes[i] else { continue };
            if node.ino == ROOT_INO {
                continue;
            }
            let (ino, parent, is_dir) = (node.ino, node.parent, node.is_dir());
            if let Some(Some(Node {
                kind: NodeKind::Dir(d),
                ..
            })) = self.nodes.get_mut(parent as usize)
            {
                d.children.push(ino);
                if is_dir {
                    d.subdirs += 1;
                }
            }
        }
        // Sort each directory's children by name (a listing in name order is mostly sorted already).
        for &(dir_ino, _) in &self.dirs {
            let Some(Some(Node {
                kind: NodeKind::Dir(d),
                ..
            })) = self.nodes.get_mut(dir_ino as usize)
            else {
                continue;
            };
            let mut children = std::mem::take(&mut d.children);
            let nodes = &self.nodes;
            let leaf = |c: u64| {
                nodes
                    .get(c as usize)
                    .and_then(Option::as_ref)
                    .map_or("", Node::leaf)
            };
            children.sort_unstable_by(|a, b| leaf(*a).cmp(leaf(*b)));
            if let Some(Some(Node {
                kind: NodeKind::Dir(d),
                ..
            })) = self.nodes.get_mut(dir_ino as usize)
            {
                d.children = children;
            }
        }
        // Directory mtimes: the newest below, children (created later) before their parents.
        for i in (0..self.dirs.len()).rev() {
            let (ino, newest) = self.dirs[i];
            if let Some(newest) = newest {
                let parent = self
                    .nodes
                    .get(ino as usize)
                    .and_then(Option::as_ref)
                    .map_or(ROOT_INO, |n| n.parent);
                if ino != ROOT_INO
                    && let Some(&pi) = self.dir_index.get(&parent)
                {
                    let p = &mut self.dirs[pi].1;
                    *p = Some(p.map_or(newest, |m| m.max(newest)));
                }
            }
            let mtime = self.dirs[i].1.unwrap_or(self.empty_dir_mtime);
            if let Some(Some(node)) = self.nodes.get_mut(ino as usize) {
                node.mtime = mtime;
            }
        }
        let tree = Tree {
            nodes: self.nodes,
            file_count: self.file_count,
            total_bytes: self.total_bytes,
            inode_count,
        };
        (tree, self.skipped)
    }
}

/// What changed between two trees; a refresh tells the kernel so it drops what it cached about them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Entries gone from the new tree, as (parent inode in the old tree, name): their dentries are invalidated.
    pub removed: Vec<(u64, String)>,
    /// Files still present whose content may differ (new file id or size): their attributes and cached pages
    /// are invalidated.
    pub changed: Vec<u64>,
    /// Number of inodes new in the new tree.
    pub added: usize,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.changed.is_empty() && self.added == 0
    }
}

/// Compare two trees built with the same [`InodeTable`].
pub fn diff(old: &Tree, new: &Tree) -> Changes {
    let mut changes = Changes::default();
    for node in old.nodes() {
        match new.get(node.ino) {
            None => {
                if let Some(name) = old.name_in_parent(node.ino) {
                    changes.removed.push((node.parent, name.to_owned()));
                }
            }
            Some(new_node) => {
                if let (Some(a), Some(b)) = (node.file(), new_node.file())
                    && !Arc::ptr_eq(a, b)
                    && (a.id != b.id || a.size != b.size || a.mtime != b.mtime)
                {
                    changes.changed.push(node.ino);
                }
            }
        }
    }
    changes.added = new.nodes().filter(|n| old.get(n.ino).is_none()).count();
    changes.removed.sort();
    changes.changed.sort_unstable();
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn f(name: &str, size: u64, mtime: u64) -> FileInfo {
        FileInfo {
            name: name.into(),
            size,
            mtime: t(mtime),
            id: format!("id-{name}").into(),
        }
    }

    fn path_ino(tree: &Tree, path: &str) -> Result<u64, i32> {
        let mut ino = ROOT_INO;
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            ino = tree.lookup(ino, seg)?.ino;
        }
        Ok(ino)
    }

    #[test]
    fn flat_names_are_files_in_root() {
        let mut inodes = InodeTable::new();
        let (tree, skipped) = Tree::build(
            vec![f("a.plot", 10, 5), f("b.plot", 20, 7)],
            &mut inodes,
            t(1),
        );
        assert!(skipped.is_empty());
        assert_eq!(tree.file_count(), 2);
        assert_eq!(tree.total_bytes(), 30);
        let a = tree.lookup(ROOT_INO, "a.plot").expect("a.plot");
        assert_eq!(a.file().map(|x| x.size), Some(10));
        assert_eq!(a.parent, ROOT_INO);
        assert_eq!(tree.lookup(ROOT_INO, "c.plot").err(), Some(libc::ENOENT));
        // The root takes the newest mtime below it.
        assert_eq!(tree.get(ROOT_INO).map(|n| n.mtime), Some(t(7)));
    }

    #[test]
    fn slashes_become_nested_directories() {
        let mut inodes = InodeTable::new();
        let (tree, skipped) = Tree::build(
            vec![
                f("farm1/x/p1.plot", 1, 10),
                f("farm1/x/p2.plot", 2, 30),
                f("farm1/p3.plot", 3, 20),
                f("farm2/p4.plot", 4, 5),
                f("top.plot", 5, 1),
            ],
            &mut inodes,
            t(0),
        );
        assert!(skipped.is_empty());
        assert_eq!(tree.file_count(), 5);
        // root + farm1 + farm1/x + farm2 + 5 files
        assert_eq!(tree.inode_count(), 9);

        let farm1 = tree.lookup(ROOT_INO, "farm1").expect("farm1");
        assert!(farm1.is_dir());
        assert_eq!(farm1.mtime, t(30), "dir mtime is the newest below it");
        let x = tree.lookup(farm1.ino, "x").expect("x");
        assert_eq!(x.parent, farm1.ino);
        let p2 = tree.lookup(x.ino, "p2.plot").expect("p2");
        assert_eq!(
            p2.file().map(|f| &*f.name),
            Some("farm1/x/p2.plot"),
            "files keep their full B2 name for the proxy"
        );
        assert_eq!(tree.lookup(p2.ino, "y").err(), Some(libc::ENOTDIR));
        assert_eq!(tree.lookup(9999, "y").err(), Some(libc::ENOENT));

        let root_entries: Vec<_> = tree
            .dir_entries(ROOT_INO)
            .expect("root")
            .into_iter()
            .map(|(_, k, n)| (n.to_owned(), k))
            .collect();
        assert_eq!(
            root_entries,
            vec![
                (".".to_owned(), Kind::Dir),
                ("..".to_owned(), Kind::Dir),
                ("farm1".to_owned(), Kind::Dir),
                ("farm2".to_owned(), Kind::Dir),
                ("top.plot".to_owned(), Kind::File),
            ]
        );
        let farm1_entries = tree.dir_entries(farm1.ino).expect("farm1");
        assert_eq!(farm1_entries[1].0, ROOT_INO, ".. of farm1 is the root");
        assert_eq!(tree.dir_entries(p2.ino).err(), Some(libc::ENOTDIR));
        let farm1_dir = tree
            .get(farm1.ino)
            .and_then(Node::dir)
            .expect("farm1 is a dir");
        assert_eq!(farm1_dir.subdirs, 1);
        assert_eq!(tree.name_in_parent(x.ino), Some("x"));
        assert_eq!(tree.name_in_parent(ROOT_INO), None);
    }

    #[test]
    fn bad_duplicate_and_conflicting_names_are_skipped() {
        let mut inodes = InodeTable::new();
        let long = "x".repeat(NAME_MAX + 1);
        let (tree, mut skipped) = Tree::build(
            vec![
                f("ok.plot", 1, 1),
                f("a//b", 1, 1),
                f("/abs", 1, 1),
                f("trailing/", 1, 1),
                f("", 1, 1),
                f("x/../y", 1, 1),
                f("./y", 1, 1),
                f("nul\0byte", 1, 1),
                f(&long, 1, 1),
                f("ok.plot", 2, 2),
                f("d", 1, 1),
                f("d/inner", 1, 1),
            ],
            &mut inodes,
            t(0),
        );
        skipped.sort_by(|a, b| a.name.cmp(&b.name));
        let reasons: Vec<_> = skipped
            .iter()
            .map(|s| (s.name.as_str(), s.reason.clone()))
            .collect();
        assert!(reasons.contains(&("a//b", SkipReason::InvalidName)));
        assert!(reasons.contains(&("/abs", SkipReason::InvalidName)));
        assert!(reasons.contains(&("trailing/", SkipReason::InvalidName)));
        assert!(reasons.contains(&("", SkipReason::InvalidName)));
        assert!(reasons.contains(&("x/../y", SkipReason::InvalidName)));
        assert!(reasons.contains(&("./y", SkipReason::InvalidName)));
        assert!(reasons.contains(&("nul\0byte", SkipReason::InvalidName)));
        assert!(reasons.contains(&(long.as_str(), SkipReason::InvalidName)));
        assert!(reasons.contains(&("ok.plot", SkipReason::Duplicate)));
        assert!(reasons.contains(&("d", SkipReason::FileIsAlsoDir)));
        assert_eq!(skipped.len(), 10);
        // The first of duplicates wins; the directory wins over the file.
        assert_eq!(
            tree.lookup(ROOT_INO, "ok.plot")
                .ok()
                .and_then(|n| n.file())
                .map(|f| f.size),
            Some(1)
        );
        assert!(tree.lookup(ROOT_INO, "d").map(|n| n.is_dir()) == Ok(true));
        assert!(path_ino(&tree, "d/inner").is_ok());
        assert_eq!(tree.file_count(), 2);
    }

    #[test]
    fn refresh_keeps_inodes_stable_and_reports_changes() {
        let mut inodes = InodeTable::new();
        let (old, _) = Tree::build(
            vec![
                f("a/1.plot", 1, 1),
                f("a/2.plot", 2, 1),
                f("b/3.plot", 3, 1),
            ],
            &mut inodes,
            t(0),
        );
        let a = path_ino(&old, "a").expect("a");
        let one = path_ino(&old, "a/1.plot").expect("1");
        let two = path_ino(&old, "a/2.plot").expect("2");
        let b = path_ino(&old, "b").expect("b");

        // New list in a different order: 2.plot re-uploaded (new id), 3.plot and dir b gone, 4.plot new.
        let mut two_new = f("a/2.plot", 2, 1);
        two_new.id = "id-new".into();
        let (new, _) = Tree::build(
            vec![f("c/4.plot", 4, 2), two_new, f("a/1.plot", 1, 1)],
            &mut inodes,
            t(0),
        );
        assert_eq!(path_ino(&new, "a"), Ok(a));
        assert_eq!(path_ino(&new, "a/1.plot"), Ok(one));
        assert_eq!(path_ino(&new, "a/2.plot"), Ok(two));
        assert_eq!(path_ino(&new, "b").err(), Some(libc::ENOENT));
        assert!(new.get(b).is_none(), "removed dirs vanish");
        let four = path_ino(&new, "c/4.plot").expect("4");
        assert!(
            ![a, one, two, b].contains(&four),
            "new names get new numbers"
        );

        let changes = diff(&old, &new);
        assert_eq!(
            changes.removed,
            vec![(ROOT_INO, "b".to_owned()), (b, "3.plot".to_owned())]
        );
        assert_eq!(changes.changed, vec![two]);
        assert_eq!(changes.added, 2, "c and c/4.plot");
        assert!(diff(&new, &new).is_empty());

        // A name that comes back gets its old number again.
        let (again, _) = Tree::build(vec![f("b/3.plot", 3, 1)], &mut inodes, t(0));
        assert_eq!(path_ino(&again, "b"), Ok(b));
    }

    #[test]
    fn a_file_that_becomes_a_directory_gets_a_new_inode() {
        let mut inodes = InodeTable::new();
        let (old, _) = Tree::build(vec![f("x", 1, 1)], &mut inodes, t(0));
        let (new, _) = Tree::build(vec![f("x/y", 1, 1)], &mut inodes, t(0));
        let old_x = path_ino(&old, "x").expect("old x");
        let new_x = path_ino(&new, "x").expect("new x");
        assert_ne!(old_x, new_x);
        assert_eq!(diff(&old, &new).removed, vec![(ROOT_INO, "x".to_owned())]);
    }

    #[test]
    fn readdir_resumes_at_any_offset_and_lookup_finds_every_name() {
        let mut inodes = InodeTable::new();
        // Out of name order on purpose: the children must still come out sorted.
        let files: Vec<_> = (0..1000)
            .rev()
            .map(|i| f(&format!("d/p-{i:04}.plot"), i, i))
            .chain([f("d/sub/x", 1, 1), f("d/a", 1, 1)])
            .collect();
        let (tree, skipped) = Tree::build(files, &mut inodes, t(0));
        assert!(skipped.is_empty());
        let d = path_ino(&tree, "d").expect("d");
        let all = tree.dir_entries(d).expect("d");
        assert_eq!(all.len(), 2 + 1002);
        let names: Vec<&str> = all.iter().skip(2).map(|e| e.2).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted, "children in name order");
        assert_eq!((all[0].2, all[1].2), (".", ".."));
        assert_eq!(all[1].0, ROOT_INO);
        // Resuming at offset k yields exactly the tail of the full listing, with positions k, k+1, ...
        for k in [0u64, 1, 2, 3, 500, 1003, 1004, 5000] {
            let tail: Vec<_> = tree.dir_entries_from(d, k).expect("from").collect();
            let want = all.len().saturating_sub(k as usize);
            assert_eq!(tail.len(), want, "offset {k}");
            for (j, (pos, ino, kind, name)) in tail.into_iter().enumerate() {
                let i = k as usize + j;
                assert_eq!(pos, i as u64);
                assert_eq!((ino, kind, name), all[i]);
            }
        }
        for (ino, kind, name) in all.iter().skip(2) {
            let n = tree.lookup(d, name).expect("lookup");
            assert_eq!(n.ino, *ino);
            assert_eq!(n.is_dir(), *kind == Kind::Dir);
            assert_eq!(tree.name_in_parent(*ino), Some(*name));
        }
        assert_eq!(tree.lookup(d, "p-9999.plot").err(), Some(libc::ENOENT));
        assert_eq!(tree.lookup(d, "").err(), Some(libc::ENOENT));
    }

    #[test]
    fn a_refresh_shares_unchanged_files_with_the_tree_it_replaces() {
        let mut inodes = InodeTable::new();
        let list = |gen_of_b: &str| {
            vec![
                f("x/a.plot", 1, 1),
                FileInfo {
                    id: gen_of_b.into(),
                    ..f("x/b.plot", 2, 1)
                },
            ]
        };
        let (old, _) = Tree::build(list("id-1"), &mut inodes, t(0));
        let mut b = TreeBuilder::new(&mut inodes, Some(&old), t(0));
        for file in list("id-2") {
            b.add(&file.name, file.size, file.mtime, &file.id);
        }
        let (new, _) = b.finish();
        let a_old = old
            .lookup(path_ino(&old, "x").expect("x"), "a.plot")
            .expect("a");
        let a_new = new
            .lookup(path_ino(&new, "x").expect("x"), "a.plot")
            .expect("a");
        let (fa_old, fa_new) = (a_old.file().expect("f"), a_new.file().expect("f"));
        assert!(Arc::ptr_eq(fa_old, fa_new), "unchanged file is shared");
        let b_old = old
            .lookup(path_ino(&old, "x").expect("x"), "b.plot")
            .expect("b");
        let b_new = new
            .lookup(path_ino(&new, "x").expect("x"), "b.plot")
            .expect("b");
        let (fb_old, fb_new) = (b_old.file().expect("f"), b_new.file().expect("f"));
        assert!(!Arc::ptr_eq(fb_old, fb_new), "a re-uploaded file is new");
        assert!(
            Arc::ptr_eq(&fb_old.name, &fb_new.name),
            "its name is still the inode table's copy"
        );
        assert_eq!(&*fb_new.id, "id-2");
        assert_eq!(diff(&old, &new).changed, vec![b_old.ino]);
    }

    #[test]
    fn empty_tree_has_only_the_root() {
        let mut inodes = InodeTable::new();
        let (tree, skipped) = Tree::build(Vec::new(), &mut inodes, t(42));
        assert!(skipped.is_empty());
        assert_eq!(tree.inode_count(), 1);
        assert_eq!(tree.get(ROOT_INO).map(|n| n.mtime), Some(t(42)));
        assert_eq!(tree.dir_entries(ROOT_INO).map(|e| e.len()), Ok(2));
        assert_eq!(Tree::empty(t(1)).inode_count(), 1);
    }
}
