//! `seal` and `verify` against the real `veritysetup` (cryptsetup-bin): images sealed here verify
//! there and dump the same parameters, `veritysetup format` writes byte for byte the hash area
//! `seal` writes, and corruption is caught by both.
//!
//! Without `veritysetup` (on `PATH`, or in `/usr/sbin` or `/sbin`, where Debian puts it outside
//! a normal user's `PATH`) each test prints `SKIPPED: ...` and returns, unless `CI` is set: then
//! it fails.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ppn_verity::{VerityError, VerityParams, hash_area_len, seal, verify, verify_with_root};

const BLOCK: usize = 4096;

fn veritysetup() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join("veritysetup"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(std::env::var_os("CI").is_none(), "veritysetup (cryptsetup-bin) is not installed, and CI is set");
        eprintln!("SKIPPED: veritysetup (cryptsetup-bin) not installed");
    }
    found
}

fn run(vs: &Path, args: &[String]) -> Output {
    let out = Command::new(vs).args(args).output().expect("run veritysetup");
    // `--debug` output and errors, for a failing test's log.
    println!(
        "$ veritysetup {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `veritysetup verify <image> <image> <root> --hash-offset=<n>`: does it accept the image?
fn veritysetup_verifies(vs: &Path, image: &Path, p: &VerityParams) -> bool {
    let image = image.to_str().unwrap();
    let args = vec![
        "verify".to_string(),
        image.to_string(),
        image.to_string(),
        p.root_hex(),
        format!("--hash-offset={}", p.hash_offset),
    ];
    assert_eq!(p.veritysetup_verify_args(image), args);
    run(vs, &args).status.success()
}

/// `Key: value` lines of `veritysetup dump` or `format`.
fn fields(out: &Output) -> HashMap<String, String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Deterministic pseudo-random blocks, each different: a window of a 1 MiB SplitMix64 pool that
/// moves with the block number, the block number in its first 8 bytes. (The pool keeps a 64 MiB
/// image quick to make in an unoptimised test build.)
fn pseudo_random_blocks(blocks: usize, seed: u64) -> Vec<u8> {
    const POOL: usize = 1 << 20;
    let mut x = seed;
    let mut pool = Vec::with_capacity(POOL + BLOCK);
    while pool.len() < POOL + BLOCK {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        pool.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    let mut data = Vec::with_capacity(blocks * BLOCK);
    for i in 0..blocks {
        let at = i.wrapping_mul(4099) % POOL;
        data.extend_from_slice(&(i as u64).to_le_bytes());
        data.extend_from_slice(&pool[at + 8..at + BLOCK]);
    }
    data
}

fn salt(seed: u8) -> [u8; 32] {
    std::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
}

fn uuid(seed: u8) -> [u8; 16] {
    std::array::from_fn(|i| seed ^ (0x10 * i as u8 + 1))
}

/// Writes `blocks` pseudo-random blocks to `path` and seals it.
fn sealed(path: &Path, blocks: usize, seed: u8) -> (Vec<u8>, VerityParams) {
    let data = pseudo_random_blocks(blocks, u64::from(seed));
    fs::write(path, &data).unwrap();
    let p = seal(path, salt(seed), uuid(seed)).unwrap();
    (data, p)
}

/// Tree depths 0 (one block: no tree), 1, 2 and 3 at 128 digests a hash block, and their edges.
const SIZES: [usize; 7] = [1, 2, 127, 128, 129, 16384, 16385];

#[test]
fn sealed_images_verify_in_veritysetup_and_dump_their_parameters() {
    let Some(vs) = veritysetup() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (i, &blocks) in SIZES.iter().enumerate() {
        let path = dir.path().join(format!("image-{blocks}"));
        let (data, p) = sealed(&path, blocks, i as u8);
        assert_eq!(p.data_blocks, blocks as u64);
        assert_eq!(p.hash_offset, data.len() as u64);
        assert_eq!((p.salt, p.uuid), (salt(i as u8), uuid(i as u8)));
        assert_eq!(fs::metadata(&path).unwrap().len(), p.hash_offset + hash_area_len(p.data_blocks));
        assert_eq!(fs::read(&path).unwrap()[..data.len()], data[..], "seal changed the data");
        verify(&path, &p).unwrap();

        let image = path.to_str().unwrap().to_string();
        assert!(veritysetup_verifies(&vs, &path, &p), "veritysetup verify refused {blocks} blocks");

        // veritysetup's own hash start: "... hash_device <image>, offset <block>." in its debug log.
        let mut args = p.veritysetup_verify_args(&image);
        args.push("--debug".into());
        let out = run(&vs, &args);
        assert!(out.status.success());
        let log = String::from_utf8_lossy(&out.stdout);
        assert!(
            log.contains(&format!("hash_device {image}, offset {}.", p.hash_start_block())),
            "veritysetup does not start the tree at hash block {}",
            p.hash_start_block()
        );
        assert_eq!(p.hash_start_block(), blocks as u64 + 1);

        let out = run(&vs, &["dump".into(), image.clone(), format!("--hash-offset={}", p.hash_offset)]);
        assert!(out.status.success());
        let f = fields(&out);
        let tree_blocks = hash_area_len(p.data_blocks) / BLOCK as u64 - 1;
        for (key, want) in [
            ("UUID", p.uuid_string()),
            ("Hash type", "1".into()),
            ("Data blocks", blocks.to_string()),
            ("Data block size", "4096".into()),
            ("Hash blocks", tree_blocks.to_string()),
            ("Hash block size", "4096".into()),
            ("Hash algorithm", "sha256".into()),
            ("Salt", p.salt_hex()),
        ] {
            assert_eq!(f.get(key), Some(&want), "veritysetup dump {key}, {blocks} blocks");
        }

        let table = p.dm_table("/dev/vda", "/dev/vda");
        assert_eq!(
            table,
            format!(
                "0 {} verity 1 /dev/vda /dev/vda 4096 4096 {blocks} {} sha256 {} {}",
                blocks * 8,
                blocks + 1,
                p.root_hex(),
                p.salt_hex()
            )
        );
    }
}

#[test]
fn veritysetup_format_writes_the_same_hash_area() {
    let Some(vs) = veritysetup() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (i, &blocks) in SIZES.iter().enumerate() {
        let seed = 100 + i as u8;
        let ours = dir.path().join(format!("ours-{blocks}"));
        let (data, p) = sealed(&ours, blocks, seed);
        let ours = fs::read(&ours).unwrap();

        // A separate hash file.
        let theirs_data = dir.path().join(format!("data-{blocks}"));
        let theirs_hash = dir.path().join(format!("hash-{blocks}"));
        fs::write(&theirs_data, &data).unwrap();
        let out = run(
            &vs,
            &[
                "format".into(),
                theirs_data.to_str().unwrap().into(),
                theirs_hash.to_str().unwrap().into(),
                format!("--salt={}", p.salt_hex()),
                format!("--uuid={}", p.uuid_string()),
            ],
        );
        assert!(out.status.success());
        assert_eq!(fields(&out).get("Root hash"), Some(&p.root_hex()), "root hash of {blocks} blocks");
        let hash = fs::read(&theirs_hash).unwrap();
        assert!(hash[..] == ours[data.len()..], "hash area of {blocks} blocks differs from veritysetup's");

        // Appended to the data, in the same file, as `seal` does.
        let theirs = dir.path().join(format!("theirs-{blocks}"));
        fs::write(&theirs, &data).unwrap();
        let theirs_str = theirs.to_str().unwrap().to_string();
        let out = run(
            &vs,
            &[
                "format".into(),
                theirs_str.clone(),
                theirs_str,
                format!("--hash-offset={}", p.hash_offset),
                format!("--salt={}", p.salt_hex()),
                format!("--uuid={}", p.uuid_string()),
            ],
        );
        assert!(out.status.success());
        assert_eq!(fields(&out).get("Root hash"), Some(&p.root_hex()));
        assert!(fs::read(&theirs).unwrap() == ours, "image of {blocks} blocks differs from veritysetup's");
        // And this crate verifies veritysetup's image.
        assert_eq!(verify_with_root(&theirs, p.hash_offset, p.root_hash).unwrap(), p);
    }
}

fn flip(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x01;
    fs::write(path, bytes).unwrap();
}

#[test]
fn a_flipped_byte_is_caught_and_named() {
    let Some(vs) = veritysetup() else { return };
    let dir = tempfile::tempdir().unwrap();
    // 129 blocks: level 1 (the top, one block) at hash block 1 of the area, level 0 (two blocks)
    // at 2 and 3; level 0's second block holds one digest, the rest is padding.
    let image = dir.path().join("image");
    let (_, p) = sealed(&image, 129, 7);
    let sb = p.hash_offset;
    let tree = sb + BLOCK as u64;
    let b = BLOCK as u64;

    // (what to flip, the error, whether veritysetup must refuse it too)
    type Check = fn(&VerityError) -> bool;
    let cases: [(&str, u64, Check, bool); 12] = [
        ("data block 0", 5, |e| matches!(e, VerityError::DataBlock(0)), true),
        ("data block 77", 77 * b + 4095, |e| matches!(e, VerityError::DataBlock(77)), true),
        ("data block 128", 128 * b, |e| matches!(e, VerityError::DataBlock(128)), true),
        ("top hash block", tree + 10, |e| matches!(e, VerityError::HashBlock { level: 1, index: 0, .. }), true),
        ("level 0 block 0", tree + b + 64, |e| matches!(e, VerityError::HashBlock { level: 0, index: 0, .. }), true),
        (
            "level 0 block 1 padding",
            tree + 2 * b + 100,
            |e| matches!(e, VerityError::HashBlock { level: 0, index: 1, offset } if *offset == 129 * 4096 + 3 * 4096),
            true,
        ),
        ("superblock magic", sb, |e| matches!(e, VerityError::Magic(_)), true),
        (
            "superblock data_blocks",
            sb + 72,
            |e| matches!(e, VerityError::SuperblockField { field: "data_blocks", offset: 72 }),
            true,
        ),
        (
            "superblock salt",
            sb + 88 + 31,
            |e| matches!(e, VerityError::SuperblockField { field: "salt", offset: 119 }),
            true,
        ),
        // veritysetup does not check these: it has no expected UUID and ignores reserved bytes.
        (
            "superblock uuid",
            sb + 20,
            |e| matches!(e, VerityError::SuperblockField { field: "uuid", offset: 20 }),
            false,
        ),
        ("superblock reserved", sb + 400, |e| matches!(e, VerityError::Reserved(400)), false),
        (
            "superblock block padding",
            sb + 1000,
            |e| matches!(e, VerityError::SuperblockField { field: "padding after the superblock", offset: 1000 }),
            false,
        ),
    ];
    for (what, offset, check, vs_refuses) in cases {
        let copy = dir.path().join("copy");
        fs::copy(&image, &copy).unwrap();
        flip(&copy, offset);
        let e = verify(&copy, &p).expect_err(what);
        assert!(check(&e), "{what}: {e}");
        if vs_refuses {
            assert!(!veritysetup_verifies(&vs, &copy, &p), "veritysetup accepted a flipped {what}");
        }
    }

    // The expected root hash differs: the tree is intact, the root is not the one asked for.
    let mut wrong = p.clone();
    wrong.root_hash[3] ^= 0x80;
    assert!(matches!(verify(&image, &wrong), Err(VerityError::RootHash { expected, found })
        if expected == wrong.root_hash && found == p.root_hash));
    assert!(!veritysetup_verifies(&vs, &image, &wrong));

    // One block: no tree, the root hash is the block's digest.
    let one = dir.path().join("one");
    let (_, p1) = sealed(&one, 1, 8);
    flip(&one, 4000);
    assert!(matches!(verify(&one, &p1), Err(VerityError::DataBlock(0))));
    assert!(!veritysetup_verifies(&vs, &one, &p1));

    // Bytes added or cut.
    let copy = dir.path().join("copy");
    let mut bytes = fs::read(&image).unwrap();
    let len = bytes.len() as u64;
    bytes.push(0);
    fs::write(&copy, &bytes).unwrap();
    assert!(
        matches!(verify(&copy, &p), Err(VerityError::FileLength { expected, found }) if expected == len && found == len + 1)
    );
    bytes.truncate(bytes.len() - 2);
    fs::write(&copy, &bytes).unwrap();
    assert!(matches!(verify(&copy, &p), Err(VerityError::FileLength { found, .. }) if found == len - 1));

    verify(&image, &p).unwrap();
    assert!(veritysetup_verifies(&vs, &image, &p));
}

// These need no veritysetup.

#[test]
fn seal_refuses_what_it_cannot_seal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image");

    fs::write(&path, b"").unwrap();
    assert!(matches!(seal(&path, salt(1), uuid(1)), Err(VerityError::Empty)));
    fs::write(&path, vec![7u8; 4097]).unwrap();
    assert!(matches!(seal(&path, salt(1), uuid(1)), Err(VerityError::Unaligned(4097))));
    assert_eq!(fs::metadata(&path).unwrap().len(), 4097, "a refused seal wrote");
    assert!(matches!(seal(&dir.path().join("absent"), salt(1), uuid(1)), Err(VerityError::Io { op: "open", .. })));

    for blocks in [1, 129] {
        let (_, p) = sealed(&path, blocks, 3);
        let len = fs::metadata(&path).unwrap().len();
        assert!(matches!(seal(&path, salt(2), uuid(2)),
            Err(VerityError::AlreadySealed { data_blocks, hash_offset }) if data_blocks == p.data_blocks && hash_offset == p.hash_offset));
        assert_eq!(fs::metadata(&path).unwrap().len(), len, "a refused seal wrote");
        verify(&path, &p).unwrap();
    }
}

#[test]
fn verify_with_root_reads_the_superblock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image");
    let (_, p) = sealed(&path, 300, 9);
    assert_eq!(verify_with_root(&path, p.hash_offset, p.root_hash).unwrap(), p);
    let mut root = p.root_hash;
    root[0] ^= 1;
    assert!(matches!(verify_with_root(&path, p.hash_offset, root), Err(VerityError::RootHash { .. })));
    assert!(matches!(verify_with_root(&path, p.hash_offset - 4096, p.root_hash), Err(VerityError::Magic(_))));
    assert!(matches!(verify_with_root(&path, 1 << 30, p.root_hash), Err(VerityError::Truncated(0))));
    // Parameters that do not describe the file.
    let mut other = p.clone();
    other.hash_offset += 4096;
    assert!(matches!(verify(&path, &other), Err(VerityError::Layout { .. })));
    other.data_blocks += 1;
    assert!(matches!(verify(&path, &other), Err(VerityError::FileLength { .. })));
    other.data_blocks = 0;
    assert!(matches!(verify(&path, &other), Err(VerityError::DataBlocks(0))));
}
