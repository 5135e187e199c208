//! Sealing and verifying image files.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::superblock::{Superblock, field_name, read_superblock};
use crate::tree::{self, hash_area_len, level_blocks, level_starts};
use crate::{BLOCK_SIZE, DIGEST_LEN, MAGIC, MAX_DATA_BLOCKS, SALT_LEN, SUPERBLOCK_LEN, VerityError, VerityParams};

const BLOCK: usize = BLOCK_SIZE as usize;
/// Data blocks read at a time.
const CHUNK_BLOCKS: u64 = 256;

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> VerityError {
    move |source| VerityError::Io { op, path: path.to_path_buf(), source }
}

/// Seals the image at `path`: appends the hash area (the superblock's block, then the tree) after
/// its data, so that `hash_offset` is the image's length before the call, and returns the
/// parameters, root hash included.
///
/// The image must be a non-empty whole number of 4096-byte blocks ([`VerityError::Empty`],
/// [`VerityError::Unaligned`]); it is not padded here: pad it before (filesystems are built in
/// whole blocks anyway).
///
/// Sealing an image twice would seal the first seal's hash area as data. An image whose length is
/// exactly that of a sealed image of some n blocks and that has a verity superblock for n blocks
/// at byte 4096·n (one sealed here or by `veritysetup format` with the same configuration) is
/// refused ([`VerityError::AlreadySealed`]); the caller should still pass only unsealed images.
///
/// Writes the tree and makes it durable (fsync) before it writes the superblock and fsyncs again,
/// so a file with a superblock has its whole tree. If a write fails, the file is cut back to its
/// data (best effort). A crash during the call can leave part of a hash area after the data: seal
/// a copy and rename it over the final name once `seal` has returned.
pub fn seal(path: &Path, salt: [u8; SALT_LEN], uuid: [u8; 16]) -> Result<VerityParams, VerityError> {
    let mut file = OpenOptions::new().read(true).write(true).open(path).map_err(io_error("open", path))?;
    let len = file.metadata().map_err(io_error("stat", path))?.len();
    if len == 0 {
        return Err(VerityError::Empty);
    }
    if !len.is_multiple_of(BLOCK_SIZE) {
        return Err(VerityError::Unaligned(len));
    }
    let blocks = len / BLOCK_SIZE;
    if blocks > MAX_DATA_BLOCKS {
        return Err(VerityError::DataBlocks(blocks));
    }
    if let Some(n) = sealed_prefix(blocks) {
        let mut head = [0u8; 80];
        file.seek(SeekFrom::Start(n * BLOCK_SIZE)).map_err(io_error("seek", path))?;
        file.read_exact(&mut head).map_err(io_error("read", path))?;
        if head[..8] == MAGIC && head[72..80] == n.to_le_bytes() {
            return Err(VerityError::AlreadySealed { data_blocks: n, hash_offset: n * BLOCK_SIZE });
        }
    }
    let superblock = Superblock::new(uuid, blocks, &salt)?;
    let digests = data_digests(&mut file, blocks, &salt).map_err(io_error("read", path))?;
    let tree = tree::build(&salt, &digests);
    if let Err((op, e)) = write_area(&mut file, len, &superblock, &tree.bytes) {
        let _ = file.set_len(len);
        return Err(io_error(op, path)(e));
    }
    Ok(VerityParams { data_blocks: blocks, hash_offset: len, salt, uuid, root_hash: tree.root })
}

/// The n for which a sealed image of n data blocks is `total` blocks long, if there is one
/// (the length grows with n, so there is at most one).
fn sealed_prefix(total: u64) -> Option<u64> {
    let sealed_len = |n: u64| n + hash_area_len(n) / BLOCK_SIZE;
    let (mut lo, mut hi) = (1, total.checked_sub(1)?);
    while lo <= hi {
        let mid = lo + (hi - lo) / 2;
        match sealed_len(mid).cmp(&total) {
            std::cmp::Ordering::Equal => return Some(mid),
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid.checked_sub(1)?,
        }
    }
    None
}

/// The digest of each of the first `blocks` blocks of `file`.
fn data_digests(file: &mut File, blocks: u64, salt: &[u8]) -> io::Result<Vec<[u8; DIGEST_LEN]>> {
    file.seek(SeekFrom::Start(0))?;
    let mut digests = Vec::with_capacity(blocks.min(1 << 20) as usize);
    let mut buf = vec![0u8; CHUNK_BLOCKS as usize * BLOCK];
    let mut left = blocks;
    while left > 0 {
        let k = left.min(CHUNK_BLOCKS);
        let chunk = &mut buf[..k as usize * BLOCK];
        file.read_exact(chunk)?;
        digests.extend(chunk.chunks_exact(BLOCK).map(|b| tree::digest(salt, b)));
        left -= k;
    }
    Ok(digests)
}

/// Writes the tree after the superblock's block and syncs it, then the superblock's block.
fn write_area(file: &mut File, at: u64, sb: &Superblock, tree: &[u8]) -> Result<(), (&'static str, io::Error)> {
    if !tree.is_empty() {
        file.seek(SeekFrom::Start(at + BLOCK_SIZE)).map_err(|e| ("seek", e))?;
        file.write_all(tree).map_err(|e| ("write", e))?;
        file.sync_data().map_err(|e| ("fsync", e))?;
    }
    let mut block = vec![0u8; BLOCK];
    block[..SUPERBLOCK_LEN].copy_from_slice(&sb.to_bytes());
    file.seek(SeekFrom::Start(at)).map_err(|e| ("seek", e))?;
    file.write_all(&block).map_err(|e| ("write", e))?;
    file.sync_all().map_err(|e| ("fsync", e))
}

