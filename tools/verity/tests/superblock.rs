//! The superblock parser: the layout against a hand-written one, each bad field its error, every
//! truncation refused, and every single-bit change either refused or seen.

use ppn_verity::{MAX_DATA_BLOCKS, Superblock, VerityError, field_name, fuzz_superblock, read_superblock};

const UUID: [u8; 16] = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];

/// A superblock written field by field from the table in the crate's documentation (and checked
/// against `veritysetup format`'s output by hand: `xxd` of a hash file).
fn by_hand(data_blocks: u64, salt: &[u8]) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[0..8].copy_from_slice(b"verity\0\0");
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    b[12..16].copy_from_slice(&1u32.to_le_bytes());
    b[16..32].copy_from_slice(&UUID);
    b[32..38].copy_from_slice(b"sha256");
    b[64..68].copy_from_slice(&4096u32.to_le_bytes());
    b[68..72].copy_from_slice(&4096u32.to_le_bytes());
    b[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    b[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
    b[88..88 + salt.len()].copy_from_slice(salt);
    b
}

fn salt() -> Vec<u8> {
    (1..=32).collect()
}

#[test]
fn encodes_and_parses_the_documented_layout() {
    let good = by_hand(129, &salt());
    let sb = read_superblock(&good).unwrap();
    assert_eq!((sb.uuid(), sb.data_blocks(), sb.salt()), (UUID, 129, &salt()[..]));
    assert_eq!(sb.to_bytes(), good);
    assert_eq!(Superblock::new(UUID, 129, &salt()).unwrap(), sb);

    // Bytes after the 512 are not looked at.
    let mut long = good.to_vec();
    long.extend_from_slice(&[0xff; 3584]);
    assert_eq!(read_superblock(&long).unwrap(), sb);

    // Salts of 0 and 256 bytes, the largest block count.
    for salt in [vec![], vec![0xa5; 256]] {
        let b = by_hand(MAX_DATA_BLOCKS, &salt);
        let sb = read_superblock(&b).unwrap();
        assert_eq!((sb.salt(), sb.data_blocks()), (&salt[..], MAX_DATA_BLOCKS));
        assert_eq!(sb.to_bytes(), b);
    }
}

#[test]
fn every_truncation_is_refused() {
    let good = by_hand(1, &salt());
    for len in 0..512 {
        assert!(matches!(read_superblock(&good[..len]), Err(VerityError::Truncated(l)) if l == len), "{len} bytes");
    }
}

#[test]
fn each_bad_field_is_its_own_error() {
    let good = by_hand(129, &salt());
    let with = |f: &dyn Fn(&mut [u8; 512])| {
        let mut b = good;
        f(&mut b);
        read_superblock(&b)
    };
    let set = |b: &mut [u8; 512], at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);

    assert!(matches!(with(&|b| b[6] = b'!'), Err(VerityError::Magic(m)) if &m == b"verity!\0"));
    assert!(matches!(with(&|b| set(b, 8, &2u32.to_le_bytes())), Err(VerityError::Version(2))));
    assert!(matches!(with(&|b| set(b, 8, &0u32.to_le_bytes())), Err(VerityError::Version(0))));
    // Hash type 0 is Chrome OS's (salt after the block).
    assert!(matches!(with(&|b| set(b, 12, &0u32.to_le_bytes())), Err(VerityError::HashType(0))));
    assert!(matches!(with(&|b| set(b, 12, &2u32.to_le_bytes())), Err(VerityError::HashType(2))));
    assert!(matches!(with(&|b| set(b, 32, b"sha1\0\0")), Err(VerityError::Algorithm(a)) if a == "sha1"));
    assert!(matches!(with(&|b| set(b, 32, b"SHA256")), Err(VerityError::Algorithm(a)) if a == "SHA256"));
    assert!(matches!(with(&|b| set(b, 38, b"x")), Err(VerityError::Algorithm(a)) if a == "sha256x"));
    assert!(matches!(with(&|b| set(b, 32, &[0xff; 32])), Err(VerityError::Algorithm(_))));
    assert!(matches!(with(&|b| set(b, 32, &[0; 32])), Err(VerityError::Algorithm(a)) if a.is_empty()));
    // A NUL ends the name; what follows is padding.
    assert!(matches!(with(&|b| set(b, 40, b"x")), Err(VerityError::Reserved(40))));
    assert!(matches!(with(&|b| set(b, 64, &512u32.to_le_bytes())), Err(VerityError::DataBlockSize(512))));
    assert!(matches!(with(&|b| set(b, 68, &8192u32.to_le_bytes())), Err(VerityError::HashBlockSize(8192))));
    assert!(matches!(with(&|b| set(b, 72, &0u64.to_le_bytes())), Err(VerityError::DataBlocks(0))));
    assert!(
        matches!(with(&|b| set(b, 72, &(MAX_DATA_BLOCKS + 1).to_le_bytes())), Err(VerityError::DataBlocks(n)) if n == MAX_DATA_BLOCKS + 1)
    );
    assert!(matches!(with(&|b| set(b, 72, &u64::MAX.to_le_bytes())), Err(VerityError::DataBlocks(u64::MAX))));
    assert!(matches!(with(&|b| set(b, 80, &257u16.to_le_bytes())), Err(VerityError::SaltSize(257))));
    assert!(matches!(with(&|b| set(b, 80, &u16::MAX.to_le_bytes())), Err(VerityError::SaltSize(65535))));
    assert!(matches!(with(&|b| b[82] = 1), Err(VerityError::Reserved(82))));
    assert!(matches!(with(&|b| b[87] = 1), Err(VerityError::Reserved(87))));
    // Salt bytes past the salt size.
    assert!(matches!(with(&|b| b[88 + 32] = 1), Err(VerityError::Reserved(120))));
    assert!(matches!(with(&|b| b[343] = 1), Err(VerityError::Reserved(343))));
    assert!(matches!(with(&|b| b[344] = 1), Err(VerityError::Reserved(344))));
    assert!(matches!(with(&|b| b[511] = 1), Err(VerityError::Reserved(511))));
    // A shorter salt size leaves salt bytes in the reserved part.
    assert!(matches!(with(&|b| set(b, 80, &31u16.to_le_bytes())), Err(VerityError::Reserved(119))));

    assert!(matches!(Superblock::new(UUID, 0, &[]), Err(VerityError::DataBlocks(0))));
    assert!(matches!(Superblock::new(UUID, 1, &[0; 257]), Err(VerityError::SaltSize(257))));
}

#[test]
fn every_bit_of_the_superblock_matters() {
    let good = by_hand(129, &salt());
    let sb = read_superblock(&good).unwrap();
    for offset in 0..512 {
        for bit in 0..8 {
            let mut b = good;
            b[offset] ^= 1 << bit;
            fuzz_superblock(&b);
            if let Ok(other) = read_superblock(&b) {
                assert_ne!(other, sb, "byte {offset} bit {bit} went unseen");
                assert!(["uuid", "data_blocks", "salt_size", "salt"].contains(&field_name(offset)), "byte {offset}");
            }
        }
    }
    assert_eq!(field_name(0), "magic");
    assert_eq!(field_name(80), "salt_size");
    assert_eq!(field_name(343), "salt");
    assert_eq!(field_name(344), "reserved");
    assert_eq!(field_name(512), "padding after the superblock");
}

#[test]
fn the_fuzz_entry_point_takes_anything() {
    for data in [&[][..], &[0u8; 600][..], &by_hand(1, &[])[..], &[0xff; 512][..], b"verity\0\0"] {
        fuzz_superblock(data);
    }
}
