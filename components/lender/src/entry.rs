//! The lender's journal entries: one per state change, written before the change is acknowledged
//! and replayed at open. The journal record around each payload (magic, version, kind byte,
//! length, CRC) is `ppn-journal`'s; this module owns the kind numbers and the payloads.
//!
//! Payloads are fixed little-endian fields (`docs/lender.md` §4). Decoding checks the exact
//! length before reading, rejects unknown kinds, and accepts only the canonical form (ranges
//! non-empty, ascending, disjoint and not touching), so a payload decodes and re-encodes to the
//! same bytes.

use crate::range::BlockRange;
use crate::{Error, MAX_RANGES, VmId};
use alloc::vec::Vec;
use ppn_wire::ByteArray;
use ppn_wire::service::NodeId;

/// Journal record kinds of the lender log. `0x3_`: the lender is wire service `0x03`, and the
/// numbers differ from the node's and the ledger's, so opening their journals as the lender's
/// fails at the first record.
pub mod kind {
    /// The pool: capacity in blocks (u32), block size in bytes (u32). First, and only first.
    pub const OPEN: u8 = 0x31;
    /// A reservation: id, borrower, expiry, its block ranges.
    pub const RESERVE: u8 = 0x32;
    /// A reservation became a lease: reservation id, lease id.
    pub const COMMIT: u8 = 0x33;
    /// A lease's capability token: lease id, the grant's sequence number in the ledger.
    pub const GRANT: u8 = 0x34;
    /// A lease ended by its borrower: lease id.
    pub const RELEASE: u8 = 0x35;
    /// Expiry at a time: everything with `expires <= now` ended.
    pub const EXPIRE: u8 = 0x36;
    /// Every reservation and lease of a node ended.
    pub const REVOKE_BORROWER: u8 = 0x37;
    /// Every lease bound to a grant in `first..=last` ended.
    pub const REVOKE_GRANTS: u8 = 0x38;
    /// Blocks given to a local VM: VM id, ranges.
    pub const LOCAL: u8 = 0x39;
    /// A local VM's blocks given back: VM id.
    pub const FREE_LOCAL: u8 = 0x3A;
    /// The platform confirmed it scrubbed a range: start, length.
    pub const SCRUBBED: u8 = 0x3B;

    /// The name of a kind, for tools that list journals.
    pub fn name(k: u8) -> Option<&'static str> {
        Some(match k {
            OPEN => "OPEN",
            RESERVE => "RESERVE",
            COMMIT => "COMMIT",
            GRANT => "GRANT",
            RELEASE => "RELEASE",
            EXPIRE => "EXPIRE",
            REVOKE_BORROWER => "REVOKE_BORROWER",
            REVOKE_GRANTS => "REVOKE_GRANTS",
            LOCAL => "LOCAL",
            FREE_LOCAL => "FREE_LOCAL",
            SCRUBBED => "SCRUBBED",
            _ => return None,
        })
    }
}

/// Bytes of a RESERVE payload before its ranges: id, borrower, expiry, count.
pub const RESERVE_HEADER: usize = 8 + 8 + 8 + 4;
/// Bytes of a LOCAL payload before its ranges: VM id, count.
pub const LOCAL_HEADER: usize = 8 + 4;
/// Bytes per encoded range: start, length.
pub const RANGE_LEN: usize = 8;

/// One decoded journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Open { capacity: u32, block_bytes: u32 },
    Reserve { id: u64, borrower: NodeId, expires_unix_s: u64, ranges: Vec<BlockRange> },
    Commit { reservation: u64, lease: u64 },
    Grant { lease: u64, sequence: u64 },
    Release { lease: u64 },
    Expire { now_unix_s: u64 },
    RevokeBorrower { node: NodeId },
    RevokeGrants { first: u64, last: u64 },
    Local { vm: VmId, ranges: Vec<BlockRange> },
    FreeLocal { vm: VmId },
    Scrubbed { range: BlockRange },
}

impl Entry {
    pub fn kind(&self) -> u8 {
        match self {
            Entry::Open { .. } => kind::OPEN,
            Entry::Reserve { .. } => kind::RESERVE,
            Entry::Commit { .. } => kind::COMMIT,
            Entry::Grant { .. } => kind::GRANT,
            Entry::Release { .. } => kind::RELEASE,
            Entry::Expire { .. } => kind::EXPIRE,
            Entry::RevokeBorrower { .. } => kind::REVOKE_BORROWER,
            Entry::RevokeGrants { .. } => kind::REVOKE_GRANTS,
            Entry::Local { .. } => kind::LOCAL,
            Entry::FreeLocal { .. } => kind::FREE_LOCAL,
            Entry::Scrubbed { .. } => kind::SCRUBBED,
        }
    }

