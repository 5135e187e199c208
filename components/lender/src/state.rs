//! The pool's state and the one way it changes: `State::validate` then `State::apply` of a
//! journal [`Entry`]. Pure and deterministic: the same entries in the same order build the same
//! state, which is what replay at open relies on.

use crate::entry::{Entry, check_ranges, kind};
use crate::range::{BlockRange, Extents, total};
use crate::{BLOCK_BYTES, Error, VmId};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use ppn_wire::service::{NodeId, Pool};

/// The state of one block. Every block is in exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockState {
    /// Scrubbed and available.
    Free,
    /// Held for a borrower by a reservation (never handed out yet: nothing to scrub).
    Reserved(u64),
    /// Lent to a borrower under a lease.
    Lent(u64),
    /// In use by a VM of this node.
    Local(VmId),
    /// Released, expired or revoked, or freed by a local VM: waiting for the platform to scrub it
    /// and confirm; never handed out in this state. A new pool starts here too.
    Scrubbing,
}

/// Blocks held for a borrower until it commits or the reservation expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub id: u64,
    pub borrower: NodeId,
    /// Blocks in all of `ranges`.
    pub blocks: u32,
    /// Ascending, disjoint; at most [`crate::MAX_RANGES`].
    pub ranges: Vec<BlockRange>,
    pub expires_unix_s: u64,
}

/// Blocks lent to a borrower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: u64,
    /// The reservation it was committed from.
    pub reservation: u64,
    pub borrower: NodeId,
    pub blocks: u32,
    pub ranges: Vec<BlockRange>,
    /// The reservation's expiry.
    pub expires_unix_s: u64,
    /// The sequence number of the capability grant bound to the lease (resource type Memory,
    /// resource id = lease id), once the TCB has issued it: how a revocation of that grant in
    /// the ledger maps to this lease ([`crate::Lender::revoke_grants`]).
    pub grant_sequence: Option<u64>,
}

/// What an expiry or a revocation ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ended {
    /// Reservations ended; their blocks are free again at once (never handed out).
    pub reservations: Vec<Reservation>,
    /// Leases ended; their blocks wait for a scrub. The platform must cut the borrower's access
    /// to them before it scrubs.
    pub leases: Vec<Lease>,
}

impl Ended {
    pub fn is_empty(&self) -> bool {
        self.reservations.is_empty() && self.leases.is_empty()
    }

    /// Blocks that became free.
    pub fn freed_blocks(&self) -> u64 {
        self.reservations.iter().map(|r| r.blocks as u64).sum()
    }

    /// Blocks that now wait for a scrub.
    pub fn to_scrub_blocks(&self) -> u64 {
        self.leases.iter().map(|l| l.blocks as u64).sum()
    }
}

/// Block counts by state: they sum to `capacity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStatus {
    pub block_bytes: u32,
    pub capacity: u32,
    pub free: u32,
    pub reserved: u32,
    pub lent: u32,
    pub local: u32,
    pub scrubbing: u32,
}

impl PoolStatus {
    /// The wire's [`Pool`]. It has no scrubbing count: blocks waiting for a scrub are counted in
    /// `in_use` with the local VMs' (neither is free nor lent), so the fields still sum to `total`.
    pub fn to_wire(&self) -> Pool {
        Pool {
            block_bytes: self.block_bytes,
            total: self.capacity,
            free: self.free,
            reserved: self.reserved,
            lent: self.lent,
            in_use: self.local + self.scrubbing,
        }
    }
}

/// The pool: which block is in which state, and the ids handed out so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    capacity: u32,
    free: Extents,
    scrubbing: Extents,
    reservations: BTreeMap<u64, Reservation>,
    leases: BTreeMap<u64, Lease>,
    local: BTreeMap<VmId, Vec<BlockRange>>,
    /// Every reservation and lease id so far is below this; ids come from this one counter.
    next_id: u64,
    reserved_blocks: u64,
    lent_blocks: u64,
    local_blocks: u64,
}