/// Checks a sealed image against `expected`, every byte of it: the file is exactly data and hash
/// area, the superblock's block is the one [`seal`] writes for these parameters, and every data
/// and hash block hashes to its digest, up to `expected.root_hash`.
///
/// The first difference is the error: [`VerityError::FileLength`], a superblock field (a parse
/// error, or [`VerityError::SuperblockField`]), then, from the root hash down as the kernel
/// checks (the root is the value to trust), the first [`VerityError::HashBlock`] that does not
/// match its digest in the level above, else the first [`VerityError::DataBlock`]. A tree that
/// matches the data but has another root is [`VerityError::RootHash`] (the wrong root hash, or
/// an image sealed again). With one data block there is no tree: the root hash is that block's
/// digest, and a mismatch is `DataBlock(0)`.
///
/// Reads the data once; holds the hash area and a recomputed tree in memory (each about 1/128 of
/// the data).
pub fn verify(path: &Path, expected: &VerityParams) -> Result<(), VerityError> {
    let n = expected.data_blocks;
    if !(1..=MAX_DATA_BLOCKS).contains(&n) {
        return Err(VerityError::DataBlocks(n));
    }
    if expected.hash_offset != n * BLOCK_SIZE {
        return Err(VerityError::Layout { data_blocks: n, hash_offset: expected.hash_offset });
    }
    let area_len = hash_area_len(n);
    let mut file = File::open(path).map_err(io_error("open", path))?;
    let found = file.metadata().map_err(io_error("stat", path))?.len();
    if found != expected.hash_offset + area_len {
        return Err(VerityError::FileLength { expected: expected.hash_offset + area_len, found });
    }

    let mut area = vec![0u8; area_len as usize];
    file.seek(SeekFrom::Start(expected.hash_offset)).map_err(io_error("seek", path))?;
    file.read_exact(&mut area).map_err(io_error("read", path))?;
    let (sb_block, stored) = area.split_at(BLOCK);
    let mut want_block = vec![0u8; BLOCK];
    want_block[..SUPERBLOCK_LEN].copy_from_slice(&Superblock::new(expected.uuid, n, &expected.salt)?.to_bytes());
    if let Some(offset) = sb_block.iter().zip(&want_block).position(|(a, b)| a != b) {
        // A field that does not parse is its own error; a valid one with another value is named.
        read_superblock(sb_block)?;
        return Err(VerityError::SuperblockField { field: field_name(offset), offset });
    }

    let salt = &expected.salt;
    let digests = data_digests(&mut file, n, salt).map_err(io_error("read", path))?;
    let tree = tree::build(salt, &digests);
    if tree.bytes == stored {
        if tree.root == expected.root_hash {
            return Ok(());
        }
        if !stored.is_empty() {
            return Err(VerityError::RootHash { expected: expected.root_hash, found: tree.root });
        }
    }

    // Which part differs, from the trusted root down.
    let levels = level_blocks(n);
    let starts = level_starts(&levels);
    let entry = |level: usize, index: u64| -> &[u8] {
        let at = (starts[level] * BLOCK_SIZE) as usize + index as usize * DIGEST_LEN;
        &stored[at..at + DIGEST_LEN]
    };
    for level in (0..levels.len()).rev() {
        for index in 0..levels[level] {
            let at = ((starts[level] + index) * BLOCK_SIZE) as usize;
            let want = if level + 1 == levels.len() { &expected.root_hash[..] } else { entry(level + 1, index) };
            if tree::digest(salt, &stored[at..at + BLOCK]) != want {
                let offset = expected.hash_offset + BLOCK_SIZE + at as u64;
                return Err(VerityError::HashBlock { level, index, offset });
            }
        }
    }
    for (index, digest) in (0u64..).zip(&digests) {
        let want = if levels.is_empty() { &expected.root_hash[..] } else { entry(0, index) };
        if digest[..] != *want {
            return Err(VerityError::DataBlock(index));
        }
    }
    // Every block matches its digest, yet the trees differ: only a SHA-256 collision gets here.
    Err(VerityError::RootHash { expected: expected.root_hash, found: tree.root })
}

/// [`verify`] with only the root hash and the hash offset known (what a kernel command line or
/// a signed manifest gives): the other parameters come from the superblock at `hash_offset`,
/// which must have a 32-byte salt ([`VerityError::SaltLength`]). Returns the parameters.
pub fn verify_with_root(
    path: &Path,
    hash_offset: u64,
    root_hash: [u8; DIGEST_LEN],
) -> Result<VerityParams, VerityError> {
    let mut file = File::open(path).map_err(io_error("open", path))?;
    file.seek(SeekFrom::Start(hash_offset)).map_err(io_error("seek", path))?;
    let mut head = Vec::with_capacity(SUPERBLOCK_LEN);
    file.take(SUPERBLOCK_LEN as u64).read_to_end(&mut head).map_err(io_error("read", path))?;
    let sb = read_superblock(&head)?;
    let salt: [u8; SALT_LEN] = sb.salt().try_into().map_err(|_| VerityError::SaltLength(sb.salt().len()))?;
    let params = VerityParams { data_blocks: sb.data_blocks(), hash_offset, salt, uuid: sb.uuid(), root_hash };
    verify(path, &params)?;
    Ok(params)
}
