//! The lender through its public API: the lifecycle, allocation, scrubbing, persistence, and one
//! test per error.

use ppn_journal::Storage;
use ppn_journal::mem::MemStorage;
use ppn_lender::entry::{Entry, kind};
use ppn_lender::{BLOCK_BYTES, BlockRange, BlockState, Error, Lender, MAX_RANGES, PoolStatus};
use ppn_wire::service::{NodeId, Pool};
use ppn_wire::{ByteArray, ErrorCode};
use std::cell::Cell;
use std::rc::Rc;

const NOW: u64 = 1_700_000_000;

fn node(n: u8) -> NodeId {
    NodeId(ByteArray([n; 8]))
}

fn r(start: u32, len: u32) -> BlockRange {
    BlockRange::new(start, len)
}

/// A new pool of `cap` blocks with every block scrubbed and free.
fn pool(cap: u32) -> Lender<MemStorage> {
    let (mut l, report) = Lender::open(MemStorage::default(), cap).unwrap();
    assert!(report.created);
    for range in l.to_scrub() {
        l.scrubbed(range).unwrap();
    }
    assert_eq!(l.status().free, cap);
    l
}

/// A reservation committed at once.
fn lease(l: &mut Lender<MemStorage>, borrower: NodeId, blocks: u32, expires_unix_s: u64) -> ppn_lender::Lease {
    let res = l.reserve(borrower, blocks, expires_unix_s, NOW).unwrap();
    l.commit(res.id, NOW).unwrap()
}

fn reopen(l: &Lender<MemStorage>) -> Lender<MemStorage> {
    let (again, report) = Lender::open(l.journal_storage().clone(), l.state().capacity()).unwrap();
    assert!(!report.created);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(again.state(), l.state(), "replay must rebuild the exact state");
    again
}

/// Journal bytes holding `entries` as records.
fn journal(entries: &[(u8, Vec<u8>)]) -> MemStorage {
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; ppn_journal::MAX_RECORD];
    for (k, p) in entries {
        let n = ppn_journal::encode_record(*k, p, &mut buf).unwrap();
        bytes.extend_from_slice(&buf[..n]);
    }
    MemStorage { bytes }
}

fn enc(e: &Entry) -> (u8, Vec<u8>) {
    let mut p = Vec::new();
    e.encode(&mut p);
    (e.kind(), p)
}

fn open_entry(cap: u32) -> (u8, Vec<u8>) {
    enc(&Entry::Open { capacity: cap, block_bytes: BLOCK_BYTES })
}

/// Opening `entries` fails at record `record` with `inner`.
fn replay_fails(entries: &[(u8, Vec<u8>)], cap: u32, record: u64, inner: Error) {
    let err = Lender::open(journal(entries), cap).unwrap_err();
    assert_eq!(err, Error::Replay { record, source: Box::new(inner) });
    assert_eq!(err.code(), ErrorCode::Internal);
}

// ---- lifecycle ----------------------------------------------------------------------------------

#[test]
fn a_new_pool_waits_for_a_scrub_before_anything_is_free() {
    let (mut l, report) = Lender::open(MemStorage::default(), 8).unwrap();
    assert_eq!((report.created, report.records), (true, 0));
    assert_eq!(l.status(), PoolStatus { block_bytes: BLOCK_BYTES, capacity: 8, scrubbing: 8, ..PoolStatus::default() });
    assert_eq!(l.to_scrub(), [r(0, 8)]);
    assert_eq!(l.reserve(node(1), 1, NOW + 60, NOW), Err(Error::NotEnoughFree { requested: 1, free: 0 }));
    // Part of a scrub range is confirmed, then the rest.
    assert_eq!(l.scrubbed(r(2, 3)), Ok(3));
    assert_eq!(l.to_scrub(), [r(0, 2), r(5, 3)]);
    assert_eq!(l.state().free_ranges().collect::<Vec<_>>(), [r(2, 3)]);
    let l = reopen(&l);
    assert_eq!(l.status().free, 3);
    assert_eq!(l.journal_records(), 2, "OPEN and one SCRUBBED");
}

