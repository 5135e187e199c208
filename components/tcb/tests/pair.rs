//! The Pair service between two TCB cores: a full ceremony admits each node into the other's
//! ledger with its mesh key, only after the operator's decision; a wrong code, a stale or
//! mismatched decision, and a message out of turn change nothing.

use ppn_journal::mem::MemStorage;
use ppn_ledger::Roots;
use ppn_tcb_core::{Booted, Entropy, boot};
use ppn_wire::message::{LedgerRequest, LedgerResponse, PairRequest, PairResponse};
use ppn_wire::service::{
    IngestOutcome, IngestRecords, Member, PairBegin, PairDecide, PairDecided, PairProgress, PairRole, PairStep,
    Platform,
};
use ppn_wire::{ByteArray, ErrorCode, NodeId, Request, Response};

const NOW: u64 = 1_800_000_000;

/// Deterministic "entropy" for the test: a counter, different per node.
struct Counter(u8);

impl Entropy for Counter {
    fn fill(&mut self, out: &mut [u8]) -> Result<(), String> {
        self.0 = self.0.wrapping_add(1);
        out.fill(self.0);
        Ok(())
    }
}

type Tcb = Booted<MemStorage, MemStorage>;

/// A fresh TCB whose identity seed is `seed` repeated; no entropy source for pairing.
fn plain(seed: u8) -> Tcb {
    let entropy = |s: &mut [u8; 32]| {
        s.fill(seed);
        Ok::<(), ()>(())
    };
    boot(MemStorage::default(), MemStorage::default(), &Roots::default(), Platform::Hosted, "t", entropy).unwrap()
}

/// A fresh TCB with a deterministic entropy source for pairing.
fn tcb(seed: u8) -> Tcb {
    let mut b = plain(seed);
    b.core = b.core.with_entropy(Box::new(Counter(seed.wrapping_mul(16))));
    b
}

fn pair(t: &mut Tcb, r: PairRequest) -> Result<PairResponse, (ErrorCode, String)> {
    match t.core.answer(&Request::Pair(r), 0, NOW) {
        Response::Pair(p) => Ok(p),
        Response::Error(e) => Err((e.code, e.detail.to_string())),
        other => panic!("{other:?}"),
    }
}

fn progress(r: Result<PairResponse, (ErrorCode, String)>) -> PairProgress {
    match r {
        Ok(PairResponse::Begin(p) | PairResponse::Step(p)) => p,
        other => panic!("not progress: {other:?}"),
    }
}

fn begin(t: &mut Tcb, role: PairRole, code: &str, wg: u8) -> PairProgress {
    let b = PairBegin { role, code: code.try_into().unwrap(), wireguard_key: ByteArray([wg; 32]) };
    progress(pair(t, PairRequest::Begin(b)))
}

fn step(t: &mut Tcb, message: &[u8]) -> Result<PairResponse, (ErrorCode, String)> {
    pair(t, PairRequest::Step(PairStep { message: heapless::Vec::from_slice(message).unwrap() }))
}

fn members(t: &mut Tcb) -> Vec<Member> {
    match t.core.answer(&Request::Ledger(LedgerRequest::Members), 0, NOW) {
        Response::Ledger(LedgerResponse::Members(m)) => m.members.to_vec(),
        other => panic!("{other:?}"),
    }
}

fn id(t: &Tcb) -> NodeId {
    t.core.node().node_id()
}