impl State {
    /// A new pool of `capacity` blocks, every one waiting for a scrub: nothing says the memory
    /// is clean until the platform confirms it.
    pub(crate) fn new(capacity: u32) -> Self {
        let mut scrubbing = Extents::default();
        scrubbing.insert(BlockRange::new(0, capacity));
        Self {
            capacity,
            free: Extents::default(),
            scrubbing,
            reservations: BTreeMap::new(),
            leases: BTreeMap::new(),
            local: BTreeMap::new(),
            next_id: 1,
            reserved_blocks: 0,
            lent_blocks: 0,
            local_blocks: 0,
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The id the next reservation or lease gets.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    pub fn status(&self) -> PoolStatus {
        let c = |n: u64| n as u32; // every count is at most capacity, a u32
        PoolStatus {
            block_bytes: BLOCK_BYTES,
            capacity: self.capacity,
            free: c(self.free.blocks()),
            reserved: c(self.reserved_blocks),
            lent: c(self.lent_blocks),
            local: c(self.local_blocks),
            scrubbing: c(self.scrubbing.blocks()),
        }
    }

    pub fn reservation(&self, id: u64) -> Option<&Reservation> {
        self.reservations.get(&id)
    }

    pub fn reservations(&self) -> impl Iterator<Item = &Reservation> {
        self.reservations.values()
    }

    pub fn lease(&self, id: u64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// The live lease bound to grant `sequence`.
    pub fn lease_for_grant(&self, sequence: u64) -> Option<&Lease> {
        self.leases.values().find(|l| l.grant_sequence == Some(sequence))
    }

    /// A local VM's blocks.
    pub fn local(&self, vm: VmId) -> Option<&[BlockRange]> {
        self.local.get(&vm).map(|v| &v[..])
    }

    pub fn local_vms(&self) -> impl Iterator<Item = (VmId, &[BlockRange])> {
        self.local.iter().map(|(vm, r)| (*vm, &r[..]))
    }

    /// The free blocks, as maximal ranges, ascending.
    pub fn free_ranges(&self) -> impl Iterator<Item = BlockRange> + '_ {
        self.free.iter()
    }

    /// The blocks waiting for a scrub, as maximal ranges, ascending.
    pub fn to_scrub(&self) -> impl Iterator<Item = BlockRange> + '_ {
        self.scrubbing.iter()
    }

    /// Every block's state as ascending ranges that tile `0..capacity` (checked by
    /// [`State::check`]). Linear in the number of ranges; for status pages and tests.
    pub fn partition(&self) -> Vec<(BlockRange, BlockState)> {
        let mut out: Vec<(BlockRange, BlockState)> = Vec::new();
        out.extend(self.free.iter().map(|r| (r, BlockState::Free)));
        out.extend(self.scrubbing.iter().map(|r| (r, BlockState::Scrubbing)));
        for r in self.reservations.values() {
            out.extend(r.ranges.iter().map(|x| (*x, BlockState::Reserved(r.id))));
        }
        for l in self.leases.values() {
            out.extend(l.ranges.iter().map(|x| (*x, BlockState::Lent(l.id))));
        }
        for (vm, rs) in &self.local {
            out.extend(rs.iter().map(|x| (*x, BlockState::Local(*vm))));
        }
        out.sort_unstable_by_key(|(r, _)| (r.start, r.len));
        out
    }

    /// The state of `block`, `None` past the capacity.
    pub fn block_state(&self, block: u32) -> Option<BlockState> {
        if block >= self.capacity {
            return None;
        }
        let p = self.partition();
        let i = p.partition_point(|(r, _)| r.start <= block);
        p.get(i.checked_sub(1)?).filter(|(r, _)| r.contains(block)).map(|(_, s)| *s)
    }

    /// Checks every invariant: the states tile `0..capacity` (each block in exactly one state, in
    /// at most one reservation, lease or VM), the counts agree with the ranges, free and
    /// scrubbing sets are coalesced, ids are below `next_id`, a lease's reservation id is below
    /// its own, and no two leases share a grant.
    pub fn check(&self) -> Result<(), &'static str> {
        self.free.check()?;
        self.scrubbing.check()?;
        let mut at = 0u64;
        for (r, _) in self.partition() {
            if r.len == 0 {
                return Err("an empty range");
            }
            if r.start as u64 != at {
                return Err(if (r.start as u64) < at { "a block is in two states" } else { "a block is in no state" });
            }
            at = r.end();
        }
        if at != self.capacity as u64 {
            return Err("the states do not cover the capacity exactly");
        }
        let ranges_ok = |rs: &[BlockRange], blocks: u32| {
            !rs.is_empty() && rs.len() <= crate::MAX_RANGES && check_ranges(0, rs).is_ok() && total(rs) == blocks as u64
        };
        let mut sum = 0u64;
        for (id, r) in &self.reservations {
            if *id != r.id || r.id >= self.next_id || !ranges_ok(&r.ranges, r.blocks) {
                return Err("a reservation is inconsistent");
            }
            sum += r.blocks as u64;
        }
        if sum != self.reserved_blocks {
            return Err("reserved count is wrong");
        }
        let mut sum = 0u64;
        let mut grants = alloc::collections::BTreeSet::new();
        for (id, l) in &self.leases {
            if *id != l.id || l.id >= self.next_id || l.reservation >= l.id || !ranges_ok(&l.ranges, l.blocks) {
                return Err("a lease is inconsistent");
            }
            if let Some(g) = l.grant_sequence
                && !grants.insert(g)
            {
                return Err("two leases share a grant");
            }
            sum += l.blocks as u64;
        }
        if sum != self.lent_blocks {
            return Err("lent count is wrong");
        }
        let mut sum = 0u64;
        for rs in self.local.values() {
            if rs.is_empty() || rs.len() > crate::MAX_RANGES || check_ranges(0, rs).is_err() {
                return Err("a local VM's ranges are inconsistent");
            }
            sum += total(rs);
        }
        if sum != self.local_blocks {
            return Err("local count is wrong");
        }
        Ok(())
    }

