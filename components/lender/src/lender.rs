//! The lender: the pool's [`State`] behind a [`Journal`]. Every change is an [`Entry`], validated,
//! appended durably, and only then applied and acknowledged; opening replays the entries.

use crate::entry::Entry;
use crate::range::BlockRange;
use crate::state::{Ended, Lease, PoolStatus, Reservation, State};
use crate::{BLOCK_BYTES, Error, VmId};
use alloc::format;
use alloc::vec::Vec;
use ppn_journal::{Journal, MAX_RECORD, Storage};
use ppn_wire::service::{NodeId, Pool};

/// What opening found in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenReport {
    /// Journal records replayed, the OPEN record included.
    pub records: u64,
    /// Bytes of a torn or corrupt tail the journal cut off (the op being written at a crash).
    pub truncated_bytes: u64,
    /// The journal was empty: a new pool, every block waiting for a scrub.
    pub created: bool,
}

/// A node's pool of lendable memory.
#[derive(Debug)]
pub struct Lender<S: Storage> {
    state: State,
    journal: Journal<S>,
    /// The journal's record buffer.
    scratch: Vec<u8>,
    /// The payload being written.
    payload: Vec<u8>,
}

fn storage_error<E: core::fmt::Debug>(e: ppn_journal::Error<E>) -> Error {
    match e {
        ppn_journal::Error::Storage(e) => Error::Journal(format!("{e:?}")),
        e => Error::Journal(format!("{e}")),
    }
}

impl<S: Storage> Lender<S> {
    /// Opens the pool of `capacity` blocks of [`BLOCK_BYTES`] on `storage`.
    ///
    /// An empty journal starts a new pool (an OPEN record is written; every block waits for a
    /// scrub). Otherwise every record is decoded and validated against the state the records
    /// before it built, and applied: the state is exactly the one the last acknowledged op left.
    /// A journal for another capacity or block size is [`Error::CapacityMismatch`]; a record
    /// that does not decode or apply stops opening with [`Error::Replay`] naming it.
    pub fn open(storage: S, capacity: u32) -> Result<(Self, OpenReport), Error> {
        let mut scratch = alloc::vec![0u8; MAX_RECORD];
        let mut state: Option<State> = None;
        let mut failed: Option<Error> = None;
        let mut index = 0u64;
        let replay = |k: u8, payload: &[u8]| {
            if failed.is_some() {
                return;
            }
            let record = index;
            index += 1;
            let result = match (&mut state, Entry::decode(k, payload)) {
                (_, Err(e)) => Err(e),
                (None, Ok(Entry::Open { capacity: c, block_bytes })) => {
                    if c != capacity || block_bytes != BLOCK_BYTES {
                        failed = Some(Error::CapacityMismatch {
                            journal_blocks: c,
                            journal_block_bytes: block_bytes,
                            blocks: capacity,
                            block_bytes: BLOCK_BYTES,
                        });
                        return;
                    }
                    state = Some(State::new(c));
                    Ok(())
                }
                (None, Ok(_)) => Err(Error::BadEntry { kind: k, detail: "the journal does not start with OPEN" }),
                (Some(s), Ok(e)) => s.validate(&e).map(|()| s.apply(&e)),
            };
            if let Err(e) = result {
                failed = Some(Error::Replay { record, source: alloc::boxed::Box::new(e) });
            }
        };
        let (journal, recovery) = Journal::open(storage, &mut scratch, replay).map_err(storage_error)?;
        if let Some(e) = failed {
            return Err(e);
        }
        let mut report =
            OpenReport { records: recovery.records, truncated_bytes: recovery.truncated_bytes, created: false };
        let mut lender = Lender { state: State::new(capacity), journal, scratch, payload: Vec::new() };
        match state {
            Some(s) => lender.state = s,
            None => {
                lender.append(&Entry::Open { capacity, block_bytes: BLOCK_BYTES })?;
                report.created = true;
            }
        }
        Ok((lender, report))
    }

    fn append(&mut self, e: &Entry) -> Result<(), Error> {
        e.encode(&mut self.payload);
        self.journal.append(e.kind(), &self.payload, &mut self.scratch).map_err(storage_error)
    }

    /// Validates `e`, makes it durable, then applies it. Nothing changes unless all three happen.
    fn write(&mut self, e: &Entry) -> Result<(), Error> {
        self.state.validate(e)?;
        self.append(e)?;
        self.state.apply(e);
        Ok(())
    }

    /// Reserves `blocks` for `borrower` until `expires_unix_s`, preferring one contiguous range
    /// (best fit), else the fewest ranges. Refused when `blocks` is 0, the expiry is not after
    /// `now_unix_s`, there are not enough free blocks, or they would take more than
    /// [`crate::MAX_RANGES`] ranges.
    pub fn reserve(
        &mut self,
        borrower: NodeId,
        blocks: u32,
        expires_unix_s: u64,
        now_unix_s: u64,
    ) -> Result<Reservation, Error> {
        if blocks == 0 {
            return Err(Error::ZeroBlocks);
        }
        if expires_unix_s <= now_unix_s {
            return Err(Error::AlreadyExpired { expires_unix_s, now_unix_s });
        }
        let ranges = self.state.plan(blocks)?;
        let id = self.state.next_id();
        self.write(&Entry::Reserve { id, borrower, expires_unix_s, ranges })?;
        self.state.reservation(id).cloned().ok_or(Error::UnknownReservation(id))
    }

