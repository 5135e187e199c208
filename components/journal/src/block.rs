//! Journal storage on a block device: what an seL4 protection domain uses for its journal on a
//! virtio-blk disk, where there is no file system to keep a length for it.
//!
//! A disk holds one or more *areas*, each a fixed range of 512-byte sectors that holds one
//! journal. An area starts with two superblocks, then the journal's bytes:
//!
//! ```text
//! sector            contents
//! first + 0         superblock slot 0 (even generations)
//! first + 1         superblock slot 1 (odd generations)
//! first + 2 ...     journal bytes, contiguous, `len` of them in force
//! ```
//!
//! Superblock layout (little-endian; the rest of the sector is zero):
//!
//! ```text
//! offset size field
//!  0      4   magic       b"PPNA"
//!  4      1   version     1
//!  5      1   slot        0 or 1 (generation % 2)
//!  6      2   tag         which journal the area holds (the caller's number)
//!  8      8   generation  bumped by every write of a superblock
//! 16      8   len         bytes of journal in force
//! 24      8   sectors     the area's size in sectors, superblocks included
//! 32      4   crc32       CRC-32 (IEEE) over bytes 0..32
//! ```
//!
//! **Append** writes the new bytes after `len` (rewriting the partly filled last sector with the
//! same prefix), flushes, then writes the next generation's superblock into the *other* slot and
//! flushes again; only then does it return. **Open** takes the valid superblock with the highest
//! generation: bytes past its `len` were never acknowledged and are ignored, and a superblock torn
//! by a crash fails its checksum, so the other slot (the previous state) is used.
//!
//! The one assumption about the device: a single-sector write is atomic (all of the new sector
//! or all of the old), the usual guarantee of disks and the one SQLite and file systems make.
//! It matters because an append rewrites the sector that holds the end of the previous record.
//!
//! An area whose superblock sectors hold neither a PPN superblock nor zeros is refused
//! ([`BlockError::Foreign`]) rather than formatted: opening the wrong disk loses nothing.

extern crate alloc;

use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt::Debug;

/// Bytes in a sector.
pub const SECTOR: usize = 512;
/// Sectors an area reserves for its superblocks.
pub const RESERVED_SECTORS: u64 = 2;
/// Sectors read or written per device request (4 KiB).
pub const WINDOW_SECTORS: usize = 8;
const WINDOW: usize = SECTOR * WINDOW_SECTORS;

/// First bytes of a superblock.
pub const SUPER_MAGIC: [u8; 4] = *b"PPNA";
/// Superblock format version.
pub const SUPER_VERSION: u8 = 1;
const SUPER_CRC_AT: usize = 32;

/// A disk of 512-byte sectors. Buffers are whole sectors.
pub trait BlockDevice {
    type Error: Debug;
    /// The device's size in sectors.
    fn sectors(&mut self) -> Result<u64, Self::Error>;
    /// Reads `buf.len() / SECTOR` sectors from `sector`.
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), Self::Error>;
    /// Writes `buf.len() / SECTOR` sectors from `sector` (durable only after [`flush`](Self::flush)).
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), Self::Error>;
    /// Returns once every completed write is on stable storage.
    fn flush(&mut self) -> Result<(), Self::Error>;
}

/// One device shared by several areas (single-threaded, as a protection domain is).
impl<D: BlockDevice> BlockDevice for Rc<RefCell<D>> {
    type Error = D::Error;
    fn sectors(&mut self) -> Result<u64, Self::Error> {
        self.borrow_mut().sectors()
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        self.borrow_mut().read(sector, buf)
    }
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), Self::Error> {
        self.borrow_mut().write(sector, buf)
    }
    fn flush(&mut self) -> Result<(), Self::Error> {
        self.borrow_mut().flush()
    }
}

/// A range of sectors that holds one journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Area {
    /// Which journal this is; a superblock with another tag is refused.
    pub tag: u16,
    /// First sector (its superblock slot 0).
    pub first: u64,
    /// Sectors, superblocks included.
    pub sectors: u64,
}

