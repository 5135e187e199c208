//! dm-verity hash trees in the standard on-disk format, the one cryptsetup's `veritysetup` writes
//! and reads and the Linux kernel's `verity` device-mapper target checks: [`seal`] appends the
//! hash area (superblock and tree) to an image file, [`verify`] recomputes every digest and names
//! the first part that differs, [`read_superblock`] parses the superblock.
//!
//! One configuration only, the one `veritysetup format` uses by default: hash `sha256`, 4096-byte
//! data and hash blocks, hash type 1 (the salt is hashed before the block), a 32-byte salt. Salt
//! and UUID come from the caller, so a seal is a pure function of the image and them.
//!
//! # A sealed image
//!
//! The hash area follows the data in the same file; its offset (`hash_offset`) is the data's
//! length. Every region is a whole number of 4096-byte blocks.
//!
//! | offset (bytes) | size | what |
//! | --- | --- | --- |
//! | 0 | 4096·n | the data, n blocks |
//! | 4096·n | 4096 | the superblock (512 bytes, below), zero-padded to a hash block |
//! | 4096·(n+1) | 4096·(b_0 + … + b_(L−1)) | the tree (below): level L−1, the top, one block, first; level 0 last |
//!
//! The file ends with level 0: [`verify`] refuses bytes after it.
//!
//! # The superblock
//!
//! 512 bytes, integers little endian (cryptsetup's `struct verity_sb`; the kernel never reads it,
//! `veritysetup` does):
//!
//! | offset | size | field | value |
//! | --- | --- | --- | --- |
//! | 0 | 8 | magic | `verity\0\0` |
//! | 8 | 4 | version (of the superblock) | 1 |
//! | 12 | 4 | hash type | 1 (0 is Chrome OS's: salt after the block; not supported) |
//! | 16 | 16 | uuid | the caller's, bytes in the order of the text form |
//! | 32 | 32 | algorithm | `sha256`, NUL padded |
//! | 64 | 4 | data block size | 4096 |
//! | 68 | 4 | hash block size | 4096 |
//! | 72 | 8 | data blocks | n (1 to [`MAX_DATA_BLOCKS`]) |
//! | 80 | 2 | salt size | 32 when sealed here; the parser takes 0 to 256 |
//! | 82 | 6 | reserved | zero |
//! | 88 | 256 | salt | salt size bytes, then zeros |
//! | 344 | 168 | reserved | zero |
//!
//! [`read_superblock`] checks every field, reserved bytes included, each failure its own
//! [`VerityError`].
//!
//! # The tree
//!
//! digest(x) = SHA-256(salt ‖ x). Level 0 holds the digests of data blocks 0..n in order, 128 to
//! a hash block (32 bytes each), its last block zero-padded; level i+1 holds the digests of
//! level i's blocks the same way. Level i has b_i = ⌈n / 128^(i+1)⌉ blocks, and there are L
//! levels, L the least with n − 1 < 128^L: no level for 1 block, 1 level up to 128 blocks, 2 up to
//! 16384, 3 up to 2²¹. The root hash is the digest of the top level's single block, or, for a
//! one-block image (L = 0, no tree), the digest of the data block itself.
//!
//! # Using a sealed image
//!
//! [`VerityParams::dm_table`] gives the kernel's `verity` table line (e.g. for the
//! `dm-mod.create=` boot parameter); [`VerityParams::veritysetup_verify_args`] the equivalent
//! `veritysetup verify` command. The kernel reads no superblock: its `hash_start_block` is the
//! top tree block, one hash block past the superblock (`hash_offset / 4096 + 1`, as cryptsetup
//! computes it when it activates a device).
#![forbid(unsafe_code)]

mod error;
mod image;
mod superblock;
mod tree;

pub use error::VerityError;
pub use image::{seal, verify, verify_with_root};
pub use superblock::{Superblock, field_name, fuzz_superblock, read_superblock};
pub use tree::hash_area_len;