    // ---- planning: what an operation would write (no change) ---------------------------------

    /// The ranges an allocation of `n` blocks would take ([`Extents::plan`]).
    pub(crate) fn plan(&self, n: u32) -> Result<Vec<BlockRange>, Error> {
        if n == 0 {
            return Err(Error::ZeroBlocks);
        }
        if n as u64 > self.free.blocks() {
            return Err(Error::NotEnoughFree { requested: n, free: self.free.blocks() as u32 });
        }
        self.free.plan(n)
    }

    /// What `expire(now)` would end.
    pub(crate) fn expiring(&self, now_unix_s: u64) -> Ended {
        self.ending(|expires, _, _| expires <= now_unix_s)
    }

    /// What revoking `node` would end.
    pub(crate) fn of_borrower(&self, node: &NodeId) -> Ended {
        self.ending(|_, borrower, _| borrower == node)
    }

    /// What revoking grants `first..=last` would end (leases only).
    pub(crate) fn of_grants(&self, first: u64, last: u64) -> Ended {
        self.ending(|_, _, grant| grant.is_some_and(|g| (first..=last).contains(&g)))
    }

    /// Reservations and leases matching `f(expires, borrower, grant)` (reservations have no grant).
    fn ending(&self, f: impl Fn(u64, &NodeId, Option<u64>) -> bool) -> Ended {
        Ended {
            reservations: self
                .reservations
                .values()
                .filter(|r| f(r.expires_unix_s, &r.borrower, None))
                .cloned()
                .collect(),
            leases: self
                .leases
                .values()
                .filter(|l| f(l.expires_unix_s, &l.borrower, l.grant_sequence))
                .cloned()
                .collect(),
        }
    }

    // ---- the one way state changes -----------------------------------------------------------

    /// Checks that `e` applies to this state. Everything an op planned passes; a journal entry
    /// that does not is damage (or tampering) and stops replay.
    pub(crate) fn validate(&self, e: &Entry) -> Result<(), Error> {
        match e {
            Entry::Open { .. } => Err(Error::BadEntry { kind: kind::OPEN, detail: "OPEN after the first record" }),
            Entry::Reserve { id, ranges, .. } => {
                self.fresh(*id)?;
                self.all_free(kind::RESERVE, ranges)
            }
            Entry::Commit { reservation, lease } => {
                if !self.reservations.contains_key(reservation) {
                    return Err(self.unknown_reservation(*reservation));
                }
                self.fresh(*lease)
            }
            Entry::Grant { lease, sequence } => {
                let l = self.leases.get(lease).ok_or(Error::UnknownLease(*lease))?;
                if let Some(s) = l.grant_sequence {
                    return Err(Error::GrantAlreadyBound { lease: *lease, sequence: s });
                }
                if let Some(other) = self.lease_for_grant(*sequence) {
                    return Err(Error::GrantInUse { sequence: *sequence, lease: other.id });
                }
                Ok(())
            }
            Entry::Release { lease } => self.leases.get(lease).map(|_| ()).ok_or(Error::UnknownLease(*lease)),
            Entry::Expire { .. } | Entry::RevokeBorrower { .. } => Ok(()),
            Entry::RevokeGrants { first, last } => {
                if first > last {
                    return Err(Error::BadGrantRange { first: *first, last: *last });
                }
                Ok(())
            }
            Entry::Local { vm, ranges } => {
                if self.local.contains_key(vm) {
                    return Err(Error::VmHasBlocks(*vm));
                }
                self.all_free(kind::LOCAL, ranges)
            }
            Entry::FreeLocal { vm } => self.local.get(vm).map(|_| ()).ok_or(Error::UnknownVm(*vm)),
            Entry::Scrubbed { range } => self.scrubbable(*range),
        }
    }

