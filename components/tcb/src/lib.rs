//! The TCB's request dispatch, one implementation for every platform: the hosted TCB
//! (`system/hosted`) and the seL4 ledger PD (`system/microkit/ledger`) both wrap a [`TcbCore`]
//! and supply only what a platform knows: its storage, its clock, its uptime and its entropy.
//! [`boot`] brings a TCB up from its two journals the same way on both.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use ppn_journal::{Journal, MAX_RECORD, Recovery, Storage};
use ppn_ledger::{Ledger, Roots};
use ppn_node_core::{NodeCore, NodeKeys, NodeRecord, Replay, Runtime, StateError};
use ppn_wire::message::{LedgerRequest, PairRequest, PairResponse};
use ppn_wire::service::{Platform, ServiceState, ServiceStatus};
use ppn_wire::{ErrorCode, Header, Request, Response};
use zeroize::Zeroizing;

pub mod attest;
pub mod lender;
pub mod pair;
pub mod remote;

pub use lender::{LedgerPort, LenderOpen, LenderService, Scrub};
pub use pair::Entropy;

/// Services and whether this build answers them: the lender only when the platform gave the
/// TCB a pool ([`TcbCore::with_lender`]) or serves it in a PD of its own
/// ([`TcbCore::with_lender_elsewhere`]).
fn services(lender: bool, attest: bool) -> [ServiceStatus; 5] {
    let state = |on: bool| if on { ServiceState::Ready } else { ServiceState::NotImplemented };
    [
        ServiceStatus { service: 0x01, state: ServiceState::Ready },
        ServiceStatus { service: 0x02, state: ServiceState::Ready },
        ServiceStatus { service: 0x03, state: state(lender) },
        ServiceStatus { service: 0x04, state: state(attest) },
        ServiceStatus { service: 0x05, state: ServiceState::Ready },
    ]
}

/// The node and ledger cores, the pairing session, the lender (when this node lends), and the
/// counters `NodeStatus` reports.
#[derive(Debug)]
pub struct TcbCore<S: Storage> {
    node: NodeCore,
    ledger: Ledger<S>,
    pairing: pair::Pairing,
    lender: Option<LenderService<S>>,
    /// The lender runs elsewhere (the seL4 image's `lender` PD) and asks this ledger through
    /// the ledger port ([`remote`]).
    lender_elsewhere: bool,
    /// The node's attestation key and its certificate ([`boot`] derives it from the seed).
    attester: Option<ppn_attest::Attester>,
    /// The attest service is answered by another component of this TCB (on seL4, the `attest`
    /// PD, which the attester was handed to: [`TcbCore::hand_off_attester`]).
    attest_elsewhere: bool,
    served: u64,
    failed: u64,
}

impl<S: Storage> TcbCore<S> {
    pub fn new(node: NodeCore, ledger: Ledger<S>) -> Self {
        Self {
            node,
            ledger,
            pairing: pair::Pairing::new(None),
            lender: None,
            lender_elsewhere: false,
            attester: None,
            attest_elsewhere: false,
            served: 0,
            failed: 0,
        }
    }

    /// Gives the TCB its attestation key: the Attest service answers from then on.
    pub fn with_attester(mut self, attester: ppn_attest::Attester) -> Self {
        self.node.set_attestation_public(Some(attester.cert().attest_key));
        self.attester = Some(attester);
        self
    }

    pub fn attester(&self) -> Option<&ppn_attest::Attester> {
        self.attester.as_ref()
    }

    /// Takes the attester out of this core, for the component that will answer the attest
    /// service from now on (on seL4, the ledger PD keeps it only until the attest PD asks for it
    /// over the ledger port). `NodeStatus` goes on reporting the service ready and the
    /// attestation key's public half.
    pub fn hand_off_attester(&mut self) -> Option<ppn_attest::Attester> {
        self.attest_elsewhere = true;
        self.attester.take()
    }

    /// Gives the TCB a pool of lendable memory: the Lender service answers from then on.
    pub fn with_lender(mut self, lender: LenderService<S>) -> Self {
        self.lender = Some(lender);
        self
    }

    /// Says that the Lender service is answered by another component of this TCB (on seL4, the
    /// `lender` PD, which `link` routes lender requests to): `NodeStatus` reports it ready.
    pub fn with_lender_elsewhere(mut self) -> Self {
        self.lender_elsewhere = true;
        self
    }

    pub fn lender(&self) -> Option<&LenderService<S>> {
        self.lender.as_ref()
    }

    /// Gives the pairing service its entropy source (without one, `PairBegin` is refused).
    pub fn with_entropy(mut self, entropy: alloc::boxed::Box<dyn Entropy>) -> Self {
        self.pairing = pair::Pairing::new(Some(entropy));
        self
    }