/// Bytes in a data block and in a hash block.
pub const BLOCK_SIZE: u64 = 4096;
/// Bytes in the superblock (the rest of its hash block is zero).
pub const SUPERBLOCK_LEN: usize = 512;
/// Bytes in a digest (SHA-256).
pub const DIGEST_LEN: usize = 32;
/// Digests in a hash block.
pub const HASHES_PER_BLOCK: u64 = BLOCK_SIZE / DIGEST_LEN as u64;
/// Bytes of salt this crate seals with.
pub const SALT_LEN: usize = 32;
/// The longest salt the superblock can hold.
pub const MAX_SALT_LEN: usize = 256;
/// The most data blocks an image may have (16 PiB of data): keeps every size and offset far from
/// `u64` overflow.
pub const MAX_DATA_BLOCKS: u64 = 1 << 42;
/// `verity\0\0`.
pub const MAGIC: [u8; 8] = *b"verity\0\0";
/// The hash algorithm, as the superblock, `veritysetup` and the kernel name it.
pub const ALGORITHM: &str = "sha256";

/// What a sealed image's verity device is made of: everything `veritysetup` or the kernel needs
/// besides the file itself. The root hash is the value to trust (sign it, or put it on a kernel
/// command line one trusts); the rest is also in the superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    /// Data blocks of 4096 bytes, from the file's start.
    pub data_blocks: u64,
    /// Where the superblock begins in the file, in bytes: the data's length.
    pub hash_offset: u64,
    pub salt: [u8; SALT_LEN],
    pub uuid: [u8; 16],
    pub root_hash: [u8; DIGEST_LEN],
}

impl VerityParams {
    /// The hash block, counted from the start of the hash device (here the image itself), where
    /// the tree's top block is: one past the superblock's block. This is the kernel's
    /// `<hash_start_block>` and what cryptsetup computes for activation
    /// (`⌈(hash_offset + 512) / 4096⌉`).
    pub fn hash_start_block(&self) -> u64 {
        (self.hash_offset + SUPERBLOCK_LEN as u64).div_ceil(BLOCK_SIZE)
    }

    /// The root hash in lowercase hex, as `veritysetup` prints and takes it.
    pub fn root_hex(&self) -> String {
        hex(&self.root_hash)
    }

    /// The salt in lowercase hex.
    pub fn salt_hex(&self) -> String {
        hex(&self.salt)
    }

    /// The UUID in its text form (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`), as `veritysetup dump`
    /// prints it and `--uuid` takes it.
    pub fn uuid_string(&self) -> String {
        uuid_string(&self.uuid)
    }

    /// The device-mapper table line of the verity device, `data_dev` and `hash_dev` being block
    /// devices holding the image (the same one for an image sealed here):
    ///
    /// `0 <sectors> verity 1 <data_dev> <hash_dev> 4096 4096 <data_blocks> <hash_start_block> sha256 <root> <salt>`
    ///
    /// (start sector, length in 512-byte sectors, target, then the `verity` target's arguments of
    /// the kernel's `Documentation/admin-guide/device-mapper/verity.rst`.) For a root device at
    /// boot: `dm-mod.create="root,,,ro,<this line>" root=/dev/dm-0`, with
    /// `dm-mod.waitfor=<data_dev>` if the device appears late.
    pub fn dm_table(&self, data_dev: &str, hash_dev: &str) -> String {
        format!(
            "0 {sectors} verity 1 {data_dev} {hash_dev} {BLOCK_SIZE} {BLOCK_SIZE} {blocks} {start} {ALGORITHM} {root} {salt}",
            sectors = self.data_blocks * (BLOCK_SIZE / 512),
            blocks = self.data_blocks,
            start = self.hash_start_block(),
            root = self.root_hex(),
            salt = self.salt_hex(),
        )
    }

    /// The arguments of `veritysetup` (after the program name) that check `image` against these
    /// parameters in userspace: `verify <image> <image> <root> --hash-offset=<hash_offset>`.
    /// `veritysetup` takes the rest (salt, data blocks, sizes) from the superblock.
    pub fn veritysetup_verify_args(&self, image: &str) -> Vec<String> {
        vec![
            "verify".into(),
            image.into(),
            image.into(),
            self.root_hex(),
            format!("--hash-offset={}", self.hash_offset),
        ]
    }
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The text form of a UUID.
pub(crate) fn uuid_string(uuid: &[u8; 16]) -> String {
    let h = hex(uuid);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}
