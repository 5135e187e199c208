//! The hosted lender's pool: a file standing for the node's lendable memory, one
//! [`BLOCK_BYTES`] slot per block, and the scrubber that zeroes blocks in it.
//!
//! In this step a borrower's own host backs the memory it plugs into its VM; the lender's pool
//! shrinks by the same amount (docs/lender.md §8a). The file is what the lender would hand out
//! as far memory later, so a released block is zeroed in it before it is free again: the hole
//! is punched (`fallocate(PUNCH_HOLE)`, so the disk space is returned and reads give zeros), or,
//! where the file system cannot punch holes, zeros are written; either way the data is synced
//! before the scrub is confirmed.

use ppn_lender::{BLOCK_BYTES, BlockRange};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Name of the pool file in the state directory.
pub const POOL_FILE: &str = "pool.img";

/// The pool file and its scrubber.
#[derive(Debug)]
pub struct FilePool {
    file: File,
    path: PathBuf,
    blocks: u32,
}

impl FilePool {
    /// Opens (or creates, sparse) the pool file for `blocks` blocks.
    pub fn open(path: &Path, blocks: u32) -> std::io::Result<Self> {
        let file = File::options().create(true).truncate(false).read(true).write(true).open(path)?;
        file.set_len(u64::from(blocks) * u64::from(BLOCK_BYTES))?;
        Ok(Self { file, path: path.to_path_buf(), blocks })
    }

    fn zero(&self, offset: u64, len: u64) -> std::io::Result<()> {
        if punch_hole(&self.file, offset, len).is_err() {
            let zeros = vec![0u8; 1 << 20];
            let mut at = offset;
            while at < offset + len {
                let n = (offset + len - at).min(zeros.len() as u64) as usize;
                self.file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
        }
        self.file.sync_data()
    }
}

impl ppn_tcb_core::Scrub for FilePool {
    fn scrub(&mut self, range: BlockRange) -> Result<(), String> {
        if u64::from(range.start) + u64::from(range.len) > u64::from(self.blocks) {
            return Err(format!("blocks {}..+{} are outside the pool file", range.start, range.len));
        }
        let block = u64::from(BLOCK_BYTES);
        self.zero(u64::from(range.start) * block, u64::from(range.len) * block)
            .map_err(|e| format!("scrubbing {}: {e}", self.path.display()))
    }
}

#[allow(unsafe_code)]
fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    // SAFETY: fallocate takes a file descriptor we own for the duration of the call (borrowed
    // from `file`) and integer arguments; it touches no memory of this process.
    let rc =
        unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, off, n) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppn_tcb_core::Scrub;
    use std::io::Read;

    #[test]
    fn a_scrub_zeroes_exactly_its_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(POOL_FILE);
        let mut pool = FilePool::open(&path, 4).unwrap();
        let block = BLOCK_BYTES as usize;
        let data = vec![0x5Au8; 4 * block];
        pool.file.write_all_at(&data, 0).unwrap();
        pool.scrub(BlockRange { start: 1, len: 2 }).unwrap();
        let mut back = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), 4 * block);
        assert!(back[..block].iter().all(|&b| b == 0x5A), "block 0 was touched");
        assert!(back[block..3 * block].iter().all(|&b| b == 0), "blocks 1 and 2 were not zeroed");
        assert!(back[3 * block..].iter().all(|&b| b == 0x5A), "block 3 was touched");
        let e = pool.scrub(BlockRange { start: 3, len: 2 }).unwrap_err();
        assert!(e.contains("outside the pool file"), "{e}");
    }
}
