//! The Lender service: the lender core (`ppn-lender`) behind the wire protocol, tied to the
//! ledger for its tokens and revocations, and to the platform for scrubbing (docs/lender.md §8).
//!
//! The ledger is reached through [`LedgerPort`], so the same service runs next to the ledger in
//! one process (the hosted TCB) or as its own protection domain that asks the ledger PD.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use ppn_journal::Storage;
use ppn_lender::{BlockRange, Ended, Lender, OpenReport};
use ppn_wire::message::{LenderRequest, LenderResponse};
use ppn_wire::service::{CommitLease, Grant, Lease, Pool, Release, Released, Reservation, Reserve};
use ppn_wire::{ErrorCode, NodeId};

/// A refused lender request: the wire error code and a detail for the operator.
pub type Refused = (ErrorCode, String);

/// What the lender needs from the ledger.
pub trait LedgerPort {
    /// This node's id.
    fn node_id(&self) -> NodeId;
    /// True when `node` may borrow: a trusted member (a root, or validly admitted) that is not
    /// revoked.
    fn borrower_trusted(&self, node: &NodeId) -> bool;
    /// True when the ledger has revoked `node`.
    fn node_revoked(&self, node: &NodeId) -> bool;
    /// True when the ledger has revoked this node's grant `sequence`.
    fn own_grant_revoked(&self, sequence: u64) -> bool;
    /// Issues the capability token of a lease: resource type Memory, resource id = `lease`.
    fn issue_lease_grant(
        &mut self,
        borrower: NodeId,
        lease: u64,
        expires_unix_s: u64,
        now_unix_s: u64,
    ) -> Result<Grant, Refused>;
}

impl<S: Storage> LedgerPort for ppn_ledger::Ledger<S> {
    fn node_id(&self) -> NodeId {
        ppn_ledger::Ledger::node_id(self)
    }
    fn borrower_trusted(&self, node: &NodeId) -> bool {
        self.is_trusted(node)
    }
    fn node_revoked(&self, node: &NodeId) -> bool {
        self.revocations().node_revoked(node)
    }
    fn own_grant_revoked(&self, sequence: u64) -> bool {
        self.revocations().grant_revoked(&ppn_ledger::Ledger::node_id(self), sequence)
    }
    fn issue_lease_grant(
        &mut self,
        borrower: NodeId,
        lease: u64,
        expires_unix_s: u64,
        now_unix_s: u64,
    ) -> Result<Grant, Refused> {
        let g = ppn_wire::service::IssueGrant {
            grantee: borrower,
            resource_type: ppn_wire::service::ResourceType::Memory,
            resource_id: lease,
            expires_unix_s,
        };
        self.issue(&g, now_unix_s).map_err(|r| (r.code, String::from(r.detail)))
    }
}

/// The platform's side of scrubbing: it owns the pool's memory, the core never touches it.
pub trait Scrub: Send {
    /// Overwrites every byte of the blocks of `range` (block size [`ppn_lender::BLOCK_BYTES`])
    /// with zeros, durably, before it returns `Ok`.
    fn scrub(&mut self, range: BlockRange) -> Result<(), String>;
}

/// The lender service of one TCB.
pub struct LenderService<S: Storage> {
    lender: Lender<S>,
    scrub: alloc::boxed::Box<dyn Scrub>,
    /// Blocks scrubbed (and the scrub journaled) since start.
    scrubbed_blocks: u64,
    /// The last scrub failure, kept for status; blocks stay in "scrubbing" until a scrub works.
    scrub_error: Option<String>,
}

impl<S: Storage> core::fmt::Debug for LenderService<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LenderService")
            .field("status", &self.lender.status())
            .field("scrubbed_blocks", &self.scrubbed_blocks)
            .field("scrub_error", &self.scrub_error)
            .finish_non_exhaustive()
    }
}

/// What opening the lender did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LenderOpen {
    pub journal: OpenReport,
    /// Leases a crash left without a grant (their token was never answered): released.
    pub released_unbound: Vec<u64>,
    /// Blocks scrubbed at open (a new pool's blocks, and those a crash left waiting).
    pub scrubbed_blocks: u64,
}

/// The error frame cuts the detail to 128 bytes (`ErrorBody::new`).
fn refused(e: &ppn_lender::Error) -> Refused {
    (e.code(), format!("{e}"))
}

impl<S: Storage> LenderService<S> {
    /// Opens the pool of `capacity` blocks on `storage`, releases leases a crash left without a
    /// grant, and scrubs what waits for a scrub. A scrub failure is not fatal: the blocks stay
    /// out of use and the next request tries again.
    pub fn open(
        storage: S,
        capacity: u32,
        scrub: alloc::boxed::Box<dyn Scrub>,
    ) -> Result<(Self, LenderOpen), ppn_lender::Error> {
        let (lender, journal) = Lender::open(storage, capacity)?;
        let mut service = Self { lender, scrub, scrubbed_blocks: 0, scrub_error: None };
        let unbound: Vec<u64> =
            service.lender.state().leases().filter(|l| l.grant_sequence.is_none()).map(|l| l.id).collect();
        for &id in &unbound {
            service.lender.release(id)?;
        }
        service.scrub_pending();
        let scrubbed_blocks = service.scrubbed_blocks;
        Ok((service, LenderOpen { journal, released_unbound: unbound, scrubbed_blocks }))
    }

    pub fn lender(&self) -> &Lender<S> {
        &self.lender
    }