    pub fn node(&self) -> &NodeCore {
        &self.node
    }

    pub fn ledger(&self) -> &Ledger<S> {
        &self.ledger
    }

    /// The ledger, for the ledger port ([`remote::serve`]) the seL4 ledger PD answers for the
    /// lender PD.
    pub fn ledger_mut(&mut self) -> &mut Ledger<S> {
        &mut self.ledger
    }

    /// Answers one request. Every service that has not landed answers `NotImplemented`.
    /// `uptime_ms` and `now_unix_s` are the platform's own clock, never the proxy's.
    pub fn answer(&mut self, request: &Request, uptime_ms: u64, now_unix_s: u64) -> Response {
        let response = match request {
            Request::Node(r) => {
                let rt = Runtime {
                    uptime_ms,
                    requests_served: self.served,
                    requests_failed: self.failed,
                    services: &services(
                        self.lender.is_some() || self.lender_elsewhere,
                        self.attester.is_some() || self.attest_elsewhere,
                    ),
                };
                Response::Node(self.node.handle(r, &rt))
            }
            Request::Ledger(r) => match self.ledger.handle(r, now_unix_s) {
                Ok(answer) => {
                    // Only these add records (revocations); reads leave the lender alone.
                    if matches!(r, LedgerRequest::Revoke(_) | LedgerRequest::IngestRecords(_)) {
                        self.sync_lender(now_unix_s);
                    }
                    Response::Ledger(answer)
                }
                Err(refusal) => Response::error(refusal.code, refusal.detail),
            },
            Request::Pair(r) => {
                let me = (self.node.node_id(), self.node.signing_public());
                let answer = match r {
                    PairRequest::Begin(b) => self.pairing.begin(b, me, uptime_ms).map(PairResponse::Begin),
                    PairRequest::Step(s) => self.pairing.step(s, uptime_ms).map(PairResponse::Step),
                    PairRequest::Decide(d) => {
                        self.pairing.decide(d, &mut self.ledger, uptime_ms, now_unix_s).map(PairResponse::Decide)
                    }
                };
                if matches!(r, PairRequest::Decide(_)) {
                    self.sync_lender(now_unix_s);
                }
                match answer {
                    Ok(a) => Response::Pair(a),
                    Err((code, detail)) => Response::error(code, &detail),
                }
            }
            Request::Lender(r) if self.lender.is_some() => {
                let lender = self.lender.as_mut().expect("checked by the guard");
                match lender.handle(r, &mut self.ledger, now_unix_s) {
                    Ok(a) => Response::Lender(a),
                    Err((code, detail)) => Response::error(code, &detail),
                }
            }
            Request::Attest(r) if self.attester.is_some() => {
                let attester = self.attester.as_ref().expect("checked by the guard");
                match attest::handle(attester, r, now_unix_s, &mut self.ledger) {
                    Ok(a) => Response::Attest(a),
                    Err((code, detail)) => Response::error(code, &detail),
                }
            }
            Request::Lender(_) | Request::Attest(_) => {
                let detail = format!("the {} service has not landed in this TCB build", request.service().name());
                Response::error(ErrorCode::NotImplemented, &detail)
            }
        };
        match response {
            Response::Error(_) => self.failed += 1,
            _ => self.served += 1,
        }
        response
    }

    /// After a ledger change: the lender ends what the ledger revoked. A failure (journal
    /// trouble) is not the ledger request's; the next lender request meets and answers it.
    fn sync_lender(&mut self, now_unix_s: u64) {
        if let Some(lender) = self.lender.as_mut() {
            let _ = lender.sync(&self.ledger, now_unix_s);
        }
    }

    /// Decodes a request frame and writes its response frame into `out` (at least
    /// `MAX_FRAME_LEN` bytes); returns the response frame's length. Never fails: an undecodable
    /// frame gets an error frame, with the request id if the header could be read, else 0.
    pub fn handle_frame(&mut self, frame: &[u8], out: &mut [u8], uptime_ms: u64, now_unix_s: u64) -> usize {
        match ppn_wire::decode_request(frame) {
            Ok((id, request)) => {
                let response = self.answer(&request, uptime_ms, now_unix_s);
                encode_or_internal(id, &response, out)
            }
            Err(e) => {
                let id = Header::parse(frame).map(|h| h.request_id).unwrap_or(0);
                self.refuse(id, &format!("{e}"), out)
            }
        }
    }

    /// Counts a frame that never reached a service (a stream error, an oversize buffer) and
    /// writes its `BadFrame` error frame into `out`; returns its length.
    pub fn refuse(&mut self, request_id: u32, detail: &str, out: &mut [u8]) -> usize {
        self.failed += 1;
        encode_or_internal(request_id, &Response::error(ErrorCode::BadFrame, detail), out)
    }
}

