//! The hash tree: its shape, and building it from the data blocks' digests.

use sha2::{Digest, Sha256};

use crate::{BLOCK_SIZE, DIGEST_LEN, HASHES_PER_BLOCK};

const BLOCK: usize = BLOCK_SIZE as usize;

/// SHA-256(salt ‖ block): hash type 1.
pub(crate) fn digest(salt: &[u8], block: &[u8]) -> [u8; DIGEST_LEN] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// The blocks of each tree level, level 0 (the data blocks' digests) first: ⌈n / 128^(i+1)⌉ for
/// level i, up to the level of one block. Empty for one data block (no tree).
pub(crate) fn level_blocks(data_blocks: u64) -> Vec<u64> {
    let mut levels = Vec::new();
    let mut n = data_blocks;
    while n > 1 {
        n = n.div_ceil(HASHES_PER_BLOCK);
        levels.push(n);
    }
    levels
}

/// Where each level starts, in hash blocks from the tree's first (top) block, level 0 first.
pub(crate) fn level_starts(levels: &[u64]) -> Vec<u64> {
    let mut starts = vec![0; levels.len()];
    let mut at = 0;
    for i in (0..levels.len()).rev() {
        starts[i] = at;
        at += levels[i];
    }
    starts
}

/// Bytes of the hash area of an image of `data_blocks` blocks (1 to [`crate::MAX_DATA_BLOCKS`]):
/// the superblock's block and the tree.
pub fn hash_area_len(data_blocks: u64) -> u64 {
    (1 + level_blocks(data_blocks).iter().sum::<u64>()) * BLOCK_SIZE
}

/// A built tree.
pub(crate) struct Tree {
    /// The tree as the hash area holds it after the superblock's block: top level first.
    pub bytes: Vec<u8>,
    pub root: [u8; DIGEST_LEN],
}

/// Builds the tree over the data blocks' digests (at least one).
pub(crate) fn build(salt: &[u8], data_digests: &[[u8; DIGEST_LEN]]) -> Tree {
    let mut levels: Vec<Vec<u8>> = Vec::new();
    let mut digests = data_digests.to_vec();
    while digests.len() > 1 {
        let mut level = Vec::with_capacity(digests.len().div_ceil(BLOCK / DIGEST_LEN) * BLOCK);
        for d in &digests {
            level.extend_from_slice(d);
        }
        level.resize(level.len().next_multiple_of(BLOCK), 0);
        digests = level.chunks_exact(BLOCK).map(|b| digest(salt, b)).collect();
        levels.push(level);
    }
    // One digest is left: the top block's, or the only data block's when there is no tree.
    let root = digests.first().copied().unwrap_or([0; DIGEST_LEN]);
    levels.reverse();
    let bytes = levels.concat();
    Tree { bytes, root }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_cryptsetups_count() {
        // cryptsetup and the kernel: the least L with (n - 1) >> (7 L) == 0.
        for n in [1u64, 2, 127, 128, 129, 16383, 16384, 16385, 1 << 21, (1 << 21) + 1, 1 << 42] {
            let mut want = 0;
            while (n - 1) >> (7 * want) != 0 {
                want += 1;
            }
            let levels = level_blocks(n);
            assert_eq!(levels.len(), want, "n = {n}");
            for (i, &b) in levels.iter().enumerate() {
                let s = 7 * (i as u32 + 1);
                assert_eq!(b, (n + (1 << s) - 1) >> s, "n = {n}, level {i}");
            }
        }
        assert_eq!(hash_area_len(1), 4096);
        assert_eq!(hash_area_len(129), 4 * 4096);
        assert_eq!(level_starts(&[129, 2, 1]), vec![3, 1, 0]);
    }
}
