//! A ledger fed by a hostile proxy: a `Ledger` over in-memory storage, whose own key is the one
//! fleet root, takes a sequence of operations read from the fuzz input and must never panic.
//!
//! The input is a sequence of `op, length (u16 LE), chunk` (a short tail is taken as it is):
//!
//! - `0` raw: the chunk itself goes to `ledger.ingest`;
//! - `1` signed: the chunk describes a record (signer, author, body, parents chosen among known
//!   ids or raw bytes) that the harness signs with one of four fixed keys, the root's or one of
//!   three others; it is delivered now or held back;
//! - `2` deliver: a record signed earlier is delivered (again, or for the first time: out of
//!   order);
//! - `3` mutate: a record signed earlier, with one byte changed, is delivered;
//! - `4` lacking: `ledger.records_lacking` with peer heads taken from the chunk (raw ids, or ids
//!   of known records), checked against a naive computation;
//! - `5` author: the ledger authors a record itself.
//!
//! The harness makes the Ed25519 signatures: the fuzzer could never forge one, and without them
//! nothing past the signature check would ever run. After every operation the
//! ledger's summary, heads and pending buffer must be consistent; at the end the ledger is
//! reopened from its journal and must come back the same.
//!
//! Not reached: the pending buffer's eviction. It takes more than `MAX_PENDING` (1024) held
//! records, and a thousand ingests per input cut the run rate more than tenfold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ppn_journal::mem::MemStorage;
use ppn_ledger::ledger::MAX_PENDING;
use ppn_ledger::{Body, Ledger, Record, RecordId, Roots};
use ppn_node_core::NodeKeys;
use ppn_wire::service::{HEADS_MAX, IngestOutcome, NodeId, RECORDS_PER_FRAME, REVOKED_NODES_MAX};
use ppn_wire::{ByteArray, ErrorCode};
use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

/// Seeds of the nodes the harness signs for. The first is the ledger's own node, the one root;
/// the others are known only through the records that admit them.
const SEEDS: [[u8; 32]; 4] = [[1; 32], [2; 32], [3; 32], [4; 32]];
/// Most operations taken from one input, so that each run stays fast.
const MAX_OPS: usize = 256;
/// The TCB's clock, fixed: nothing here depends on it but the `created` field of own records.
const NOW: u64 = 1_700_000_000;

struct Fixture {
    keys: Vec<NodeKeys>,
    roots: Arc<Roots>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let keys: Vec<NodeKeys> = SEEDS.iter().map(NodeKeys::from_seed).collect();
        let mut roots = Roots::default();
        assert!(roots.add(&keys[0].signing_public()));
        Fixture { keys, roots: Arc::new(roots) }
    })
}

/// Reads the fuzz input front to back; past its end every read is `None`.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let got = self.take(N);
        a[..got.len()].copy_from_slice(got);
        a
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// A length-prefixed chunk: two bytes of length, then that many bytes or what is left.
    fn chunk(&mut self) -> &'a [u8] {
        let len = u16::from_le_bytes(self.array());
        self.take(len as usize)
    }
}

/// What the harness remembers between operations.
#[derive(Default)]
struct State {
    /// Records this harness signed, delivered or not.
    made: Vec<Record>,
    /// Raw chunks that decoded as records.
    raw_ids: Vec<RecordId>,
}

impl State {
    /// A known record id: one the harness signed or saw, or a head of the ledger.
    fn known_id(&self, ledger: &Ledger<MemStorage>, sel: u8) -> Option<RecordId> {
        let heads: Vec<RecordId> = ledger.dag().heads().copied().collect();
        let n = self.made.len() + self.raw_ids.len() + heads.len();
        if n == 0 {
            return None;
        }
        let i = sel as usize % n;
        Some(if i < self.made.len() {
            self.made[i].id
        } else if i < self.made.len() + self.raw_ids.len() {
            self.raw_ids[i - self.made.len()]
        } else {
            heads[i - self.made.len() - self.raw_ids.len()]
        })
    }
}

/// A node id: one of the harness's nodes (low selectors) or raw bytes.
fn node_id(c: &mut Input<'_>) -> NodeId {
    let sel = c.byte().unwrap_or(0);
    match fixture().keys.get(sel as usize % 8) {
        Some(k) => k.node_id(),
        None => NodeId(ByteArray(c.array())),
    }
}

/// A record body described by the chunk.
fn body(c: &mut Input<'_>) -> Body {
    match c.byte().unwrap_or(0) % 3 {
        0 => {
            let sel = c.byte().unwrap_or(0);
            let key = match fixture().keys.get(sel as usize % 8) {
                Some(k) => k.signing_public(),
                // Raw bytes: often not a valid Ed25519 key at all.
                None => c.array(),
            };
            Body::NodeAdmitted { key, wireguard: c.array() }
        }
        1 => Body::NodeRevoked { node: node_id(c) },
        _ => {
            let issuer = node_id(c);
            let (a, b) = (c.u64(), c.u64());
            Body::GrantRevoked { issuer, first: a.min(b), last: a.max(b) }
        }
    }
}