fn encode_or_internal(request_id: u32, response: &Response, out: &mut [u8]) -> usize {
    match ppn_wire::encode_response(request_id, response, out) {
        Ok(n) => n,
        // Every response type fits MAX_BODY_LEN (a wire test checks it); this is a last resort,
        // and an error frame with a 128-byte detail always fits MAX_FRAME_LEN.
        Err(e) => ppn_wire::encode_response(request_id, &Response::error(ErrorCode::Internal, &format!("{e}")), out)
            .unwrap_or(0),
    }
}

/// What [`boot`] found and did.
#[derive(Debug, Clone)]
pub struct BootReport {
    /// This boot created the node's identity (the node journal was empty).
    pub created_identity: bool,
    /// This boot's number (1 for the first).
    pub boot_count: u32,
    /// Recovery of the node journal.
    pub journal: Recovery,
    /// What replaying the ledger journal found.
    pub ledger: ppn_ledger::OpenReport,
}

/// Why a TCB could not boot. Storage errors are kept as text: each platform's storage has its
/// own error type, and the message is all an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("node journal: {0}")]
    NodeJournal(String),
    #[error("node journal is inconsistent: {0}")]
    State(#[from] StateError),
    #[error("ledger journal: {0}")]
    Ledger(String),
    #[error("no entropy for the identity seed: {0}")]
    Entropy(String),
    #[error("the entropy source returned 32 zero bytes; refusing to create an identity from them")]
    ZeroSeed,
}

/// A booted TCB: the cores, and the node journal (kept open: it is the identity's home).
#[derive(Debug)]
pub struct Booted<N: Storage, L: Storage> {
    pub core: TcbCore<L>,
    pub node_journal: Journal<N>,
    pub report: BootReport,
}

/// Boots a TCB from its two journals, the same way on every platform: replays the node journal,
/// creates the identity from `entropy` on first boot (journaled before anything uses it), opens
/// the ledger (replaying and re-checking its journal), then records the boot.
///
/// The ledger's fleet root set is this node's own signing key plus `extra_roots`.
pub fn boot<N: Storage, L: Storage, E: core::fmt::Debug>(
    node_storage: N,
    ledger_storage: L,
    extra_roots: &Roots,
    platform: Platform,
    version: &str,
    entropy: impl FnOnce(&mut [u8; 32]) -> Result<(), E>,
) -> Result<Booted<N, L>, BootError> {
    let mut scratch = vec![0u8; MAX_RECORD];
    let mut replay = Replay::default();
    let (mut journal, recovery) = Journal::open(node_storage, &mut scratch, |k, p| replay.record(k, p))
        .map_err(|e| BootError::NodeJournal(format!("{e}")))?;
    let recovered = replay.finish()?;

    let mut payload = Zeroizing::new([0u8; 32]);
    let mut append = |journal: &mut Journal<N>, rec: &NodeRecord| {
        let (kind, n) = rec.encode(&mut payload);
        let r = journal.append(kind, &payload[..n], &mut scratch).map_err(|e| BootError::NodeJournal(format!("{e}")));
        scratch.fill(0);
        r
    };
    let created_identity = recovered.seed.is_none();
    let seed = match recovered.seed {
        Some(seed) => seed,
        None => {
            let mut seed = Zeroizing::new([0u8; 32]);
            entropy(&mut seed).map_err(|e| BootError::Entropy(format!("{e:?}")))?;
            if seed.iter().all(|&b| b == 0) {
                return Err(BootError::ZeroSeed);
            }
            append(&mut journal, &NodeRecord::Identity { seed: seed.clone() })?;
            seed
        }
    };
    let keys = NodeKeys::from_seed(&seed);
    drop(seed);
    let attester = ppn_attest::Attester::new(keys.attest_secret(), keys.signing_key());
    let mut roots = extra_roots.clone();
    if !roots.add(&keys.signing_public()) {
        // Cannot happen: the key was derived from a signing key.
        return Err(BootError::Ledger("this node's own signing key is not a valid Ed25519 key".into()));
    }
    let boot_count = recovered.boot_count.saturating_add(1);
    let node = NodeCore::new(&keys, platform, version, boot_count);

    // The ledger opens before the boot is recorded: a ledger that cannot open is no boot.
    let (ledger, ledger_report) =
        Ledger::open(keys, Arc::new(roots), ledger_storage).map_err(|e| BootError::Ledger(format!("{e}")))?;
    append(&mut journal, &NodeRecord::Boot { count: boot_count })?;

    let report = BootReport { created_identity, boot_count, journal: recovery, ledger: ledger_report };
    Ok(Booted { core: TcbCore::new(node, ledger).with_attester(attester), node_journal: journal, report })
}
