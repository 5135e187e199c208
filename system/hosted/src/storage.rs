//! Journal storage in a file: append + fdatasync, torn tails saved aside before they are cut.

use ppn_journal::Storage;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// A journal file. Every append is on disk (`fdatasync`) before `append` returns.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    path: PathBuf,
}

impl FileStorage {
    /// Opens or creates the journal at `path` (mode 0600) and syncs its directory on creation.
    pub fn open(path: &Path) -> io::Result<Self> {
        let existed = path.exists();
        let file = OpenOptions::new().read(true).append(true).create(true).mode(0o600).open(path)?;
        if !existed {
            sync_dir(path)?;
        }
        Ok(Self { file, path: path.to_owned() })
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
        self.file.write_all(bytes)?;
        self.file.sync_data()
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
        self.file.sync_all()
    }
}
