//! The Lender service between two TCB cores of one fleet: a lease is reserved and committed on
//! the lender, its token endorsed and checked by the borrower's TCB; release, expiry and ledger
//! revocations end it, and its blocks are scrubbed (really zeroed) before they are free again.

use ppn_journal::mem::MemStorage;
use ppn_lender::{BLOCK_BYTES, BlockRange};
use ppn_tcb_core::{LenderService, Scrub};
use ppn_wire::message::{LedgerRequest, LedgerResponse, LenderRequest, LenderResponse, NodeRequest, NodeResponse};
use ppn_wire::service::{
    CommitLease, Endorse, IngestOutcome, IngestRecords, Pool, Release, Released, Reserve, Revoke, RevokeTarget,
    ServiceState, Signature, Verdict, VerifyEndorsed,
};
use ppn_wire::{ErrorCode, NodeId, Request, Response};
use std::sync::{Arc, Mutex};

const NOW: u64 = 1_800_000_000;
/// Blocks in the test pools (8 x 2 MiB = 16 MiB of scrubbable memory).
const CAPACITY: u32 = 8;

mod common;
use common::{Tcb, keys};

/// The lender's "memory": bytes the scrubber really overwrites, and every range it scrubbed.
#[derive(Clone, Default)]
struct Memory {
    bytes: Arc<Mutex<Vec<u8>>>,
    scrubbed: Arc<Mutex<Vec<BlockRange>>>,
    fail: Arc<Mutex<bool>>,
}

impl Memory {
    fn new() -> Self {
        let m = Memory::default();
        *m.bytes.lock().unwrap() = vec![0xA5; (CAPACITY * BLOCK_BYTES) as usize];
        m
    }
    /// Writes a pattern into a block, as a borrower's data would be.
    fn dirty(&self, block: u32) {
        let start = (block * BLOCK_BYTES) as usize;
        self.bytes.lock().unwrap()[start..start + BLOCK_BYTES as usize].fill(0x5A);
    }
    fn block_is_zero(&self, block: u32) -> bool {
        let start = (block * BLOCK_BYTES) as usize;
        self.bytes.lock().unwrap()[start..start + BLOCK_BYTES as usize].iter().all(|&b| b == 0)
    }
}

impl Scrub for Memory {
    fn scrub(&mut self, range: BlockRange) -> Result<(), String> {
        if *self.fail.lock().unwrap() {
            return Err("scrubber unavailable".into());
        }
        let start = (range.start * BLOCK_BYTES) as usize;
        let end = ((range.start + range.len) * BLOCK_BYTES) as usize;
        self.bytes.lock().unwrap()[start..end].fill(0);
        self.scrubbed.lock().unwrap().push(range);
        Ok(())
    }
}

fn id(seed: u8) -> NodeId {
    keys(seed).node_id()
}

fn tcb(seed: u8, fleet: &[u8]) -> Tcb {
    common::tcb(seed, fleet, ppn_wire::service::Platform::Hosted)
}

fn lending(seed: u8, fleet: &[u8], memory: &Memory) -> Tcb {
    let mut t = tcb(seed, fleet);
    let (service, open) = LenderService::open(MemStorage::default(), CAPACITY, Box::new(memory.clone())).unwrap();
    assert!(open.journal.created);
    assert_eq!(open.scrubbed_blocks, u64::from(CAPACITY), "a new pool is scrubbed before first use");
    t.core = t.core.with_lender(service);
    t
}

fn ask(t: &mut Tcb, r: Request, now: u64) -> Result<Response, (ErrorCode, String)> {
    match t.core.answer(&r, 0, now) {
        Response::Error(e) => Err((e.code, e.detail.to_string())),
        other => Ok(other),
    }
}

fn lender(t: &mut Tcb, r: LenderRequest, now: u64) -> Result<LenderResponse, (ErrorCode, String)> {
    ask(t, Request::Lender(r), now).map(|r| match r {
        Response::Lender(l) => l,
        other => panic!("{other:?}"),
    })
}

