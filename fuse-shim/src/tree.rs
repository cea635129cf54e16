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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

/// Inode number of the mount's root directory (FUSE fixes it at 1).
pub const ROOT_INO: u64 = 1;

/// The longest name of one path segment the kernel accepts (`NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// One file as the proxy lists it, with its modification time already parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Full B2 name, e.g. `farm1/plot.plot`; this is what the shim asks the proxy for.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time (the upload time in B2).
    pub mtime: SystemTime,
    /// B2 file id; it changes when a name is uploaded again, which tells a refresh the content changed.
    pub id: String,
}

/// Whether a node is a file or a directory; part of the inode key so that a name that turns from a file
/// into a directory (or back) gets a new number and the kernel never sees one inode change its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
}

/// What a node is.
#[derive(Debug, Clone)]
pub enum NodeKind {
    /// A directory: children by name (sorted, so `readdir` order and offsets are deterministic), and how many
    /// of them are directories (for `nlink`).
    Dir {
        children: BTreeMap<String, u64>,
        subdirs: u32,
    },
    /// A file; shared with open file handles, which keep the snapshot they opened.
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
        matches!(self.kind, NodeKind::Dir { .. })
    }

    /// The file behind this node, if it is one.
    pub fn file(&self) -> Option<&Arc<FileInfo>> {
        match &self.kind {
            NodeKind::File(f) => Some(f),
            NodeKind::Dir { .. } => None,
        }
    }
}

/// Hands out inode numbers, stable for a (path, kind) for the life of the process.
///
/// Numbers of names that disappear are kept (not reused): a few bytes per name ever seen is a small price for
/// never handing a cached inode number to a different file.
#[derive(Debug)]
pub struct InodeTable {
    known: HashMap<(String, Kind), u64>,
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
            known: HashMap::new(),
            next: ROOT_INO + 1,
        }
    }

    fn get_or_assign(&mut self, path: &str, kind: Kind) -> u64 {
        if path.is_empty() && kind == Kind::Dir {
            return ROOT_INO;
        }
        if let Some(&ino) = self.known.get(&(path.to_owned(), kind)) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.known.insert((path.to_owned(), kind), ino);
        ino
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
    nodes: HashMap<u64, Node>,
    file_count: u64,
    total_bytes: u64,
}

/// Check one B2 name; returns its segments if it can be shown as a path.
fn segments(name: &str) -> Option<Vec<&str>> {
    let segs: Vec<&str> = name.split('/').collect();
    let ok = segs.iter().all(|s| {
        !s.is_empty() && *s != "." && *s != ".." && !s.contains('\0') && s.len() <= NAME_MAX
    });
    ok.then_some(segs)
}

