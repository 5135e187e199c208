use std::path::PathBuf;

use crate::{BLOCK_SIZE, MAX_DATA_BLOCKS, MAX_SALT_LEN, SALT_LEN, SUPERBLOCK_LEN, hex};

/// Why an image cannot be sealed, a superblock is not one, or a sealed image does not verify.
/// Verification failures name the part that differs: a superblock field, a hash block, a data
/// block, or the root hash.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    // Sealing.
    #[error("image is empty: nothing to seal")]
    Empty,
    #[error("image of {0} bytes is not a whole number of {BLOCK_SIZE}-byte blocks (pad it first)")]
    Unaligned(u64),
    #[error("image is already sealed: a verity superblock for its first {data_blocks} blocks is at byte {hash_offset}")]
    AlreadySealed { data_blocks: u64, hash_offset: u64 },

    // The superblock.
    #[error("verity superblock of {0} bytes is shorter than {SUPERBLOCK_LEN}")]
    Truncated(usize),
    #[error("not a verity superblock (magic {0:02x?})")]
    Magic([u8; 8]),
    #[error("verity superblock version {0}; only version 1 exists")]
    Version(u32),
    #[error("verity hash type {0}; only type 1 (salt before the block) is supported")]
    HashType(u32),
    #[error("verity hash algorithm {0:?}; only sha256 is supported")]
    Algorithm(String),
    #[error("verity data block size {0}; only {BLOCK_SIZE} is supported")]
    DataBlockSize(u32),
    #[error("verity hash block size {0}; only {BLOCK_SIZE} is supported")]
    HashBlockSize(u32),
    #[error("{0} data blocks (1 to {MAX_DATA_BLOCKS})")]
    DataBlocks(u64),
    #[error("verity salt of {0} bytes (at most {MAX_SALT_LEN})")]
    SaltSize(usize),
    #[error("verity superblock byte {0} is reserved and must be zero")]
    Reserved(usize),

    // Verifying.
    #[error("verity salt of {0} bytes; this crate uses {SALT_LEN}")]
    SaltLength(usize),
    #[error("hash offset {hash_offset} is not the end of {data_blocks} data blocks")]
    Layout { data_blocks: u64, hash_offset: u64 },
    #[error("sealed image is {found} bytes; its verity parameters make it {expected}")]
    FileLength { expected: u64, found: u64 },
    #[error("verity superblock field {field} (byte {offset}) differs from the expected parameters")]
    SuperblockField { field: &'static str, offset: usize },
    #[error(
        "hash block {index} of tree level {level} (file byte {offset}) does not match its digest in the level above"
    )]
    HashBlock { level: usize, index: u64, offset: u64 },
    #[error("data block {0} does not match its digest in the hash tree")]
    DataBlock(u64),
    #[error("the hash tree matches the data, but its root hash is {}, not the expected {}", hex(.found), hex(.expected))]
    RootHash { expected: [u8; 32], found: [u8; 32] },
}
