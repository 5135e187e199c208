//! The memory lender, a TCB core: a node's lendable memory as fixed-size blocks, each in exactly
//! one state (free, reserved, lent, in use by a local VM, or waiting for a scrub), and the
//! reservations, leases and local allocations that hold them.
//!
//! - [`Lender`]: the operations, persisted to a [`ppn_journal::Journal`]: every change is one
//!   [`entry::Entry`], durable before it is applied and acknowledged, replayed at open.
//! - [`State`]: the pool, pure and deterministic; `now_unix_s` is always passed in (the TCB's
//!   clock, never the proxy's).
//! - [`BlockRange`]: allocations are ranges of blocks, chosen best fit.
//!
//! A released, expired, revoked or locally freed block is never handed out again until the
//! platform has scrubbed it and said so ([`Lender::scrubbed`], journaled). The core does not
//! touch memory itself. `docs/lender.md` specifies the states, the journal entries and the
//! invariants.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod entry;
mod error;
pub mod lender;
pub mod range;
pub mod state;

pub use entry::Entry;
pub use error::Error;
pub use lender::{Lender, OpenReport};
pub use range::BlockRange;
pub use state::{BlockState, Ended, Lease, PoolStatus, Reservation, State};

/// Bytes in a block: 2 MiB, a huge page on x86-64 and AArch64 (4 KiB granule).
pub const BLOCK_BYTES: u32 = 2 * 1024 * 1024;
/// Most ranges one reservation or local allocation may take. The free blocks must be very
/// fragmented to need more; such a request is refused ([`Error::TooFragmented`]). Keeps a
/// RESERVE entry under 8.3 KiB, within the journal's 16 KiB record.
pub const MAX_RANGES: usize = 1024;

/// A VM of this node, as the platform numbers them.
pub type VmId = u64;

/// Fuzzing hook for the journal payload decoder: byte 0 is the record kind, the rest the
/// payload. Returns the decoder's verdict, never panics on any input; whatever decodes must
/// re-encode to the same bytes (the encoding is canonical), which it asserts.
pub fn fuzz_decode(data: &[u8]) -> Result<(), Error> {
    let Some((&k, payload)) = data.split_first() else { return Ok(()) };
    let e = Entry::decode(k, payload)?;
    let mut again = alloc::vec::Vec::new();
    e.encode(&mut again);
    assert_eq!(e.kind(), k, "decoded entry changed kind");
    assert_eq!(&again[..], payload, "entry did not re-encode to its bytes");
    Ok(())
}

/// Fuzzing hook for replay: bytes 0..2 are a capacity (u16 LE); the rest is a list of
/// `kind (1) | length (u16 LE) | payload` entries, written as journal records after an OPEN of
/// that capacity. Opening must either refuse with an error or build a state that passes
/// [`State::check`], reopens to the same state, and stays consistent when everything is expired
/// and scrubbed. Asserts all of that; never panics otherwise.
pub fn fuzz_replay(data: &[u8]) -> Result<(), Error> {
    use ppn_journal::mem::MemStorage;
    let Some((cap, mut rest)) = data.split_first_chunk::<2>() else { return Ok(()) };
    let capacity = u16::from_le_bytes(*cap) as u32;
    let mut bytes = alloc::vec::Vec::new();
    let mut record = alloc::vec![0u8; ppn_journal::MAX_RECORD];
    let mut put = |k: u8, payload: &[u8], bytes: &mut alloc::vec::Vec<u8>| {
        if let Some(n) = ppn_journal::encode_record(k, payload, &mut record) {
            bytes.extend_from_slice(&record[..n]);
        }
    };
    let mut open = alloc::vec::Vec::new();
    Entry::Open { capacity, block_bytes: BLOCK_BYTES }.encode(&mut open);
    put(entry::kind::OPEN, &open, &mut bytes);
    while let Some((&[k, l0, l1], tail)) = rest.split_first_chunk::<3>() {
        let n = (u16::from_le_bytes([l0, l1]) as usize).min(tail.len());
        put(k, &tail[..n], &mut bytes);
        rest = &tail[n..];
    }
    let (mut lender, _) = Lender::open(MemStorage { bytes }, capacity)?;
    assert_eq!(lender.state().check(), Ok(()), "replay built an inconsistent state");
    let (again, report) = Lender::open(lender.journal_storage().clone(), capacity).expect("a replayed journal reopens");
    assert_eq!((again.state(), report.truncated_bytes), (lender.state(), 0), "reopen differs");
    lender.expire(u64::MAX)?;
    for r in lender.to_scrub() {
        lender.scrubbed(r)?;
    }
    let status = lender.status();
    assert_eq!(lender.state().check(), Ok(()));
    assert_eq!((status.reserved, status.lent, status.scrubbing), (0, 0, 0));
    Ok(())
}
