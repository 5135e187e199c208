//! The lender's one error type: refused requests, journal failures and journal damage.

use crate::MAX_RANGES;
use alloc::boxed::Box;
use alloc::string::String;
use ppn_wire::ErrorCode;

/// Why the lender refused an operation, or could not open.
///
/// A refused operation changed nothing and wrote nothing. The messages are for operators; the
/// TCB puts them (cut to 128 bytes) in the detail of an error frame with [`Error::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    // ---- requests -------------------------------------------------------------------------
    #[error("not enough free blocks: {requested} requested, {free} free")]
    NotEnoughFree { requested: u32, free: u32 },
    #[error("a reservation or local allocation needs at least one block")]
    ZeroBlocks,
    #[error("the free blocks are too fragmented: {requested} blocks would take more than {MAX_RANGES} ranges")]
    TooFragmented { requested: u32 },
    #[error("the reservation would already be expired (expires {expires_unix_s}, now {now_unix_s})")]
    AlreadyExpired { expires_unix_s: u64, now_unix_s: u64 },
    #[error("unknown reservation {0} (never made, or already committed and ended, expired or revoked)")]
    UnknownReservation(u64),
    #[error("reservation {reservation} expired at {expires_unix_s} (now {now_unix_s})")]
    ReservationExpired { reservation: u64, expires_unix_s: u64, now_unix_s: u64 },
    #[error("reservation {reservation} is already committed as lease {lease}")]
    AlreadyCommitted { reservation: u64, lease: u64 },
    #[error("unknown lease {0} (never made, or already released, expired or revoked)")]
    UnknownLease(u64),
    #[error("lease {lease} is already bound to grant {sequence}")]
    GrantAlreadyBound { lease: u64, sequence: u64 },
    #[error("grant {sequence} is already bound to lease {lease}")]
    GrantInUse { sequence: u64, lease: u64 },
    #[error("grant range {first}..={last} is empty (first > last)")]
    BadGrantRange { first: u64, last: u64 },
    #[error("VM {0} already has local blocks; free them first")]
    VmHasBlocks(u64),
    #[error("VM {0} has no local blocks")]
    UnknownVm(u64),
    #[error("an empty block range (no blocks)")]
    EmptyRange,
    #[error("blocks {start}..{} are outside the pool of {capacity} blocks", *start as u64 + *len as u64)]
    OutOfRange { start: u32, len: u32, capacity: u32 },
    #[error("blocks {start}..{} are not all waiting for a scrub", *start as u64 + *len as u64)]
    NotScrubbing { start: u32, len: u32 },

    // ---- opening and the journal ----------------------------------------------------------
    #[error(
        "the lender journal is for {journal_blocks} blocks of {journal_block_bytes} bytes, not {blocks} blocks of {block_bytes}"
    )]
    CapacityMismatch { journal_blocks: u32, journal_block_bytes: u32, blocks: u32, block_bytes: u32 },
    /// The journal's storage failed (a read at open, or an append: then nothing was acknowledged).
    #[error("lender journal storage: {0}")]
    Journal(String),

    // ---- journal damage, found at open (wrapped in `Replay`) or by the payload decoder -------
    #[error("unknown lender journal entry kind {0:#04x} (a newer build's journal, or not a lender journal)")]
    UnknownEntry(u8),
    #[error("lender journal entry kind {kind:#04x} has {len} payload bytes, expected {expected}")]
    EntryLength { kind: u8, len: usize, expected: usize },
    #[error("lender journal entry kind {kind:#04x}: {detail}")]
    BadEntry { kind: u8, detail: &'static str },
    #[error("blocks {start}..{} are not all free", *start as u64 + *len as u64)]
    NotFree { start: u32, len: u32 },
    #[error("id {id} is not above the ids already issued (next is {next})")]
    IdNotFresh { id: u64, next: u64 },
    /// Record `record` (0-based) of the journal failed to decode or does not apply to the state
    /// the records before it built. Opening stops: nothing after it is trusted.
    #[error("lender journal record {record}: {source}")]
    Replay { record: u64, source: Box<Error> },
}

impl Error {
    /// The wire error code for this refusal: `Internal` for storage and journal trouble (nothing
    /// was acknowledged), `Rejected` for everything a request can get wrong.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Journal(_)
            | Error::CapacityMismatch { .. }
            | Error::UnknownEntry(_)
            | Error::EntryLength { .. }
            | Error::BadEntry { .. }
            | Error::NotFree { .. }
            | Error::IdNotFresh { .. }
            | Error::Replay { .. } => ErrorCode::Internal,
            _ => ErrorCode::Rejected,
        }
    }
}