#[test]
fn reserve_commit_bind_release_scrub() {
    let mut l = pool(16);
    let res = l.reserve(node(1), 4, NOW + 60, NOW).unwrap();
    assert_eq!((res.borrower, res.blocks, res.expires_unix_s), (node(1), 4, NOW + 60));
    assert_eq!(res.ranges, [r(0, 4)]);
    assert_eq!(l.state().block_state(3), Some(BlockState::Reserved(res.id)));
    assert_eq!(
        l.pool(),
        Pool { block_bytes: BLOCK_BYTES, total: 16, free: 12, reserved: 4, lent: 0, in_use: 0 },
        "the wire's Pool"
    );

    let lease = l.commit(res.id, NOW + 1).unwrap();
    assert!(lease.id > res.id);
    assert_eq!((lease.reservation, lease.borrower, lease.blocks), (res.id, node(1), 4));
    assert_eq!((lease.ranges.clone(), lease.expires_unix_s, lease.grant_sequence), (res.ranges, NOW + 60, None));
    assert!(l.state().reservation(res.id).is_none());
    assert_eq!(l.state().block_state(0), Some(BlockState::Lent(lease.id)));
    assert_eq!(l.status().lent, 4);

    l.bind_grant(lease.id, 77).unwrap();
    assert_eq!(l.state().lease(lease.id).unwrap().grant_sequence, Some(77));
    assert_eq!(l.state().lease_for_grant(77).unwrap().id, lease.id);
    let mut l = reopen(&l);

    let ended = l.release(lease.id).unwrap();
    assert_eq!((ended.id, ended.grant_sequence), (lease.id, Some(77)));
    assert_eq!(l.to_scrub(), [r(0, 4)]);
    assert_eq!(l.state().block_state(0), Some(BlockState::Scrubbing));
    let s = l.status();
    assert_eq!((s.free, s.lent, s.scrubbing), (12, 0, 4));
    assert_eq!(l.pool().in_use, 4, "scrubbing counts as in use on the wire");
    // Released blocks are not handed out again before their scrub: all 12 free ones go first.
    let all = l.reserve(node(2), 12, NOW + 60, NOW).unwrap();
    assert_eq!(all.ranges, [r(4, 12)]);
    assert_eq!(l.reserve(node(2), 1, NOW + 60, NOW), Err(Error::NotEnoughFree { requested: 1, free: 0 }));
    assert_eq!(l.scrubbed(r(0, 4)), Ok(4));
    assert_eq!(l.reserve(node(2), 4, NOW + 60, NOW).unwrap().ranges, [r(0, 4)]);
    let l = reopen(&l);
    l.state().check().unwrap();
}

#[test]
fn allocation_is_best_fit_and_contiguous_when_it_can_be() {
    let mut l = pool(32);
    // Carve holes of 3 (blocks 0..3), 5 (8..13) and 2 (20..22) into the free space.
    let a = l.reserve(node(1), 3, NOW + 10, NOW).unwrap(); // 0..3
    let b = l.reserve(node(1), 5, NOW + 99, NOW).unwrap(); // 3..8
    let c = l.reserve(node(1), 5, NOW + 10, NOW).unwrap(); // 8..13
    let d = l.reserve(node(1), 7, NOW + 99, NOW).unwrap(); // 13..20
    let e = l.reserve(node(1), 2, NOW + 10, NOW).unwrap(); // 20..22
    let f = l.reserve(node(1), 10, NOW + 99, NOW).unwrap(); // 22..32
    assert_eq!([&a, &b, &c, &d, &e, &f].map(|x| x.ranges[0].start), [0, 3, 8, 13, 20, 22]);
    let ended = l.expire(NOW + 10).unwrap();
    assert_eq!(ended.reservations.iter().map(|x| x.id).collect::<Vec<_>>(), [a.id, c.id, e.id]);
    assert!(ended.leases.is_empty());
    assert_eq!(l.status().scrubbing, 0, "an expired reservation frees its blocks at once");
    // 2 fits the hole of 2 exactly; 4 the hole of 5, not the hole of 3.
    assert_eq!(l.reserve(node(2), 2, NOW + 60, NOW).unwrap().ranges, [r(20, 2)]);
    assert_eq!(l.reserve(node(2), 4, NOW + 60, NOW).unwrap().ranges, [r(8, 4)]);
    // 4 more: no hole holds it; the largest (3) whole, then the rest best fit (1 of the hole of 1).
    assert_eq!(l.reserve(node(2), 4, NOW + 60, NOW).unwrap().ranges, [r(0, 3), r(12, 1)]);
    reopen(&l).state().check().unwrap();
}