    /// Applies a validated entry. Never panics; an unvalidated entry may be partly ignored.
    pub(crate) fn apply(&mut self, e: &Entry) {
        match e {
            Entry::Open { .. } => {}
            Entry::Reserve { id, borrower, expires_unix_s, ranges } => {
                self.take_free(ranges);
                let blocks = total(ranges);
                self.reserved_blocks += blocks;
                self.reservations.insert(
                    *id,
                    Reservation {
                        id: *id,
                        borrower: *borrower,
                        blocks: blocks as u32,
                        ranges: ranges.clone(),
                        expires_unix_s: *expires_unix_s,
                    },
                );
                self.next_id = self.next_id.max(id.saturating_add(1));
            }
            Entry::Commit { reservation, lease } => {
                if let Some(r) = self.reservations.remove(reservation) {
                    self.reserved_blocks -= r.blocks as u64;
                    self.lent_blocks += r.blocks as u64;
                    self.leases.insert(
                        *lease,
                        Lease {
                            id: *lease,
                            reservation: r.id,
                            borrower: r.borrower,
                            blocks: r.blocks,
                            ranges: r.ranges,
                            expires_unix_s: r.expires_unix_s,
                            grant_sequence: None,
                        },
                    );
                    self.next_id = self.next_id.max(lease.saturating_add(1));
                }
            }
            Entry::Grant { lease, sequence } => {
                if let Some(l) = self.leases.get_mut(lease) {
                    l.grant_sequence = Some(*sequence);
                }
            }
            Entry::Release { lease } => self.end_lease(*lease),
            Entry::Expire { now_unix_s } => {
                let ended = self.expiring(*now_unix_s);
                self.end(&ended);
            }
            Entry::RevokeBorrower { node } => {
                let ended = self.of_borrower(node);
                self.end(&ended);
            }
            Entry::RevokeGrants { first, last } => {
                let ended = self.of_grants(*first, *last);
                self.end(&ended);
            }
            Entry::Local { vm, ranges } => {
                self.take_free(ranges);
                self.local_blocks += total(ranges);
                self.local.insert(*vm, ranges.clone());
            }
            Entry::FreeLocal { vm } => {
                if let Some(rs) = self.local.remove(vm) {
                    self.local_blocks -= total(&rs);
                    for r in rs {
                        self.scrubbing.insert(r);
                    }
                }
            }
            Entry::Scrubbed { range } => {
                if self.scrubbing.remove(*range) {
                    self.free.insert(*range);
                }
            }
        }
    }

    fn fresh(&self, id: u64) -> Result<(), Error> {
        if id < self.next_id || id == u64::MAX {
            return Err(Error::IdNotFresh { id, next: self.next_id });
        }
        Ok(())
    }

    fn unknown_reservation(&self, id: u64) -> Error {
        match self.leases.values().find(|l| l.reservation == id) {
            Some(l) => Error::AlreadyCommitted { reservation: id, lease: l.id },
            None => Error::UnknownReservation(id),
        }
    }

    /// An error for `commit(reservation)` when there is no such live reservation.
    pub(crate) fn commit_refusal(&self, reservation: u64) -> Option<Error> {
        (!self.reservations.contains_key(&reservation)).then(|| self.unknown_reservation(reservation))
    }

    fn all_free(&self, kind: u8, ranges: &[BlockRange]) -> Result<(), Error> {
        if ranges.is_empty() {
            return Err(Error::BadEntry { kind, detail: "no ranges" });
        }
        if ranges.len() > crate::MAX_RANGES {
            return Err(Error::BadEntry { kind, detail: "more ranges than MAX_RANGES" });
        }
        check_ranges(kind, ranges)?;
        for r in ranges {
            self.in_pool(*r)?;
            if !self.free.covers(r) {
                return Err(Error::NotFree { start: r.start, len: r.len });
            }
        }
        Ok(())
    }

    fn in_pool(&self, r: BlockRange) -> Result<(), Error> {
        if r.end() > self.capacity as u64 {
            return Err(Error::OutOfRange { start: r.start, len: r.len, capacity: self.capacity });
        }
        Ok(())
    }

    /// Whether `scrubbed(range)` applies: non-empty, in the pool, every block waiting for a scrub.
    pub(crate) fn scrubbable(&self, range: BlockRange) -> Result<(), Error> {
        if range.len == 0 {
            return Err(Error::EmptyRange);
        }
        self.in_pool(range)?;
        if !self.scrubbing.covers(&range) {
            return Err(Error::NotScrubbing { start: range.start, len: range.len });
        }
        Ok(())
    }

    fn take_free(&mut self, ranges: &[BlockRange]) {
        for r in ranges {
            self.free.remove(*r);
        }
    }

    fn end_lease(&mut self, id: u64) {
        if let Some(l) = self.leases.remove(&id) {
            self.lent_blocks -= l.blocks as u64;
            for r in l.ranges {
                self.scrubbing.insert(r);
            }
        }
    }

    fn end(&mut self, ended: &Ended) {
        for r in &ended.reservations {
            if let Some(r) = self.reservations.remove(&r.id) {
                self.reserved_blocks -= r.blocks as u64;
                for x in r.ranges {
                    self.free.insert(x);
                }
            }
        }
        for l in &ended.leases {
            self.end_lease(l.id);
        }
    }
}