impl Tree {
    /// A tree with only the root directory (used until the first successful listing).
    pub fn empty(root_mtime: SystemTime) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INO,
            Node {
                ino: ROOT_INO,
                parent: ROOT_INO,
                mtime: root_mtime,
                kind: NodeKind::Dir {
                    children: BTreeMap::new(),
                    subdirs: 0,
                },
            },
        );
        Self {
            nodes,
            file_count: 0,
            total_bytes: 0,
        }
    }

    /// Build a tree from the proxy's list. `empty_dir_mtime` is the mtime of directories with no files below
    /// them (only the root can be one). Names that cannot be shown are returned in `skipped`.
    pub fn build(
        files: impl IntoIterator<Item = FileInfo>,
        inodes: &mut InodeTable,
        empty_dir_mtime: SystemTime,
    ) -> (Tree, Vec<Skipped>) {
        let mut skipped = Vec::new();
        let mut valid: Vec<FileInfo> = Vec::new();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        // Every directory implied by a name, as its path ("" is the root) -> newest file mtime below it.
        let mut dirs: BTreeMap<String, Option<SystemTime>> = BTreeMap::new();
        dirs.insert(String::new(), None);

        for file in files {
            let Some(segs) = segments(&file.name) else {
                skipped.push(Skipped {
                    name: file.name,
                    reason: SkipReason::InvalidName,
                });
                continue;
            };
            if !seen.insert(file.name.clone()) {
                skipped.push(Skipped {
                    name: file.name,
                    reason: SkipReason::Duplicate,
                });
                continue;
            }
            // Register the root and every ancestor directory, carrying the file's mtime up to each.
            let mut bump = |path: &str| {
                let newest = dirs.entry(path.to_owned()).or_insert(None);
                *newest = Some(newest.map_or(file.mtime, |m| m.max(file.mtime)));
            };
            bump("");
            let mut path = String::new();
            for seg in &segs[..segs.len() - 1] {
                if !path.is_empty() {
                    path.push('/');
                }
                path.push_str(seg);
                bump(&path);
            }
            valid.push(file);
        }

        let mut tree = Tree::empty(empty_dir_mtime);
        // Directories first, in path order, so every parent exists before its children.
        for (path, mtime) in &dirs {
            let ino = inodes.get_or_assign(path, Kind::Dir);
            let (parent_path, leaf) = match path.rsplit_once('/') {
                Some((p, l)) => (p, l),
                None => ("", path.as_str()),
            };
            let parent = if path.is_empty() {
                ROOT_INO
            } else {
                inodes.get_or_assign(parent_path, Kind::Dir)
            };
            tree.nodes.insert(
                ino,
                Node {
                    ino,
                    parent,
                    mtime: mtime.unwrap_or(empty_dir_mtime),
                    kind: NodeKind::Dir {
                        children: BTreeMap::new(),
                        subdirs: 0,
                    },
                },
            );
            if !path.is_empty() {
                tree.attach(parent, leaf, ino, true);
            }
        }
        for file in valid {
            if dirs.contains_key(&file.name) {
                skipped.push(Skipped {
                    name: file.name,
                    reason: SkipReason::FileIsAlsoDir,
                });
                continue;
            }
            let ino = inodes.get_or_assign(&file.name, Kind::File);
            let (parent_path, leaf) = match file.name.rsplit_once('/') {
                Some((p, l)) => (p, l.to_owned()),
                None => ("", file.name.clone()),
            };
            let parent = inodes.get_or_assign(parent_path, Kind::Dir);
            tree.file_count += 1;
            tree.total_bytes = tree.total_bytes.saturating_add(file.size);
            tree.nodes.insert(
                ino,
                Node {
                    ino,
                    parent,
                    mtime: file.mtime,
                    kind: NodeKind::File(Arc::new(file)),
                },
            );
            tree.attach(parent, &leaf, ino, false);
        }
        (tree, skipped)
    }

    fn attach(&mut self, parent: u64, name: &str, ino: u64, is_dir: bool) {
        if let Some(Node {
            kind: NodeKind::Dir { children, subdirs },
            ..
        }) = self.nodes.get_mut(&parent)
        {
            children.insert(name.to_owned(), ino);
            if is_dir {
                *subdirs += 1;
            }
        }
    }

    /// The node with this inode number.
    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    /// Look `name` up in directory `parent`. `Err(libc::ENOENT)` if either is missing, `Err(libc::ENOTDIR)`
    /// if `parent` is a file.
    pub fn lookup(&self, parent: u64, name: &str) -> Result<&Node, i32> {
        match &self.nodes.get(&parent).ok_or(libc::ENOENT)?.kind {
            NodeKind::Dir { children, .. } => children
                .get(name)
                .and_then(|ino| self.nodes.get(ino))
                .ok_or(libc::ENOENT),
            NodeKind::File(_) => Err(libc::ENOTDIR),
        }
    }

    /// The entries of directory `ino` as `readdir` lists them: `.`, `..`, then the children by name.
    pub fn dir_entries(&self, ino: u64) -> Result<Vec<(u64, Kind, &str)>, i32> {
        let node = self.nodes.get(&ino).ok_or(libc::ENOENT)?;
        let NodeKind::Dir { children, .. } = &node.kind else {
            return Err(libc::ENOTDIR);
        };
        let mut out = Vec::with_capacity(children.len() + 2);
        out.push((ino, Kind::Dir, "."));
        out.push((node.parent, Kind::Dir, ".."));
        for (name, child) in children {
            let kind = match self.nodes.get(child) {
                Some(n) if n.is_dir() => Kind::Dir,
                _ => Kind::File,
            };
            out.push((*child, kind, name.as_str()));
        }
        Ok(out)
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
        self.nodes.len() as u64
    }

    /// The name of `ino` inside its parent directory (None for the root or an unknown inode).
    pub fn name_in_parent(&self, ino: u64) -> Option<&str> {
        let node = self.nodes.get(&ino)?;
        match &self.nodes.get(&node.parent)?.kind {
            NodeKind::Dir { children, .. } => children
                .iter()
                .find(|(_, c)| **c == ino)
                .map(|(n, _)| n.as_str()),
            NodeKind::File(_) => None,
        }
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
    for (ino, node) in &old.nodes {
        match new.nodes.get(ino) {
            None => {
                if let Some(name) = old.name_in_parent(*ino) {
                    changes.removed.push((node.parent, name.to_owned()));
                }
            }
            Some(new_node) => {
                if let (Some(a), Some(b)) = (node.file(), new_node.file())
                    && (a.id != b.id || a.size != b.size || a.mtime != b.mtime)
                {
                    changes.changed.push(*ino);
                }
            }
        }
    }
    changes.added = new
        .nodes
        .keys()
        .filter(|ino| !old.nodes.contains_key(ino))
        .count();
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
            name: name.to_owned(),
            size,
            mtime: t(mtime),
            id: format!("id-{name}"),
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
            p2.file().map(|f| f.name.as_str()),
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
        match &tree.get(farm1.ino).expect("farm1").kind {
            NodeKind::Dir { subdirs, .. } => assert_eq!(*subdirs, 1),
            NodeKind::File(_) => panic!("farm1 is a dir"),
        }
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
        two_new.id = "id-new".to_owned();
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
