//! The lender and the attest service as components of their own: a `LenderService` that reaches
//! the ledger only through the ledger port (`ppn_layout::ledger_port`), encoded and decoded both
//! ways, exactly as the seL4 lender PD does through its protected procedure call; and the
//! attestation key's handoff to the attest PD over its own port.

use ppn_attest::{Attester, VerityParams};
use ppn_journal::mem::MemStorage;
use ppn_layout::ledger_port::{self, Caller, MAX_MESSAGE, Op, PortReply, PortRequest};
use ppn_ledger::Body;
use ppn_lender::BlockRange;
use ppn_tcb_core::remote::{CallError, PortTransport, RemoteLedger, fetch_attester, serve};
use ppn_tcb_core::{Booted, LedgerPort, LenderService, Scrub};
use ppn_wire::message::{AttestRequest, AttestResponse};
use ppn_wire::message::{LedgerRequest, LenderRequest, LenderResponse, NodeRequest, NodeResponse};
use ppn_wire::service::SignRootHash;
use ppn_wire::service::{CommitLease, Release, Reserve, Revoke, RevokeTarget, ServiceState, VerifyToken};
use ppn_wire::{ErrorCode, NodeId, Request, Response};
use sha2::Digest as _;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

const NOW: u64 = 1_800_000_000;

mod common;
use common::{Tcb, keys};

fn tcb(seed: u8, fleet: &[u8]) -> Tcb {
    common::tcb(seed, fleet, ppn_wire::service::Platform::Sel4Microkit)
}

/// The "ledger PD": the TCB, answering port calls from `caller` by `serve`, at its own clock,
/// with the attester it took out of the TCB for the handoff; `down` makes the transport fail,
/// `calls` counts the port calls.
#[derive(Clone)]
struct Port {
    tcb: Rc<RefCell<Tcb>>,
    caller: Caller,
    attester: Rc<RefCell<Option<Attester>>>,
    clock: Rc<Cell<u64>>,
    down: Rc<Cell<bool>>,
    calls: Rc<Cell<u32>>,
}

impl Port {
    fn new(tcb: &Rc<RefCell<Tcb>>, caller: Caller) -> Self {
        Port {
            tcb: tcb.clone(),
            caller,
            attester: Rc::new(RefCell::new(None)),
            clock: Rc::new(Cell::new(NOW)),
            down: Rc::new(Cell::new(false)),
            calls: Rc::new(Cell::new(0)),
        }
    }
}

impl PortTransport for Port {
    fn call(&self, request: &[u8], reply: &mut [u8]) -> Result<usize, String> {
        if self.down.get() {
            return Err("the ledger PD did not answer".into());
        }
        self.calls.set(self.calls.get() + 1);
        // The request crosses as bytes in a page: copy it as the ledger PD does.
        let mut page = [0u8; 4096];
        page[..request.len()].copy_from_slice(request);
        let mut t = self.tcb.borrow_mut();
        let mut attester = self.attester.borrow_mut();
        Ok(serve(t.core.ledger_mut(), self.caller, &mut attester, self.clock.get(), &page, reply))
    }
}

/// Records the ranges scrubbed (`Scrub` must be `Send`).
struct SendScrub(std::sync::Arc<std::sync::Mutex<Vec<BlockRange>>>);
impl Scrub for SendScrub {
    fn scrub(&mut self, range: BlockRange) -> Result<(), String> {
        self.0.lock().unwrap().push(range);
        Ok(())
    }
}

fn ledger_answer(t: &Rc<RefCell<Tcb>>, r: LedgerRequest) -> Response {
    t.borrow_mut().core.answer(&Request::Ledger(r), 0, NOW)
}

