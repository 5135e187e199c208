//! An append-only record log: the one way TCB state reaches persistent storage.
//!
//! Each record is written whole and made durable ([`Storage::append`] returns only after the
//! bytes are on stable storage) before the TCB acknowledges the request that caused it. On open,
//! [`Journal::open`] replays records in order and truncates a torn or corrupt tail, reporting how
//! many bytes it dropped, so every acknowledged record survives a crash at any instant.
//!
//! Record layout (little-endian):
//!
//! ```text
//! offset size field
//!  0      2   magic     b"PJ"
//!  2      1   version   1
//!  3      1   kind      record kind, owned by the caller
//!  4      4   length    payload length, <= MAX_PAYLOAD
//!  8      n   payload
//!  8+n    4   crc32     CRC-32 (IEEE) over bytes 0 .. 8+n
//! ```
#![no_std]
#![forbid(unsafe_code)]

/// First two bytes of every record.
pub const MAGIC: [u8; 2] = *b"PJ";
/// Record format version.
pub const VERSION: u8 = 1;
/// Header bytes before the payload.
pub const HEADER_LEN: usize = 8;
/// Bytes a record takes beyond its payload.
pub const OVERHEAD: usize = HEADER_LEN + 4;
/// Largest payload of one record.
pub const MAX_PAYLOAD: usize = 16 * 1024;
/// Largest record.
pub const MAX_RECORD: usize = MAX_PAYLOAD + OVERHEAD;

/// Byte storage for one journal. The hosted TCB puts it in a file; an seL4 PD on a block device.
pub trait Storage {
    type Error: core::fmt::Debug;
    /// Current length in bytes.
    fn size(&mut self) -> Result<u64, Self::Error>;
    /// Fills `buf` from `offset`; the range is within `size()`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error>;
    /// Appends `bytes` and returns only once they are durable.
    fn append(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;
    /// Cuts the storage to `len` bytes, durably. Called only by recovery, with `len <= size()`.
    fn truncate(&mut self, len: u64) -> Result<(), Self::Error>;
}

/// Journal errors.
#[derive(Debug, thiserror::Error)]
pub enum Error<E: core::fmt::Debug> {
    #[error("storage: {0:?}")]
    Storage(E),
    #[error("payload of {0} bytes exceeds the record limit of {MAX_PAYLOAD}")]
    TooLarge(usize),
}

/// What recovery found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recovery {
    /// Records replayed.
    pub records: u64,
    /// Bytes kept (the end of the last whole record).
    pub kept_bytes: u64,
    /// Bytes of a torn or corrupt tail that were cut off.
    pub truncated_bytes: u64,
}

/// An open journal.
#[derive(Debug)]
pub struct Journal<S: Storage> {
    storage: S,
    len: u64,
    records: u64,
}

