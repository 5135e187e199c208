//! Random operation sequences against a simple model: one state per block in a plain vector, and
//! the rules of docs/lender.md written the obvious way. After every operation the lender must
//! agree with the model block for block and lease for lease, and pass its own invariant check;
//! ids never repeat; an allocation takes only blocks the model says are free (so never one
//! waiting for a scrub) and is best fit; reopening the journal rebuilds the identical state, and
//! so does reopening it cut at a random byte, as the state after the last op whose record is
//! whole. `PROPTEST_CASES` overrides the default of 256 cases.

use ppn_journal::mem::MemStorage;
use ppn_lender::{BlockRange, BlockState, Ended, Error, Lender, State};
use ppn_wire::ByteArray;
use ppn_wire::service::NodeId;
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::{BTreeMap, BTreeSet};

const NOW: u64 = 1_700_000_000;

fn node(n: u8) -> NodeId {
    NodeId(ByteArray([n; 8]))
}

#[derive(Debug, Clone)]
enum Op {
    Reserve {
        borrower: u8,
        blocks: u32,
        ttl: u64,
    },
    Commit {
        pick: Index,
    },
    Bind {
        pick: Index,
        seq: u64,
    },
    Release {
        pick: Index,
    },
    Expire,
    Tick {
        secs: u64,
    },
    RevokeBorrower {
        borrower: u8,
    },
    RevokeGrants {
        first: u64,
        last: u64,
    },
    AllocLocal {
        vm: u64,
        blocks: u32,
    },
    FreeLocal {
        vm: u64,
    },
    /// Confirms part of a range the lender lists to scrub (possibly empty).
    Scrub {
        pick: Index,
        a: Index,
        b: Index,
    },
    /// Confirms an arbitrary range (usually refused).
    ScrubAny {
        start: u32,
        len: u32,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, 0u32..12, 0u64..15).prop_map(|(borrower, blocks, ttl)| Op::Reserve { borrower, blocks, ttl }),
        3 => any::<Index>().prop_map(|pick| Op::Commit { pick }),
        2 => (any::<Index>(), 0u64..6).prop_map(|(pick, seq)| Op::Bind { pick, seq }),
        2 => any::<Index>().prop_map(|pick| Op::Release { pick }),
        1 => Just(Op::Expire),
        2 => (0u64..10).prop_map(|secs| Op::Tick { secs }),
        1 => (0u8..3).prop_map(|borrower| Op::RevokeBorrower { borrower }),
        1 => (0u64..8, 0u64..8).prop_map(|(first, last)| Op::RevokeGrants { first, last }),
        2 => (0u64..3, 0u32..10).prop_map(|(vm, blocks)| Op::AllocLocal { vm, blocks }),
        1 => (0u64..3).prop_map(|vm| Op::FreeLocal { vm }),
        5 => (any::<Index>(), any::<Index>(), any::<Index>()).prop_map(|(pick, a, b)| Op::Scrub { pick, a, b }),
        1 => (0u32..45, 0u32..6).prop_map(|(start, len)| Op::ScrubAny { start, len }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum M {
    Free,
    Reserved(u64),
    Lent(u64),
    Local(u64),
    Scrubbing,
}

#[derive(Debug, Clone, PartialEq)]
struct MRes {
    borrower: NodeId,
    expires: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct MLease {
    reservation: u64,
    borrower: NodeId,
    expires: u64,
    grant: Option<u64>,
}

#[derive(Debug, Clone)]
struct Model {
    blocks: Vec<M>,
    res: BTreeMap<u64, MRes>,
    leases: BTreeMap<u64, MLease>,
    local: BTreeSet<u64>,
}

impl Model {
    fn new(cap: u32) -> Self {
        Model {
            blocks: vec![M::Scrubbing; cap as usize],
            res: BTreeMap::new(),
            leases: BTreeMap::new(),
            local: BTreeSet::new(),
        }
    }

    fn free(&self) -> u32 {
        self.blocks.iter().filter(|b| **b == M::Free).count() as u32
    }

    /// Maximal runs of free blocks: (start, len).
    fn free_runs(&self) -> Vec<(u32, u32)> {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < self.blocks.len() {
            if self.blocks[i] == M::Free {
                let s = i;
                while i < self.blocks.len() && self.blocks[i] == M::Free {
                    i += 1;
                }
                runs.push((s as u32, (i - s) as u32));
            } else {
                i += 1;
            }
        }
        runs
    }

    fn set(&mut self, from: M, to: M) {
        for b in &mut self.blocks {
            if *b == from {
                *b = to;
            }
        }
    }

    /// Checks an allocation of `n` blocks against the model, then gives the blocks to `to`:
    /// only free blocks (never one waiting for a scrub), and best fit.
    fn allocate(&mut self, ranges: &[BlockRange], n: u32, to: M) -> Result<(), TestCaseError> {
        let total: u64 = ranges.iter().map(|r| r.len as u64).sum();
        prop_assert_eq!(total, n as u64);
        for r in ranges {
            for b in r.start..r.start + r.len {
                prop_assert_eq!(self.blocks[b as usize], M::Free, "block {} handed out but not free", b);
            }
        }
        let runs = self.free_runs();
        if let Some(&(start, _)) = runs.iter().filter(|(_, l)| *l >= n).min_by_key(|(s, l)| (*l, *s)) {
            prop_assert_eq!(ranges, &[BlockRange::new(start, n)][..], "not the best-fit contiguous range");
        } else {
            let mut lens: Vec<u32> = runs.iter().map(|(_, l)| *l).collect();
            lens.sort_unstable_by(|a, b| b.cmp(a));
            let mut need = n as i64;
            let fewest = lens.iter().take_while(|l| {
                let more = need > 0;
                need -= **l as i64;
                more
            });
            prop_assert_eq!(ranges.len(), fewest.count(), "not the fewest ranges");
        }
        for r in ranges {
            for b in r.start..r.start + r.len {
                self.blocks[b as usize] = to;
            }
        }
        Ok(())
    }

    /// Ends what `pick` selects: reservations free, leases to scrub. Returns the ids ended.
    fn end(&mut self, res: impl Fn(&MRes) -> bool, lease: impl Fn(&MLease) -> bool) -> (Vec<u64>, Vec<u64>) {
        let rs: Vec<u64> = self.res.iter().filter(|(_, r)| res(r)).map(|(id, _)| *id).collect();
        let ls: Vec<u64> = self.leases.iter().filter(|(_, l)| lease(l)).map(|(id, _)| *id).collect();
        for id in &rs {
            self.res.remove(id);
            self.set(M::Reserved(*id), M::Free);
        }
        for id in &ls {
            self.leases.remove(id);
            self.set(M::Lent(*id), M::Scrubbing);
        }
        (rs, ls)
    }
}

fn ended_ids(e: &Ended) -> (Vec<u64>, Vec<u64>) {
    (e.reservations.iter().map(|r| r.id).collect(), e.leases.iter().map(|l| l.id).collect())
}

/// The lender's state agrees with the model: every block, every reservation and lease, the counts.
fn agree(s: &State, m: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(s.check(), Ok(()));
    let mut blocks = vec![None; m.blocks.len()];
    for (r, st) in s.partition() {
        for b in r.start..r.start + r.len {
            prop_assert!(blocks[b as usize].is_none(), "block {} in two states", b);
            blocks[b as usize] = Some(match st {
                BlockState::Free => M::Free,
                BlockState::Reserved(id) => M::Reserved(id),
                BlockState::Lent(id) => M::Lent(id),
                BlockState::Local(vm) => M::Local(vm),
                BlockState::Scrubbing => M::Scrubbing,
            });
        }
    }
    let blocks: Vec<M> = blocks.into_iter().map(|b| b.expect("every block has a state")).collect();
    prop_assert_eq!(&blocks, &m.blocks);
    for b in 0..m.blocks.len() as u32 {
        let want = blocks[b as usize];
        let got = s.block_state(b).map(|st| match st {
            BlockState::Free => M::Free,
            BlockState::Reserved(id) => M::Reserved(id),
            BlockState::Lent(id) => M::Lent(id),
            BlockState::Local(vm) => M::Local(vm),
            BlockState::Scrubbing => M::Scrubbing,
        });
        prop_assert_eq!(got, Some(want));
    }
    let res: BTreeMap<u64, MRes> =
        s.reservations().map(|r| (r.id, MRes { borrower: r.borrower, expires: r.expires_unix_s })).collect();
    prop_assert_eq!(&res, &m.res);
    let leases: BTreeMap<u64, MLease> = s
        .leases()
        .map(|l| {
            (
                l.id,
                MLease {
                    reservation: l.reservation,
                    borrower: l.borrower,
                    expires: l.expires_unix_s,
                    grant: l.grant_sequence,
                },
            )
        })
        .collect();
    prop_assert_eq!(&leases, &m.leases);
    prop_assert_eq!(s.local_vms().map(|(vm, _)| vm).collect::<BTreeSet<_>>(), m.local.clone());
    let st = s.status();
    let count = |f: fn(&M) -> bool| m.blocks.iter().filter(|b| f(b)).count() as u32;
    prop_assert_eq!(st.free, count(|b| *b == M::Free));
    prop_assert_eq!(st.reserved, count(|b| matches!(b, M::Reserved(_))));
    prop_assert_eq!(st.lent, count(|b| matches!(b, M::Lent(_))));
    prop_assert_eq!(st.local, count(|b| matches!(b, M::Local(_))));
    prop_assert_eq!(st.scrubbing, count(|b| *b == M::Scrubbing));
    prop_assert_eq!(st.free + st.reserved + st.lent + st.local + st.scrubbing, st.capacity);
    let w = st.to_wire();
    prop_assert_eq!(w.free + w.reserved + w.lent + w.in_use, w.total);
    Ok(())
}

fn reopen(l: &Lender<MemStorage>) -> Lender<MemStorage> {
    Lender::open(l.journal_storage().clone(), l.state().capacity()).expect("the journal reopens").0
}

/// (journal length, state, model) after an op.
type History = Vec<(usize, State, Model)>;

/// Runs `ops` on a pool of `cap` blocks, checking the model after each; returns the history
/// after each op, opening included.
fn run(cap: u32, ops: &[Op]) -> Result<(Lender<MemStorage>, History), TestCaseError> {
    let (mut l, _) = Lender::open(MemStorage::default(), cap).unwrap();
    let mut m = Model::new(cap);
    let mut now = NOW;
    let mut ids = BTreeSet::new();
    let mut reservation_ids: Vec<u64> = Vec::new();
    let mut lease_ids: Vec<u64> = Vec::new();
    let mut history = vec![(l.journal_storage().bytes.len(), l.state().clone(), m.clone())];
    agree(l.state(), &m)?;
    for op in ops {
        let unknown = l.state().next_id() + 1000;
        match op {
            Op::Reserve { borrower, blocks, ttl } => {
                let got = l.reserve(node(*borrower), *blocks, now + ttl, now);
                if *blocks == 0 {
                    prop_assert_eq!(got, Err(Error::ZeroBlocks));
                } else if *ttl == 0 {
                    prop_assert_eq!(got, Err(Error::AlreadyExpired { expires_unix_s: now, now_unix_s: now }));
                } else if m.free() < *blocks {
                    prop_assert_eq!(got, Err(Error::NotEnoughFree { requested: *blocks, free: m.free() }));
                } else {
                    let r = got.unwrap();
                    prop_assert!(ids.iter().all(|i| *i < r.id), "id {} not above every earlier id", r.id);
                    ids.insert(r.id);
                    reservation_ids.push(r.id);
                    prop_assert_eq!((r.borrower, r.blocks, r.expires_unix_s), (node(*borrower), *blocks, now + ttl));
                    m.allocate(&r.ranges, *blocks, M::Reserved(r.id))?;
                    m.res.insert(r.id, MRes { borrower: node(*borrower), expires: now + ttl });
                }
            }
            Op::Commit { pick } => {
                let id = if reservation_ids.is_empty() || pick.index(4) == 0 {
                    unknown
                } else {
                    *pick.get(&reservation_ids)
                };
                let got = l.commit(id, now);
                match m.res.get(&id).cloned() {
                    Some(r) if r.expires <= now => prop_assert_eq!(
                        got,
                        Err(Error::ReservationExpired { reservation: id, expires_unix_s: r.expires, now_unix_s: now })
                    ),
                    Some(r) => {
                        let lease = got.unwrap();
                        prop_assert!(ids.iter().all(|i| *i < lease.id), "id {} not above every earlier id", lease.id);
                        ids.insert(lease.id);
                        lease_ids.push(lease.id);
                        prop_assert_eq!(
                            (lease.reservation, lease.borrower, lease.expires_unix_s),
                            (id, r.borrower, r.expires)
                        );
                        m.res.remove(&id);
                        m.set(M::Reserved(id), M::Lent(lease.id));
                        m.leases.insert(
                            lease.id,
                            MLease { reservation: id, borrower: r.borrower, expires: r.expires, grant: None },
                        );
                    }
                    None => match m.leases.iter().find(|(_, l)| l.reservation == id) {
                        Some((lease, _)) => {
                            prop_assert_eq!(got, Err(Error::AlreadyCommitted { reservation: id, lease: *lease }))
                        }
                        None => prop_assert_eq!(got, Err(Error::UnknownReservation(id))),
                    },
                }
            }
            Op::Bind { pick, seq } => {
                let id = if lease_ids.is_empty() || pick.index(5) == 0 { unknown } else { *pick.get(&lease_ids) };
                let got = l.bind_grant(id, *seq);
                match m.leases.get(&id).cloned() {
                    None => prop_assert_eq!(got, Err(Error::UnknownLease(id))),
                    Some(MLease { grant: Some(s), .. }) => {
                        prop_assert_eq!(got, Err(Error::GrantAlreadyBound { lease: id, sequence: s }))
                    }
                    Some(_) => match m.leases.iter().find(|(_, l)| l.grant == Some(*seq)) {
                        Some((other, _)) => {
                            prop_assert_eq!(got, Err(Error::GrantInUse { sequence: *seq, lease: *other }))
                        }
                        None => {
                            prop_assert_eq!(got, Ok(()));
                            m.leases.get_mut(&id).unwrap().grant = Some(*seq);
                        }
                    },
                }
            }
            Op::Release { pick } => {
                let id = if lease_ids.is_empty() || pick.index(5) == 0 { unknown } else { *pick.get(&lease_ids) };
                let got = l.release(id);
                if m.leases.contains_key(&id) {
                    prop_assert_eq!(got.unwrap().id, id);
                    m.leases.remove(&id);
                    m.set(M::Lent(id), M::Scrubbing);
                } else {
                    prop_assert_eq!(got, Err(Error::UnknownLease(id)));
                }
            }
            Op::Expire => {
                let got = l.expire(now).unwrap();
                let want = m.end(|r| r.expires <= now, |l| l.expires <= now);
                prop_assert_eq!(ended_ids(&got), want);
            }
            Op::Tick { secs } => now += secs,
            Op::RevokeBorrower { borrower } => {
                let n = node(*borrower);
                let got = l.revoke_borrower(n).unwrap();
                let want = m.end(|r| r.borrower == n, |l| l.borrower == n);
                prop_assert_eq!(ended_ids(&got), want);
            }
            Op::RevokeGrants { first, last } => {
                let got = l.revoke_grants(*first, *last);
                if first > last {
                    prop_assert_eq!(got, Err(Error::BadGrantRange { first: *first, last: *last }));
                } else {
                    let want = m.end(|_| false, |l| l.grant.is_some_and(|g| (*first..=*last).contains(&g)));
                    prop_assert_eq!(ended_ids(&got.unwrap()), want);
                }
            }
            Op::AllocLocal { vm, blocks } => {
                let got = l.allocate_local(*vm, *blocks);
                if *blocks == 0 {
                    prop_assert_eq!(got, Err(Error::ZeroBlocks));
                } else if m.local.contains(vm) {
                    prop_assert_eq!(got, Err(Error::VmHasBlocks(*vm)));
                } else if m.free() < *blocks {
                    prop_assert_eq!(got, Err(Error::NotEnoughFree { requested: *blocks, free: m.free() }));
                } else {
                    m.allocate(&got.unwrap(), *blocks, M::Local(*vm))?;
                    m.local.insert(*vm);
                }
            }
            Op::FreeLocal { vm } => {
                let got = l.free_local(*vm);
                if m.local.remove(vm) {
                    let ranges = got.unwrap();
                    for r in &ranges {
                        for b in r.start..r.start + r.len {
                            prop_assert_eq!(m.blocks[b as usize], M::Local(*vm));
                        }
                    }
                    m.set(M::Local(*vm), M::Scrubbing);
                } else {
                    prop_assert_eq!(got, Err(Error::UnknownVm(*vm)));
                }
            }
            Op::Scrub { pick, a, b } => {
                let list = l.to_scrub();
                if list.is_empty() {
                    prop_assert!(!m.blocks.contains(&M::Scrubbing));
                    continue;
                }
                let ext = *pick.get(&list);
                let (x, y) = (a.index(ext.len as usize + 1) as u32, b.index(ext.len as usize + 1) as u32);
                let range = BlockRange::new(ext.start + x.min(y), x.abs_diff(y));
                scrub(&mut l, &mut m, range)?;
            }
            Op::ScrubAny { start, len } => scrub(&mut l, &mut m, BlockRange::new(*start, *len))?,
            Op::Reopen => {
                let again = reopen(&l);
                prop_assert_eq!(again.state(), l.state());
                l = again;
            }
        }
        agree(l.state(), &m)?;
        history.push((l.journal_storage().bytes.len(), l.state().clone(), m.clone()));
    }
    Ok((l, history))
}

fn scrub(l: &mut Lender<MemStorage>, m: &mut Model, range: BlockRange) -> Result<(), TestCaseError> {
    let got = l.scrubbed(range);
    let cap = m.blocks.len() as u64;
    if range.len == 0 {
        prop_assert_eq!(got, Err(Error::EmptyRange));
    } else if range.end() > cap {
        prop_assert_eq!(got, Err(Error::OutOfRange { start: range.start, len: range.len, capacity: cap as u32 }));
    } else if (range.start..range.start + range.len).all(|b| m.blocks[b as usize] == M::Scrubbing) {
        prop_assert_eq!(got, Ok(range.len));
        for b in range.start..range.start + range.len {
            m.blocks[b as usize] = M::Free;
        }
    } else {
        prop_assert_eq!(got, Err(Error::NotScrubbing { start: range.start, len: range.len }));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn random_operations_agree_with_the_model_and_survive_replay_and_torn_tails(
        cap in 1u32..40,
        ops in proptest::collection::vec(op(), 1..80),
        cuts in proptest::collection::vec(any::<Index>(), 3),
    ) {
        let (l, history) = run(cap, &ops)?;
        // Reopening the same bytes rebuilds the identical state.
        let again = reopen(&l);
        prop_assert_eq!(again.state(), l.state());
        // A crash at any byte: the state after the last op whose record is whole.
        let bytes = &l.journal_storage().bytes;
        let fresh = Lender::open(MemStorage::default(), cap).unwrap().0.state().clone();
        for cut in cuts {
            let cut = cut.index(bytes.len() + 1);
            let (torn, report) = Lender::open(MemStorage { bytes: bytes[..cut].to_vec() }, cap).unwrap();
            match history.iter().rev().find(|(len, _, _)| *len <= cut) {
                Some((len, state, model)) => {
                    prop_assert_eq!(torn.state(), state, "cut at {} of {}", cut, bytes.len());
                    agree(torn.state(), model)?;
                    prop_assert_eq!(report.truncated_bytes as usize, cut - len);
                }
                None => prop_assert_eq!(torn.state(), &fresh, "cut inside the OPEN record"),
            }
        }
    }
}
