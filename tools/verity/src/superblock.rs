//! The 512-byte verity superblock (the table in the crate's documentation).

use crate::{ALGORITHM, BLOCK_SIZE, MAGIC, MAX_DATA_BLOCKS, MAX_SALT_LEN, SUPERBLOCK_LEN, VerityError, tree};

const VERSION: u32 = 1;
const HASH_TYPE: u32 = 1;

// Field offsets.
const O_VERSION: usize = 8;
const O_HASH_TYPE: usize = 12;
const O_UUID: usize = 16;
const O_ALGORITHM: usize = 32;
const ALGORITHM_FIELD: usize = 32;
const O_DATA_BLOCK_SIZE: usize = 64;
const O_HASH_BLOCK_SIZE: usize = 68;
const O_DATA_BLOCKS: usize = 72;
const O_SALT_SIZE: usize = 80;
const O_RESERVED1: usize = 82;
const O_SALT: usize = 88;
const O_RESERVED2: usize = O_SALT + MAX_SALT_LEN;

/// A parsed superblock. Only what this crate supports parses (version 1, hash type 1, `sha256`,
/// 4096-byte blocks), so those fields are not kept; the rest are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    uuid: [u8; 16],
    data_blocks: u64,
    salt: Vec<u8>,
}

impl Superblock {
    /// A superblock for `data_blocks` (1 to [`MAX_DATA_BLOCKS`]) and a salt of at most 256 bytes.
    pub fn new(uuid: [u8; 16], data_blocks: u64, salt: &[u8]) -> Result<Self, VerityError> {
        if !(1..=MAX_DATA_BLOCKS).contains(&data_blocks) {
            return Err(VerityError::DataBlocks(data_blocks));
        }
        if salt.len() > MAX_SALT_LEN {
            return Err(VerityError::SaltSize(salt.len()));
        }
        Ok(Self { uuid, data_blocks, salt: salt.to_vec() })
    }

    pub fn uuid(&self) -> [u8; 16] {
        self.uuid
    }

    pub fn data_blocks(&self) -> u64 {
        self.data_blocks
    }

    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    /// The 512 bytes, reserved bytes zero: what `veritysetup format` writes for the same values.
    pub fn to_bytes(&self) -> [u8; SUPERBLOCK_LEN] {
        let mut b = [0u8; SUPERBLOCK_LEN];
        b[..O_VERSION].copy_from_slice(&MAGIC);
        b[O_VERSION..O_HASH_TYPE].copy_from_slice(&VERSION.to_le_bytes());
        b[O_HASH_TYPE..O_UUID].copy_from_slice(&HASH_TYPE.to_le_bytes());
        b[O_UUID..O_ALGORITHM].copy_from_slice(&self.uuid);
        b[O_ALGORITHM..O_ALGORITHM + ALGORITHM.len()].copy_from_slice(ALGORITHM.as_bytes());
        b[O_DATA_BLOCK_SIZE..O_HASH_BLOCK_SIZE].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
        b[O_HASH_BLOCK_SIZE..O_DATA_BLOCKS].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
        b[O_DATA_BLOCKS..O_SALT_SIZE].copy_from_slice(&self.data_blocks.to_le_bytes());
        // `new` and the parser keep the salt within 256 bytes.
        let salt = &self.salt[..self.salt.len().min(MAX_SALT_LEN)];
        b[O_SALT_SIZE..O_RESERVED1].copy_from_slice(&(salt.len() as u16).to_le_bytes());
        b[O_SALT..O_SALT + salt.len()].copy_from_slice(salt);
        b
    }
}

