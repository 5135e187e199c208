//! Block ranges, and coalesced sets of them with a best-fit index.

use crate::{BLOCK_BYTES, Error, MAX_RANGES};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::ops::Bound;

/// `len` consecutive blocks from block number `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockRange {
    pub start: u32,
    pub len: u32,
}

impl BlockRange {
    pub const fn new(start: u32, len: u32) -> Self {
        Self { start, len }
    }

    /// One past the last block (a `u64`: never overflows).
    pub const fn end(&self) -> u64 {
        self.start as u64 + self.len as u64
    }

    /// Byte offset of the first block in the pool's memory.
    pub const fn byte_offset(&self) -> u64 {
        self.start as u64 * BLOCK_BYTES as u64
    }

    /// Bytes the range covers.
    pub const fn byte_len(&self) -> u64 {
        self.len as u64 * BLOCK_BYTES as u64
    }

    pub const fn contains(&self, block: u32) -> bool {
        block >= self.start && (block as u64) < self.end()
    }

    /// True when `inner` lies entirely within `self`.
    pub const fn covers(&self, inner: &BlockRange) -> bool {
        inner.start >= self.start && inner.end() <= self.end()
    }
}

/// Total blocks of `ranges`.
pub(crate) fn total(ranges: &[BlockRange]) -> u64 {
    ranges.iter().map(|r| r.len as u64).sum()
}

/// A set of blocks kept as maximal (coalesced) ranges, indexed by start and by (length, start).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Extents {
    by_start: BTreeMap<u32, u32>,
    by_len: BTreeSet<(u32, u32)>,
    blocks: u64,
}

