//! Journal storage in a file: append + fdatasync, torn tails saved aside before they are cut.

use ppn_journal::Storage;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// A journal file. Every append is on disk (`fdatasync`) before `append` returns.
///
/// A failed append (disk full, I/O error) is cut back off the file, so the next record does not
/// land behind a partial one (recovery would cut it there and lose it). If even that fails, the
/// storage refuses every later append: nothing more is acknowledged until a restart recovers.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    path: PathBuf,
    /// Length up to the end of the last record known to be whole on disk.
    good_len: u64,
    poisoned: bool,
}

impl FileStorage {
    /// Opens or creates the journal at `path` (mode 0600) and syncs its directory on creation.
    pub fn open(path: &Path) -> io::Result<Self> {
        let existed = path.exists();
        let file = OpenOptions::new().read(true).append(true).create(true).mode(0o600).open(path)?;
        if !existed {
            sync_dir(path)?;
        }
        let good_len = file.metadata()?.len();
        Ok(Self { file, path: path.to_owned(), good_len, poisoned: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Makes a directory entry durable (a created or renamed file in it).
pub fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

impl Storage for FileStorage {
    type Error = io::Error;

    fn size(&mut self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.poisoned {
            return Err(io::Error::other(
                "journal file could not be repaired after a failed write; restart to recover",
            ));
        }
        match self.file.write_all(bytes).and_then(|()| self.file.sync_data()) {
            Ok(()) => {
                self.good_len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                if self.file.set_len(self.good_len).and_then(|()| self.file.sync_all()).is_err() {
                    self.poisoned = true;
                }
                Err(e)
            }
        }
    }

    /// Saves the bytes past `len` to `<journal>.torn-<unix time>` (synced) before cutting them,
    /// so that recovery never destroys data an operator may want to inspect.
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let total = self.size()?;
        if total > len {
            let mut tail = vec![0u8; (total - len) as usize];
            self.file.read_exact_at(&mut tail, len)?;
            let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let mut name = self.path.as_os_str().to_owned();
            name.push(format!(".torn-{secs}"));
            let aside = PathBuf::from(name);
            let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&aside)?;
            f.write_all(&tail)?;
            f.sync_all()?;
            sync_dir(&aside)?;
        }
        self.file.set_len(len)?;
        self.file.sync_all()?;
        self.good_len = len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_are_durable_in_order_and_truncate_saves_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut s = FileStorage::open(&path).unwrap();
        s.append(b"abc").unwrap();
        s.append(b"defg").unwrap();
        assert_eq!(s.size().unwrap(), 7);
        s.truncate(3).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        let aside: Vec<_> = std::fs::read_dir(dir.path()).unwrap().filter_map(Result::ok).collect();
        assert_eq!(aside.len(), 2, "the journal and the saved tail");
        s.append(b"h").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abch");
    }

    /// `/dev/full` refuses every write and cannot be truncated: the storage reports the write
    /// error, then refuses further appends instead of writing behind a broken record.
    #[test]
    fn a_write_that_cannot_be_undone_poisons_the_storage() {
        let mut s = FileStorage::open(Path::new("/dev/full")).expect("open /dev/full");
        let first = s.append(b"record").unwrap_err();
        assert_ne!(first.kind(), io::ErrorKind::Other, "the first error is the device's: {first}");
        let second = s.append(b"record").unwrap_err();
        assert!(second.to_string().contains("could not be repaired"), "{second}");
    }
}