    /// Appends the payload to `out` (cleared first). At most `RESERVE_HEADER + 8 * MAX_RANGES`
    /// bytes, well within the journal's record limit.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        let ranges = |out: &mut Vec<u8>, ranges: &[BlockRange]| {
            out.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
            for r in ranges {
                out.extend_from_slice(&r.start.to_le_bytes());
                out.extend_from_slice(&r.len.to_le_bytes());
            }
        };
        match self {
            Entry::Open { capacity, block_bytes } => {
                out.extend_from_slice(&capacity.to_le_bytes());
                out.extend_from_slice(&block_bytes.to_le_bytes());
            }
            Entry::Reserve { id, borrower, expires_unix_s, ranges: rs } => {
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&borrower.0.0);
                out.extend_from_slice(&expires_unix_s.to_le_bytes());
                ranges(out, rs);
            }
            Entry::Commit { reservation: a, lease: b }
            | Entry::Grant { lease: a, sequence: b }
            | Entry::RevokeGrants { first: a, last: b } => {
                out.extend_from_slice(&a.to_le_bytes());
                out.extend_from_slice(&b.to_le_bytes());
            }
            Entry::Release { lease: v } | Entry::Expire { now_unix_s: v } | Entry::FreeLocal { vm: v } => {
                out.extend_from_slice(&v.to_le_bytes())
            }
            Entry::RevokeBorrower { node } => out.extend_from_slice(&node.0.0),
            Entry::Local { vm, ranges: rs } => {
                out.extend_from_slice(&vm.to_le_bytes());
                ranges(out, rs);
            }
            Entry::Scrubbed { range } => {
                out.extend_from_slice(&range.start.to_le_bytes());
                out.extend_from_slice(&range.len.to_le_bytes());
            }
        }
    }

    /// Decodes one payload of journal record kind `kind`. Lengths are checked before any field
    /// is read; an unknown kind is [`Error::UnknownEntry`]; never panics.
    pub fn decode(kind: u8, payload: &[u8]) -> Result<Self, Error> {
        let mut r = Reader { kind, buf: payload, at: 0 };
        let e = match kind {
            kind::OPEN => {
                r.exact(8)?;
                Entry::Open { capacity: r.u32(), block_bytes: r.u32() }
            }
            kind::RESERVE => {
                r.at_least(RESERVE_HEADER + RANGE_LEN)?;
                let (id, borrower, expires_unix_s) = (r.u64(), r.node(), r.u64());
                Entry::Reserve { id, borrower, expires_unix_s, ranges: r.ranges(RESERVE_HEADER)? }
            }
            kind::COMMIT => {
                r.exact(16)?;
                Entry::Commit { reservation: r.u64(), lease: r.u64() }
            }
            kind::GRANT => {
                r.exact(16)?;
                Entry::Grant { lease: r.u64(), sequence: r.u64() }
            }
            kind::RELEASE => {
                r.exact(8)?;
                Entry::Release { lease: r.u64() }
            }
            kind::EXPIRE => {
                r.exact(8)?;
                Entry::Expire { now_unix_s: r.u64() }
            }
            kind::REVOKE_BORROWER => {
                r.exact(8)?;
                Entry::RevokeBorrower { node: r.node() }
            }
            kind::REVOKE_GRANTS => {
                r.exact(16)?;
                let (first, last) = (r.u64(), r.u64());
                if first > last {
                    return Err(Error::BadEntry { kind, detail: "grant range with first > last" });
                }
                Entry::RevokeGrants { first, last }
            }
            kind::LOCAL => {
                r.at_least(LOCAL_HEADER + RANGE_LEN)?;
                let vm = r.u64();
                Entry::Local { vm, ranges: r.ranges(LOCAL_HEADER)? }
            }
            kind::FREE_LOCAL => {
                r.exact(8)?;
                Entry::FreeLocal { vm: r.u64() }
            }
            kind::SCRUBBED => {
                r.exact(8)?;
                let range = BlockRange { start: r.u32(), len: r.u32() };
                check_ranges(kind, core::slice::from_ref(&range))?;
                Entry::Scrubbed { range }
            }
            other => return Err(Error::UnknownEntry(other)),
        };
        Ok(e)
    }
}