impl Extents {
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    pub fn iter(&self) -> impl Iterator<Item = BlockRange> + '_ {
        self.by_start.iter().map(|(&start, &len)| BlockRange { start, len })
    }

    /// The extent holding `block`, if any.
    fn extent_of(&self, block: u32) -> Option<BlockRange> {
        let (&start, &len) = self.by_start.range(..=block).next_back()?;
        let r = BlockRange { start, len };
        r.contains(block).then_some(r)
    }

    /// True when every block of `r` (non-empty) is in the set.
    pub fn covers(&self, r: &BlockRange) -> bool {
        r.len > 0 && self.extent_of(r.start).is_some_and(|e| e.covers(r))
    }

    fn put(&mut self, r: BlockRange) {
        self.by_start.insert(r.start, r.len);
        self.by_len.insert((r.len, r.start));
    }

    fn take(&mut self, r: BlockRange) {
        self.by_start.remove(&r.start);
        self.by_len.remove(&(r.len, r.start));
    }

    /// Adds `r`, which must be disjoint from the set, merging it with its neighbours.
    pub fn insert(&mut self, r: BlockRange) {
        if r.len == 0 {
            return;
        }
        let mut merged = r;
        if let Some((&s, &l)) = self.by_start.range(..r.start).next_back()
            && s as u64 + l as u64 == r.start as u64
        {
            self.take(BlockRange { start: s, len: l });
            merged = BlockRange { start: s, len: l + merged.len };
        }
        if let Ok(end) = u32::try_from(r.end())
            && let Some(&l) = self.by_start.get(&end)
        {
            self.take(BlockRange { start: end, len: l });
            merged.len += l;
        }
        self.put(merged);
        self.blocks += r.len as u64;
    }

    /// Removes `r`, splitting the extent that holds it. `false` (and no change) unless the set
    /// covers `r`.
    pub fn remove(&mut self, r: BlockRange) -> bool {
        if !self.covers(&r) {
            return false;
        }
        let Some(e) = self.extent_of(r.start) else { return false };
        self.take(e);
        if r.start > e.start {
            self.put(BlockRange { start: e.start, len: r.start - e.start });
        }
        if r.end() < e.end() {
            self.put(BlockRange { start: (r.end()) as u32, len: (e.end() - r.end()) as u32 });
        }
        self.blocks -= r.len as u64;
        true
    }

    /// The blocks for an allocation of `n` (at least 1, at most [`Extents::blocks`]), preferring
    /// contiguity: the first `n` blocks of the smallest extent that holds `n` (best fit; the
    /// lowest such on a tie); failing that, whole extents largest first until the rest fits an
    /// extent, which is chosen best fit again. Fewest ranges possible; ascending; no change.
    pub fn plan(&self, n: u32) -> Result<Vec<BlockRange>, Error> {
        let mut out = Vec::new();
        let mut remaining = n;
        // Extents at or above `bound` in (len, start) order are taken already.
        let mut bound: Bound<(u32, u32)> = Bound::Unbounded;
        loop {
            // An empty search when `remaining` is past the bound (`range` would panic on it).
            let fit = match bound {
                Bound::Excluded(b) if (remaining, 0) >= b => None,
                _ => self.by_len.range((Bound::Included((remaining, 0)), bound)).next(),
            };
            if let Some(&(_, start)) = fit {
                out.push(BlockRange { start, len: remaining });
                break;
            }
            let Some(&(len, start)) = self.by_len.range((Bound::Unbounded, bound)).next_back() else {
                // Cannot happen when n <= blocks; the caller checks.
                return Err(Error::NotEnoughFree { requested: n, free: self.blocks.min(u32::MAX as u64) as u32 });
            };
            if out.len() + 1 >= MAX_RANGES {
                return Err(Error::TooFragmented { requested: n });
            }
            out.push(BlockRange { start, len });
            remaining -= len;
            bound = Bound::Excluded((len, start));
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Checks the indexes agree, extents are maximal and disjoint, and the count is right.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.by_start.len() != self.by_len.len() {
            return Err("extent indexes differ in size");
        }
        let mut prev_end: Option<u64> = None;
        let mut sum = 0u64;
        for r in self.iter() {
            if r.len == 0 {
                return Err("an empty extent");
            }
            if !self.by_len.contains(&(r.len, r.start)) {
                return Err("extent missing from the length index");
            }
            if let Some(p) = prev_end
                && p >= r.start as u64
            {
                return Err("extents overlap or touch (not coalesced)");
            }
            prev_end = Some(r.end());
            sum += r.len as u64;
        }
        if sum != self.blocks {
            return Err("extent block count is wrong");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ranges: &[(u32, u32)]) -> Extents {
        let mut e = Extents::default();
        for &(s, l) in ranges {
            e.insert(BlockRange::new(s, l));
        }
        e.check().unwrap();
        e
    }

    #[test]
    fn insert_coalesces_and_remove_splits() {
        let mut e = set(&[(0, 2), (4, 2), (2, 2)]);
        assert_eq!(e.iter().collect::<Vec<_>>(), [BlockRange::new(0, 6)]);
        assert!(e.remove(BlockRange::new(2, 1)));
        assert_eq!(e.iter().collect::<Vec<_>>(), [BlockRange::new(0, 2), BlockRange::new(3, 3)]);
        assert!(!e.remove(BlockRange::new(1, 3)), "not covered: nothing removed");
        assert_eq!(e.blocks(), 5);
        e.check().unwrap();
    }

    #[test]
    fn plan_is_best_fit_then_largest_first() {
        let e = set(&[(0, 5), (10, 3), (20, 8), (40, 3)]);
        assert_eq!(e.plan(3).unwrap(), [BlockRange::new(10, 3)], "smallest that fits, lowest on a tie");
        assert_eq!(e.plan(4).unwrap(), [BlockRange::new(0, 4)]);
        assert_eq!(e.plan(8).unwrap(), [BlockRange::new(20, 8)]);
        // 8 + best fit of 3 among the rest.
        assert_eq!(e.plan(11).unwrap(), [BlockRange::new(10, 3), BlockRange::new(20, 8)]);
        assert_eq!(e.plan(14).unwrap(), [BlockRange::new(0, 5), BlockRange::new(10, 1), BlockRange::new(20, 8)]);
        assert_eq!(e.plan(19).unwrap().iter().map(|r| r.len as u64).sum::<u64>(), 19);
        // The rest stays larger than every extent left.
        let even = set(&[(0, 5), (10, 5), (20, 5), (30, 5)]);
        assert_eq!(even.plan(20).unwrap().len(), 4);
        assert_eq!(
            even.plan(17).unwrap().iter().map(|r| r.len).collect::<Vec<_>>(),
            [2, 5, 5, 5],
            "the rest from the lowest extent left"
        );
    }
}