#[test]
fn expiry_frees_reservations_and_scrubs_leases() {
    let mut l = pool(10);
    let res = l.reserve(node(1), 2, NOW + 5, NOW).unwrap();
    let leased = l.reserve(node(2), 3, NOW + 5, NOW).unwrap();
    let lease = l.commit(leased.id, NOW).unwrap();
    let later = l.reserve(node(3), 1, NOW + 50, NOW).unwrap();
    let before = l.journal_records();
    assert!(l.expire(NOW + 4).unwrap().is_empty());
    assert_eq!(l.journal_records(), before, "nothing expired, nothing written");
    let ended = l.expire(NOW + 5).unwrap();
    assert_eq!(ended.reservations, std::slice::from_ref(&res));
    assert_eq!(ended.leases.iter().map(|x| x.id).collect::<Vec<_>>(), [lease.id]);
    assert_eq!((ended.freed_blocks(), ended.to_scrub_blocks()), (2, 3));
    let s = l.status();
    assert_eq!((s.free, s.reserved, s.lent, s.scrubbing), (6, 1, 0, 3));
    assert!(l.state().reservation(later.id).is_some());
    let l = reopen(&l);
    assert_eq!(l.to_scrub(), lease.ranges);
}

#[test]
fn revoking_a_borrower_ends_its_leases_and_reservations_only() {
    let mut l = pool(12);
    let r1 = l.reserve(node(1), 2, NOW + 60, NOW).unwrap();
    let r2 = l.reserve(node(1), 3, NOW + 60, NOW).unwrap();
    let lease1 = l.commit(r2.id, NOW).unwrap();
    let r3 = l.reserve(node(2), 4, NOW + 60, NOW).unwrap();
    let lease2 = l.commit(r3.id, NOW).unwrap();
    let ended = l.revoke_borrower(node(1)).unwrap();
    assert_eq!(ended.reservations.iter().map(|x| x.id).collect::<Vec<_>>(), [r1.id]);
    assert_eq!(ended.leases.iter().map(|x| x.id).collect::<Vec<_>>(), [lease1.id]);
    let s = l.status();
    assert_eq!((s.free, s.reserved, s.lent, s.scrubbing), (5, 0, 4, 3));
    assert!(l.state().lease(lease2.id).is_some());
    let before = l.journal_records();
    assert!(l.revoke_borrower(node(1)).unwrap().is_empty());
    assert_eq!(l.journal_records(), before);
    reopen(&l);
}

#[test]
fn revoking_grants_ends_the_leases_bound_to_them() {
    let mut l = pool(12);
    let mut leases = Vec::new();
    for (i, seq) in [(1u8, 10u64), (2, 11), (3, 20)] {
        let res = l.reserve(node(i), 2, NOW + 60, NOW).unwrap();
        let lease = l.commit(res.id, NOW).unwrap();
        l.bind_grant(lease.id, seq).unwrap();
        leases.push(lease.id);
    }
    let unbound = lease(&mut l, node(4), 1, NOW + 60);
    let ended = l.revoke_grants(10, 19).unwrap();
    assert_eq!(ended.leases.iter().map(|x| x.id).collect::<Vec<_>>(), leases[..2]);
    assert!(ended.reservations.is_empty());
    assert!(l.state().lease(leases[2]).is_some() && l.state().lease(unbound.id).is_some());
    assert!(l.revoke_grants(0, 9).unwrap().is_empty());
    assert_eq!(l.status().scrubbing, 4);
    reopen(&l);
}

#[test]
fn local_vms_take_free_blocks_and_give_them_back_for_scrubbing() {
    let mut l = pool(8);
    assert_eq!(l.allocate_local(7, 3).unwrap(), [r(0, 3)]);
    assert_eq!(l.state().local(7), Some(&[r(0, 3)][..]));
    assert_eq!(l.state().block_state(2), Some(BlockState::Local(7)));
    assert_eq!(l.status().local, 3);
    assert_eq!(l.pool().in_use, 3);
    let mut l = reopen(&l);
    assert_eq!(l.free_local(7).unwrap(), [r(0, 3)]);
    assert_eq!(l.state().local(7), None);
    assert_eq!((l.status().local, l.status().scrubbing), (0, 3));
    assert_eq!(l.allocate_local(8, 5).unwrap(), [r(3, 5)], "not the blocks waiting for a scrub");
    reopen(&l);
}