fn pool(t: &mut Tcb, now: u64) -> Pool {
    match lender(t, LenderRequest::PoolStatus, now).unwrap() {
        LenderResponse::PoolStatus(p) => p,
        other => panic!("{other:?}"),
    }
}

fn reserve(t: &mut Tcb, borrower: NodeId, blocks: u32, expires: u64) -> Result<u64, (ErrorCode, String)> {
    match lender(t, LenderRequest::Reserve(Reserve { borrower, blocks, expires_unix_s: expires }), NOW)? {
        LenderResponse::Reserve(r) => {
            assert_eq!(r.blocks, blocks);
            Ok(r.reservation_id)
        }
        other => panic!("{other:?}"),
    }
}

/// Reserves and commits: (lease id, token).
fn lease(t: &mut Tcb, borrower: NodeId, blocks: u32, expires: u64) -> (u64, Vec<u8>) {
    let reservation_id = reserve(t, borrower, blocks, expires).unwrap();
    match lender(t, LenderRequest::CommitLease(CommitLease { reservation_id }), NOW).unwrap() {
        LenderResponse::CommitLease(l) => (l.lease_id, l.token.to_vec()),
        other => panic!("{other:?}"),
    }
}

fn ledger(t: &mut Tcb, r: LedgerRequest, now: u64) -> Result<LedgerResponse, (ErrorCode, String)> {
    ask(t, Request::Ledger(r), now).map(|r| match r {
        Response::Ledger(l) => l,
        other => panic!("{other:?}"),
    })
}

fn endorse(t: &mut Tcb, token: &[u8]) -> Signature {
    match ledger(t, LedgerRequest::Endorse(Endorse { token: token.try_into().unwrap() }), NOW).unwrap() {
        LedgerResponse::Endorse(e) => e.signature,
        other => panic!("{other:?}"),
    }
}

fn verify_endorsed(t: &mut Tcb, token: &[u8], signature: Signature, now: u64) -> Verdict {
    let v = VerifyEndorsed { token: token.try_into().unwrap(), signature };
    match ledger(t, LedgerRequest::VerifyEndorsed(v), now).unwrap() {
        LedgerResponse::VerifyEndorsed(v) => v.verdict,
        other => panic!("{other:?}"),
    }
}

/// Blocks of the pool in the lender's state that belong to `lease`.
fn lease_blocks(t: &Tcb, lease: u64) -> Vec<u32> {
    let l = t.core.lender().unwrap().lender().state().lease(lease).unwrap().clone();
    l.ranges.iter().flat_map(|r| r.start..r.start + r.len).collect()
}

