//! The journal on a block device: every acknowledged record survives a crash at any device
//! operation, whatever subset of the unflushed sector writes reached the disk.

use ppn_journal::block::{Area, BlockDevice, BlockError, BlockStorage, MemDisk, SECTOR};
use ppn_journal::{Journal, MAX_RECORD, Storage};
use proptest::prelude::*;
use std::cell::RefCell;
use std::rc::Rc;

/// A disk that keeps unflushed sector writes pending, fails every operation after a budget, and
/// can be "power cut": any subset of the pending sector writes lands, each sector whole.
#[derive(Debug)]
struct CrashDisk {
    durable: Vec<u8>,
    pending: Vec<(u64, Vec<u8>)>,
    ops_left: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PowerCut;

impl CrashDisk {
    fn new(image: Vec<u8>, ops: usize) -> Self {
        Self { durable: image, pending: Vec::new(), ops_left: ops }
    }

    fn spend(&mut self) -> Result<(), PowerCut> {
        if self.ops_left == 0 {
            return Err(PowerCut);
        }
        self.ops_left -= 1;
        Ok(())
    }

    /// The disk after the power cut: `keep(i)` says whether pending sector write `i` landed.
    fn after_cut(&self, mut keep: impl FnMut(usize) -> bool) -> Vec<u8> {
        let mut image = self.durable.clone();
        for (i, (sector, data)) in self.pending.iter().enumerate() {
            if keep(i) {
                let at = *sector as usize * SECTOR;
                image[at..at + SECTOR].copy_from_slice(data);
            }
        }
        image
    }
}

impl BlockDevice for CrashDisk {
    type Error = PowerCut;
    fn sectors(&mut self) -> Result<u64, PowerCut> {
        Ok((self.durable.len() / SECTOR) as u64)
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), PowerCut> {
        self.spend()?;
        let at = sector as usize * SECTOR;
        buf.copy_from_slice(&self.durable[at..at + buf.len()]);
        for (s, data) in &self.pending {
            let s = *s as usize * SECTOR;
            if s >= at && s < at + buf.len() {
                buf[s - at..s - at + SECTOR].copy_from_slice(data);
            }
        }
        Ok(())
    }
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), PowerCut> {
        self.spend()?;
        for (i, chunk) in buf.chunks(SECTOR).enumerate() {
            self.pending.push((sector + i as u64, chunk.to_vec()));
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), PowerCut> {
        self.spend()?;
        let image = self.after_cut(|_| true);
        self.durable = image;
        self.pending.clear();
        Ok(())
    }
}

const AREA: Area = Area { tag: 7, first: 4, sectors: 120 };
const DISK_SECTORS: u64 = 130;

fn replay<D: BlockDevice>(dev: D) -> (Vec<Vec<u8>>, Journal<BlockStorage<D>>) {
    let (storage, _) = BlockStorage::open(dev, AREA).unwrap();
    let mut scratch = vec![0u8; MAX_RECORD];
    let mut got = Vec::new();
    let (journal, _) = Journal::open(storage, &mut scratch, |_, p| got.push(p.to_vec())).unwrap();
    (got, journal)
}

fn payloads() -> impl Strategy<Value = Vec<Vec<u8>>> {
    // Sizes from empty to past a 4 KiB window, so records straddle sectors and windows.
    proptest::collection::vec(
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(any::<u8>(), 400..700),
            proptest::collection::vec(any::<u8>(), 4000..5000),
        ],
        1..8,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Power is cut after `budget` device operations; any subset of the unflushed sector writes
    /// lands. On reopen, every acknowledged record is there, the one in flight is there whole or
    /// not at all, nothing else is, and the journal takes new records after recovery.
    #[test]
    fn a_power_cut_loses_no_acknowledged_record(
        records in payloads(),
        budget in 0usize..120,
        landed in any::<u64>(),
    ) {
        let disk = Rc::new(RefCell::new(CrashDisk::new(vec![0; DISK_SECTORS as usize * SECTOR], usize::MAX)));
        let (storage, report) = BlockStorage::open(disk.clone(), AREA).unwrap();
        prop_assert!(report.fresh);
        let mut scratch = vec![0u8; MAX_RECORD];
        let (mut journal, _) = Journal::open(storage, &mut scratch, |_, _| {}).unwrap();
        disk.borrow_mut().ops_left = budget;
        let mut acked = 0;
        for r in &records {
            match journal.append(1, r, &mut scratch) {
                Ok(()) => acked += 1,
                Err(_) => break,
            }
        }
        let image = disk.borrow().after_cut(|i| (landed >> (i % 64)) & 1 == 1);

        let (got, mut journal) = replay(MemDisk { bytes: image });
        prop_assert!(got.len() == acked || got.len() == acked + 1, "{} records back, {} acknowledged", got.len(), acked);
        prop_assert_eq!(&got[..], &records[..got.len()]);

        journal.append(2, b"after recovery", &mut scratch).unwrap();
        let image = journal.storage().device().bytes.clone();
        let (again, _) = replay(MemDisk { bytes: image });
        prop_assert_eq!(&again[..got.len()], &got[..]);
        prop_assert_eq!(&again[got.len()..], &[b"after recovery".to_vec()][..]);
    }

    /// Reads through the window cache return exactly what was appended, at any offset.
    #[test]
    fn reads_match_appends(records in payloads(), probes in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..6000), 1..20)) {
        let (mut storage, _) = BlockStorage::open(MemDisk::new(DISK_SECTORS), AREA).unwrap();
        let mut all = Vec::new();
        for r in &records {
            storage.append(r).unwrap();
            all.extend_from_slice(r);
        }
        prop_assert_eq!(storage.size().unwrap(), all.len() as u64);
        for (at, len) in probes {
            if all.is_empty() {
                break;
            }
            let at = at.index(all.len());
            let len = len.min(all.len() - at);
            let mut buf = vec![0u8; len];
            storage.read_at(at as u64, &mut buf).unwrap();
            prop_assert_eq!(&buf[..], &all[at..at + len]);
        }
        let mut past = [0u8; 1];
        let past_end = storage.read_at(all.len() as u64, &mut past);
        prop_assert!(matches!(past_end, Err(BlockError::OutOfRange { .. })), "read past the end: {:?}", past_end);
    }
}