#[test]
fn ids_are_never_reused_across_reopens() {
    let mut l = pool(4);
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..5u64 {
        let res = l.reserve(node(1), 1, NOW + 60, NOW).unwrap();
        let lease = l.commit(res.id, NOW).unwrap();
        assert!(seen.insert(res.id) && seen.insert(lease.id), "round {round}: an id repeated");
        l.release(lease.id).unwrap();
        for range in l.to_scrub() {
            l.scrubbed(range).unwrap();
        }
        // Ids come back from the journal: numbering continues after every id issued.
        l = reopen(&l);
    }
    assert_eq!(l.state().next_id(), seen.iter().max().unwrap() + 1);
}

/// Acknowledged = the call returned. A crash leaves any prefix of the journal: reopening gives
/// exactly the state after the last op whose record is whole in that prefix.
#[test]
fn truncation_at_every_byte_keeps_every_acknowledged_op() {
    let (mut l, _) = Lender::open(MemStorage::default(), 6).unwrap();
    let mut states = vec![(l.journal_storage().bytes.len(), l.state().clone())];
    let mut step = |l: &mut Lender<MemStorage>| states.push((l.journal_storage().bytes.len(), l.state().clone()));
    l.scrubbed(r(0, 6)).unwrap();
    step(&mut l);
    let res = l.reserve(node(1), 2, NOW + 9, NOW).unwrap();
    step(&mut l);
    let lease = l.commit(res.id, NOW).unwrap();
    step(&mut l);
    l.bind_grant(lease.id, 5).unwrap();
    step(&mut l);
    l.allocate_local(3, 2).unwrap();
    step(&mut l);
    l.reserve(node(2), 1, NOW + 1, NOW).unwrap();
    step(&mut l);
    l.expire(NOW + 1).unwrap();
    step(&mut l);
    l.release(lease.id).unwrap();
    step(&mut l);
    l.free_local(3).unwrap();
    step(&mut l);
    l.scrubbed(r(0, 2)).unwrap();
    step(&mut l);
    l.revoke_borrower(node(1)).unwrap();
    l.revoke_grants(0, 9).unwrap();
    let full = l.journal_storage().bytes.clone();
    let fresh = Lender::open(MemStorage::default(), 6).unwrap().0.state().clone();
    for cut in 0..=full.len() {
        let (l2, report) = Lender::open(MemStorage { bytes: full[..cut].to_vec() }, 6).unwrap();
        let want = states.iter().rev().find(|(len, _)| *len <= cut).map_or(&fresh, |(_, s)| s);
        assert_eq!(l2.state(), want, "cut at {cut}");
        let kept = states.iter().rev().find(|(len, _)| *len <= cut).map_or(0, |(len, _)| *len);
        if cut >= states[0].0 {
            assert_eq!(report.truncated_bytes as usize, cut - kept, "cut at {cut}");
        }
    }
}

// ---- one test per error ------------------------------------------------------------------------

#[test]
fn not_enough_free_says_how_many_are_free() {
    let mut l = pool(5);
    l.reserve(node(1), 2, NOW + 60, NOW).unwrap();
    let e = l.reserve(node(1), 4, NOW + 60, NOW).unwrap_err();
    assert_eq!(e, Error::NotEnoughFree { requested: 4, free: 3 });
    assert_eq!(e.to_string(), "not enough free blocks: 4 requested, 3 free");
    assert_eq!(e.code(), ErrorCode::Rejected);
    assert_eq!(l.allocate_local(1, 4), Err(Error::NotEnoughFree { requested: 4, free: 3 }));
}

#[test]
fn zero_blocks_is_refused() {
    let mut l = pool(5);
    assert_eq!(l.reserve(node(1), 0, NOW + 60, NOW), Err(Error::ZeroBlocks));
    assert_eq!(l.allocate_local(1, 0), Err(Error::ZeroBlocks));
    assert_eq!(Error::ZeroBlocks.to_string(), "a reservation or local allocation needs at least one block");
}