#[test]
fn a_lender_over_the_port_leases_with_the_ledgers_tokens_and_sees_its_revocations() {
    let ledger_tcb = Rc::new(RefCell::new(tcb(1, &[1, 2])));
    let port = Port::new(&ledger_tcb, Caller::Lender);
    let mut remote = RemoteLedger::connect(port.clone()).unwrap();
    assert_eq!(remote.node_id(), keys(1).node_id());
    assert_eq!(remote.now_unix_s(), Ok(NOW));
    let scrubbed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (mut lender, open) =
        LenderService::open(MemStorage::default(), 8, Box::new(SendScrub(scrubbed.clone()))).unwrap();
    assert_eq!(open.scrubbed_blocks, 8);

    let borrower = keys(2).node_id();
    let reserve =
        |b: NodeId, n: u32| LenderRequest::Reserve(Reserve { borrower: b, blocks: n, expires_unix_s: NOW + 600 });
    let rid = match lender.handle(&reserve(borrower, 3), &mut remote, NOW).unwrap() {
        LenderResponse::Reserve(r) => r.reservation_id,
        r => panic!("{r:?}"),
    };
    let lease = match lender.handle(&LenderRequest::CommitLease(CommitLease { reservation_id: rid }), &mut remote, NOW)
    {
        Ok(LenderResponse::CommitLease(l)) => l,
        r => panic!("{r:?}"),
    };
    // The token is the ledger's: it verifies there, for the borrower, Memory, the lease id.
    let claims = ppn_ledger::TokenBytes::parse(&lease.token).unwrap().claims();
    assert_eq!((claims.issuer, claims.grantee, claims.resource_id), (keys(1).node_id(), borrower, lease.lease_id));
    match ledger_answer(&ledger_tcb, LedgerRequest::VerifyToken(VerifyToken { token: lease.token.clone() })) {
        Response::Ledger(ppn_wire::message::LedgerResponse::VerifyToken(v)) => {
            assert_eq!(v.verdict, ppn_wire::service::Verdict::Valid)
        }
        r => panic!("{r:?}"),
    }

    // A stranger is refused: the ledger says it is not trusted.
    let stranger = keys(9).node_id();
    let (code, detail) = lender.handle(&reserve(stranger, 1), &mut remote, NOW).unwrap_err();
    assert_eq!((code, detail.as_str()), (ErrorCode::Rejected, "the borrower is not a trusted member of the fleet"));

    // A port that does not answer: nothing new is lent, nothing lent is ended.
    port.down.set(true);
    let (code, _) = lender.handle(&reserve(borrower, 1), &mut remote, NOW).unwrap_err();
    assert_eq!(code, ErrorCode::Rejected);
    match lender.handle(&LenderRequest::PoolStatus, &mut remote, NOW).unwrap() {
        LenderResponse::PoolStatus(p) => assert_eq!((p.lent, p.free), (3, 5)),
        r => panic!("{r:?}"),
    }
    assert!(matches!(remote.now_unix_s(), Err(CallError::Port(_))));
    port.down.set(false);

    // The grant revoked in the ledger ends the lease at the lender's next request.
    let seq = claims.sequence;
    match ledger_answer(
        &ledger_tcb,
        LedgerRequest::Revoke(Revoke { target: RevokeTarget::Grant { issuer: keys(1).node_id(), sequence: seq } }),
    ) {
        Response::Ledger(_) => {}
        r => panic!("{r:?}"),
    }
    let before = scrubbed.lock().unwrap().len();
    match lender.handle(&LenderRequest::PoolStatus, &mut remote, NOW).unwrap() {
        LenderResponse::PoolStatus(p) => assert_eq!((p.lent, p.free), (0, 8)),
        r => panic!("{r:?}"),
    }
    assert!(scrubbed.lock().unwrap().len() > before, "the revoked lease's blocks were scrubbed");
    let (code, _) =
        lender.handle(&LenderRequest::Release(Release { lease_id: lease.lease_id }), &mut remote, NOW).unwrap_err();
    assert_eq!(code, ErrorCode::Rejected);
    assert!(port.calls.get() >= 6, "every question crossed the port: {}", port.calls.get());
}

#[test]
fn serve_refuses_what_does_not_decode_and_the_ledger_status_shows_the_lender_ready() {
    let mut t = tcb(1, &[1]);
    let mut out = [0u8; MAX_MESSAGE];
    let n = serve(t.core.ledger_mut(), Caller::Lender, &mut None, NOW, b"PPNP\x01\x04\x03\x00abc", &mut out);
    match ledger_port::decode_reply(Op::NodeRevoked, &out[..n]).unwrap() {
        PortReply::Refused { code, detail } => {
            assert_eq!(code, ErrorCode::BadFrame);
            assert_eq!(detail, "ledger port: NodeRevoked with a body of 3 bytes");
        }
        r => panic!("{r:?}"),
    }
    let n = serve(t.core.ledger_mut(), Caller::Lender, &mut None, NOW, b"XXXX", &mut out);
    assert!(matches!(ledger_port::decode_reply(Op::NodeId, &out[..n]), Ok(PortReply::Refused { .. })));

    let status = |t: &mut Tcb| match t.core.answer(&Request::Node(NodeRequest::Status), 0, NOW) {
        Response::Node(NodeResponse::Status(s)) => {
            s.services.iter().find(|x| x.service == 0x03).map(|x| x.state).unwrap()
        }
        r => panic!("{r:?}"),
    };
    assert_eq!(status(&mut t), ServiceState::NotImplemented);
    let mut t = Booted { core: t.core.with_lender_elsewhere(), node_journal: t.node_journal, report: t.report };
    assert_eq!(status(&mut t), ServiceState::Ready);
}

/// Asks `op` on `port` and returns the refusal's code and detail.
fn refusal(port: &Port, req: PortRequest) -> (ErrorCode, String) {
    let mut msg = [0u8; MAX_MESSAGE];
    let n = ledger_port::encode_request(&req, &mut msg).unwrap();
    let mut reply = [0u8; MAX_MESSAGE];
    let len = port.call(&msg[..n], &mut reply).unwrap();
    match ledger_port::decode_reply(req.op(), &reply[..len]).unwrap() {
        PortReply::Refused { code, detail } => (code, detail.to_owned()),
        r => panic!("{req:?} was answered: {r:?}"),
    }
}