impl Area {
    /// Bytes of journal the area can hold.
    pub const fn capacity(&self) -> u64 {
        self.sectors.saturating_sub(RESERVED_SECTORS) * SECTOR as u64
    }

    const fn data_start(&self) -> u64 {
        self.first + RESERVED_SECTORS
    }
}

/// Why block storage failed.
#[derive(Debug, thiserror::Error)]
pub enum BlockError<E: Debug> {
    #[error("block device: {0:?}")]
    Device(E),
    #[error("journal area {tag} (sectors {first}..{end}) does not fit a device of {device} sectors")]
    OutOfDevice { tag: u16, first: u64, end: u64, device: u64 },
    #[error("sectors {first} and {second} hold something that is not a PPN journal; refusing to overwrite it")]
    Foreign { first: u64, second: u64 },
    #[error(
        "the area at sector {first} holds journal {found_tag} of {found_sectors} sectors, not journal {tag} of {sectors}"
    )]
    Mismatch { first: u64, tag: u16, sectors: u64, found_tag: u16, found_sectors: u64 },
    #[error("superblock at sector {first} says {len} bytes, more than the area's {capacity}")]
    Corrupt { first: u64, len: u64, capacity: u64 },
    #[error("journal area {tag} is full: {need} bytes needed, {capacity} available")]
    Full { tag: u16, need: u64, capacity: u64 },
    #[error("read of {len} bytes at {offset} is past the journal's {size} bytes")]
    OutOfRange { offset: u64, len: usize, size: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Superblock {
    tag: u16,
    generation: u64,
    len: u64,
    sectors: u64,
}

/// What one superblock slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Valid(Superblock),
    /// All zero: never written.
    Blank,
    /// Our magic but a bad checksum or version: a superblock write torn by a crash.
    Torn,
    /// Anything else.
    Foreign,
}