#[test]
fn too_fragmented_free_space_is_refused() {
    let cap = 2 * (MAX_RANGES as u32 + 1);
    let mut l = pool(cap);
    // Every other block held by a reservation that expires: MAX_RANGES + 1 holes of one block.
    for i in 0..cap {
        l.reserve(node(1), 1, if i % 2 == 0 { NOW + 1 } else { NOW + 99 }, NOW).unwrap();
    }
    l.expire(NOW + 1).unwrap();
    assert_eq!(l.status().free, MAX_RANGES as u32 + 1);
    let e = l.reserve(node(2), MAX_RANGES as u32 + 1, NOW + 60, NOW).unwrap_err();
    assert_eq!(e, Error::TooFragmented { requested: MAX_RANGES as u32 + 1 });
    assert_eq!(e.to_string(), "the free blocks are too fragmented: 1025 blocks would take more than 1024 ranges");
    // Exactly MAX_RANGES ranges is allowed, and survives the journal.
    let res = l.reserve(node(2), MAX_RANGES as u32, NOW + 60, NOW).unwrap();
    assert_eq!(res.ranges.len(), MAX_RANGES);
    reopen(&l);
}

#[test]
fn an_expiry_in_the_past_is_refused() {
    let mut l = pool(5);
    let e = l.reserve(node(1), 1, NOW, NOW).unwrap_err();
    assert_eq!(e, Error::AlreadyExpired { expires_unix_s: NOW, now_unix_s: NOW });
    assert_eq!(e.to_string(), format!("the reservation would already be expired (expires {NOW}, now {NOW})"));
}

#[test]
fn committing_an_expired_reservation_is_refused_and_changes_nothing() {
    let mut l = pool(5);
    let res = l.reserve(node(1), 1, NOW + 5, NOW).unwrap();
    let before = l.state().clone();
    let e = l.commit(res.id, NOW + 5).unwrap_err();
    assert_eq!(e, Error::ReservationExpired { reservation: res.id, expires_unix_s: NOW + 5, now_unix_s: NOW + 5 });
    assert_eq!(e.to_string(), format!("reservation {} expired at {} (now {})", res.id, NOW + 5, NOW + 5));
    assert_eq!(l.state(), &before);
}

#[test]
fn unknown_reservation_is_refused() {
    let mut l = pool(5);
    assert_eq!(l.commit(42, NOW), Err(Error::UnknownReservation(42)));
    let res = l.reserve(node(1), 1, NOW + 5, NOW).unwrap();
    l.expire(NOW + 5).unwrap();
    assert_eq!(l.commit(res.id, NOW), Err(Error::UnknownReservation(res.id)), "expired");
    assert!(Error::UnknownReservation(42).to_string().starts_with("unknown reservation 42"));
}

#[test]
fn committing_twice_is_refused() {
    let mut l = pool(5);
    let res = l.reserve(node(1), 1, NOW + 5, NOW).unwrap();
    let lease = l.commit(res.id, NOW).unwrap();
    let e = l.commit(res.id, NOW).unwrap_err();
    assert_eq!(e, Error::AlreadyCommitted { reservation: res.id, lease: lease.id });
    assert_eq!(e.to_string(), format!("reservation {} is already committed as lease {}", res.id, lease.id));
}

#[test]
fn unknown_lease_is_refused() {
    let mut l = pool(5);
    assert_eq!(l.release(9), Err(Error::UnknownLease(9)));
    assert_eq!(l.bind_grant(9, 1), Err(Error::UnknownLease(9)));
    let lease = lease(&mut l, node(1), 1, NOW + 5);
    l.release(lease.id).unwrap();
    assert_eq!(l.release(lease.id), Err(Error::UnknownLease(lease.id)), "released twice");
    assert!(Error::UnknownLease(9).to_string().starts_with("unknown lease 9"));
}