#[test]
fn a_torn_newest_superblock_falls_back_to_the_previous_state() {
    let (mut storage, _) = BlockStorage::open(MemDisk::new(DISK_SECTORS), AREA).unwrap();
    storage.append(b"one").unwrap();
    storage.append(b"two").unwrap();
    let mut image = storage.device().bytes.clone();
    // Generation 2 is in slot 0 (sector AREA.first); tear it.
    let at = AREA.first as usize * SECTOR;
    image[at + 20] ^= 0xff;
    let (mut storage, report) = BlockStorage::open(MemDisk { bytes: image }, AREA).unwrap();
    assert!(report.torn_superblock);
    assert_eq!((report.generation, report.len), (1, 3));
    let mut back = [0u8; 3];
    storage.read_at(0, &mut back).unwrap();
    assert_eq!(&back, b"one");
}

#[test]
fn a_foreign_disk_is_refused_and_left_untouched() {
    let mut disk = MemDisk::new(DISK_SECTORS);
    disk.bytes[AREA.first as usize * SECTOR..][..4].copy_from_slice(b"\x7fELF");
    let before = disk.bytes.clone();
    let err = BlockStorage::open(disk, AREA).unwrap_err();
    assert!(matches!(err, BlockError::Foreign { first: 4, second: 5 }), "{err}");
    assert!(err.to_string().contains("not a PPN journal"), "{err}");
    // `open` consumed the disk; open a copy to show nothing was written by the refusal path.
    let copy = MemDisk { bytes: before.clone() };
    assert!(BlockStorage::open(copy.clone(), AREA).is_err());
    assert_eq!(copy.bytes, before);
}