/// Signs the record the chunk describes (op 1).
fn signed_record(ledger: &Ledger<MemStorage>, state: &State, c: &mut Input<'_>) -> Record {
    let f = fixture();
    let who = c.byte().unwrap_or(0);
    let signer = &f.keys[who as usize % f.keys.len()];
    // Now and then the author field names another node than the signer: a bad signature.
    let author = if who & 0x80 != 0 { f.keys[(who as usize >> 2) % f.keys.len()].node_id() } else { signer.node_id() };
    let created = c.byte().unwrap_or(0) as u64;
    let body = body(c);
    let n = c.byte().unwrap_or(0) as usize % 20;
    let mut parents = Vec::with_capacity(n);
    for _ in 0..n {
        let sel = c.byte().unwrap_or(0);
        match state.known_id(ledger, sel & 0x7F) {
            Some(id) if sel & 0x80 == 0 => parents.push(id),
            // A parent nobody has: the record waits for it.
            _ => parents.push(ByteArray(c.array())),
        }
    }
    Record::sign(signer.signing_key(), author, created, &parents, body)
}

/// Ingests `bytes` and checks the outcome against what the ledger holds afterwards.
fn ingest(ledger: &mut Ledger<MemStorage>, bytes: &[u8]) -> IngestOutcome {
    let before = ledger.dag().len();
    let outcome = ledger.ingest(bytes).expect("in-memory storage never fails");
    let decoded = Record::decode(bytes);
    match (&decoded, outcome) {
        (Err(_), IngestOutcome::Malformed) => {}
        (Err(e), o) => panic!("a record that does not decode ({e}) was {o:?}"),
        (Ok(_), IngestOutcome::Malformed) => panic!("a record that decodes was Malformed"),
        (Ok(r), IngestOutcome::Accepted) => {
            assert!(ledger.dag().contains(&r.id));
            assert!(ledger.dag().len() > before);
        }
        (Ok(r), IngestOutcome::Duplicate) => {
            assert!(ledger.dag().contains(&r.id));
            assert_eq!(ledger.dag().len(), before);
        }
        (Ok(r), _) => {
            assert!(!ledger.dag().contains(&r.id), "{outcome:?} but the record is in the DAG");
            assert_eq!(ledger.dag().len(), before);
        }
    }
    outcome
}

/// `records_lacking` against the naive answer: every record that is neither a peer head this
/// ledger knows nor an ancestor of one, lowest (height, id) first; or, when the peer names
/// nothing this ledger knows, the oldest records in acceptance order (the walk-free answer).
fn check_lacking(ledger: &Ledger<MemStorage>, peer_heads: &[RecordId], limit: usize) {
    let got = ledger.records_lacking(peer_heads, limit);
    let dag = ledger.dag();
    let mut peer_has = BTreeSet::new();
    let mut stack: Vec<RecordId> = peer_heads.iter().filter(|id| dag.contains(id)).copied().collect();
    while let Some(id) = stack.pop() {
        if peer_has.insert(id) {
            stack.extend(dag.get(&id).expect("present").parents.iter().copied());
        }
    }
    let mut lacking: Vec<(u32, RecordId)> =
        dag.iter().filter(|r| !peer_has.contains(&r.id)).map(|r| (dag.height(&r.id).expect("present"), r.id)).collect();
    if !peer_has.is_empty() {
        lacking.sort();
    }
    let limit = limit.clamp(1, RECORDS_PER_FRAME);
    let want: Vec<RecordId> = lacking.iter().take(limit).map(|&(_, id)| id).collect();
    let ids: Vec<RecordId> = got
        .records
        .iter()
        .map(|b| {
            let r = Record::decode(b).expect("a record the ledger sends decodes");
            assert_eq!(dag.get(&r.id).map(|d| &d.bytes[..]), Some(&b[..]));
            r.id
        })
        .collect();
    assert_eq!(ids, want, "records lacking, for {} peer heads", peer_heads.len());
    assert_eq!(got.more, lacking.len() > limit);
    // Parents first: a record's parents that are in the answer come before it.
    let mut sent = BTreeSet::new();
    for (id, b) in ids.iter().zip(&got.records) {
        let r = Record::decode(b).expect("decoded above");
        assert!(r.parents.iter().all(|p| !ids.contains(p) || sent.contains(p)));
        sent.insert(*id);
    }
}