#[test]
fn a_grant_binds_once_and_to_one_lease() {
    let mut l = pool(5);
    let a = lease(&mut l, node(1), 1, NOW + 5);
    let b = lease(&mut l, node(1), 1, NOW + 5);
    l.bind_grant(a.id, 3).unwrap();
    let e = l.bind_grant(a.id, 4).unwrap_err();
    assert_eq!(e, Error::GrantAlreadyBound { lease: a.id, sequence: 3 });
    assert_eq!(e.to_string(), format!("lease {} is already bound to grant 3", a.id));
    let e = l.bind_grant(b.id, 3).unwrap_err();
    assert_eq!(e, Error::GrantInUse { sequence: 3, lease: a.id });
    assert_eq!(e.to_string(), format!("grant 3 is already bound to lease {}", a.id));
}

#[test]
fn an_empty_grant_range_is_refused() {
    let mut l = pool(5);
    let e = l.revoke_grants(5, 4).unwrap_err();
    assert_eq!(e, Error::BadGrantRange { first: 5, last: 4 });
    assert_eq!(e.to_string(), "grant range 5..=4 is empty (first > last)");
}

#[test]
fn a_vm_gets_one_allocation_and_must_exist_to_free() {
    let mut l = pool(5);
    l.allocate_local(1, 1).unwrap();
    assert_eq!(l.allocate_local(1, 1), Err(Error::VmHasBlocks(1)));
    assert_eq!(Error::VmHasBlocks(1).to_string(), "VM 1 already has local blocks; free them first");
    assert_eq!(l.free_local(2), Err(Error::UnknownVm(2)));
    assert_eq!(Error::UnknownVm(2).to_string(), "VM 2 has no local blocks");
}

#[test]
fn scrub_confirmations_must_name_blocks_waiting_for_a_scrub() {
    let (mut l, _) = Lender::open(MemStorage::default(), 8).unwrap();
    assert_eq!(l.scrubbed(r(0, 0)), Err(Error::EmptyRange));
    let e = l.scrubbed(r(6, 4)).unwrap_err();
    assert_eq!(e, Error::OutOfRange { start: 6, len: 4, capacity: 8 });
    assert_eq!(e.to_string(), "blocks 6..10 are outside the pool of 8 blocks");
    assert_eq!(l.scrubbed(r(u32::MAX, 1)), Err(Error::OutOfRange { start: u32::MAX, len: 1, capacity: 8 }));
    l.scrubbed(r(0, 4)).unwrap();
    let e = l.scrubbed(r(3, 2)).unwrap_err();
    assert_eq!(e, Error::NotScrubbing { start: 3, len: 2 });
    assert_eq!(e.to_string(), "blocks 3..5 are not all waiting for a scrub");
    assert_eq!(l.scrubbed(r(0, 1)), Err(Error::NotScrubbing { start: 0, len: 1 }), "twice");
}

#[test]
fn a_journal_for_another_capacity_is_refused() {
    let l = pool(8);
    let e = Lender::open(l.journal_storage().clone(), 9).unwrap_err();
    assert_eq!(
        e,
        Error::CapacityMismatch {
            journal_blocks: 8,
            journal_block_bytes: BLOCK_BYTES,
            blocks: 9,
            block_bytes: BLOCK_BYTES
        }
    );
    assert_eq!(e.to_string(), "the lender journal is for 8 blocks of 2097152 bytes, not 9 blocks of 2097152");
    assert_eq!(e.code(), ErrorCode::Internal);
    let other_block_size = journal(&[enc(&Entry::Open { capacity: 8, block_bytes: 4096 })]);
    assert!(matches!(
        Lender::open(other_block_size, 8),
        Err(Error::CapacityMismatch { journal_block_bytes: 4096, .. })
    ));
}

/// Storage whose appends fail while `fail` is set (and write nothing, as the hosted file storage
/// and the block storage guarantee).
#[derive(Debug, Clone, Default)]
struct Flaky {
    inner: MemStorage,
    fail: Rc<Cell<bool>>,
}

impl Storage for Flaky {
    type Error = &'static str;
    fn size(&mut self) -> Result<u64, Self::Error> {
        Ok(self.inner.bytes.len() as u64)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        let _ = self.inner.read_at(offset, buf);
        Ok(())
    }
    fn append(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        if self.fail.get() {
            return Err("disk full");
        }
        let _ = self.inner.append(bytes);
        Ok(())
    }
    fn truncate(&mut self, len: u64) -> Result<(), Self::Error> {
        let _ = self.inner.truncate(len);
        Ok(())
    }
}

