//! The guest's verified boot, the part in Rust (`ppn-guest-agent boot-check`, run by /init
//! when the kernel command line says `ppn.root=verity`; docs/attestation.md §4).
//!
//! It checks the image's provisioning statement against the fleet's trust file (both handed
//! in by the host through QEMU's fw_cfg): the provisioning node's key certificate, its standing
//! in the trust file, and the statement's signature. Then it reads the dm-verity superblock at
//! the statement's hash offset on the root disk and checks that its salt and data block count
//! are the signed ones. On success it prints `ROOT_HEX HASH_OFFSET IMAGE` for /init, which has
//! `veritysetup` check every block against that root hash and open the device; on failure the
//! error says which check failed.

use ppn_attest::{Provisioning, TrustFile};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// What /init needs to open the verified root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub root_hash: [u8; 32],
    pub hash_offset: u64,
    pub image: String,
}

impl Verified {
    /// The line /init reads: `ROOT_HEX HASH_OFFSET IMAGE`.
    pub fn line(&self) -> String {
        let root: String = self.root_hash.iter().map(|b| format!("{b:02x}")).collect();
        format!("{root} {} {}", self.hash_offset, self.image)
    }
}

fn read_limited(path: &Path, max: usize, what: &str) -> Result<Vec<u8>, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("the {what} {}: {e}", path.display()))?;
    let mut b = Vec::new();
    f.by_ref().take(max as u64 + 1).read_to_end(&mut b).map_err(|e| format!("the {what} {}: {e}", path.display()))?;
    if b.len() > max {
        return Err(format!("the {what} {} is over {max} bytes", path.display()));
    }
    Ok(b)
}

/// Checks the statement against the trust, then the disk's superblock against the statement.
pub fn boot_check(statement: &Path, trust: &Path, disk: &Path) -> Result<Verified, String> {
    let trust = TrustFile::parse(&read_limited(trust, ppn_attest::TRUST_FILE_MAX, "trust file")?)
        .map_err(|e| format!("the fleet trust file: {e}"))?;
    let statement = read_limited(statement, ppn_attest::MAX_PROVISIONING, "provisioning statement")?;
    let p = Provisioning::verify(&statement, &trust)
        .map_err(|e| format!("the image's provisioning statement does not check against the fleet trust: {e}"))?;
    let mut d = std::fs::File::open(disk).map_err(|e| format!("the root disk {}: {e}", disk.display()))?;
    let mut sb = [0u8; 512];
    d.seek(SeekFrom::Start(p.verity.hash_offset)).and_then(|_| d.read_exact(&mut sb)).map_err(|e| {
        format!("the root disk {} has no verity superblock at byte {}: {e}", disk.display(), p.verity.hash_offset)
    })?;
    let sb = ppn_verity::read_superblock(&sb)
        .map_err(|e| format!("the root disk's verity superblock at byte {}: {e}", p.verity.hash_offset))?;
    if sb.salt() != p.verity.salt || sb.data_blocks() != p.verity.data_blocks {
        return Err(format!(
            "the root disk's verity superblock (salt, {} data blocks) is not the signed one ({} data blocks)",
            sb.data_blocks(),
            p.verity.data_blocks
        ));
    }
    Ok(Verified { root_hash: p.verity.root_hash, hash_offset: p.verity.hash_offset, image: p.image })
}