/// What must hold between any two operations.
fn check_consistent(ledger: &Ledger<MemStorage>) {
    let dag = ledger.dag();
    assert!(ledger.pending_len() <= MAX_PENDING);
    let s = ledger.summary();
    assert_eq!(s.record_count, dag.len() as u64);
    assert_eq!(s.heads as usize, dag.head_count());
    assert_eq!(s.pending as usize, ledger.pending_len());
    assert_eq!(s.root_count, 1);
    assert!(s.revoked_nodes.len() <= REVOKED_NODES_MAX);
    assert!(s.revoked_nodes.len() <= s.revoked_node_count as usize);
    assert!(s.revoked_nodes.windows(2).all(|w| w[0] < w[1]));
    assert!(s.revoked_nodes.iter().all(|n| ledger.revocations().node_revoked(n)));
    let heads = ledger.heads();
    assert_eq!(heads.record_count, dag.len() as u64);
    assert_eq!(heads.heads.len(), dag.head_count().min(HEADS_MAX));
    assert!(heads.heads.iter().all(|h| dag.contains(h)));
    assert_eq!(dag.is_empty(), dag.head_count() == 0);
    // Trust is a function of the accepted records; the root is trusted until it is revoked.
    let me = ledger.node_id();
    assert_eq!(ledger.is_trusted(&me), !ledger.revocations().node_revoked(&me));
    for k in &fixture().keys {
        if ledger.is_trusted(&k.node_id()) {
            assert!(!ledger.revocations().node_revoked(&k.node_id()));
        }
    }
}

/// Which of the harness's nodes the ledger trusts.
fn trusted(ledger: &Ledger<MemStorage>) -> Vec<bool> {
    fixture().keys.iter().map(|k| ledger.is_trusted(&k.node_id())).collect()
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let (mut ledger, report) =
        Ledger::open(NodeKeys::from_seed(&SEEDS[0]), f.roots.clone(), MemStorage::default()).expect("opens");
    assert_eq!(report.records, 0);
    let mut state = State::default();
    let mut input = Input(data);

    for _ in 0..MAX_OPS {
        let Some(op) = input.byte() else { break };
        let chunk = input.chunk();
        let mut c = Input(chunk);
        match op % 6 {
            0 => {
                if ingest(&mut ledger, chunk) != IngestOutcome::Malformed {
                    state.raw_ids.push(Record::decode(chunk).expect("not malformed").id);
                }
            }
            1 => {
                let deliver = c.byte().unwrap_or(0) & 1 == 0;
                let r = signed_record(&ledger, &state, &mut c);
                if deliver {
                    ingest(&mut ledger, &r.bytes);
                }
                state.made.push(r);
            }
            2 => {
                if !state.made.is_empty() {
                    let i = c.byte().unwrap_or(0) as usize % state.made.len();
                    let bytes = state.made[i].bytes.clone();
                    ingest(&mut ledger, &bytes);
                }
            }
            3 => {
                if !state.made.is_empty() {
                    let i = c.byte().unwrap_or(0) as usize % state.made.len();
                    let mut bytes = state.made[i].bytes.clone();
                    let at = u16::from_le_bytes(c.array()) as usize % bytes.len();
                    bytes[at] ^= c.byte().unwrap_or(0).max(1);
                    ingest(&mut ledger, &bytes);
                }
            }
            4 => {
                let limit = c.byte().unwrap_or(0) as usize;
                let mut peer_heads = Vec::new();
                while peer_heads.len() < HEADS_MAX {
                    let Some(sel) = c.byte() else { break };
                    match state.known_id(&ledger, sel >> 1) {
                        Some(id) if sel & 1 == 0 => peer_heads.push(id),
                        _ => peer_heads.push(ByteArray(c.array())),
                    }
                }
                check_lacking(&ledger, &peer_heads, limit);
            }
            _ => {
                let body = body(&mut c);
                let before = ledger.dag().len();
                match ledger.author(body, NOW) {
                    Ok(id) => {
                        assert!(ledger.dag().contains(&id));
                        assert_eq!(ledger.dag().len(), before + 1);
                    }
                    // Only a revoked node may be refused; anything else is a bug.
                    Err(refusal) => {
                        assert_eq!(refusal.code, ErrorCode::Rejected, "{refusal:?}");
                        assert!(ledger.revocations().node_revoked(&ledger.node_id()));
                    }
                }
            }
        }
        check_consistent(&ledger);
    }

    // The same records, in the same order, replayed from the journal: the same ledger.
    let storage = ledger.journal_storage().clone();
    let (reopened, report) = Ledger::open(NodeKeys::from_seed(&SEEDS[0]), f.roots.clone(), storage).expect("reopens");
    assert_eq!((report.records, report.rejected, report.truncated_bytes), (ledger.dag().len() as u64, 0, 0));
    let ids = |l: &Ledger<MemStorage>| l.dag().iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(&reopened), ids(&ledger));
    assert_eq!(reopened.heads(), ledger.heads());
    let (mut a, mut b) = (reopened.summary(), ledger.summary());
    (a.pending, a.pending_dropped, b.pending, b.pending_dropped) = (0, 0, 0, 0);
    assert_eq!(a, b);
    let revoked = |l: &Ledger<MemStorage>| l.revocations().revoked_nodes().copied().collect::<Vec<_>>();
    assert_eq!(revoked(&reopened), revoked(&ledger));
    assert_eq!(trusted(&reopened), trusted(&ledger));
});