    pub fn scrubbed_blocks(&self) -> u64 {
        self.scrubbed_blocks
    }

    pub fn scrub_error(&self) -> Option<&str> {
        self.scrub_error.as_deref()
    }

    /// Scrubs every block waiting for a scrub and journals each confirmation. Returns true when
    /// nothing is left waiting.
    fn scrub_pending(&mut self) -> bool {
        for range in self.lender.to_scrub() {
            if let Err(e) = self.scrub.scrub(range) {
                self.scrub_error = Some(e);
                return false;
            }
            match self.lender.scrubbed(range) {
                Ok(n) => self.scrubbed_blocks += u64::from(n),
                Err(e) => {
                    self.scrub_error = Some(format!("{e}"));
                    return false;
                }
            }
        }
        self.scrub_error = None;
        true
    }

    /// Brings the pool up to date with the clock and the ledger: ends what expired, ends the
    /// reservations and leases of revoked borrowers and of revoked grants, then scrubs. The
    /// TCB calls it before every lender request and after every ledger change.
    pub fn sync(&mut self, ledger: &impl LedgerPort, now_unix_s: u64) -> Result<Ended, Refused> {
        let mut ended = self.lender.expire(now_unix_s).map_err(|e| refused(&e))?;
        let state = self.lender.state();
        let mut revoked: Vec<NodeId> = state
            .reservations()
            .map(|r| r.borrower)
            .chain(state.leases().map(|l| l.borrower))
            .filter(|b| ledger.node_revoked(b))
            .collect();
        revoked.sort_unstable();
        revoked.dedup();
        let grants: Vec<u64> =
            state.leases().filter_map(|l| l.grant_sequence).filter(|&s| ledger.own_grant_revoked(s)).collect();
        for node in revoked {
            let e = self.lender.revoke_borrower(node).map_err(|e| refused(&e))?;
            merge(&mut ended, e);
        }
        for s in grants {
            let e = self.lender.revoke_grants(s, s).map_err(|e| refused(&e))?;
            merge(&mut ended, e);
        }
        self.scrub_pending();
        Ok(ended)
    }

    /// Answers one lender request (after [`LenderService::sync`]).
    pub fn handle(
        &mut self,
        req: &LenderRequest,
        ledger: &mut impl LedgerPort,
        now_unix_s: u64,
    ) -> Result<LenderResponse, Refused> {
        self.sync(ledger, now_unix_s)?;
        Ok(match req {
            LenderRequest::PoolStatus => LenderResponse::PoolStatus(self.pool()),
            LenderRequest::Reserve(r) => LenderResponse::Reserve(self.reserve(r, ledger, now_unix_s)?),
            LenderRequest::CommitLease(c) => LenderResponse::CommitLease(self.commit(c, ledger, now_unix_s)?),
            LenderRequest::Release(r) => LenderResponse::Release(self.release(r)?),
        })
    }

    /// The wire's pool: `in_use` counts local VMs' blocks and blocks waiting for a scrub (the
    /// wire has no scrubbing count), so the fields sum to `total`.
    pub fn pool(&self) -> Pool {
        self.lender.pool()
    }

    fn reserve(&mut self, r: &Reserve, ledger: &impl LedgerPort, now_unix_s: u64) -> Result<Reservation, Refused> {
        if r.borrower == ledger.node_id() {
            return Err((ErrorCode::Rejected, String::from("a node does not lend to itself")));
        }
        if ledger.node_revoked(&r.borrower) {
            return Err((ErrorCode::Rejected, String::from("the borrower has been revoked")));
        }
        if !ledger.borrower_trusted(&r.borrower) {
            return Err((ErrorCode::Rejected, String::from("the borrower is not a trusted member of the fleet")));
        }
        let res = self.lender.reserve(r.borrower, r.blocks, r.expires_unix_s, now_unix_s).map_err(|e| refused(&e))?;
        Ok(Reservation { reservation_id: res.id, blocks: res.blocks })
    }

    fn commit(&mut self, c: &CommitLease, ledger: &mut impl LedgerPort, now_unix_s: u64) -> Result<Lease, Refused> {
        let lease = self.lender.commit(c.reservation_id, now_unix_s).map_err(|e| refused(&e))?;
        let grant = match ledger.issue_lease_grant(lease.borrower, lease.id, lease.expires_unix_s, now_unix_s) {
            Ok(g) => g,
            Err(refusal) => {
                self.abandon(lease.id);
                return Err(refusal);
            }
        };
        if let Err(e) = self.lender.bind_grant(lease.id, grant.sequence) {
            self.abandon(lease.id);
            return Err(refused(&e));
        }
        Ok(Lease { lease_id: lease.id, token: grant.token })
    }

    /// Ends a lease whose token nobody got. If even that fails (storage), the lease is released
    /// at the next open (it has no grant).
    fn abandon(&mut self, lease: u64) {
        if self.lender.release(lease).is_ok() {
            self.scrub_pending();
        }
    }

    fn release(&mut self, r: &Release) -> Result<Released, Refused> {
        let lease = self.lender.release(r.lease_id).map_err(|e| refused(&e))?;
        let blocks = lease.blocks;
        let scrubbed = self.scrub_pending();
        Ok(Released { blocks, scrubbed })
    }
}

fn merge(into: &mut Ended, from: Ended) {
    into.reservations.extend(from.reservations);
    into.leases.extend(from.leases);
}