#[test]
fn a_failed_journal_write_acknowledges_and_changes_nothing() {
    let fail = Rc::new(Cell::new(true));
    let e = Lender::open(Flaky { inner: MemStorage::default(), fail: Rc::clone(&fail) }, 4).unwrap_err();
    assert_eq!(e, Error::Journal("\"disk full\"".into()));
    assert_eq!(e.to_string(), "lender journal storage: \"disk full\"");
    assert_eq!(e.code(), ErrorCode::Internal);

    fail.set(false);
    let (mut l, _) = Lender::open(Flaky { inner: MemStorage::default(), fail: Rc::clone(&fail) }, 4).unwrap();
    l.scrubbed(r(0, 4)).unwrap();
    let before = (l.state().clone(), l.journal_records());
    fail.set(true);
    assert!(matches!(l.reserve(node(1), 1, NOW + 5, NOW), Err(Error::Journal(_))));
    assert!(matches!(l.allocate_local(1, 1), Err(Error::Journal(_))));
    assert_eq!((l.state().clone(), l.journal_records()), before, "nothing changed");
    fail.set(false);
    let res = l.reserve(node(1), 1, NOW + 5, NOW).unwrap();
    assert_eq!(res.id, before.0.next_id(), "the refused op used no id");
}

#[test]
fn an_unknown_entry_kind_stops_replay_with_a_clear_error() {
    let entries = [open_entry(4), (0x3F, vec![0; 8])];
    replay_fails(&entries, 4, 1, Error::UnknownEntry(0x3F));
    let e = Lender::open(journal(&entries), 4).unwrap_err();
    assert_eq!(
        e.to_string(),
        "lender journal record 1: unknown lender journal entry kind 0x3f (a newer build's journal, or not a lender journal)"
    );
    // A ledger journal is not a lender journal: its first record is kind 1.
    replay_fails(&[(1, vec![0; 40])], 4, 0, Error::UnknownEntry(1));
}

#[test]
fn a_payload_of_the_wrong_length_stops_replay() {
    let mut commit = enc(&Entry::Commit { reservation: 1, lease: 2 });
    commit.1.pop();
    replay_fails(&[open_entry(4), commit], 4, 1, Error::EntryLength { kind: kind::COMMIT, len: 15, expected: 16 });
    assert_eq!(
        Error::EntryLength { kind: kind::COMMIT, len: 15, expected: 16 }.to_string(),
        "lender journal entry kind 0x33 has 15 payload bytes, expected 16"
    );
    // A range count that claims more ranges than the payload holds.
    let mut reserve = enc(&Entry::Reserve { id: 1, borrower: node(1), expires_unix_s: NOW, ranges: vec![r(0, 1)] });
    reserve.1[24..28].copy_from_slice(&2u32.to_le_bytes());
    replay_fails(&[open_entry(4), reserve], 4, 1, Error::EntryLength { kind: kind::RESERVE, len: 36, expected: 44 });
}

#[test]
fn a_malformed_entry_stops_replay() {
    // Touching ranges are not canonical.
    let local = enc(&Entry::Local { vm: 1, ranges: vec![r(0, 1), r(1, 1)] });
    let detail = "ranges not ascending, or overlapping or touching";
    replay_fails(&[open_entry(4), local], 4, 1, Error::BadEntry { kind: kind::LOCAL, detail });
    let mut count = enc(&Entry::Local { vm: 1, ranges: vec![r(0, 1)] });
    count.1[8..12].copy_from_slice(&(MAX_RANGES as u32 + 1).to_le_bytes());
    replay_fails(
        &[open_entry(4), count],
        4,
        1,
        Error::BadEntry { kind: kind::LOCAL, detail: "more ranges than MAX_RANGES" },
    );
    // The first record must be OPEN, and only the first.
    replay_fails(
        &[enc(&Entry::Release { lease: 1 })],
        4,
        0,
        Error::BadEntry { kind: kind::RELEASE, detail: "the journal does not start with OPEN" },
    );
    replay_fails(
        &[open_entry(4), open_entry(4)],
        4,
        1,
        Error::BadEntry { kind: kind::OPEN, detail: "OPEN after the first record" },
    );
    assert_eq!(
        Error::BadEntry { kind: kind::LOCAL, detail }.to_string(),
        format!("lender journal entry kind 0x39: {detail}")
    );
}

