//! The Merkle DAG of accepted records: heights, heads, ancestry, and "what does a peer lack".

extern crate alloc;
use crate::record::{Record, RecordId};
use alloc::collections::{BTreeMap, BTreeSet, BinaryHeap};
use alloc::vec::Vec;

#[derive(Debug)]
struct Entry {
    record: Record,
    /// 0 for a record without parents, else 1 + the highest parent's height.
    height: u32,
}

/// Accepted records. A record enters only after all its parents, so acceptance order is a
/// topological order.
#[derive(Debug, Default)]
pub struct Dag {
    entries: BTreeMap<RecordId, Entry>,
    heads: BTreeSet<RecordId>,
    order: Vec<RecordId>,
}

impl Dag {
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn contains(&self, id: &RecordId) -> bool {
        self.entries.contains_key(id)
    }

    pub fn get(&self, id: &RecordId) -> Option<&Record> {
        self.entries.get(id).map(|e| &e.record)
    }

    pub fn height(&self, id: &RecordId) -> Option<u32> {
        self.entries.get(id).map(|e| e.height)
    }

    /// Records with no children, ascending by id.
    pub fn heads(&self) -> impl Iterator<Item = &RecordId> {
        self.heads.iter()
    }

    pub fn head_count(&self) -> usize {
        self.heads.len()
    }

    /// Records in acceptance (topological) order.
    pub fn iter(&self) -> impl Iterator<Item = &Record> {
        self.order.iter().map(|id| &self.entries[id].record)
    }

    /// True when every parent of `record` is present.
    pub fn parents_present(&self, record: &Record) -> bool {
        record.parents.iter().all(|p| self.entries.contains_key(p))
    }

    /// Up to `N` records that are not heads, exponentially spaced back from the newest in
    /// acceptance order: the 2nd, 3rd, 5th, 9th, 17th, ... newest.
    pub fn known_sample<const N: usize>(&self) -> heapless::Vec<RecordId, N> {
        let mut out = heapless::Vec::new();
        let n = self.order.len();
        let mut back = 1usize;
        while back < n && out.len() < N {
            let id = self.order[n - 1 - back];
            if !self.heads.contains(&id) {
                let _ = out.push(id);
            }
            back *= 2;
        }
        out
    }

    /// Adds a record whose parents are all present.
    pub fn insert(&mut self, record: Record) {
        debug_assert!(self.parents_present(&record));
        let height = record.parents.iter().filter_map(|p| self.height(p)).max().map_or(0, |h| h + 1);
        for p in &record.parents {
            self.heads.remove(p);
        }
        self.heads.insert(record.id);
        self.order.push(record.id);
        self.entries.insert(record.id, Entry { record, height });
    }

    /// True when any of `targets` is `from` itself or an ancestor of a record in `from`. The
    /// walk goes down from `from` and never below the lowest target's height.
    pub fn reaches_any(&self, from: &[RecordId], targets: &[RecordId]) -> bool {
        let Some(floor) = targets.iter().filter_map(|t| self.height(t)).min() else { return false };
        let mut seen = BTreeSet::new();
        let mut stack: Vec<RecordId> = from.to_vec();
        while let Some(id) = stack.pop() {
            if targets.contains(&id) {
                return true;
            }
            let Some(e) = self.entries.get(&id) else { continue };
            if e.height <= floor || !seen.insert(id) {
                continue;
            }
            stack.extend(e.record.parents.iter().copied());
        }
        false
    }

    /// Records a peer whose heads are `peer_heads` lacks, parents first, at most `limit`; and
    /// whether more are lacking. Heads this replica does not know are ignored (the peer has
    /// something this replica lacks; the reverse request fetches it).
    ///
    /// Walks down from both sets of heads at once, highest first, painting records the peer
    /// has; it stops when no unpainted record is left on the frontier, so the work is
    /// proportional to the difference plus the frontier, not to the ledger.
    pub fn lacking(&self, peer_heads: &[RecordId], limit: usize) -> (Vec<&Record>, bool) {
        if !peer_heads.iter().any(|id| self.entries.contains_key(id)) {
            // The peer holds nothing this replica knows: the oldest records, no walk.
            let recs = self.order.iter().take(limit).map(|id| &self.entries[id].record).collect();
            return (recs, self.order.len() > limit);
        }
        const MINE: u8 = 1;
        const THEIRS: u8 = 2;
        let mut flags: BTreeMap<RecordId, u8> = BTreeMap::new();
        let mut heap = BinaryHeap::new();
        let mut unpainted = 0usize;
        let push = |id: RecordId,
                    f: u8,
                    flags: &mut BTreeMap<RecordId, u8>,
                    heap: &mut BinaryHeap<(u32, RecordId)>,
                    unpainted: &mut usize| {
            let Some(h) = self.height(&id) else { return };
            match flags.get_mut(&id) {
                None => {
                    flags.insert(id, f);
                    heap.push((h, id));
                    if f == MINE {
                        *unpainted += 1;
                    }
                }
                Some(old) => {
                    if *old == MINE && f & THEIRS != 0 {
                        *unpainted -= 1;
                    }
                    *old |= f;
                }
            }
        };
        for id in peer_heads {
            push(*id, THEIRS, &mut flags, &mut heap, &mut unpainted);
        }
        for id in &self.heads {
            push(*id, MINE, &mut flags, &mut heap, &mut unpainted);
        }
        let mut lacking = Vec::new();
        while unpainted > 0 {
            let Some((_, id)) = heap.pop() else { break };
            let f = flags[&id];
            if f == MINE {
                unpainted -= 1;
                lacking.push(id);
            }
            let paint = if f & THEIRS != 0 { THEIRS } else { MINE };
            for p in &self.entries[&id].record.parents {
                push(*p, paint, &mut flags, &mut heap, &mut unpainted);
            }
        }
        // Found highest first; send lowest first so every record's parents precede it.
        lacking.sort_by_key(|id| (self.entries[id].height, *id));
        let more = lacking.len() > limit;
        lacking.truncate(limit);
        (lacking.iter().map(|id| &self.entries[id].record).collect(), more)
    }
}