#[test]
fn the_attestation_key_is_handed_to_the_attest_pd_once_and_never_to_the_lender() {
    let ledger_tcb = Rc::new(RefCell::new(tcb(1, &[1])));
    let verity = VerityParams { root_hash: [7; 32], salt: [9; 32], data_blocks: 256, hash_offset: 1 << 20 };
    // What the TCB's own attester signs, before it gives the key away (Ed25519 is deterministic).
    let (cert, statement) = {
        let t = ledger_tcb.borrow();
        let a = t.core.attester().expect("boot derives the attestation key");
        (a.cert().clone(), a.provision("img", &verity, NOW).unwrap().bytes)
    };
    let taken = ledger_tcb.borrow_mut().core.hand_off_attester();
    assert!(taken.is_some() && ledger_tcb.borrow().core.attester().is_none());
    let attest = Port::new(&ledger_tcb, Caller::Attest);
    *attest.attester.borrow_mut() = taken;
    let lender = Port { caller: Caller::Lender, ..attest.clone() };

    // The lender may not have it, and asking does not use it up.
    let (code, detail) = refusal(&lender, PortRequest::AttestKey);
    assert_eq!((code, detail.as_str()), (ErrorCode::Rejected, "AttestKey is not the lender PD's to ask"));
    assert!(attest.attester.borrow().is_some());
    // The attest PD may not ask about trust or leases.
    let (code, detail) = refusal(&attest, PortRequest::BorrowerTrusted(keys(1).node_id()));
    assert_eq!((code, detail.as_str()), (ErrorCode::Rejected, "BorrowerTrusted is not the attest PD's to ask"));

    // The attest PD gets the same key, certified by the node key; the ledger keeps no copy.
    let fetched = fetch_attester(&attest).unwrap();
    assert_eq!(fetched.cert(), &cert);
    assert_eq!(fetched.provision("img", &verity, NOW).unwrap().bytes, statement);
    assert!(attest.attester.borrow().is_none());
    match fetch_attester(&attest) {
        Err(CallError::Refused(ErrorCode::Rejected, d)) => assert_eq!(d, "the attestation key was handed over already"),
        r => panic!("{r:?}"),
    }
    // It can still read the time and the node id through the port.
    let mut remote = RemoteLedger::connect(attest.clone()).unwrap();
    assert_eq!((remote.node_id(), remote.now_unix_s()), (keys(1).node_id(), Ok(NOW)));

    // A statement it signs is in the ledger, recorded across the port, before it is handed out;
    // the lender may not record one.
    let records = ledger_tcb.borrow().core.ledger().dag().len();
    let sign = AttestRequest::SignRootHash(SignRootHash {
        image: "img".try_into().unwrap(),
        root_hash: ppn_wire::ByteArray(verity.root_hash),
        salt: ppn_wire::ByteArray(verity.salt),
        data_blocks: verity.data_blocks,
        hash_offset: verity.hash_offset,
    });
    let Ok(AttestResponse::SignRootHash(st)) = ppn_tcb_core::attest::handle(&fetched, &sign, NOW, &mut remote) else {
        panic!("SignRootHash in the attest PD failed");
    };
    let digest: [u8; 32] = sha2::Sha256::digest(&st.statement).into();
    {
        let t = ledger_tcb.borrow();
        assert_eq!(t.core.ledger().dag().len(), records + 1);
        let r = t.core.ledger().dag().iter().find(|r| matches!(r.body, Body::ImageProvisioned { .. })).unwrap();
        assert_eq!(r.body, Body::ImageProvisioned { root_hash: verity.root_hash, statement: digest });
        assert_eq!(r.author, keys(1).node_id());
    }
    let (code, detail) = refusal(&lender, PortRequest::RecordProvisioning { root_hash: [1; 32], statement: [2; 32] });
    assert_eq!((code, detail.as_str()), (ErrorCode::Rejected, "RecordProvisioning is not the lender PD's to ask"));

    // The ledger's status still shows the attest service ready and the key's public half; an
    // attest request that reached the ledger anyway is not answered there.
    let mut t = ledger_tcb.borrow_mut();
    match t.core.answer(&Request::Node(NodeRequest::Status), 0, NOW) {
        Response::Node(NodeResponse::Status(s)) => {
            assert_eq!(s.services.iter().find(|x| x.service == 0x04).map(|x| x.state), Some(ServiceState::Ready));
        }
        r => panic!("{r:?}"),
    }
    match t.core.answer(&Request::Node(NodeRequest::PublicKeys), 0, NOW) {
        Response::Node(NodeResponse::PublicKeys(k)) => {
            assert_eq!(k.attestation_key.map(|k| k.0), Some(cert.attest_key))
        }
        r => panic!("{r:?}"),
    }
    let sign = ppn_wire::message::AttestRequest::SignReport(ppn_wire::service::SignReport {
        vm: "vm".try_into().unwrap(),
        root_hash: ppn_wire::ByteArray([0; 32]),
        provisioning: heapless::Vec::new(),
        nonce: heapless::Vec::new(),
    });
    match t.core.answer(&Request::Attest(sign), 0, NOW) {
        Response::Error(e) => assert_eq!(e.code, ErrorCode::NotImplemented),
        r => panic!("{r:?}"),
    }
}