#[test]
fn an_entry_that_does_not_apply_stops_replay() {
    // Blocks reserved while still waiting for their first scrub.
    let reserve = enc(&Entry::Reserve { id: 1, borrower: node(1), expires_unix_s: NOW, ranges: vec![r(0, 2)] });
    replay_fails(&[open_entry(4), reserve.clone()], 4, 1, Error::NotFree { start: 0, len: 2 });
    assert_eq!(Error::NotFree { start: 0, len: 2 }.to_string(), "blocks 0..2 are not all free");
    // An id used twice.
    let scrub = enc(&Entry::Scrubbed { range: r(0, 4) });
    let again = enc(&Entry::Reserve { id: 1, borrower: node(1), expires_unix_s: NOW, ranges: vec![r(2, 1)] });
    replay_fails(&[open_entry(4), scrub.clone(), reserve.clone(), again], 4, 3, Error::IdNotFresh { id: 1, next: 2 });
    assert_eq!(
        Error::IdNotFresh { id: 1, next: 2 }.to_string(),
        "id 1 is not above the ids already issued (next is 2)"
    );
    // A release of a lease that never was, a scrub of free blocks, a range past the pool.
    replay_fails(&[open_entry(4), enc(&Entry::Release { lease: 7 })], 4, 1, Error::UnknownLease(7));
    replay_fails(&[open_entry(4), scrub.clone(), scrub], 4, 2, Error::NotScrubbing { start: 0, len: 4 });
    replay_fails(
        &[open_entry(4), enc(&Entry::Scrubbed { range: r(3, 2) })],
        4,
        1,
        Error::OutOfRange { start: 3, len: 2, capacity: 4 },
    );
}

#[test]
fn a_hand_written_journal_replays_to_the_state_the_ops_build() {
    let mut l = pool(6);
    let res = l.reserve(node(1), 2, NOW + 9, NOW).unwrap();
    let lease = l.commit(res.id, NOW).unwrap();
    l.bind_grant(lease.id, 12).unwrap();
    l.allocate_local(4, 1).unwrap();
    let entries = [
        open_entry(6),
        enc(&Entry::Scrubbed { range: r(0, 6) }),
        enc(&Entry::Reserve { id: 1, borrower: node(1), expires_unix_s: NOW + 9, ranges: vec![r(0, 2)] }),
        enc(&Entry::Commit { reservation: 1, lease: 2 }),
        enc(&Entry::Grant { lease: 2, sequence: 12 }),
        enc(&Entry::Local { vm: 4, ranges: vec![r(2, 1)] }),
    ];
    let storage = journal(&entries);
    assert_eq!(storage.bytes, l.journal_storage().bytes, "the journal is byte for byte what docs/lender.md says");
    assert_eq!(Lender::open(storage, 6).unwrap().0.state(), l.state());
}

#[test]
fn fuzz_hooks_accept_their_own_encodings() {
    let mut p = vec![kind::RESERVE];
    let mut payload = Vec::new();
    Entry::Reserve { id: 1, borrower: node(1), expires_unix_s: NOW, ranges: vec![r(0, 2), r(5, 1)] }
        .encode(&mut payload);
    p.extend_from_slice(&payload);
    assert_eq!(ppn_lender::fuzz_decode(&p), Ok(()));
    assert_eq!(ppn_lender::fuzz_decode(&[0x3F]), Err(Error::UnknownEntry(0x3F)));
    assert_eq!(ppn_lender::fuzz_decode(&[]), Ok(()));
    // Capacity 8, then SCRUBBED 0..8 and a RESERVE of blocks 0..2.
    let mut data = 8u16.to_le_bytes().to_vec();
    for e in [
        Entry::Scrubbed { range: r(0, 8) },
        Entry::Reserve { id: 1, borrower: node(1), expires_unix_s: NOW, ranges: vec![r(0, 2)] },
    ] {
        e.encode(&mut payload);
        data.push(e.kind());
        data.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        data.extend_from_slice(&payload);
    }
    assert_eq!(ppn_lender::fuzz_replay(&data), Ok(()));
}