/// The canonical form of a list of ranges: each non-empty and below block number 2^32, in
/// ascending order, neither overlapping nor touching (touching ranges are one range).
pub(crate) fn check_ranges(kind: u8, ranges: &[BlockRange]) -> Result<(), Error> {
    let mut prev_end: Option<u64> = None;
    for r in ranges {
        if r.len == 0 {
            return Err(Error::BadEntry { kind, detail: "an empty range" });
        }
        if r.end() > u32::MAX as u64 {
            return Err(Error::BadEntry { kind, detail: "a range past the last block number" });
        }
        if prev_end.is_some_and(|p| p >= r.start as u64) {
            return Err(Error::BadEntry { kind, detail: "ranges not ascending, or overlapping or touching" });
        }
        prev_end = Some(r.end());
    }
    Ok(())
}

/// Reads fixed fields after the length has been checked: the accessors never go out of bounds
/// because every caller checks the total length first (`exact`, `at_least`, `ranges`).
struct Reader<'a> {
    kind: u8,
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn exact(&self, n: usize) -> Result<(), Error> {
        if self.buf.len() == n {
            Ok(())
        } else {
            Err(Error::EntryLength { kind: self.kind, len: self.buf.len(), expected: n })
        }
    }

    fn at_least(&self, n: usize) -> Result<(), Error> {
        if self.buf.len() >= n {
            Ok(())
        } else {
            Err(Error::EntryLength { kind: self.kind, len: self.buf.len(), expected: n })
        }
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        // Lengths are checked before any read; `get` keeps even a bug from panicking.
        if let Some(s) = self.buf.get(self.at..self.at + N) {
            b.copy_from_slice(s);
        }
        self.at += N;
        b
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }

    fn node(&mut self) -> NodeId {
        NodeId(ByteArray(self.bytes()))
    }

    /// The count at `header - 4`, then exactly that many ranges to the end of the payload.
    fn ranges(&mut self, header: usize) -> Result<Vec<BlockRange>, Error> {
        let count = self.u32() as usize;
        if count == 0 {
            return Err(Error::BadEntry { kind: self.kind, detail: "no ranges" });
        }
        if count > MAX_RANGES {
            return Err(Error::BadEntry { kind: self.kind, detail: "more ranges than MAX_RANGES" });
        }
        self.exact(header + count * RANGE_LEN)?;
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            out.push(BlockRange { start: self.u32(), len: self.u32() });
        }
        check_ranges(self.kind, &out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_and_has_its_length() {
        let node = NodeId(ByteArray([7; 8]));
        let rs = alloc::vec![BlockRange::new(0, 2), BlockRange::new(5, 1)];
        let cases = [
            (Entry::Open { capacity: 9, block_bytes: 2 << 20 }, 8),
            (Entry::Reserve { id: 3, borrower: node, expires_unix_s: 99, ranges: rs.clone() }, 28 + 16),
            (Entry::Commit { reservation: 3, lease: 4 }, 16),
            (Entry::Grant { lease: 4, sequence: 1 << 40 }, 16),
            (Entry::Release { lease: 4 }, 8),
            (Entry::Expire { now_unix_s: 5 }, 8),
            (Entry::RevokeBorrower { node }, 8),
            (Entry::RevokeGrants { first: 1, last: 1 }, 16),
            (Entry::Local { vm: 12, ranges: rs }, 12 + 16),
            (Entry::FreeLocal { vm: 12 }, 8),
            (Entry::Scrubbed { range: BlockRange::new(1, 1) }, 8),
        ];
        let mut buf = Vec::new();
        for (e, len) in cases {
            e.encode(&mut buf);
            assert_eq!(buf.len(), len, "{e:?}");
            assert_eq!(Entry::decode(e.kind(), &buf), Ok(e.clone()));
            // One byte short and one byte long are length errors.
            assert!(matches!(Entry::decode(e.kind(), &buf[..len - 1]), Err(Error::EntryLength { .. })), "{e:?}");
            buf.push(0);
            assert!(matches!(Entry::decode(e.kind(), &buf), Err(Error::EntryLength { .. })), "{e:?}");
        }
    }
}