#[test]
fn a_ceremony_admits_each_node_into_the_other_only_after_the_operators_decide() {
    let (mut a, mut b) = (tcb(1), tcb(2));
    let code = "7K3M9-QX2HD";
    let hello = begin(&mut a, PairRole::Initiator, code, 0xA1);
    assert!(hello.paired.is_none() && !hello.message.is_empty());
    assert!(begin(&mut b, PairRole::Responder, code, 0xB2).message.is_empty());
    let reply = progress(step(&mut b, &hello.message));
    assert!(reply.paired.is_none());
    let confirm = progress(step(&mut a, &reply.message));
    let peer_of_a = confirm.paired.clone().unwrap();
    let done = progress(step(&mut b, &confirm.message));
    assert!(done.message.is_empty());
    let peer_of_b = done.paired.unwrap();
    assert_eq!(peer_of_a.sas, peer_of_b.sas, "both operators see the same SAS");
    assert!(peer_of_a.sas < 1_000_000);
    assert_eq!((peer_of_a.node_id, peer_of_a.wireguard_key), (id(&b), ByteArray([0xB2; 32])));
    assert_eq!((peer_of_b.node_id, peer_of_b.wireguard_key), (id(&a), ByteArray([0xA1; 32])));

    // Nothing is in either ledger before the decision.
    assert_eq!(members(&mut a).len(), 1);
    assert_eq!(a.core.ledger().summary().record_count, 0);

    // A decision naming another SAS is refused and keeps the session.
    let wrong = PairDecide {
        peer: peer_of_a.node_id,
        sas: (peer_of_a.sas + 1) % 1_000_000,
        admit: true,
        peer_record: Default::default(),
    };
    assert_eq!(pair(&mut a, PairRequest::Decide(wrong)).unwrap_err().0, ErrorCode::Rejected);

    // A decides first; B takes A's record, then signs its own; A takes B's.
    let decide = |t: &mut Tcb, peer: &ppn_wire::service::PairedPeer, theirs: &[u8]| {
        let d = PairDecide {
            peer: peer.node_id,
            sas: peer.sas,
            admit: true,
            peer_record: heapless::Vec::from_slice(theirs).unwrap(),
        };
        let Ok(PairResponse::Decide(PairDecided { record_id: Some(_), record })) =
            pair(t, PairRequest::Decide(d.clone()))
        else {
            panic!("not admitted")
        };
        // The session is over: a second decision is refused.
        assert_eq!(pair(t, PairRequest::Decide(d)).unwrap_err().0, ErrorCode::Rejected);
        record.to_vec()
    };
    let record_a = decide(&mut a, &peer_of_a, &[]);
    let record_b = decide(&mut b, &peer_of_b, &record_a);
    let req = IngestRecords { records: [heapless::Vec::from_slice(&record_b).unwrap()].into_iter().collect() };
    match a.core.answer(&Request::Ledger(LedgerRequest::IngestRecords(req)), 0, NOW) {
        Response::Ledger(LedgerResponse::IngestRecords(o)) => assert_eq!(o.outcomes[..], [IngestOutcome::Accepted]),
        other => panic!("{other:?}"),
    }
    let in_a = members(&mut a).into_iter().find(|m| m.node_id == id(&b)).unwrap();
    assert!(in_a.trusted && in_a.root, "a paired peer is a root of this replica");
    assert_eq!(in_a.wireguard, Some(ByteArray([0xB2; 32])));
    let in_b = members(&mut b).into_iter().find(|m| m.node_id == id(&a)).unwrap();
    assert_eq!(in_b.wireguard, Some(ByteArray([0xA1; 32])));

    // B's record descends from A's: a third node that trusts only A accepts both, in order,
    // and so trusts B.
    let a_key = a.core.node().signing_public();
    let mut roots_c = Roots::default();
    assert!(roots_c.add(&a_key));
    let keys_c = ppn_node_core::NodeKeys::from_seed(&[0xC; 32]);
    let (mut ledger_c, _) =
        ppn_ledger::Ledger::open(keys_c, std::sync::Arc::new(roots_c), MemStorage::default()).unwrap();
    assert_eq!(ledger_c.ingest(&record_a).unwrap(), IngestOutcome::Accepted);
    assert_eq!(ledger_c.ingest(&record_b).unwrap(), IngestOutcome::Accepted);
    assert!(ledger_c.is_trusted(&id(&b)));
    assert_eq!(a.core.ledger().summary().record_count, 2);
    assert_eq!(b.core.ledger().summary().record_count, 2);
}

#[test]
fn a_wrong_code_fails_on_both_sides_and_writes_nothing() {
    let (mut a, mut b) = (tcb(3), tcb(4));
    let hello = begin(&mut a, PairRole::Initiator, "7K3M9-QX2HD", 1);
    begin(&mut b, PairRole::Responder, "7K3M9-QX2HE", 2);
    let reply = progress(step(&mut b, &hello.message));
    let (code, detail) = step(&mut a, &reply.message).unwrap_err();
    assert_eq!(code, ErrorCode::Rejected);
    assert!(detail.contains("codes typed on the two nodes differ"), "{detail}");
    // The initiator's session is gone; B never gets a confirmation.
    assert_eq!(step(&mut a, &reply.message).unwrap_err().0, ErrorCode::Rejected);
    for t in [&mut a, &mut b] {
        assert_eq!(t.core.ledger().summary().record_count, 0);
        let d = PairDecide { peer: NodeId(ByteArray([0; 8])), sas: 0, admit: true, peer_record: Default::default() };
        assert_eq!(pair(t, PairRequest::Decide(d)).unwrap_err().0, ErrorCode::Rejected);
    }
}

#[test]
fn bad_codes_messages_out_of_turn_and_a_missing_entropy_source_are_refused() {
    let mut a = tcb(5);
    let b = PairBegin {
        role: PairRole::Initiator,
        code: "not a code!".try_into().unwrap(),
        wireguard_key: ByteArray([1; 32]),
    };
    let (code, detail) = pair(&mut a, PairRequest::Begin(b)).unwrap_err();
    assert_eq!(code, ErrorCode::Rejected);
    assert!(detail.starts_with("pairing code"), "{detail}");
    assert_eq!(step(&mut a, &[1, 2, 3]).unwrap_err().0, ErrorCode::Rejected, "no session");
    begin(&mut a, PairRole::Responder, "7K3M9-QX2HD", 1);
    assert_eq!(step(&mut a, &[0; 10]).unwrap_err().0, ErrorCode::Rejected, "garbage for a hello");

    let mut plain = plain(9);
    let b = PairBegin {
        role: PairRole::Initiator,
        code: "7K3M9-QX2HD".try_into().unwrap(),
        wireguard_key: ByteArray([1; 32]),
    };
    match plain.core.answer(&Request::Pair(PairRequest::Begin(b)), 0, NOW) {
        Response::Error(e) => assert_eq!(e.code, ErrorCode::NotImplemented),
        other => panic!("{other:?}"),
    }
}