/// Copies every record of `from` that `to` lacks into `to`, as gossip would.
fn sync(from: &mut Tcb, to: &mut Tcb) {
    let heads = to.core.ledger().heads().heads.to_vec();
    let lacking = from.core.ledger().records_lacking(&heads, 12);
    let records = IngestRecords { records: lacking.records };
    match ledger(to, LedgerRequest::IngestRecords(records), NOW).unwrap() {
        LedgerResponse::IngestRecords(i) => assert!(i.outcomes.iter().all(|o| *o == IngestOutcome::Accepted)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_lease_is_endorsed_checked_by_the_borrower_and_scrubbed_on_release() {
    let memory = Memory::new();
    let mut l = lending(1, &[1, 2], &memory);
    let mut b = tcb(2, &[1, 2]);
    match ask(&mut l, Request::Node(NodeRequest::Status), NOW).unwrap() {
        Response::Node(NodeResponse::Status(s)) => {
            assert!(s.services.iter().any(|x| x.service == 0x03 && x.state == ServiceState::Ready))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        pool(&mut l, NOW),
        Pool { block_bytes: BLOCK_BYTES, total: 8, free: 8, reserved: 0, lent: 0, in_use: 0 }
    );

    let (lease_id, token) = lease(&mut l, id(2), 3, NOW + 600);
    assert_eq!(pool(&mut l, NOW).lent, 3);
    let blocks = lease_blocks(&l, lease_id);
    assert_eq!(blocks.len(), 3);
    for &blk in &blocks {
        memory.dirty(blk);
    }

    // The borrower's TCB cannot check the lender's HMAC token, but it checks the endorsement.
    let sig = endorse(&mut l, &token);
    assert_eq!(verify_endorsed(&mut b, &token, sig, NOW), Verdict::Valid);
    let claims = ppn_ledger::TokenBytes::parse(&token).unwrap().claims();
    assert_eq!((claims.issuer, claims.grantee), (id(1), id(2)));
    assert_eq!((claims.resource_type, claims.resource_id), (ppn_wire::service::ResourceType::Memory, lease_id));
    assert_eq!(claims.expires_unix_s, NOW + 600);
    assert_eq!(verify_endorsed(&mut b, &token, sig, NOW + 600), Verdict::Expired);

    let before = memory.scrubbed.lock().unwrap().len();
    match lender(&mut l, LenderRequest::Release(Release { lease_id }), NOW).unwrap() {
        LenderResponse::Release(r) => assert_eq!(r, Released { blocks: 3, scrubbed: true }),
        other => panic!("{other:?}"),
    }
    assert!(memory.scrubbed.lock().unwrap().len() > before);
    for &blk in &blocks {
        assert!(memory.block_is_zero(blk), "block {blk} was freed unscrubbed");
    }
    assert_eq!(pool(&mut l, NOW).free, 8);
    let again = lender(&mut l, LenderRequest::Release(Release { lease_id }), NOW).unwrap_err();
    assert_eq!(again.0, ErrorCode::Rejected);
    assert!(again.1.starts_with("unknown lease"), "{}", again.1);
}

#[test]
fn refusals_name_the_reason_and_change_nothing() {
    let memory = Memory::new();
    let mut l = lending(1, &[1, 2, 4], &memory);
    let refuse = |t: &mut Tcb, borrower, blocks, expires| reserve(t, borrower, blocks, expires).unwrap_err();
    assert_eq!(refuse(&mut l, id(1), 1, NOW + 60).1, "a node does not lend to itself");
    assert_eq!(refuse(&mut l, id(3), 1, NOW + 60).1, "the borrower is not a trusted member of the fleet");
    assert_eq!(refuse(&mut l, id(2), 0, NOW + 60).1, "a reservation or local allocation needs at least one block");
    assert_eq!(refuse(&mut l, id(2), 9, NOW + 60).1, "not enough free blocks: 9 requested, 8 free");
    assert!(refuse(&mut l, id(2), 1, NOW).1.starts_with("the reservation would already be expired"));
    let e = lender(&mut l, LenderRequest::CommitLease(CommitLease { reservation_id: 77 }), NOW).unwrap_err();
    assert_eq!(e.0, ErrorCode::Rejected);
    assert!(e.1.starts_with("unknown reservation 77"), "{}", e.1);
    ledger(&mut l, LedgerRequest::Revoke(Revoke { target: RevokeTarget::Node { node: id(4) } }), NOW).unwrap();
    assert_eq!(refuse(&mut l, id(4), 1, NOW + 60).1, "the borrower has been revoked");
    assert_eq!(pool(&mut l, NOW).free, 8);
    // Without a pool the service is not there at all.
    let mut plain = tcb(2, &[1, 2]);
    let e = lender(&mut plain, LenderRequest::PoolStatus, NOW).unwrap_err();
    assert_eq!(e.0, ErrorCode::NotImplemented);
}

#[test]
fn expiry_and_revocations_end_leases_and_scrub_their_blocks() {
    let memory = Memory::new();
    let mut l = lending(1, &[1, 2, 3], &memory);
    let mut b = tcb(2, &[1, 2, 3]);

    // Expiry, seen at the next request on the TCB's clock.
    let (short, _) = lease(&mut l, id(2), 2, NOW + 10);
    let short_blocks = lease_blocks(&l, short);
    short_blocks.iter().for_each(|&blk| memory.dirty(blk));
    assert_eq!(pool(&mut l, NOW + 9).lent, 2);
    assert_eq!(pool(&mut l, NOW + 10).lent, 0);
    assert!(short_blocks.iter().all(|&blk| memory.block_is_zero(blk)));

    // The lender's own grant revoked (by sequence): its lease ends at once.
    let (by_grant, token) = lease(&mut l, id(2), 2, NOW + 600);
    let sig = endorse(&mut l, &token);
    let seq = ppn_ledger::TokenBytes::parse(&token).unwrap().claims().sequence;
    let target = RevokeTarget::Grant { issuer: id(1), sequence: seq };
    ledger(&mut l, LedgerRequest::Revoke(Revoke { target }), NOW).unwrap();
    assert!(l.core.lender().unwrap().lender().state().lease(by_grant).is_none());
    assert_eq!(pool(&mut l, NOW).lent, 0);
    sync(&mut l, &mut b);
    assert_eq!(verify_endorsed(&mut b, &token, sig, NOW), Verdict::GrantRevoked);

    // The borrower revoked by another member; the record reaches the lender by gossip.
    let (by_node, token) = lease(&mut l, id(3), 4, NOW + 600);
    let sig = endorse(&mut l, &token);
    let blocks = lease_blocks(&l, by_node);
    blocks.iter().for_each(|&blk| memory.dirty(blk));
    sync(&mut l, &mut b);
    ledger(&mut b, LedgerRequest::Revoke(Revoke { target: RevokeTarget::Node { node: id(3) } }), NOW).unwrap();
    assert_eq!(pool(&mut l, NOW).lent, 4, "the lender has not heard yet");
    sync(&mut b, &mut l);
    assert_eq!(pool(&mut l, NOW).lent, 0);
    assert!(blocks.iter().all(|&blk| memory.block_is_zero(blk)));
    assert_eq!(verify_endorsed(&mut b, &token, sig, NOW), Verdict::GranteeRevoked);
    assert_eq!(pool(&mut l, NOW).free, CAPACITY);
}

#[test]
fn a_failed_scrub_keeps_blocks_out_of_use_until_a_scrub_succeeds() {
    let memory = Memory::new();
    let mut l = lending(1, &[1, 2], &memory);
    let (lease_id, _) = lease(&mut l, id(2), 5, NOW + 600);
    *memory.fail.lock().unwrap() = true;
    match lender(&mut l, LenderRequest::Release(Release { lease_id }), NOW).unwrap() {
        LenderResponse::Release(r) => assert_eq!(r, Released { blocks: 5, scrubbed: false }),
        other => panic!("{other:?}"),
    }
    assert_eq!(l.core.lender().unwrap().scrub_error(), Some("scrubber unavailable"));
    let p = pool(&mut l, NOW);
    assert_eq!((p.free, p.in_use), (3, 5), "unscrubbed blocks are neither free nor lendable");
    assert!(reserve(&mut l, id(2), 4, NOW + 60).is_err());
    *memory.fail.lock().unwrap() = false;
    assert_eq!(pool(&mut l, NOW).free, 8);
    assert_eq!(l.core.lender().unwrap().scrub_error(), None);
}

#[test]
fn a_lease_a_crash_left_without_its_grant_is_released_at_open() {
    let memory = Memory::new();
    let storage = {
        let (mut lender, _) = ppn_lender::Lender::open(MemStorage::default(), CAPACITY).unwrap();
        for r in lender.to_scrub() {
            lender.scrubbed(r).unwrap();
        }
        let r = lender.reserve(id(2), 2, NOW + 60, NOW).unwrap();
        let bound = lender.commit(r.id, NOW).unwrap();
        lender.bind_grant(bound.id, 5).unwrap();
        let r = lender.reserve(id(2), 3, NOW + 60, NOW).unwrap();
        // The crash: committed, the grant never bound.
        lender.commit(r.id, NOW).unwrap();
        lender.journal_storage().clone()
    };
    let (service, open) = LenderService::open(storage, CAPACITY, Box::new(memory.clone())).unwrap();
    assert_eq!(open.released_unbound.len(), 1);
    assert_eq!(open.scrubbed_blocks, 3);
    let status = service.lender().status();
    assert_eq!((status.lent, status.free), (2, 6));
}