impl Superblock {
    fn encode(&self) -> [u8; SECTOR] {
        let mut s = [0u8; SECTOR];
        s[0..4].copy_from_slice(&SUPER_MAGIC);
        s[4] = SUPER_VERSION;
        s[5] = (self.generation % 2) as u8;
        s[6..8].copy_from_slice(&self.tag.to_le_bytes());
        s[8..16].copy_from_slice(&self.generation.to_le_bytes());
        s[16..24].copy_from_slice(&self.len.to_le_bytes());
        s[24..32].copy_from_slice(&self.sectors.to_le_bytes());
        let crc = crc32fast::hash(&s[..SUPER_CRC_AT]);
        s[SUPER_CRC_AT..SUPER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        s
    }

    fn decode(s: &[u8; SECTOR], slot: u8) -> Slot {
        if s.iter().all(|&b| b == 0) {
            return Slot::Blank;
        }
        if s[0..4] != SUPER_MAGIC {
            return Slot::Foreign;
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&s[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let crc = u32::from_le_bytes([s[32], s[33], s[34], s[35]]);
        if s[4] != SUPER_VERSION || crc32fast::hash(&s[..SUPER_CRC_AT]) != crc {
            return Slot::Torn;
        }
        let sb = Superblock {
            tag: u16::from_le_bytes([s[6], s[7]]),
            generation: u64_at(8),
            len: u64_at(16),
            sectors: u64_at(24),
        };
        // A valid superblock in the wrong slot was not written by this code.
        if s[5] != slot || sb.generation % 2 != u64::from(slot) { Slot::Torn } else { Slot::Valid(sb) }
    }
}

/// A journal's bytes in one [`Area`] of a [`BlockDevice`]: a [`Storage`](crate::Storage).
#[derive(Debug)]
pub struct BlockStorage<D: BlockDevice> {
    dev: D,
    area: Area,
    generation: u64,
    len: u64,
    /// The sector that holds byte `len`, when `len` is not on a sector boundary.
    tail: [u8; SECTOR],
    /// A read cache of `WINDOW_SECTORS` data sectors from `window_at` (relative to the data).
    window: Vec<u8>,
    window_at: Option<u64>,
    /// Staging for writes.
    buf: Vec<u8>,
}

/// What [`BlockStorage::open`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AreaReport {
    /// The area held no superblock: it is new.
    pub fresh: bool,
    /// The superblock generation in force.
    pub generation: u64,
    /// Bytes of journal in force.
    pub len: u64,
    /// A superblock slot was torn (a crash while writing it); the other slot was used.
    pub torn_superblock: bool,
}

impl<D: BlockDevice> BlockStorage<D> {
    /// Opens the journal in `area`: reads both superblocks and takes the newest valid one. A blank
    /// area (both superblock sectors zero) is a new, empty journal; nothing is written until the
    /// first append.
    pub fn open(mut dev: D, area: Area) -> Result<(Self, AreaReport), BlockError<D::Error>> {
        let device = dev.sectors().map_err(BlockError::Device)?;
        let end = area.first.saturating_add(area.sectors);
        if area.sectors <= RESERVED_SECTORS || end > device {
            return Err(BlockError::OutOfDevice { tag: area.tag, first: area.first, end, device });
        }
        let mut slots = [Slot::Blank; 2];
        for (i, slot) in slots.iter_mut().enumerate() {
            let mut s = [0u8; SECTOR];
            dev.read(area.first + i as u64, &mut s).map_err(BlockError::Device)?;
            *slot = Superblock::decode(&s, i as u8);
        }
        if slots.contains(&Slot::Foreign) {
            return Err(BlockError::Foreign { first: area.first, second: area.first + 1 });
        }
        let newest = slots
            .iter()
            .filter_map(|s| match s {
                Slot::Valid(sb) => Some(*sb),
                _ => None,
            })
            .max_by_key(|sb| sb.generation);
        let torn_superblock = slots.contains(&Slot::Torn);
        let sb = match newest {
            Some(sb) => sb,
            None => Superblock { tag: area.tag, generation: 0, len: 0, sectors: area.sectors },
        };
        if sb.tag != area.tag || sb.sectors != area.sectors {
            return Err(BlockError::Mismatch {
                first: area.first,
                tag: area.tag,
                sectors: area.sectors,
                found_tag: sb.tag,
                found_sectors: sb.sectors,
            });
        }
        if sb.len > area.capacity() {
            return Err(BlockError::Corrupt { first: area.first, len: sb.len, capacity: area.capacity() });
        }
        let mut storage = Self {
            dev,
            area,
            generation: sb.generation,
            len: sb.len,
            tail: [0; SECTOR],
            window: vec![0; WINDOW],
            window_at: None,
            buf: vec![0; WINDOW],
        };
        storage.load_tail()?;
        let report = AreaReport { fresh: newest.is_none(), generation: sb.generation, len: sb.len, torn_superblock };
        Ok((storage, report))
    }

    /// The area.
    pub fn area(&self) -> Area {
        self.area
    }

    /// The device (to open another area on a shared one, or to inspect it in tests).
    pub fn device(&self) -> &D {
        &self.dev
    }

    fn load_tail(&mut self) -> Result<(), BlockError<D::Error>> {
        self.tail = [0; SECTOR];
        if !self.len.is_multiple_of(SECTOR as u64) {
            let sector = self.area.data_start() + self.len / SECTOR as u64;
            self.dev.read(sector, &mut self.tail).map_err(BlockError::Device)?;
        }
        Ok(())
    }

    /// Writes and flushes the superblock of the next generation with `len`.
    fn commit(&mut self, len: u64) -> Result<(), BlockError<D::Error>> {
        let sb = Superblock { tag: self.area.tag, generation: self.generation + 1, len, sectors: self.area.sectors };
        let slot = sb.generation % 2;
        self.dev.write(self.area.first + slot, &sb.encode()).map_err(BlockError::Device)?;
        self.dev.flush().map_err(BlockError::Device)?;
        self.generation = sb.generation;
        self.len = len;
        Ok(())
    }
}

impl<D: BlockDevice> crate::Storage for BlockStorage<D> {
    type Error = BlockError<D::Error>;

    fn size(&mut self) -> Result<u64, Self::Error> {
        Ok(self.len)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > self.len) {
            return Err(BlockError::OutOfRange { offset, len: buf.len(), size: self.len });
        }
        let data_sectors = self.area.sectors - RESERVED_SECTORS;
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let sector = at / SECTOR as u64;
            let window = sector - sector % WINDOW_SECTORS as u64;
            if self.window_at != Some(window) {
                let n = (data_sectors - window).min(WINDOW_SECTORS as u64) as usize;
                self.window_at = None;
                self.dev
                    .read(self.area.data_start() + window, &mut self.window[..n * SECTOR])
                    .map_err(BlockError::Device)?;
                self.window_at = Some(window);
            }
            let from = (at - window * SECTOR as u64) as usize;
            let take = (WINDOW - from).min(buf.len() - done);
            buf[done..done + take].copy_from_slice(&self.window[from..from + take]);
            done += take;
        }
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        if bytes.is_empty() {
            return Ok(());
        }
        let capacity = self.area.capacity();
        let new_len = self.len + bytes.len() as u64;
        if new_len > capacity {
            return Err(BlockError::Full { tag: self.area.tag, need: new_len, capacity });
        }
        self.window_at = None;
        let head = (self.len % SECTOR as u64) as usize;
        let mut sector = self.area.data_start() + self.len / SECTOR as u64;
        self.buf[..head].copy_from_slice(&self.tail[..head]);
        let mut fill = head;
        let mut rest = bytes;
        let mut new_tail = [0u8; SECTOR];
        loop {
            let take = rest.len().min(WINDOW - fill);
            self.buf[fill..fill + take].copy_from_slice(&rest[..take]);
            rest = &rest[take..];
            fill += take;
            let whole = fill.div_ceil(SECTOR) * SECTOR;
            self.buf[fill..whole].fill(0);
            self.dev.write(sector, &self.buf[..whole]).map_err(BlockError::Device)?;
            if rest.is_empty() {
                if !fill.is_multiple_of(SECTOR) {
                    new_tail.copy_from_slice(&self.buf[whole - SECTOR..whole]);
                }
                break;
            }
            sector += WINDOW_SECTORS as u64;
            fill = 0;
        }
        self.dev.flush().map_err(BlockError::Device)?;
        self.commit(new_len)?;
        self.tail = new_tail;
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> Result<(), Self::Error> {
        if len > self.len {
            return Err(BlockError::OutOfRange { offset: len, len: 0, size: self.len });
        }
        self.window_at = None;
        self.commit(len)?;
        self.load_tail()
    }
}

/// A disk in memory, for tests and tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemDisk {
    pub bytes: Vec<u8>,
}

impl MemDisk {
    /// A zeroed disk of `sectors` sectors.
    pub fn new(sectors: u64) -> Self {
        Self { bytes: vec![0; sectors as usize * SECTOR] }
    }
}

/// Why a [`MemDisk`] request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfDisk {
    pub sector: u64,
    pub sectors: usize,
}

impl MemDisk {
    fn range(&self, sector: u64, len: usize) -> Result<core::ops::Range<usize>, OutOfDisk> {
        let start = sector as usize * SECTOR;
        let bad = OutOfDisk { sector, sectors: len / SECTOR };
        if !len.is_multiple_of(SECTOR) || start.checked_add(len).is_none_or(|e| e > self.bytes.len()) {
            return Err(bad);
        }
        Ok(start..start + len)
    }
}

impl BlockDevice for MemDisk {
    type Error = OutOfDisk;
    fn sectors(&mut self) -> Result<u64, Self::Error> {
        Ok((self.bytes.len() / SECTOR) as u64)
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        let r = self.range(sector, buf.len())?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), Self::Error> {
        let r = self.range(sector, buf.len())?;
        self.bytes[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}