/// Parses the superblock at the start of `bytes` (at least 512 bytes; anything after them is not
/// looked at). Every field is checked, in order, and reserved bytes (the algorithm name's and the
/// salt's padding included) must be zero: a change to any byte either is an error or gives a
/// different [`Superblock`].
pub fn read_superblock(bytes: &[u8]) -> Result<Superblock, VerityError> {
    let b: &[u8; SUPERBLOCK_LEN] =
        bytes.get(..SUPERBLOCK_LEN).and_then(|b| b.try_into().ok()).ok_or(VerityError::Truncated(bytes.len()))?;
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);

    let magic: [u8; 8] = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
    if magic != MAGIC {
        return Err(VerityError::Magic(magic));
    }
    let version = u32_at(O_VERSION);
    if version != VERSION {
        return Err(VerityError::Version(version));
    }
    let hash_type = u32_at(O_HASH_TYPE);
    if hash_type != HASH_TYPE {
        return Err(VerityError::HashType(hash_type));
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&b[O_UUID..O_ALGORITHM]);

    let field = &b[O_ALGORITHM..O_ALGORITHM + ALGORITHM_FIELD];
    let name_len = field.iter().position(|&c| c == 0).unwrap_or(ALGORITHM_FIELD);
    if &field[..name_len] != ALGORITHM.as_bytes() {
        return Err(VerityError::Algorithm(String::from_utf8_lossy(&field[..name_len]).into_owned()));
    }
    zero(b, O_ALGORITHM + name_len, O_DATA_BLOCK_SIZE)?;

    let data_block_size = u32_at(O_DATA_BLOCK_SIZE);
    if u64::from(data_block_size) != BLOCK_SIZE {
        return Err(VerityError::DataBlockSize(data_block_size));
    }
    let hash_block_size = u32_at(O_HASH_BLOCK_SIZE);
    if u64::from(hash_block_size) != BLOCK_SIZE {
        return Err(VerityError::HashBlockSize(hash_block_size));
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&b[O_DATA_BLOCKS..O_SALT_SIZE]);
    let data_blocks = u64::from_le_bytes(n);
    if !(1..=MAX_DATA_BLOCKS).contains(&data_blocks) {
        return Err(VerityError::DataBlocks(data_blocks));
    }
    let salt_size = usize::from(u16::from_le_bytes([b[O_SALT_SIZE], b[O_SALT_SIZE + 1]]));
    if salt_size > MAX_SALT_LEN {
        return Err(VerityError::SaltSize(salt_size));
    }
    zero(b, O_RESERVED1, O_SALT)?;
    zero(b, O_SALT + salt_size, SUPERBLOCK_LEN)?;
    Ok(Superblock { uuid, data_blocks, salt: b[O_SALT..O_SALT + salt_size].to_vec() })
}

/// `Err(Reserved(first nonzero offset))` if any of `b[from..to]` is not zero.
fn zero(b: &[u8], from: usize, to: usize) -> Result<(), VerityError> {
    match b[from..to].iter().position(|&c| c != 0) {
        Some(i) => Err(VerityError::Reserved(from + i)),
        None => Ok(()),
    }
}

/// The name of the superblock field holding byte `offset` of the superblock's hash block (bytes
/// 512 to 4095 are its zero padding).
pub fn field_name(offset: usize) -> &'static str {
    match offset {
        0..O_VERSION => "magic",
        O_VERSION..O_HASH_TYPE => "version",
        O_HASH_TYPE..O_UUID => "hash_type",
        O_UUID..O_ALGORITHM => "uuid",
        O_ALGORITHM..O_DATA_BLOCK_SIZE => "algorithm",
        O_DATA_BLOCK_SIZE..O_HASH_BLOCK_SIZE => "data_block_size",
        O_HASH_BLOCK_SIZE..O_DATA_BLOCKS => "hash_block_size",
        O_DATA_BLOCKS..O_SALT_SIZE => "data_blocks",
        O_SALT_SIZE..O_RESERVED1 => "salt_size",
        O_RESERVED1..O_SALT => "reserved",
        O_SALT..O_RESERVED2 => "salt",
        O_RESERVED2..SUPERBLOCK_LEN => "reserved",
        _ => "padding after the superblock",
    }
}

/// For the fuzzer: parses arbitrary bytes, which must never panic; a superblock that parses must
/// re-encode to the same 512 bytes and parse again to itself, and its hash area size must be
/// computable (these are asserted). The same bytes are then taken as changes (XOR) to a valid
/// superblock, which random bytes seldom reach by themselves: all zeros is the valid one.
pub fn fuzz_superblock(data: &[u8]) {
    fuzz_one(data);
    let mut near = Superblock { uuid: [0; 16], data_blocks: 1, salt: vec![0; 32] }.to_bytes();
    for (b, d) in near.iter_mut().zip(data) {
        *b ^= d;
    }
    fuzz_one(&near);
}

fn fuzz_one(data: &[u8]) {
    match read_superblock(data) {
        Ok(sb) => {
            let bytes = sb.to_bytes();
            assert_eq!(&bytes[..], &data[..SUPERBLOCK_LEN], "an accepted superblock re-encodes to itself");
            assert_eq!(read_superblock(&bytes).ok().as_ref(), Some(&sb));
            let area = tree::hash_area_len(sb.data_blocks());
            assert!(area >= BLOCK_SIZE && area.is_multiple_of(BLOCK_SIZE));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}
