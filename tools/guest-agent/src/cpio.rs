//! A newc ("070701") cpio writer: the initramfs format the Linux kernel unpacks. Entries carry
//! uid/gid 0 and mtime 0 whoever builds the archive, so no root is needed and the output is
//! reproducible.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CpioError {
    #[error("cpio entry name {0:?} is empty, absolute, or has a NUL or a .. component")]
    BadName(String),
    #[error("cpio entry {name} is {len} bytes, more than newc's 4 GiB limit")]
    TooBig { name: String, len: usize },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Builds an archive in memory, entries in the order added (parents before children).
#[derive(Debug, Default)]
pub struct Writer {
    out: Vec<u8>,
    ino: u32,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> Result<(), CpioError> {
        self.entry(name, S_IFDIR | (perm & 0o7777), 2, (0, 0), &[])
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<(), CpioError> {
        self.entry(name, S_IFREG | (perm & 0o7777), 1, (0, 0), data)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> Result<(), CpioError> {
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node (e.g. /dev/console, 5:1, which the kernel opens for /init
    /// before anything is mounted).
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> Result<(), CpioError> {
        self.entry(name, S_IFCHR | (perm & 0o7777), 1, (major, minor), &[])
    }

    /// Appends the trailer and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.raw("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.out
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) -> Result<(), CpioError> {
        let bad = name.is_empty()
            || name.starts_with('/')
            || name.contains('\0')
            || name.split('/').any(|c| c == ".." || c.is_empty())
            || name == "TRAILER!!!";
        if bad {
            return Err(CpioError::BadName(name.to_owned()));
        }
        if u32::try_from(data.len()).is_err() {
            return Err(CpioError::TooBig { name: name.to_owned(), len: data.len() });
        }
        self.raw(name, mode, nlink, rdev, data);
        Ok(())
    }

    fn raw(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses newc back: (name, mode, data) per entry; the test's own reader.
    fn parse(mut b: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let total = b.len();
        loop {
            assert_eq!(&b[..6], b"070701");
            let field =
                |i: usize| u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16).unwrap();
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let name = std::str::from_utf8(&b[110..110 + namesize - 1]).unwrap().to_owned();
            assert_eq!(b[110 + namesize - 1], 0);
            let data_at = (110 + namesize).next_multiple_of(4);
            let data = b[data_at..data_at + size].to_vec();
            let next = (data_at + size).next_multiple_of(4);
            assert_eq!((total - b.len() + next) % 4, 0);
            b = &b[next..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty());
                return out;
            }
            out.push((name, mode, data));
        }
    }

    #[test]
    fn round_trips_through_a_newc_reader() {
        let mut w = Writer::new();
        w.dir("bin", 0o755).unwrap();
        w.file("bin/busybox", 0o755, b"\x7fELF...").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        let a = w.finish();
        assert_eq!(a.len() % 4, 0);
        let entries = parse(&a);
        let names: Vec<_> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["bin", "bin/busybox", "bin/sh", "dev/console", "init"]);
        assert_eq!(entries[0].1, 0o040755);
        assert_eq!(entries[1].2, b"\x7fELF...");
        assert_eq!((entries[2].1, entries[2].2.as_slice()), (0o120777, b"busybox".as_slice()));
        assert_eq!(entries[3].1, 0o020600);
        assert_eq!(entries[4].2, b"#!/bin/sh\n");
    }

    #[test]
    fn rejects_bad_names() {
        let mut w = Writer::new();
        for n in ["", "/init", "a/../b", "a//b", "TRAILER!!!"] {
            assert_eq!(w.file(n, 0o644, b""), Err(CpioError::BadName(n.to_owned())));
        }
    }
}