#[test]
fn another_journal_or_another_size_is_refused() {
    let (mut storage, _) = BlockStorage::open(MemDisk::new(DISK_SECTORS), AREA).unwrap();
    storage.append(b"x").unwrap();
    let image = storage.device().bytes.clone();
    let other_tag = Area { tag: 8, ..AREA };
    let err = BlockStorage::open(MemDisk { bytes: image.clone() }, other_tag).unwrap_err();
    assert!(matches!(err, BlockError::Mismatch { found_tag: 7, tag: 8, .. }), "{err}");
    let other_size = Area { sectors: 60, ..AREA };
    let err = BlockStorage::open(MemDisk { bytes: image }, other_size).unwrap_err();
    assert!(matches!(err, BlockError::Mismatch { found_sectors: 120, sectors: 60, .. }), "{err}");
    let too_big = Area { sectors: DISK_SECTORS, ..AREA };
    let err = BlockStorage::open(MemDisk::new(DISK_SECTORS), too_big).unwrap_err();
    assert!(matches!(err, BlockError::OutOfDevice { .. }), "{err}");
}

#[test]
fn a_full_area_refuses_the_append_and_keeps_what_it_has() {
    let small = Area { tag: 1, first: 0, sectors: 4 };
    let (mut storage, _) = BlockStorage::open(MemDisk::new(8), small).unwrap();
    storage.append(&[1; 1000]).unwrap();
    let err = storage.append(&[2; 100]).unwrap_err();
    assert!(matches!(err, BlockError::Full { need: 1100, capacity: 1024, .. }), "{err}");
    let image = storage.device().bytes.clone();
    let (mut storage, report) = BlockStorage::open(MemDisk { bytes: image }, small).unwrap();
    assert_eq!(report.len, 1000);
    let mut back = vec![0u8; 1000];
    storage.read_at(0, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 1));
}

#[test]
fn two_journals_share_one_disk() {
    let disk = Rc::new(RefCell::new(MemDisk::new(DISK_SECTORS)));
    let a = Area { tag: 1, first: 0, sectors: 8 };
    let b = Area { tag: 2, first: 8, sectors: 100 };
    let mut scratch = vec![0u8; MAX_RECORD];
    let (sa, _) = BlockStorage::open(disk.clone(), a).unwrap();
    let (sb, _) = BlockStorage::open(disk.clone(), b).unwrap();
    let (mut ja, _) = Journal::open(sa, &mut scratch, |_, _| {}).unwrap();
    let (mut jb, _) = Journal::open(sb, &mut scratch, |_, _| {}).unwrap();
    for i in 0..20u8 {
        ja.append(1, &[i; 30], &mut scratch).unwrap();
        jb.append(2, &[i; 300], &mut scratch).unwrap();
    }
    drop((ja, jb));
    let image = disk.borrow().bytes.clone();
    let disk = Rc::new(RefCell::new(MemDisk { bytes: image }));
    for (area, size) in [(a, 30), (b, 300)] {
        let (s, _) = BlockStorage::open(disk.clone(), area).unwrap();
        let mut got = Vec::new();
        let (_, rec) = Journal::open(s, &mut scratch, |_, p| got.push(p.to_vec())).unwrap();
        assert_eq!(rec.truncated_bytes, 0);
        let want: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; size]).collect();
        assert_eq!(got, want, "area {}", area.tag);
    }
}

#[test]
fn truncate_cuts_durably_and_appends_continue_from_the_cut() {
    let (mut storage, _) = BlockStorage::open(MemDisk::new(DISK_SECTORS), AREA).unwrap();
    storage.append(&[5; 700]).unwrap();
    storage.truncate(300).unwrap();
    storage.append(&[6; 10]).unwrap();
    let image = storage.device().bytes.clone();
    let (mut storage, report) = BlockStorage::open(MemDisk { bytes: image }, AREA).unwrap();
    assert_eq!(report.len, 310);
    let mut back = vec![0u8; 310];
    storage.read_at(0, &mut back).unwrap();
    assert!(back[..300].iter().all(|&b| b == 5) && back[300..].iter().all(|&b| b == 6));
}