/// Encodes one record into `out`; returns its length.
pub fn encode_record(kind: u8, payload: &[u8], out: &mut [u8]) -> Option<usize> {
    if payload.len() > MAX_PAYLOAD {
        return None;
    }
    let total = payload.len() + OVERHEAD;
    let out = out.get_mut(..total)?;
    out[0..2].copy_from_slice(&MAGIC);
    out[2] = VERSION;
    out[3] = kind;
    out[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    out[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
    let crc = crc32fast::hash(&out[..HEADER_LEN + payload.len()]);
    out[HEADER_LEN + payload.len()..total].copy_from_slice(&crc.to_le_bytes());
    Some(total)
}

/// Parses the record at the front of `bytes`: `Some((kind, payload, record length))`, or `None`
/// when the bytes do not start with a whole, intact record.
pub fn decode_record(bytes: &[u8]) -> Option<(u8, &[u8], usize)> {
    let len = header_payload_len(bytes)?;
    let body_end = HEADER_LEN + len;
    let crc_bytes = bytes.get(body_end..body_end + 4)?;
    let crc = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    if crc32fast::hash(&bytes[..body_end]) != crc {
        return None;
    }
    Some((bytes[3], &bytes[HEADER_LEN..body_end], body_end + 4))
}

/// The payload length a record header announces, if the header is well formed (magic,
/// version, length within [`MAX_PAYLOAD`]). The checksum is checked by [`decode_record`].
fn header_payload_len(header: &[u8]) -> Option<usize> {
    let header = header.get(..HEADER_LEN)?;
    if header[..2] != MAGIC || header[2] != VERSION {
        return None;
    }
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    (len <= MAX_PAYLOAD).then_some(len)
}

impl<S: Storage> Journal<S> {
    /// Replays every intact record through `replay(kind, payload)`, in order, then truncates
    /// whatever follows the last intact record. `scratch` must hold [`MAX_RECORD`] bytes.
    pub fn open(
        mut storage: S,
        scratch: &mut [u8],
        mut replay: impl FnMut(u8, &[u8]),
    ) -> Result<(Self, Recovery), Error<S::Error>> {
        assert!(scratch.len() >= MAX_RECORD, "journal scratch buffer must hold MAX_RECORD bytes");
        let total = storage.size().map_err(Error::Storage)?;
        let mut off = 0u64;
        let mut records = 0u64;
        while off < total {
            // The header first, then exactly the record it announces: replay reads each byte
            // about once, which matters on a block device.
            if total - off < OVERHEAD as u64 {
                break;
            }
            storage.read_at(off, &mut scratch[..HEADER_LEN]).map_err(Error::Storage)?;
            let Some(len) = header_payload_len(&scratch[..HEADER_LEN]) else { break };
            let want = HEADER_LEN + len + 4;
            if (want as u64) > total - off {
                break;
            }
            storage.read_at(off + HEADER_LEN as u64, &mut scratch[HEADER_LEN..want]).map_err(Error::Storage)?;
            let Some((kind, payload, used)) = decode_record(&scratch[..want]) else { break };
            replay(kind, payload);
            off += used as u64;
            records += 1;
        }
        if off < total {
            storage.truncate(off).map_err(Error::Storage)?;
        }
        let recovery = Recovery { records, kept_bytes: off, truncated_bytes: total - off };
        Ok((Self { storage, len: off, records }, recovery))
    }

    /// Appends one record durably. `scratch` must hold the payload plus [`OVERHEAD`].
    pub fn append(&mut self, kind: u8, payload: &[u8], scratch: &mut [u8]) -> Result<(), Error<S::Error>> {
        let n = encode_record(kind, payload, scratch).ok_or(Error::TooLarge(payload.len()))?;
        self.storage.append(&scratch[..n]).map_err(Error::Storage)?;
        self.len += n as u64;
        self.records += 1;
        Ok(())
    }

    pub fn len_bytes(&self) -> u64 {
        self.len
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }
}

pub mod block;

/// In-memory storage, for tests and for a PD without a disk.
pub mod mem {
    extern crate alloc;
    use alloc::vec::Vec;

    #[derive(Debug, Default, Clone)]
    pub struct MemStorage {
        pub bytes: Vec<u8>,
    }

    impl super::Storage for MemStorage {
        type Error = core::convert::Infallible;
        fn size(&mut self) -> Result<u64, Self::Error> {
            Ok(self.bytes.len() as u64)
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
            let o = offset as usize;
            buf.copy_from_slice(&self.bytes[o..o + buf.len()]);
            Ok(())
        }
        fn append(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
            self.bytes.extend_from_slice(bytes);
            Ok(())
        }
        fn truncate(&mut self, len: u64) -> Result<(), Self::Error> {
            self.bytes.truncate(len as usize);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::mem::MemStorage;
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    /// Records as (kind, payload).
    type Records = Vec<(u8, Vec<u8>)>;

    fn replay_all(bytes: Vec<u8>) -> (Records, Recovery, Vec<u8>) {
        let mut scratch = std::vec![0u8; MAX_RECORD];
        let mut got = Vec::new();
        let (j, rec) = Journal::open(MemStorage { bytes }, &mut scratch, |k, p| got.push((k, p.to_vec()))).unwrap();
        (got, rec, j.storage().bytes.clone())
    }

    fn write_all(records: &[(u8, Vec<u8>)]) -> (Vec<u8>, Vec<usize>) {
        let mut scratch = std::vec![0u8; MAX_RECORD];
        let (mut j, _) = Journal::open(MemStorage::default(), &mut scratch, |_, _| {}).unwrap();
        let mut ends = Vec::new();
        for (k, p) in records {
            j.append(*k, p, &mut scratch).unwrap();
            ends.push(j.len_bytes() as usize);
        }
        (j.storage().bytes.clone(), ends)
    }

    #[test]
    fn too_large_payload_is_refused_and_nothing_written() {
        let mut scratch = std::vec![0u8; MAX_RECORD + 1];
        let (mut j, _) = Journal::open(MemStorage::default(), &mut scratch, |_, _| {}).unwrap();
        let big = std::vec![1u8; MAX_PAYLOAD + 1];
        assert!(matches!(j.append(1, &big, &mut scratch), Err(Error::TooLarge(_))));
        assert_eq!(j.len_bytes(), 0);
        assert!(j.storage().bytes.is_empty());
    }

    proptest! {
        /// A crash that leaves any prefix of the log (a torn append) loses only the record being
        /// written: every record whose append completed is replayed, and the tail is cut.
        #[test]
        fn any_prefix_recovers_every_whole_record(
            records in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..12),
            cut in any::<prop::sample::Index>(),
        ) {
            let (bytes, ends) = write_all(&records);
            let cut = cut.index(bytes.len() + 1);
            let (got, rec, kept) = replay_all(bytes[..cut].to_vec());
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            prop_assert_eq!(&got[..], &records[..whole]);
            prop_assert_eq!(rec.records as usize, whole);
            let keep = if whole == 0 { 0 } else { ends[whole - 1] };
            prop_assert_eq!(rec.kept_bytes as usize, keep);
            prop_assert_eq!(rec.truncated_bytes as usize, cut - keep);
            prop_assert_eq!(kept.len(), keep);
        }

        /// A flipped bit anywhere is caught by the checksum: the records before it survive, the
        /// damaged record and everything after it are cut, never replayed wrong.
        #[test]
        fn a_flipped_bit_never_replays_a_damaged_record(
            records in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..100)), 1..8),
            pos in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let (mut bytes, ends) = write_all(&records);
            let pos = pos.index(bytes.len());
            bytes[pos] ^= 1 << bit;
            let (got, _, _) = replay_all(bytes);
            let intact = ends.iter().filter(|&&e| e <= pos).count();
            prop_assert_eq!(&got[..], &records[..intact]);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let (_, rec, kept) = replay_all(bytes.clone());
            prop_assert_eq!(rec.kept_bytes + rec.truncated_bytes, bytes.len() as u64);
            prop_assert_eq!(&kept[..], &bytes[..rec.kept_bytes as usize]);
        }
    }
}
