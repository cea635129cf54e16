//! The disk tier's eviction order: its regions leave in the order they were written, before and after a restart.
//!
//! foyer's own FIFO picker queues regions as they fill, but after a restart it queues the recovered ones in the
//! order of a hash set, so the log's oldest data is no longer the first to go, and `refresh`, which keeps read
//! blocks ahead of the tail by their position in the log, would rewrite the wrong ones. This picker ranks each
//! region by when it became evictable, saves the ranks of the regions at a clean shutdown ([`REGIONS_FILE`])
//! and, at the next start, queues the recovered regions by their saved rank. Regions it does not know go after
//! them: those the flushers were filling at the shutdown (the newest), or, after a crash, all of them, in foyer's
//! order, as before.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use foyer::{EvictionInfo, EvictionPicker};

use crate::sync::Mutex;

/// The regions' order in `cache.disk_dir`.
pub const REGIONS_FILE: &str = "b2proxy-disk-regions";
const MAGIC: &[u8; 8] = b"B2PXREG1";

type RegionId = u32;

#[derive(Debug, Default)]
struct Queue {
    /// Evictable regions by rank: the first is the oldest.
    by_rank: BTreeMap<u64, RegionId>,
    rank_of: HashMap<RegionId, u64>,
    /// Ranks saved at the last shutdown, for the regions recovered at start.
    saved: HashMap<RegionId, u64>,
    next: u64,
}

/// foyer's eviction picker, and the handle that saves its order. Clones share the queue.
#[derive(Debug, Clone, Default)]
pub struct RegionOrder(Arc<Mutex<Queue>>);

impl RegionOrder {
    /// Loads and deletes `dir/REGIONS_FILE`: the order the regions recovered at this start were in (none without
    /// the file). Call before foyer opens the disk tier.
    pub fn load(dir: &Path) -> std::io::Result<Self> {
        let order = Self::default();
        let path = dir.join(REGIONS_FILE);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(order),
            Err(e) => return Err(e),
        };
        // Deleted first: after a crash the order of this run's regions is not known.
        std::fs::remove_file(&path)?;
        let bad =
            || std::io::Error::new(std::io::ErrorKind::InvalidData, "not a region order file");
        let body = data.strip_prefix(MAGIC.as_slice()).ok_or_else(bad)?;
        if body.len() % 4 != 0 {
            return Err(bad());
        }
        let mut q = order.0.lock();
        for (i, id) in body.chunks_exact(4).enumerate() {
            let id = RegionId::from_le_bytes([id[0], id[1], id[2], id[3]]);
            q.saved.insert(id, i as u64);
        }
        q.next = q.saved.len() as u64;
        drop(q);
        Ok(order)
    }

    /// Writes the evictable regions, oldest first, to `dir/REGIONS_FILE` (after foyer closed).
    pub fn save(&self, dir: &Path) -> std::io::Result<usize> {
        let ids: Vec<RegionId> = self.0.lock().by_rank.values().copied().collect();
        let mut data = Vec::with_capacity(MAGIC.len() + 4 * ids.len());
        data.extend_from_slice(MAGIC);
        for id in &ids {
            data.extend_from_slice(&id.to_le_bytes());
        }
        let tmp = dir.join(format!("{REGIONS_FILE}.tmp"));
        std::fs::write(&tmp, &data)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, dir.join(REGIONS_FILE))?;
        Ok(ids.len())
    }

    /// The picker to give foyer's block engine.
    pub fn picker(&self) -> Box<dyn EvictionPicker> {
        Box::new(self.clone())
    }
}

impl EvictionPicker for RegionOrder {
    fn pick(&mut self, _: EvictionInfo<'_>) -> Option<u32> {
        self.0.lock().by_rank.values().next().copied()
    }

    fn on_block_evictable(&mut self, _: EvictionInfo<'_>, block: u32) {
        let mut q = self.0.lock();
        let rank = match q.saved.remove(&block) {
            Some(r) => r,
            None => {
                q.next += 1;
                q.next
            }
        };
        q.by_rank.insert(rank, block);
        q.rank_of.insert(block, rank);
    }

    fn on_block_evict(&mut self, _: EvictionInfo<'_>, block: u32) {
        let mut q = self.0.lock();
        if let Some(rank) = q.rank_of.remove(&block) {
            q.by_rank.remove(&rank);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn info<'a>(evictable: &'a HashSet<u32>) -> EvictionInfo<'a> {
        EvictionInfo {
            blocks: &[],
            evictable,
            clean: 0,
        }
    }

    #[test]
    fn regions_leave_in_the_order_they_filled_also_after_a_clean_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let none = HashSet::new();
        let mut p = RegionOrder::load(dir.path()).expect("no file");
        for r in [7, 3, 9, 1] {
            p.on_block_evictable(info(&none), r);
        }
        assert_eq!(p.pick(info(&none)), Some(7));
        p.on_block_evict(info(&none), 7);
        assert_eq!(p.pick(info(&none)), Some(3));
        assert_eq!(p.save(dir.path()).expect("save"), 3);

        // foyer hands the recovered regions over in any order, and the one the flushers were filling last.
        let mut after = RegionOrder::load(dir.path()).expect("load");
        assert!(
            !dir.path().join(REGIONS_FILE).exists(),
            "deleted once loaded"
        );
        for r in [5, 1, 9, 3] {
            after.on_block_evictable(info(&none), r);
        }
        let mut order = Vec::new();
        while let Some(r) = after.pick(info(&none)) {
            after.on_block_evict(info(&none), r);
            order.push(r);
        }
        assert_eq!(
            order,
            vec![3, 9, 1, 5],
            "saved order first, the unknown (newest) region last"
        );

        std::fs::write(dir.path().join(REGIONS_FILE), b"nonsense").expect("write");
        assert!(RegionOrder::load(dir.path()).is_err());
    }
}