    /// Turns a reservation into a lease on the same blocks, for the same borrower and expiry,
    /// with a new id. Refused for an unknown, already committed or expired reservation. The
    /// lease has no grant yet: see [`Lender::bind_grant`].
    pub fn commit(&mut self, reservation: u64, now_unix_s: u64) -> Result<Lease, Error> {
        if let Some(e) = self.state.commit_refusal(reservation) {
            return Err(e);
        }
        if let Some(r) = self.state.reservation(reservation)
            && r.expires_unix_s <= now_unix_s
        {
            return Err(Error::ReservationExpired { reservation, expires_unix_s: r.expires_unix_s, now_unix_s });
        }
        let lease = self.state.next_id();
        self.write(&Entry::Commit { reservation, lease })?;
        self.state.lease(lease).cloned().ok_or(Error::UnknownLease(lease))
    }

    /// Records the sequence number of the capability grant the TCB issued for `lease` (resource
    /// type Memory, resource id = lease id), so that revoking that grant ends the lease
    /// ([`Lender::revoke_grants`]). Once per lease; a sequence binds at most one live lease.
    pub fn bind_grant(&mut self, lease: u64, sequence: u64) -> Result<(), Error> {
        self.write(&Entry::Grant { lease, sequence })
    }

    /// Ends `lease` (any time, expired or not): its blocks wait for a scrub. Returns the ended lease.
    pub fn release(&mut self, lease: u64) -> Result<Lease, Error> {
        let l = self.state.lease(lease).cloned().ok_or(Error::UnknownLease(lease))?;
        self.write(&Entry::Release { lease })?;
        Ok(l)
    }

    /// Ends everything that expired by `now_unix_s` (`expires <= now`): reservations free their
    /// blocks at once (never handed out, nothing to scrub), leases send theirs to be scrubbed.
    /// Writes nothing when nothing expired. The TCB calls it with its own clock before it
    /// handles each lender request.
    pub fn expire(&mut self, now_unix_s: u64) -> Result<Ended, Error> {
        let ended = self.state.expiring(now_unix_s);
        if !ended.is_empty() {
            self.write(&Entry::Expire { now_unix_s })?;
        }
        Ok(ended)
    }

    /// Ends every reservation (blocks free) and lease (blocks to scrub) of `node`: what the TCB
    /// does when the ledger revokes the node. Writes nothing when it has none.
    pub fn revoke_borrower(&mut self, node: NodeId) -> Result<Ended, Error> {
        let ended = self.state.of_borrower(&node);
        if !ended.is_empty() {
            self.write(&Entry::RevokeBorrower { node })?;
        }
        Ok(ended)
    }

    /// Ends every lease bound to a grant in `first..=last` (blocks to scrub): what the TCB does
    /// when the ledger revokes this node's grants in that range. Writes nothing when none is bound.
    pub fn revoke_grants(&mut self, first: u64, last: u64) -> Result<Ended, Error> {
        if first > last {
            return Err(Error::BadGrantRange { first, last });
        }
        let ended = self.state.of_grants(first, last);
        if !ended.is_empty() {
            self.write(&Entry::RevokeGrants { first, last })?;
        }
        Ok(ended)
    }

    /// Gives `blocks` to a VM of this node, from the same free blocks and the same way as a
    /// reservation. One allocation per VM at a time.
    pub fn allocate_local(&mut self, vm: VmId, blocks: u32) -> Result<Vec<BlockRange>, Error> {
        if blocks == 0 {
            return Err(Error::ZeroBlocks);
        }
        if self.state.local(vm).is_some() {
            return Err(Error::VmHasBlocks(vm));
        }
        let ranges = self.state.plan(blocks)?;
        self.write(&Entry::Local { vm, ranges: ranges.clone() })?;
        Ok(ranges)
    }

    /// Takes a local VM's blocks back; they wait for a scrub like a lease's.
    pub fn free_local(&mut self, vm: VmId) -> Result<Vec<BlockRange>, Error> {
        let ranges = self.state.local(vm).map(<[BlockRange]>::to_vec).ok_or(Error::UnknownVm(vm))?;
        self.write(&Entry::FreeLocal { vm })?;
        Ok(ranges)
    }

    /// The blocks waiting for a scrub, as maximal ranges, ascending: the platform's work list.
    pub fn to_scrub(&self) -> Vec<BlockRange> {
        self.state.to_scrub().collect()
    }

    /// The platform confirms it scrubbed `range` (every block of it must be waiting for a
    /// scrub; any part of a [`Lender::to_scrub`] range will do): the confirmation is journaled,
    /// then the blocks are free. Returns the number of blocks freed.
    pub fn scrubbed(&mut self, range: BlockRange) -> Result<u32, Error> {
        self.state.scrubbable(range)?;
        self.write(&Entry::Scrubbed { range })?;
        Ok(range.len)
    }

    pub fn status(&self) -> PoolStatus {
        self.state.status()
    }

    /// The answer to the wire's `LenderPoolStatus` ([`PoolStatus::to_wire`]).
    pub fn pool(&self) -> Pool {
        self.state.status().to_wire()
    }

    /// The whole state, read only: reservations, leases, local VMs, every block's state.
    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn journal_storage(&self) -> &S {
        self.journal.storage()
    }

    /// Journal records written or replayed so far.
    pub fn journal_records(&self) -> u64 {
        self.journal.records()
    }
}
